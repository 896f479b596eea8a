"""`agelens finetune`: the converted Cydral network, its export, and a tiny end-to-end run."""

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

import torch

from agelens.cli import EXIT_USAGE, app
from agelens.errors import ModelNotFetchedError
from agelens.evaluate import scored_face
from agelens.models.backends import create_detector, create_estimator
from agelens.models.base import Chips
from agelens.models.cydral import CydralEstimator
from agelens.models.fetch import model_file
from agelens.models.finetuned import FinetunedCydralEstimator
from agelens.models.heads import card_kind, trained_folders
from agelens.models.registry import get_spec
from agelens.models.runtime import create_session
from agelens.pipeline import Analyzer
from agelens.train.finetune import (
    AGE_CLASSES,
    FinetuneConfig,
    FinetuneRequest,
    age_loss,
    age_network,
    augment,
    convert_age_network,
    export_onnx,
    interval_knots,
    run_fingerprint,
    validation_split,
)
from agelens.train.run import UTKFACE_NOTICE

runner = CliRunner()


@pytest.fixture(scope="module")
def astronaut_chips(astronaut: np.ndarray) -> Chips:
    """Cydral's normalised chips of the astronaut's face, and of its mirror image."""
    detector = create_detector("blazeface-full", 1)
    cydral = CydralEstimator(get_spec("cydral"), threads=1)
    chips = []
    for image in (astronaut, np.ascontiguousarray(astronaut[:, ::-1])):
        (faces,) = detector.detect_many([image])
        chips.append(cydral.align(image, faces[:1]))
    return {key: np.concatenate([c[key] for c in chips]) for key in chips[0]}


def test_converted_network_reproduces_age_onnx(astronaut_chips: Chips) -> None:
    path = model_file(get_spec("cydral"), "age.onnx")
    images = astronaut_chips["cydral_age"]
    expected = create_session(path, 1).run(None, {"images": images})[0]
    with torch.no_grad():
        converted = convert_age_network(path)(torch.from_numpy(images)).numpy()
    assert converted.shape == expected.shape == (2, 81)
    assert np.abs(converted - expected).max() < 1e-4


def test_widened_network_starts_where_the_original_was(astronaut_chips: Chips) -> None:
    path = model_file(get_spec("cydral"), "age.onnx")
    network = age_network(path).eval()
    with torch.no_grad():
        probabilities = torch.softmax(network(torch.from_numpy(astronaut_chips["cydral_age"])), 1)
    assert probabilities.shape == (2, AGE_CLASSES)
    assert float(probabilities[:, 81:].sum(1).max()) < 0.01
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    assert any(name.startswith("initializers.") for name in trainable)  # dlib's scale/offset


def test_exported_onnx_matches_the_torch_network(astronaut_chips: Chips, tmp_path: Path) -> None:
    network = age_network(model_file(get_spec("cydral"), "age.onnx")).eval()
    images = astronaut_chips["cydral_age"]
    export_onnx(network, tmp_path / "age.onnx")
    exported = create_session(tmp_path / "age.onnx", 1).run(None, {"images": images})[0]
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(images)), 1).numpy()
    assert exported.shape == (2, AGE_CLASSES)
    assert np.abs(exported - expected).max() < 1e-3


def test_augmentation_is_seeded_and_keeps_shape_and_range() -> None:
    chips = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 72, 72, 3), np.uint8))
    config = FinetuneConfig()
    first = augment(chips, config, torch.Generator().manual_seed(1))
    again = augment(chips, config, torch.Generator().manual_seed(1))
    assert first.shape == (8, 64, 64, 3)
    assert torch.equal(first, again)
    assert float(first.min()) >= 0
    assert float(first.max()) <= 255


@pytest.mark.parametrize(
    ("age", "better", "worse"), [(0.0, 0, 10), (42.0, 42, 30), (100.0, 100, 80)]
)
def test_loss_is_lowest_at_the_labelled_age(age: float, better: int, worse: int) -> None:
    config = FinetuneConfig()
    ages = torch.tensor([age])

    def loss_peaked_at(year: int) -> float:
        logits = torch.full((1, AGE_CLASSES), -10.0)
        logits[0, year] = 10.0
        return float(age_loss(logits, ages, config))

    assert loss_peaked_at(better) < loss_peaked_at(worse)


@pytest.mark.parametrize(
    ("count", "fraction", "held"), [(1, 0.1, 1), (200, 0.1, 20), (95, 0.1, 10)]
)
def test_validation_split_is_seeded_and_disjoint(count: int, fraction: float, held: int) -> None:
    train, validation = validation_split(count, fraction, seed=3)
    assert len(validation) == held
    assert not set(train) & set(validation)
    assert len(train) + len(validation) == count
    assert np.array_equal(validation, validation_split(count, fraction, seed=3)[1])


def test_interval_knots_cover_80_percent() -> None:
    rng = np.random.default_rng(0)
    ages = rng.uniform(1, 90, 1000)
    predictions = ages + rng.normal(0, 3, 1000)
    knots = interval_knots(predictions, ages)
    widths = np.interp(predictions, knots["knots_x"], knots["knots_y"])
    covered = np.mean(np.abs(predictions - ages) <= widths)
    assert 0.75 <= covered <= 0.85
    assert interval_knots(np.zeros(0), np.zeros(0)) == {"knots_x": [0.0], "knots_y": [5.0]}


@pytest.fixture(scope="module")
def finetuned(utkface_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on 200 seeded UTKFace dev rows, int8: every step, not a useful model."""
    root = tmp_path_factory.mktemp("finetune")
    result = runner.invoke(
        app,
        [
            "finetune", str(utkface_dir), "--backbone", "cydral", "--limit", "200",
            "--epochs", "1", "--name", "tiny", "--out", str(root / "model"),
            "--cache", str(root / "cache"), "--int8",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "tiny"
    return root / "model"


def test_finetune_writes_a_complete_model_folder(finetuned: Path) -> None:
    assert sorted(p.name for p in finetuned.iterdir()) == ["MODEL_CARD.md", "age.onnx", "card.json"]
    card = json.loads((finetuned / "card.json").read_text())
    assert card["kind"] == "agelens-finetuned" == card_kind(finetuned)
    assert card["backbone"] == "cydral"
    assert card["data_notice"] == UTKFACE_NOTICE
    assert set(card["files"]) == {"age.onnx", "MODEL_CARD.md"}
    training = card["training"]
    assert training["split"] == "dev"
    assert training["rows"] == 200
    assert training["validation_rows"] == round(0.1 * training["faces_used"])
    assert [epoch["epoch"] for epoch in training["epochs"]] == [1]
    # evaluated on the registered Cydral chips: 64 px at its spec's padding, a plain number
    assert training["chips"]["eval"] == [64, 0.2]
    assert training["command"].startswith("agelens finetune ")
    assert math.isfinite(card["metrics"]["validation"]["age_mae"])
    assert card["metrics"]["int8"]["calibration_chips"] > 0
    assert "non-commercial" in (finetuned / "MODEL_CARD.md").read_text()
    assert [p.name for p in finetuned.parent.iterdir() if p.name.startswith(".")] == []


def test_finetuned_folder_is_an_estimator(finetuned: Path, astronaut: np.ndarray) -> None:
    estimator = create_estimator(str(finetuned), threads=1)
    assert isinstance(estimator, FinetunedCydralEstimator)
    result = Analyzer("blazeface-full", estimator).analyze(astronaut)
    face = scored_face(result)
    assert face is not None
    assert math.isfinite(face.age_years)
    assert 0 <= face.age_years <= 100
    assert face.age_interval[0] <= face.age_years <= face.age_interval[1]
    assert face.gender == "F"
    assert result.models["estimator"].startswith("tiny (agelens fine-tuned age over cydral")


def test_finetuned_folders_are_listed_by_name(
    finetuned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agelens.models.heads.user_dir", lambda: tmp_path)
    shutil.copytree(finetuned, tmp_path / "tiny")
    assert trained_folders()["tiny"] == tmp_path / "tiny"
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output


@pytest.mark.parametrize("file", ["age.onnx", "MODEL_CARD.md"])
def test_a_tampered_file_is_refused(finetuned: Path, tmp_path: Path, file: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finetuned, copy)
    target = copy / file
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelNotFetchedError, match="sha256"):
        FinetunedCydralEstimator(copy, threads=1)
    target.unlink()
    with pytest.raises(ModelNotFetchedError, match="missing"):
        FinetunedCydralEstimator(copy, threads=1)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--backbone", "resnet"], "unknown backbone"),
        (["--labels", "missing.csv"], "labels file not found"),
        (["--split", "nothing"], "too few to fine-tune"),
    ],
)
def test_usage_errors(
    utkface_dir: Path, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(
        app, ["finetune", str(utkface_dir), "--out", str(tmp_path / "m"), *arguments]
    )
    assert result.exit_code == EXIT_USAGE
    assert message in result.output


def test_fit_stops_early_and_keeps_the_best_epoch() -> None:
    """The shared loop: validation MAE 3, 2, 2.5, 2.6 with patience 2 stops after epoch 4 and
    ends on epoch 2's weights and predictions."""
    from agelens.train.finetune import FinetuneConfig, Validation, fit

    network = torch.nn.Linear(2, 1)
    inputs, targets = torch.randn(40, 2), torch.randn(40, 1)
    maes = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    snapshots: list[torch.Tensor] = []

    def batch_loss(picked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.nn.functional.mse_loss(network(inputs[picked]), targets[picked])

    def validate() -> Validation:
        snapshots.append(network.weight.detach().clone())
        return Validation(next(maes), {"extra": len(snapshots)}, f"epoch {len(snapshots)}")

    config = FinetuneConfig(epochs=6, batch_size=16, patience=2, threads=1)
    steps: list[dict[str, object]] = []
    history, predictions = fit(network, config, 40, [], batch_loss, validate, on_step=steps.append)

    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["val_mae"] for h in history] == [3.0, 2.0, 2.5, 2.6]
    assert [h["extra"] for h in history] == [1, 2, 3, 4]
    assert predictions == "epoch 2"
    assert torch.equal(network.weight, snapshots[1])
    assert not torch.equal(snapshots[1], snapshots[3])  # it did train on
    assert sum(1 for s in steps if "val_mae" in s) == 4
    assert max(s["step"] for s in steps) == 3  # ceil(40 / 16) batches an epoch


def _tiny_run(
    checkpoint: Path | None,
    *,
    resume: bool = False,
    crash_in_epoch: int | None = None,
    fingerprint: str = "run-a",
) -> tuple[torch.nn.Linear, list[dict[str, object]]]:
    """A seeded linear fit over 4 epochs, with randomness in every batch (as augmentation
    has); `crash_in_epoch` raises in the middle of that epoch (0-based), like a killed run."""
    from agelens.train.finetune import FinetuneConfig, Validation, fit

    torch.manual_seed(1)
    network = torch.nn.Linear(3, 1)
    inputs, targets = torch.randn(50, 3), torch.randn(50, 1)
    epoch = {"now": 0, "steps": 0}

    def batch_loss(picked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        epoch["steps"] += 1
        if crash_in_epoch is not None and epoch["steps"] == crash_in_epoch * 4 + 2:
            raise KeyboardInterrupt
        noise = torch.randn(len(picked), 3, generator=generator) * 0.1
        return torch.nn.functional.mse_loss(network(inputs[picked] + noise), targets[picked])

    def validate() -> Validation:
        with torch.no_grad():
            mae = float((network(inputs) - targets).abs().mean())
        return Validation(mae, {}, mae)

    config = FinetuneConfig(epochs=4, batch_size=16, patience=9, threads=1, lr_body=0.05)
    history, _ = fit(
        network, config, 50, list(network.parameters()), batch_loss, validate,
        checkpoint=checkpoint, fingerprint=fingerprint, resume=resume,
    )  # fmt: skip
    return network, history


def test_an_interrupted_fit_resumes_where_it_was(tmp_path: Path) -> None:
    """Killed in its third epoch and resumed, a run ends with the weights and history of the
    run that was never stopped: the checkpoint holds weights, optimiser, schedule and
    random generators."""
    straight, straight_history = _tiny_run(None)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(checkpoint, crash_in_epoch=2)
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["epoch"] == 2
    resumed, resumed_history = _tiny_run(checkpoint, resume=True)
    assert [h["epoch"] for h in resumed_history] == [1, 2, 3, 4]
    assert [h["val_mae"] for h in resumed_history] == [h["val_mae"] for h in straight_history]
    assert torch.equal(resumed.weight, straight.weight)
    # Resuming a finished run trains no more and gives its best weights again.
    again, again_history = _tiny_run(checkpoint, resume=True)
    assert again_history == resumed_history
    assert torch.equal(again.weight, resumed.weight)


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(checkpoint, crash_in_epoch=1)
    with pytest.raises(ValueError, match="other data, options or models"):
        _tiny_run(checkpoint, resume=True, fingerprint="run-b")
    # Without --resume the run starts again and overwrites it.
    _, history = _tiny_run(checkpoint, fingerprint="run-b")
    assert len(history) == 4


def test_threads_and_patience_may_change_on_resume_but_not_the_schedule(tmp_path: Path) -> None:
    from agelens.evaluate import LabelledImage

    request = FinetuneRequest(tmp_path, tmp_path / "labels.csv", tmp_path / "out", "m")
    rows = [LabelledImage("a.jpg", 30.0, "M"), LabelledImage("b.jpg", 40.0, "F")]
    base = run_fingerprint(request, FinetuneConfig(epochs=16), rows, size=112)
    same = FinetuneConfig(epochs=16, patience=16, threads=2)
    assert run_fingerprint(request, same, rows, size=112) == base
    assert run_fingerprint(request, FinetuneConfig(epochs=8), rows, size=112) != base
    assert run_fingerprint(request, FinetuneConfig(epochs=16), rows[:1], size=112) != base
    assert run_fingerprint(request, FinetuneConfig(epochs=16), rows, size=96) != base


def test_resume_without_a_checkpoint_starts_from_the_first_epoch(tmp_path: Path) -> None:
    _, history = _tiny_run(tmp_path / "none.pt", resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_degrade_is_seeded_and_keeps_shape_and_range(astronaut: np.ndarray) -> None:
    from agelens.train.finetune import degrade

    chips = np.stack([np.ascontiguousarray(astronaut[30:120, 170:260])] * 16)
    first = degrade(chips, np.random.default_rng(3))
    again = degrade(chips, np.random.default_rng(3))
    assert first.shape == chips.shape
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    changed = [not np.array_equal(a, b) for a, b in zip(first, chips, strict=True)]
    assert 4 <= sum(changed) < 16  # each step is drawn per chip; most chips change
    np.testing.assert_array_equal(chips[0], np.ascontiguousarray(astronaut[30:120, 170:260]))


def test_soft_targets_generalise_the_label_loss() -> None:
    from agelens.train.finetune import gaussian_targets, soft_age_loss

    ages = torch.tensor([3.0, 40.0, 97.0])
    targets = gaussian_targets(ages, torch.tensor([1.0, 2.0, 6.0]))
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert targets.argmax(1).tolist() == [3, 40, 97]
    logits = torch.randn(3, AGE_CLASSES)
    config = FinetuneConfig()
    hard = gaussian_targets(ages, config.label_sigma)
    assert torch.allclose(
        soft_age_loss(logits, hard, ages, config.l1_weight), age_loss(logits, ages, config)
    )
