"""`agelens finetune --backbone faceres-deep`: the trainable network, its export into the
converted graph, and a tiny end-to-end distillation on real faces (the astronaut)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
if importlib.util.find_spec("onnx2torch") is None:
    # Not importorskip: importing onnx2torch needs torchvision, which agelens stubs out.
    pytest.skip("onnx2torch is not installed (the train extra)", allow_module_level=True)

import onnx
import torch

from agelens.cli import EXIT_USAGE, app
from agelens.errors import UnknownModelError
from agelens.evaluate import scored_face
from agelens.models.backends import create_detector, create_estimator
from agelens.models.crops import crop_resized
from agelens.models.faceapi import faceapi_crop_box
from agelens.models.fetch import model_file
from agelens.models.finetuned import FinetunedFaceApiEstimator, FinetunedFaceResEstimator
from agelens.models.registry import get_spec
from agelens.models.runtime import create_session
from agelens.pipeline import Analyzer
from agelens.train.finetune import AGE_CLASSES
from agelens.train.finetune_faceapi import student_normalisation
from agelens.train.finetune_faceres import (
    FACERES_SIZES,
    INPUT_SCALE,
    check_faceres_size,
    faceres_input,
    faceres_network,
    write_faceres_onnx,
)

runner = CliRunner()
SPEC = get_spec("faceres-deep")
MEAN_BGR = np.asarray(SPEC.mean, dtype=np.float32)


def _crops(astronaut: np.ndarray, size: int) -> np.ndarray:
    """faceres-deep's square RGB crops (uint8) of the astronaut's face and of its mirror."""
    detector = create_detector("blazeface-fast", 1)
    crops = []
    for image in (astronaut, np.ascontiguousarray(astronaut[:, ::-1])):
        (faces,) = detector.detect_many([image])
        crops.append(crop_resized(image, faceapi_crop_box(SPEC, faces[0]), size))
    return np.stack(crops)


def _torch_input(crops: np.ndarray) -> torch.Tensor:
    """What training feeds the network: NCHW RGB minus the means (`student_normalisation`)."""
    mean, scale = student_normalisation("faceres-deep")
    x = (torch.from_numpy(crops).float() - mean) * scale
    return x.permute(0, 3, 1, 2).contiguous()


def _torch_outputs(network: torch.nn.Module, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        age_logits, male_logit = network(_torch_input(crops))
    return torch.softmax(age_logits, 1).numpy(), torch.sigmoid(male_logit).numpy()


def test_network_starts_where_faceres_deep_was(astronaut: np.ndarray) -> None:
    path = model_file(SPEC, "age_gender.onnx")
    crops = _crops(astronaut, 224)
    original_age, original_male, _ = create_session(path, 1).run(
        None, {"input_1": faceres_input(crops, MEAN_BGR)}
    )
    network = faceres_network(path, 224).eval()
    probabilities, male = _torch_outputs(network, crops)
    assert probabilities.shape == (2, AGE_CLASSES)
    # the added age-0 class starts near zero; classes 1..100 are faceres-deep's own
    assert probabilities[:, 0].max() < 1e-3
    assert np.abs(probabilities[:, 1:] - original_age).max() < 1e-3
    assert np.abs(male - original_male[:, 0]).max() < 1e-4
    assert all(p.requires_grad for p in network.parameters())


def test_batch_norm_constants_are_trainable_and_mapped() -> None:
    network = faceres_network(model_file(SPEC, "age_gender.onnx"), 96)
    graph = onnx.load(str(model_file(SPEC, "age_gender.onnx")))
    per_channel = {
        t.name
        for t in graph.graph.initializer
        if len(t.dims) == 4 and t.dims[0] == 1 and tuple(t.dims[2:]) == (1, 1)
    }
    assert set(network.affine_names.values()) == per_channel
    assert len(per_channel) == 40  # a shift per convolution, a scale per depthwise one
    parameters = dict(network.named_parameters())
    assert all(f"body.initializers.{name}" in parameters for name in network.affine_names)


def test_exported_onnx_matches_the_trained_network(astronaut: np.ndarray, tmp_path: Path) -> None:
    base = model_file(SPEC, "age_gender.onnx")
    network = faceres_network(base, 96).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained: every weight moved, the new head too
        for parameter in network.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(0.02 * noise * (parameter.abs().mean() + 1e-3))
    crops = _crops(astronaut, 96)
    state = {k: v.numpy() for k, v in network.state_dict().items()}
    path = tmp_path / "age_gender.onnx"
    write_faceres_onnx(base, state, network.affine_names, path, 96, network.input_conv)
    probabilities, male = create_session(path, 1).run(
        None, {"input_1": faceres_input(crops, MEAN_BGR)}
    )
    expected_probabilities, expected_male = _torch_outputs(network, crops)
    assert probabilities.shape == (2, AGE_CLASSES)
    assert male.shape == (2,)
    assert np.abs(probabilities - expected_probabilities).max() < 1e-4
    assert np.abs(male - expected_male).max() < 1e-4
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["age_probabilities", "gender_probability"]
    # the converted graph's fused activations and in-Conv paddings stay as they were
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Clip") == 27
    assert ops.count("Pad") == 1  # only the head's age-0 column


def test_input_convolution_is_rescaled_for_training() -> None:
    base = model_file(SPEC, "age_gender.onnx")
    network = faceres_network(base, 96)
    graph = onnx.load(str(base))
    (conv,) = [node for node in graph.graph.node if node.name == network.input_conv]
    original = next(t for t in graph.graph.initializer if t.name == conv.input[1])
    trained = network.state_dict()[f"body.{network.input_conv}.1.weight"].numpy()
    original_array = onnx.numpy_helper.to_array(original)
    assert np.allclose(trained, original_array * INPUT_SCALE)


def test_writing_refuses_incomplete_weights(tmp_path: Path) -> None:
    base = model_file(SPEC, "age_gender.onnx")
    network = faceres_network(base, 96)
    state = {k: v.detach().numpy() for k, v in network.state_dict().items()}
    del state["age.weight"]
    with pytest.raises(ValueError, match=r"age\.weight"):
        write_faceres_onnx(
            base, state, network.affine_names, tmp_path / "m.onnx", 96, network.input_conv
        )


def test_a_graph_that_is_not_faceres_is_refused() -> None:
    with pytest.raises(ValueError, match="not a FaceRes graph"):
        faceres_network(model_file(get_spec("faceapi"), "age_gender.onnx"), 96)


@pytest.mark.parametrize("size", FACERES_SIZES)
def test_sizes(size: int) -> None:
    assert check_faceres_size(size) == size


@pytest.mark.parametrize("size", [80, 100, 224])
def test_unsupported_sizes_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="--size for faceres-deep must be one of"):
        check_faceres_size(size)


@pytest.fixture(scope="module")
def distilled(astronaut_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch at 96 px distilled from face-api with the strong augmentation: every step,
    not a useful model."""
    root = tmp_path_factory.mktemp("finetune-faceres")
    result = runner.invoke(
        app,
        [
            "finetune", str(astronaut_folder), "--backbone", "faceres-deep", "--size", "96",
            "--epochs", "1", "--name", "tiny-faceres", "--teacher", "faceapi",
            "--augment", "strong", "--out", str(root / "model"), "--cache", str(root / "cache"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "model"


def test_finetune_writes_a_complete_model_folder(distilled: Path) -> None:
    assert sorted(p.name for p in distilled.iterdir()) == [
        "MODEL_CARD.md",
        "age_gender.onnx",
        "card.json",
    ]
    card = json.loads((distilled / "card.json").read_text())
    assert card["backbone"] == "faceres-deep"
    assert card["input_size"] == 96
    assert "middle_blocks" not in card
    training = card["training"]
    assert training["config"]["lr_body"] == 1e-4  # faceres-deep's measured rate
    assert training["teacher"]["name"] == "faceapi"
    assert training["faces_used"] == 24
    assert math.isfinite(card["metrics"]["validation"]["age_mae"])
    assert "Apache-2.0 per HSE" in card["license"]
    markdown = (distilled / "MODEL_CARD.md").read_text()
    assert "FaceRes" in markdown
    assert "96 px" in markdown


def test_distilled_folder_is_an_estimator(distilled: Path, astronaut: np.ndarray) -> None:
    estimator = create_estimator(str(distilled), threads=1)
    assert isinstance(estimator, FinetunedFaceResEstimator)
    result = Analyzer("blazeface-fast", estimator).analyze(astronaut)
    face = scored_face(result)
    assert face is not None
    assert face.age_interval[0] <= face.age_years <= face.age_interval[1]
    # the Analyzer reports what the exported network says of faceres-deep's 96-px crop
    (detections,) = create_detector("blazeface-fast", 1).detect_many([astronaut])
    crop = crop_resized(astronaut, faceapi_crop_box(SPEC, detections[0]), 96)
    probabilities, male = create_session(distilled / "age_gender.onnx", 1).run(
        None, {"input_1": faceres_input(crop[None], MEAN_BGR)}
    )
    assert face.age_years == pytest.approx(float(probabilities[0] @ np.arange(AGE_CLASSES)))
    assert face.gender == ("M" if male[0] >= 0.5 else "F")
    assert face.gender_probability == pytest.approx(max(male[0], 1 - male[0]), abs=1e-6)
    assert result.models["estimator"].startswith(
        "tiny-faceres (agelens fine-tuned faceres-deep at 96"
    )
    assert estimator.align(astronaut, ()) == {}
    assert estimator.estimate({}) == []


def test_mirror_averages_a_face_and_its_mirror_image(
    distilled: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    folder = tmp_path / "mirrored"
    shutil.copytree(distilled, folder)
    card = json.loads((folder / "card.json").read_text())
    card["mirror"] = True
    (folder / "card.json").write_text(json.dumps(card))
    plain = FinetunedFaceResEstimator(distilled, threads=1)
    mirrored = FinetunedFaceResEstimator(folder, threads=1)
    (faces,) = create_detector("blazeface-full", 1).detect_many([astronaut])
    chips = plain.align(astronaut, faces[:1])
    flipped = {"faceres-deep": np.ascontiguousarray(chips["faceres-deep"][:, :, ::-1])}
    (face,) = plain.estimate(chips)
    (mirror,) = plain.estimate(flipped)
    (both,) = mirrored.estimate(chips)
    assert both.age_years == pytest.approx((face.age_years + mirror.age_years) / 2, abs=1e-3)
    assert both.gender_probability_male == pytest.approx(
        (face.gender_probability_male + mirror.gender_probability_male) / 2, abs=1e-5
    )


def test_folders_of_the_other_student_are_refused(distilled: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="fine-tuned face-api network"):
        FinetunedFaceApiEstimator(distilled, threads=1)
    copy = tmp_path / "copy"
    shutil.copytree(distilled, copy)
    card = json.loads((copy / "card.json").read_text())
    (copy / "card.json").write_text(json.dumps({**card, "backbone": "faceapi"}))
    with pytest.raises(UnknownModelError, match="fine-tuned faceres-deep network"):
        FinetunedFaceResEstimator(copy, threads=1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--size", "80"], "--size for faceres-deep must be one of"),
        (["--middle-blocks", "1"], "--middle-blocks is only available for --backbone faceapi"),
        (["--int8"], "only available for --backbone cydral"),
        (["--lr-body", "0"], "--lr-body must be positive"),
    ],
)
def test_usage_errors(
    astronaut_folder: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(
        app,
        [
            "finetune", str(astronaut_folder), "--backbone", "faceres-deep", "--size", "96",
            "--out", str(tmp_path / "m"), *arguments,
        ],
    )  # fmt: skip
    assert result.exit_code == EXIT_USAGE
    assert message in result.output


def test_models_list_shows_the_student(
    distilled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agelens.models.heads.user_dir", lambda: tmp_path)
    shutil.copytree(distilled, tmp_path / "tiny-faceres")
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = [row for row in json.loads(listed.stdout) if row["name"] == "tiny-faceres"]
    assert row["task"] == "age+gender (fine-tuned faceres-deep)"
    assert row["description"].startswith("faceres-deep age+gender fine-tuned at 96 px")
    assert row["fetched"] is True
