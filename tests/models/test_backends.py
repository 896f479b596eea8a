"""The same contract for every registered detector and estimator, on real faces."""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

import numpy as np
import pytest
from numpy.typing import NDArray

from agelens.error_codes import HTTP_STATUS
from agelens.errors import InvalidOptionError, UnknownModelError
from agelens.models.backends import (
    DETECTORS,
    ESTIMATORS,
    PRESETS,
    Backend,
    BlazeFaceParams,
    RangeSwitchingParams,
    create_detector,
    create_estimator,
    estimator_names,
    params_as_dict,
    resolve_models,
)
from agelens.models.base import chip_count, concat_chips
from agelens.models.blazeface import BlazeFaceDetector, RangeSwitchingDetector


@pytest.fixture(scope="module")
def portrait_detection(astronaut: NDArray[np.uint8]) -> object:
    return create_detector("blazeface-full").detect_many([astronaut])[0][0]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detector_contract(name: str, astronaut: NDArray[np.uint8]) -> None:
    detector = create_detector(name, threads=1)
    blank = np.zeros((240, 320, 3), np.uint8)
    found = detector.detect_many([astronaut, blank])
    assert len(found) == 2
    assert found[1] == ()
    assert len(found[0]) == 1
    face = found[0][0]
    x1, y1, x2, y2 = face.box_xyxy
    assert 0 <= x1 < x2 <= 512
    assert 0 <= y1 < y2 <= 512
    assert 0.5 <= face.score <= 1.0
    assert len(face.keypoints) == 6
    # Right eye (image-left) is left of the left eye; both eyes above the mouth.
    assert face.keypoints[0][0] < face.keypoints[1][0]
    assert max(face.keypoints[0][1], face.keypoints[1][1]) < face.keypoints[3][1]
    assert detector.detect_many([astronaut]) == detector.detect_many([astronaut])  # deterministic
    assert detector.detect_many([]) == []


@pytest.mark.parametrize("name", estimator_names())
def test_estimator_contract(
    name: str, astronaut: NDArray[np.uint8], portrait_detection: object
) -> None:
    estimator = create_estimator(name, threads=1)
    assert estimator.align(astronaut, []) == {}
    assert estimator.estimate({}) == []
    chips = estimator.align(astronaut, [portrait_detection, portrait_detection])  # type: ignore[list-item]
    assert chip_count(chips) == 2
    for array in chips.values():
        assert array.dtype == np.float32
        assert np.isfinite(array).all()
    estimates = estimator.estimate(chips)
    assert len(estimates) == 2
    first = estimates[0]
    assert 0 <= first.age_interval[0] <= first.age_years <= first.age_interval[1] <= 120
    assert 0.0 <= first.gender_probability_male <= 1.0
    assert first == estimates[1]  # same face twice, same answer
    assert estimator.estimate(chips) == estimates  # deterministic
    # Faces from several images batch into one run with the same results.
    joined = concat_chips([chips, estimator.align(astronaut, [portrait_detection])])  # type: ignore[list-item]
    assert estimator.estimate(joined)[2].age_years == pytest.approx(first.age_years, abs=1e-3)
    assert name in estimator.version() or estimator.version()


@pytest.mark.parametrize("factory", [create_detector, create_estimator])
def test_unknown_backend_names_list_the_choices(factory: object) -> None:
    with pytest.raises(UnknownModelError, match="choose from"):
        factory("no-such-model")  # type: ignore[operator]


@pytest.mark.parametrize(
    ("preset", "detector", "estimator", "expected"),
    [
        (None, None, None, ("blazeface-auto", "ensemble")),
        ("fastest", None, None, ("blazeface-portrait", "faceapi112-distilled")),
        ("fast", None, None, ("blazeface-fast", "faceapi")),
        ("balanced", None, None, ("blazeface-auto", "ensemble")),
        ("accurate", None, None, ("blazeface-auto", "heads-ensemble")),
        ("accurate", "blazeface-fast", None, ("blazeface-fast", "heads-ensemble")),
        ("fast", None, "cydral", ("blazeface-fast", "cydral")),
    ],
)
def test_presets_resolve_and_explicit_names_win(
    preset: str | None, detector: str | None, estimator: str | None, expected: tuple[str, str]
) -> None:
    assert resolve_models(preset, detector, estimator) == expected


def test_every_preset_names_registered_models_and_its_terms() -> None:
    for name, preset in PRESETS.items():
        assert preset.detector in DETECTORS, name
        assert preset.estimator in estimator_names(), name
        assert preset.weights_terms
    assert "permissive" in PRESETS["fast"].weights_terms
    assert "permissive" in PRESETS["balanced"].weights_terms
    assert "non-commercial" in PRESETS["accurate"].weights_terms
    assert "non-commercial" in PRESETS["fastest"].weights_terms
    with pytest.raises(UnknownModelError, match="unknown preset"):
        resolve_models("quickest", None, None)


# ----------------------------------------------------------------------------- params

BACKENDS: dict[str, Backend[Any, Any]] = {**DETECTORS, **ESTIMATORS}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_each_backend_has_frozen_slotted_params_of_its_factorys_type(name: str) -> None:
    backend = BACKENDS[name]
    params = backend.params
    assert dataclasses.is_dataclass(params)
    assert hasattr(type(params), "__slots__")
    assert not hasattr(params, "__dict__")
    assert get_type_hints(backend.factory)["params"] is type(params)
    for field in dataclasses.fields(params):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(params, field.name, getattr(params, field.name))
    # every field's value type-checks against its own annotation: overriding each with its
    # current value is accepted and changes nothing
    same = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    assert backend.with_overrides(**same) == params
    described = params_as_dict(params)
    assert described["type"] == type(params).__name__
    assert described["fields"] == same


@pytest.mark.parametrize(
    ("name", "full_first", "full_tiled", "portrait_input"),
    [
        ("blazeface-fast", False, False, None),
        ("blazeface-portrait", False, False, 96),
        ("blazeface-auto", True, True, None),
    ],
)
def test_the_range_switching_variants_are_one_factory_with_their_params(
    name: str, full_first: bool, full_tiled: bool, portrait_input: int | None
) -> None:
    assert DETECTORS[name].factory is DETECTORS["blazeface-fast"].factory
    detector = create_detector(name, threads=1)
    assert isinstance(detector, RangeSwitchingDetector)
    assert detector.name == name
    assert detector.full_first is full_first
    assert detector.full.tiled is full_tiled
    assert detector.short.tiled is False
    assert detector.short_max_side == 512
    if portrait_input is None:
        assert detector.portrait is None
    else:
        assert detector.portrait is not None
        assert detector.portrait.input_size == portrait_input


def test_overrides_reach_the_built_blazeface(astronaut: NDArray[np.uint8]) -> None:
    detector = create_detector(
        "blazeface-short", threads=1, tiled=False, input_size=96, score_threshold=0.6
    )
    assert isinstance(detector, BlazeFaceDetector)
    assert (detector.tiled, detector.input_size, detector.score_threshold) == (False, 96, 0.6)
    assert detector.name == "blazeface-short@96"
    assert len(detector.detect_many([astronaut])[0]) == 1  # the rewritten network runs
    # the registered params are untouched
    assert DETECTORS["blazeface-short"].params == BlazeFaceParams(model="blazeface-short")


def test_overrides_reach_the_built_range_switching_detector(
    astronaut: NDArray[np.uint8],
) -> None:
    detector = create_detector(
        "blazeface-fast",
        threads=1,
        portrait_input_size=128,
        full_first=True,
        short_max_side=256,
        iou_threshold=0.4,
    )
    assert isinstance(detector, RangeSwitchingDetector)
    assert detector.portrait is not None
    assert detector.portrait.input_size == 128
    assert detector.full_first is True
    assert detector.short_max_side == 256
    assert {d.iou_threshold for d in (detector.short, detector.full, detector.portrait)} == {0.4}
    assert len(detector.detect_many([astronaut])[0]) == 1
    assert DETECTORS["blazeface-fast"].params == RangeSwitchingParams(name="blazeface-fast")


def test_a_high_score_threshold_override_drops_the_face(astronaut: NDArray[np.uint8]) -> None:
    found = create_detector("blazeface-full", threads=1).detect_many([astronaut])[0]
    assert len(found) == 1
    stricter = create_detector("blazeface-full", threads=1, score_threshold=1.0)
    assert stricter.detect_many([astronaut]) == [()]


def test_the_ensemble_flip_override_reaches_the_estimator() -> None:
    from agelens.models.ensemble import EnsembleEstimator

    estimator = create_estimator("ensemble", threads=1, flip=False)
    assert isinstance(estimator, EnsembleEstimator)
    assert estimator.flip is False
    assert ESTIMATORS["ensemble"].params.flip is True


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("blazeface-full", {"tile": False}, "has no field 'tile'; its fields: model: "),
        ("blazeface-full", {"tiled": "no"}, "BlazeFaceParams.tiled must be bool, not 'no'"),
        ("blazeface-full", {"input_size": True}, "input_size must be int | None"),
        ("blazeface-full", {"input_size": 100}, "positive multiple of 16, not 100"),
        ("blazeface-full", {"score_threshold": 1.5}, "within 0 and 1"),
        ("blazeface-full", {"model": "faceapi"}, "model must be Literal"),
        ("blazeface-fast", {"portrait_input_size": 64}, "portrait_input_size must be Literal"),
        ("blazeface-fast", {"short_max_side": 512.0}, "short_max_side must be int"),
        ("ensemble", {"flip": 0}, "EnsembleParams.flip must be bool, not 0"),
        ("cydral", {"flip": True}, "NoParams has no field 'flip'; its fields: none"),
    ],
)
def test_bad_overrides_raise_the_typed_error_naming_the_fields(
    name: str, overrides: dict[str, object], message: str
) -> None:
    create = create_detector if name in DETECTORS else create_estimator
    with pytest.raises(InvalidOptionError, match=message.replace("|", r"\|")) as raised:
        create(name, threads=1, **overrides)
    kind = "detector" if create is create_detector else "estimator"
    assert str(raised.value).startswith(f"{kind} {name!r}: ")
    assert isinstance(raised.value, ValueError)
    assert HTTP_STATUS[raised.value.code] == 400


def test_trained_models_take_no_overrides_and_unknown_names_stay_unknown() -> None:
    with pytest.raises(InvalidOptionError, match="no params to override"):
        create_estimator("heads-utkface", flip=False)
    with pytest.raises(UnknownModelError):
        create_estimator("no-such-model", flip=False)
    with pytest.raises(UnknownModelError):
        create_detector("no-such-model", tiled=False)
