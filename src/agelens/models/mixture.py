"""`heads-ensemble`: the `accurate` preset's estimator. Ages are a weighted mean of two
members' (by default 2/3 `heads-utkface` and 1/3 `age-stack`, below; `ensemble` before
2026-12-08); gender and P(male) are the first one's.

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

`second="age-stack"` (the default since 2026-12-08) mixes in, instead of the ensemble's age, a
linear stack of all four networks' own ages (`AGE_STACK`: faceres's and faceres-deep's too,
which the heads' features also hold), fitted on UTKFace `dev` by `scripts/fit_age_stack.py`:
`aaf` −0.027 ± 0.009 years per face against the ensemble's, UTKFace no measurable change
(docs/accuracy.md, "Mixing the heads with the ensemble").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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

#: The `second` member that stacks the four networks' own ages (`AGE_STACK`).
AGE_STACK_MEMBER = "age-stack"
_FACERES_YEARS = np.arange(1, 101, dtype=np.float64)
_FACERES_AGE_CLASSES = slice(1024, 1124)


@dataclass(frozen=True, slots=True)
class AgeStack:
    """Age in years = `bias` + each weight x that network's own age, each age the mean of the
    face's and its mirror image's: faceres's and faceres-deep's expected age over their 100
    classes, face-api's regressed age, Cydral's expected age (`network_ages`)."""

    bias: float
    faceres: float
    faceres_deep: float
    faceapi: float
    cydral: float

    def age(self, ages: dict[str, NDArray[np.float64]]) -> NDArray[np.float64]:
        """The stacked age from `network_ages` (of the face and mirror, averaged)."""
        age = (
            self.bias
            + self.faceres * ages["faceres"]
            + self.faceres_deep * ages["faceres-deep"]
            + self.faceapi * ages["faceapi"]
            + self.cydral * ages["cydral"]
        )
        return np.asarray(np.clip(age, 0.0, 110.0), dtype=np.float64)


#: Least squares on the 18,331 faces of UTKFace `dev` that `heads-utkface` was trained on (its
#: backbones' features, face and mirror averaged): `python scripts/fit_age_stack.py
#: ../shared/data/utkface --cache artifacts/train-cache` (2026-12-08, agelens 0.1.0).
AGE_STACK = AgeStack(
    bias=0.2592, faceres=0.0833, faceres_deep=0.1816, faceapi=0.6183, cydral=0.1301
)


def backbone_offsets(heads: HeadsEstimator) -> dict[str, int]:
    """Where each registry network's features start among the heads' (`faceres` for
    `faceres@192-int8`), in the order of `heads.backbones`."""
    from agelens.models.embeddings import backbone_model

    offsets, start = {}, 0
    for backbone in heads.backbones:
        offsets[backbone_model(backbone.name)] = start
        start += backbone.dim
    return offsets


def network_ages(
    features: NDArray[np.float32], offsets: dict[str, int]
) -> dict[str, NDArray[np.float64]]:
    """Each network's own age (years) from the heads' features: faceres's and faceres-deep's
    expected age over their classes, face-api's regressed age, Cydral's expected age."""
    ages = {}
    for model in ("faceres", "faceres-deep"):
        start = offsets[model]
        probabilities = features[:, start:][:, _FACERES_AGE_CLASSES].astype(np.float64)
        ages[model] = probabilities @ _FACERES_YEARS
    ages["faceapi"] = features[:, offsets["faceapi"] + _FACEAPI_AGE].astype(np.float64) * 100.0
    cydral = features[:, offsets["cydral"] :]
    ages["cydral"] = expected_age(cydral[:, _CYDRAL_AGE_CLASSES], CYDRAL_AGE_YEARS).astype(
        np.float64
    )
    return ages


def ensemble_columns(heads: HeadsEstimator) -> tuple[int, int] | None:
    """Where face-api's and Cydral's features start among the heads' (in the order of
    `heads.backbones`), or None when the heads do not read both networks."""
    offsets = backbone_offsets(heads)
    if not {"faceapi", "cydral"} <= set(offsets):
        return None
    return offsets["faceapi"], offsets["cydral"]


class HeadsEnsembleEstimator:
    """The mix of trained heads and the `ensemble` (its weights, with its mirror pass) that
    reads the ensemble's inputs from the heads' features: the same answers as a
    MixtureEstimator of the two (to float32 rounding) without loading or running face-api and
    Cydral a second time. With `stack`, the second member's age is that stack of the four
    networks' own ages instead (its interval the ensemble's formula at that age)."""

    def __init__(
        self,
        name: str,
        heads: HeadsEstimator,
        *,
        age_weight: float,
        weights: EnsembleWeights = DEFAULT_WEIGHTS,
        stack: AgeStack | None = None,
    ) -> None:
        columns = ensemble_columns(heads)
        if columns is None:
            raise ValueError("the heads must read faceapi and cydral")
        self._offsets = backbone_offsets(heads)
        if stack is not None and not {"faceres", "faceres-deep"} <= set(self._offsets):
            raise ValueError(
                f"{AGE_STACK_MEMBER} needs heads that read faceres, faceres-deep, faceapi "
                f"and cydral, not {', '.join(b.name for b in heads.backbones)}"
            )
        self.name = name
        self.age_weight = _checked(age_weight)
        self._heads = heads
        self._weights = weights
        self._stack = stack
        self._faceapi, self._cydral = columns

    def version(self) -> str:
        """The weights, the heads' version and the second member's (the heads' networks)."""
        if self._stack is not None:
            second = f"{AGE_STACK_MEMBER} of {', '.join(self._offsets)} (fitted on UTKFace dev)"
            return _version(self.name, self.age_weight, self._heads.version(), second)
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
        if self._stack is not None:
            once_ages = network_ages(face, self._offsets)
            twice_ages = network_ages(mirrored, self._offsets)
            age = self._stack.age({k: (once_ages[k] + twice_ages[k]) / 2 for k in once_ages})
            half_width = self._weights.interval_bias + self._weights.interval_slope * age
            # the mix reads the second member's age and interval only; P(male) is the heads'
            second = estimates(age, half_width, [e.gender_probability_male for e in first])
            return mix_estimates(first, second, self.age_weight)
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
    if second == AGE_STACK_MEMBER:
        if not isinstance(built, HeadsEstimator) or ensemble_columns(built) is None:
            raise ValueError(f"{AGE_STACK_MEMBER} mixes with trained heads that read its networks")
        return HeadsEnsembleEstimator(name, built, age_weight=age_weight, stack=AGE_STACK)
    if (
        second == "ensemble"
        and isinstance(built, HeadsEstimator)
        and ensemble_columns(built) is not None
    ):
        return HeadsEnsembleEstimator(name, built, age_weight=age_weight)
    return MixtureEstimator(name, built, create_estimator(second, threads), age_weight=age_weight)
