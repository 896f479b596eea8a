"""Turning network outputs into estimates: expected age, interval, P(male)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from agelens.types import AgeGenderEstimate


def expected_age(
    probabilities: NDArray[np.float32], ages: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Expectation of each row's distribution over the class ages `ages`."""
    total = probabilities.sum(axis=1)
    expectation: NDArray[np.float32] = np.asarray(
        probabilities @ ages / np.maximum(total, 1e-12), dtype=np.float32
    )
    return expectation


def estimates(
    ages: Iterable[float], half_widths: Iterable[float], male: Iterable[float]
) -> list[AgeGenderEstimate]:
    """One estimate per face: the age, the interval age -/+ half-width (never below 0), and
    P(male). Every estimator ends here, so they all build intervals the same way."""
    return [
        AgeGenderEstimate(
            age_years=float(age),
            age_interval=(float(max(0.0, age - width)), float(age + width)),
            gender_probability_male=float(p_male),
        )
        for age, width, p_male in zip(ages, half_widths, male, strict=True)
    ]
