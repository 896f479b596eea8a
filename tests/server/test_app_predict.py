"""The Dockerised TF container's clients against a live `agelens serve`: its documented request
template and options, sent as its clients send them (JSON, HTTP basic auth, the port from PORT),
checked with what those clients do with the answer (slice the image with the integer boxes)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from agelens.geometry import iou
from agelens.server.settings import hash_api_key
from tests.conftest import agelens_serve
from tests.server.conftest import WebServer, jpeg_bytes

USER = "tf-client"
KEY = "predict-test-key-0123"

#: The container's documented request template: every option spelled out, the image as a URL
#: with the base64 field left empty (or the other way round).
TEMPLATE: dict[str, Any] = {
    "confidence": 0.5,
    "nms": 0.3,
    "draw": False,
    "face_detector": "accurate",
    "get_attributes": True,
    "return_image": False,
    "url": "",
    "b64": "",
}


@dataclass(frozen=True)
class LiveServer:
    url: str

    def predict(self, auth: tuple[str, str] | None = (USER, KEY), **fields: Any) -> httpx.Response:
        """POST /predict with the template's fields overridden by `fields`."""
        return httpx.post(
            f"{self.url}/predict", json={**TEMPLATE, **fields}, auth=auth, timeout=120
        )


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    """`agelens serve` in its own process, configured as the container's users would: the port
    only from PORT, keys and a basic-auth user name, URL input allowed from loopback (where
    the tests' image server runs)."""
    env = {
        "AGELENS_API_KEY_HASHES": hash_api_key(KEY),
        "AGELENS_BASIC_AUTH_USERNAME": USER,
        "AGELENS_URL_ALLOW_NETWORKS": "127.0.0.1/32",
        "AGELENS_THREADS": "2",
        "AGELENS_JOBS_ENABLED": "false",
    }
    # no --port: the port comes from PORT only, as on a container platform
    with agelens_serve([], env) as url:
        yield LiveServer(url)


def _serve_bytes(web_server: WebServer, path: str, data: bytes) -> str:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    web_server.routes[path] = route
    return web_server.base + path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _changed_share(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """The share of pixels that differ by more than JPEG noise does."""
    return float((np.abs(a.astype(int) - b).max(axis=2) > 80).mean())


def _decoded(text: str) -> NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


# ------------------------------------------------------------------ the documented examples


def test_the_template_with_a_url_and_an_empty_b64_finds_the_face(
    live_server: LiveServer, web_server: WebServer, astronaut: NDArray[np.uint8]
) -> None:
    url = _serve_bytes(web_server, "/astronaut.jpg", jpeg_bytes(astronaut))
    response = live_server.predict(url=url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"faces", "image_size", "confidence", "inference_time"}
    assert body["confidence"] == 0.5
    assert body["image_size"] == [512, 512]
    (face,) = body["faces"]
    x1, y1, x2, y2, w, h, confidence, age, gender = face
    # what the container's clients do with a face: cut it out of their own copy of the image
    crop = astronaut[y1:y2, x1:x2]
    assert crop.shape == (h, w, 3)
    assert type(age) is int
    assert 32 <= age <= 52
    assert gender == "F"
    assert 0.5 <= confidence <= 1


def test_the_template_with_b64_and_an_empty_url(
    live_server: LiveServer, astronaut: NDArray[np.uint8]
) -> None:
    body = live_server.predict(b64=_b64(jpeg_bytes(astronaut))).json()
    assert len(body["faces"]) == 1
    assert all(type(v) is int for v in body["faces"][0][:6])


def test_both_or_neither_image_field_is_a_clear_400(
    live_server: LiveServer, astronaut: NDArray[np.uint8]
) -> None:
    neither = live_server.predict()
    assert neither.status_code == 400
    assert "send exactly one of b64 and url" in neither.json()["error"]["message"]
    both = live_server.predict(b64=_b64(jpeg_bytes(astronaut)), url="http://127.0.0.1:9/x.jpg")
    assert both.status_code == 400


def test_draw_and_return_image_keep_the_containers_meanings(
    live_server: LiveServer, astronaut: NDArray[np.uint8]
) -> None:
    b64 = _b64(jpeg_bytes(astronaut))
    production = live_server.predict(b64=b64, draw=True, return_image=False).json()
    assert "image" not in production
    plain = _decoded(live_server.predict(b64=b64, draw=False, return_image=True).json()["image"])
    drawn = _decoded(live_server.predict(b64=b64, draw=True, return_image=True).json()["image"])
    assert plain.shape == drawn.shape == astronaut.shape
    # the plain image is the photo (JPEG noise aside); the drawn one has a box and a label on it
    assert _changed_share(plain, astronaut) < 0.001
    assert _changed_share(drawn, plain) > 0.005


def test_get_attributes_false_leaves_age_and_gender_out(
    live_server: LiveServer, astronaut: NDArray[np.uint8]
) -> None:
    body = live_server.predict(b64=_b64(jpeg_bytes(astronaut)), get_attributes=False).json()
    assert body["faces"][0][7:] == [None, None]


# ------------------------------------------------------------------ basic auth and PORT


def test_basic_auth_checks_the_user_name_and_the_key(
    live_server: LiveServer, astronaut: NDArray[np.uint8]
) -> None:
    b64 = _b64(jpeg_bytes(astronaut))
    assert live_server.predict(b64=b64).status_code == 200
    for auth in ((USER, "wrong-key"), ("someone-else", KEY), None):
        refused = live_server.predict(auth=auth, b64=b64)
        assert refused.status_code == 401, auth
        assert refused.headers["www-authenticate"].startswith("Basic")


def test_the_server_listens_on_port_from_the_environment(live_server: LiveServer) -> None:
    # the fixture gave `agelens serve` no --port, only PORT
    assert httpx.get(f"{live_server.url}/healthz", timeout=5).json() == {"status": "ok"}


# ------------------------------------------------------------------ detectors and thresholds


def _boxes(body: dict[str, Any]) -> NDArray[np.float32]:
    return np.asarray([face[:4] for face in body["faces"]], np.float32).reshape(-1, 4)


def test_the_fast_detector_finds_the_same_faces_as_the_accurate_one_on_every_sample(
    live_server: LiveServer, samples_dir: Path
) -> None:
    expected = {
        "astronaut.png": 1,
        "man_beard.jpg": 1,
        "messi5.jpg": 1,
        "sample1.jpg": 3,
        "sample2.jpg": 3,
        "sample3.jpg": 3,
        "sample4.jpg": 4,
        "sample5.jpg": 5,
        "sample6.jpg": 4,
    }
    for name, count in expected.items():
        b64 = _b64((samples_dir / name).read_bytes())
        accurate = _boxes(live_server.predict(b64=b64, face_detector="accurate").json())
        fast = _boxes(live_server.predict(b64=b64, face_detector="fast").json())
        assert len(accurate) == len(fast) == count, name
        for box in accurate:
            assert float(iou(box, fast).max()) > 0.5, name


def test_confidence_below_the_detectors_own_threshold_finds_more_faces(
    live_server: LiveServer, samples_dir: Path
) -> None:
    # messi5: one player in front of a crowd of small, blurred faces
    b64 = _b64((samples_dir / "messi5.jpg").read_bytes())
    default = live_server.predict(b64=b64).json()
    lenient = live_server.predict(b64=b64, confidence=0.2).json()
    assert lenient["confidence"] == 0.2
    assert len(default["faces"]) == 1
    assert len(lenient["faces"]) > len(default["faces"])
    assert min(face[6] for face in lenient["faces"]) < 0.5
    strict = live_server.predict(b64=b64, confidence=0.9).json()
    assert strict["faces"] == []


def test_nms_above_the_detectors_own_iou_keeps_overlapping_boxes_apart(
    live_server: LiveServer, samples_dir: Path
) -> None:
    b64 = _b64((samples_dir / "messi5.jpg").read_bytes())
    merged = live_server.predict(b64=b64, nms=0.3).json()
    apart = live_server.predict(b64=b64, nms=0.6).json()
    assert len(apart["faces"]) > len(merged["faces"])
    boxes = _boxes(apart)
    overlaps = [float(iou(box, np.delete(boxes, i, axis=0)).max()) for i, box in enumerate(boxes)]
    assert max(overlaps) > 0.3
