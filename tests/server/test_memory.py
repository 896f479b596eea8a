"""The service's budget for decoded images: reserved from the header, held while the array
lives, refused with 503 (retry) or 413 (never fits)."""

from __future__ import annotations

import gc
import io

import numpy as np
import pytest
from PIL import Image

from agelens.errors import ImageTooLargeError
from agelens.server.errors import OverloadedError
from agelens.server.memory import BYTES_PER_PIXEL, DecodedMemory, header_pixels
from tests.server.conftest import ClientFactory


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_header_pixels_reads_the_size_without_decoding() -> None:
    assert header_pixels(_png(300, 200)) == 60_000
    assert header_pixels(b"not an image") is None


def test_a_reservation_lasts_as_long_as_the_array() -> None:
    memory = DecodedMemory(1000)
    memory.reserve(600, "a.jpg")
    array = np.zeros(10)
    memory.hold_while_alive(array, 600)
    with pytest.raises(OverloadedError):
        memory.reserve(600, "b.jpg")
    view = array[2:]  # a view keeps the decoded array alive
    del array
    gc.collect()
    assert memory.used_bytes == 600
    del view
    gc.collect()
    assert memory.used_bytes == 0
    memory.reserve(600, "b.jpg")
    with pytest.raises(ImageTooLargeError, match="AGELENS_MAX_DECODED_BYTES"):
        memory.reserve(1001, "c.jpg")


def test_the_service_refuses_what_does_not_fit_and_serves_what_does(
    make_client: ClientFactory,
) -> None:
    image = _png(500, 400)
    needed = BYTES_PER_PIXEL * 500 * 400
    client = make_client(max_decoded_bytes=needed + 10)
    memory = client.app.state.service.decoded_memory  # type: ignore[attr-defined]
    headers = {"Content-Type": "image/png"}
    assert client.post("/v1/analyze", content=image, headers=headers).status_code == 200
    gc.collect()
    assert memory.used_bytes == 0  # given back once the request's arrays are gone
    memory.reserve(100, "another request's image")
    busy = client.post("/v1/analyze", content=image, headers=headers)
    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "overloaded"
    assert "Retry-After" in busy.headers
    memory.release(100)
    assert client.post("/v1/analyze", content=image, headers=headers).status_code == 200
    huge = client.post("/v1/analyze", content=_png(600, 400), headers=headers)
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "image_too_large"
    # A batch isolates the refusal to the image that does not fit.
    files = [
        ("images", ("a.png", image, "image/png")),
        ("images", ("b.png", _png(600, 400), "image/png")),
    ]
    batch = client.post("/v1/analyze/batch", files=files)
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert "result" in results[0]
    assert results[1]["error"]["code"] == "image_too_large"
