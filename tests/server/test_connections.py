"""Connection-level limits under a real uvicorn: slow headers are cut, slow bodies get 408,
idle keep-alive connections are closed, and normal requests are untouched."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from agelens.server.app import create_app
from agelens.server.connections import uvicorn_limits
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings
from tests.server.conftest import uvicorn_in_thread


@contextmanager
def _serve(settings: Settings, pool: ModelPool) -> Iterator[tuple[str, int]]:
    app = create_app(settings, pool=pool)
    with uvicorn_in_thread(app, name="uvicorn-connections", **uvicorn_limits(settings)) as port:
        yield "127.0.0.1", port


def _closed_within(connection: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes the connection (reads EOF), or None."""
    connection.settimeout(seconds)
    start = time.monotonic()
    try:
        while connection.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_slow_headers_slow_bodies_and_idle_connections_are_cut(
    model_pool: ModelPool, astronaut_jpeg: bytes, tmp_path: Path
) -> None:
    settings = Settings(
        # Short, yet long enough for a healthy request on a loaded shared machine.
        header_timeout_seconds=2,
        body_timeout_seconds=2,
        keep_alive_seconds=2,
        data_dir=tmp_path,
    )
    with _serve(settings, model_pool) as address:
        silent = socket.create_connection(address)  # connects, says nothing
        trickle = socket.create_connection(address)
        trickle.sendall(b"POST /v1/analyze HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        assert _closed_within(silent, 15) is not None
        assert _closed_within(trickle, 15) is not None
        silent.close()
        trickle.close()

        slow_body = socket.create_connection(address)
        slow_body.sendall(
            b"POST /v1/analyze HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n" + astronaut_jpeg[:1000]
        )
        slow_body.settimeout(30)
        response = http.client.HTTPResponse(slow_body)
        response.begin()
        assert response.status == 408
        assert json.loads(response.read())["error"]["code"] == "request_timeout"
        slow_body.close()

        with httpx.Client(base_url=f"http://{address[0]}:{address[1]}", timeout=30) as client:
            ok = client.post(
                "/v1/analyze", content=astronaut_jpeg, headers={"Content-Type": "image/jpeg"}
            )
            assert ok.status_code == 200
            assert len(ok.json()["faces"]) == 1
            assert client.get("/health").status_code == 200  # the same kept-alive connection

        kept = socket.create_connection(address)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        kept.settimeout(15)
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed_within(kept, 15) is not None  # idle after its answer
        kept.close()
