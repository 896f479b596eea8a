"""Immutable result types. Units and coordinate conventions are part of every field name.

Boxes are `(x1, y1, x2, y2)` in pixels of the image *after* EXIF orientation, x to the right and
y downwards; keypoints are `(x, y)` pixels in the same frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Gender = Literal["F", "M"]
BoxXYXY = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Detection:
    """One face found by a detector.

    `keypoints` are BlazeFace's six points in this order: right eye, left eye (from the subject's
    view: image-left eye first), nose tip, mouth centre, right ear tragion, left ear tragion.
    """

    box_xyxy: BoxXYXY
    score: float
    keypoints: tuple[Point, ...] = ()


@dataclass(frozen=True, slots=True)
class AgeGenderEstimate:
    """What an estimator says about one face.

    `age_interval` is a (low, high) range in years meant to hold the true age 80% of the time.
    `gender_probability_male` is P(male) in [0, 1].
    """

    age_years: float
    age_interval: tuple[float, float]
    gender_probability_male: float


@dataclass(frozen=True, slots=True)
class Face:
    """One face with its estimated apparent age and gender.

    `age_interval` is a (low, high) range in years meant to hold the true age 80% of the time.
    `gender_probability` is the probability of the reported `gender`, so it is at least 0.5.
    """

    box_xyxy: BoxXYXY
    detection_score: float
    keypoints: tuple[Point, ...]
    age_years: float
    age_interval: tuple[float, float]
    gender: Gender
    gender_probability: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a stable key order (the `/v1` schema and `--json` use it)."""
        return {
            "box_xyxy": [round(v, 2) for v in self.box_xyxy],
            "detection_score": round(self.detection_score, 4),
            "keypoints": [[round(x, 2), round(y, 2)] for x, y in self.keypoints],
            "age_years": round(self.age_years, 1),
            "age_interval": [round(self.age_interval[0], 1), round(self.age_interval[1], 1)],
            "gender": self.gender,
            "gender_probability": round(self.gender_probability, 4),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Face:
        """The inverse of `to_dict` (e.g. a face of a `/v1` response), values as given."""
        x1, y1, x2, y2 = data["box_xyxy"]
        low, high = data["age_interval"]
        gender = data["gender"]
        if gender not in ("F", "M"):
            raise ValueError(f"gender must be 'F' or 'M', not {gender!r}")
        return cls(
            box_xyxy=(float(x1), float(y1), float(x2), float(y2)),
            detection_score=float(data["detection_score"]),
            keypoints=tuple((float(x), float(y)) for x, y in data["keypoints"]),
            age_years=float(data["age_years"]),
            age_interval=(float(low), float(high)),
            gender=gender,
            gender_probability=float(data["gender_probability"]),
        )


@dataclass(frozen=True, slots=True)
class ImageResult:
    """Every face found in one image; an image with no face has `faces=()`."""

    faces: tuple[Face, ...]
    image_wh: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a stable key order."""
        return {
            "source": self.source,
            "image_wh": list(self.image_wh),
            "faces": [face.to_dict() for face in self.faces],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "models": dict(self.models),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageResult:
        """The inverse of `to_dict`; keys `to_dict` does not write (such as the service's
        `image_jpeg_base64`) are ignored."""
        width, height = data["image_wh"]
        return cls(
            faces=tuple(Face.from_dict(face) for face in data["faces"]),
            image_wh=(int(width), int(height)),
            timings_ms={str(k): float(v) for k, v in data.get("timings_ms", {}).items()},
            models={str(k): str(v) for k, v in data.get("models", {}).items()},
            source=data.get("source"),
        )
