"""Age and gender heads on cached embeddings, trained with PyTorch on the CPU.

Recipe (each choice measured on UTKFace `dev`, see the model card of the shipped heads):

- Inputs: the backbones' features side by side, standardised with the training rows' mean and
  standard deviation (baked into the exported graph).
- Network per fold: dropout -> linear -> ReLU -> dropout -> linear to 101 age logits (ages
  0..100) and one gender logit.
- Age as a distribution (label-distribution learning): cross-entropy against a Gaussian around
  the true age, plus a small L1 term on the expected age; the age read out is the expectation.
- Gender: binary cross-entropy with label smoothing.
- Rare ages weigh more: each row's weight is (rows within +/-2 years of its age)^-`reweight`,
  normalised to mean 1. Without it the heads learn the dataset's 20-40 bulk and read the old
  young and the young old.
- Mirrored faces: each epoch every row is seen mirrored with probability 1/2; predictions
  average the face and its mirror.
- K-fold cross-fitting: K heads, each trained on K-1 folds and early-stopped on its own fold.
  The K heads are averaged at run time, and every training row gets an out-of-fold prediction,
  which fits the calibration below and gives honest training-time metrics.
- Calibration on the out-of-fold predictions: an age mapping that removes `debias` of the
  per-age bias (predicted ages pulled toward the middle are pushed back out), Platt scaling of
  the gender logit, and the 80% interval half-width as a function of the age.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from agelens.models.heads import HeadsCalibration, piecewise, sigmoid

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

AGE_CLASSES = 101
AGE_YEARS = np.arange(AGE_CLASSES, dtype=np.float64)
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyper-parameters of `train_heads` (defaults: the shipped heads' recipe)."""

    hidden: int = 512
    input_dropout: float = 0.3
    hidden_dropout: float = 0.5
    epochs: int = 30
    patience: int = 8
    batch_size: int = 256
    learning_rate: float = 5e-4
    weight_decay: float = 1e-2
    sigma_years: float = 2.0
    l1_weight: float = 0.1
    label_smoothing: float = 0.05
    reweight: float = 0.5
    folds: int = 5
    debias: float = 0.3
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True, slots=True)
class HeadWeights:
    """One fold's head as plain arrays (what the ONNX export writes)."""

    mean: NDArray[np.float32]
    scale: NDArray[np.float32]
    hidden_weight: NDArray[np.float32]  # (hidden, inputs)
    hidden_bias: NDArray[np.float32]
    output_weight: NDArray[np.float32]  # (AGE_CLASSES + 1, hidden)
    output_bias: NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TrainedHeads:
    """The result of `train_heads`: fold heads, their calibration, out-of-fold predictions."""

    heads: tuple[HeadWeights, ...]
    calibration: HeadsCalibration
    oof_raw_age: FloatArray
    oof_gender_logit: FloatArray
    epochs_run: tuple[int, ...]
    history: list[dict[str, Any]] = field(default_factory=list)


def sample_weights(ages: FloatArray, exponent: float) -> FloatArray:
    """(rows within +/-2 years)^-exponent, normalised to mean 1 (rare ages weigh more)."""
    if exponent == 0:
        return np.ones_like(ages)
    years = np.clip(np.round(ages).astype(int), 0, AGE_CLASSES - 1)
    counts = np.bincount(years, minlength=AGE_CLASSES).astype(np.float64)
    smoothed = np.convolve(counts, np.ones(5), mode="same")
    weights = np.maximum(smoothed[years], 1.0) ** -exponent
    return np.asarray(weights / weights.mean())


def _gaussian_targets(ages: torch.Tensor, sigma: float) -> torch.Tensor:
    import torch

    grid = torch.arange(AGE_CLASSES, dtype=torch.float32)
    logits = -0.5 * ((grid[None, :] - ages[:, None]) / sigma) ** 2
    return torch.softmax(logits, dim=1)


def _build_network(inputs: int, config: TrainConfig) -> torch.nn.Sequential:
    from torch import nn

    return nn.Sequential(
        nn.Dropout(config.input_dropout),
        nn.Linear(inputs, config.hidden),
        nn.ReLU(),
        nn.Dropout(config.hidden_dropout),
        nn.Linear(config.hidden, AGE_CLASSES + 1),
    )


def _predict(
    network: torch.nn.Sequential, x: NDArray[np.float32], mirrored: NDArray[np.float32]
) -> tuple[FloatArray, FloatArray]:
    """(expected age, gender logit), averaged over the face and its mirror."""
    import torch

    network.eval()
    with torch.no_grad():
        outputs = [network(torch.from_numpy(batch)) for batch in (x, mirrored)]
    probabilities = sum(torch.softmax(o[:, :AGE_CLASSES], dim=1) for o in outputs) / 2
    logit = sum(o[:, AGE_CLASSES] for o in outputs) / 2
    age = np.asarray(probabilities, dtype=np.float64) @ AGE_YEARS
    return age, np.asarray(logit, dtype=np.float64)


def _fold_ids(ages: FloatArray, folds: int, seed: int) -> NDArray[np.int64]:
    """Fold of each row, stratified by age so every fold sees every age."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(ages)), ages))
    ids = np.empty(len(ages), dtype=np.int64)
    ids[order] = np.arange(len(ages)) % folds
    return ids


def _train_fold(
    x: NDArray[np.float32],
    mirrored: NDArray[np.float32],
    ages: FloatArray,
    male: FloatArray,
    weights: FloatArray,
    train: NDArray[np.bool_],
    config: TrainConfig,
    seed: int,
    on_epoch: Callable[[dict[str, Any]], None],
) -> tuple[HeadWeights, int]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = x[train].mean(axis=0)
    # Dimensions nearly constant on the training rows (dead ReLUs of a backbone) must not blow
    # up on other faces: no scale below a tenth of the typical one.
    spread = x[train].std(axis=0)
    scale = np.maximum(spread, 0.1 * float(spread.mean()) + 1e-6)
    xs = ((x - mean) / scale).astype(np.float32)
    ms = ((mirrored - mean) / scale).astype(np.float32)
    held = ~train
    network = _build_network(x.shape[1], config)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    train_index = np.flatnonzero(train)
    # Small training sets get smaller batches, so that they still take ~10 steps an epoch.
    batch_size = min(config.batch_size, max(16, len(train_index) // 10))
    steps_per_epoch = math.ceil(len(train_index) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.learning_rate,
        total_steps=steps_per_epoch * config.epochs,
        pct_start=0.15,
    )
    age_t = torch.from_numpy(ages.astype(np.float32))
    male_t = torch.from_numpy(male.astype(np.float32))
    weight_t = torch.from_numpy(weights.astype(np.float32))
    targets = _gaussian_targets(age_t, config.sigma_years)
    grid = torch.arange(AGE_CLASSES, dtype=torch.float32)
    smooth = config.label_smoothing
    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    stale = 0
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        network.train()
        order = rng.permutation(train_index)
        flip = rng.random(len(order)) < 0.5
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = np.where(flip[start : start + len(index), None], ms[index], xs[index])
            out = network(torch.from_numpy(batch))
            log_p = torch.log_softmax(out[:, :AGE_CLASSES], dim=1)
            rows = torch.from_numpy(index)
            ldl = -(targets[rows] * log_p).sum(dim=1)
            expected = (log_p.exp() * grid).sum(dim=1)
            l1 = (expected - age_t[rows]).abs()
            gender_target = male_t[rows] * (1 - smooth) + smooth / 2
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                out[:, AGE_CLASSES], gender_target, reduction="none"
            )
            loss = (weight_t[rows] * (ldl + config.l1_weight * l1 + bce)).mean()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
        age_pred, logit = _predict(network, xs[held], ms[held])
        mae = float(np.abs(age_pred - ages[held]).mean())
        gender_error = float(((logit > 0) != (male[held] > 0.5)).mean())
        # One number to stop on: a year of MAE is worth 5 points of gender accuracy.
        score = mae + 20 * gender_error
        on_epoch({"epoch": epoch, "val_mae": mae, "val_gender_accuracy": 1 - gender_error})
        if best is None or score < best[0]:
            best = (score, {k: v.clone() for k, v in network.state_dict().items()}, epoch)
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best is not None
    network.load_state_dict(best[1])
    hidden: Any = network[1]
    output: Any = network[4]
    return (
        HeadWeights(
            mean=mean.astype(np.float32),
            scale=scale.astype(np.float32),
            hidden_weight=hidden.weight.detach().numpy().astype(np.float32),
            hidden_bias=hidden.bias.detach().numpy().astype(np.float32),
            output_weight=output.weight.detach().numpy().astype(np.float32),
            output_bias=output.bias.detach().numpy().astype(np.float32),
        ),
        best[2],
    )


def run_heads(
    heads: tuple[HeadWeights, ...], x: NDArray[np.float32]
) -> tuple[NDArray[np.float64], FloatArray]:
    """(age probabilities averaged over the heads, mean gender logit) in numpy, the same
    arithmetic as the exported graph."""
    probabilities = np.zeros((len(x), AGE_CLASSES))
    logit = np.zeros(len(x))
    for head in heads:
        z = (x - head.mean) / head.scale
        h = np.maximum(z @ head.hidden_weight.T + head.hidden_bias, 0)
        out = (h @ head.output_weight.T + head.output_bias).astype(np.float64)
        a = out[:, :AGE_CLASSES]
        e = np.exp(a - a.max(axis=1, keepdims=True))
        probabilities += e / e.sum(axis=1, keepdims=True)
        logit += out[:, AGE_CLASSES]
    return probabilities / len(heads), logit / len(heads)


def _bin_means(
    key: FloatArray, values: FloatArray, bins: int, statistic: Callable[[FloatArray], float]
) -> tuple[list[float], list[float]]:
    """(mean key, statistic of values) per quantile bin of `key` holding enough rows."""
    edges = np.unique(np.quantile(key, np.linspace(0, 1, bins + 1)))
    least = max(10, len(key) // (3 * bins))
    centres, stats = [], []
    for low, high in itertools.pairwise(edges):
        inside = (key >= low) & (key <= high)
        if inside.sum() >= least:
            centres.append(float(key[inside].mean()))
            stats.append(statistic(values[inside]))
    return centres, stats


def platt_scaling(logit: FloatArray, male: FloatArray) -> tuple[float, float]:
    """(a, b) minimising the log-loss of sigmoid(a * logit + b) against `male`: damped
    Newton steps with backtracking, so separable or tiny sets cannot make it diverge."""

    def loss(a: float, b: float) -> float:
        z = a * logit + b
        # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, computed stably.
        return float(np.mean(np.logaddexp(0.0, np.where(male > 0.5, -z, z))))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(50):
        p = sigmoid(a * logit + b)
        gradient = np.array([np.mean((p - male) * logit), np.mean(p - male)])
        w = p * (1 - p) + 1e-6
        hessian = np.array(
            [[np.mean(w * logit * logit), np.mean(w * logit)], [np.mean(w * logit), np.mean(w)]]
        )
        step = np.linalg.solve(hessian + 1e-4 * np.eye(2), gradient)
        scale = 1.0
        while scale > 1e-4 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2
        if scale <= 1e-4:
            break
        a, b = a - scale * step[0], b - scale * step[1]
        previous, current = current, loss(a, b)
        if previous - current < 1e-10:
            break
    return float(a), float(b)


def fit_calibration(
    raw_age: FloatArray, logit: FloatArray, ages: FloatArray, male: FloatArray, debias: float
) -> HeadsCalibration:
    """Calibration maps from out-of-fold predictions (see the module docstring). Bins hold
    at least ~40 rows each, so small training sets get coarse maps rather than noisy ones."""
    bins = int(np.clip(len(ages) // 40, 1, 24))
    # Age: g(t) = mean raw prediction of rows whose true age is about t (made monotone); g's
    # inverse maps a raw prediction back to the age that typically produces it.
    true_centres, mean_predicted = _bin_means(ages, raw_age, bins, lambda v: float(v.mean()))
    if len(true_centres) >= 2:
        g_x = np.asarray(true_centres)
        g_y = np.maximum.accumulate(np.asarray(mean_predicted))
        g_y = g_y + np.arange(len(g_y)) * 1e-3  # strictly increasing, so it can be inverted
        knots_x, knots_y = g_y, g_y + debias * (g_x - g_y)
    else:
        knots_x = knots_y = np.array([0.0, 100.0])
    a, b = platt_scaling(logit, male)
    # Interval: the 80% quantile of |error| in bins of the reported age, made monotone.
    reported = piecewise(raw_age, tuple(knots_x), tuple(knots_y))
    errors = np.abs(reported - ages)
    centres, widths = _bin_means(
        reported, errors, max(1, bins // 2), lambda v: float(np.quantile(v, 0.8))
    )
    if not centres:
        centres, widths = [float(reported.mean())], [float(np.quantile(errors, 0.8))]
    return HeadsCalibration(
        age_knots_x=tuple(float(v) for v in knots_x),
        age_knots_y=tuple(float(v) for v in knots_y),
        gender_scale=float(a),
        gender_bias=float(b),
        interval_knots_x=tuple(centres),
        interval_knots_y=tuple(float(v) for v in np.maximum.accumulate(widths)),
    )


def train_heads(
    x: NDArray[np.float32],
    mirrored: NDArray[np.float32],
    ages: FloatArray,
    male: FloatArray,
    config: TrainConfig,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainedHeads:
    """K fold heads on features `x` (and their mirrors), with calibration fitted on the
    out-of-fold predictions. `male` is 1.0 for M, 0.0 for F. Reproducible for a given seed
    and thread count."""
    import torch

    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    if config.folds < 2:
        raise ValueError("folds must be at least 2 (each fold is the others' validation set)")
    folds = _fold_ids(ages, config.folds, config.seed)
    weights = sample_weights(ages, config.reweight)
    oof_age = np.zeros(len(ages))
    oof_logit = np.zeros(len(ages))
    heads: list[HeadWeights] = []
    epochs_run: list[int] = []
    history: list[dict[str, Any]] = []
    for fold in range(config.folds):
        train = folds != fold

        def record(entry: dict[str, Any], fold: int = fold) -> None:
            history.append({"fold": fold, **entry})
            if on_epoch is not None:
                on_epoch({"fold": fold, **entry})

        head, epochs = _train_fold(
            x, mirrored, ages, male, weights, train, config, config.seed * 1000 + fold, record
        )
        heads.append(head)
        epochs_run.append(epochs)
        held = ~train
        p1, l1 = run_heads((head,), x[held])
        p2, l2 = run_heads((head,), mirrored[held])
        oof_age[held] = ((p1 + p2) / 2) @ AGE_YEARS
        oof_logit[held] = (l1 + l2) / 2
    calibration = fit_calibration(oof_age, oof_logit, ages, male, config.debias)
    return TrainedHeads(
        heads=tuple(heads),
        calibration=calibration,
        oof_raw_age=oof_age,
        oof_gender_logit=oof_logit,
        epochs_run=tuple(epochs_run),
        history=history,
    )
