"""Fine-tuning a faceres network for int8 (agelens.train.qat) on real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from agelens.evaluate import read_labels
from agelens.models.backends import create_detector
from agelens.models.convert.int8 import calibrate, quantized
from agelens.models.faceres import FaceResEstimator
from agelens.models.registry import get_spec
from agelens.train.features import FeatureConfig
from agelens.train.qat import run_graph, tune, tune_for_int8, tuned_path


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def test_tuning_brings_the_int8_network_closer_to_the_float_one(
    astronaut: np.ndarray, tmp_path: Path
) -> None:
    """On the faces it was tuned on, the tuned network in int8 (agelens's recipe) answers
    closer to the original float network than the original does in int8."""
    network = FaceResEstimator(get_spec("faceres-deep"), threads=1, input_size=96)
    [[detection]] = create_detector("blazeface-full", 1).detect_many([astronaut])
    base = network.align(astronaut, [detection])["faceres-deep"]
    rng = np.random.default_rng(0)
    chips = np.concatenate(
        [base * rng.uniform(0.8, 1.2) + rng.normal(0, 2.0, base.shape) for _ in range(16)]
    ).astype(np.float32)
    chips = np.concatenate([chips, np.ascontiguousarray(chips[:, :, ::-1, :])])
    original = network.float_graph()
    reference = run_graph(original.SerializeToString(), chips, 1)
    tuned = tune(original, chips[:16], chips, epochs=16)
    distances = {}
    for name, model in (("original", original), ("tuned", tuned)):
        ranges = tmp_path / f"{name}.json"
        calibrate(model, chips[:16], ranges)
        embedding = run_graph(quantized(model, ranges), chips, 1)[2]
        distances[name] = 1 - _cosine(embedding, reference[2])
    assert distances["tuned"] < 0.5 * distances["original"], distances


def test_nothing_is_tuned_without_a_qat_backbone(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,age,gender\na.jpg,30,F\n")
    faces = FeatureConfig(str(tmp_path), ("faceres@96-int8", "faceapi"), 0.0, "blazeface-full", "")
    assert tune_for_int8(tmp_path, read_labels(labels), faces, tmp_path / "cache") == {}
    assert not (tmp_path / "cache").exists()


def test_tuning_with_no_face_found_is_an_error(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), "grey").save(tmp_path / "a.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,age,gender\na.jpg,30,F\n")
    faces = FeatureConfig(str(tmp_path), ("faceres-deep@96-qat",), 0.0, "blazeface-full", "")
    with pytest.raises(ValueError, match="no face was found"):
        tune_for_int8(tmp_path, read_labels(labels), faces, tmp_path / "cache")


def test_a_backbones_tuned_weights_do_not_depend_on_the_others(tmp_path: Path) -> None:
    """Adding a second `-qat` backbone (or any other) keeps the first one's cached weights;
    other faces or another network do not."""
    one = FeatureConfig("/d", ("faceres-deep@192-qat", "faceapi"), 0.5, "blazeface-full", "ab")
    two = FeatureConfig(
        "/d", ("faceres@192-qat", "faceres-deep@192-qat", "cydral"), 0.5, "blazeface-full", "ab"
    )
    other_faces = FeatureConfig("/d", ("faceres-deep@192-qat",), 0.5, "blazeface-full", "cd")
    name = "faceres-deep@192-qat"
    assert tuned_path(tmp_path, one, name) == tuned_path(tmp_path, two, name)
    assert tuned_path(tmp_path, one, name) != tuned_path(tmp_path, other_faces, name)
    assert (
        tuned_path(tmp_path, two, name).parent
        != tuned_path(tmp_path, two, "faceres@192-qat").parent
    )
