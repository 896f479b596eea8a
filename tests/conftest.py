"""Shared fixtures: real images and analyzers built once per session.

Models must have been fetched (`agelens models fetch`, which `make test` runs); the tests do
not skip when they are missing, because a test suite that silently skips its real-model tests
proves nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

HandlerRoute = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """../shared/data/samples, or skip when this checkout has no shared data beside it."""
    folder = SHARED_DATA / "samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (shared data is not part of a fresh clone)")
    return folder


@pytest.fixture(scope="session")
def utkface_dir() -> Path:
    """../shared/data/utkface, or skip when absent."""
    folder = SHARED_DATA / "utkface"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"{folder} is absent (shared data is not part of a fresh clone)")
    return folder


@pytest.fixture(scope="session")
def astronaut() -> NDArray[np.uint8]:
    """Eileen Collins' NASA portrait (public domain), about 42 years old: always available."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut())


@pytest.fixture(scope="session")
def large_photo_jpeg(astronaut: NDArray[np.uint8]) -> bytes:
    """A 3200x2400 JPEG (a phone photo's size) with the astronaut's head and shoulders 1200 px
    wide on a grey wall: a photo agelens decodes reduced (`Analyzer.decode`)."""
    import io

    from PIL import Image

    canvas = np.full((2400, 3200, 3), 90, np.uint8)
    portrait = Image.fromarray(astronaut[0:330, 60:390]).resize((1200, 1200))
    canvas[600:1800, 1400:2600] = np.asarray(portrait)
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class DecodeSpy:
    """Records the scale of every reduced JPEG decode (`agelens.imaging.load_image_reduced`,
    wherever agelens calls it): `[]` when everything was decoded whole by `load_image`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from agelens import imaging, pipeline

        self.scales: list[int] = []
        self._real = imaging.load_image_reduced
        monkeypatch.setattr(imaging, "load_image_reduced", self)
        monkeypatch.setattr(pipeline, "load_image_reduced", self)

    def __call__(self, *args: object, **kwargs: object) -> object:
        image = self._real(*args, **kwargs)  # type: ignore[arg-type]
        self.scales.append(image.scale)
        return image


@pytest.fixture
def decode_spy(monkeypatch: pytest.MonkeyPatch) -> DecodeSpy:
    """A DecodeSpy for this test."""
    return DecodeSpy(monkeypatch)


@pytest.fixture(scope="session")
def analyzer() -> Iterator[object]:
    """The default Analyzer (BlazeFace full-range + ensemble), loaded once."""
    from agelens.pipeline import Analyzer

    return Analyzer(threads=2)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def agelens_serve(args: list[str], env: dict[str, str]) -> Iterator[str]:
    """`agelens serve ARGS` in its own process, with this environment less every AGELENS_
    setting (but the model home) plus `env`, on the port `env["PORT"]` or a free one given as
    PORT; yields its URL once /ready answers, and stops it (SIGTERM) at the end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGELENS_")}
    if "AGELENS_HOME" in os.environ:
        full_env["AGELENS_HOME"] = os.environ["AGELENS_HOME"]
    full_env.update({"PORT": str(_free_port()), "PYTHONUNBUFFERED": "1", **env})
    process = subprocess.Popen(
        [sys.executable, "-m", "agelens", "serve", "--log-level", "warning", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{full_env['PORT']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"agelens serve exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "agelens serve did not get ready"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@dataclass
class WebServer:
    """A real HTTP server on 127.0.0.1: GET paths in `routes` are answered by their handler,
    others get 404; every path asked for is recorded in `requested`."""

    base: str
    routes: dict[str, HandlerRoute]
    requested: list[str] = field(default_factory=list)


@pytest.fixture
def web_server() -> Iterator[WebServer]:
    """A local web server whose paths the test defines (URL fetching, jobs from URLs)."""
    routes: dict[str, HandlerRoute] = {}
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            route(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WebServer(f"http://127.0.0.1:{server.server_address[1]}", routes, requested)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def image_route(data: bytes, content_type: str = "image/jpeg") -> HandlerRoute:
    """A WebServer route answering 200 with `data` as `content_type`."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return route


def redirect_route(location: str) -> HandlerRoute:
    """A WebServer route answering 302 to `location`."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route
