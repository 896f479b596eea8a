"""The service under hostile or unusual input: no 500s, typed errors, limits at the door."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from agelens.server.app import create_app
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings
from tests.server.conftest import ClientFactory, uvicorn_in_thread


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


# ------------------------------------------------------------------ admission control


@contextmanager
def _serve(settings: Settings, pool: ModelPool) -> Iterator[tuple[str, int]]:
    """The app under a real uvicorn on a free loopback port, in a thread: (host, port)."""
    with _serve_app(create_app(settings, pool=pool)) as address:
        yield address


@contextmanager
def _serve_app(app: FastAPI) -> Iterator[tuple[str, int]]:
    with uvicorn_in_thread(app, name="uvicorn-admission") as port:
        yield "127.0.0.1", port


def _start_upload(address: tuple[str, int], body: bytes) -> socket.socket:
    """A raw POST whose headers and first half of the body are sent, the rest held back."""
    connection = socket.create_connection(address, timeout=30)
    head = (
        "POST /v1/analyze HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    connection.sendall(head + body[: len(body) // 2])
    return connection


def _finish_upload(connection: socket.socket, body: bytes) -> tuple[int, dict[str, Any]]:
    connection.sendall(body[len(body) // 2 :])
    response = http.client.HTTPResponse(connection)
    response.begin()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def test_a_full_server_answers_503_at_once_and_finishes_what_it_admitted(
    model_pool: ModelPool, astronaut_jpeg: bytes, tmp_path: Path
) -> None:
    settings = Settings(max_requests_in_flight=3, rate_limit_per_minute=0, data_dir=tmp_path)
    with _serve(settings, model_pool) as address:
        held = [_start_upload(address, astronaut_jpeg) for _ in range(3)]
        try:
            _overload_and_release(address, held, astronaut_jpeg)
        finally:
            for connection in held:
                connection.close()


def _overload_and_release(
    address: tuple[str, int], held: list[socket.socket], astronaut_jpeg: bytes
) -> None:
    base = f"http://{address[0]}:{address[1]}"
    with httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 10
        while True:  # the held uploads are admitted once their headers are parsed
            probe = client.post(
                "/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"}
            )
            if probe.status_code == 503:
                break
            assert probe.status_code == 200, probe.text
            assert time.monotonic() < deadline, "the held uploads were never admitted"

    def refused_upload(_: int) -> tuple[int, str | None, str, float]:
        start = time.perf_counter()
        with httpx.Client(base_url=base, timeout=30) as client:
            response = client.post(
                "/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"}
            )
        elapsed = time.perf_counter() - start
        code = response.json()["error"]["code"]
        return response.status_code, response.headers.get("retry-after"), code, elapsed

    with ThreadPoolExecutor(max_workers=16) as pool:
        refused = list(pool.map(refused_upload, range(16)))
    assert {(status, retry, code) for status, retry, code, _ in refused} == {
        (503, "1", "overloaded")
    }
    # The held uploads never finish until released below, so any 503 at all came at
    # once rather than after them; the bound is for a loaded shared 2-core machine, and
    # benchmarks/bench_service.py measures the p95.
    assert max(elapsed for *_, elapsed in refused) < 15.0
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200  # GETs never refused

    finished = [_finish_upload(connection, astronaut_jpeg) for connection in held]
    assert [status for status, _ in finished] == [200, 200, 200]
    assert all(len(payload["faces"]) == 1 for _, payload in finished)
    again = httpx.post(
        f"{base}/v1/analyze",
        content=astronaut_jpeg,
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert again.status_code == 200
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'agelens_errors_total{code="overloaded"}' in metrics


def test_many_concurrent_uploads_get_200_or_503_only(
    model_pool: ModelPool, astronaut_jpeg: bytes, tmp_path: Path
) -> None:
    settings = Settings(max_requests_in_flight=4, rate_limit_per_minute=0, data_dir=tmp_path)
    with _serve(settings, model_pool) as (host, port):

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                base_url=f"http://{host}:{port}",
                timeout=60,
                limits=httpx.Limits(max_connections=48),
            ) as client:
                return list(
                    await asyncio.gather(
                        *(
                            client.post(
                                "/v1/analyze",
                                content=astronaut_jpeg,
                                headers={"Content-Type": "image/jpeg"},
                            )
                            for _ in range(48)
                        )
                    )
                )

        responses = asyncio.run(run())
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 4
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "overloaded"
            assert response.headers["retry-after"] == "1"
        else:
            assert len(response.json()["faces"]) == 1


# ------------------------------------------------------------------ failed authentication


def test_failed_authentications_are_rate_limited_per_address(
    make_client: ClientFactory, blank_jpeg: bytes
) -> None:
    key = "a-real-key-0123456789"
    client = make_client(api_keys=[key], auth_failures_per_minute=5)
    wrong = {"Content-Type": "image/jpeg", "X-API-Key": "guess"}
    codes = [
        client.post("/v1/analyze", content=blank_jpeg, headers=wrong).status_code for _ in range(7)
    ]
    assert codes == [401] * 5 + [429] * 2
    limited = client.post("/v1/analyze", content=blank_jpeg, headers={**wrong, "X-API-Key": key})
    assert limited.status_code == 429  # the address waits, whatever key it now sends
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 13
    assert client.get("/health").status_code == 200  # health checks are never limited
    assert client.get("/ready").status_code == 200


def test_successful_authentications_do_not_count(
    make_client: ClientFactory, blank_jpeg: bytes
) -> None:
    key = "a-real-key-0123456789"
    client = make_client(api_keys=[key], auth_failures_per_minute=2, rate_limit_per_minute=0)
    headers = {"Content-Type": "image/jpeg", "X-API-Key": key}
    codes = {
        client.post("/v1/analyze", content=blank_jpeg, headers=headers).status_code
        for _ in range(6)
    }
    assert codes == {200}


# ------------------------------------------------------------------ unexpected errors


def test_an_unexpected_error_is_a_500_that_keeps_the_connection(
    model_pool: ModelPool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(data_dir=tmp_path), pool=model_pool)

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    with _serve_app(app) as address, socket.create_connection(address, timeout=10) as connection:
        statuses = []
        for path in ("/broken", "/health", "/broken", "/health"):
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            response = http.client.HTTPResponse(connection)
            response.begin()
            body = json.loads(response.read())
            statuses.append(response.status)
            if response.status == 500:
                assert body["error"]["code"] == "internal_error"
    assert statuses == [500, 200, 500, 200]  # one kept-alive connection throughout
    assert "a bug" in caplog.text
