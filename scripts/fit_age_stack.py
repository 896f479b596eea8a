"""Fit `heads-ensemble`'s age stack (models/mixture.py, `AGE_STACK`) on UTKFace `dev` and print it.

    python scripts/fit_age_stack.py ../shared/data/utkface --cache artifacts/train-cache

Least squares of the true age on the four networks' own ages (faceres's and faceres-deep's
expected age over their classes, face-api's regressed age, Cydral's expected age; each the
mean of the face's and its mirror's), read from the features `agelens train` embedded for the
shipped heads: the same `dev` rows, pad, detector and backbones (from the heads' card), so
with the cache of the README's training command nothing is embedded again. Never reads `test`
rows or `aaf`. Also prints the stack's own MAE on `dev` and, as a check that five weights do
not overfit, the MAE on 20% of the faces (still `dev`) of a stack fitted on the other 80%
beside that of the stack fitted on all.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from agelens.evaluate import read_labels
from agelens.models.embeddings import backbone_model
from agelens.models.heads import read_card, shipped_dir
from agelens.models.mixture import AgeStack, network_ages
from agelens.train.features import build_features

logger = logging.getLogger("fit_age_stack")

NETWORKS = ("faceres", "faceres-deep", "faceapi", "cydral")


def least_squares(ages: dict[str, np.ndarray], truth: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(truth))] + [ages[name] for name in NETWORKS])
    weights, *_ = np.linalg.lstsq(design, truth, rcond=None)
    return np.asarray(weights)


def mae(weights: np.ndarray, ages: dict[str, np.ndarray], truth: np.ndarray) -> float:
    stack = AgeStack(*(float(w) for w in weights))
    return float(np.abs(stack.age(ages) - truth).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="UTKFace folder with labels.csv")
    parser.add_argument("--heads", type=Path, default=shipped_dir() / "heads-utkface")
    parser.add_argument("--cache", type=Path, default=Path("artifacts/train-cache"))
    parser.add_argument("--pad", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=2)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    card = read_card(arguments.heads)
    backbones = list(card["backbones"])
    rows = read_labels(arguments.dataset / "labels.csv", split="dev", seed=0)
    labelled = [r for r in rows if r.age is not None and r.gender in ("M", "F")]
    features = build_features(
        arguments.dataset,
        labelled,
        backbones=backbones,
        cache_root=arguments.cache,
        pad=arguments.pad,
        detector=card["training"]["detector"],
        workers=arguments.workers,
    )
    offsets, start = {}, 0
    for name in backbones:
        offsets[backbone_model(name)] = start
        start += features.embeddings[name].shape[1]
    face = network_ages(features.matrix(backbones), offsets)
    mirror = network_ages(features.matrix(backbones, mirrored=True), offsets)
    ages = {name: (face[name] + mirror[name]) / 2 for name in NETWORKS}
    truth = np.array([row.age for row in features.rows], dtype=np.float64)
    held = np.random.default_rng(0).random(len(truth)) < 0.2
    part = least_squares({k: v[~held] for k, v in ages.items()}, truth[~held])
    held_mae = mae(part, {k: v[held] for k, v in ages.items()}, truth[held])
    weights = least_squares(ages, truth)
    names = ("bias", "faceres", "faceres_deep", "faceapi", "cydral")
    print(
        json.dumps(
            {
                "faces": len(truth),
                "weights": {n: round(float(w), 4) for n, w in zip(names, weights, strict=True)},
                "dev_mae": round(mae(weights, ages, truth), 3),
                "held_out_mae": round(held_mae, 3),
                "held_out_mae_fitted_on_all": round(
                    mae(weights, {k: v[held] for k, v in ages.items()}, truth[held]), 3
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
