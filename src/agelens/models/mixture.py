"""`heads-ensemble`: the `accurate` preset's estimator. Ages are a weighted mean of two
estimators' (by default 2/3 `heads-utkface` and 1/3 `ensemble`); gender and P(male) are the
first one's.

Why: `heads-utkface` learnt from UTKFace alone, and off UTKFace its age error is no better than
the permissive `ensemble`'s (`aaf`: 5.94 and 5.93 MAE), while their errors differ enough that
the mean is better than either there (docs/accuracy.md, "Mixing the heads with the
ensemble"). Gender stays the heads' own: mixed with the ensemble's it lost 0.4 points on
`aaf`.

The 80% interval is the same weighted mean of the members' intervals (each calibrated on its
own); the mean's error is smaller than either member's, so the interval errs on the wide side.

The heads already run face-api and Cydral on each face and its mirror, and keep those
networks' own outputs in their features (models/embeddings.py), which are all the ensemble
reads: `HeadsEnsembleEstimator` takes the ensemble's inputs from the heads' features instead
of running the two networks again, so the mix costs what the heads cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from agelens.models.base import Chips, Estimator, RGBImage
from agelens.models.cydral import AGE_CLASS_YEARS as CYDRAL_AGE_YEARS
from agelens.models.distribution import estimates, expected_age
from agelens.models.ensemble import (
    DEFAULT_WEIGHTS,
    EnsembleWeights,
    combine_outputs,
    ensemble_version,
)
from agelens.models.heads import HeadsEstimator
from agelens.types import AgeGenderEstimate, Detection


def mix_estimates(
    first: Sequence[AgeGenderEstimate], second: Sequence[AgeGenderEstimate], age_weight: float
) -> list[AgeGenderEstimate]:
    """Two estimators' estimates of the same faces: ages and intervals `age_weight` x the
    first's + the rest x the second's; P(male) the first's."""
    w = age_weight
    return [
        AgeGenderEstimate(
            age_years=w * a.age_years + (1 - w) * b.age_years,
            age_interval=(
                w * a.age_interval[0] + (1 - w) * b.age_interval[0],
                w * a.age_interval[1] + (1 - w) * b.age_interval[1],
            ),
            gender_probability_male=a.gender_probability_male,
        )
        for a, b in zip(first, second, strict=True)
    ]


def _checked(age_weight: float) -> float:
    if not 0.0 <= age_weight <= 1.0:
        raise ValueError(f"age_weight must be between 0 and 1, got {age_weight}")
    return age_weight


def _version(name: str, age_weight: float, first: str, second: str) -> str:
    return f"{name}[{age_weight:.3g} x {first}, {1 - age_weight:.3g} x {second}]"


class MixtureEstimator:
    """Ages: `age_weight` x the first member's + (1 - `age_weight`) x the second's. Gender:
    the first member's. Each member aligns and runs on its own."""

    def __init__(
        self, name: str, first: Estimator, second: Estimator, *, age_weight: float
    ) -> None:
        self.name = name
        self.first = first
        self.second = second
        self.age_weight = _checked(age_weight)

    def version(self) -> str:
        """The weights and both members' versions."""
        return _version(self.name, self.age_weight, self.first.version(), self.second.version())

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """Both members' chips in one mapping, each key prefixed with its member."""
        if not detections:
            return {}
        return {
            **{f"first/{k}": v for k, v in self.first.align(image, detections).items()},
            **{f"second/{k}": v for k, v in self.second.align(image, detections).items()},
        }

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """Each member's estimates, mixed."""
        if not chips:
            return []
        first = self.first.estimate(_member(chips, "first/"))
        second = self.second.estimate(_member(chips, "second/"))
        return mix_estimates(first, second, self.age_weight)


def _member(chips: Chips, prefix: str) -> Chips:
    return {k.removeprefix(prefix): v for k, v in chips.items() if k.startswith(prefix)}


#: Where each network's own outputs sit in its backbone's features (models/embeddings.py):
#: face-api's 512-d embedding, then age / 100 and P(male); Cydral's 256 + 16 hidden units,
#: then its 81 age-class probabilities and P(male).
_FACEAPI_AGE, _FACEAPI_MALE = 512, 513
_CYDRAL_AGE_CLASSES, _CYDRAL_MALE = slice(272, 353), 353


def ensemble_columns(heads: HeadsEstimator) -> tuple[int, int] | None:
    """Where face-api's and Cydral's features start among the heads' (in the order of
    `heads.backbones`), or None when the heads do not read both networks."""
    offsets, start = {}, 0
    for backbone in heads.backbones:
        offsets[backbone.name] = start
        start += backbone.dim
    if not {"faceapi", "cydral"} <= set(offsets):
        return None
    return offsets["faceapi"], offsets["cydral"]


class HeadsEnsembleEstimator:
    """The mix of trained heads and the `ensemble` (its weights, with its mirror pass) that
    reads the ensemble's inputs from the heads' features: the same answers as a
    MixtureEstimator of the two (to float32 rounding) without loading or running face-api and
    Cydral a second time."""

    def __init__(
        self,
        name: str,
        heads: HeadsEstimator,
        *,
        age_weight: float,
        weights: EnsembleWeights = DEFAULT_WEIGHTS,
    ) -> None:
        columns = ensemble_columns(heads)
        if columns is None:
            raise ValueError("the heads must read faceapi and cydral")
        self.name = name
        self.age_weight = _checked(age_weight)
        self._heads = heads
        self._weights = weights
        self._faceapi, self._cydral = columns

    def version(self) -> str:
        """The weights, the heads' version and the ensemble's (the heads' two networks)."""
        networks = {b.name: b.version() for b in self._heads.backbones}
        ensemble = ensemble_version(networks["cydral"], networks["faceapi"])
        return _version(self.name, self.age_weight, self._heads.version(), ensemble)

    def align(self, image: RGBImage, detections: Sequence[Detection]) -> Chips:
        """The heads' chips, which hold the ensemble's (the same face-api and Cydral crops)."""
        return self._heads.align(image, detections)

    def estimate(self, chips: Chips) -> list[AgeGenderEstimate]:
        """The heads' estimates and the ensemble's from one run of each network."""
        if not chips:
            return []
        face, mirrored = self._heads.features_pair(chips)
        first = self._heads.estimate_features(face, mirrored)
        # as the ensemble's own mirror pass: each output of the face and its mirror averaged
        once, twice = self._outputs(face), self._outputs(mirrored)
        outputs = {key: ((once[key] + twice[key]) / 2).astype(np.float32) for key in once}
        age, male, half_width = combine_outputs(self._weights, outputs)
        return mix_estimates(first, estimates(age, half_width, male), self.age_weight)

    def _outputs(self, features: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """The ensemble's member outputs (see EnsembleEstimator.member_outputs) of one pass."""
        faceapi, cydral = features[:, self._faceapi :], features[:, self._cydral :]
        return {
            "cydral_age": expected_age(cydral[:, _CYDRAL_AGE_CLASSES], CYDRAL_AGE_YEARS),
            "cydral_male": cydral[:, _CYDRAL_MALE],
            "faceapi_age": faceapi[:, _FACEAPI_AGE] * np.float32(100.0),
            "faceapi_male": faceapi[:, _FACEAPI_MALE],
        }


def create_mixture(
    name: str, first: str, second: str, threads: int | None, *, age_weight: float
) -> Estimator:
    """The mix of estimators `first` and `second` (names or folders): trained heads that read
    face-api and Cydral mixed with `ensemble` share those networks' runs
    (HeadsEnsembleEstimator); any other pair runs each member on its own."""
    from agelens.models.backends import create_estimator

    built = create_estimator(first, threads)
    if (
        second == "ensemble"
        and isinstance(built, HeadsEstimator)
        and ensemble_columns(built) is not None
    ):
        return HeadsEnsembleEstimator(name, built, age_weight=age_weight)
    return MixtureEstimator(name, built, create_estimator(second, threads), age_weight=age_weight)
