"""Fixtures for the service: one real model pool per session, apps built from settings."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image

from agelens.server.app import create_app
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings

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
