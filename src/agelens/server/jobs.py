"""Jobs: many images analysed in the background, results kept for a while (`/v1/jobs`).

A job is a list of image URLs or an uploaded zip. It is stored (see jobstore.py) and answered
at once with its id; one worker task, started in the app's lifespan, takes queued jobs oldest
first and works through their images a chunk at a time: fetch (URLs, with every SSRF check of
agelens/urlfetch.py) or read (zip members extracted at submission), decode, analyse with the
service's own loaded models, then commit the chunk's result rows (agelens.rows) in one transaction.
Zips are read, and images fetched, hashed and decoded, by agelens.intake, as every door does.

- An image that cannot be fetched, read, decoded or analysed becomes an error row; the job
  goes on (when a chunk's shared run fails, its images are run one by one).
- A stopped service resumes its jobs where they stood, and no image gets its rows twice.
- A zip's images are deleted from disk as soon as its job ends (done, failed or deleted).
- Results are kept `jobs_result_ttl_s` after the job ends, then the job reads `expired`.
- With a PostgreSQL database, several services may share the queue (each claims distinct
  jobs, and zip jobs need a `data_dir` they all share). A running job's heartbeat is renewed
  before each chunk; every replica puts back in the queue the running jobs whose heartbeat is
  older than `jobs_lease_s` (their replica stopped), at start and then every poll. With
  SQLite (one process per file) a starting service requeues every running job at once.

Nothing is created on disk until the first job is submitted (or a database is already there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio

from agelens.errors import AgelensError
from agelens.imaging import DecodedImage
from agelens.intake import (
    IntakeOptions,
    LoadedImage,
    ZipArchiveError,
    ZipLimits,
    ZipMemberError,
    ZipReader,
    ZipTooLargeError,
    fetch_url,
    load_bytes,
    read_zip,
    run_isolated,
)

# The zip member errors and name check live in agelens.intake; importable here as before.
from agelens.intake import UnsafeZipMemberError as UnsafeZipMemberError
from agelens.intake import unsafe_name_reason as unsafe_name_reason
from agelens.rows import error_row, result_rows
from agelens.server.engine import AnalysisOptions, ModelPool
from agelens.server.errors import (
    GoneError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RequestTooLargeError,
)
from agelens.server.jobstore import (
    ItemRecord,
    JobRecord,
    JobStatus,
    JobStore,
    NewItem,
    open_job_store,
    sqlite_path,
)
from agelens.server.settings import Settings
from agelens.types import ImageResult
from agelens.urlfetch import UrlFetcher

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------ zip intake


def extract_zip(
    data: bytes,
    folder: Path,
    *,
    max_members: int,
    max_total_bytes: int,
    max_member_bytes: int,
    max_ratio: float = float("inf"),
    disk_budget_bytes: int | None = None,
) -> list[NewItem]:
    """The zip's files written to `folder` under generated names, as job items (labelled with
    their names in the archive), read through `agelens.intake.read_zip`. Directories and macOS
    metadata are skipped; unsafe or unreadable members become refused items (error rows
    later), not files.

    Raises InvalidRequestError (not a zip, no file, too many files) or RequestTooLargeError
    when the files add up to more than `max_total_bytes`, more than `max_ratio` times the
    zip's own size (a zip bomb), or more than `disk_budget_bytes` (what the uploads of all
    jobs may still use): checked on the sizes the archive declares before anything is
    written, and again on the bytes actually inflated; `folder` is removed then.
    """
    limits = ZipLimits(
        max_members=max_members,
        max_total_bytes=max_total_bytes,
        max_member_bytes=max_member_bytes,
        max_ratio=max_ratio,
        disk_budget_bytes=disk_budget_bytes,
    )
    try:
        return _extract_members(read_zip(data, limits), folder)
    except ZipTooLargeError as error:
        raise RequestTooLargeError(str(error)) from error
    except ZipArchiveError as error:
        raise InvalidRequestError(str(error)) from error


def _extract_members(archive: ZipReader, folder: Path) -> list[NewItem]:
    folder.mkdir(parents=True, exist_ok=True)
    items: list[NewItem] = []
    total = 0
    try:
        for index, member in enumerate(archive.members()):
            if member.refused is not None:
                refused = (type(member.refused).__name__, str(member.refused))
                items.append(NewItem(member.name, None, refused))
                continue
            stored = f"{index:06d}"
            try:
                with (folder / stored).open("wb") as sink:
                    written = member.copy_to(sink.write)
            except ZipMemberError as error:
                (folder / stored).unlink(missing_ok=True)
                items.append(NewItem(member.name, None, (type(error).__name__, str(error))))
                continue
            total += written
            archive.check_total(total)
            items.append(NewItem(member.name, stored))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return items


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # a job ending meanwhile removes its files
                total += os.lstat(os.path.join(root, name)).st_size
    return total


# ------------------------------------------------------------------ the manager


class JobManager:
    """The jobs of one service: submission, reading, deletion, expiry and the worker task.

    Uses the service's model pool (no model is loaded twice) and its URL fetcher; the routes
    check keys and rate limits (agelens.server.deps) as for every /v1 route.
    """

    def __init__(self, settings: Settings, pool: ModelPool, fetcher: UrlFetcher) -> None:
        self.settings = settings
        self.pool = pool
        self.fetcher = fetcher
        self.database_url = settings.jobs_database()
        self.uploads = settings.data_dir / "job-uploads"
        self.store: JobStore | None = None
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._open_lock = asyncio.Lock()
        self._infer_limiter = anyio.CapacityLimiter(1)
        self._decode_limiter = anyio.CapacityLimiter(2)
        self._last_sweep = 0.0

    # ---------------------------------------------------------------- lifecycle

    def _database_exists(self) -> bool:
        if not self.database_url.lower().startswith("sqlite:"):
            return True
        path = sqlite_path(self.database_url)
        return path != ":memory:" and Path(path).is_file()

    async def start(self) -> None:
        """Resume stored jobs when a database is already there (called in the lifespan)."""
        if self.settings.jobs_enabled and self._database_exists():
            await self._open()

    async def _open(self) -> JobStore:
        async with self._open_lock:
            if self.store is None:
                self.store = await anyio.to_thread.run_sync(open_job_store, self.database_url)
                requeued = await anyio.to_thread.run_sync(
                    self.store.requeue_running, time.time(), self._lease_s
                )
                if requeued:
                    logger.info("resuming %d job(s) stopped while running", requeued)
                await anyio.to_thread.run_sync(self._remove_orphan_uploads, self.store)
                self._wakeup = asyncio.Event()
                self._worker = asyncio.create_task(self._work(), name="agelens-jobs")
            return self.store

    async def stop(self) -> None:
        """Stop the worker at once. A chunk not committed yet is analysed again on restart."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def _remove_orphan_uploads(self, store: JobStore) -> None:
        """Upload folders of jobs that are no longer active (e.g. the process stopped between
        a job's end and the folder's removal, or during a submission)."""
        if not self.uploads.is_dir():
            return
        active = store.active_job_ids()
        for folder in self.uploads.iterdir():
            if folder.name not in active:
                shutil.rmtree(folder, ignore_errors=True)

    # ---------------------------------------------------------------- the API's side

    def _check_enabled(self) -> None:
        if not self.settings.jobs_enabled:
            raise NotFoundError("the jobs API is turned off on this server (AGELENS_JOBS_ENABLED)")

    def analysis_options(
        self,
        detector: str | None,
        estimator: str | None,
        min_face: float,
        max_faces: int | None,
    ) -> AnalysisOptions:
        """Engine options with the server defaults filled in (names checked)."""
        options = AnalysisOptions(
            detector=detector or self.settings.detector,
            estimator=estimator or self.settings.estimator,
            min_face=min_face,
            max_faces=max_faces,
        )
        self.pool.check_names(options.detector, options.estimator)
        return options

    async def submit_urls(
        self, owner: str | None, urls: Sequence[str], options: AnalysisOptions
    ) -> JobRecord:
        """Queue a job over image URLs (checked when fetched: a refused URL is an error row)."""
        self._check_enabled()
        if not self.settings.url_fetch_enabled:
            raise InvalidRequestError("URL input is turned off on this server")
        self._check_count(len(urls))
        items = [NewItem(url, url) for url in urls]
        return await self._create(owner, "urls", items, options, job_id=_new_id())

    async def submit_zip(
        self, owner: str | None, data: bytes, options: AnalysisOptions
    ) -> JobRecord:
        """Queue a job over the images of a zip (extracted here, deleted when the job ends)."""
        self._check_enabled()
        await self._open()  # first: opening removes upload folders of inactive jobs
        job_id = _new_id()
        folder = self.uploads / job_id
        items = await anyio.to_thread.run_sync(
            lambda: extract_zip(
                data,
                folder,
                max_members=self.settings.jobs_max_images,
                max_total_bytes=self.settings.jobs_zip_max_uncompressed_bytes,
                max_member_bytes=self.settings.max_body_bytes,
                max_ratio=self.settings.jobs_zip_max_ratio,
                disk_budget_bytes=self.settings.jobs_uploads_max_bytes - folder_bytes(self.uploads),
            )
        )
        try:
            return await self._create(owner, "zip", items, options, job_id=job_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def submit_video(
        self,
        owner: str | None,
        data: bytes,
        filename: str,
        options: AnalysisOptions,
        video_options: dict[str, Any],
    ) -> JobRecord:
        """Queue a video job: the upload is stored until the job ends and checked to be a
        video now (InvalidRequestError otherwise); its results are track rows, people rows and an
        annotated MP4 (`agelens video`'s), kept until the job expires."""
        self._check_enabled()
        await self._open()
        job_id = _new_id()
        folder = self.uploads / job_id
        name = "video" + (Path(filename).suffix.lower()[:8] or ".mp4")
        try:
            frames = await anyio.to_thread.run_sync(_store_video, data, folder / name)
            return await self._create(
                owner,
                "video",
                [NewItem(filename or name, name)],
                options,
                job_id=job_id,
                frames_total=frames,
                video_options=video_options,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def results_folder(self, job_id: str) -> Path:
        """Where a video job's result files are kept until the job expires."""
        return self.settings.data_dir / "job-results" / job_id

    def _check_count(self, count: int) -> None:
        if count == 0:
            raise InvalidRequestError("the job holds no image")
        if count > self.settings.jobs_max_images:
            raise InvalidRequestError(
                f"{count} images in one job, over the limit of {self.settings.jobs_max_images}"
            )

    async def _create(
        self,
        owner: str | None,
        source: str,
        items: list[NewItem],
        options: AnalysisOptions,
        *,
        job_id: str,
        frames_total: int | None = None,
        video_options: dict[str, Any] | None = None,
    ) -> JobRecord:
        self._check_count(len(items))
        store = await self._open()
        if await anyio.to_thread.run_sync(store.count_active) >= self.settings.jobs_max_active:
            raise OverloadedError(
                f"{self.settings.jobs_max_active} jobs are already queued or running; retry "
                "when some have finished",
                headers={"Retry-After": "30"},
            )
        job = JobRecord(
            id=job_id,
            owner=owner,
            status="queued",
            source="zip" if source == "zip" else "video" if source == "video" else "urls",
            options=asdict(options) | ({"video": video_options} if video_options else {}),
            images_total=len(items) if frames_total is None else frames_total,
            images_done=0,
            faces=0,
            images_without_faces=0,
            errors=0,
            created_at=time.time(),
            started_at=None,
            finished_at=None,
            expires_at=None,
            message=None,
        )
        await anyio.to_thread.run_sync(store.create_job, job, items)
        if self._wakeup is not None:
            self._wakeup.set()
        logger.info("job %s queued: %d images from %s", job.id, len(items), source)
        return job

    async def get(self, owner: str | None, job_id: str) -> JobRecord:
        """The job as the caller may see it (NotFoundError otherwise); a job past its expiry
        reads `expired` even before the sweep has dropped its rows."""
        self._check_enabled()
        job = None
        if self.store is not None or self._database_exists():
            store = await self._open()
            job = await anyio.to_thread.run_sync(store.get_job, job_id)
        if job is None or job.owner != owner:
            raise NotFoundError(f"no job {job_id!r}")
        if job.status in ("done", "failed") and _expired(job):
            job = JobRecord(**{**asdict(job), "status": "expired"})
        return job

    async def result_rows(
        self, owner: str | None, job_id: str
    ) -> tuple[JobRecord, list[dict[str, Any]]]:
        """The job and its committed rows (every image's rows once the job is done). Raises
        GoneError once the results have expired."""
        job = await self.get(owner, job_id)
        if job.status == "expired":
            raise GoneError(
                f"the results of job {job_id} expired at {_iso(job.expires_at)} (they are kept "
                f"{self.settings.jobs_result_ttl_s:g} s after a job ends); submit it again"
            )
        assert self.store is not None
        rows = await anyio.to_thread.run_sync(self.store.result_rows, job_id)
        return job, rows

    async def delete(self, owner: str | None, job_id: str) -> None:
        """Remove the job, its rows and its uploaded images; a running job stops."""
        await self.get(owner, job_id)
        assert self.store is not None
        await anyio.to_thread.run_sync(self.store.delete_job, job_id)
        await anyio.to_thread.run_sync(self._remove_uploads, job_id)
        await anyio.to_thread.run_sync(self._remove_results, job_id)

    def _remove_results(self, job_id: str) -> None:
        shutil.rmtree(self.results_folder(job_id), ignore_errors=True)

    def _remove_uploads(self, job_id: str) -> None:
        shutil.rmtree(self.uploads / job_id, ignore_errors=True)

    # ---------------------------------------------------------------- the worker

    async def _work(self) -> None:
        assert self.store is not None
        assert self._wakeup is not None
        store, wakeup = self.store, self._wakeup
        while True:
            await self._sweep(store)
            job = None
            if self.pool.ready:
                job = await anyio.to_thread.run_sync(store.claim_next, time.time())
            if job is None:
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), self.settings.jobs_poll_seconds)
                continue
            await self._run_job(store, job)

    @property
    def _lease_s(self) -> float | None:
        """The lease after which another process's running job is requeued; None with SQLite,
        where no other process works on the same file."""
        if self.database_url.lower().startswith("sqlite:"):
            return None
        return self.settings.jobs_lease_s

    async def _sweep(self, store: JobStore) -> None:
        now = time.time()
        if now - self._last_sweep < self.settings.jobs_poll_seconds:
            return
        self._last_sweep = now
        if self._lease_s is not None:
            requeued = await anyio.to_thread.run_sync(store.requeue_running, now, self._lease_s)
            if requeued:
                logger.warning(
                    "requeued %d job(s) whose replica stopped renewing them (heartbeat older "
                    "than %.0f s)",
                    requeued,
                    self._lease_s,
                )
        expired = await anyio.to_thread.run_sync(store.expire, now)
        if expired:
            logger.info("results of %d job(s) expired", len(expired))
            for job_id in expired:
                await anyio.to_thread.run_sync(self._remove_results, job_id)
        await anyio.to_thread.run_sync(
            store.purge_expired, now - max(self.settings.jobs_result_ttl_s, 24 * 3600.0)
        )

    async def _run_job(self, store: JobStore, job: JobRecord) -> None:
        logger.info("job %s running (%d/%d done)", job.id, job.images_done, job.images_total)
        status: JobStatus = "done"
        message: str | None = None
        try:
            if job.source == "video":
                ours, message = await self._run_video_job(store, job)
                if not ours:
                    await self._let_go(store, job)
                    return
            options = AnalysisOptions(**job.options) if job.source != "video" else None
            while options is not None:
                if not await anyio.to_thread.run_sync(store.heartbeat, job.id, time.time()):
                    await self._let_go(store, job)
                    return
                items = await anyio.to_thread.run_sync(
                    store.pending_items, job.id, self.settings.jobs_chunk_images
                )
                if not items:
                    break
                rows = await self._analyse_chunk(job, options, items)
                if not await anyio.to_thread.run_sync(store.commit_items, job.id, rows):
                    await self._let_go(store, job)
                    return
        except AgelensError as error:
            status, message = "failed", f"{type(error).__name__}: {error}"
            logger.warning("job %s failed: %s", job.id, message)
        except Exception as error:
            status, message = "failed", "an unexpected error stopped the job; it has been logged"
            logger.exception("job %s failed", job.id, exc_info=error)
        # Uploads go before the job is marked finished, so no one sees a finished job whose
        # images are still on disk; every item's rows are committed by then, so a crash in
        # between only requeues a job with nothing left to do.
        await anyio.to_thread.run_sync(self._remove_uploads, job.id)
        now = time.time()
        await anyio.to_thread.run_sync(
            store.finish_job, job.id, status, now, now + self.settings.jobs_result_ttl_s, message
        )
        logger.info("job %s %s", job.id, status)

    async def _run_video_job(self, store: JobStore, job: JobRecord) -> tuple[bool, str | None]:
        """Track a video job's upload into its results folder (tracks.parquet, people.parquet,
        annotated.mp4), reporting frames done as it goes. (False, None) when the job stopped
        being ours (deleted or requeued); else (True, message): a damaged video keeps the
        frames before the damage and the job ends `done` with the error as its message."""
        from agelens.video.run import run_video
        from agelens.video.tracking import TrackOptions

        options = dict(job.options)
        video_options = options.pop("video", {}) or {}
        analysis = AnalysisOptions(**options)
        analyzer = self.pool.analyzer(analysis.detector, analysis.estimator)
        items = await anyio.to_thread.run_sync(store.pending_items, job.id, 1)
        if not items or items[0].source is None:
            return True, None
        upload = self.uploads / job.id / items[0].source
        results = self.results_folder(job.id)
        ours = True
        last_report = 0.0

        def progress(done: int, expected: int | None) -> None:
            nonlocal ours, last_report
            now = time.monotonic()
            if now - last_report < 1.0:
                return
            last_report = now
            total = max(expected or 0, done)
            ours = store.heartbeat(job.id, time.time()) and store.set_progress(
                job.id, done, total, 0
            )

        def track() -> Any:
            results.mkdir(parents=True, exist_ok=True)
            return run_video(
                upload,
                analyzer,
                options=TrackOptions(
                    detect_every=int(video_options.get("detect_every", 1)),
                    estimate_every=int(video_options.get("estimate_every", 10)),
                    min_face_px=max(analysis.min_face, 16.0),
                    max_faces=analysis.max_faces,
                ),
                out=results / "tracks.parquet",
                summary=results / "people.parquet",
                draw=results / "annotated.mp4",
                progress=progress,
                stop=lambda: not ours,
            )

        run = await anyio.to_thread.run_sync(track, limiter=self._infer_limiter)
        if not ours:
            return False, None
        # The item's rows first (an error row for a damaged video), then the final counts:
        # committing counts the item as one done image, which the frame counts replace.
        rows = [] if run.error is None else [error_row(items[0].label, None, run.error)]
        await anyio.to_thread.run_sync(store.commit_items, job.id, [(items[0].index, rows)])
        ours = await anyio.to_thread.run_sync(
            store.set_progress, job.id, run.frames, run.frames, len(run.people)
        )
        message = None if run.error is None else f"{type(run.error).__name__}: {run.error}"
        return ours, message

    async def _let_go(self, store: JobStore, job: JobRecord) -> None:
        """Stop working on a job that is no longer ours: deleted (then its uploads go), or
        requeued after its lease ran out (then another worker needs them)."""
        if await anyio.to_thread.run_sync(store.get_job, job.id) is None:
            logger.info("job %s was deleted while running", job.id)
            await anyio.to_thread.run_sync(self._remove_uploads, job.id)
        else:
            logger.warning("job %s was requeued while running (its lease ran out)", job.id)

    async def _analyse_chunk(
        self, job: JobRecord, options: AnalysisOptions, items: Sequence[ItemRecord]
    ) -> list[tuple[int, list[dict[str, Any]]]]:
        """Rows per item of one chunk: inputs fetched/read and decoded side by side, then one
        batched Analyzer run over the images that decoded. If that run fails, each image is
        run alone so that only the culprit gets an error row (as `agelens batch` does)."""
        # JPEGs decoded at the size the detector needs, as `agelens batch` decodes them.
        max_scale = await anyio.to_thread.run_sync(self.pool.max_decode_scale, options)
        loaded = await asyncio.gather(*(self._load(job, item, max_scale) for item in items))
        rows: dict[int, list[dict[str, Any]]] = {}
        decoded: list[tuple[ItemRecord, LoadedImage]] = []
        for item, image in zip(items, loaded, strict=True):
            if image.image is None:
                assert image.error is not None
                rows[item.index] = [error_row(item.label, image.content_sha256, image.error)]
            else:
                decoded.append((item, image))
        if decoded:
            results = await anyio.to_thread.run_sync(
                self._run_isolated,
                options,
                [image.for_analysis() for _, image in decoded],
                limiter=self._infer_limiter,
            )
            for (item, image), result in zip(decoded, results, strict=True):
                rows[item.index] = (
                    [error_row(item.label, image.content_sha256, result)]
                    if isinstance(result, Exception)
                    else result_rows(item.label, image.content_sha256, result)
                )
        return [(item.index, rows[item.index]) for item in items]

    def _run_isolated(
        self, options: AnalysisOptions, images: Sequence[DecodedImage]
    ) -> list[ImageResult | Exception]:
        """One shared run over `images` (blocking); if it raises, each image alone
        (agelens.intake.run_isolated, as `agelens batch` does)."""
        return run_isolated(lambda group: self.pool.run(options, group), images)

    async def _load(
        self,
        job: JobRecord,
        item: ItemRecord,
        max_scale: Callable[[tuple[int, int]], int] | None = None,
    ) -> LoadedImage:
        """The item fetched (URL, every SSRF check) or read (a zip member stored at
        submission), hashed and decoded through agelens.intake; its error, never raised."""
        if item.refused is not None:
            return LoadedImage(item.label, None, error=item.refused)
        assert item.source is not None
        try:
            if job.source == "urls":
                data = await fetch_url(self.fetcher, item.source)
            else:
                data = await anyio.to_thread.run_sync(self._read_upload, job.id, item.source)
        except AgelensError as error:
            return LoadedImage(item.label, None, error=error)
        limits = IntakeOptions(
            max_pixels=self.settings.max_pixels, max_bytes=self.settings.max_body_bytes
        )
        return await anyio.to_thread.run_sync(
            lambda: load_bytes(data, item.label, limits, max_scale=max_scale),
            limiter=self._decode_limiter,
        )

    def _read_upload(self, job_id: str, name: str) -> bytes:
        try:
            return (self.uploads / job_id / name).read_bytes()
        except OSError as error:
            raise ZipMemberError(
                f"the uploaded file is gone from the server ({error.strerror})"
            ) from error


def _store_video(data: bytes, target: Path) -> int:
    """Write an uploaded video to `target` and return its expected frame count; raises
    InvalidRequestError (and removes it) when it is not a video FFmpeg can open."""
    from agelens.errors import MissingExtraError, VideoSourceError
    from agelens.video.sources import open_source

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    try:
        with open_source(target) as video:
            info = video.info
    except (VideoSourceError, MissingExtraError) as error:
        target.unlink(missing_ok=True)
        raise InvalidRequestError(f"the upload is not a video agelens can read: {error}") from error
    return round(info.duration_s * info.fps) if info.duration_s else 0


def _new_id() -> str:
    return uuid.uuid4().hex


def _expired(job: JobRecord) -> bool:
    return job.expires_at is not None and job.expires_at <= time.time()


def _iso(seconds: float | None) -> str:
    import datetime as dt

    if seconds is None:
        return "–"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")
