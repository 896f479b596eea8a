"""Fusion of a track's estimates: tables of cases, the empty case first."""

from __future__ import annotations

import math

import pytest

from agelens.video.fusion import (
    Estimate,
    effective_count,
    estimate_weight,
    evidence_factor,
    fuse,
    weighted_median,
)


def estimate(age: float, p_male: float = 0.8, weight: float = 1.0, half: float = 5.0) -> Estimate:
    return Estimate(age, (age - half, age + half), p_male, weight)


def test_no_estimates_fuse_to_nothing() -> None:
    assert fuse([]) is None


@pytest.mark.parametrize(
    ("values", "weights", "expected"),
    [
        ([30.0], [1.0], 30.0),
        ([20.0, 30.0, 40.0], [1.0, 1.0, 1.0], 30.0),
        ([20.0, 30.0, 40.0], [1.0, 1.0, 5.0], 40.0),
        ([20.0, 40.0], [1.0, 1.0], 30.0),
        ([20.0, 40.0], [0.0, 0.0], 30.0),
    ],
)
def test_weighted_median(values: list[float], weights: list[float], expected: float) -> None:
    assert weighted_median(values, weights) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [([], 0.0), ([1.0], 1.0), ([1.0] * 10, 10.0), ([1.0, 0.0], 1.0), ([3.0, 1.0], 1.6)],
)
def test_effective_count(weights: list[float], expected: float) -> None:
    assert effective_count(weights) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("side", "score", "expected"),
    [(0.0, 0.9, 0.0), (56.0, 1.0, 0.5), (112.0, 0.8, 0.8), (400.0, 0.8, 0.8), (100.0, -1.0, 0.0)],
)
def test_estimate_weight_grows_with_face_size_up_to_112_px(
    side: float, score: float, expected: float
) -> None:
    assert estimate_weight(side, score) == pytest.approx(expected)


def test_one_estimate_is_returned_as_it_is() -> None:
    fused = fuse([estimate(30.0, p_male=0.8)])
    assert fused is not None
    assert fused.age_years == pytest.approx(30.0)
    assert fused.age_interval == pytest.approx((25.0, 35.0))
    assert (fused.gender, fused.gender_probability) == ("M", pytest.approx(0.8))


def test_the_interval_narrows_with_evidence_but_never_below_the_shared_error() -> None:
    widths = []
    for count in (1, 2, 5, 50):
        fused = fuse([estimate(30.0)] * count)
        assert fused is not None
        widths.append(fused.age_interval[1] - fused.age_interval[0])
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] > 10.0 * math.sqrt(0.5) * 0.99
    assert evidence_factor(1e9) == pytest.approx(2.0)


def test_an_outlier_frame_does_not_pull_the_age() -> None:
    fused = fuse([estimate(30.0), estimate(31.0), estimate(29.0), estimate(30.5), estimate(80.0)])
    assert fused is not None
    assert fused.age_years == pytest.approx(30.125)
    assert fused.estimates == 5


def test_gender_log_odds_combine_and_heavier_estimates_count_more() -> None:
    fused = fuse([estimate(30.0, p_male=0.7)] * 10)
    assert fused is not None
    assert fused.gender == "M"
    assert fused.gender_probability > 0.7  # more evidence, more certainty
    split = fuse([estimate(30.0, p_male=0.9, weight=0.2), estimate(30.0, p_male=0.2, weight=1.0)])
    assert split is not None
    assert split.gender == "F"


def test_disagreeing_estimates_widen_the_interval() -> None:
    agree = fuse([estimate(30.0, half=2.0)] * 4)
    disagree = fuse([estimate(a, half=2.0) for a in (20.0, 40.0, 22.0, 38.0)])
    assert agree is not None
    assert disagree is not None
    assert (disagree.age_interval[1] - disagree.age_interval[0]) > 2 * (
        agree.age_interval[1] - agree.age_interval[0]
    )
