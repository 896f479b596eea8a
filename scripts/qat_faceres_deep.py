"""Quantization-aware fine-tuning of faceres-deep at 192 px measured on its own: the network
is tuned as `agelens train` tunes a `-qat` backbone (agelens.train.qat), then quantized by
agelens's int8 recipe, and its int8 outputs are compared with the original float network's on
held-out UTKFace `dev` faces.

    python scripts/qat_faceres_deep.py ../shared/data/utkface --out qat/

What it simulates and the loss: agelens/train/qat.py. Here the simulated int8 ranges come
from 256 held-out faces, which also calibrate the int8 graphs compared.

Writes `OUT/faceres-deep@192-qat.onnx` (the tuned float graph, which agelens's int8 recipe
then quantizes) and prints, for the original and the tuned network in int8: their own age
MAE, the mean change of the age estimate and the embedding cosine against the original float
network, and gender decisions changed. docs/training.md ("int8 faceres in the heads") gives
what it measured on 2026-12-07.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from agelens.evaluate import LabelledImage, iter_scored_faces, read_labels
from agelens.models.backends import create_detector
from agelens.models.convert.int8 import calibrate, quantized
from agelens.models.faceres import FaceResEstimator
from agelens.models.registry import get_spec
from agelens.train.qat import EPOCHS, LEARNING_RATE, QAT_FACES, run_graph, save_graph, tune

logger = logging.getLogger("qat_faceres_deep")

NAME = "faceres-deep"
SIZE = 192
YEARS = np.arange(1, 101)

Array = NDArray[np.float32]


def chips(
    network: FaceResEstimator, dataset: Path, rows: Sequence[LabelledImage]
) -> tuple[Array, NDArray[np.float64], list[str]]:
    """The network's input for each row with a face (as `agelens train` finds them)."""
    found, ages, files = [], [], []
    detector = create_detector("blazeface-full", 1)
    for row, face in zip(rows, iter_scored_faces(dataset, rows, 0.5, detector), strict=True):
        if face is not None and row.age is not None:
            found.append(network.align(face[0], [face[1]])[NAME])
            ages.append(row.age)
            files.append(row.file)
    return np.concatenate(found), np.array(ages, dtype=np.float64), files


def compare_int8(
    name: str,
    model: onnx.ModelProto,
    calibration: Array,
    test: Array,
    ages: NDArray[np.float64],
    reference: list[Array],
) -> dict[str, Any]:
    """`model` in int8 (agelens's recipe, ranges on `calibration`) against the original float
    network's outputs `reference` on `test`."""
    with tempfile.TemporaryDirectory() as work:
        ranges = Path(work) / "ranges.json"
        calibrate(model, calibration, ranges)
        probabilities, male, embedding = run_graph(quantized(model, ranges), test, 1)
    float_probabilities, float_male, float_embedding = reference
    age, float_age = probabilities @ YEARS, float_probabilities @ YEARS
    cosine = (embedding * float_embedding).sum(1) / (
        np.linalg.norm(embedding, axis=1) * np.linalg.norm(float_embedding, axis=1)
    )
    return {
        "network": name,
        "int8_age_mae": round(float(np.abs(age - ages).mean()), 3),
        "float_age_mae": round(float(np.abs(float_age - ages).mean()), 3),
        "mean_age_change_vs_float": round(float(np.abs(age - float_age).mean()), 3),
        "embedding_cosine_vs_float": round(float(cosine.mean()), 5),
        "gender_decisions_changed": round(float(((male > 0.5) != (float_male > 0.5)).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="UTKFace folder with labels.csv")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tuned graph")
    parser.add_argument("--train-faces", type=int, default=QAT_FACES)
    parser.add_argument("--epochs", type=float, default=EPOCHS)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    network = FaceResEstimator(get_spec(NAME), threads=2, input_size=SIZE)
    labels = arguments.dataset / "labels.csv"
    # 900 seeded `dev` rows: the first 256 faces calibrate, the rest are the comparison's.
    held_rows = read_labels(labels, split="dev", limit=900, seed=11)
    held, held_ages, held_files = chips(network, arguments.dataset, held_rows)
    calibration, test, ages = held[:256], held[256:], held_ages[256:]
    others = read_labels(labels, split="dev", limit=arguments.train_faces + 1200, seed=5)
    train_rows = [r for r in others if r.file not in set(held_files)][: arguments.train_faces]
    train, _, _ = chips(network, arguments.dataset, train_rows)
    train = np.concatenate([train, np.ascontiguousarray(train[:, :, ::-1, :])])  # and mirrors
    float_graph = network.float_graph()
    reference = run_graph(float_graph.SerializeToString(), test, 2)
    tuned = tune(
        float_graph,
        calibration,
        train,
        epochs=arguments.epochs,
        learning_rate=arguments.learning_rate,
    )
    arguments.out.mkdir(parents=True, exist_ok=True)
    save_graph(tuned, arguments.out / f"{NAME}@{SIZE}-qat.onnx")
    for name, model in (("original", float_graph), ("quantization-aware", tuned)):
        print(json.dumps(compare_int8(name, model, calibration, test, ages, reference)))


if __name__ == "__main__":
    main()
