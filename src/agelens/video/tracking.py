"""Following every face through a video and giving each person one steady age and gender.

Per frame: detect faces (every frame, or every k-th with the boxes held in between), follow
them with supervision's ByteTrack, estimate age and gender of a track only when its face is
large and sharp enough and at most every n frames, and fuse each track's estimates
(`agelens.video.fusion`). A scene cut (the picture changes all at once) starts new tracks, so
two people filmed in the same spot on either side of a cut are not taken for one.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agelens.errors import require_extra
from agelens.models.base import RGBImage
from agelens.pipeline import Analyzer
from agelens.types import AgeGenderEstimate, BoxXYXY, Detection, Gender
from agelens.video.fusion import Estimate, Fused, estimate_weight, fuse
from agelens.video.sources import (
    DEFAULT_FRAMES_FPS,
    SourceInfo,
    VideoFrame,
    open_source,
    prefetched,
)

logger = logging.getLogger(__name__)

#: Estimates kept per track for fusion; beyond it the lowest-weighted (oldest first) go, so
#: an hour-long track costs no more to fuse than a minute-long one.
MAX_ESTIMATES_PER_TRACK = 240
#: Side of the grey thumbnail frames are compared on to find scene cuts.
_CUT_THUMBNAIL_WH = (32, 18)


@dataclass(frozen=True, slots=True)
class TrackOptions:
    """How a video is analysed.

    - `detect_every`: run the detector on every k-th frame (1: every frame); between, each
      track keeps its last box.
    - `estimate_every`: estimate a track's age and gender at most every n frames.
    - `min_face_px`: smallest face side (pixels) to detect and track.
    - `min_estimate_face_px`: smallest face side worth an estimate.
    - `min_sharpness`: least variance of the Laplacian of the face (grey, 64x64) worth an
      estimate: motion-blurred or out-of-focus faces are tracked but not estimated.
    - `lost_after_s`: seconds a track may go unseen (covered, turned away) and keep its id.
    - `scene_cut`: mean absolute difference of consecutive 32x18 grey thumbnails, each
      scaled to zero mean and unit variance (so a change of light is no cut), above which the
      frame starts a new scene with new tracks; None never cuts. On the test clips, cuts
      measured 0.83 and the largest other change (a face covered at once) 0.32.
    - `first_answer_after`: estimates a track needs before an age and gender are shown for
      it (the first estimates of a face move the fused answer most).
    - `steady_years`: the age shown for a track in each frame changes only when its fused
      age has moved at least this far from the age shown (0 follows every change): fusion
      settles within a year after a few estimates, and this keeps the label from ticking.
      The people summary always has the exact fused age.
    - `max_faces`: most faces tracked per frame (largest first), None for all.
    """

    detect_every: int = 1
    estimate_every: int = 10
    min_face_px: float = 16.0
    min_estimate_face_px: float = 40.0
    min_sharpness: float = 20.0
    lost_after_s: float = 1.5
    scene_cut: float | None = 0.5
    first_answer_after: int = 3
    steady_years: float = 1.0
    max_faces: int | None = None

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.estimate_every < 1:
            raise ValueError("detect_every and estimate_every must be at least 1")
        if self.first_answer_after < 1:
            raise ValueError("first_answer_after must be at least 1")
        if self.lost_after_s < 0:
            raise ValueError("lost_after_s must not be negative")


@dataclass(frozen=True, slots=True)
class TrackedFace:
    """One tracked face in one frame. `age_years` ... `gender_probability` are the track's
    fused answer so far (None until its first estimate); `frame_estimate` is this frame's own
    estimate when one was made (None otherwise); `estimates` counts those fused so far."""

    track_id: int
    box_xyxy: BoxXYXY
    detection_score: float
    age_years: float | None
    age_interval: tuple[float, float] | None
    gender: Gender | None
    gender_probability: float | None
    estimates: int
    frame_estimate: AgeGenderEstimate | None = None

    def label(self) -> str:
        """The label drawn on the video: "#3 F 27 (24-30)", or "#3" before any estimate."""
        if self.age_years is None or self.age_interval is None or self.gender is None:
            return f"#{self.track_id}"
        low, high = self.age_interval
        return f"#{self.track_id} {self.gender} {self.age_years:.0f} ({low:.0f}-{high:.0f})"


@dataclass(frozen=True, slots=True)
class FrameResult:
    """The tracked faces of one frame. `detected` says whether the detector ran on it (rows
    are written for those frames); `image` is the decoded frame (a reference, not a copy)."""

    index: int
    timestamp_s: float
    image_wh: tuple[int, int]
    faces: tuple[TrackedFace, ...]
    detected: bool
    scene: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    image: RGBImage | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class PersonSummary:
    """One tracked person over the whole video: when first and last seen (frame index and
    seconds), in how many analysed frames, and the fused age and gender (None when the face
    was never large or sharp enough to estimate)."""

    track_id: int
    first_frame: int
    last_frame: int
    first_seen_s: float
    last_seen_s: float
    frames_seen: int
    estimates: int
    age_years: float | None
    age_interval: tuple[float, float] | None
    gender: Gender | None
    gender_probability: float | None

    @property
    def dwell_s(self) -> float:
        """Seconds between first and last sighting."""
        return self.last_seen_s - self.first_seen_s


@dataclass
class _Track:
    """What the tracker knows of one track (mutable, private)."""

    track_id: int
    first_frame: int
    first_s: float
    last_frame: int = 0
    last_s: float = 0.0
    frames_seen: int = 0
    estimates: list[Estimate] = field(default_factory=list)
    fused: Fused | None = None
    shown_age_years: float | None = None
    last_estimate_frame: int | None = None
    best_weight: float = -1.0
    best_crop: RGBImage | None = None

    def add(self, estimate: Estimate, options: TrackOptions) -> None:
        self.estimates.append(estimate)
        if len(self.estimates) > MAX_ESTIMATES_PER_TRACK:
            weakest = min(range(len(self.estimates)), key=lambda i: self.estimates[i].weight)
            del self.estimates[weakest]
        self.fused = fuse(self.estimates)
        if self.fused is None or self.fused.estimates < options.first_answer_after:
            return
        if (
            self.shown_age_years is None
            or abs(self.fused.age_years - self.shown_age_years) >= options.steady_years
        ):
            self.shown_age_years = self.fused.age_years


def face_sharpness(image: RGBImage, box: BoxXYXY) -> float:
    """Variance of the Laplacian of the face box, grey and resized to 64x64 (0 for a box
    outside the image): large for a crisp face, small for a blurred one."""
    import cv2

    height, width = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, width), min(y2, height)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(image[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def _thumbnail(image: RGBImage) -> np.ndarray[Any, np.dtype[np.float32]]:
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, _CUT_THUMBNAIL_WH, interpolation=cv2.INTER_AREA).astype(np.float32)
    # +1: a flat frame (all black) has no variance to scale by.
    normalised: np.ndarray[Any, np.dtype[np.float32]] = (small - small.mean()) / (small.std() + 1)
    return normalised


class VideoTracker:
    """Tracks faces frame by frame for one video (feed its frames in order to `process`).

    `fps` is the video's frame rate (the tracker's patience is set in seconds). Holds one
    ByteTrack per scene; track ids keep counting up across scenes.
    """

    def __init__(self, analyzer: Analyzer, fps: float, options: TrackOptions | None = None) -> None:
        require_extra("supervision", "video")
        self.analyzer = analyzer
        self.fps = fps if fps > 0 else DEFAULT_FRAMES_FPS
        self.options = options or TrackOptions()
        self.tracks: dict[int, _Track] = {}
        self.scene = 0
        self._byte_track: Any = None
        self._id_offset = 0
        self._held: list[tuple[int, Detection]] = []
        self._previous_thumbnail: np.ndarray[Any, np.dtype[np.float32]] | None = None
        self._frames = 0
        self._new_scene()

    def _new_scene(self) -> None:
        import supervision as sv

        if self._byte_track is not None:
            self._id_offset = max(self.tracks, default=self._id_offset)
            self.scene += 1
        # ByteTrack is deprecated in supervision 0.28-0.30 in favour of the `trackers`
        # package, which needs GUI OpenCV (see pyproject.toml); the pinned release keeps it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._byte_track = sv.ByteTrack(
                frame_rate=self.fps / self.options.detect_every,
                lost_track_buffer=max(1, round(self.options.lost_after_s * 30)),
                minimum_consecutive_frames=1,
            )
        self._held = []

    def process(self, frame: VideoFrame) -> FrameResult:
        """Track and estimate the faces of the next frame."""
        options = self.options
        image = frame.image
        timings: dict[str, float] = {}
        start = time.perf_counter()
        cut = self._is_scene_cut(image)
        if cut:
            logger.info("scene cut at frame %d (%.2f s)", frame.index, frame.timestamp_s)
            self._new_scene()
        detect = cut or self._frames % options.detect_every == 0
        self._frames += 1
        estimated: dict[int, AgeGenderEstimate] = {}
        if detect:
            detections = self.analyzer.detector.detect_many(
                [image], min_face=options.min_face_px, max_faces=options.max_faces
            )[0]
            timings["detect"] = (time.perf_counter() - start) * 1000
            self._held = self._associate(detections)
            for track_id, _detection in self._held:
                self._sighted(track_id, frame)
            start = time.perf_counter()
            estimated = self._estimate_due(frame)
            timings["estimate"] = (time.perf_counter() - start) * 1000
        faces = tuple(
            self._tracked_face(track_id, detection, estimated.get(track_id))
            for track_id, detection in self._held
        )
        height, width = image.shape[:2]
        return FrameResult(
            index=frame.index,
            timestamp_s=frame.timestamp_s,
            image_wh=(int(width), int(height)),
            faces=faces,
            detected=detect,
            scene=self.scene,
            timings_ms=timings,
            image=image,
        )

    def _is_scene_cut(self, image: RGBImage) -> bool:
        if self.options.scene_cut is None:
            return False
        thumbnail = _thumbnail(image)
        previous, self._previous_thumbnail = self._previous_thumbnail, thumbnail
        if previous is None:
            return False
        return float(np.abs(thumbnail - previous).mean()) > self.options.scene_cut

    def _associate(self, detections: Sequence[Detection]) -> list[tuple[int, Detection]]:
        import supervision as sv

        if detections:
            found = sv.Detections(
                xyxy=np.array([d.box_xyxy for d in detections], dtype=np.float32),
                confidence=np.array([d.score for d in detections], dtype=np.float32),
                data={"detection": np.arange(len(detections))},
            )
        else:
            found = sv.Detections.empty()
            found.confidence = np.zeros(0, dtype=np.float32)
        tracked = self._byte_track.update_with_detections(found)
        if len(tracked) == 0:
            return []
        return [
            (self._id_offset + int(track_id), detections[int(index)])
            for track_id, index in zip(tracked.tracker_id, tracked.data["detection"], strict=True)
        ]

    def _sighted(self, track_id: int, frame: VideoFrame) -> None:
        track = self.tracks.get(track_id)
        if track is None:
            track = self.tracks[track_id] = _Track(track_id, frame.index, frame.timestamp_s)
        track.last_frame, track.last_s = frame.index, frame.timestamp_s
        track.frames_seen += 1

    def _estimate_due(self, frame: VideoFrame) -> dict[int, AgeGenderEstimate]:
        """Estimate the tracks that are due, large and sharp enough, in one batched run."""
        options = self.options
        due: list[tuple[_Track, Detection, float, float]] = []
        for track_id, detection in self._held:
            track = self.tracks[track_id]
            last = track.last_estimate_frame
            if last is not None and frame.index - last < options.estimate_every:
                continue
            x1, y1, x2, y2 = detection.box_xyxy
            side = max(x2 - x1, y2 - y1)
            if side < options.min_estimate_face_px:
                continue
            sharpness = face_sharpness(frame.image, detection.box_xyxy)
            if sharpness < options.min_sharpness:
                continue
            due.append((track, detection, side, sharpness))
        if not due:
            return {}
        estimator = self.analyzer.estimator
        chips = estimator.align(frame.image, [detection for _, detection, _, _ in due])
        results = estimator.estimate(chips)
        estimated = {}
        for (track, detection, side, _sharpness), result in zip(due, results, strict=True):
            weight = estimate_weight(side, detection.score)
            track.add(
                Estimate(
                    age_years=max(result.age_years, 0.0),
                    age_interval=result.age_interval,
                    gender_probability_male=result.gender_probability_male,
                    weight=weight,
                ),
                options,
            )
            track.last_estimate_frame = frame.index
            if weight > track.best_weight:
                track.best_weight = weight
                track.best_crop = _crop(frame.image, detection.box_xyxy)
            estimated[track.track_id] = result
        return estimated

    def _tracked_face(
        self, track_id: int, detection: Detection, estimate: AgeGenderEstimate | None
    ) -> TrackedFace:
        track = self.tracks[track_id]
        fused = track.fused if track.shown_age_years is not None else None
        return TrackedFace(
            track_id=track_id,
            box_xyxy=detection.box_xyxy,
            detection_score=detection.score,
            age_years=track.shown_age_years,
            age_interval=fused.age_interval if fused else None,
            gender=fused.gender if fused else None,
            gender_probability=fused.gender_probability if fused else None,
            estimates=fused.estimates if fused else 0,
            frame_estimate=estimate,
        )

    def people(self, *, min_frames_seen: int = 1) -> list[PersonSummary]:
        """Every track seen in at least `min_frames_seen` analysed frames, by track id."""
        return [
            _summary(track)
            for track in sorted(self.tracks.values(), key=lambda t: t.track_id)
            if track.frames_seen >= min_frames_seen
        ]

    def best_crop(self, track_id: int) -> RGBImage | None:
        """The face of the track's highest-weighted estimate (None if never estimated)."""
        track = self.tracks.get(track_id)
        return None if track is None else track.best_crop


def _summary(track: _Track) -> PersonSummary:
    fused = track.fused
    return PersonSummary(
        track_id=track.track_id,
        first_frame=track.first_frame,
        last_frame=track.last_frame,
        first_seen_s=track.first_s,
        last_seen_s=track.last_s,
        frames_seen=track.frames_seen,
        estimates=len(track.estimates),
        age_years=fused.age_years if fused else None,
        age_interval=fused.age_interval if fused else None,
        gender=fused.gender if fused else None,
        gender_probability=fused.gender_probability if fused else None,
    )


def _crop(image: RGBImage, box: BoxXYXY, margin: float = 0.25) -> RGBImage:
    """The face box with a margin of its size around it, clipped to the image (a copy)."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(int(x1 - pad_x), 0), max(int(y1 - pad_y), 0)
    right, bottom = min(int(x2 + pad_x) + 1, width), min(int(y2 + pad_y) + 1, height)
    return np.ascontiguousarray(image[top:bottom, left:right]).copy()


def create_video_analyzer(
    preset: str | None = None,
    detector: str | None = None,
    estimator: str | None = None,
    *,
    threads: int | None = None,
) -> Analyzer:
    """The Analyzer for a video: explicit model names win over the preset (default
    `balanced`). Raises UnknownModelError / ModelNotFetchedError."""
    from agelens.models.backends import resolve_models

    return Analyzer(*resolve_models(preset, detector, estimator), threads=threads)


def track(
    source: str | int | os.PathLike[str],
    *,
    analyzer: Analyzer | None = None,
    preset: str | None = None,
    options: TrackOptions | None = None,
    frames_fps: float = DEFAULT_FRAMES_FPS,
    allow_networks: Sequence[str] = (),
) -> Iterator[FrameResult]:
    """Track every face of `source` (video file, folder or glob of frames, webcam index, or
    stream URL) and yield one FrameResult per frame, in order.

    Frames are decoded in a thread ahead of the analysis. Raises VideoSourceError when the
    source cannot be opened; VideoDecodeError after the last good frame of a damaged video.
    """
    analyzer = analyzer or create_video_analyzer(preset)
    with open_source(source, frames_fps=frames_fps, allow_networks=allow_networks) as video:
        tracker = VideoTracker(analyzer, video.info.fps, options)
        for frame in prefetched(iter(video)):
            yield tracker.process(frame)


def summarize(frames: Iterable[FrameResult], *, min_frames_seen: int = 1) -> list[PersonSummary]:
    """The people of a sequence of FrameResults (as `track` yields them): per track, first
    and last sighting, analysed frames seen and the last fused age and gender."""
    people: dict[int, dict[str, Any]] = {}
    for result in frames:
        if not result.detected:
            continue
        for face in result.faces:
            person = people.setdefault(
                face.track_id,
                {
                    "track_id": face.track_id,
                    "first_frame": result.index,
                    "first_seen_s": result.timestamp_s,
                    "frames_seen": 0,
                    "estimates": 0,
                    "age_years": None,
                    "age_interval": None,
                    "gender": None,
                    "gender_probability": None,
                },
            )
            person["last_frame"] = result.index
            person["last_seen_s"] = result.timestamp_s
            person["frames_seen"] += 1
            if face.age_years is not None:
                person.update(
                    estimates=face.estimates,
                    age_years=face.age_years,
                    age_interval=face.age_interval,
                    gender=face.gender,
                    gender_probability=face.gender_probability,
                )
    return [
        PersonSummary(**person)
        for _, person in sorted(people.items())
        if person["frames_seen"] >= min_frames_seen
    ]


__all__ = [
    "FrameResult",
    "PersonSummary",
    "SourceInfo",
    "TrackOptions",
    "TrackedFace",
    "VideoTracker",
    "create_video_analyzer",
    "face_sharpness",
    "summarize",
    "track",
]
