"""The service's inference engine: loaded models, and micro-batching of concurrent requests.

Requests do not call the Analyzer directly. Each decoded image goes into a bounded queue; a few
consumer tasks take what has arrived within a short window (`batch_window_ms`), group it by
option set and run each group as one batched Analyzer call on a worker thread, off the event
loop. A full queue answers at once with OverloadedError (HTTP 503 + Retry-After) instead of
growing: under overload, latency stays bounded and memory stays flat.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

from agelens.errors import AgelensError
from agelens.imaging import DecodedImage
from agelens.models.backends import (
    DETECTORS,
    ESTIMATORS,
    create_detector,
    create_estimator,
    estimator_names,
)
from agelens.models.base import Detector, Estimator, TunableDetector
from agelens.pipeline import Analyzer
from agelens.server.errors import InvalidRequestError, OverloadedError
from agelens.server.metrics import Metrics
from agelens.types import ImageResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AnalysisOptions:
    """What a request may choose; requests with equal options share inference runs."""

    detector: str
    estimator: str
    min_face: float = 0.0
    max_faces: int | None = None
    #: the detector's minimum face score and NMS IoU for this request (None: its own)
    score_threshold: float | None = None
    iou_threshold: float | None = None


class ModelPool:
    """Loaded detectors and estimators by name, shared by the Analyzers of every option set.

    The configured defaults load in `load_defaults()` (the service's start-up); other registered
    names load on first use. Thread-safe.
    """

    def __init__(self, detector: str, estimator: str, *, threads: int | None, max_pixels: int):
        self.default_detector = detector
        self.default_estimator = estimator
        self.threads = threads
        self.max_pixels = max_pixels
        self._detectors: dict[str, Detector] = {}
        self._estimators: dict[str, Estimator] = {}
        self._analyzers: dict[tuple[str, str], Analyzer] = {}
        self._lock = threading.Lock()
        self.ready = False

    def load_defaults(self) -> None:
        """Load the default models (raises ModelNotFetchedError naming the fetch command)."""
        self.analyzer(self.default_detector, self.default_estimator)
        self.ready = True

    def check_names(self, detector: str, estimator: str) -> None:
        """Raise InvalidRequestError for names that are not registered. Registered and loaded
        names are answered from memory; only an unloaded name that may be a trained model
        looks at the trained-model folders (every request passes here)."""
        if detector not in DETECTORS:
            raise InvalidRequestError(
                f"unknown detector {detector!r}; choose one of {', '.join(sorted(DETECTORS))}"
            )
        with self._lock:
            loaded = estimator in self._estimators
        # The operator's default may be a trained model's folder path (`serve --estimator
        # PATH`); requests may name that one, never other paths on the server.
        if loaded or estimator in ESTIMATORS or estimator == self.default_estimator:
            return
        names = estimator_names()
        if estimator not in names:
            raise InvalidRequestError(
                f"unknown estimator {estimator!r}; choose one of {', '.join(names)}"
            )

    def analyzer(self, detector: str, estimator: str) -> Analyzer:
        """The Analyzer for this pair, loading what is not loaded yet."""
        self.check_names(detector, estimator)
        with self._lock:
            key = (detector, estimator)
            if key not in self._analyzers:
                if detector not in self._detectors:
                    self._detectors[detector] = create_detector(detector, self.threads)
                if estimator not in self._estimators:
                    self._estimators[estimator] = create_estimator(estimator, self.threads)
                self._analyzers[key] = Analyzer(
                    self._detectors[detector],
                    self._estimators[estimator],
                    max_pixels=self.max_pixels,
                )
            return self._analyzers[key]

    def loaded(self) -> dict[str, list[str]]:
        """Names of the loaded detectors and estimators."""
        with self._lock:
            return {"detectors": sorted(self._detectors), "estimators": sorted(self._estimators)}

    def max_decode_scale(self, options: AnalysisOptions) -> Callable[[tuple[int, int]], int] | None:
        """How far an image may be shrunk while decoding it for `options`' models
        (`Analyzer.max_decode_scale`; blocking: loads the models on first use). None (decode
        whole) before the defaults are loaded or when these models cannot be: the analysis
        then reports why (503 `not_ready`, or the models' own error), as it did before."""
        if not self.ready:
            return None
        try:
            analyzer = self.analyzer(options.detector, options.estimator)
        except AgelensError as error:
            logger.debug("no reduced decoding for %s: %s", options, error)
            return None
        return analyzer.max_decode_scale()

    def run(self, options: AnalysisOptions, images: Sequence[DecodedImage]) -> list[ImageResult]:
        """One batched Analyzer call for images sharing `options` (blocking): JPEGs decoded
        reduced (`Service.decode`) are decoded again, larger, for small faces."""
        analyzer = self.analyzer(options.detector, options.estimator)
        if options.score_threshold is not None or options.iou_threshold is not None:
            analyzer = _with_thresholds(analyzer, options)
        return analyzer.analyze_decoded(
            images, min_face=options.min_face, max_faces=options.max_faces
        )


def _with_thresholds(analyzer: Analyzer, options: AnalysisOptions) -> Analyzer:
    """An Analyzer sharing `analyzer`'s loaded models, its detector run with the thresholds of
    `options`. Built per batch rather than cached: thresholds are free numbers from requests,
    and the copy shares the networks, so it costs microseconds."""
    detector = analyzer.detector
    if not hasattr(detector, "with_thresholds"):
        raise InvalidRequestError(
            f"the detector {detector.name!r} has no adjustable score or NMS threshold"
        )
    tunable = cast(TunableDetector, detector)
    return Analyzer(
        tunable.with_thresholds(
            score_threshold=options.score_threshold, iou_threshold=options.iou_threshold
        ),
        analyzer.estimator,
        max_pixels=analyzer.max_pixels,
    )


@dataclass(slots=True)
class _Job:
    options: AnalysisOptions
    image: DecodedImage
    future: asyncio.Future[ImageResult]


RunBatch = Callable[[AnalysisOptions, Sequence[DecodedImage]], list[ImageResult]]


class MicroBatcher:
    """Shares inference runs between concurrent requests; see the module docstring."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        window_ms: float,
        max_images: int,
        queue_size: int,
        workers: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.window_seconds = window_ms / 1000.0
        self.max_images = max_images
        self.queue_size = queue_size
        self.workers = workers
        self.metrics = metrics
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the consumer tasks (inside the running event loop)."""
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="agelens-infer")
        self._tasks = [asyncio.create_task(self._consume()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Stop consuming; queued requests fail with OverloadedError."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(OverloadedError("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def depth(self) -> int:
        """Images waiting in the queue."""
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, options: AnalysisOptions, image: DecodedImage) -> ImageResult:
        """Analyse one decoded image; raises OverloadedError at once when the queue is full."""
        if self._queue is None:
            raise OverloadedError("the service is not accepting work yet")
        future: asyncio.Future[ImageResult] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(options, image, future))
        except asyncio.QueueFull:
            raise OverloadedError(
                f"{self.queue_size} images are already waiting; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        self._observe_depth()
        return await future

    def _observe_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.depth)

    async def _consume(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            if self.window_seconds > 0 and self._queue.qsize() < self.max_images - 1:
                # Wait a moment for concurrent requests to join this run.
                await asyncio.sleep(self.window_seconds)
            while len(jobs) < self.max_images and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            self._observe_depth()
            await self._run_jobs(jobs, loop)
            # Drop this run's images now rather than when the next run arrives: decoded
            # images count against the service's memory budget for as long as they live.
            jobs.clear()

    async def _run_jobs(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        """Run the jobs of one collection, grouped by options, and answer their futures."""
        groups: dict[AnalysisOptions, list[_Job]] = {}
        for job in jobs:
            if not job.future.done():  # the client may have gone away
                groups.setdefault(job.options, []).append(job)
        for options, group in groups.items():
            if self.metrics is not None:
                self.metrics.batch_images.observe(len(group))
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, options, [job.image for job in group]
                )
            except Exception as error:  # delivered to every request of the group
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, result in zip(group, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
