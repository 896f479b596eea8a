"""Backends chosen by name: the detectors and estimators an Analyzer can be built from.

Tests may register extra factories (a fake estimator for plumbing tests, say); the real
backends are registered here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from agelens.errors import UnknownModelError
from agelens.models.base import Detector, Estimator
from agelens.models.registry import get_spec

DetectorFactory = Callable[[int | None], Detector]
EstimatorFactory = Callable[[int | None], Estimator]
_Built = TypeVar("_Built", Detector, Estimator)


def _blazeface(name: str) -> DetectorFactory:
    def create(threads: int | None) -> Detector:
        from agelens.models.blazeface import BlazeFaceDetector

        return BlazeFaceDetector(get_spec(name), threads=threads)

    return create


def _blazeface_fast(threads: int | None) -> Detector:
    from agelens.models.blazeface import BlazeFaceDetector, RangeSwitchingDetector

    return RangeSwitchingDetector(
        BlazeFaceDetector(get_spec("blazeface-short"), threads=threads, tiled=False),
        BlazeFaceDetector(get_spec("blazeface-full"), threads=threads, tiled=False),
    )


def _blazeface_auto(threads: int | None) -> Detector:
    from agelens.models.blazeface import BlazeFaceDetector, RangeSwitchingDetector

    return RangeSwitchingDetector(
        BlazeFaceDetector(get_spec("blazeface-short"), threads=threads, tiled=False),
        BlazeFaceDetector(get_spec("blazeface-full"), threads=threads),
        name="blazeface-auto",
        full_first=True,
    )


#: input of the short-range model in `blazeface-portrait` (see RangeSwitchingDetector)
PORTRAIT_INPUT = 96


def _blazeface_portrait(threads: int | None) -> Detector:
    from agelens.models.blazeface import BlazeFaceDetector, RangeSwitchingDetector

    short = get_spec("blazeface-short")
    return RangeSwitchingDetector(
        BlazeFaceDetector(short, threads=threads, tiled=False),
        BlazeFaceDetector(get_spec("blazeface-full"), threads=threads, tiled=False),
        name="blazeface-portrait",
        portrait=BlazeFaceDetector(short, threads=threads, tiled=False, input_size=PORTRAIT_INPUT),
    )


def _cydral(threads: int | None) -> Estimator:
    from agelens.models.cydral import CydralEstimator

    return CydralEstimator(get_spec("cydral"), threads=threads)


def _faceapi(threads: int | None) -> Estimator:
    from agelens.models.faceapi import FaceApiEstimator

    return FaceApiEstimator(get_spec("faceapi"), threads=threads)


def _faceres(name: str) -> EstimatorFactory:
    def create(threads: int | None) -> Estimator:
        from agelens.models.faceres import FaceResEstimator

        return FaceResEstimator(get_spec(name), threads=threads)

    return create


def _ensemble(threads: int | None) -> Estimator:
    from agelens.models.ensemble import EnsembleEstimator

    return EnsembleEstimator.default(threads=threads)


@dataclass(frozen=True, slots=True)
class Backend(Generic[_Built]):
    """A detector or estimator chosen by name: `factory(threads)` builds it, and it needs the
    registry models `required_models` fetched."""

    factory: Callable[[int | None], _Built]
    required_models: tuple[str, ...]


_SHORT_AND_FULL = ("blazeface-short", "blazeface-full")

DETECTORS: dict[str, Backend[Detector]] = {
    "blazeface-full": Backend(_blazeface("blazeface-full"), ("blazeface-full",)),
    "blazeface-short": Backend(_blazeface("blazeface-short"), ("blazeface-short",)),
    "blazeface-fast": Backend(_blazeface_fast, _SHORT_AND_FULL),
    "blazeface-portrait": Backend(_blazeface_portrait, _SHORT_AND_FULL),
    "blazeface-auto": Backend(_blazeface_auto, _SHORT_AND_FULL),
}

ESTIMATORS: dict[str, Backend[Estimator]] = {
    "ensemble": Backend(_ensemble, ("cydral", "faceapi")),
    "cydral": Backend(_cydral, ("cydral",)),
    "faceapi": Backend(_faceapi, ("faceapi",)),
    "faceres": Backend(_faceres("faceres"), ("faceres",)),
    "faceres-deep": Backend(_faceres("faceres-deep"), ("faceres-deep",)),
}


#: The tiled full-range BlazeFace, and on images up to 512 px the short-range model where it
#: finds nothing: docs/detectors.md.
DEFAULT_DETECTOR = "blazeface-auto"
DEFAULT_ESTIMATOR = "ensemble"


@dataclass(frozen=True, slots=True)
class Preset:
    """A detector + estimator pair chosen for a trade-off, with the terms of its weights."""

    detector: str
    estimator: str
    weights_terms: str


#: Measured accuracy and speed of each preset: README.md, "Presets".
PRESETS: dict[str, Preset] = {
    "fastest": Preset(
        "blazeface-portrait",
        "faceapi96-distilled",
        "non-commercial research only: face-api's network (MIT) distilled by agelens at 96 px "
        "from heads-utkface on UTKFace",
    ),
    "fast": Preset(
        "blazeface-fast",
        "faceapi",
        "permissive: BlazeFace (Apache-2.0), face-api AgeGenderNet (MIT)",
    ),
    "balanced": Preset(
        DEFAULT_DETECTOR,
        DEFAULT_ESTIMATOR,
        "permissive networks: BlazeFace (Apache-2.0), Cydral (CC0), face-api (MIT); "
        "8 combination weights fitted by agelens on UTKFace dev",
    ),
    # Kept on the detector its heads were measured with until they are measured again.
    "accurate": Preset(
        "blazeface-full",
        "heads-utkface",
        "non-commercial research only: heads trained by agelens on UTKFace, over faceres "
        "(HSE, Apache-2.0), face-api (MIT) and Cydral (CC0) embeddings",
    ),
}


def resolve_models(
    preset: str | None, detector: str | None, estimator: str | None
) -> tuple[str, str]:
    """(detector, estimator): explicit names win over the preset, the preset over the
    defaults. UnknownModelError for an unknown preset."""
    if preset is not None and preset not in PRESETS:
        raise UnknownModelError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    chosen = PRESETS[preset] if preset else Preset(DEFAULT_DETECTOR, DEFAULT_ESTIMATOR, "")
    return detector or chosen.detector, estimator or chosen.estimator


def create_detector(name: str, threads: int | None = None) -> Detector:
    """A detector by name; UnknownModelError lists the choices."""
    if name not in DETECTORS:
        raise UnknownModelError(f"unknown detector {name!r}; choose from {sorted(DETECTORS)}")
    return DETECTORS[name].factory(threads)


def estimator_names() -> list[str]:
    """Every estimator that can be created by name: the registered backends and the trained
    models (shipped with agelens, or trained into $AGELENS_HOME/trained)."""
    from agelens.models.heads import trained_folders

    return sorted({*ESTIMATORS, *trained_folders()})


def create_estimator(name: str, threads: int | None = None) -> Estimator:
    """An estimator by name, or a trained model by name or folder path; UnknownModelError
    lists the choices."""
    if name in ESTIMATORS:
        return ESTIMATORS[name].factory(threads)
    from agelens.models.heads import HeadsEstimator, card_kind, find_trained

    folder = find_trained(name)
    if folder is None:
        raise UnknownModelError(f"unknown estimator {name!r}; choose from {estimator_names()}")
    if card_kind(folder) == "agelens-finetuned":
        from agelens.models.finetuned import load_finetuned

        return load_finetuned(folder, threads=threads)
    return HeadsEstimator(folder, threads=threads)
