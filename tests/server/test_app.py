"""The REST API end to end: real models on real faces through FastAPI's test client."""

from __future__ import annotations

import base64
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agelens.models.backends import DEFAULT_DETECTOR
from tests.conftest import WebServer, image_route, redirect_route
from tests.server.conftest import ClientFactory, jpeg_bytes


def _upload(client: TestClient, data: bytes, name: str = "photo.jpg", **fields: Any) -> Any:
    return client.post(
        "/v1/analyze",
        files={"image": (name, data, "image/jpeg")},
        data={k: str(v) for k, v in fields.items()},
    )


def _error_code(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return str(body["error"]["code"])


# ------------------------------------------------------------------ analyze: the happy paths


def test_multipart_upload_finds_the_astronaut(client: TestClient, astronaut_jpeg: bytes) -> None:
    response = _upload(client, astronaut_jpeg, "astronaut.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "astronaut.jpg"
    assert body["image_wh"] == [512, 512]
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert face["gender"] == "F"
    assert 32 <= face["age_years"] <= 52
    low, high = face["age_interval"]
    assert low <= face["age_years"] <= high
    assert 0.5 <= face["gender_probability"] <= 1
    assert len(face["keypoints"]) == 6
    assert {"decode", "detect", "align", "estimate"} <= set(body["timings_ms"])
    assert body["models"]["detector"] == DEFAULT_DETECTOR
    assert "image_jpeg_base64" not in body


def test_json_base64_raw_body_and_multipart_agree(
    client: TestClient, astronaut_jpeg: bytes
) -> None:
    multipart = _upload(client, astronaut_jpeg).json()
    as_json = client.post(
        "/v1/analyze", json={"image_base64": base64.b64encode(astronaut_jpeg).decode()}
    ).json()
    data_url = client.post(
        "/v1/analyze",
        json={
            "image_base64": "data:image/jpeg;base64," + base64.b64encode(astronaut_jpeg).decode()
        },
    ).json()
    raw = client.post(
        "/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"}
    ).json()
    assert multipart["faces"] == as_json["faces"] == data_url["faces"] == raw["faces"]


def test_samples_find_every_face(client: TestClient, samples_dir: Path) -> None:
    expected = {"sample1.jpg": 3, "sample4.jpg": 4, "man_beard.jpg": 1}
    for name, count in expected.items():
        body = _upload(client, (samples_dir / name).read_bytes(), name).json()
        assert len(body["faces"]) == count, name
    sample4 = _upload(client, (samples_dir / "sample4.jpg").read_bytes()).json()
    assert {f["gender"] for f in sample4["faces"]} == {"F"}
    beard = _upload(client, (samples_dir / "man_beard.jpg").read_bytes()).json()
    assert beard["faces"][0]["gender"] == "M"


def test_options_max_faces_min_face_and_detector(client: TestClient, samples_dir: Path) -> None:
    photo = (samples_dir / "sample4.jpg").read_bytes()
    assert len(_upload(client, photo, max_faces=2).json()["faces"]) == 2
    query = client.post(
        "/v1/analyze?max_faces=1", content=photo, headers={"Content-Type": "image/jpeg"}
    )
    assert len(query.json()["faces"]) == 1
    assert _upload(client, photo, min_face=100000).json()["faces"] == []
    cydral = _upload(client, photo, estimator="cydral", detector="blazeface-short").json()
    assert cydral["models"]["detector"] == "blazeface-short"
    assert cydral["models"]["estimator"].startswith("cydral")


def test_return_image_gives_the_annotated_jpeg(client: TestClient, astronaut_jpeg: bytes) -> None:
    body = _upload(client, astronaut_jpeg, return_image="true").json()
    drawn = Image.open(io.BytesIO(base64.b64decode(body["image_jpeg_base64"])))
    assert drawn.format == "JPEG"
    assert drawn.size == (512, 512)
    original = np.asarray(Image.open(io.BytesIO(astronaut_jpeg)), dtype=np.int16)
    assert np.abs(np.asarray(drawn, dtype=np.int16) - original).max() > 100  # boxes drawn


def test_no_face_is_an_empty_result(client: TestClient, blank_jpeg: bytes) -> None:
    response = _upload(client, blank_jpeg)
    assert response.status_code == 200
    assert response.json()["faces"] == []


def test_exif_orientation_is_applied(client: TestClient, astronaut: np.ndarray) -> None:
    rotated = Image.fromarray(np.rot90(astronaut, k=1).copy())  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": undoes the counter-clockwise turn above
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif)
    body = _upload(client, buffer.getvalue()).json()
    assert len(body["faces"]) == 1
    assert body["faces"][0]["gender"] == "F"


# ------------------------------------------------------------------ analyze: bad input


def _bomb_png() -> bytes:
    """A PNG header claiming 10000 x 10000 pixels (100 MP, over the 50 MP default) in 1 kB."""
    image = Image.new("L", (10_000, 10_000))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


BAD_UPLOADS = [
    ("empty", b"", 422, "image_decode_error"),
    ("not an image", b"hello, this is text", 422, "image_decode_error"),
    ("truncated jpeg", "truncated", 422, "image_decode_error"),
    ("html", b"<html><script>alert(1)</script></html>", 422, "image_decode_error"),
    ("decompression bomb", "bomb", 413, "image_too_large"),
]


@pytest.mark.parametrize(
    ("case", "data", "status", "code"), BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS]
)
def test_bad_uploads_get_typed_errors(
    client: TestClient, astronaut_jpeg: bytes, case: str, data: Any, status: int, code: str
) -> None:
    if data == "truncated":
        data = astronaut_jpeg[: len(astronaut_jpeg) // 3]
    elif data == "bomb":
        data = _bomb_png()
        assert len(data) < 200_000
    response = _upload(client, data, "upload.bin")
    assert response.status_code == status, response.text
    assert _error_code(response) == code
    assert client.get("/health").status_code == 200  # the service lives on


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("no image", {"json": {}}, 400, "invalid_request"),
    (
        "two images",
        {"json": {"image_base64": "aGk=", "image_url": "https://example.com/a.jpg"}},
        400,
        "invalid_request",
    ),
    ("unknown field", {"json": {"image_base64": "aGk=", "colour": "red"}}, 400, "invalid_request"),
    (
        "negative min_face",
        {"json": {"image_base64": "aGk=", "min_face": -3}},
        400,
        "invalid_request",
    ),
    (
        "unknown detector",
        {"json": {"image_base64": "aGk=", "detector": "yolo"}},
        400,
        "invalid_request",
    ),
    (
        "unknown estimator",
        {"json": {"image_base64": "aGk=", "estimator": "magic"}},
        400,
        "invalid_request",
    ),
    (
        "broken json",
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_request",
    ),
    (
        "text body",
        {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("no content type", {"content": b"hello"}, 415, "unsupported_media_type"),
    (
        "bad multipart",
        {
            "content": b"--x\r\nnonsense",
            "headers": {"Content-Type": "multipart/form-data; boundary=x"},
        },
        400,
        "invalid_request",
    ),
    (
        "multipart without boundary",
        {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "status", "code"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_typed_errors(
    client: TestClient, case: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = client.post("/v1/analyze", **kwargs)
    assert response.status_code == status, response.text
    assert _error_code(response) == code


def test_multipart_without_an_image_field(client: TestClient) -> None:
    response = client.post("/v1/analyze", data={"max_faces": "2"}, files={})
    assert response.status_code in {400, 415}
    assert _error_code(response) in {"invalid_request", "unsupported_media_type"}


def test_oversized_bodies_are_refused(make_client: ClientFactory, astronaut_jpeg: bytes) -> None:
    client = make_client(max_body_bytes=64 * 1024)
    assert len(astronaut_jpeg) > 64 * 1024
    declared = _upload(client, astronaut_jpeg)
    assert declared.status_code == 413
    assert _error_code(declared) == "request_too_large"

    def chunks() -> Any:  # no Content-Length: the limit must count streamed bytes
        for start in range(0, len(astronaut_jpeg), 8192):
            yield astronaut_jpeg[start : start + 8192]

    streamed = client.post("/v1/analyze", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert streamed.status_code == 413
    assert _error_code(streamed) == "request_too_large"


def test_pixel_limit_is_configurable(make_client: ClientFactory, astronaut_jpeg: bytes) -> None:
    client = make_client(max_pixels=100_000)  # the astronaut has 262,144
    response = _upload(client, astronaut_jpeg)
    assert response.status_code == 413
    assert _error_code(response) == "image_too_large"


def test_images_never_touch_the_disk_or_the_logs(
    client: TestClient,
    astronaut: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the service tried to create a temporary file")

    for name in (
        "mkstemp",
        "mkdtemp",
        "TemporaryFile",
        "NamedTemporaryFile",
        "SpooledTemporaryFile",
    ):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", refuse)
    big = jpeg_bytes(np.tile(astronaut, (4, 4, 1)), quality=98)  # over Starlette's 1 MB spool size
    assert len(big) > 1024 * 1024
    caplog.set_level(logging.DEBUG)
    response = _upload(client, big)
    assert response.status_code == 200
    assert len(response.json()["faces"]) >= 1
    encoded = base64.b64encode(big[:300]).decode()
    assert encoded[:40] not in caplog.text
    assert "JFIF" not in caplog.text


# ------------------------------------------------------------------ batch


def test_batch_gives_one_result_or_error_per_image_in_order(
    client: TestClient, astronaut_jpeg: bytes, blank_jpeg: bytes
) -> None:
    files = [
        ("images", ("astronaut.jpg", astronaut_jpeg, "image/jpeg")),
        ("images", ("broken.jpg", b"not an image", "image/jpeg")),
        ("images", ("blank.jpg", blank_jpeg, "image/jpeg")),
    ]
    response = client.post("/v1/analyze/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert len(results[0]["result"]["faces"]) == 1
    assert results[0]["result"]["source"] == "astronaut.jpg"
    assert results[1]["error"]["code"] == "image_decode_error"
    assert "result" not in results[1]
    assert results[2]["result"]["faces"] == []


def test_batch_as_json(client: TestClient, astronaut_jpeg: bytes) -> None:
    encoded = base64.b64encode(astronaut_jpeg).decode()
    response = client.post(
        "/v1/analyze/batch",
        json={
            "images": [{"image_base64": encoded}, {"image_url": "http://10.0.0.1/a.jpg"}],
            "max_faces": 1,
        },
    )
    results = response.json()["results"]
    assert len(results[0]["result"]["faces"]) == 1
    assert results[1]["error"]["code"] == "url_forbidden"


def test_batch_limits(make_client: ClientFactory, astronaut_jpeg: bytes) -> None:
    client = make_client(max_batch_images=2)
    files = [("images", (f"{i}.jpg", astronaut_jpeg, "image/jpeg")) for i in range(3)]
    response = client.post("/v1/analyze/batch", files=files)
    assert response.status_code == 400
    assert _error_code(response) == "invalid_request"
    empty = client.post("/v1/analyze/batch", json={"images": []})
    assert _error_code(empty) == "invalid_request"


# ------------------------------------------------------------------ service endpoints


def test_health_ready_models_metrics_and_docs(client: TestClient, astronaut_jpeg: bytes) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready"
    models = client.get("/v1/models").json()
    assert models["default_detector"] == DEFAULT_DETECTOR
    assert models["default_estimator"] == "ensemble"
    assert {"blazeface-full", "blazeface-short"} <= set(models["detectors"])
    assert {m["name"] for m in models["models"]} >= {"blazeface-full", "cydral", "faceapi"}
    assert all(m["fetched"] for m in models["models"] if m["name"] in {"cydral", "faceapi"})

    _upload(client, astronaut_jpeg)
    _upload(client, b"junk")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'agelens_requests_total{method="POST",route="/v1/analyze",status="200"}' in text
    assert 'agelens_errors_total{code="image_decode_error"}' in text
    assert "agelens_request_duration_seconds_bucket" in text
    assert "agelens_faces_total" in text
    assert "agelens_queue_depth" in text

    schema = client.get("/openapi.json").json()
    assert {"/v1/analyze", "/v1/analyze/batch", "/predict", "/health"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/analyze"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    unknown = client.get("/v2/nothing")
    assert unknown.status_code == 404
    assert _error_code(unknown) == "not_found"


def test_ready_says_why_when_models_are_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, large_photo_jpeg: bytes
) -> None:
    from agelens.server.app import create_app
    from agelens.server.settings import Settings

    monkeypatch.setenv("AGELENS_HOME", str(tmp_path))
    with TestClient(create_app(Settings())) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert _error_code(ready) == "not_ready"
        assert "agelens models fetch" in ready.json()["error"]["message"]
        analyze = client.post("/v1/analyze", json={"image_base64": "aGk="})
        assert analyze.status_code in {422, 503}
        # a real (large) JPEG: decoded whole, since no detector says how far to reduce it
        photo = client.post(
            "/v1/analyze", content=large_photo_jpeg, headers={"Content-Type": "image/jpeg"}
        )
        assert photo.status_code == 503
        assert _error_code(photo) == "not_ready"


# ------------------------------------------------------------------ the TF container's /predict
# (its documented examples against a live server: tests/server/test_app_predict.py)


def test_predict_answers_in_the_tf_containers_shape_and_types(
    client: TestClient, astronaut_jpeg: bytes
) -> None:
    encoded = base64.b64encode(astronaut_jpeg).decode()
    body = client.post("/predict", json={"b64": encoded}).json()
    assert set(body) == {"faces", "image_size", "confidence", "inference_time"}
    assert body["image_size"] == [512, 512]
    assert body["confidence"] == 0.5
    (face,) = body["faces"]
    x1, y1, x2, y2, w, h, conf, age, gender = face
    for value in (x1, y1, x2, y2, w, h, age):
        assert type(value) is int
    assert (w, h) == (x2 - x1, y2 - y1)
    assert type(conf) is float
    assert 0.5 <= conf <= 1
    assert 32 <= age <= 52
    assert gender == "F"
    assert body["inference_time"] > 0


def test_predict_options(client: TestClient, astronaut_jpeg: bytes) -> None:
    encoded = base64.b64encode(astronaut_jpeg).decode()
    plain = client.post("/predict", json={"b64": encoded, "get_attributes": False}).json()
    assert plain["faces"][0][7:] == [None, None]
    fast = client.post("/predict", json={"b64": encoded, "face_detector": "fast"}).json()
    assert len(fast["faces"]) == 1
    strict = client.post("/predict", json={"b64": encoded, "confidence": 0.999}).json()
    assert strict["faces"] == []
    drawn = client.post("/predict", json={"b64": encoded, "draw": True, "return_image": True})
    assert Image.open(io.BytesIO(base64.b64decode(drawn.json()["image"]))).size == (512, 512)
    forbidden = client.post("/predict", json={"url": "http://169.254.169.254/latest/meta-data/"})
    assert forbidden.status_code == 400
    assert _error_code(forbidden) == "url_forbidden"
    nothing = client.post("/predict", json={})
    assert _error_code(nothing) == "invalid_request"
    bad_detector = client.post("/predict", json={"b64": encoded, "face_detector": "huge"})
    assert _error_code(bad_detector) == "invalid_request"


# ------------------------------------------------------------------ keys, rate limits, CORS

KEY = "test-key-0123456789"


def test_keys_are_required_once_configured(
    make_client: ClientFactory, astronaut_jpeg: bytes
) -> None:
    from agelens.server.settings import hash_api_key

    client = make_client(api_key_hashes=[hash_api_key(KEY)])
    missing = _upload(client, astronaut_jpeg)
    assert missing.status_code == 401
    assert _error_code(missing) == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = client.post(
        "/v1/analyze",
        content=astronaut_jpeg,
        headers={"Content-Type": "image/jpeg", "X-API-Key": "nope"},
    )
    assert wrong.status_code == 401
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
        ok = client.post(
            "/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg", **headers}
        )
        assert ok.status_code == 200, headers
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/v1/models").status_code == 401
    basic_on_v1 = client.get("/v1/models", auth=("user", KEY))
    assert basic_on_v1.status_code == 401  # basic is for seed-003 clients on /predict only


def test_predict_accepts_http_basic(make_client: ClientFactory, astronaut_jpeg: bytes) -> None:
    client = make_client(api_keys=[KEY])  # a plain key, hashed at start-up
    encoded = base64.b64encode(astronaut_jpeg).decode()
    missing = client.post("/predict", json={"b64": encoded})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Basic")
    # no user name configured: any user name goes with a valid key as password
    assert client.post("/predict", json={"b64": encoded}, auth=("client", KEY)).status_code == 200
    assert client.post("/predict", json={"b64": encoded}, auth=(KEY, "")).status_code == 200
    assert (
        client.post("/predict", json={"b64": encoded}, auth=("client", "wrong")).status_code == 401
    )


def test_predict_checks_the_configured_basic_auth_user_name(
    make_client: ClientFactory, astronaut_jpeg: bytes
) -> None:
    client = make_client(api_keys=[KEY], basic_auth_username="tf-client")
    encoded = base64.b64encode(astronaut_jpeg).decode()
    assert (
        client.post("/predict", json={"b64": encoded}, auth=("tf-client", KEY)).status_code == 200
    )
    for user, password in (("someone", KEY), (KEY, ""), ("tf-client", "wrong"), ("tf-client", "")):
        refused = client.post("/predict", json={"b64": encoded}, auth=(user, password))
        assert refused.status_code == 401, (user, password)
        assert _error_code(refused) == "unauthorized"
    # the other ways of sending the key are unaffected
    assert (
        client.post("/predict", json={"b64": encoded}, headers={"X-API-Key": KEY}).status_code
        == 200
    )


def test_rate_limit_per_key(make_client: ClientFactory, blank_jpeg: bytes) -> None:
    from agelens.server.settings import hash_api_key

    client = make_client(
        rate_limit_per_minute=2, api_key_hashes=[hash_api_key(KEY), hash_api_key("other")]
    )
    headers = {"Content-Type": "image/jpeg", "X-API-Key": KEY}
    codes = [
        client.post("/v1/analyze", content=blank_jpeg, headers=headers).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]
    limited = client.post("/v1/analyze", content=blank_jpeg, headers=headers)
    assert _error_code(limited) == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    other = client.post(
        "/v1/analyze", content=blank_jpeg, headers={**headers, "X-API-Key": "other"}
    )
    assert other.status_code == 200
    assert client.get("/health").status_code == 200  # never limited


def test_cors_is_off_by_default_and_configurable(make_client: ClientFactory) -> None:
    origin = {"Origin": "https://app.example"}
    closed = make_client().get("/health", headers=origin)
    assert "access-control-allow-origin" not in closed.headers
    opened = make_client(cors_origins=["https://app.example"]).options(
        "/v1/analyze",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert opened.headers["access-control-allow-origin"] == "https://app.example"


def test_error_shape_is_the_same_everywhere(client: TestClient) -> None:
    responses = [
        client.post("/v1/analyze", content=b"x", headers={"Content-Type": "text/plain"}),
        client.get("/nowhere"),
        client.get("/health", params={}),
        client.post("/predict", content=b"{", headers={"Content-Type": "application/json"}),
    ]
    for response in responses:
        if response.status_code >= 400:
            assert set(json.loads(response.text)) == {"error"}


def test_image_url_through_the_api(
    make_client: ClientFactory,
    client: TestClient,
    web_server: WebServer,
    astronaut_jpeg: bytes,
) -> None:
    base, routes = web_server.base, web_server.routes
    routes["/astronaut.jpg"] = image_route(astronaut_jpeg)
    routes["/to-metadata"] = redirect_route("http://169.254.169.254/latest/meta-data/iam/")
    refused = client.post("/v1/analyze", json={"image_url": f"{base}/astronaut.jpg"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "url_forbidden"
    allowed = make_client(url_allow_networks=["127.0.0.1/32"])
    body = allowed.post("/v1/analyze", json={"image_url": f"{base}/astronaut.jpg"}).json()
    assert body["source"] == f"{base}/astronaut.jpg"
    assert len(body["faces"]) == 1
    redirected = allowed.post("/v1/analyze", json={"image_url": f"{base}/to-metadata"})
    assert redirected.status_code == 400
    assert redirected.json()["error"]["code"] == "url_forbidden"
    off = make_client(url_fetch_enabled=False)
    assert off.post("/v1/analyze", json={"image_url": f"{base}/astronaut.jpg"}).status_code == 400
