"""Evaluation figures recorded in a trained model's card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agelens.models.backends import create_estimator
from agelens.models.fetch import sha256_file
from agelens.train.cards import evaluation_entry, record_evaluation

SHIPPED = (
    Path(__file__).resolve().parents[2] / "src" / "agelens" / "trained" / "faceapi112-distilled"
)


def _metrics(mae: float) -> dict[str, Any]:
    return {
        "command": "agelens eval data --estimator m",
        "n": 10,
        "faces_found": 9,
        "age_mae": mae,
        "age_cs5": 0.7,
        "age_mean_signed_error": -0.4,
        "gender_accuracy": 0.9,
        "age_interval_coverage": 0.8,
        "gender_calibration": {"ece": 0.01, "bins": []},
        "by_decade": {"0-9": {"n": 4, "age_mae": 1.5, "gender_accuracy": 0.75, "calibration": {}}},
        "by_race": {"Asian": {"n": 9, "age_mae": mae, "gender_accuracy": 0.9}},
    }


def test_figures_go_into_both_cards_and_the_model_still_loads(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    card = json.loads((folder / "card.json").read_text())
    card.pop("evaluation", None)  # start from a card without figures
    (folder / "card.json").write_text(json.dumps(card))
    record_evaluation(folder, "utkface-test", _metrics(4.5), date="2026-12-07", version="0.9")
    card = record_evaluation(folder, "aaf", _metrics(5.5), date="2026-12-07", version="0.9")
    # Measured again: replaced, not repeated.
    card = record_evaluation(folder, "aaf", _metrics(5.25), date="2026-12-08", version="1.0")
    assert list(card["evaluation"]) == ["aaf", "utkface-test"]
    assert card["evaluation"]["aaf"]["age_mae"] == 5.25
    assert card["evaluation"]["aaf"]["by_decade"]["0-9"] == {
        "n": 4, "age_mae": 1.5, "gender_accuracy": 0.75,
    }  # fmt: skip
    assert "gender_calibration" not in card["evaluation"]["aaf"]
    markdown = (folder / "MODEL_CARD.md").read_text()
    assert markdown.count("## Evaluation") == 1
    assert markdown.index("## Evaluation") < markdown.index("## Licence")
    assert "### aaf\n`agelens eval data --estimator m` (2026-12-08, agelens 1.0)" in markdown
    assert "| 9 of 10 | 5.25 | 70.0% | -0.40 | 90.0% | 80.0% |" in markdown
    assert "| 0-9 | 4 | 1.50 | - | 75.0% |" in markdown
    saved = json.loads((folder / "card.json").read_text())
    assert saved["files"]["MODEL_CARD.md"] == sha256_file(folder / "MODEL_CARD.md")
    create_estimator(str(folder), threads=1)  # the card's hashes still hold


def test_metrics_without_their_command_are_refused() -> None:
    metrics = _metrics(4.0)
    del metrics["command"]
    with pytest.raises(ValueError, match="which command"):
        evaluation_entry(metrics, date="2026-12-07", version="1.0")
