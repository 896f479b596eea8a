"""How the service decodes: a large JPEG reduced for the detector (as `Analyzer.analyze` and
`agelens analyze` decode it), whole when the image is drawn on or sent back."""

from __future__ import annotations

import base64
import gc

import pytest
from fastapi.testclient import TestClient

from agelens.server.engine import ModelPool
from agelens.server.settings import Settings
from agelens.types import ImageResult
from tests.conftest import DecodeSpy


def _library(model_pool: ModelPool, data: bytes, detector: str | None = None) -> ImageResult:
    settings = Settings()
    analyzer = model_pool.analyzer(detector or settings.detector, settings.estimator)
    return analyzer.analyze(data)


def _assert_faces_equal(body: dict[str, object], expected: ImageResult) -> None:
    faces = body["faces"]
    assert isinstance(faces, list)
    assert len(faces) == len(expected.faces) == 1
    for got, want in zip(faces, expected.faces, strict=True):
        assert got["box_xyxy"] == pytest.approx(list(want.box_xyxy), abs=0.05)
        assert got["age_years"] == pytest.approx(want.age_years, abs=0.05)
        assert got["gender"] == want.gender


def test_a_large_jpeg_is_decoded_reduced_and_answered_in_full_image_pixels(
    client: TestClient, model_pool: ModelPool, large_photo_jpeg: bytes, decode_spy: DecodeSpy
) -> None:
    response = client.post(
        "/v1/analyze", content=large_photo_jpeg, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    assert decode_spy.scales
    assert decode_spy.scales[0] > 1
    body = response.json()
    assert body["image_wh"] == [3200, 2400]
    assert body["timings_ms"]["decode"] > 0
    # Exactly what the library answers for the same bytes.
    _assert_faces_equal(body, _library(model_pool, large_photo_jpeg))
    # The face spans a third of the photo: found where the 1200-px portrait was put.
    (face,) = body["faces"]
    x1, y1, x2, y2 = face["box_xyxy"]
    assert 1400 < (x1 + x2) / 2 < 2600
    assert 600 < (y1 + y2) / 2 < 1800
    gc.collect()
    assert client.app.state.service.decoded_memory.used_bytes == 0  # type: ignore[attr-defined]


def test_an_image_sent_back_is_decoded_whole(
    client: TestClient, model_pool: ModelPool, large_photo_jpeg: bytes, decode_spy: DecodeSpy
) -> None:
    response = client.post(
        "/v1/analyze?return_image=true",
        content=large_photo_jpeg,
        headers={"Content-Type": "image/jpeg"},
    )
    assert response.status_code == 200, response.text
    assert decode_spy.scales == []  # load_image, full size: the boxes are drawn on it
    body = response.json()
    assert body["image_wh"] == [3200, 2400]
    assert base64.b64decode(body["image_jpeg_base64"])[:2] == b"\xff\xd8"
    assert len(body["faces"]) == 1


def test_predict_decodes_reduced_unless_it_returns_the_image(
    client: TestClient, large_photo_jpeg: bytes, decode_spy: DecodeSpy
) -> None:
    b64 = base64.b64encode(large_photo_jpeg).decode()
    plain = client.post("/predict", json={"b64": b64})
    assert plain.status_code == 200, plain.text
    assert decode_spy.scales
    assert decode_spy.scales[0] > 1
    decode_spy.scales.clear()
    returned = client.post("/predict", json={"b64": b64, "return_image": True})
    assert returned.status_code == 200, returned.text
    assert decode_spy.scales == []
    assert returned.json()["image"]
    # The same face either way: the detector's boxes move by a pixel or two with the
    # reduced pixels (docs/detectors.md) and the age with them, by a little.
    (reduced,) = plain.json()["faces"]
    (whole,) = returned.json()["faces"]
    side = whole[4]
    assert reduced[:4] == pytest.approx(whole[:4], abs=0.05 * side)
    assert reduced[7] == pytest.approx(whole[7], abs=3)
    assert reduced[8] == whole[8]
