"""The service under hostile or unusual input: no 500s, typed errors, limits at the door."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.server.conftest import ClientFactory


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded_jpeg(encoded: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        assert image.format == "JPEG"
        image.load()
        return image


# ------------------------------------------------------------------ drawing huge sides


def test_return_image_of_a_side_over_65500_px_is_downscaled(client: TestClient) -> None:
    for width, height in [(65_535, 1), (1, 70_000)]:
        response = client.post(
            "/v1/analyze",
            params={"return_image": "true"},
            files={"image": ("strip.png", _png(width, height), "image/png")},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["image_wh"] == [width, height]
        assert max(_decoded_jpeg(body["image_jpeg_base64"]).size) == 65_500


def test_predict_draw_of_a_side_over_65500_px_is_downscaled(client: TestClient) -> None:
    encoded = base64.b64encode(_png(65_535, 1)).decode()
    response = client.post("/predict", json={"b64": encoded, "draw": True, "return_image": True})
    assert response.status_code == 200, response.text
    assert _decoded_jpeg(response.json()["image"]).size == (65_500, 1)


def test_batch_with_a_huge_side_still_draws_every_image(
    client: TestClient, astronaut_jpeg: bytes
) -> None:
    files = [
        ("images", ("astronaut.jpg", astronaut_jpeg, "image/jpeg")),
        ("images", ("strip.png", _png(1, 70_000), "image/png")),
    ]
    response = client.post("/v1/analyze/batch", params={"return_image": "true"}, files=files)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert len(first["result"]["faces"]) == 1
    assert _decoded_jpeg(first["result"]["image_jpeg_base64"]).size == (512, 512)
    assert _decoded_jpeg(second["result"]["image_jpeg_base64"]).size == (1, 65_500)
    assert np.asarray(_decoded_jpeg(first["result"]["image_jpeg_base64"])).shape == (512, 512, 3)


# ------------------------------------------------------------------ multipart


@pytest.mark.parametrize("path", ["/v1/analyze", "/v1/analyze/batch", "/v1/jobs"])
@pytest.mark.parametrize("length", [257, 300, 2000])
def test_a_multipart_boundary_over_256_characters_is_invalid_request(
    client: TestClient, astronaut_jpeg: bytes, path: str, length: int
) -> None:
    boundary = "b" * length
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + astronaut_jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.post(
        path, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


# ------------------------------------------------------------------ body limit


@pytest.mark.parametrize("path", ["/predict", "/v1/analyze", "/v1/analyze/batch", "/v1/jobs"])
def test_an_oversize_chunked_json_body_is_413(
    make_client: ClientFactory, astronaut_jpeg: bytes, path: str
) -> None:
    client = make_client(max_body_bytes=64 * 1024)
    encoded = base64.b64encode(astronaut_jpeg).decode()
    body = json.dumps({"b64": encoded, "image_base64": encoded}).encode()
    assert len(body) > 64 * 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts streamed bytes
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = client.post(path, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
