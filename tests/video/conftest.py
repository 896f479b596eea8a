"""Clips built once per session from the shared photos (skipped without them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from agelens.pipeline import Analyzer
from tests.video.clips import Clip, Person, astronaut_clip, crowd_clip, cut_clip, utkface_people

pytest.importorskip("av", reason="the video extra is not installed: pip install 'agelens[video]'")


@pytest.fixture(scope="session")
def clip_people(utkface_dir: Path, analyzer: Analyzer) -> list[Person]:
    """Eight UTKFace test-split adults with known age and gender, each a face the default
    detector finds on a plain background at the clips' frame size and face size (the clips
    test tracking, not detection: a 640x360 frame, a 150-px face, so the detector takes the
    same path it takes on the clips' frames)."""

    def found(face: NDArray[np.uint8]) -> bool:
        canvas = np.full((360, 640, 3), 128, np.uint8)
        canvas[105:255, 245:395] = np.asarray(Image.fromarray(face).resize((150, 150)))
        return len(analyzer.detector.detect_many([canvas])[0]) == 1

    return utkface_people(utkface_dir, 8, usable=found)


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's clips are written."""
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def crowd(clip_folder: Path, clip_people: list[Person]) -> Clip:
    """Four people: pan, zoom, one entering, one leaving, one covered for 5 frames."""
    return crowd_clip(clip_folder, clip_people[:4])


@pytest.fixture(scope="session")
def cut(clip_folder: Path, clip_people: list[Person]) -> Clip:
    """Two people, a scene cut, two other people; with an audio track."""
    return cut_clip(clip_folder, clip_people[4:8])


@pytest.fixture(scope="session")
def astronaut_zoom(clip_folder: Path, astronaut: NDArray[np.uint8]) -> Clip:
    """A zoom and pan over the astronaut photo."""
    return astronaut_clip(clip_folder, astronaut)
