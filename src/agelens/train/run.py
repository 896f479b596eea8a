"""`agelens train` end to end: labelled folder -> cached embeddings -> heads -> model folder.

The model folder (see agelens.models.heads) holds `head.onnx`, `card.json` and
`MODEL_CARD.md`; it is written to a temporary sibling and renamed into place, so a run that
fails or is interrupted never leaves a half-written model that would later load.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agelens.evaluate import LabelledImage, compute_metrics, read_labels
from agelens.models.convert.int8 import CALIBRATION_FACES
from agelens.models.embeddings import int8_graph_file, int8_ranges_file, parse_backbone
from agelens.models.fetch import sha256_file
from agelens.models.heads import CARD_FILE, HEAD_FILE, HeadsEstimator
from agelens.train.features import Features, build_features
from agelens.train.heads import AGE_YEARS, TrainConfig, TrainedHeads, run_heads, train_heads

logger = logging.getLogger(__name__)

UTKFACE_NOTICE = (
    "Trained on UTKFace (Zhang, Song, Qi, CVPR 2017), which is available for non-commercial "
    "research only; image copyright stays with the original owners. These weights are "
    "derived from it: use them for non-commercial research only."
)


@dataclass(frozen=True, slots=True)
class TrainRequest:
    """Everything `agelens train` was asked to do."""

    dataset_dir: Path
    labels_csv: Path
    out_dir: Path
    name: str
    backbones: tuple[str, ...]
    split: str | None = "dev"
    limit: int | None = None
    pad: float = 0.0
    detector: str = "blazeface-full"
    workers: int = 1
    cache_root: Path | None = None
    float16_weights: bool = True
    int8: bool = False
    data_notice: str | None = None
    command: str = ""


@dataclass(frozen=True, slots=True)
class TrainOutcome:
    """Where the model went and what it scored out of fold."""

    folder: Path
    card: dict[str, Any]


def _records(
    rows: Sequence[LabelledImage], ages: np.ndarray, male: np.ndarray, widths: np.ndarray
) -> list[dict[str, Any]]:
    return [
        {
            "age": row.age,
            "gender": row.gender,
            "race": row.race,
            "age_low": row.age_low,
            "age_high": row.age_high,
            "pred_age": float(age),
            "pred_gender": "M" if p >= 0.5 else "F",
            "gender_probability": float(max(p, 1 - p)),
            "interval": (float(max(0.0, age - w)), float(age + w)),
        }
        for row, age, p, w in zip(rows, ages, male, widths, strict=True)
    ]


def out_of_fold_metrics(features: Features, trained: TrainedHeads) -> dict[str, Any]:
    """`agelens eval`'s metrics of the out-of-fold predictions, before and after calibration
    (every training row predicted by the head that did not train on it)."""
    calibration = trained.calibration
    raw = trained.oof_raw_age
    male = calibration.male(trained.oof_gender_logit)
    n = len(features.rows)
    before = compute_metrics(_records(features.rows, raw, male, calibration.half_width(raw)), n)
    ages = calibration.age(raw)
    after = compute_metrics(_records(features.rows, ages, male, calibration.half_width(ages)), n)
    return {"uncalibrated": before, "calibrated": after}


def _fine_tuning(features: Features) -> dict[str, Any]:
    """How the `-qat` backbones' weights were tuned (train/qat.py), for the card."""
    from agelens.train import qat

    return {
        "faces": min(qat.QAT_FACES, len(features.rows)),
        "epochs": qat.EPOCHS,
        "learning_rate": qat.LEARNING_RATE,
        "range_faces": qat.RANGE_FACES,
        "version": qat.QAT_VERSION,
    }


def _int8_change(folder: Path, features: Features, names: Sequence[str]) -> dict[str, Any]:
    """How much int8 changes the heads' outputs on the training features."""
    from agelens.models.runtime import import_onnxruntime

    ort = import_onnxruntime()

    x = features.matrix(names)
    outputs = {}
    for file in (HEAD_FILE, "head.int8.onnx"):
        session = ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
        probabilities, logit = session.run(None, {"features": x})
        outputs[file] = (probabilities.astype(np.float64) @ AGE_YEARS, logit)
    (age32, logit32), (age8, logit8) = outputs[HEAD_FILE], outputs["head.int8.onnx"]
    true = np.array([row.age for row in features.rows], dtype=np.float64)
    return {
        "rows": len(x),
        "mean_abs_age_change_years": float(np.abs(age8 - age32).mean()),
        "max_abs_age_change_years": float(np.abs(age8 - age32).max()),
        "gender_decisions_changed": float(((logit8 > 0) != (logit32 > 0)).mean()),
        "raw_age_mae_change_years": float(np.abs(age8 - true).mean() - np.abs(age32 - true).mean()),
        "size_bytes": {
            HEAD_FILE: (folder / HEAD_FILE).stat().st_size,
            "head.int8.onnx": (folder / "head.int8.onnx").stat().st_size,
        },
    }


def train_model(
    request: TrainRequest,
    config: TrainConfig,
    *,
    on_rows: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Run the whole training; returns the installed model folder and its card."""
    from agelens.train.export import quantize_int8, write_onnx

    started = time.perf_counter()
    rows = read_labels(request.labels_csv, split=request.split, limit=request.limit, seed=0)
    labelled = [r for r in rows if r.age is not None and r.gender in ("M", "F")]
    if len(labelled) < 50 * config.folds:
        raise ValueError(
            f"{len(labelled)} labelled rows (age and M/F gender) is too few to train "
            f"{config.folds} folds; give at least {50 * config.folds}"
        )
    cache_root = request.cache_root or request.out_dir.parent / ".agelens-train-cache"
    features = build_features(
        request.dataset_dir,
        labelled,
        backbones=request.backbones,
        cache_root=cache_root,
        pad=request.pad,
        detector=request.detector,
        workers=request.workers,
        progress=on_rows,
    )
    embed_seconds = time.perf_counter() - started
    ages = np.array([r.age for r in features.rows], dtype=np.float64)
    male = np.array([r.gender == "M" for r in features.rows], dtype=np.float64)
    names = list(request.backbones)
    trained = train_heads(
        features.matrix(names),
        features.matrix(names, mirrored=True),
        ages,
        male,
        config,
        on_epoch=on_epoch,
    )
    metrics = out_of_fold_metrics(features, trained)

    staging = request.out_dir.with_name(f".{request.out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # The int8 quantizer only sees weights stored as initializers, not float16 ones behind a Cast.
    write_onnx(
        trained.heads,
        staging / HEAD_FILE,
        float16_weights=request.float16_weights and not request.int8,
    )
    int8: dict[str, Any] | None = None
    # The float graph must compute what was trained; int8 then departs from it by a measured
    # amount, recorded in the card rather than bounded here.
    _check_export(trained, features, names, staging / HEAD_FILE)
    if request.int8:
        quantize_int8(staging / HEAD_FILE, staging / "head.int8.onnx")
        int8 = _int8_change(staging, features, names)
        (staging / "head.int8.onnx").replace(staging / HEAD_FILE)
    dims = {name: int(features.embeddings[name].shape[1]) for name in names}
    files = {HEAD_FILE: sha256_file(staging / HEAD_FILE)}
    # int8 ranges for `-int8` backbones, int8 graphs for `-qat` ones
    int8_files = {int8_ranges_file(name): path for name, path in features.int8_ranges.items()}
    int8_files |= {int8_graph_file(name): path for name, path in features.int8_graphs.items()}
    for file_name, source in int8_files.items():
        shutil.copyfile(source, staging / file_name)
        files[file_name] = sha256_file(staging / file_name)
    card = {
        "kind": "agelens-heads",
        "format_version": 1,
        "name": request.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": "age+gender",
        "backbones": names,
        "feature_dims": dims,
        "files": files,
        "weights": "int8"
        if request.int8
        else ("float16" if request.float16_weights else "float32"),
        "calibration": asdict(trained.calibration),
        "training": {
            "dataset": request.dataset_dir.name,
            "labels": request.labels_csv.name,
            "split": request.split,
            "rows": len(labelled),
            "faces_used": len(features.rows),
            "pad": request.pad,
            "detector": request.detector,
            **({"int8_calibration_faces": CALIBRATION_FACES} if int8_files else {}),
            **({"int8_fine_tuning": _fine_tuning(features)} if features.int8_graphs else {}),
            "command": request.command,
            "config": asdict(config),
            "epochs_run": list(trained.epochs_run),
            "embed_seconds": round(embed_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
        },
        "metrics": {"out_of_fold": metrics, **({"int8": int8} if int8 else {})},
        "data_notice": request.data_notice or "",
        "license": (
            "Weights derived from the training data named above: its terms apply. "
            "Backbones keep their own licences (see `agelens models list`)."
        ),
    }
    (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    (staging / "MODEL_CARD.md").write_text(model_card_markdown(card), encoding="utf-8")
    # Loading it the way users will proves the folder is complete before it is installed.
    HeadsEstimator(staging, threads=1)
    if request.out_dir.exists():
        shutil.rmtree(request.out_dir)
    staging.replace(request.out_dir)
    logger.info("model %s written to %s", request.name, request.out_dir)
    return TrainOutcome(folder=request.out_dir, card=card)


def _check_export(
    trained: TrainedHeads, features: Features, names: Sequence[str], path: Path
) -> None:
    """The exported graph must compute what the trained heads compute."""
    from agelens.models.runtime import import_onnxruntime

    ort = import_onnxruntime()

    x = features.matrix(names)[:256]
    expected, expected_logit = run_heads(trained.heads, x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities, logit = session.run(None, {"features": x})
    age_gap = np.abs(probabilities @ AGE_YEARS - expected @ AGE_YEARS).max()
    tolerance = 0.05
    if age_gap > tolerance or np.abs(logit - expected_logit).max() > 20 * tolerance:
        raise RuntimeError(f"exported heads disagree with the trained ones ({age_gap:.3f} years)")


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def model_card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown for people."""
    training = card["training"]
    oof = card["metrics"]["out_of_fold"]
    lines = [
        f"# {card['name']}",
        "",
        f"Age and gender heads trained by agelens over the embeddings of "
        f"{', '.join(card['backbones'])} (weights stored as {card['weights']}).",
        "",
    ]
    if card["data_notice"]:
        lines += [f"**Data terms:** {card['data_notice']}", ""]
    lines += [
        "## Training",
        f"- data: `{training['dataset']}/{training['labels']}`, split `{training['split']}`: "
        f"{training['rows']} labelled rows, {training['faces_used']} with a face found "
        f"(detector {training['detector']}, pad {training['pad']})",
        f"- command: `{training['command']}`",
    ]
    int8 = [name for name in card["backbones"] if parse_backbone(name).int8]
    if int8:
        lines.append(
            f"- int8: {', '.join(int8)} run int8 where it is exact (x86-64 with VNNI; float "
            f"elsewhere), from activation ranges taken on "
            f"{training.get('int8_calibration_faces', '?')} training faces, a seeded sample "
            f"(shipped as the `int8-ranges-*.json` files listed in card.json, or built into a "
            f"`-qat` backbone's int8 graph)"
        )
    tuned = [name for name in card["backbones"] if parse_backbone(name).tuned]
    if tuned:
        qat = training.get("int8_fine_tuning", {})
        lines.append(
            f"- int8 fine-tuning: {', '.join(tuned)} first trained towards the fetched "
            f"network's own float outputs with int8 simulated, {qat.get('epochs', '?')} epoch "
            f"at learning rate {qat.get('learning_rate', '?')} on {qat.get('faces', '?')} "
            f"training faces and their mirrors, a seeded sample; shipped as the int8 graph "
            f"(`int8-*.onnx`, listed in card.json); the fetched float network runs where int8 "
            f"does not"
        )
    lines += [
        f"- folds: {training['config']['folds']}, epochs run per fold: {training['epochs_run']}, "
        f"seed {training['config']['seed']}, {training['total_seconds']} s in all",
        "",
        "## Out-of-fold metrics on the training data",
        "Every row predicted by the fold head that did not train on it. Rows of the same "
        "collection as the training data: expect lower figures on photos unlike them.",
        "",
        "| | age MAE | CS@5 | gender | interval coverage |",
        "|---|---|---|---|---|",
    ]
    for stage in ("uncalibrated", "calibrated"):
        m = oof[stage]
        lines.append(
            f"| {stage} | {_fmt(m['age_mae'])} | {_fmt(m['age_cs5'], True)} | "
            f"{_fmt(m['gender_accuracy'], True)} | {_fmt(m['age_interval_coverage'], True)} |"
        )
    lines += ["", "Mean signed age error by decade (uncalibrated -> calibrated):", ""]
    for decade, group in oof["calibrated"]["by_decade"].items():
        before = oof["uncalibrated"]["by_decade"].get(decade, {})
        lines.append(
            f"- {decade}: {_fmt(before.get('age_mean_signed_error'))} -> "
            f"{_fmt(group.get('age_mean_signed_error'))} years "
            f"(gender {_fmt(group.get('gender_accuracy'), True)}, n={group.get('n')})"
        )
    if "int8" in card["metrics"]:
        q = card["metrics"]["int8"]
        lines += [
            "",
            "## int8",
            f"Mean |age change| {q['mean_abs_age_change_years']:.3f} years, gender decisions "
            f"changed {100 * q['gender_decisions_changed']:.2f}%, raw MAE change "
            f"{q['raw_age_mae_change_years']:+.3f} years on {q['rows']} training rows.",
        ]
    lines += ["", "## Licence", card["license"], ""]
    return "\n".join(lines)
