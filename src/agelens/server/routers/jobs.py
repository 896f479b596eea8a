"""The `/v1/jobs` routes. The app includes this router and keeps the JobManager in
`app.state.jobs`; authentication and rate limits are the same as every other /v1 route
(`agelens.server.deps`)."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from agelens.rows import COLUMN_NAMES, rows_to_table
from agelens.server.deps import JobManagerDep, JobOwner
from agelens.server.errors import (
    InvalidRequestError,
    NotFoundError,
    UnsupportedMediaTypeError,
    validated,
)
from agelens.server.jobs import JobManager
from agelens.server.jobstore import JobRecord
from agelens.server.schemas import (
    ErrorOut,
    JobJson,
    JobLinks,
    JobOptions,
    JobOut,
    VideoJobOptions,
)
from agelens.server.security import parse_multipart

ZIP_MEDIA_TYPES = frozenset(
    {"application/zip", "application/x-zip-compressed", "application/octet-stream"}
)
#: the report is self-contained: its inline style and inline SVG, nothing else
REPORT_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses={s: {"model": ErrorOut} for s in (400, 401, 404, 410, 413, 415, 429, 503)},
)


def _iso(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


def job_out(job: JobRecord) -> JobOut:
    """The API's view of a stored job."""
    base = f"/v1/jobs/{job.id}"
    created = _iso(job.created_at)
    assert created is not None
    return JobOut(
        id=job.id,
        status=job.status,
        source=job.source,
        progress=min(1.0, job.images_done / job.images_total) if job.images_total else 1.0,
        images_total=job.images_total,
        images_done=job.images_done,
        images_without_faces=job.images_without_faces,
        errors=job.errors,
        faces=job.faces,
        detector=str(job.options.get("detector")),
        estimator=str(job.options.get("estimator")),
        created_at=created,
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        expires_at=_iso(job.expires_at),
        message=job.message,
        links=JobLinks(
            self=base,
            results_jsonl=f"{base}/results?format=jsonl",
            results_parquet=f"{base}/results?format=parquet",
            report=f"{base}/report",
            **(
                {
                    "people_jsonl": f"{base}/people?format=jsonl",
                    "people_parquet": f"{base}/people?format=parquet",
                    "video": f"{base}/video",
                }
                if job.source == "video"
                else {}
            ),
        ),
    )


_CREATE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobJson.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **{
                            name: {"type": "string"}
                            for name in ("detector", "estimator", "min_face", "max_faces")
                        },
                    },
                    "required": ["file"],
                }
            },
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("", status_code=202, response_model=JobOut, openapi_extra=_CREATE_DOC)
async def create_job(
    request: Request, response: Response, manager: JobManagerDep, owner: JobOwner
) -> JobOut:
    """Queue a job: a JSON body `{"urls": [...]}`, a zip of images (multipart field `file`, or
    the zip itself as `application/zip`). Options (detector, estimator, min_face, max_faces)
    come as JSON fields, form fields or query parameters. Answers 202 with the job and its
    `Location`; poll it until `status` is `done`."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    query = dict(request.query_params)
    body = await request.body()
    if media_type == "application/json":
        given = validated(JobJson, body)
        options = _options(
            manager, {**query, **given.model_dump(exclude={"urls"}, exclude_unset=True)}
        )
        job = await manager.submit_urls(owner, given.urls, options)
    elif media_type == "multipart/form-data":
        fields, files = parse_multipart(body, request.headers["content-type"], max_parts=16)
        uploads = [f for f in files if f.field_name == "file"] or files
        if len(uploads) != 1:
            raise InvalidRequestError("send one zip file or video in the form field `file`")
        upload = uploads[0]
        if _is_video(upload.content_type, upload.filename):
            job = await _submit_video(
                manager, owner, upload.data, upload.filename, {**query, **fields}
            )
        else:
            options = _options(manager, {**query, **fields})
            job = await manager.submit_zip(owner, upload.data, options)
    elif media_type.startswith("video/"):
        name = str(query.pop("filename", "video.mp4"))
        job = await _submit_video(manager, owner, body, name, query)
    elif media_type in ZIP_MEDIA_TYPES:
        job = await manager.submit_zip(owner, body, _options(manager, query))
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {media_type or '(none)'}; send application/json with "
            "`urls`, a zip (multipart/form-data field `file`, or application/zip), or a video "
            "(multipart/form-data field `file`, or video/*)"
        )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job)


def _is_video(content_type: str, filename: str) -> bool:
    from agelens.video.sources import VIDEO_SUFFIXES

    suffix = ("." + filename.rsplit(".", 1)[-1].lower()) if "." in filename else ""
    return content_type.lower().startswith("video/") or suffix in VIDEO_SUFFIXES


async def _submit_video(
    manager: JobManager, owner: str | None, data: bytes, filename: str, values: dict[str, Any]
) -> JobRecord:
    given = validated(VideoJobOptions, values)
    options = manager.analysis_options(
        given.detector, given.estimator, given.min_face, given.max_faces
    )
    video = {"detect_every": given.detect_every, "estimate_every": given.estimate_every}
    return await manager.submit_video(owner, data, filename, options, video)


def _options(manager: JobManager, values: dict[str, Any]) -> Any:
    given = validated(JobOptions, values)
    return manager.analysis_options(
        given.detector, given.estimator, given.min_face, given.max_faces
    )


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, manager: JobManagerDep, owner: JobOwner) -> JobOut:
    """The job's status, progress and counts."""
    return job_out(await manager.get(owner, job_id))


@router.get(
    "/{job_id}/results",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/x-ndjson": {},
                "application/vnd.apache.parquet": {},
            },
            "description": "the rows of agelens.rows, one per face / face-less / failed image",
        }
    },
)
async def job_results(
    job_id: str,
    manager: JobManagerDep,
    owner: JobOwner,
    format: Annotated[Literal["jsonl", "parquet"], Query()] = "jsonl",
) -> Response:
    """The result rows committed so far (all of them once the job is `done`), as JSON lines
    or Parquet. 410 once the results have expired."""
    job, rows = await manager.result_rows(owner, job_id)
    headers: dict[str, str] = {"X-Job-Status": job.status}
    if job.source == "video":
        return await _video_table(manager, job, "tracks", format, headers)
    if format == "parquet":
        data = await anyio.to_thread.run_sync(_parquet_bytes, rows)
        headers["Content-Disposition"] = f'attachment; filename="job-{job.id}.parquet"'
        return Response(data, media_type="application/vnd.apache.parquet", headers=headers)
    text = "".join(
        json.dumps({k: row.get(k) for k in COLUMN_NAMES}, ensure_ascii=False) + "\n" for row in rows
    )
    headers["Content-Disposition"] = f'attachment; filename="job-{job.id}.jsonl"'
    return Response(text, media_type="application/x-ndjson", headers=headers)


async def _video_table(
    manager: JobManager,
    job: JobRecord,
    table: Literal["tracks", "people"],
    format: Literal["jsonl", "parquet"],
    headers: dict[str, str],
) -> Response:
    """A video job's track or people table as JSON lines or Parquet (empty until done)."""
    path = manager.results_folder(job.id) / f"{table}.parquet"

    def read() -> bytes:
        import pyarrow.parquet as pq

        from agelens.video.output import PEOPLE_COLUMNS, TRACK_COLUMNS, schema

        columns = TRACK_COLUMNS if table == "tracks" else PEOPLE_COLUMNS
        loaded = (
            pq.read_table(path)
            if job.status == "done" and path.is_file()
            else schema(columns).empty_table()
        )
        if format == "parquet":
            buffer = io.BytesIO()
            pq.write_table(loaded, buffer)
            return buffer.getvalue()
        return "".join(
            json.dumps(row, ensure_ascii=False) + "\n" for row in loaded.to_pylist()
        ).encode()

    data = await anyio.to_thread.run_sync(read)
    headers["Content-Disposition"] = f'attachment; filename="job-{job.id}-{table}.{format}"'
    media_type = "application/vnd.apache.parquet" if format == "parquet" else "application/x-ndjson"
    return Response(data, media_type=media_type, headers=headers)


@router.get("/{job_id}/people", response_class=Response)
async def job_people(
    job_id: str,
    manager: JobManagerDep,
    owner: JobOwner,
    format: Annotated[Literal["jsonl", "parquet"], Query()] = "jsonl",
) -> Response:
    """A video job's people: one row per tracked person (`agelens video --summary`'s
    columns), once the job is done. 404 for jobs that are not video jobs."""
    job, _ = await manager.result_rows(owner, job_id)
    if job.source != "video":
        raise NotFoundError(f"job {job_id} is not a video job: it has no people")
    return await _video_table(manager, job, "people", format, {"X-Job-Status": job.status})


@router.get("/{job_id}/video", response_class=Response)
async def job_video(job_id: str, manager: JobManagerDep, owner: JobOwner) -> Response:
    """A video job's annotated video (MP4, boxes and "#3 F 27 (24-30)" labels, audio kept),
    once the job is done."""
    job, _ = await manager.result_rows(owner, job_id)
    path = manager.results_folder(job.id) / "annotated.mp4"
    if job.source != "video":
        raise NotFoundError(f"job {job_id} is not a video job: it has no video")
    if job.status != "done" or not path.is_file():
        raise NotFoundError(f"job {job_id} has no annotated video (status: {job.status})")
    return FileResponse(path, media_type="video/mp4", filename=f"job-{job.id}.mp4")


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(rows_to_table(rows), buffer)
    return buffer.getvalue()


@router.get("/{job_id}/report", response_class=Response)
async def job_report(job_id: str, manager: JobManagerDep, owner: JobOwner) -> Response:
    """The self-contained HTML report of `agelens report` on the job's rows (so far)."""
    job, rows = await manager.result_rows(owner, job_id)

    def render() -> str:
        from agelens.report.batch_html import render_batch_html

        if job.source == "video":
            return _video_report(manager, job)

        status = (
            ""
            if job.status == "done"
            else f" ({job.status}: {job.images_done} of {job.images_total} images so far)"
        )
        return render_batch_html(
            rows_to_table(rows), source=f"job {job.id}", title=f"agelens job {job.id}{status}"
        )

    page = await anyio.to_thread.run_sync(render)
    return Response(page, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)


def _video_report(manager: JobManager, job: JobRecord) -> str:
    """The track report (`agelens report` on a track file) of a video job."""
    import pyarrow.parquet as pq

    from agelens.report.video_html import draw_track_charts, render_tracks_html, summarise_tracks
    from agelens.video.output import TRACK_COLUMNS, schema

    path = manager.results_folder(job.id) / "tracks.parquet"
    tracks = pq.read_table(path) if path.is_file() else schema(TRACK_COLUMNS).empty_table()
    summary = summarise_tracks(tracks)
    return render_tracks_html(summary, draw_track_charts(summary), source=f"job {job.id}")


@router.delete("/{job_id}", status_code=204, response_class=Response)
async def delete_job(job_id: str, manager: JobManagerDep, owner: JobOwner) -> Response:
    """Delete the job, its results and its uploaded images (a running job stops)."""
    await manager.delete(owner, job_id)
    return Response(status_code=204)
