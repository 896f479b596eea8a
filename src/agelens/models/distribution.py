"""Turning an age distribution into an expected age."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def expected_age(
    probabilities: NDArray[np.float32], ages: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Expectation of each row's distribution over the class ages `ages`."""
    total = probabilities.sum(axis=1)
    expectation: NDArray[np.float32] = np.asarray(
        probabilities @ ages / np.maximum(total, 1e-12), dtype=np.float32
    )
    return expectation
