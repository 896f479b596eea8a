"""The Analyzer: image in, ImageResult out. Every door (CLI, service, batch) goes through it."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from agelens.imaging import DEFAULT_MAX_PIXELS, ImageSource, describe_source, load_image
from agelens.models.backends import (
    DEFAULT_DETECTOR,
    DEFAULT_ESTIMATOR,
    create_detector,
    create_estimator,
)
from agelens.models.base import Detector, Estimator, RGBImage, chip_count, concat_chips
from agelens.types import AgeGenderEstimate, Detection, Face, ImageResult

logger = logging.getLogger(__name__)


def worker_cores(allowed: Sequence[int], workers: int) -> list[frozenset[int]] | None:
    """The cores each of `workers` worker threads is pinned to: the allowed cores split into
    equal consecutive shares, or None (no pinning) when there are fewer cores than workers."""
    cores = sorted(allowed)
    if workers < 1 or len(cores) < workers:
        return None
    share = len(cores) // workers
    return [frozenset(cores[i * share : (i + 1) * share]) for i in range(workers)]


def pinning_initializer(workers: int) -> Callable[[], None] | None:
    """A ThreadPoolExecutor `initializer` pinning each new worker thread to its own share of
    this process's cores (Linux; elsewhere, or with fewer cores than workers, None).

    Why: measured on the 2-core VM (padded UTKFace, `fastest`, 16 images a call, two runs),
    two worker threads left to the scheduler ran at 2.22 ms an image, pinned one to each core
    at 2.09-2.10: threads that migrate lose their caches and meet on one core for a while.
    """
    if not hasattr(os, "sched_setaffinity") or not hasattr(os, "sched_getaffinity"):
        return None
    shares = worker_cores(sorted(os.sched_getaffinity(0)), workers)
    if shares is None:
        return None
    counter = itertools.count()

    def pin() -> None:
        # pid 0 is the calling thread on Linux: only this worker is pinned.
        cores = shares[next(counter) % len(shares)]
        try:
            os.sched_setaffinity(0, cores)
        except OSError as error:  # a sandbox that forbids it: run unpinned
            logger.debug("could not pin a worker thread to cores %s: %s", sorted(cores), error)

    return pin


@dataclass(frozen=True, slots=True)
class AnalyzerOptions:
    """Per-call options. `min_face` is the smallest box side in pixels to keep."""

    min_face: float = 0.0
    max_faces: int | None = None


def _face(detection: Detection, estimate: AgeGenderEstimate) -> Face:
    p_male = min(max(estimate.gender_probability_male, 0.0), 1.0)
    low, high = estimate.age_interval
    age = max(estimate.age_years, 0.0)
    return Face(
        box_xyxy=detection.box_xyxy,
        detection_score=detection.score,
        keypoints=detection.keypoints,
        age_years=age,
        age_interval=(max(0.0, min(low, age)), max(high, age)),
        gender="M" if p_male >= 0.5 else "F",
        gender_probability=max(p_male, 1.0 - p_male),
    )


class Analyzer:
    """Detects every face and estimates its apparent age and gender.

    Models load once, in the constructor (ModelNotFetchedError names the fetch command when
    they are missing). All faces of all images passed in one call go through each network in
    one batched run. Not thread-safe for concurrent calls on the same instance's options, but
    ONNX Runtime sessions themselves may be shared.

    `workers > 1` splits each call's images into that many groups run side by side in worker
    threads; with `pin_workers` (the default) each worker thread is pinned to its own share of
    the process's cores when there are at least as many cores as workers (see
    `pinning_initializer`: 6% more images a second measured on 2 cores).
    """

    def __init__(
        self,
        detector: str | Detector = DEFAULT_DETECTOR,
        estimator: str | Estimator = DEFAULT_ESTIMATOR,
        *,
        threads: int | None = None,
        workers: int = 1,
        pin_workers: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        # Instances are accepted so that several Analyzers (e.g. the service's, one per option
        # set) can share loaded models instead of loading them again.
        self.detector = (
            create_detector(detector, threads) if isinstance(detector, str) else detector
        )
        self.estimator = (
            create_estimator(estimator, threads) if isinstance(estimator, str) else estimator
        )
        self.max_pixels = max_pixels
        self.workers = workers
        self.pin_workers = pin_workers
        self.models = {"detector": self.detector.name, "estimator": self.estimator.version()}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        """Stop the worker threads (if any were started). The Analyzer stays usable."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _worker_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.workers,
                    thread_name_prefix="agelens",
                    initializer=pinning_initializer(self.workers) if self.pin_workers else None,
                )
            return self._pool

    def analyze(
        self, source: ImageSource, *, min_face: float = 0.0, max_faces: int | None = None
    ) -> ImageResult:
        """Analyse one image (path, bytes, PIL image or RGB ndarray).

        Raises ImageDecodeError / ImageTooLargeError for inputs that are not usable images.
        """
        return self.analyze_many([source], min_face=min_face, max_faces=max_faces)[0]

    def analyze_many(
        self,
        sources: Iterable[ImageSource],
        *,
        min_face: float = 0.0,
        max_faces: int | None = None,
    ) -> list[ImageResult]:
        """Analyse several images with one network run per model; raises on the first bad one."""
        images, labels, decode_ms = [], [], []
        for source in sources:
            start = time.perf_counter()
            images.append(load_image(source, max_pixels=self.max_pixels))
            decode_ms.append((time.perf_counter() - start) * 1000)
            labels.append(describe_source(source))
        results = self.analyze_arrays(images, min_face=min_face, max_faces=max_faces)
        return [
            ImageResult(
                faces=r.faces,
                image_wh=r.image_wh,
                timings_ms={"decode": ms, **r.timings_ms},
                models=r.models,
                source=label,
            )
            for r, ms, label in zip(results, decode_ms, labels, strict=True)
        ]

    def analyze_arrays(
        self, images: Sequence[RGBImage], *, min_face: float = 0.0, max_faces: int | None = None
    ) -> list[ImageResult]:
        """The pipeline on decoded RGB uint8 arrays. Stage timings are per image (batched
        stages are split evenly between the images of the call).

        With `workers > 1`, the images are split into that many groups that run side by side
        (ONNX Runtime and OpenCV release the GIL), each group still batched: on a few cores
        this keeps every core busy, which intra-op threads do poorly for such small networks.
        """
        if not images:
            return []
        if self.workers > 1 and len(images) > 1:
            groups = min(self.workers, len(images))
            bounds = [round(i * len(images) / groups) for i in range(groups + 1)]
            futures = [
                self._worker_pool().submit(
                    self._analyze_group, images[lo:hi], min_face=min_face, max_faces=max_faces
                )
                for lo, hi in itertools.pairwise(bounds)
            ]
            return [result for future in futures for result in future.result()]
        return self._analyze_group(images, min_face=min_face, max_faces=max_faces)

    def _analyze_group(
        self, images: Sequence[RGBImage], *, min_face: float, max_faces: int | None
    ) -> list[ImageResult]:
        count = len(images)
        start = time.perf_counter()
        detections = self.detector.detect_many(images, min_face=min_face, max_faces=max_faces)
        detect_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        chips = concat_chips(
            [
                self.estimator.align(image, found)
                for image, found in zip(images, detections, strict=True)
            ]
        )
        align_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        estimates = self.estimator.estimate(chips) if chip_count(chips) else []
        estimate_ms = (time.perf_counter() - start) * 1000
        timings = {
            "detect": detect_ms / count,
            "align": align_ms / count,
            "estimate": estimate_ms / count,
        }
        results, cursor = [], 0
        for image, found in zip(images, detections, strict=True):
            faces = tuple(
                _face(d, e)
                for d, e in zip(found, estimates[cursor : cursor + len(found)], strict=True)
            )
            cursor += len(found)
            height, width = np.asarray(image).shape[:2]
            results.append(
                ImageResult(
                    faces=faces,
                    image_wh=(int(width), int(height)),
                    timings_ms=dict(timings),
                    models=dict(self.models),
                )
            )
        return results
