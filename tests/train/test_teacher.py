"""Teacher targets for distillation: what the teacher says, cached in chunks that resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agelens.evaluate import LabelledImage, iter_scored_faces, read_labels
from agelens.models.backends import create_detector, create_estimator
from agelens.train import teacher as teacher_module
from agelens.train.teacher import Z80, teacher_targets


@pytest.fixture(scope="module")
def folder(astronaut: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five photos of a real face (shifted, mirrored) and one blank image, labelled."""
    root = tmp_path_factory.mktemp("teacher-data")
    lines = ["file,age,gender"]
    for index in range(5):
        image = astronaut[index * 6 :, index * 5 :]
        if index % 2:
            image = image[:, ::-1]
        Image.fromarray(np.ascontiguousarray(image)).save(root / f"a{index}.jpg", quality=92)
        lines.append(f"a{index}.jpg,42,F")
    Image.new("RGB", (300, 300), (120, 120, 120)).save(root / "blank.jpg")
    lines.append("blank.jpg,30,M")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _rows(folder: Path) -> list[LabelledImage]:
    return read_labels(folder / "labels.csv", split=None, limit=None, seed=0)


def test_targets_are_the_teachers_answers(folder: Path, tmp_path: Path) -> None:
    rows = _rows(folder)
    targets = teacher_targets(
        folder, rows, teacher="faceapi", cache_root=tmp_path, pad=0.2, detector="blazeface-full"
    )
    detector = create_detector("blazeface-full", 1)
    estimator = create_estimator("faceapi", 1)
    for position, face in enumerate(iter_scored_faces(folder, rows, 0.2, detector)):
        if face is None:
            assert rows[position].file == "blank.jpg"
            assert not targets.found[position]
            assert math.isnan(float(targets.age[position]))
            continue
        image, detection = face
        (estimate,) = estimator.estimate(estimator.align(image, [detection]))
        low, high = estimate.age_interval
        assert targets.found[position]
        assert targets.age[position] == pytest.approx(estimate.age_years, abs=1e-3)
        assert targets.male[position] == pytest.approx(estimate.gender_probability_male, abs=1e-4)
        assert targets.sigma[position] == pytest.approx((high - low) / 2 / Z80, abs=1e-3)
    assert int(targets.found.sum()) == 5


def test_targets_are_cached_and_an_interrupted_run_resumes(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows(folder)
    monkeypatch.setattr(teacher_module, "CHUNK_ROWS", 2)
    first = teacher_targets(
        folder, rows, teacher="faceapi", cache_root=tmp_path, pad=0.2, detector="blazeface-full"
    )
    (cache,) = tmp_path.glob("teacher-*")
    chunks = sorted(cache.glob("chunk-*.npz"))
    assert len(chunks) == 3
    before = {chunk: chunk.stat().st_mtime_ns for chunk in chunks}
    chunks[1].unlink()  # as if the run had been stopped before writing it
    again = teacher_targets(
        folder, rows, teacher="faceapi", cache_root=tmp_path, pad=0.2, detector="blazeface-full"
    )
    assert chunks[1].is_file()
    assert chunks[0].stat().st_mtime_ns == before[chunks[0]]
    assert chunks[2].stat().st_mtime_ns == before[chunks[2]]
    np.testing.assert_array_equal(first.found, again.found)
    np.testing.assert_allclose(first.age, again.age, equal_nan=True)
    # Another teacher never reuses these targets.
    teacher_targets(
        folder, rows, teacher="cydral", cache_root=tmp_path, pad=0.2, detector="blazeface-full"
    )
    assert len(list(tmp_path.glob("teacher-*"))) == 2


def test_no_rows_give_empty_targets(tmp_path: Path) -> None:
    targets = teacher_targets(
        tmp_path, [], teacher="faceapi", cache_root=tmp_path, pad=0.0, detector="blazeface-full"
    )
    assert targets.found.shape == (0,)
