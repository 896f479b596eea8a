"""Backends chosen by name: the detectors and estimators an Analyzer can be built from.

One record per backend: `Backend(factory, required_models, params)`, where `params` is a
frozen dataclass of the backend's kind (BlazeFaceParams, RangeSwitchingParams, ...) and
variants of a kind (`blazeface-fast`, `-portrait`, `-auto`) are the same factory with other
params. `create_detector(name, **overrides)` and `create_estimator(name, **overrides)` build
one with some params replaced, type-checked. Tests may register extra backends (a fake
estimator for plumbing tests, say); the real ones are registered here.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from agelens.errors import InvalidOptionError, UnknownModelError
from agelens.models.base import Detector, Estimator
from agelens.models.registry import get_spec

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_ESTIMATOR",
    "DETECTORS",
    "ESTIMATORS",
    "PRESETS",
    "Backend",
    "BlazeFaceParams",
    "EnsembleParams",
    "FaceResParams",
    "NoParams",
    "Preset",
    "RangeSwitchingParams",
    "create_detector",
    "create_estimator",
    "estimator_names",
    "params_as_dict",
    "resolve_models",
]

_Built = TypeVar("_Built", Detector, Estimator)
_Params = TypeVar("_Params", bound="DataclassInstance")


# ----------------------------------------------------------------------------- parameters


def _check_thresholds(score_threshold: float | None, iou_threshold: float) -> None:
    if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
        raise InvalidOptionError(f"score_threshold must be within 0 and 1, not {score_threshold}")
    if not 0.0 < iou_threshold <= 1.0:
        raise InvalidOptionError(
            f"iou_threshold must be above 0 and at most 1, not {iou_threshold}"
        )


@dataclass(frozen=True, slots=True)
class BlazeFaceParams:
    """One BlazeFace model (`blazeface-full`, `blazeface-short`).

    `tiled`: large images are also searched tile by tile (finds faces under ~1/20 of a large
    photo's side, at several times the cost). `input_size`: the network's square input in
    pixels, a positive multiple of 16 (None: the size it was trained at). `score_threshold`:
    the minimum face probability (None: the model's own, 0.5). `iou_threshold`: overlap above
    which candidates merge into one face.
    """

    model: Literal["blazeface-full", "blazeface-short"]
    tiled: bool = True
    input_size: int | None = None
    score_threshold: float | None = None
    iou_threshold: float = 0.3

    def __post_init__(self) -> None:
        if self.input_size is not None and (self.input_size <= 0 or self.input_size % 16):
            raise InvalidOptionError(
                f"input_size must be a positive multiple of 16, not {self.input_size}"
            )
        _check_thresholds(self.score_threshold, self.iou_threshold)


@dataclass(frozen=True, slots=True)
class RangeSwitchingParams:
    """The short-range BlazeFace on small images, the full-range one on large ones
    (`blazeface-fast`, `blazeface-portrait`, `blazeface-auto`; see RangeSwitchingDetector).

    `name`: the detector's name in results. `short_max_side`: the longest side, in pixels, of
    an image counted as small. `full_first`: small images go to the full-range model first,
    to the short-range one only where it finds nothing. `full_tiled`: the full-range model
    also searches large images tile by tile. `portrait_input_size`: small images are first
    searched by the short-range model at this input (96 or 128 px, the sizes its boxes are
    mapped for), at 128 px only where that finds nothing (None: no such first pass).
    `score_threshold`, `iou_threshold`: as BlazeFaceParams', for every model.
    """

    name: str
    short_max_side: int = 512
    full_first: bool = False
    full_tiled: bool = False
    portrait_input_size: Literal[96, 128] | None = None
    score_threshold: float | None = None
    iou_threshold: float = 0.3

    def __post_init__(self) -> None:
        if self.short_max_side < 0:
            raise InvalidOptionError(
                f"short_max_side must be 0 or more pixels, not {self.short_max_side}"
            )
        _check_thresholds(self.score_threshold, self.iou_threshold)


@dataclass(frozen=True, slots=True)
class EnsembleParams:
    """The `ensemble` estimator. `flip`: each face also runs mirrored and the two readings
    are averaged (the stack's weights were fitted on flip-averaged outputs)."""

    flip: bool = True


@dataclass(frozen=True, slots=True)
class MixtureParams:
    """`heads-ensemble` (models/mixture.py): ages `age_weight` x estimator `first`'s +
    (1 - `age_weight`) x `second`'s; gender `first`'s. 2/3 was the larger of the two weights
    tried (1/2, 2/3), both better than the heads alone on `aaf` (docs/accuracy.md). `second`
    is an estimator, or `age-stack`: the four networks' own ages stacked with weights fitted
    on UTKFace `dev` (`mixture.AGE_STACK`), read from `first`'s features."""

    first: str = "heads-utkface"
    second: str = "age-stack"
    age_weight: float = 2 / 3


@dataclass(frozen=True, slots=True)
class FaceResParams:
    """An HSE faceres estimator (`faceres`, `faceres-deep`): which of the two networks."""

    model: Literal["faceres", "faceres-deep"]


@dataclass(frozen=True, slots=True)
class NoParams:
    """A backend with nothing to set (`cydral`, `faceapi`)."""


# ----------------------------------------------------------------------------- factories


def _blazeface(threads: int | None, params: BlazeFaceParams) -> Detector:
    from agelens.models.blazeface import BlazeFaceDetector

    return BlazeFaceDetector(
        get_spec(params.model),
        threads=threads,
        tiled=params.tiled,
        input_size=params.input_size,
        score_threshold=params.score_threshold,
        iou_threshold=params.iou_threshold,
    )


def _range_switching(threads: int | None, params: RangeSwitchingParams) -> Detector:
    from agelens.models.blazeface import BlazeFaceDetector, RangeSwitchingDetector

    def model(
        name: str, *, tiled: bool = False, input_size: int | None = None
    ) -> BlazeFaceDetector:
        return BlazeFaceDetector(
            get_spec(name),
            threads=threads,
            tiled=tiled,
            input_size=input_size,
            score_threshold=params.score_threshold,
            iou_threshold=params.iou_threshold,
        )

    portrait = params.portrait_input_size
    return RangeSwitchingDetector(
        model("blazeface-short"),
        model("blazeface-full", tiled=params.full_tiled),
        name=params.name,
        short_max_side=params.short_max_side,
        portrait=None if portrait is None else model("blazeface-short", input_size=portrait),
        full_first=params.full_first,
    )


def _cydral(threads: int | None, params: NoParams) -> Estimator:
    from agelens.models.cydral import CydralEstimator

    return CydralEstimator(get_spec("cydral"), threads=threads)


def _faceapi(threads: int | None, params: NoParams) -> Estimator:
    from agelens.models.faceapi import FaceApiEstimator

    return FaceApiEstimator(get_spec("faceapi"), threads=threads)


def _faceres(threads: int | None, params: FaceResParams) -> Estimator:
    from agelens.models.faceres import FaceResEstimator

    return FaceResEstimator(get_spec(params.model), threads=threads)


def _ensemble(threads: int | None, params: EnsembleParams) -> Estimator:
    from agelens.models.ensemble import EnsembleEstimator

    return EnsembleEstimator.default(threads=threads, flip=params.flip)


def _mixture(threads: int | None, params: MixtureParams) -> Estimator:
    from agelens.models.mixture import create_mixture

    return create_mixture(
        "heads-ensemble", params.first, params.second, threads, age_weight=params.age_weight
    )


# ----------------------------------------------------------------------------- the records


@dataclass(frozen=True, slots=True)
class Backend(Generic[_Built, _Params]):
    """A detector or estimator chosen by name: `factory(threads, params)` builds it with its
    typed `params` (a frozen dataclass of the backend's kind), and it needs the registry
    models `required_models` fetched. Variants of one kind are one factory with other params.
    """

    factory: Callable[[int | None, _Params], _Built]
    required_models: tuple[str, ...]
    params: _Params

    def with_overrides(self, **overrides: object) -> _Params:
        """`params` with some fields replaced. InvalidOptionError, naming the valid fields,
        for a field the params do not have or a value not of the field's type."""
        return _replaced(self.params, overrides)

    def build(self, threads: int | None = None, **overrides: object) -> _Built:
        """The detector or estimator, with `overrides` applied to its params."""
        return self.factory(threads, self.with_overrides(**overrides))


def _field_list(params: DataclassInstance) -> str:
    return ", ".join(
        f"{field.name}: {field.type} = {getattr(params, field.name)!r}"
        for field in dataclasses.fields(params)
    )


def _replaced(params: _Params, overrides: dict[str, object]) -> _Params:
    hints = get_type_hints(type(params))
    kind = type(params).__name__
    for key, value in overrides.items():
        if key not in hints:
            valid = _field_list(params) or "none"
            raise InvalidOptionError(f"{kind} has no field {key!r}; its fields: {valid}")
        if not _has_type(value, hints[key]):
            raise InvalidOptionError(
                f"{kind}.{key} must be {_type_name(params, key)}, not {value!r}; "
                f"its fields: {_field_list(params)}"
            )
    return dataclasses.replace(params, **overrides)


def _type_name(params: DataclassInstance, key: str) -> str:
    return str(next(f.type for f in dataclasses.fields(params) if f.name == key))


def _has_type(value: object, hint: Any) -> bool:
    """Whether `value` fits `hint`: the few kinds of type the params above use (bool, int,
    float, str, None, Literal and unions of them). A bool is not an int here, though Python
    counts it as one, and an int is a float, as mypy counts it. Our own check rather than
    pydantic's, which is not a core dependency (it comes with the `server` extra)."""
    origin = get_origin(hint)
    if origin is Literal:
        return any(type(value) is type(choice) and value == choice for choice in get_args(hint))
    if origin in (Union, types.UnionType):
        return any(_has_type(value, member) for member in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return type(value) in (int, float)
    if hint in (bool, int, str):
        return type(value) is hint
    raise TypeError(f"parameter type {hint!r} is not checked; add it to _has_type")


def params_as_dict(params: DataclassInstance) -> dict[str, object]:
    """The params as `{"type": class name, "fields": {name: value}, "types": {name: type}}`
    (what `agelens models info` shows)."""
    fields = dataclasses.fields(params)
    return {
        "type": type(params).__name__,
        "fields": {f.name: getattr(params, f.name) for f in fields},
        "types": {f.name: str(f.type) for f in fields},
    }


_SHORT_AND_FULL = ("blazeface-short", "blazeface-full")

#: Values are Backend[Detector, P] for each backend's own params type P.
DETECTORS: dict[str, Backend[Detector, Any]] = {
    "blazeface-full": Backend(
        _blazeface, ("blazeface-full",), BlazeFaceParams(model="blazeface-full")
    ),
    "blazeface-short": Backend(
        _blazeface, ("blazeface-short",), BlazeFaceParams(model="blazeface-short")
    ),
    "blazeface-fast": Backend(
        _range_switching, _SHORT_AND_FULL, RangeSwitchingParams(name="blazeface-fast")
    ),
    "blazeface-portrait": Backend(
        _range_switching,
        _SHORT_AND_FULL,
        RangeSwitchingParams(name="blazeface-portrait", portrait_input_size=96),
    ),
    "blazeface-auto": Backend(
        _range_switching,
        _SHORT_AND_FULL,
        RangeSwitchingParams(name="blazeface-auto", full_first=True, full_tiled=True),
    ),
}

#: Values are Backend[Estimator, P] for each backend's own params type P.
ESTIMATORS: dict[str, Backend[Estimator, Any]] = {
    "ensemble": Backend(_ensemble, ("cydral", "faceapi"), EnsembleParams()),
    "cydral": Backend(_cydral, ("cydral",), NoParams()),
    "faceapi": Backend(_faceapi, ("faceapi",), NoParams()),
    "faceres": Backend(_faceres, ("faceres",), FaceResParams(model="faceres")),
    "faceres-deep": Backend(_faceres, ("faceres-deep",), FaceResParams(model="faceres-deep")),
    "heads-ensemble": Backend(
        _mixture, ("faceres", "faceres-deep", "faceapi", "cydral"), MixtureParams()
    ),
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
        "faceapi112-distilled",
        "non-commercial research only: face-api's network (MIT) distilled by agelens at 112 px "
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
    # blazeface-auto: the same faces and boxes as blazeface-full wherever it finds any, plus the
    # faces it misses on small photos (docs/accuracy.md).
    "accurate": Preset(
        DEFAULT_DETECTOR,
        "heads-ensemble",
        "non-commercial research only: heads trained by agelens on UTKFace, over faceres and "
        "faceres-deep (HSE, Apache-2.0; read at 192 px, in int8 on CPUs with VNNI, "
        "faceres-deep fine-tuned for it by agelens on UTKFace), "
        "face-api (MIT) and Cydral (CC0) "
        "embeddings, their ages mixed 2:1 with a stack of the four networks' own ages "
        "fitted on UTKFace dev",
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


def create_detector(name: str, threads: int | None = None, **overrides: object) -> Detector:
    """A detector by name; UnknownModelError lists the choices. `overrides` replace fields of
    its params (`DETECTORS[name].params`, e.g. `tiled=False`); InvalidOptionError names the
    valid fields for one it does not have or a value of the wrong type."""
    if name not in DETECTORS:
        raise UnknownModelError(f"unknown detector {name!r}; choose from {sorted(DETECTORS)}")
    try:
        return DETECTORS[name].build(threads, **overrides)
    except InvalidOptionError as error:
        raise InvalidOptionError(f"detector {name!r}: {error}") from error


def estimator_names() -> list[str]:
    """Every estimator that can be created by name: the registered backends and the trained
    models (shipped with agelens, or trained into $AGELENS_HOME/trained)."""
    from agelens.models.heads import trained_folders

    return sorted({*ESTIMATORS, *trained_folders()})


def create_estimator(name: str, threads: int | None = None, **overrides: object) -> Estimator:
    """An estimator by name, or a trained model by name or folder path; UnknownModelError
    lists the choices. `overrides` replace fields of a registered estimator's params
    (`ESTIMATORS[name].params`, e.g. `flip=False`); InvalidOptionError names the valid
    fields for one it does not have or a value of the wrong type (trained models have none)."""
    if name in ESTIMATORS:
        try:
            return ESTIMATORS[name].build(threads, **overrides)
        except InvalidOptionError as error:
            raise InvalidOptionError(f"estimator {name!r}: {error}") from error
    from agelens.models.heads import HeadsEstimator, card_kind, find_trained

    folder = find_trained(name)
    if folder is None:
        raise UnknownModelError(f"unknown estimator {name!r}; choose from {estimator_names()}")
    if overrides:
        raise InvalidOptionError(
            f"the trained model {name!r} has no params to override (given {sorted(overrides)})"
        )
    if card_kind(folder) == "agelens-finetuned":
        from agelens.models.finetuned import load_finetuned

        return load_finetuned(folder, threads=threads)
    return HeadsEstimator(folder, threads=threads)
