"""Accuracy on a labelled folder: the engine behind `agelens eval`.

labels.csv has `file,age,gender` (gender M/F), optionally `age_low,age_high` (an age bin; then
bin accuracy is scored), `race` and `split`. When an image holds several faces, the face scored
is the largest one nearest the centre: the one with the highest area x (1 - d), where d is the
distance from its centre to the image centre divided by half the image diagonal.

Bin accuracy: a predicted age, rounded to whole years, is right when it lies inside
[age_low, age_high] (both ends included). Gender calibration: the images are put in
`CALIBRATION_BINS` equal bins of the reported gender probability over [0.5, 1] (it is the
probability of the reported gender, so never below 0.5); each bin gives its mean confidence and
its accuracy, and the expected calibration error (ECE) is the mean |accuracy - confidence|
weighted by the bin sizes.
"""

from __future__ import annotations

import csv
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from agelens.intake import SourceLoader
from agelens.models.base import Detector
from agelens.pipeline import Analyzer
from agelens.types import Detection, Face, ImageResult

logger = logging.getLogger(__name__)

CALIBRATION_BINS = 10
# Face.age_interval is meant to hold the true age this share of the time (see agelens.types).
INTERVAL_NOMINAL_COVERAGE = 0.8


@dataclass(frozen=True, slots=True)
class LabelledImage:
    """One row of labels.csv."""

    file: str
    age: float | None
    gender: str | None
    race: str | None = None
    age_low: float | None = None
    age_high: float | None = None


def _number(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def read_labels(
    labels_csv: Path, *, split: str | None = None, limit: int | None = None, seed: int = 0
) -> list[LabelledImage]:
    """Rows of labels.csv, filtered to `split`; with `limit`, a seeded random sample of that
    many rows (label files are often sorted by age, so the first rows would be one age)."""
    with labels_csv.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "age", "gender"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{labels_csv} lacks the columns {sorted(missing)}")
        rows = [
            LabelledImage(
                file=row["file"],
                age=_number(row.get("age")),
                gender=(row.get("gender") or "").strip().upper() or None,
                race=(row.get("race") or "").strip() or None,
                age_low=_number(row.get("age_low")),
                age_high=_number(row.get("age_high")),
            )
            for row in reader
            if split is None or row.get("split") == split
        ]
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows


def pad_image(image: NDArray[np.uint8], fraction: float) -> NDArray[np.uint8]:
    """The image with an edge-replicated border of `fraction` x its size on every side
    (tightly cropped faces need context before a detector finds them)."""
    if fraction <= 0:
        return image
    height, width = image.shape[:2]
    dy, dx = round(height * fraction), round(width * fraction)
    return np.asarray(cv2.copyMakeBorder(image, dy, dy, dx, dx, cv2.BORDER_REPLICATE))


def scored_index(boxes_xyxy: Sequence[Sequence[float]], image_wh: tuple[int, int]) -> int | None:
    """Index of the largest box nearest the centre (the rule in this module's docstring)."""
    if not boxes_xyxy:
        return None
    width, height = image_wh
    half_diagonal = max(float(np.hypot(width, height)) / 2, 1e-6)

    def merit(index: int) -> float:
        x1, y1, x2, y2 = boxes_xyxy[index]
        distance = float(np.hypot((x1 + x2) / 2 - width / 2, (y1 + y2) / 2 - height / 2))
        return (x2 - x1) * (y2 - y1) * (1 - min(distance / half_diagonal, 1.0))

    return max(range(len(boxes_xyxy)), key=merit)


def scored_face(result: ImageResult) -> Face | None:
    """The face that is scored for an image: the largest one nearest the centre."""
    index = scored_index([face.box_xyxy for face in result.faces], result.image_wh)
    return None if index is None else result.faces[index]


def iter_dataset(
    dataset_dir: Path, rows: Sequence[LabelledImage], pad: float, batch_size: int = 16
) -> Iterator[list[tuple[LabelledImage, NDArray[np.uint8] | None]]]:
    """Batches of (row, padded RGB image or None when it could not be decoded)."""
    batch: list[tuple[LabelledImage, NDArray[np.uint8] | None]] = []
    with SourceLoader() as loader:
        for row in rows:
            loaded = loader.load(str(dataset_dir / row.file))
            image: NDArray[np.uint8] | None = None
            if loaded.image is None:
                logger.warning("skipping %s: %s", row.file, loaded.error_message)
            else:
                image = pad_image(loaded.image, pad)
            batch.append((row, image))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def iter_scored_faces(
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    pad: float,
    detector: Detector,
    batch_size: int = 16,
) -> Iterator[tuple[NDArray[np.uint8], Detection] | None]:
    """For each row, in order: (its padded image, the face scored by the rule above), or None
    when the image could not be decoded or holds no face. Detection runs one batch at a time
    (what `agelens train` and `agelens finetune` cut their training faces from)."""
    for batch in iter_dataset(dataset_dir, rows, pad, batch_size):
        images = [image for _, image in batch if image is not None]
        detections = iter(detector.detect_many(images)) if images else iter(())
        for _, image in batch:
            if image is None:
                yield None
                continue
            faces = next(detections)
            height, width = image.shape[:2]
            chosen = scored_index([d.box_xyxy for d in faces], (width, height))
            yield None if chosen is None else (image, faces[chosen])


def decade(age: float) -> str:
    """The decade an age is counted in: "0-9" ... "60-69", "70+"."""
    decade = min(int(age // 10) * 10, 70)
    return "70+" if decade == 70 else f"{decade}-{decade + 9}"


def _slope(true: NDArray[np.float64], predicted: NDArray[np.float64]) -> float | None:
    if len(true) < 2 or np.ptp(true) == 0:
        return None
    return float(np.polyfit(true, predicted, 1)[0])


def _squared_errors(errors: NDArray[np.float64]) -> dict[str, float | None]:
    """`age_mse` (years squared) and `age_rmse` (years), as systems that trained on MSE report
    them; None without ages."""
    if not len(errors):
        return {"age_mse": None, "age_rmse": None}
    mse = float(np.mean(errors**2))
    return {"age_mse": mse, "age_rmse": float(np.sqrt(mse))}


def compute_metrics(records: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """Metrics from per-image records (`age`, `gender`, `race`, `age_low`, `age_high`,
    `pred_age`, `pred_gender`, `interval`, optionally `gender_probability`), over the images
    where a face was found."""
    found = [r for r in records if r["pred_age"] is not None]
    aged = [r for r in found if r["age"] is not None]
    gendered = [r for r in found if r["gender"] in ("M", "F")]
    true = np.array([r["age"] for r in aged], dtype=np.float64)
    predicted = np.array([r["pred_age"] for r in aged], dtype=np.float64)
    errors = predicted - true
    inside = [r["interval"][0] <= r["age"] <= r["interval"][1] for r in aged]
    metrics: dict[str, Any] = {
        "n": n,
        "faces_found": len(found),
        "age_mae": float(np.abs(errors).mean()) if len(errors) else None,
        **_squared_errors(errors),
        "age_cs5": float((np.abs(errors) <= 5).mean()) if len(errors) else None,
        "age_mean_signed_error": float(errors.mean()) if len(errors) else None,
        "age_slope": _slope(true, predicted),
        "age_interval_coverage": float(np.mean(inside)) if inside else None,
        "age_interval_nominal_coverage": INTERVAL_NOMINAL_COVERAGE,
        "gender_accuracy": (
            float(np.mean([r["gender"] == r["pred_gender"] for r in gendered]))
            if gendered
            else None
        ),
    }
    binned = [r for r in found if r["age_low"] is not None and r["age_high"] is not None]
    if binned:
        metrics["age_bin_accuracy"] = float(np.mean([_in_bin(r) for r in binned]))
        metrics["age_bin_by_decade"] = _bin_groups(binned)
    metrics["gender_calibration"] = gender_calibration(
        [
            (float(r["gender_probability"]), r["gender"] == r["pred_gender"])
            for r in gendered
            if r.get("gender_probability") is not None
        ]
    )
    metrics["by_decade"] = _grouped(aged, lambda r: decade(r["age"]))
    metrics["by_race"] = _grouped([r for r in found if r["race"]], lambda r: str(r["race"]))
    return metrics


def _in_bin(record: dict[str, Any]) -> bool:
    return bool(record["age_low"] <= round(record["pred_age"]) <= record["age_high"])


def _bin_groups(binned: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Bin accuracy per decade of the bin centre ((age_low + age_high) / 2)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for record in binned:
        groups[decade((record["age_low"] + record["age_high"]) / 2)].append(_in_bin(record))
    return {
        name: {"n": len(hits), "age_bin_accuracy": float(np.mean(hits))}
        for name, hits in sorted(groups.items(), key=lambda item: group_order(item[0]))
    }


def gender_calibration(
    pairs: Sequence[tuple[float, bool]], bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Reliability bins and ECE from (probability of the reported gender, was it right) pairs.

    Always `bins` bins over [0.5, 1] (the last one includes 1.0); an empty bin has n = 0 and
    None for its confidence and accuracy. `ece` is None when there are no pairs.
    """
    edges = np.linspace(0.5, 1.0, bins + 1)
    confidence = np.array([p for p, _ in pairs], dtype=np.float64)
    correct = np.array([c for _, c in pairs], dtype=np.float64)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table: list[dict[str, Any]] = []
    ece = 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        mean_confidence: float | None = None
        accuracy: float | None = None
        if count:
            mean_confidence = float(confidence[members].mean())
            accuracy = float(correct[members].mean())
            ece += count * abs(accuracy - mean_confidence)
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": count,
                "confidence": mean_confidence,
                "accuracy": accuracy,
            }
        )
    return {
        "n": len(pairs),
        "ece": ece / len(pairs) if pairs else None,
        "mean_confidence": float(confidence.mean()) if pairs else None,
        "bins": table,
    }


def group_order(name: str) -> tuple[int, str]:
    """Sort key of group names: decades by their first age, then other names alphabetically."""
    digits = "".join(ch for ch in name.split("-")[0] if ch.isdigit())
    return (int(digits) if digits else 10**6, name)


def _grouped(
    records: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)

    summary: dict[str, Any] = {}
    for name in sorted(groups, key=group_order):
        members = groups[name]
        with_age = [r for r in members if r["age"] is not None]
        errors = np.array([r["pred_age"] - r["age"] for r in with_age], dtype=np.float64)
        with_gender = [r for r in members if r["gender"] in ("M", "F")]
        inside = [r["interval"][0] <= r["age"] <= r["interval"][1] for r in with_age]
        summary[name] = {
            "n": len(members),
            "age_mae": float(np.abs(errors).mean()) if len(errors) else None,
            **_squared_errors(errors),
            "age_cs5": float((np.abs(errors) <= 5).mean()) if len(errors) else None,
            "age_mean_signed_error": float(errors.mean()) if len(errors) else None,
            "age_interval_coverage": float(np.mean(inside)) if inside else None,
            "gender_accuracy": (
                float(np.mean([r["gender"] == r["pred_gender"] for r in with_gender]))
                if with_gender
                else None
            ),
        }
    return summary


def evaluate(
    analyzer: Analyzer,
    dataset_dir: Path,
    rows: Sequence[LabelledImage],
    *,
    pad: float = 0.0,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the analyzer over labelled images; returns (metrics, per-image records)."""
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for batch in iter_dataset(dataset_dir, rows, pad, batch_size):
        decoded = [(row, image) for row, image in batch if image is not None]
        results = analyzer.analyze_arrays([image for _, image in decoded])
        by_file = {row.file: result for (row, _), result in zip(decoded, results, strict=True)}
        for row, _ in batch:
            result = by_file.get(row.file)
            face = scored_face(result) if result is not None else None
            records.append(
                {
                    "file": row.file,
                    "age": row.age,
                    "gender": row.gender,
                    "race": row.race,
                    "age_low": row.age_low,
                    "age_high": row.age_high,
                    "pred_age": face.age_years if face else None,
                    "pred_gender": face.gender if face else None,
                    "gender_probability": face.gender_probability if face else None,
                    "interval": list(face.age_interval) if face else None,
                    "faces": len(result.faces) if result is not None else None,
                }
            )
        if progress is not None:
            progress(len(batch))
    elapsed = time.perf_counter() - start
    metrics = compute_metrics(records, len(rows))
    metrics["images_per_second"] = len(rows) / elapsed if elapsed > 0 else None
    metrics["models"] = dict(analyzer.models)
    metrics["pad"] = pad
    return metrics, records
