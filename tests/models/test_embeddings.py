"""Backbone names, and faceres read at a smaller input as a backbone of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from agelens.models.backends import create_detector
from agelens.models.convert.int8 import calibrate
from agelens.models.embeddings import (
    BACKBONE_NAMES,
    FaceResBackbone,
    backbone_model,
    create_backbone,
    embed_pair,
    int8_graph_file,
    int8_ranges_file,
    parse_backbone,
)
from agelens.paths import agelens_home


def test_names_parse_into_a_model_a_size_and_int8() -> None:
    assert [parse_backbone(name) for name in BACKBONE_NAMES] == [
        (name, None, False, False) for name in BACKBONE_NAMES
    ]
    assert parse_backbone("faceres@160") == ("faceres", 160, False, False)
    assert parse_backbone("faceres-deep@96") == ("faceres-deep", 96, False, False)
    assert parse_backbone("faceres@192-int8") == ("faceres", 192, True, False)
    assert parse_backbone("faceres-deep-int8") == ("faceres-deep", None, True, False)
    assert parse_backbone("faceres-deep@192-qat") == ("faceres-deep", 192, True, True)
    assert parse_backbone("faceres-qat") == ("faceres", None, True, True)
    assert backbone_model("faceres-deep@192") == "faceres-deep"
    assert backbone_model("faceres@192-int8") == "faceres"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet", "unknown backbone"),
        ("faceres@", "the size after @"),
        ("faceres@150", "the size after @"),
        ("faceres@224", "the size after @"),
        ("faceres@1e2", "the size after @"),
        ("cydral@64", "its own input size only"),
        ("faceapi@112", "its own input size only"),
        ("faceapi-int8", "no int8 version"),
        ("cydral-int8", "no int8 version"),
        ("faceres-int8@192", "unknown backbone"),
        ("cydral-qat", "no int8 version"),
        ("faceres@192-int8-qat", "the size after @"),
        ("faceres@192-qat-int8", "the size after @"),
    ],
)
def test_bad_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_backbone(name)
    with pytest.raises(ValueError, match=message):
        create_backbone(name)


def test_a_sized_faceres_backbone_embeds_smaller_chips(astronaut: NDArray[np.uint8]) -> None:
    """`faceres@160` keeps the name it was asked by (features are cached and heads trained
    under it), cuts 160-px chips under the network's own key, and gives vectors of the same
    width that differ from the 224-px ones."""
    detection = create_detector("blazeface-full", threads=1).detect_many([astronaut])[0][0]
    small, native = create_backbone("faceres@160", threads=1), create_backbone("faceres")
    assert (small.name, native.name) == ("faceres@160", "faceres")
    chips = small.align(astronaut, [detection])
    assert chips["faceres"].shape == (1, 160, 160, 3)
    face, mirrored = small.embed(chips), small.embed(chips, mirrored=True)
    reference = native.embed(native.align(astronaut, [detection]))
    assert face.shape == mirrored.shape == reference.shape == (1, small.dim)
    assert not np.allclose(face, mirrored)
    assert not np.allclose(face, reference)
    # Its last column is P(male): Eileen Collins reads as a woman at either size.
    assert face[0, -1] < 0.5
    assert reference[0, -1] < 0.5


def test_an_int8_backbone_needs_its_ranges(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the folder of its int8 ranges or graph"):
        create_backbone("faceres@192-int8")
    with pytest.raises(FileNotFoundError, match="no int8 ranges"):
        create_backbone("faceres@192-int8", folder=tmp_path)
    assert int8_ranges_file("faceres@192-int8") == "int8-ranges-faceres@192-int8.json"


def test_a_qat_backbone_needs_its_int8_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-qat` reads its int8 graph from the folder; one of another input size is refused
    where it would run."""
    from agelens.models.faceres import FaceResEstimator
    from agelens.models.registry import get_spec

    with pytest.raises(ValueError, match="needs the folder of its int8 ranges or graph"):
        create_backbone("faceres@96-qat")
    with pytest.raises(FileNotFoundError, match="no int8 graph"):
        create_backbone("faceres@96-qat", folder=tmp_path)
    assert int8_graph_file("faceres@96-qat") == "int8-faceres@96-qat.onnx"
    graph = FaceResEstimator(get_spec("faceres"), input_size=128).float_graph()
    wrong = tmp_path / "128.onnx"
    wrong.write_bytes(graph.SerializeToString())
    monkeypatch.setenv("AGELENS_INT8", "1")
    with pytest.raises(ValueError, match="reads 128x128 px crops, not 96"):
        FaceResEstimator(get_spec("faceres"), input_size=96, int8_graph=wrong)
    monkeypatch.setenv("AGELENS_INT8", "0")  # the graph is not read: the float network runs
    assert not FaceResEstimator(get_spec("faceres"), input_size=96, int8_graph=wrong).int8


def test_an_int8_backbone_runs_int8_where_enabled(
    astronaut: NDArray[np.uint8], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Named `faceres@128-int8` whether or not int8 runs (heads are trained under the name);
    int8 where enabled, the float network at the same size elsewhere, the two close."""
    detection = create_detector("blazeface-full", threads=1).detect_many([astronaut])[0][0]
    plain = create_backbone("faceres@128", threads=1)
    chips = plain.align(astronaut, [detection])
    calibration = np.concatenate([chips["faceres"], chips["faceres"][:, :, ::-1]])
    assert isinstance(plain, FaceResBackbone)
    calibrate(
        plain.estimator.float_graph(), calibration, tmp_path / int8_ranges_file("faceres@128-int8")
    )
    monkeypatch.setenv("AGELENS_INT8", "1")
    quantized = create_backbone("faceres@128-int8", threads=1, folder=tmp_path)
    monkeypatch.setenv("AGELENS_INT8", "0")
    fallback = create_backbone("faceres@128-int8", threads=1, folder=tmp_path)
    assert quantized.name == fallback.name == "faceres@128-int8"
    assert "int8" in quantized.version()
    assert "int8" not in fallback.version()
    assert "at 128 px" in fallback.version()
    assert list((agelens_home() / "derived").glob("faceres@128-int8-*.onnx"))
    face8, face32 = quantized.embed(chips), fallback.embed(chips)
    np.testing.assert_array_equal(face32, plain.embed(chips))
    assert not np.array_equal(face8, face32)
    cosine = (face8 * face32).sum() / (np.linalg.norm(face8) * np.linalg.norm(face32))
    assert cosine > 0.97
    assert face8[0, -1] < 0.5  # P(male): still a woman


@pytest.mark.parametrize("name", ["faceres@128", "faceapi", "cydral"])
def test_a_pair_is_the_face_and_its_mirror_in_one_run(
    name: str, astronaut: NDArray[np.uint8]
) -> None:
    """`embed_pair` runs the faces and their mirror images as one batch and gives what two
    separate runs give (to float rounding), for each chip layout (NHWC, NCHW, dlib's two)."""
    detector = create_detector("blazeface-full", threads=1)
    detection = detector.detect_many([astronaut])[0][0]
    backbone = create_backbone(name, threads=1)
    image = np.ascontiguousarray(astronaut[:, ::-1])
    chips = backbone.align(astronaut, [detection])
    other = backbone.align(image, [detector.detect_many([image])[0][0]])
    both = {key: np.concatenate([chips[key], other[key]]) for key in chips}
    face, mirrored = embed_pair(backbone, both)
    np.testing.assert_allclose(face, backbone.embed(both), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mirrored, backbone.embed(both, mirrored=True), rtol=1e-4, atol=1e-4)
    assert face.shape == mirrored.shape == (2, backbone.dim)
    assert not np.allclose(face, mirrored)
