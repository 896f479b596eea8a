"""Metrics, label reading and the scored-face rule of `agelens eval`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agelens.evaluate import (
    CALIBRATION_BINS,
    compute_metrics,
    gender_calibration,
    pad_image,
    read_labels,
    scored_index,
)


def _record(
    age: float, pred: float | None, gender: str = "F", pred_gender: str = "F", race: str = "Asian"
) -> dict[str, object]:
    return {
        "age": age,
        "gender": gender,
        "race": race,
        "age_low": None,
        "age_high": None,
        "pred_age": pred,
        "pred_gender": pred_gender if pred is not None else None,
        "interval": [pred - 5, pred + 5] if pred is not None else None,
    }


def test_metrics_by_hand() -> None:
    records = [
        _record(10, 12),
        _record(30, 20, "M", "F"),
        _record(75, 70, "M", "M", "White"),
        _record(40, None),
    ]
    metrics = compute_metrics(records, n=4)
    assert metrics["n"] == 4
    assert metrics["faces_found"] == 3
    assert metrics["age_mae"] == pytest.approx((2 + 10 + 5) / 3)
    assert metrics["age_cs5"] == pytest.approx(2 / 3)
    assert metrics["age_mean_signed_error"] == pytest.approx((2 - 10 - 5) / 3)
    assert metrics["age_mse"] == pytest.approx((4 + 100 + 25) / 3)
    assert metrics["age_rmse"] == pytest.approx(((4 + 100 + 25) / 3) ** 0.5)
    assert metrics["by_decade"]["30-39"]["age_mse"] == pytest.approx(100)
    assert metrics["by_decade"]["30-39"]["age_rmse"] == pytest.approx(10)
    assert metrics["gender_accuracy"] == pytest.approx(2 / 3)
    assert metrics["age_interval_coverage"] == pytest.approx(2 / 3)
    assert list(metrics["by_decade"]) == ["10-19", "30-39", "70+"]
    assert metrics["by_race"]["White"]["n"] == 1
    assert "age_bin_accuracy" not in metrics


def test_bins_are_scored_when_given() -> None:
    record = _record(25, 27)
    record.update(age_low=20, age_high=29)
    other = _record(25, 31)
    other.update(age_low=20, age_high=29)
    assert compute_metrics([record, other], n=2)["age_bin_accuracy"] == 0.5


def test_empty_metrics() -> None:
    metrics = compute_metrics([], n=0)
    assert metrics["faces_found"] == 0
    assert metrics["age_mae"] is None
    assert metrics["age_mse"] is None
    assert metrics["age_rmse"] is None
    assert metrics["age_slope"] is None
    assert metrics["age_interval_coverage"] is None
    assert metrics["gender_accuracy"] is None
    assert metrics["by_decade"] == {}
    assert metrics["by_race"] == {}
    assert "age_bin_accuracy" not in metrics
    calibration = metrics["gender_calibration"]
    assert calibration["n"] == 0
    assert calibration["ece"] is None
    assert len(calibration["bins"]) == CALIBRATION_BINS
    assert all(b["n"] == 0 and b["accuracy"] is None for b in calibration["bins"])


def test_no_face_anywhere_scores_nothing() -> None:
    metrics = compute_metrics([_record(30, None), _record(50, None)], n=2)
    assert metrics["n"] == 2
    assert metrics["faces_found"] == 0
    assert metrics["age_mae"] is None
    assert metrics["gender_calibration"]["n"] == 0


def _binned(low: float, high: float, pred: float, age: float | None = None) -> dict[str, object]:
    record = _record(age if age is not None else (low + high) / 2, pred)
    record.update(age=age, age_low=low, age_high=high)
    return record


def _calibrated(age: float, pred: float, probability: float, right: bool) -> dict[str, object]:
    record = _record(age, pred, "F", "F" if right else "M")
    record["gender_probability"] = probability
    return record


# (case, records, expected values; a key "a.b" looks inside nested dicts)
METRIC_CASES: list[tuple[str, list[dict[str, object]], dict[str, object]]] = [
    (
        "perfect ages",
        [_record(20, 20), _record(40, 40), _record(60, 60)],
        {"age_mae": 0.0, "age_cs5": 1.0, "age_mean_signed_error": 0.0, "age_slope": 1.0},
    ),
    (
        "regression to the mean: slope 0.5",
        [_record(20, 30), _record(40, 40), _record(60, 50)],
        {"age_slope": 0.5, "age_mean_signed_error": 0.0, "age_mae": 20 / 3},
    ),
    (
        "one true age: slope undefined",
        [_record(30, 25), _record(30, 35)],
        {"age_slope": None, "age_mae": 5.0, "age_cs5": 1.0},
    ),
    (
        "CS@5 counts exactly 5 years as right",
        [_record(30, 35), _record(30, 35.5)],
        {"age_cs5": 0.5},
    ),
    (
        "decade groups: MAE, signed error, CS@5, interval coverage",
        [_record(21, 25), _record(29, 19), _record(45, 47)],
        {
            "by_decade.20-29.n": 2,
            "by_decade.20-29.age_mae": 7.0,
            "by_decade.20-29.age_mean_signed_error": -3.0,
            "by_decade.20-29.age_cs5": 0.5,
            "by_decade.20-29.age_interval_coverage": 0.5,
            "by_decade.40-49.age_interval_coverage": 1.0,
        },
    ),
    (
        "gender per race",
        [
            _record(30, 30, "F", "F", "Black"),
            _record(30, 30, "M", "F", "Black"),
            _record(30, 30, "M", "M", "Indian"),
        ],
        {
            "gender_accuracy": 2 / 3,
            "by_race.Black.gender_accuracy": 0.5,
            "by_race.Indian.gender_accuracy": 1.0,
        },
    ),
    (
        "bins: inside, both ends included, outside, rounding",
        [
            _binned(25, 32, 28),
            _binned(25, 32, 25),
            _binned(25, 32, 32.4),  # rounds to 32: inside
            _binned(25, 32, 32.6),  # rounds to 33: outside
            _binned(25, 32, 40),
        ],
        {"age_bin_accuracy": 3 / 5, "age_bin_by_decade.20-29.n": 5},
    ),
    (
        "bins without exact ages: only bin accuracy, by decade of the bin centre",
        [_binned(0, 2, 1), _binned(60, 100, 45), _binned(38, 43, 40), _binned(48, 53, 52)],
        {
            "age_bin_accuracy": 0.75,
            "age_mae": None,
            "by_decade": {},
            "age_bin_by_decade.0-9.age_bin_accuracy": 1.0,
            "age_bin_by_decade.70+.age_bin_accuracy": 0.0,  # centre 80
            "age_bin_by_decade.40-49.n": 1,
            "age_bin_by_decade.50-59.n": 1,
        },
    ),
    (
        "gender calibration from records",
        [_calibrated(30, 30, 0.9, True), _calibrated(30, 30, 0.9, False)],
        {"gender_calibration.n": 2, "gender_calibration.ece": 0.4},
    ),
]


def _lookup(metrics: dict[str, object], dotted: str) -> object:
    value: object = metrics
    for key in dotted.split("."):  # group names ("20-29", "70+", races) hold no dot
        assert isinstance(value, dict), dotted
        value = value[key]
    return value


@pytest.mark.parametrize(
    ("records", "expected"),
    [pytest.param(records, expected, id=case) for case, records, expected in METRIC_CASES],
)
def test_metric_cases(records: list[dict[str, object]], expected: dict[str, object]) -> None:
    metrics = compute_metrics(records, n=len(records))
    for key, value in expected.items():
        actual = _lookup(metrics, key)
        if isinstance(value, float):
            assert actual == pytest.approx(value), key
        else:
            assert actual == value, key


def test_gender_calibration_by_hand() -> None:
    pairs = [
        (0.5, True),  # first bin, low edge included
        (0.52, False),
        (0.74, True),  # bin 4 (0.70-0.75)
        (0.96, True),
        (1.0, True),  # the last bin includes 1.0
        (0.97, False),
    ]
    calibration = gender_calibration(pairs)
    bins = calibration["bins"]
    assert [b["n"] for b in bins] == [2, 0, 0, 0, 1, 0, 0, 0, 0, 3]
    assert bins[0]["low"] == pytest.approx(0.5)
    assert bins[-1]["high"] == pytest.approx(1.0)
    assert bins[0]["confidence"] == pytest.approx(0.51)
    assert bins[0]["accuracy"] == pytest.approx(0.5)
    assert bins[1]["confidence"] is None
    assert bins[9]["confidence"] == pytest.approx((0.96 + 1.0 + 0.97) / 3)
    assert bins[9]["accuracy"] == pytest.approx(2 / 3)
    expected_ece = (
        2 * abs(0.5 - 0.51) + 1 * abs(1 - 0.74) + 3 * abs(2 / 3 - (0.96 + 1.0 + 0.97) / 3)
    ) / 6
    assert calibration["ece"] == pytest.approx(expected_ece)
    assert calibration["mean_confidence"] == pytest.approx(sum(p for p, _ in pairs) / 6)


def test_perfectly_calibrated_has_zero_ece() -> None:
    pairs = [(0.8, True)] * 8 + [(0.8, False)] * 2 + [(0.6, True)] * 3 + [(0.6, False)] * 2
    assert gender_calibration(pairs)["ece"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([], None),
        ([(0, 0, 10, 10)], 0),
        ([(0, 0, 30, 30), (40, 40, 60, 60)], 1),  # small centred face beats a big corner one
        ([(45, 45, 55, 55), (35, 35, 65, 65)], 1),  # both centred: the larger wins
    ],
)
def test_scored_face_rule(
    boxes: list[tuple[float, float, float, float]], expected: int | None
) -> None:
    assert scored_index(boxes, (100, 100)) == expected


def test_pad_image_replicates_edges() -> None:
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    padded = pad_image(image, 0.5)
    assert padded.shape == (4, 8, 3)
    assert np.array_equal(padded[0, 0], image[0, 0])
    assert pad_image(image, 0) is image


def test_read_labels_split_limit_and_columns(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,age,gender,race,split,age_low,age_high\n"
        + "".join(
            f"img{i}.jpg,{i},{'MF'[i % 2]},White,{'test' if i % 3 == 0 else 'dev'},,\n"
            for i in range(30)
        )
    )
    test_rows = read_labels(labels, split="test")
    assert len(test_rows) == 10
    assert all(int(r.file[3:-4]) % 3 == 0 for r in test_rows)
    sample = read_labels(labels, split="dev", limit=5)
    assert len(sample) == 5
    assert sample == read_labels(labels, split="dev", limit=5)
    assert sample[0].age_low is None
    bad = tmp_path / "bad.csv"
    bad.write_text("path,age\n")
    with pytest.raises(ValueError, match="gender"):
        read_labels(bad)
