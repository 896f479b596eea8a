"""Shared fixtures: real images and analyzers built once per session.

Models must have been fetched (`agelens models fetch`, which `make test` runs); the tests do
not skip when they are missing, because a test suite that silently skips its real-model tests
proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
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
