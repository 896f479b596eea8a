"""Metrics, label reading and the scored-face rule of `agelens eval`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agelens.evaluate import compute_metrics, pad_image, read_labels, scored_index


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
