"""agelens.client against a live server on a free port (uvicorn in a thread, real models, real
faces), and its retry plumbing against a scripted stub server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from numpy.typing import NDArray
from PIL import Image

import agelens.client
from agelens.client import (
    AsyncClient,
    Client,
    ClientError,
    ConnectionFailedError,
    ImageDecodeError,
    InvalidRequestError,
    OverloadedError,
    RateLimitedError,
    UnauthorizedError,
    UnknownModelError,
    UrlForbiddenError,
)
from agelens.models.backends import DEFAULT_DETECTOR
from agelens.server.app import create_app
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings
from agelens.types import Face, ImageResult

API_KEY = "test-key-0123456789"


class LiveServer:
    """An ASGI app served by uvicorn on a thread, on a port the OS picked."""

    def __init__(self, app: Any, *, lifespan: str = "on") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", loop="asyncio", lifespan=lifespan)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()


@pytest.fixture(scope="module")
def model_pool() -> ModelPool:
    settings = Settings()
    pool = ModelPool(
        settings.detector, settings.estimator, threads=2, max_pixels=settings.max_pixels
    )
    pool.load_defaults()
    return pool


@pytest.fixture(scope="module")
def server(model_pool: ModelPool) -> Iterator[LiveServer]:
    """Loopback, no keys, no rate limit: how `agelens serve` runs on a laptop."""
    with LiveServer(create_app(Settings(rate_limit_per_minute=0), pool=model_pool)) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(model_pool: ModelPool) -> Iterator[LiveServer]:
    settings = Settings(api_keys=[API_KEY], rate_limit_per_minute=0)
    with LiveServer(create_app(settings, pool=model_pool)) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, retries=0) as http:
        yield http


def _png(image: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut_png(astronaut: NDArray[np.uint8]) -> bytes:
    return _png(astronaut)


@pytest.fixture
def astronaut_path(tmp_path: Path, astronaut_png: bytes) -> Path:
    path = tmp_path / "astronaut.png"
    path.write_bytes(astronaut_png)
    return path


def _assert_astronaut(result: ImageResult) -> Face:
    assert isinstance(result, ImageResult)
    assert result.image_wh == (512, 512)
    assert len(result.faces) == 1
    face = result.faces[0]
    assert isinstance(face, Face)
    assert face.gender == "F"
    assert 30 <= face.age_years <= 52
    assert face.age_interval[0] <= face.age_years <= face.age_interval[1]
    assert len(face.keypoints) == 6
    assert isinstance(face.box_xyxy, tuple)
    assert result.models["detector"] == DEFAULT_DETECTOR
    return face


# ----------------------------------------------------------------------- the live service


def test_analyze_a_path_str_pathlike_and_bytes(
    client: Client, astronaut_path: Path, astronaut_png: bytes
) -> None:
    by_path = client.analyze(astronaut_path)
    assert by_path.source == "astronaut.png"
    face = _assert_astronaut(by_path)
    by_str = client.analyze(str(astronaut_path))
    by_bytes = client.analyze(astronaut_png)
    assert by_bytes.source == "<upload>"
    for other in (by_str, by_bytes):
        assert other.faces[0].age_years == pytest.approx(face.age_years, abs=0.05)
        assert other.faces[0].box_xyxy == pytest.approx(face.box_xyxy, abs=0.05)


def test_options_reach_the_server(client: Client, astronaut_png: bytes) -> None:
    short = client.analyze(astronaut_png, detector="blazeface-short", estimator="cydral")
    assert short.models["detector"] == "blazeface-short"
    assert short.models["estimator"].startswith("cydral")
    assert client.analyze(astronaut_png, min_face=10_000).faces == ()
    assert len(client.analyze(astronaut_png, max_faces=1).faces) == 1


def test_return_image_gives_the_annotated_jpeg(client: Client, astronaut_png: bytes) -> None:
    result, jpeg = client.analyze(astronaut_png, return_image=True)
    _assert_astronaut(result)
    assert jpeg[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(jpeg)) as drawn:
        assert drawn.format == "JPEG"
        assert drawn.size == (512, 512)


def test_a_batch_with_one_bad_item_keeps_the_good_ones(
    client: Client, astronaut_path: Path, astronaut_png: bytes
) -> None:
    items = client.analyze_batch([astronaut_path, b"this is not an image", astronaut_png])
    assert len(items) == 3
    assert isinstance(items[0], ImageResult)
    _assert_astronaut(items[0])
    assert items[0].source == "astronaut.png"
    bad = items[1]
    assert isinstance(bad, ImageDecodeError)
    assert (bad.code, bad.status) == ("image_decode_error", 422)
    assert bad.message
    assert isinstance(items[2], ImageResult)


def test_a_batch_with_a_url_goes_as_json_and_a_loopback_url_fails_alone(
    server: LiveServer, client: Client, astronaut_png: bytes
) -> None:
    items = client.analyze_batch([astronaut_png, f"{server.url}/health"])
    assert isinstance(items[0], ImageResult)
    _assert_astronaut(items[0])
    assert isinstance(items[1], UrlForbiddenError)
    assert items[1].code == "url_forbidden"


def test_a_batch_is_sent_in_chunks_and_keeps_order(
    server: LiveServer, astronaut_png: bytes, astronaut: NDArray[np.uint8]
) -> None:
    blank = _png(np.full((64, 64, 3), 128, np.uint8))
    sources: list[agelens.client.Source] = [astronaut_png, blank, astronaut_png, blank, blank]
    with Client(server.url, batch_size=2) as chunked:
        items = chunked.analyze_batch(sources)
    assert [len(item.faces) for item in items if isinstance(item, ImageResult)] == [1, 0, 1, 0, 0]


def test_the_shared_samples_match_the_library(
    client: Client, samples_dir: Path, model_pool: ModelPool
) -> None:
    paths = sorted(p for p in samples_dir.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    assert paths
    # The service decodes as the library does (a large JPEG reduced for the detector).
    local = model_pool.analyzer(DEFAULT_DETECTOR, "ensemble").analyze_many(paths)
    items = client.analyze_batch(paths)
    assert len(items) == len(paths)
    for path, item, expected in zip(paths, items, local, strict=True):
        assert isinstance(item, ImageResult), item
        assert item.source == path.name
        assert item.image_wh == expected.image_wh
        assert item.faces, f"no face in {path.name}"
        assert len(item.faces) == len(expected.faces)
        for got, want in zip(item.faces, expected.faces, strict=True):
            assert got.gender == want.gender
            assert got.age_years == pytest.approx(want.age_years, abs=0.5)


def test_a_loopback_url_is_refused_with_url_forbidden(server: LiveServer) -> None:
    with Client(server.url) as http, pytest.raises(UrlForbiddenError) as caught:
        http.analyze(f"{server.url}/health")
    assert caught.value.code == "url_forbidden"
    assert caught.value.status == 400
    assert "url_forbidden" in str(caught.value)


def test_bad_options_and_bad_images_raise_typed_errors(
    client: Client, astronaut_png: bytes
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        client.analyze(astronaut_png, detector="nope")
    assert caught.value.status == 400
    assert "nope" in caught.value.message
    with pytest.raises(ImageDecodeError) as decode:
        client.analyze(b"GIF89a not really")
    assert decode.value.status == 422
    with pytest.raises(ValueError, match="http"):
        client.analyze("ftp://example.com/a.jpg")
    with pytest.raises(FileNotFoundError):
        client.analyze("/no/such/photo.jpg")


def test_models_health_and_ready(client: Client) -> None:
    assert client.health() == {"status": "ok"}
    assert client.ready() is True
    models = client.models()
    assert models["default_detector"] == DEFAULT_DETECTOR
    assert "ensemble" in models["estimators"]


def test_ready_is_false_when_nothing_answers() -> None:
    with Client(_closed_port_url(), retries=0) as http:
        assert http.ready() is False


def test_api_keys(keyed_server: LiveServer, astronaut_png: bytes) -> None:
    with Client(keyed_server.url) as anonymous, pytest.raises(UnauthorizedError) as missing:
        anonymous.analyze(astronaut_png)
    assert (missing.value.code, missing.value.status) == ("unauthorized", 401)
    with Client(keyed_server.url, api_key="wrong") as wrong:
        with pytest.raises(UnauthorizedError) as refused:
            wrong.analyze(astronaut_png)
        assert "not valid" in refused.value.message
        with pytest.raises(UnauthorizedError):
            wrong.analyze_batch([astronaut_png])
        assert wrong.health() == {"status": "ok"}  # liveness needs no key
    with Client(keyed_server.url, api_key=API_KEY) as keyed:
        _assert_astronaut(keyed.analyze(astronaut_png))
        assert keyed.models()["default_estimator"] == "ensemble"


def test_async_client(server: LiveServer, astronaut_png: bytes) -> None:
    async def main() -> tuple[ImageResult, list[ImageResult | ClientError], bool]:
        async with AsyncClient(server.url) as http:
            results = await asyncio.gather(*(http.analyze(astronaut_png) for _ in range(3)))
            batch = await http.analyze_batch([astronaut_png, b"nope"])
            return results[0], batch, await http.ready()

    result, batch, ready = asyncio.run(main())
    _assert_astronaut(result)
    assert isinstance(batch[0], ImageResult)
    assert isinstance(batch[1], ImageDecodeError)
    assert ready


def test_a_real_overloaded_server_answers_503_and_the_client_gets_through(
    model_pool: ModelPool, astronaut_png: bytes
) -> None:
    """queue_size=1 and no retries: concurrent requests get 503 `overloaded`; with retries
    (honouring Retry-After: 1) every one of them succeeds."""
    settings = Settings(
        queue_size=1, batch_max_images=1, batch_window_ms=0, rate_limit_per_minute=0
    )
    with LiveServer(create_app(settings, pool=model_pool)) as live:

        def burst(retries: int) -> list[ImageResult | ClientError]:
            with Client(live.url, retries=retries, max_retry_wait=1.5) as http:

                def one(_: int) -> ImageResult | ClientError:
                    try:
                        return http.analyze(astronaut_png)
                    except ClientError as error:
                        return error

                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(8) as pool:
                    return list(pool.map(one, range(8)))

        without = burst(0)
        overloaded = [e for e in without if isinstance(e, OverloadedError)]
        assert overloaded, "8 concurrent requests against a queue of 1 should overload it"
        assert all(e.status == 503 and e.retry_after == 1.0 for e in overloaded)
        with_retries = burst(10)
        assert all(isinstance(r, ImageResult) for r in with_retries), with_retries


# ----------------------------------------------------------------------- retry plumbing


@dataclass
class Stub:
    """A scripted ASGI app: answers `script` in order (the last one repeats) and records
    every request's path and headers."""

    script: list[tuple[int, dict[str, str], bytes]]
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append((scope["path"], headers))
        status, extra, body = self.script[min(len(self.seen) - 1, len(self.script) - 1)]
        response_headers = [(b"content-length", str(len(body)).encode())]
        response_headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})


JSON = {"content-type": "application/json"}
OK_BODY = json.dumps(
    {"source": "<upload>", "image_wh": [8, 8], "faces": [], "timings_ms": {}, "models": {}}
).encode()


def _error(code: str, message: str = "scripted") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _overloaded(retry_after: str = "1") -> tuple[int, dict[str, str], bytes]:
    return (503, {**JSON, "retry-after": retry_after}, _error("overloaded", "queue full"))


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(agelens.client, "_sleep", recorded.append)
    return recorded


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_503_is_retried_honouring_retry_after(waits: list[float]) -> None:
    stub = Stub([_overloaded("2"), _overloaded("2"), (200, JSON, OK_BODY)])
    with LiveServer(stub, lifespan="off") as live, Client(live.url, api_key="k") as http:
        result = http.analyze(b"image bytes")
    assert result == ImageResult(faces=(), image_wh=(8, 8), source="<upload>")
    assert len(stub.seen) == 3
    assert all(headers["authorization"] == "Bearer k" for _, headers in stub.seen)
    assert len(waits) == 2
    assert all(2.0 <= w <= 2.1 for w in waits)


def test_retry_after_is_capped_and_retries_run_out(waits: list[float]) -> None:
    stub = Stub([_overloaded("3600")])
    with (
        LiveServer(stub, lifespan="off") as live,
        Client(live.url, retries=2, max_retry_wait=5) as http,
        pytest.raises(OverloadedError) as caught,
    ):
        http.analyze(b"image bytes")
    assert len(stub.seen) == 3
    assert waits == [5, 5]
    assert (caught.value.code, caught.value.status, caught.value.retry_after) == (
        "overloaded",
        503,
        3600.0,
    )


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (400, "invalid_request", InvalidRequestError),
        (400, "unknown_model", UnknownModelError),
        (401, "unauthorized", UnauthorizedError),
        (429, "rate_limited", RateLimitedError),
        (500, "internal_error", ClientError),
        (504, "timeout", agelens.client.AnalysisTimeoutError),
    ],
)
def test_other_errors_are_never_retried(
    waits: list[float], status: int, code: str, error_type: type[ClientError]
) -> None:
    stub = Stub([(status, {**JSON, "retry-after": "7"}, _error(code)), (200, JSON, OK_BODY)])
    with (
        LiveServer(stub, lifespan="off") as live,
        Client(live.url) as http,
        pytest.raises(error_type) as caught,
    ):
        http.analyze(b"image bytes")
    assert len(stub.seen) == 1
    assert waits == []
    assert (caught.value.code, caught.value.status) == (code, status)
    assert caught.value.retry_after == 7.0


def test_a_proxy_502_without_the_error_shape_is_retried_then_reported(
    waits: list[float],
) -> None:
    stub = Stub([(502, {"content-type": "text/html"}, b"<html>Bad Gateway</html>")])
    with (
        LiveServer(stub, lifespan="off") as live,
        Client(live.url, retries=2, backoff_seconds=0.5) as http,
        pytest.raises(ClientError) as caught,
    ):
        http.health()
    assert len(stub.seen) == 3
    assert (caught.value.code, caught.value.status) == ("bad_gateway", 502)
    assert "Bad Gateway" in caught.value.message
    assert 0.25 <= waits[0] <= 0.5
    assert 0.5 <= waits[1] <= 1.0  # exponential backoff with jitter


def test_a_refused_connection_is_retried_then_raises(waits: list[float]) -> None:
    with Client(_closed_port_url(), retries=3) as http, pytest.raises(ConnectionFailedError) as e:
        http.analyze(b"image bytes")
    assert len(waits) == 3
    assert e.value.code == "connection_error"
    assert e.value.status is None


def test_the_async_client_retries_too(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(agelens.client, "_async_sleep", fake_sleep)
    stub = Stub([_overloaded("1"), (200, JSON, OK_BODY)])

    async def main() -> ImageResult:
        async with AsyncClient(live.url) as http:
            return await http.analyze(b"image bytes")

    with LiveServer(stub, lifespan="off") as live:
        result = asyncio.run(main())
    assert result.image_wh == (8, 8)
    assert len(stub.seen) == 2
    assert len(recorded) == 1


def test_the_client_needs_only_the_client_extra() -> None:
    """`agelens[client]` adds httpx alone: importing the client must not need the server's
    packages (nor numpy-heavy engine modules beyond what the base package installs)."""
    import subprocess
    import sys

    blocked = ["fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "mangum"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import agelens.client\n"
        "assert agelens.client.Client and agelens.client.AsyncClient\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'onnxruntime', 'cv2', 'dlib'}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"  # nor loads the inference engine
