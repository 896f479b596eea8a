"""The Analyzer: image in, ImageResult out. Every door (CLI, service, batch) goes through it."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

from agelens.imaging import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageSource,
    ReducedImage,
    decode_encoded,
    describe_source,
    load_image,
    load_image_reduced,
    read_image_file,
)
from agelens.models.backends import (
    DEFAULT_DETECTOR,
    DEFAULT_ESTIMATOR,
    create_detector,
    create_estimator,
)
from agelens.models.base import (
    Detector,
    Estimator,
    ReducingDetector,
    RGBImage,
    chip_count,
    concat_chips,
)
from agelens.types import AgeGenderEstimate, Detection, Face, ImageResult

logger = logging.getLogger(__name__)

#: The smallest face box side, in pixels of the image faces are cut from, at which every chip
#: an agelens estimator cuts is a reduction of those pixels, never an enlargement: the largest
#: is faceres' 224-px chip from 1.25 times the box (face-api: 112 px from the box, Cydral: 64
#: px from 1.4 times it). A JPEG decoded at a reduced size for the detector is decoded again,
#: less reduced, when a face found in it is smaller than this.
SHARP_FACE_SIDE = 180

_ENCODED_SOURCES = (str, os.PathLike, bytes, bytearray, memoryview)


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
        """Analyse several images with one network run per model; raises on the first bad one.

        Each source is decoded with `decode`: a JPEG path or JPEG bytes at a reduced size where
        the detector allows it. Boxes, keypoints and `image_wh` are the full image's.
        """
        return self.analyze_decoded(
            [self.decode(source) for source in sources], min_face=min_face, max_faces=max_faces
        )

    def decode(self, source: ImageSource, *, label: str | None = None) -> DecodedImage:
        """Decode one image the way this Analyzer's detector wants it.

        With a detector that can search reduced images (the BlazeFace detectors), a JPEG path
        or JPEG bytes is decoded at the smallest DCT scale the detector allows for its size
        (`ReducingDetector.max_reduction`, and no smaller than keeps a face spanning half the
        short side `SHARP_FACE_SIDE` pixels wide); `analyze_decoded` decodes it again, less
        reduced, only when a face it finds is too small in it to cut a sharp chip from. Other
        sources are decoded whole, as `load_image` decodes them. Raises what `load_image`
        raises.
        """
        label = label or describe_source(source)
        max_scale = self.max_decode_scale()
        if max_scale is None or not isinstance(source, _ENCODED_SOURCES):
            start = time.perf_counter()
            pixels = load_image(source, max_pixels=self.max_pixels, label=label)
            return DecodedImage.whole(pixels, label, (time.perf_counter() - start) * 1000)
        data = read_image_file(source) if isinstance(source, str | os.PathLike) else source
        return decode_encoded(data, max_scale, max_pixels=self.max_pixels, label=label)

    def max_decode_scale(self) -> Callable[[tuple[int, int]], int] | None:
        """How far an image of a given full size may be shrunk while decoding it for this
        Analyzer (see `decode`); None when its detector searches whole images only."""
        detector = self.detector
        if not isinstance(detector, ReducingDetector):
            return None
        return partial(_max_scale, detector)

    def analyze_decoded(
        self,
        images: Sequence[DecodedImage],
        *,
        min_face: float = 0.0,
        max_faces: int | None = None,
    ) -> list[ImageResult]:
        """The pipeline on images from `decode`; `timings_ms["decode"]` includes decoding a
        reduced JPEG again for small faces."""
        results, redecode_ms = self._analyze_frames(
            [decoded.image for decoded in images],
            [decoded.encoded for decoded in images],
            min_face,
            max_faces,
        )
        return [
            ImageResult(
                faces=r.faces,
                image_wh=r.image_wh,
                timings_ms={"decode": decoded.decode_ms + extra_ms, **r.timings_ms},
                models=r.models,
                source=decoded.label,
            )
            for r, decoded, extra_ms in zip(results, images, redecode_ms, strict=True)
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
        frames = [ReducedImage.whole(image) for image in images]
        results, _ = self._analyze_frames(frames, [None] * len(frames), min_face, max_faces)
        return results

    def _analyze_frames(
        self,
        frames: Sequence[ReducedImage],
        encoded: Sequence[bytes | bytearray | memoryview | None],
        min_face: float,
        max_faces: int | None,
    ) -> tuple[list[ImageResult], list[float]]:
        """Results, and milliseconds spent decoding again, of each image (see `analyze_many`):
        in `workers` groups side by side when there are several."""
        if not frames:
            return [], []
        if self.workers > 1 and len(frames) > 1:
            groups = min(self.workers, len(frames))
            bounds = [round(i * len(frames) / groups) for i in range(groups + 1)]
            futures = [
                self._worker_pool().submit(
                    self._analyze_group, frames[lo:hi], encoded[lo:hi], min_face, max_faces
                )
                for lo, hi in itertools.pairwise(bounds)
            ]
            parts = [future.result() for future in futures]
            return (
                [result for results, _ in parts for result in results],
                [ms for _, redecode_ms in parts for ms in redecode_ms],
            )
        return self._analyze_group(frames, encoded, min_face, max_faces)

    def _detect(
        self, frames: Sequence[ReducedImage], min_face: float, max_faces: int | None
    ) -> list[tuple[Detection, ...]]:
        if isinstance(self.detector, ReducingDetector) and any(f.scale > 1 for f in frames):
            return self.detector.detect_reduced(frames, min_face=min_face, max_faces=max_faces)
        return self.detector.detect_many(
            [frame.pixels for frame in frames], min_face=min_face, max_faces=max_faces
        )

    def _crop_source(
        self,
        frame: ReducedImage,
        data: bytes | bytearray | memoryview | None,
        found: Sequence[Detection],
    ) -> ReducedImage:
        """The image to cut `found`'s chips from: `frame`, or the same JPEG decoded again less
        reduced when its smallest face is under `SHARP_FACE_SIDE` pixels in `frame`."""
        if not found or frame.scale == 1 or data is None:
            return frame
        smallest = min(min(x2 - x1, y2 - y1) for x1, y1, x2, y2 in (d.box_xyxy for d in found))
        allowed = max(1, int(smallest // SHARP_FACE_SIDE))
        if allowed >= frame.scale:
            return frame
        return load_image_reduced(data, lambda _: allowed, max_pixels=self.max_pixels)

    def _analyze_group(
        self,
        frames: Sequence[ReducedImage],
        encoded: Sequence[bytes | bytearray | memoryview | None],
        min_face: float,
        max_faces: int | None,
    ) -> tuple[list[ImageResult], list[float]]:
        count = len(frames)
        start = time.perf_counter()
        detections = self._detect(frames, min_face, max_faces)
        detect_ms = (time.perf_counter() - start) * 1000
        redecode_ms: list[float] = []
        chips = []
        align_ms = 0.0
        for frame, data, found in zip(frames, encoded, detections, strict=True):
            start = time.perf_counter()
            source = self._crop_source(frame, data, found)
            redecode_ms.append((time.perf_counter() - start) * 1000 if source is not frame else 0)
            start = time.perf_counter()
            chips.append(self.estimator.align(source.pixels, _in_pixels_of(found, source)))
            align_ms += (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        batch = concat_chips(chips)
        estimates = self.estimator.estimate(batch) if chip_count(batch) else []
        estimate_ms = (time.perf_counter() - start) * 1000
        timings = {
            "detect": detect_ms / count,
            "align": align_ms / count,
            "estimate": estimate_ms / count,
        }
        results, cursor = [], 0
        for frame, found in zip(frames, detections, strict=True):
            faces = tuple(
                _face(d, e)
                for d, e in zip(found, estimates[cursor : cursor + len(found)], strict=True)
            )
            cursor += len(found)
            results.append(
                ImageResult(
                    faces=faces,
                    image_wh=frame.full_wh,
                    timings_ms=dict(timings),
                    models=dict(self.models),
                )
            )
        return results, redecode_ms


def _max_scale(detector: ReducingDetector, image_wh: tuple[int, int]) -> int:
    """How far to shrink an image of full size `image_wh` while decoding it: as far as the
    detector allows, but not so far that a face spanning half the short side (a portrait)
    would be under `SHARP_FACE_SIDE` and need decoding again; small images stay whole."""
    return min(detector.max_reduction(image_wh), min(image_wh) // (2 * SHARP_FACE_SIDE))


def _in_pixels_of(detections: Sequence[Detection], image: ReducedImage) -> Sequence[Detection]:
    """Detections in full-image pixels moved into the pixels of `image`."""
    if image.scale == 1 and image.offset_xy == (0, 0):
        return detections
    moved = []
    for detection in detections:
        x1, y1, x2, y2 = detection.box_xyxy
        moved.append(
            replace(
                detection,
                box_xyxy=(*image.from_full(x1, y1), *image.from_full(x2, y2)),
                keypoints=tuple(image.from_full(x, y) for x, y in detection.keypoints),
            )
        )
    return moved
