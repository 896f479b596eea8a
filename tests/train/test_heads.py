"""Training heads on embeddings: the recipe's parts, on features with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from agelens.models.heads import HeadsCalibration, piecewise
from agelens.train.heads import (
    AGE_YEARS,
    TrainConfig,
    fit_calibration,
    platt_scaling,
    run_heads,
    sample_weights,
    train_heads,
)


def _features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features that carry age and gender linearly, plus noise dimensions."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(1, 90, n).round()
    male = (rng.random(n) < 0.5).astype(np.float64)
    noise = rng.normal(size=(n, 14))
    x = np.column_stack([ages / 30 + rng.normal(0, 0.05, n), male * 2 - 1, noise]).astype(
        np.float32
    )
    mirrored = (x + rng.normal(0, 0.01, x.shape)).astype(np.float32)
    return x, mirrored, ages, male


def test_heads_learn_a_known_relation_and_are_reproducible() -> None:
    x, mirrored, ages, male = _features(600, seed=1)
    config = TrainConfig(
        hidden=32,
        epochs=30,
        folds=2,
        patience=30,
        batch_size=64,
        learning_rate=1e-2,
        input_dropout=0.0,
        hidden_dropout=0.1,
    )
    first = train_heads(x, mirrored, ages, male, config)
    oof_mae = np.abs(first.calibration.age(first.oof_raw_age) - ages).mean()
    assert oof_mae < 4.0  # out of fold: rows the predicting head never saw
    assert ((first.oof_gender_logit > 0) == (male > 0.5)).mean() > 0.97
    assert len(first.heads) == 2
    second = train_heads(x, mirrored, ages, male, config)
    np.testing.assert_array_equal(first.oof_raw_age, second.oof_raw_age)


def test_run_heads_averages_probabilities() -> None:
    x, mirrored, ages, male = _features(300, seed=2)
    trained = train_heads(x, mirrored, ages, male, TrainConfig(hidden=8, epochs=2, folds=2))
    probabilities, logit = run_heads(trained.heads, x[:5])
    assert probabilities.shape == (5, 101)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert logit.shape == (5,)


def test_rare_ages_weigh_more() -> None:
    ages = np.array([25.0] * 90 + [80.0] * 10)
    weights = sample_weights(ages, 0.5)
    assert weights[-1] > 2 * weights[0]
    assert weights.mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(sample_weights(ages, 0.0), np.ones(100))


@pytest.mark.parametrize(
    ("x", "expected"),
    [(-5.0, 5.0), (0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (100.0, 110.0)],
)
def test_piecewise_continues_with_slope_one(x: float, expected: float) -> None:
    assert piecewise(np.array([x]), (0.0, 10.0), (10.0, 20.0))[0] == pytest.approx(expected)


def test_calibration_pushes_compressed_ages_back_out() -> None:
    rng = np.random.default_rng(3)
    ages = rng.uniform(1, 90, 5000)
    raw = 40 + 0.6 * (ages - 40) + rng.normal(0, 3, ages.shape)  # pulled toward 40
    male = (rng.random(5000) < 0.5).astype(np.float64)
    logit = (male * 2 - 1) * 3 + rng.normal(0, 1, 5000)
    full = fit_calibration(raw, logit, ages, male, debias=1.0)
    old, young = ages > 75, ages < 10
    assert abs((full.age(raw) - ages)[old].mean()) < 2.0
    assert abs((full.age(raw) - ages)[young].mean()) < 2.0
    assert abs((raw - ages)[old].mean()) > 8.0
    none = fit_calibration(raw, logit, ages, male, debias=0.0)
    np.testing.assert_allclose(none.age(raw), raw, atol=0.05)
    # The interval grows with age and holds about 80% of true ages.
    reported = full.age(raw)
    width = full.half_width(reported)
    inside = np.abs(reported - ages) <= width
    assert 0.72 < inside.mean() < 0.88
    assert isinstance(full, HeadsCalibration)


def test_too_few_folds_is_an_error() -> None:
    x, mirrored, ages, male = _features(100, seed=4)
    with pytest.raises(ValueError, match="folds"):
        train_heads(x, mirrored, ages, male, TrainConfig(folds=1))


def test_age_years_grid() -> None:
    assert AGE_YEARS[0] == 0
    assert AGE_YEARS[-1] == 100


def test_platt_scaling_stays_finite_on_separable_labels() -> None:
    logit = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    male = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    a, b = platt_scaling(logit, male)
    assert np.isfinite([a, b]).all()
    assert a > 1.0  # sharpened, since every sign is right
    noisy = np.random.default_rng(0).normal(size=2000)
    labels = (noisy + np.random.default_rng(1).normal(size=2000) * 2 > 0).astype(np.float64)
    a, b = platt_scaling(noisy * 4, labels)  # over-confident logits get shrunk
    assert 0.05 < a < 0.5
    assert abs(b) < 0.2
