"""The model registry: every spec pinned by sha256, licensed, uniquely named and reachable."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing

import pytest

from agelens.errors import UnknownModelError
from agelens.models import backends, registry
from agelens.models.registry import ARCHIVE_SHA256, MODELS, get_spec
from agelens.models.spec import (
    BlazeFaceSpecParams,
    DlibChipParams,
    FaceCropParams,
    ModelSpec,
    SpecParams,
)

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# an exact version: no ranges, wildcards, tags or spaces
EXACT_VERSION = re.compile(r"\d+(\.\d+)*([.-]?[A-Za-z0-9]+)*")

SPECS = [pytest.param(spec, id=name) for name, spec in sorted(MODELS.items())]


def test_registry_is_not_empty() -> None:
    assert MODELS


@pytest.mark.parametrize("spec", SPECS)
def test_spec_is_pinned_by_sha256(spec: ModelSpec) -> None:
    source = spec.source
    assert source.registry in ("pypi", "npm")
    assert source.package
    assert EXACT_VERSION.fullmatch(source.version), source.version
    assert source.files, "a source must pin at least one file"
    assert spec.kept_files, "a model must keep at least one file"
    hashes = {
        "archive": ARCHIVE_SHA256[source.pinned],
        **{f"source:{path}": digest for path, digest in source.files.items()},
        **{f"kept:{name}": digest for name, digest in spec.kept_files.items()},
    }
    for what, digest in hashes.items():
        assert isinstance(digest, str)
        assert SHA256_HEX.fullmatch(digest), f"{spec.name} {what}: {digest!r}"


@pytest.mark.parametrize("spec", SPECS)
def test_spec_is_licensed_and_described(spec: ModelSpec) -> None:
    assert spec.license.strip()
    assert spec.description.strip()


@pytest.mark.parametrize("spec", SPECS)
def test_kept_files_are_plain_names(spec: ModelSpec) -> None:
    for name in spec.kept_files:
        assert name not in ("", ".", "..")
        assert not {"/", "\\"} & set(name), name
    if spec.converter is None:
        # without a converter a kept file is a source file under its base name, same bytes
        assert {path.rsplit("/", 1)[-1]: h for path, h in spec.source.files.items()} == dict(
            spec.kept_files
        )


@pytest.mark.parametrize("spec", SPECS)
def test_spec_preprocessing_is_declared(spec: ModelSpec) -> None:
    height, width = spec.input_hw
    assert min(height, width) > 0
    assert spec.scale > 0
    assert all(0 <= value <= 255 for value in spec.mean)
    assert spec.channel_order in ("RGB", "BGR")


#: Each registered model's params, as published with its graph or fitted (see the readers).
EXPECTED_PARAMS: dict[str, SpecParams] = {
    "blazeface-full": BlazeFaceSpecParams(strides=(4,), anchors_per_cell=(1,), score_threshold=0.5),
    "blazeface-short": BlazeFaceSpecParams(
        strides=(8, 16), anchors_per_cell=(2, 6), score_threshold=0.5
    ),
    "cydral": DlibChipParams(age_chip=64, gender_chip=32, chip_padding=0.2),
    "faceapi": FaceCropParams(box_scale=1.0, box_shift_y=0.03),
    "faceres": FaceCropParams(box_scale=1.25, box_shift_y=0.0),
    "faceres-deep": FaceCropParams(box_scale=1.25, box_shift_y=0.0),
}


def test_every_registered_model_has_expected_params() -> None:
    assert set(EXPECTED_PARAMS) == set(MODELS)


def _fits(value: object, hint: object) -> bool:
    """`value` is of the field type `hint` (int, float, or tuple[int, ...]); no bool as a
    number, and an int is a float, as mypy counts it."""
    if typing.get_origin(hint) is tuple:
        (item, _) = typing.get_args(hint)
        return type(value) is tuple and all(_fits(v, item) for v in value)
    if hint is float:
        return type(value) in (int, float)
    return type(value) is hint


@pytest.mark.parametrize("spec", SPECS)
def test_spec_params_are_the_families_dataclass_with_typed_values(spec: ModelSpec) -> None:
    expected = EXPECTED_PARAMS[spec.name]
    assert type(spec.params) is type(expected)
    assert spec.params == expected
    assert spec.params_as(type(expected)) is spec.params
    hints = typing.get_type_hints(type(expected))
    for field in dataclasses.fields(expected):
        value = getattr(spec.params, field.name)
        assert _fits(value, hints[field.name]), f"{spec.name} {field.name}: {value!r}"


def registered_names_in_source() -> list[str]:
    """Every `name=` given to a `ModelSpec(...)` in registry.py, duplicates included.

    `MODELS` is a dict built from the specs, so a duplicate name would silently replace the
    earlier spec there; only the source shows it.
    """
    tree = ast.parse(inspect.getsource(registry))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ModelSpec":
            for keyword in node.keywords:
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                    names.append(keyword.value.value)
    return names


def test_names_are_unique() -> None:
    names = registered_names_in_source()
    assert sorted(names) == sorted(set(names))
    assert set(names) == set(MODELS)
    assert all(spec.name == key for key, spec in MODELS.items())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_get_spec_returns_the_registered_spec(name: str) -> None:
    assert get_spec(name) is MODELS[name]


@pytest.mark.parametrize(
    "name", ["", "nope", "BlazeFace-Full", "blazeface"], ids=["empty", "unknown", "case", "prefix"]
)
def test_get_spec_of_an_unknown_name_lists_the_known_ones(name: str) -> None:
    with pytest.raises(UnknownModelError) as raised:
        get_spec(name)
    message = str(raised.value)
    assert repr(name) in message
    for known in MODELS:
        assert known in message
    assert isinstance(raised.value, KeyError)


def test_every_archive_hash_belongs_to_a_registered_source() -> None:
    assert set(ARCHIVE_SHA256) == {spec.source.pinned for spec in MODELS.values()}


@pytest.mark.parametrize("backend", sorted({*backends.DETECTORS, *backends.ESTIMATORS}))
def test_required_models_cover_every_backend_with_registered_models(backend: str) -> None:
    assert not (backend in backends.DETECTORS and backend in backends.ESTIMATORS)
    required = (
        backends.DETECTORS[backend].required_models
        if backend in backends.DETECTORS
        else backends.ESTIMATORS[backend].required_models
    )
    assert required, f"{backend} needs at least one model"
    for name in required:
        assert name in MODELS, f"{backend} requires unregistered model {name!r}"
    if backend in backends.DETECTORS:
        assert all(MODELS[name].task == "detector" for name in required)
