"""The embedding cache: real faces through real backbones, resumable by chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agelens.evaluate import LabelledImage
from agelens.train import features as features_module
from agelens.train.features import build_features


@pytest.fixture
def folder(tmp_path: Path, astronaut: np.ndarray) -> tuple[Path, list[LabelledImage]]:
    """Six portraits (the astronaut, mirrored and rescaled), a blank image, a corrupt file."""
    rows = []
    for index in range(6):
        image = Image.fromarray(astronaut if index % 2 else astronaut[:, ::-1])
        image = image.resize((256 + 64 * index, 256 + 64 * index))
        image.save(tmp_path / f"face{index}.jpg", quality=90)
        rows.append(LabelledImage(file=f"face{index}.jpg", age=42.0, gender="F"))
    Image.new("RGB", (300, 200), "grey").save(tmp_path / "blank.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows.insert(2, LabelledImage(file="blank.png", age=30.0, gender="M"))
    rows.insert(4, LabelledImage(file="corrupt.jpg", age=30.0, gender="M"))
    return tmp_path, rows


def test_faces_are_embedded_and_rows_without_one_left_out(
    folder: tuple[Path, list[LabelledImage]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, rows = folder
    monkeypatch.setattr(features_module, "CHUNK_ROWS", 3)
    result = build_features(dataset, rows, backbones=["faceapi"], cache_root=tmp_path / "cache")
    assert [r.file for r in result.rows] == [f"face{i}.jpg" for i in range(6)]
    embedding = result.embeddings["faceapi"]
    assert embedding.shape == (6, 514)
    assert np.isfinite(embedding).all()
    # The mirrored image's embedding is close to the original's mirror embedding.
    mirror = result.mirrored["faceapi"]
    assert not np.allclose(embedding, mirror)
    assert result.matrix(["faceapi"]).shape == (6, 514)


def test_an_interrupted_cache_resumes_at_the_missing_chunk(
    folder: tuple[Path, list[LabelledImage]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, rows = folder
    monkeypatch.setattr(features_module, "CHUNK_ROWS", 3)
    first = build_features(dataset, rows, backbones=["faceapi"], cache_root=tmp_path / "c")
    [cache] = (tmp_path / "c").iterdir()
    chunks = sorted(cache.glob("chunk-*.npz"))
    assert len(chunks) == 3
    kept = {p.name: p.stat().st_mtime_ns for p in (chunks[0], chunks[2])}
    chunks[1].unlink()  # as if killed while writing it: temporary files are never loaded
    (cache / ".chunk-00001.npz.k3x9q_.tmp").write_bytes(b"half written")
    second = build_features(dataset, rows, backbones=["faceapi"], cache_root=tmp_path / "c")
    assert sorted(p.name for p in cache.glob("chunk-*.npz")) == [
        "chunk-00000.npz",
        "chunk-00001.npz",
        "chunk-00002.npz",
    ]
    assert {name: (cache / name).stat().st_mtime_ns for name in kept} == kept  # not redone
    np.testing.assert_allclose(second.embeddings["faceapi"], first.embeddings["faceapi"])


def test_a_different_configuration_never_reuses_a_cache(
    folder: tuple[Path, list[LabelledImage]], tmp_path: Path
) -> None:
    dataset, rows = folder
    build_features(dataset, rows[:3], backbones=["faceapi"], cache_root=tmp_path / "c")
    build_features(dataset, rows[:3], backbones=["faceapi"], cache_root=tmp_path / "c", pad=0.2)
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_caches_built_before_int8_keep_their_folder(tmp_path: Path) -> None:
    """Fields added for int8 stay out of the key while empty, so the folder of a float
    configuration is the one its cache was written to before they existed."""
    import hashlib
    import json

    from agelens.train.chunks import cache_folder
    from agelens.train.features import FeatureConfig

    config = FeatureConfig("/data", ("faceres@192", "faceapi"), 0.5, "blazeface-full", "ab")
    before = {
        "dataset_dir": "/data",
        "backbones": ["faceres@192", "faceapi"],
        "pad": 0.5,
        "detector": "blazeface-full",
        "files_sha256": "ab",
    }
    key = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert cache_folder(tmp_path, "features", config) == tmp_path / f"features-{key[:16]}"
    int8 = FeatureConfig(
        "/data", ("faceres@192-int8",), 0.5, "blazeface-full", "ab", ("cd",), "/ranges"
    )
    moved = FeatureConfig(
        "/data", ("faceres@192-int8",), 0.5, "blazeface-full", "ab", ("cd",), "/elsewhere"
    )
    other = FeatureConfig(
        "/data", ("faceres@192-int8",), 0.5, "blazeface-full", "ab", ("ef",), "/ranges"
    )
    assert cache_folder(tmp_path, "f", int8) == cache_folder(tmp_path, "f", moved)
    assert cache_folder(tmp_path, "f", int8) != cache_folder(tmp_path, "f", other)
    # The same ranges build another graph under another recipe (the float tail of recipe 3):
    # its features are another cache.
    recipe2 = FeatureConfig(
        "/data", ("faceres@192-int8",), 0.5, "blazeface-full", "ab", ("cd",), "/ranges", 2
    )
    recipe3 = FeatureConfig(
        "/data", ("faceres@192-int8",), 0.5, "blazeface-full", "ab", ("cd",), "/ranges", 3
    )
    assert len({cache_folder(tmp_path, "f", c) for c in (int8, recipe2, recipe3)}) == 3


def test_int8_features_are_keyed_by_the_recipe(
    folder: tuple[Path, list[LabelledImage]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Features embedded by an int8 graph of one recipe are never read under another."""
    from agelens.models.convert import int8

    dataset, rows = folder
    backbones = ["faceres@96-int8"]
    build_features(dataset, rows[:2], backbones=backbones, cache_root=tmp_path / "c")
    monkeypatch.setattr(int8, "RECIPE_VERSION", int8.RECIPE_VERSION + 1)
    build_features(dataset, rows[:2], backbones=backbones, cache_root=tmp_path / "c")
    features = sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.startswith("feat"))
    assert len(features) == 2
