"""Fixtures for the service: one real model pool per session, apps built from settings."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image

from agelens.server.app import create_app
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings
from tests.conftest import HandlerRoute, WebServer

__all__ = ["HandlerRoute", "WebServer"]  # their home (and web_server's) is tests/conftest.py

ClientFactory = Callable[..., TestClient]


@pytest.fixture(scope="session")
def model_pool() -> ModelPool:
    """The default models (BlazeFace full-range + ensemble), loaded once for every app."""
    settings = Settings()
    pool = ModelPool(
        settings.detector, settings.estimator, threads=2, max_pixels=settings.max_pixels
    )
    pool.load_defaults()
    return pool


@pytest.fixture
def make_client(model_pool: ModelPool, tmp_path: Path) -> Iterator[ClientFactory]:
    """Build a TestClient (lifespan running) for an app with the given settings fields; the
    service's data folder (the jobs database) is a temporary one unless `data_dir` is given."""
    clients: list[TestClient] = []

    def factory(**settings: Any) -> TestClient:
        settings.setdefault("data_dir", tmp_path / "agelens-data")
        client = TestClient(create_app(Settings(**settings), pool=model_pool))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    """An app with the default settings (loopback, no keys)."""
    return make_client()


def jpeg_bytes(image: NDArray[np.uint8], quality: int = 92) -> bytes:
    """The image encoded as JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def astronaut_jpeg(astronaut: NDArray[np.uint8]) -> bytes:
    """skimage's astronaut (one woman, about 42) as JPEG bytes."""
    return jpeg_bytes(astronaut)


@pytest.fixture(scope="session")
def blank_jpeg() -> bytes:
    """A plain grey photo with no face."""
    return jpeg_bytes(np.full((480, 640, 3), 128, np.uint8))


# ------------------------------------------------------------------ a throwaway PostgreSQL

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
_NOBODY = 65534


def _as_postgres_user(command: list[str]) -> list[str]:
    """The command run as an unprivileged user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups", *command]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL 15 cluster of its own (initdb in a temporary folder, trust auth, loopback,
    a free port), started once per session and stopped at the end; yields the URL of its
    `postgres` database. Skips when the binaries or psycopg are missing, or when running as
    root without a way to switch to an unprivileged user."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (agelens[postgres])")
    if not (POSTGRES_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL binaries not found in {POSTGRES_BIN}")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is missing: PostgreSQL cannot run as root")
    root = Path(tempfile.mkdtemp(prefix="agelens-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockets):
            os.chown(path, _NOBODY, _NOBODY)
    initdb = subprocess.run(
        _as_postgres_user(
            [
                str(POSTGRES_BIN / "initdb"),
                *("-D", str(data), "-U", "agelens", "--auth=trust"),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            ]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if initdb.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed (cannot run PostgreSQL here): {initdb.stderr.strip()}")
    port = _free_port()
    log = (root / "postgres.log").open("wb")
    server = subprocess.Popen(
        _as_postgres_user(
            [
                str(POSTGRES_BIN / "postgres"),
                *("-D", str(data), "-p", str(port), "-k", str(sockets)),
                *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
                *("-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
            ]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"postgresql://agelens@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"postgres stopped: {(root / 'postgres.log').read_text()[-2000:]}")
            try:
                psycopg.connect(url, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown: open connections are closed
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    import psycopg

    name = f"agelens_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def uvicorn_in_thread(app: Any, *, name: str = "uvicorn-test", **config: Any) -> Iterator[int]:
    """Run `app` under a real uvicorn on a free loopback port in a daemon thread; yield the
    port; stop the server afterwards and check that it stopped. `config` adds to or overrides
    uvicorn.Config's arguments (WebSockets off, lifespan on, warnings only)."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "log_level": "warning",
        "ws": "none",
        "lifespan": "on",
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the test server did not stop"
