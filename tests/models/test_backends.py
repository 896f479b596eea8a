"""The same contract for every registered detector and estimator, on real faces."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from agelens.errors import UnknownModelError
from agelens.models.backends import (
    DETECTORS,
    PRESETS,
    create_detector,
    create_estimator,
    estimator_names,
    resolve_models,
)
from agelens.models.base import chip_count, concat_chips


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
        ("fastest", None, None, ("blazeface-portrait", "faceapi96-distilled")),
        ("fast", None, None, ("blazeface-fast", "faceapi")),
        ("balanced", None, None, ("blazeface-auto", "ensemble")),
        ("accurate", None, None, ("blazeface-full", "heads-utkface")),
        ("accurate", "blazeface-fast", None, ("blazeface-fast", "heads-utkface")),
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
