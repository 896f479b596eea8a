"""Shared fixtures: real images and analyzers built once per session.

Models must have been fetched (`agelens models fetch`, which `make test` runs); the tests do
not skip when they are missing, because a test suite that silently skips its real-model tests
proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


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
