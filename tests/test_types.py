"""Result types: `from_dict` reads back what `to_dict` writes (the client parses responses)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from agelens.types import Face, ImageResult

FACE = Face(
    box_xyxy=(10.5, 20.25, 110.0, 140.75),
    detection_score=0.9876,
    keypoints=((30.0, 50.0), (70.0, 50.0), (50.0, 70.0), (50.0, 90.0), (15.0, 60.0), (95.0, 60.0)),
    age_years=41.7,
    age_interval=(35.2, 48.9),
    gender="F",
    gender_probability=0.97,
)
RESULT = ImageResult(
    faces=(FACE, replace(FACE, gender="M", gender_probability=0.5, keypoints=())),
    image_wh=(512, 384),
    timings_ms={"decode": 1.5, "detect": 10.25},
    models={"detector": "blazeface-full", "estimator": "ensemble"},
    source="photo.jpg",
)


def test_round_trip_through_json_is_lossless_for_rounded_values() -> None:
    text = json.dumps(RESULT.to_dict())
    back = ImageResult.from_dict(json.loads(text))
    assert back == RESULT
    assert back.to_dict() == RESULT.to_dict()
    assert isinstance(back.faces[0].box_xyxy, tuple)
    assert isinstance(back.faces[0].keypoints[0], tuple)


def test_extra_keys_are_ignored_and_optional_ones_default() -> None:
    data = {"image_wh": [4, 3], "faces": [], "image_jpeg_base64": "/9j/"}
    assert ImageResult.from_dict(data) == ImageResult(faces=(), image_wh=(4, 3))


def test_a_malformed_face_is_refused() -> None:
    with pytest.raises(ValueError, match="gender"):
        Face.from_dict({**FACE.to_dict(), "gender": "X"})
    with pytest.raises(KeyError):
        Face.from_dict({k: v for k, v in FACE.to_dict().items() if k != "age_years"})
