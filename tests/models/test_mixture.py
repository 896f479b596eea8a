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
from agelens.models.mixture import AGE_STACK, HeadsEnsembleEstimator, MixtureEstimator


@pytest.fixture(scope="module")
def faces(astronaut: np.ndarray) -> list:
    (detections,) = create_detector("blazeface-full", 1).detect_many([astronaut])
    return list(detections)


def test_ages_are_mixed_and_gender_is_the_first_members(astronaut: np.ndarray, faces: list) -> None:
    heads = create_estimator("heads-utkface", 1)
    ensemble = create_estimator("ensemble", 1)
    mixture = create_estimator("heads-ensemble", 1, second="ensemble")
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
    heads_only = create_estimator("heads-ensemble", 1, age_weight=1.0, second="ensemble")
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
    shared = create_estimator("heads-ensemble", 1, second="ensemble")
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


def test_the_default_second_member_stacks_the_four_networks_ages(
    astronaut: np.ndarray, faces: list
) -> None:
    """`age-stack` (the default): 1/3 of the age is `AGE_STACK` over each network's own age,
    read from the heads' features by position: faceres's and faceres-deep's expected age over
    their 100 classes, face-api's age / 100 x 100, Cydral's expected age over its 81 classes;
    each the mean of the face and its mirror. The interval is the ensemble's formula there."""
    from agelens.models.cydral import AGE_CLASS_YEARS
    from agelens.models.ensemble import DEFAULT_WEIGHTS

    heads = create_estimator("heads-utkface", 1)
    mixture = create_estimator("heads-ensemble", 1)
    assert isinstance(mixture, HeadsEnsembleEstimator)
    assert "0.333 x age-stack of faceres, faceres-deep, faceapi, cydral" in mixture.version()
    chips = heads.align(astronaut, faces[:1])
    (a,) = heads.estimate(chips)
    (mixed,) = mixture.estimate(mixture.align(astronaut, faces[:1]))
    face, mirror = heads.features_pair(chips)
    # faceres@192-int8 (1,125 columns), faceres-deep@192-qat (1,125), faceapi (514), cydral
    years = np.arange(1, 101)

    def own(features: np.ndarray) -> dict[str, float]:
        row = features[0].astype(np.float64)
        return {
            "faceres": float(row[1024:1124] @ years),
            "faceres-deep": float(row[1125 + 1024 : 1125 + 1124] @ years),
            "faceapi": float(row[2250 + 512] * 100),
            "cydral": float(
                row[2764 + 272 : 2764 + 353] @ AGE_CLASS_YEARS / row[2764 + 272 : 2764 + 353].sum()
            ),
        }

    once, twice = own(face), own(mirror)
    ages = {k: (once[k] + twice[k]) / 2 for k in once}
    stacked = (
        AGE_STACK.bias
        + AGE_STACK.faceres * ages["faceres"]
        + AGE_STACK.faceres_deep * ages["faceres-deep"]
        + AGE_STACK.faceapi * ages["faceapi"]
        + AGE_STACK.cydral * ages["cydral"]
    )
    assert mixed.age_years == pytest.approx(2 / 3 * a.age_years + 1 / 3 * stacked, abs=1e-3)
    width = DEFAULT_WEIGHTS.interval_bias + DEFAULT_WEIGHTS.interval_slope * stacked
    assert mixed.age_interval[1] == pytest.approx(
        2 / 3 * a.age_interval[1] + 1 / 3 * (stacked + width), abs=1e-3
    )
    assert mixed.gender_probability_male == pytest.approx(a.gender_probability_male)
    assert 30 <= stacked <= 55  # Eileen Collins was about 42


def test_the_stack_needs_heads_that_read_its_networks() -> None:
    with pytest.raises(ValueError, match="age-stack mixes with trained heads"):
        create_estimator("heads-ensemble", 1, first="faceapi")
