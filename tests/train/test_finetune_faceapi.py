"""`agelens finetune --backbone faceapi`: the network at a smaller input, its export, and a
tiny end-to-end run on real faces (always: a labelled folder cut from the astronaut)."""

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
import onnxruntime as ort
import torch

from agelens.cli import EXIT_USAGE, app
from agelens.errors import ModelNotFetchedError, UnknownModelError
from agelens.evaluate import scored_face
from agelens.models.backends import create_detector, create_estimator
from agelens.models.faceapi import faceapi_chips
from agelens.models.fetch import model_file
from agelens.models.finetuned import FinetunedFaceApiEstimator
from agelens.models.heads import card_kind, trained_folders
from agelens.models.registry import get_spec
from agelens.models.runtime import create_session
from agelens.pipeline import Analyzer
from agelens.train.finetune import AGE_CLASSES
from agelens.train.finetune_faceapi import (
    FaceApiChipSet,
    check_middle_blocks,
    check_size,
    export_faceapi_onnx,
    faceapi_network,
    gender_loss,
    global_pool_graph,
    train_chip_size,
)

runner = CliRunner()
SPEC = get_spec("faceapi")


def _chips(astronaut: np.ndarray, size: int) -> np.ndarray:
    """face-api's normalised chips of the astronaut's face and of its mirror image."""
    detector = create_detector("blazeface-fast", 1)
    chips = []
    for image in (astronaut, np.ascontiguousarray(astronaut[:, ::-1])):
        (faces,) = detector.detect_many([image])
        chips.append(faceapi_chips(SPEC, image, faces[:1], size))
    return np.concatenate(chips)


def test_global_pool_graph_is_the_original_at_112_px(astronaut: np.ndarray, tmp_path: Path) -> None:
    path = model_file(SPEC, "age_gender.onnx")
    chips = _chips(astronaut, 112)
    expected = create_session(path, 1).run(None, {"input": chips})
    graph = tmp_path / "global.onnx"
    onnx.save(global_pool_graph(path), str(graph))
    got = create_session(graph, 1).run(None, {"input": chips})
    for a, b in zip(expected, got, strict=True):
        assert np.abs(a - b).max() < 1e-4
    # ...and it runs at the smaller sizes the original cannot take.
    age, _gender, embedding = create_session(graph, 1).run(None, {"input": _chips(astronaut, 64)})
    assert embedding.shape == (2, 512)
    assert np.isfinite(age).all()


def test_network_starts_where_face_api_was(astronaut: np.ndarray) -> None:
    path = model_file(SPEC, "age_gender.onnx")
    chips = _chips(astronaut, 112)
    original_age, original_gender, _ = create_session(path, 1).run(None, {"input": chips})
    network = faceapi_network(path).eval()
    with torch.no_grad():
        age_logits, male_logit = network(torch.from_numpy(chips))
    expected = (torch.softmax(age_logits, 1) * torch.arange(AGE_CLASSES)).sum(1).numpy()
    assert age_logits.shape == (2, AGE_CLASSES)
    assert np.abs(expected - original_age).max() < 0.5
    assert np.abs(torch.sigmoid(male_logit).numpy() - original_gender[:, 0]).max() < 1e-4
    assert all(p.requires_grad for p in network.parameters())


@pytest.mark.parametrize("middle_blocks", [2, 0])
def test_exported_onnx_matches_the_torch_network(
    astronaut: np.ndarray, tmp_path: Path, middle_blocks: int
) -> None:
    network = faceapi_network(model_file(SPEC, "age_gender.onnx"), middle_blocks).eval()
    chips = _chips(astronaut, 64)
    export_faceapi_onnx(network, tmp_path / "age_gender.onnx", 64, middle_blocks)
    probabilities, male = create_session(tmp_path / "age_gender.onnx", 1).run(
        None, {"input": chips}
    )
    with torch.no_grad():
        age_logits, male_logit = network(torch.from_numpy(chips))
    assert probabilities.shape == (2, AGE_CLASSES)
    assert male.shape == (2,)
    assert np.abs(probabilities - torch.softmax(age_logits, 1).numpy()).max() < 1e-4
    assert np.abs(male - torch.sigmoid(male_logit).numpy()).max() < 1e-4


@pytest.mark.parametrize("middle_blocks", [1, 0])
def test_middle_blocks_are_left_out(astronaut: np.ndarray, middle_blocks: int) -> None:
    path = model_file(SPEC, "age_gender.onnx")
    model = global_pool_graph(path, middle_blocks)
    names = {node.name.split("/")[1] for node in model.graph.node if node.name.startswith("mid")}
    assert names == {f"main_block_{i}" for i in range(middle_blocks)}
    chips = _chips(astronaut, 80)
    full = create_session_from(global_pool_graph(path)).run(None, {"input": chips})
    short = create_session_from(model).run(None, {"input": chips})
    assert short[2].shape == full[2].shape == (2, 512)
    assert np.isfinite(short[0]).all()
    assert np.abs(short[2] - full[2]).max() > 1e-3  # a different network, to be fine-tuned
    used = {name for node in model.graph.node for name in node.input}
    assert all(t.name in used for t in model.graph.initializer)


@pytest.mark.parametrize("middle_blocks", [-1, 3])
def test_unsupported_middle_blocks_are_refused(middle_blocks: int) -> None:
    with pytest.raises(ValueError, match="--middle-blocks must be 0 to 2"):
        check_middle_blocks(middle_blocks)


def create_session_from(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_gender_loss_ignores_unknown_genders() -> None:
    logits = torch.tensor([3.0, -3.0, 0.0])
    right = gender_loss(logits, torch.tensor([1.0, 0.0, math.nan]))
    wrong = gender_loss(logits, torch.tensor([0.0, 1.0, math.nan]))
    assert math.isfinite(float(right))
    assert float(right) < float(wrong)
    assert float(gender_loss(logits, torch.full((3,), math.nan))) == 0.0


def test_chip_set_reads_genders() -> None:
    from agelens.evaluate import LabelledImage

    rows = (
        LabelledImage("a.jpg", 30.0, "M"),
        LabelledImage("b.jpg", 40.0, "F"),
        LabelledImage("c.jpg", 50.0, None),
    )
    empty = np.zeros((3, 72, 72, 3), np.uint8)
    chips = FaceApiChipSet(rows=rows, train_chips=empty, eval_chips=empty[:, :64, :64])
    assert chips.male[:2].tolist() == [1.0, 0.0]
    assert math.isnan(float(chips.male[2]))
    assert chips.ages.tolist() == [30.0, 40.0, 50.0]


@pytest.mark.parametrize("size", [64, 80, 96, 112])
def test_sizes(size: int) -> None:
    assert check_size(size) == size
    assert train_chip_size(size) == round(size * 9 / 8)


@pytest.mark.parametrize("size", [0, 70, 128])
def test_unsupported_sizes_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="--size"):
        check_size(size)


@pytest.fixture(scope="module")
def finetuned(astronaut_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on the 24 photos at 64 px: every step, not a useful model."""
    root = tmp_path_factory.mktemp("finetune-faceapi")
    result = runner.invoke(
        app,
        [
            "finetune", str(astronaut_folder), "--backbone", "faceapi", "--size", "64",
            "--middle-blocks", "1", "--epochs", "1", "--name", "tiny-faceapi",
            "--out", str(root / "model"), "--cache", str(root / "cache"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "tiny-faceapi"
    return root / "model"


def test_finetune_writes_a_complete_model_folder(finetuned: Path) -> None:
    assert sorted(p.name for p in finetuned.iterdir()) == [
        "MODEL_CARD.md",
        "age_gender.onnx",
        "card.json",
    ]
    card = json.loads((finetuned / "card.json").read_text())
    assert card["kind"] == "agelens-finetuned" == card_kind(finetuned)
    assert card["backbone"] == "faceapi"
    assert card["input_size"] == 64
    assert card["middle_blocks"] == 1
    model = onnx.load(str(finetuned / "age_gender.onnx"))
    assert not any(node.name.startswith("middle_flow/main_block_1/") for node in model.graph.node)
    assert set(card["files"]) == {"age_gender.onnx", "MODEL_CARD.md"}
    training = card["training"]
    assert training["rows"] == training["faces_used"] == 24
    assert [epoch["epoch"] for epoch in training["epochs"]] == [1]
    assert training["command"].startswith("agelens finetune ")
    validation = card["metrics"]["validation"]
    assert math.isfinite(validation["age_mae"])
    assert validation["gender_accuracy"] is not None
    assert "64 px" in (finetuned / "MODEL_CARD.md").read_text()
    assert "keeps 1 of face-api's 2 middle-flow blocks" in (finetuned / "MODEL_CARD.md").read_text()
    assert [p.name for p in finetuned.parent.iterdir() if p.name.startswith(".")] == []


def test_finetuned_folder_is_an_estimator(finetuned: Path, astronaut: np.ndarray) -> None:
    estimator = create_estimator(str(finetuned), threads=1)
    assert isinstance(estimator, FinetunedFaceApiEstimator)
    result = Analyzer("blazeface-fast", estimator).analyze(astronaut)
    face = scored_face(result)
    assert face is not None
    assert 0 <= face.age_years <= 100
    assert face.age_interval[0] <= face.age_years <= face.age_interval[1]
    # One epoch on 24 photos at 64 px is not a useful model: check the plumbing, i.e. that
    # the Analyzer reports what the exported network says of face-api's 64-px chip.
    (detections,) = create_detector("blazeface-fast", 1).detect_many([astronaut])
    chip = faceapi_chips(SPEC, astronaut, detections[:1], 64)
    probabilities, male = create_session(finetuned / "age_gender.onnx", 1).run(
        None, {"input": chip}
    )
    assert face.age_years == pytest.approx(float(probabilities[0] @ np.arange(AGE_CLASSES)))
    assert face.gender == ("M" if male[0] >= 0.5 else "F")
    assert face.gender_probability == pytest.approx(max(male[0], 1 - male[0]), abs=1e-6)
    assert result.models["estimator"].startswith("tiny-faceapi (agelens fine-tuned faceapi at 64")
    assert estimator.align(astronaut, ()) == {}
    assert estimator.estimate({}) == []


def test_finetuned_folders_are_listed_by_name(
    finetuned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agelens.models.heads.user_dir", lambda: tmp_path)
    shutil.copytree(finetuned, tmp_path / "tiny-faceapi")
    assert trained_folders()["tiny-faceapi"] == tmp_path / "tiny-faceapi"
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.stdout)}
    assert "face-api" in listed["tiny-faceapi"]["task"]


@pytest.mark.parametrize("file", ["age_gender.onnx", "MODEL_CARD.md"])
def test_a_tampered_file_is_refused(finetuned: Path, tmp_path: Path, file: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finetuned, copy)
    target = copy / file
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelNotFetchedError, match="sha256"):
        FinetunedFaceApiEstimator(copy, threads=1)
    target.unlink()
    with pytest.raises(ModelNotFetchedError, match="missing"):
        FinetunedFaceApiEstimator(copy, threads=1)


def test_a_cydral_folder_is_not_a_faceapi_one(finetuned: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finetuned, copy)
    card = json.loads((copy / "card.json").read_text())
    (copy / "card.json").write_text(json.dumps({**card, "backbone": "cydral"}))
    with pytest.raises(UnknownModelError, match="face-api"):
        FinetunedFaceApiEstimator(copy, threads=1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--size", "70"], "--size must be one of"),
        (["--int8"], "only available for --backbone cydral"),
        (["--middle-blocks", "3"], "--middle-blocks must be 0 to 2"),
        (["--augment", "heavy"], "--augment must be one of basic, strong"),
        (["--teacher-weight", "1.5"], "--teacher-weight must be between 0 and 1"),
        (["--teacher", "no-such-model"], "unknown estimator 'no-such-model'"),
        (["--wise", "1.5"], "--wise must be 'auto' or a number in (0, 1]"),
        (["--backbone", "cydral", "--wise", "auto"], "--wise is only available for"),
    ],
)
def test_usage_errors(
    astronaut_folder: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(
        app,
        [
            "finetune", str(astronaut_folder), "--backbone", "faceapi",
            "--out", str(tmp_path / "m"), *arguments,
        ],
    )  # fmt: skip
    assert result.exit_code == EXIT_USAGE
    assert message in result.output


def test_graph_without_one_average_pool_is_refused(tmp_path: Path) -> None:
    path = model_file(get_spec("cydral"), "age.onnx")
    assert onnx.load(str(path))  # a real network, just not face-api's
    with pytest.raises(ValueError, match="AgeGenderNet"):
        global_pool_graph(path)


def test_writing_refuses_incomplete_weights(tmp_path: Path) -> None:
    from agelens.train.finetune_faceapi import write_faceapi_onnx

    network = faceapi_network(model_file(SPEC, "age_gender.onnx"))
    state = {k: v.detach().numpy() for k, v in network.state_dict().items()}
    del state["age.weight"]
    with pytest.raises(ValueError, match=r"age\.weight"):
        write_faceapi_onnx(model_file(SPEC, "age_gender.onnx"), state, tmp_path / "m.onnx", 64)


def test_written_graph_has_no_separate_pads(tmp_path: Path) -> None:
    network = faceapi_network(model_file(SPEC, "age_gender.onnx"))
    export_faceapi_onnx(network, tmp_path / "m.onnx", 80)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "Pad" not in ops
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == [
        "age_probabilities",
        "gender_probability",
    ]


def test_teacher_is_refused_for_cydral(astronaut_folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["finetune", str(astronaut_folder), "--teacher", "faceapi", "--out", str(tmp_path / "m")],
    )
    assert result.exit_code == EXIT_USAGE
    assert "--teacher is only available for --backbone faceapi" in result.output


def test_distillation_targets_mix_labels_and_teacher() -> None:
    from agelens.train.finetune import FinetuneConfig, gaussian_targets
    from agelens.train.finetune_faceapi import GENDER_SMOOTHING, distillation_targets
    from agelens.train.teacher import TeacherTargets

    ages = torch.tensor([20.0, 50.0, 8.0])
    male = torch.tensor([1.0, 0.0, float("nan")])
    teacher = TeacherTargets(
        found=np.array([True, False, True]),
        age=np.array([30.0, np.nan, 10.0], np.float32),
        sigma=np.array([4.0, np.nan, 2.0], np.float32),
        male=np.array([0.8, np.nan, 0.3], np.float32),
    )
    labels_only = FinetuneConfig(teacher_weight=0.0)
    target, target_ages, target_male = distillation_targets(ages, male, teacher, labels_only)
    assert torch.allclose(target, gaussian_targets(ages, labels_only.label_sigma))
    assert torch.equal(target_ages, ages)
    assert target_male[2] == pytest.approx(0.3)  # no label: the teacher's alone
    half = FinetuneConfig(teacher_weight=0.5)
    target, target_ages, target_male = distillation_targets(ages, male, teacher, half)
    expected = 0.5 * gaussian_targets(ages[:1], 2.0) + 0.5 * gaussian_targets(
        torch.tensor([30.0]), 4.0
    )
    assert torch.allclose(target[0], expected[0])
    assert target_ages.tolist() == pytest.approx([25.0, 50.0, 9.0])
    assert target_male[0] == pytest.approx(0.5 * (1 - GENDER_SMOOTHING) + 0.4)
    assert target_male[1] == pytest.approx(GENDER_SMOOTHING)  # no teacher: the label's alone
    assert torch.allclose(target[1], gaussian_targets(ages[1:2], 2.0)[0])
    assert torch.allclose(target.sum(1), torch.ones(3))


def test_distilled_finetune_records_its_teacher(astronaut_folder: Path, tmp_path: Path) -> None:
    """One epoch distilled from face-api itself with the strong augmentation: every step."""
    result = runner.invoke(
        app,
        [
            "finetune", str(astronaut_folder), "--backbone", "faceapi", "--size", "64",
            "--middle-blocks", "0", "--epochs", "1", "--name", "tiny-distilled",
            "--teacher", "faceapi", "--teacher-weight", "0.7", "--augment", "strong",
            "--out", str(tmp_path / "model"), "--cache", str(tmp_path / "cache"), "--resume",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    teacher = card["training"]["teacher"]
    assert teacher["name"] == "faceapi"
    assert teacher["weight"] == 0.7
    assert teacher["faces_answered"] == card["training"]["faces_used"] == 24
    assert card["training"]["config"]["augment"] == "strong"
    assert "--resume" not in card["training"]["command"]
    assert "distilled from `faceapi`" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert list((tmp_path / "cache").glob("teacher-*/chunk-*.npz"))
    assert not list((tmp_path / "cache").glob("checkpoint-*"))  # removed once installed


def test_mirror_averages_a_face_and_its_mirror_image(
    finetuned: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    folder = tmp_path / "mirrored"
    shutil.copytree(finetuned, folder)
    card = json.loads((folder / "card.json").read_text())
    card["mirror"] = True
    (folder / "card.json").write_text(json.dumps(card))
    plain = FinetunedFaceApiEstimator(finetuned, threads=1)
    mirrored = FinetunedFaceApiEstimator(folder, threads=1)
    (faces,) = create_detector("blazeface-full", 1).detect_many([astronaut])
    chips = plain.align(astronaut, faces[:1])
    flipped = {"faceapi": np.ascontiguousarray(chips["faceapi"][:, :, :, ::-1])}
    (face,) = plain.estimate(chips)
    (mirror,) = plain.estimate(flipped)
    (both,) = mirrored.estimate(chips)
    assert both.age_years == pytest.approx((face.age_years + mirror.age_years) / 2, abs=1e-3)
    assert both.gender_probability_male == pytest.approx(
        (face.gender_probability_male + mirror.gender_probability_male) / 2, abs=1e-5
    )
    assert "mirror image" in mirrored.version()
    assert "mirror image" not in plain.version()


def test_wise_exports_the_weights_moved_back_towards_face_api(
    finetuned: Path, tmp_path: Path, astronaut_folder: Path
) -> None:
    """The same seeded run as `finetuned`, exported with `--wise 0.5`: every convolution of the
    graph is the mean of face-api's and the trained network's."""
    result = runner.invoke(
        app,
        [
            "finetune", str(astronaut_folder), "--backbone", "faceapi", "--size", "64",
            "--middle-blocks", "1", "--epochs", "1", "--name", "tiny-wise", "--wise", "0.5",
            "--out", str(tmp_path / "model"), "--cache", str(finetuned.parent / "cache"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    wise = card["training"]["wise"]
    assert wise["alpha"] == 0.5
    assert wise["auto"] is False
    assert list(wise["validation_mae"]) == ["0.5"]
    assert (
        "pretrained + 0.5 x (trained - pretrained)"
        in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    )

    def convolutions(path: Path) -> dict[str, np.ndarray]:
        model = onnx.load(str(path))
        names = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
        weights = [t for t in model.graph.initializer if t.name in names]
        return {t.name: onnx.numpy_helper.to_array(t) for t in weights}

    graph = global_pool_graph(model_file(get_spec("faceapi"), "age_gender.onnx"), 1).graph
    base = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    trained = convolutions(finetuned / "age_gender.onnx")
    moved = convolutions(tmp_path / "model" / "age_gender.onnx")
    assert set(moved) == set(trained)
    assert len(moved) > 20
    changed = 0
    for name, weight in moved.items():
        np.testing.assert_allclose(weight, (base[name] + trained[name]) / 2, atol=2e-6)
        changed += not np.allclose(trained[name], base[name], atol=1e-6)
    assert changed > 20  # the run did move the weights


def test_wise_auto_keeps_the_smallest_factor_within_the_tolerance() -> None:
    from agelens.train.finetune import check_wise, choose_wise, interpolate_weights

    assert check_wise("auto") == (1.0, True)
    assert check_wise("0.9") == (0.9, False)
    for bad in ("0", "1.5", "-0.1", "half"):
        with pytest.raises(ValueError, match="--wise"):
            check_wise(bad)
    layer = torch.nn.Linear(2, 1)
    start = {k: torch.zeros_like(v) for k, v in layer.state_dict().items()}
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(1.0)
    # A validation MAE by factor (the bias gives the factor the layer is at).
    maes = {1.0: 0.0, 0.95: 0.004, 0.9: 0.009, 0.85: 0.02, 0.8: 0.001}

    def mae() -> float:
        return maes[round(float(layer.bias.detach()), 4)]

    alpha, tried = choose_wise(layer, start, mae, alphas=(1.0, 0.95, 0.9, 0.85, 0.8))
    assert alpha == 0.9  # 0.85 is over the tolerance; 0.8 is never tried
    assert tried == {"1": 0.0, "0.95": 0.004, "0.9": 0.009, "0.85": 0.02}
    assert float(layer.bias.detach()) == pytest.approx(0.9)
    assert layer.weight.detach().numpy() == pytest.approx(np.full((1, 2), 1.8))
    interpolate_weights(layer, start, {k: v * 0 + 4 for k, v in layer.state_dict().items()}, 0.25)
    assert float(layer.bias.detach()) == pytest.approx(1.0)
