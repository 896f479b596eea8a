"""`heads-ensemble` (the `accurate` preset's estimator): the heads' and the ensemble's ages
mixed, the heads' gender, on a real face."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from agelens.cli import app
from agelens.errors import InvalidOptionError
from agelens.models.backends import PRESETS, create_detector, create_estimator
from agelens.models.mixture import HeadsEnsembleEstimator, MixtureEstimator


@pytest.fixture(scope="module")
def faces(astronaut: np.ndarray) -> list:
    (detections,) = create_detector("blazeface-full", 1).detect_many([astronaut])
    return list(detections)


def test_ages_are_mixed_and_gender_is_the_first_members(astronaut: np.ndarray, faces: list) -> None:
    heads = create_estimator("heads-utkface", 1)
    ensemble = create_estimator("ensemble", 1)
    mixture = create_estimator("heads-ensemble", 1)
    (a,) = heads.estimate(heads.align(astronaut, faces[:1]))
    (b,) = ensemble.estimate(ensemble.align(astronaut, faces[:1]))
    (mixed,) = mixture.estimate(mixture.align(astronaut, faces[:1]))
    # the ensemble's inputs come from the heads' features: the same to float32 rounding
    assert isinstance(mixture, HeadsEnsembleEstimator)
    assert mixed.age_years == pytest.approx(2 / 3 * a.age_years + 1 / 3 * b.age_years, abs=1e-3)
    assert mixed.age_interval[0] == pytest.approx(
        2 / 3 * a.age_interval[0] + 1 / 3 * b.age_interval[0], abs=1e-3
    )
    assert mixed.age_interval[1] == pytest.approx(
        2 / 3 * a.age_interval[1] + 1 / 3 * b.age_interval[1], abs=1e-3
    )
    assert mixed.age_interval[0] <= mixed.age_years <= mixed.age_interval[1]
    assert mixed.gender_probability_male == pytest.approx(a.gender_probability_male)
    assert 30 <= mixed.age_years <= 55  # Eileen Collins was about 42


def test_weight_override_and_members_in_the_version(astronaut: np.ndarray, faces: list) -> None:
    heads_only = create_estimator("heads-ensemble", 1, age_weight=1.0)
    heads = create_estimator("heads-utkface", 1)
    (a,) = heads.estimate(heads.align(astronaut, faces[:1]))
    (mixed,) = heads_only.estimate(heads_only.align(astronaut, faces[:1]))
    assert mixed.age_years == pytest.approx(a.age_years)
    version = heads_only.version()
    assert version.startswith("heads-ensemble[1 x heads-utkface")
    assert "0 x ensemble[" in version


def test_no_face_no_estimate(astronaut: np.ndarray) -> None:
    mixture = create_estimator("heads-ensemble", 1)
    assert mixture.align(astronaut, ()) == {}
    assert mixture.estimate({}) == []


def test_weights_outside_zero_to_one_are_refused() -> None:
    ensemble = create_estimator("ensemble", 1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        MixtureEstimator("m", ensemble, ensemble, age_weight=1.5)
    with pytest.raises(InvalidOptionError, match="age_weight"):
        create_estimator("heads-ensemble", 1, age_weights=0.5)


def test_accurate_preset_uses_it() -> None:
    assert PRESETS["accurate"].estimator == "heads-ensemble"
    assert "non-commercial" in PRESETS["accurate"].weights_terms


def test_models_list_shows_its_terms() -> None:
    listed = CliRunner().invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = [row for row in json.loads(listed.stdout) if row["name"] == "heads-ensemble"]
    assert row["license"].startswith("non-commercial")
    assert row["params"]["fields"]["age_weight"] == pytest.approx(2 / 3)


def test_shared_runs_equal_running_both_members(astronaut: np.ndarray, faces: list) -> None:
    heads = create_estimator("heads-utkface", 1)
    ensemble = create_estimator("ensemble", 1)
    shared = create_estimator("heads-ensemble", 1)
    separate = MixtureEstimator("m", heads, ensemble, age_weight=2 / 3)
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    for image in (astronaut, mirrored):
        (detections,) = create_detector("blazeface-full", 1).detect_many([image])
        got = shared.estimate(shared.align(image, detections))
        expected = separate.estimate(separate.align(image, detections))
        assert len(got) == len(expected) == len(detections)
        for g, e in zip(got, expected, strict=True):
            assert g.age_years == pytest.approx(e.age_years, abs=1e-3)
            assert g.age_interval == pytest.approx(e.age_interval, abs=1e-3)
            assert g.gender_probability_male == pytest.approx(e.gender_probability_male)


def test_other_members_are_run_each_on_its_own(astronaut: np.ndarray, faces: list) -> None:
    mixture = create_estimator("heads-ensemble", 1, first="faceapi", second="cydral")
    assert type(mixture) is MixtureEstimator
    faceapi = create_estimator("faceapi", 1)
    cydral = create_estimator("cydral", 1)
    (a,) = faceapi.estimate(faceapi.align(astronaut, faces[:1]))
    (b,) = cydral.estimate(cydral.align(astronaut, faces[:1]))
    (mixed,) = mixture.estimate(mixture.align(astronaut, faces[:1]))
    assert mixed.age_years == pytest.approx(2 / 3 * a.age_years + 1 / 3 * b.age_years)
    assert mixed.gender_probability_male == pytest.approx(a.gender_probability_male)
