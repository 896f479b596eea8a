"""Turning an age distribution into an expected age and a central interval."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def expected_age(
    probabilities: NDArray[np.float32], ages: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Expectation of each row's distribution over the class ages `ages`."""
    total = probabilities.sum(axis=1)
    return (probabilities @ ages / np.maximum(total, 1e-12)).astype(np.float32)


def central_interval(
    probabilities: NDArray[np.float32], ages: NDArray[np.float32], mass: float = 0.8
) -> NDArray[np.float32]:
    """The (low, high) ages holding the central `mass` of each row's distribution, `(N, 2)`.

    Quantiles are interpolated linearly within the cumulative distribution, so the interval
    is not limited to whole class ages.
    """
    if not 0 < mass < 1:
        raise ValueError("mass must lie strictly between 0 and 1")
    tail = (1 - mass) / 2
    cumulative = np.cumsum(probabilities / probabilities.sum(axis=1, keepdims=True), axis=1)
    bounds = np.empty((len(probabilities), 2), dtype=np.float32)
    for row, cdf in enumerate(cumulative):
        bounds[row, 0] = np.interp(tail, cdf, ages)
        bounds[row, 1] = np.interp(1 - tail, cdf, ages)
    return bounds
