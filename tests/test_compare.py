"""agelens.compare: paired, face-by-face comparison of two `agelens eval --records` runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agelens.compare import compare_records, paired_change, read_records


def record(
    file: str,
    age: float | None,
    gender: str,
    pred: float | None,
    pred_gender: str = "M",
    race: str = "",
) -> dict[str, Any]:
    return {
        "file": file,
        "age": age,
        "gender": gender,
        "race": race,
        "pred_age": pred,
        "pred_gender": pred_gender if pred is not None else None,
    }


def test_paired_change_by_hand() -> None:
    change = paired_change([3.0, 5.0, 1.0, 7.0], [2.0, 4.0, 1.0, 5.0], higher_is_better=False)
    assert change is not None
    differences = np.array([-1.0, -1.0, 0.0, -2.0])
    assert change.n == 4
    assert change.before == pytest.approx(4.0)
    assert change.after == pytest.approx(3.0)
    assert change.change == pytest.approx(-1.0)
    assert change.standard_error == pytest.approx(differences.std(ddof=1) / 2)
    assert change.t == pytest.approx(-1.0 / (differences.std(ddof=1) / 2))
    assert change.verdict == "better"  # errors fell by 2.4 standard errors


def test_the_direction_of_better_follows_the_metric() -> None:
    up = ([0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    accuracy = paired_change(*up, higher_is_better=True)
    error = paired_change(*up, higher_is_better=False)
    assert accuracy is not None
    assert error is not None
    assert accuracy.verdict == "better"
    assert error.verdict == "worse"


def test_small_or_noisy_changes_are_not_called() -> None:
    noisy = paired_change([1.0, 5.0, 2.0, 8.0], [4.0, 1.0, 6.0, 6.0], higher_is_better=False)
    assert noisy is not None
    assert abs(noisy.t) < 2
    assert noisy.verdict == "no measurable change"
    same = paired_change([1.0, 2.0], [1.0, 2.0], higher_is_better=False)
    assert same is not None
    assert (same.change, same.t, same.verdict) == (0.0, 0.0, "no measurable change")
    # The same shift on every face has no spread: infinitely many standard errors.
    shifted = paired_change([1.0, 2.0], [2.0, 3.0], higher_is_better=False)
    assert shifted is not None
    assert shifted.t == math.inf
    assert shifted.as_dict()["t"] is None
    assert shifted.verdict == "worse"
    assert paired_change([], [], higher_is_better=True) is None


def test_runs_are_matched_by_file_and_only_faces_both_found_compared() -> None:
    before = {
        "a": record("a", 30, "F", 33, "F"),
        "b": record("b", 40, "M", 35, "M"),
        "c": record("c", 5, "M", 9, "F"),
        "d": record("d", 70, "F", None),
        "gone": record("gone", 20, "F", 20, "F"),
    }
    after = {
        "a": record("a", 30, "F", 31, "F"),
        "b": record("b", 40, "M", None),
        "c": record("c", 5, "M", 6, "M"),
        "d": record("d", 70, "F", 60, "F"),
        "new": record("new", 20, "F", 20, "F"),
    }
    result = compare_records(before, after)
    assert result["images"] == {
        "in_both": 4,
        "only_before": 1,
        "only_after": 1,
        "faces_found_before": 3,
        "faces_found_after": 3,
        "compared": 2,
    }
    mae = result["metrics"]["age_mae"]
    assert (mae["n"], mae["before"], mae["after"]) == (2, 3.5, 1.0)
    gender = result["metrics"]["gender_accuracy"]
    assert (gender["before"], gender["after"], gender["change"]) == (0.5, 1.0, 0.5)
    cs5 = result["metrics"]["age_cs5"]
    assert (cs5["before"], cs5["after"]) == (1.0, 1.0)


def test_groups_by_decade_and_race() -> None:
    before = {
        f: record(f, age, "F", age + 4, "F", race)
        for f, age, race in [
            ("a", 3, "Asian"),
            ("b", 35, "White"),
            ("c", 75, "Asian"),
            ("d", 38, ""),
        ]
    }
    after = {f: record(f, r["age"], "F", r["age"] + 1, "M", r["race"]) for f, r in before.items()}
    by_decade = compare_records(before, after, by="decade")
    assert list(by_decade["groups"]) == ["0-9", "30-39", "70+"]
    assert by_decade["groups"]["30-39"]["age_mae"]["n"] == 2
    assert by_decade["groups"]["70+"]["gender_accuracy"]["after"] == 0.0
    by_race = compare_records(before, after, by="race")
    assert list(by_race["groups"]) == ["Asian", "White"]
    with pytest.raises(ValueError, match="cannot group by 'city'"):
        compare_records(before, after, by="city")


def test_runs_over_different_images_are_refused() -> None:
    with pytest.raises(ValueError, match="share no image"):
        compare_records({"a": record("a", 1, "F", 1)}, {"b": record("b", 1, "F", 1)})


def test_records_files_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(record("a", 30, "F", 31)) + "\n\n")
    assert list(read_records(good)) == ["a"]
    cases = {
        "not json": "{oops\n",
        "no pred_age": json.dumps({"file": "a", "age": 1, "gender": "F", "pred_gender": "F"}),
        "a list": "[1, 2]\n",
        "twice": (json.dumps(record("a", 30, "F", 31)) + "\n") * 2,
    }
    messages = {
        "not json": "not JSON",
        "no pred_age": "no pred_age",
        "a list": "no file",
        "twice": "appears twice",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        with pytest.raises(ValueError, match=messages[name]):
            read_records(path)
