"""Fit the default ensemble's weights on UTKFace `dev` rows and print them as code.

    python scripts/fit_ensemble.py --data ../shared/data/utkface --rows 6000

Never reads `test` rows. It fits on 80% of the sampled dev rows and reports the fit on the
other 20% (still dev), then refits on all sampled rows for the printed weights. Member
outputs are cached in artifacts/ so refitting is instant.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

import numpy as np

from agelens.evaluate import iter_dataset, read_labels, scored_index
from agelens.models.backends import create_detector
from agelens.models.ensemble import EnsembleEstimator, EnsembleWeights, logit

logger = logging.getLogger("fit_ensemble")


def collect(data: Path, rows: int, pad: float, cache: Path, flip: bool) -> dict[str, np.ndarray]:
    if cache.is_file():
        return dict(np.load(cache))
    labels = read_labels(data / "labels.csv", split="dev", limit=rows, seed=1)
    detector = create_detector("blazeface-full")
    ensemble = EnsembleEstimator.default()
    ensemble.flip = flip
    columns: dict[str, list[float]] = {
        k: [] for k in ("age", "male", "cydral_age", "cydral_male", "faceapi_age", "faceapi_male")
    }
    start = time.perf_counter()
    done = 0
    for batch in iter_dataset(data, labels, pad):
        for row, image in batch:
            done += 1
            if image is None or row.age is None or row.gender not in ("M", "F"):
                continue
            detections = detector.detect_many([image])[0]
            height, width = image.shape[:2]
            index = scored_index([d.box_xyxy for d in detections], (width, height))
            if index is None:
                continue
            outputs = ensemble.member_outputs(ensemble.align(image, [detections[index]]))
            for key, value in outputs.items():
                columns[key].append(float(value[0]))
            columns["age"].append(row.age)
            columns["male"].append(1.0 if row.gender == "M" else 0.0)
        if done % 1000 < len(batch):
            logger.info(
                "%d/%d rows, %.1f rows/s", done, len(labels), done / (time.perf_counter() - start)
            )
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **arrays)
    return arrays


def fit_age(data: dict[str, np.ndarray], ridge: float = 1e-3) -> np.ndarray:
    features = np.stack([np.ones_like(data["age"]), data["cydral_age"], data["faceapi_age"]], 1)
    penalty = ridge * len(features) * np.diag([0.0, 1.0, 1.0])
    return np.linalg.solve(features.T @ features + penalty, features.T @ data["age"])


def fit_gender(data: dict[str, np.ndarray], ridge: float = 1e-3, steps: int = 50) -> np.ndarray:
    """Logistic regression by Newton's method (IRLS) on the members' logits."""
    features = np.stack(
        [np.ones_like(data["male"]), logit(data["cydral_male"]), logit(data["faceapi_male"])], 1
    )
    weights = np.zeros(features.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-features @ weights))
        gradient = features.T @ (p - data["male"]) + ridge * weights
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + ridge * np.eye(len(weights))
        weights -= np.linalg.solve(hessian, gradient)
    return weights


def fit_interval(predicted: np.ndarray, true: np.ndarray, mass: float = 0.8) -> tuple[float, float]:
    """Half-width a + b * age covering `mass` of the rows: a line through per-age-bin quantiles
    of |error|, then scaled so the overall coverage is `mass`."""
    errors = np.abs(predicted - true)
    edges = np.quantile(predicted, np.linspace(0, 1, 11))
    centres, quantiles = [], []
    for low, high in itertools.pairwise(edges):
        inside = (predicted >= low) & (predicted <= high)
        if inside.sum() >= 20:
            centres.append(predicted[inside].mean())
            quantiles.append(np.quantile(errors[inside], mass))
    slope, bias = np.polyfit(centres, quantiles, 1)
    bias, slope = max(bias, 0.5), max(slope, 0.0)
    widths = bias + slope * predicted
    factor = np.quantile(errors / widths, mass)
    return float(bias * factor), float(slope * factor)


def weights_from(data: dict[str, np.ndarray]) -> EnsembleWeights:
    age = fit_age(data)
    gender = fit_gender(data)
    predicted = age[0] + age[1] * data["cydral_age"] + age[2] * data["faceapi_age"]
    interval = fit_interval(predicted, data["age"])
    return EnsembleWeights(*(float(v) for v in (*age, *gender, *interval)))


def report(name: str, data: dict[str, np.ndarray], weights: EnsembleWeights) -> None:
    ensemble = EnsembleEstimator.__new__(EnsembleEstimator)
    ensemble.weights = weights
    age, male, half = ensemble.combine({k: data[k] for k in data if k not in ("age", "male")})
    errors = age - data["age"]
    is_male = data["male"] == 1

    def gender_accuracy(p_male: np.ndarray) -> float:
        return float(np.mean((p_male >= 0.5) == is_male))

    def mae(predicted: np.ndarray) -> float:
        return float(np.mean(np.abs(predicted - data["age"])))

    print(
        f"{name}: n={len(errors)} MAE {mae(age):.3f} CS@5 {np.mean(np.abs(errors) <= 5):.3f}"
        f" gender {gender_accuracy(male):.4f}"
        f" interval coverage {np.mean(np.abs(errors) <= half):.3f}"
        f" | cydral MAE {mae(data['cydral_age']):.3f}"
        f" gender {gender_accuracy(data['cydral_male']):.4f}"
        f" | faceapi MAE {mae(data['faceapi_age']):.3f}"
        f" gender {gender_accuracy(data['faceapi_male']):.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/utkface"))
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--pad", type=float, default=0.5)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--no-flip", action="store_true", help="Fit without test-time flips.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    flip = not args.no_flip
    cache = args.cache or Path(f"artifacts/ensemble_dev_{args.rows}{'_flip' if flip else ''}.npz")
    data = collect(args.data, args.rows, args.pad, cache, flip)
    order = np.random.default_rng(0).permutation(len(data["age"]))
    cut = int(0.8 * len(order))
    train = {k: v[order[:cut]] for k, v in data.items()}
    held = {k: v[order[cut:]] for k, v in data.items()}
    held_weights = weights_from(train)
    report("dev 80% (fit)", train, held_weights)
    report("dev 20% (held out)", held, held_weights)
    final = weights_from(data)
    report("dev all (final fit)", data, final)
    print("\nDEFAULT_WEIGHTS = EnsembleWeights(")
    for field in EnsembleWeights.__dataclass_fields__:
        print(f"    {field}={getattr(final, field):.6f},")
    print(")")
    for member in ("cydral", "faceapi"):
        a, b = fit_interval(data[f"{member}_age"], data["age"])
        print(f"{member} INTERVAL_COEFFICIENTS = ({a:.4f}, {b:.4f})")


if __name__ == "__main__":
    main()
