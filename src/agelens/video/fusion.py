"""One steady age and gender per person from the many estimates of their track.

Each estimate is weighted by how much it can be trusted: the detection score times the face
size relative to the estimators' input (`min(1, side / 112 px)`), so a small, half-detected
face counts less than a large clear one.

- Age: the weighted mean of the estimates, leaving out (from five estimates on) those further
  from the weighted median than 2.5 robust standard deviations (1.4826 median absolute
  deviations, and at least 3 years), so one bad frame (a turned head, a blur) cannot pull it;
  with an 80% interval centred on it whose half-width is the estimates' mean half-width times
  `sqrt(rho + (1 - rho) / n)`, `n` the effective number of estimates (Kish's
  `(sum w)^2 / sum w^2`). Frames of one face are not independent views: part of an estimator's
  error belongs to the person (their lighting, their look), and more frames do not remove it;
  `rho` is that shared part, so the interval narrows with evidence down to `sqrt(rho)` of one
  frame's and never to zero. Where the estimates disagree more than their intervals say, the
  interval is widened to their weighted spread (80% of a normal), narrowed by the same factor.
- Gender: the weighted mean of the estimates' log-odds, multiplied by the same evidence factor
  `1 / (rho + (1 - rho) / n)` (1 for one estimate, at most `1 / rho`): combining log-odds the
  way independent evidence combines, discounted for frames that share their errors.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from agelens.types import Gender

#: The share of one estimate's error that is shared by every frame of the same person. Not
#: fitted (no video set with true ages to fit it on): 0.5 says half of the error is the
#: person's, so the interval ends at 71% of one frame's and gender evidence at most doubles.
SHARED_ERROR = 0.5
#: The face side (pixels) at and above which an estimate gets its full size weight: the
#: ensemble's largest input (face-api, 112 px).
FULL_WEIGHT_FACE_PX = 112.0
#: The z-value of an 80% interval of a normal distribution.
_Z80 = 1.2816
_MAX_LOGIT = 9.0
_MIN_FOR_OUTLIERS = 5
_OUTLIER_DEVIATIONS = 2.5
_OUTLIER_FLOOR_YEARS = 3.0


@dataclass(frozen=True, slots=True)
class Estimate:
    """One frame's estimate of one face, with the weight fusion gives it."""

    age_years: float
    age_interval: tuple[float, float]
    gender_probability_male: float
    weight: float


@dataclass(frozen=True, slots=True)
class Fused:
    """A track's combined estimate. `gender_probability` is that of `gender` (>= 0.5)."""

    age_years: float
    age_interval: tuple[float, float]
    gender: Gender
    gender_probability: float
    estimates: int


def estimate_weight(face_side_px: float, detection_score: float) -> float:
    """The weight of one estimate: detection score times `min(1, side / 112 px)`."""
    return max(detection_score, 0.0) * min(1.0, max(face_side_px, 0.0) / FULL_WEIGHT_FACE_PX)


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The value at half the total weight (the mean of the two middle values at a tie)."""
    if not values:
        raise ValueError("weighted_median of no values")
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    if total <= 0:
        ordered = sorted(values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    cumulative = 0.0
    for index, (value, weight) in enumerate(pairs):
        cumulative += weight
        if math.isclose(cumulative, total / 2, rel_tol=1e-12) and index + 1 < len(pairs):
            return (value + pairs[index + 1][0]) / 2
        if cumulative > total / 2:
            return value
    return pairs[-1][0]


def effective_count(weights: Sequence[float]) -> float:
    """Kish's effective number of estimates, `(sum w)^2 / sum w^2` (0 with no weight)."""
    squares = sum(w * w for w in weights)
    return sum(weights) ** 2 / squares if squares > 0 else 0.0


def evidence_factor(effective: float, shared_error: float = SHARED_ERROR) -> float:
    """How many independent estimates `effective` correlated ones are worth: from 1 (one
    estimate) up to `1 / shared_error`."""
    if effective <= 0:
        return 0.0
    return 1.0 / (shared_error + (1.0 - shared_error) / max(effective, 1.0))


def fuse(estimates: Sequence[Estimate], shared_error: float = SHARED_ERROR) -> Fused | None:
    """The fused age and gender of a track's estimates, or None with no estimate."""
    if not estimates:
        return None
    count = len(estimates)
    median = weighted_median([e.age_years for e in estimates], [e.weight for e in estimates])
    if len(estimates) >= _MIN_FOR_OUTLIERS:
        deviation = statistics.median(abs(e.age_years - median) for e in estimates)
        limit = max(_OUTLIER_DEVIATIONS * 1.4826 * deviation, _OUTLIER_FLOOR_YEARS)
        estimates = [e for e in estimates if abs(e.age_years - median) <= limit]
    weights = [max(e.weight, 1e-6) for e in estimates]
    total = sum(weights)
    ages = [e.age_years for e in estimates]
    age = sum(w * a for w, a in zip(weights, ages, strict=True)) / total
    factor = evidence_factor(effective_count(weights), shared_error)
    half_widths = [(e.age_interval[1] - e.age_interval[0]) / 2 for e in estimates]
    mean_half = sum(w * h for w, h in zip(weights, half_widths, strict=True)) / total
    half = mean_half / math.sqrt(factor)
    variance = sum(w * (a - age) ** 2 for w, a in zip(weights, ages, strict=True)) / total
    spread = math.sqrt(variance)
    half = max(half, _Z80 * spread / math.sqrt(factor))
    logits = [_logit(e.gender_probability_male) for e in estimates]
    logit = factor * sum(w * x for w, x in zip(weights, logits, strict=True)) / total
    p_male = 1.0 / (1.0 + math.exp(-max(min(logit, _MAX_LOGIT), -_MAX_LOGIT)))
    gender: Gender = "M" if p_male >= 0.5 else "F"
    return Fused(
        age_years=age,
        age_interval=(max(0.0, age - half), age + half),
        gender=gender,
        gender_probability=max(p_male, 1.0 - p_male),
        estimates=count,
    )


def _logit(probability: float) -> float:
    p = min(max(probability, 1e-4), 1.0 - 1e-4)
    return math.log(p / (1.0 - p))
