"""The trained heads agelens ships: found by name, verified, sensible on faces unlike UTKFace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from agelens.errors import ModelNotFetchedError, UnknownModelError
from agelens.evaluate import scored_face
from agelens.models.backends import estimator_names
from agelens.models.heads import (
    HeadsEstimator,
    find_trained,
    read_card,
    shipped_dir,
    trained_folders,
)
from agelens.pipeline import Analyzer

SHIPPED = "heads-utkface"


@pytest.fixture(scope="module")
def accurate() -> Analyzer:
    return Analyzer("blazeface-full", SHIPPED, threads=2)


def test_shipped_model_is_listed_with_its_card() -> None:
    folder = trained_folders()[SHIPPED]
    assert folder == shipped_dir() / SHIPPED
    assert SHIPPED in estimator_names()
    card = read_card(folder)
    assert card["backbones"] == ["faceres@192-int8", "faceres-deep@192-qat", "faceapi", "cydral"]
    assert set(card["files"]) == {
        "head.onnx",
        "int8-ranges-faceres@192-int8.json",
        "int8-faceres-deep@192-qat.onnx",
    }
    assert "non-commercial research only" in card["data_notice"]
    assert card["training"]["split"] == "dev"  # never trained on test
    assert card["training"]["command"].startswith("agelens train ../shared/data/utkface")
    # every model agelens ships, together, within the package's budget: 25 MB since the
    # heads carry faceres-deep's int8 graph fine-tuned for int8 (3.7 MB; 20 MB before)
    shipped = [path for path in shipped_dir().rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in shipped) < 25_000_000
    assert "non-commercial" in (folder / "MODEL_CARD.md").read_text()


def test_astronaut_reads_about_42_and_female(
    accurate: Analyzer, astronaut: NDArray[np.uint8]
) -> None:
    [face] = accurate.analyze(astronaut).faces
    assert abs(face.age_years - 42) <= 10
    assert face.gender == "F"
    assert face.age_interval[0] < face.age_years < face.age_interval[1]


def test_sample_photos_unlike_utkface(accurate: Analyzer, samples_dir: Path) -> None:
    """Group photos of adult women and one bearded man: genders right, ages adult."""
    for name in ("sample1.jpg", "sample4.jpg"):
        faces = accurate.analyze(samples_dir / name).faces
        assert len(faces) >= 3
        assert all(face.gender == "F" for face in faces), name
        assert all(16 <= face.age_years <= 60 for face in faces), name
    face = scored_face(accurate.analyze(samples_dir / "man_beard.jpg"))
    assert face is not None
    assert face.gender == "M"
    assert 20 <= face.age_years <= 70


def test_the_float_fallback_reads_like_int8(
    astronaut: NDArray[np.uint8], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU without VNNI faceres runs in float under the heads trained on its int8
    features: the same faces, ages within a few years, the same genders."""
    monkeypatch.setenv("AGELENS_INT8", "1")
    quantized = Analyzer("blazeface-full", SHIPPED, threads=1)
    monkeypatch.setenv("AGELENS_INT8", "0")
    fallback = Analyzer("blazeface-full", SHIPPED, threads=1)
    assert "faceres at 192 px, int8" in quantized.analyze(astronaut).models["estimator"]
    assert "faceres at 192 px (" in fallback.analyze(astronaut).models["estimator"]
    small = np.ascontiguousarray(astronaut[::2, ::2])
    for image in (astronaut, np.ascontiguousarray(astronaut[:, ::-1]), small):
        ours, theirs = quantized.analyze(image).faces, fallback.analyze(image).faces
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs, strict=True):
            assert a.gender == b.gender
            assert abs(a.age_years - b.age_years) < 3


def test_a_copied_folder_loads_by_path_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shipped_dir() / SHIPPED, copy)
    assert find_trained(str(copy)) == copy
    HeadsEstimator(copy, threads=1)
    card = json.loads((copy / "card.json").read_text())
    card["files"]["head.onnx"] = "0" * 64
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelNotFetchedError, match="sha256"):
        HeadsEstimator(copy, threads=1)
    (copy / "head.onnx").unlink()
    with pytest.raises(ModelNotFetchedError, match="missing"):
        HeadsEstimator(copy, threads=1)
    card["kind"] = "something-else"
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(UnknownModelError):
        read_card(copy)
    assert find_trained(str(tmp_path / "nothing")) is None
