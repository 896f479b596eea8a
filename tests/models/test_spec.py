"""Model specs: each family's params are typed, frozen and checked when built, and a reader
gets its family's params or a typed error."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from agelens.errors import InvalidOptionError
from agelens.models.spec import (
    BlazeFaceSpecParams,
    DlibChipParams,
    FaceCropParams,
    ModelSpec,
    PackageSource,
    SpecParams,
)

BLAZEFACE = {"strides": (8, 16), "anchors_per_cell": (2, 6), "score_threshold": 0.5}
DLIB_CHIPS = {"age_chip": 64, "gender_chip": 32, "chip_padding": 0.2}
FACE_CROP = {"box_scale": 1.25, "box_shift_y": 0.03}


def spec_with(params: SpecParams | None) -> ModelSpec:
    return ModelSpec(
        name="some-model",
        task="age_gender",
        description="a spec for these tests",
        source=PackageSource("pypi", "somepkg", "1.0.0", {"model.onnx": "0" * 64}),
        kept_files={"model.onnx": "0" * 64},
        license="CC0-1.0",
        params=params,
    )


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        pytest.param(BlazeFaceSpecParams, BLAZEFACE, id="blazeface"),
        pytest.param(DlibChipParams, DLIB_CHIPS, id="dlib-chips"),
        pytest.param(FaceCropParams, FACE_CROP, id="face-crop"),
    ],
)
def test_params_keep_their_values_and_are_frozen(
    kind: type[SpecParams], values: Mapping[str, object]
) -> None:
    params = kind(**values)  # type: ignore[arg-type]
    assert dataclasses.asdict(params) == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(params, next(iter(values)), None)
    assert not hasattr(params, "__dict__")  # slotted


def test_face_crop_shift_defaults_to_zero() -> None:
    assert FaceCropParams(box_scale=1.25).box_shift_y == 0.0


@pytest.mark.parametrize(
    ("kind", "values", "field"),
    [
        pytest.param(BlazeFaceSpecParams, {**BLAZEFACE, "strides": ()}, "strides", id="no-strides"),
        pytest.param(
            BlazeFaceSpecParams, {**BLAZEFACE, "strides": [8, 16]}, "strides", id="strides-list"
        ),
        pytest.param(
            BlazeFaceSpecParams, {**BLAZEFACE, "strides": (8, 0)}, "strides", id="zero-stride"
        ),
        pytest.param(
            BlazeFaceSpecParams,
            {**BLAZEFACE, "anchors_per_cell": (2,)},
            "anchors_per_cell",
            id="anchors-not-one-per-stride",
        ),
        pytest.param(
            BlazeFaceSpecParams,
            {**BLAZEFACE, "anchors_per_cell": (2, True)},
            "anchors_per_cell",
            id="bool-anchor-count",
        ),
        pytest.param(
            BlazeFaceSpecParams,
            {**BLAZEFACE, "score_threshold": 1.5},
            "score_threshold",
            id="threshold-above-1",
        ),
        pytest.param(
            BlazeFaceSpecParams,
            {**BLAZEFACE, "score_threshold": "0.5"},
            "score_threshold",
            id="threshold-as-text",
        ),
        pytest.param(DlibChipParams, {**DLIB_CHIPS, "age_chip": "64"}, "age_chip", id="chip-text"),
        pytest.param(DlibChipParams, {**DLIB_CHIPS, "age_chip": 64.0}, "age_chip", id="chip-float"),
        pytest.param(
            DlibChipParams, {**DLIB_CHIPS, "gender_chip": 0}, "gender_chip", id="chip-zero"
        ),
        pytest.param(
            DlibChipParams,
            {**DLIB_CHIPS, "chip_padding": -0.1},
            "chip_padding",
            id="negative-padding",
        ),
        pytest.param(
            DlibChipParams,
            {**DLIB_CHIPS, "chip_padding": float("nan")},
            "chip_padding",
            id="nan-padding",
        ),
        pytest.param(FaceCropParams, {**FACE_CROP, "box_scale": 0}, "box_scale", id="scale-zero"),
        pytest.param(
            FaceCropParams, {**FACE_CROP, "box_scale": None}, "box_scale", id="scale-none"
        ),
        pytest.param(
            FaceCropParams, {**FACE_CROP, "box_shift_y": 2.0}, "box_shift_y", id="shift-too-far"
        ),
        pytest.param(
            FaceCropParams, {**FACE_CROP, "box_shift_y": False}, "box_shift_y", id="shift-bool"
        ),
    ],
)
def test_malformed_params_name_the_field(
    kind: type[SpecParams], values: Mapping[str, object], field: str
) -> None:
    with pytest.raises(InvalidOptionError, match=rf"^{kind.__name__}\.{field} must "):
        kind(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"age_chip": 64, "gender_chip": 32}, "chip_padding", id="missing"),
        pytest.param({**DLIB_CHIPS, "chip_size": 64}, "chip_size", id="unknown"),
    ],
)
def test_params_mapping_with_a_missing_or_unknown_field_names_it(
    values: Mapping[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        DlibChipParams(**values)  # type: ignore[arg-type]


def test_params_as_gives_the_readers_family() -> None:
    chips = DlibChipParams(**DLIB_CHIPS)  # type: ignore[arg-type]
    assert spec_with(chips).params_as(DlibChipParams) is chips


@pytest.mark.parametrize(
    ("params", "found"),
    [
        pytest.param(DlibChipParams(age_chip=64, gender_chip=32, chip_padding=0.2), "DlibChip"),
        pytest.param(None, "no params"),
    ],
)
def test_params_as_of_another_family_is_a_typed_error(
    params: SpecParams | None, found: str
) -> None:
    with pytest.raises(InvalidOptionError, match=f"'some-model' has {found}.*BlazeFaceSpecParams"):
        spec_with(params).params_as(BlazeFaceSpecParams)
