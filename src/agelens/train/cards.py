"""Evaluation figures in a trained model's card: the same figures on every dataset it was
measured on, each with the `agelens eval` command that produced it.

A model trained on one collection must be judged on others too (a change that helps UTKFace
and hurts other photos is not kept), so a card holds an `evaluation` section keyed by dataset
name (e.g. `utkface-test`, `aaf`) and its MODEL_CARD.md an "Evaluation" section with the
overall, per-decade and per-group figures. `record_evaluation` adds or replaces one dataset's
figures from `agelens eval --out` metrics and keeps the card's sha256 of MODEL_CARD.md true.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agelens.models.fetch import sha256_file
from agelens.models.heads import CARD_FILE

MODEL_CARD_FILE = "MODEL_CARD.md"
SECTION = "## Evaluation"
#: What a dataset's entry keeps of `agelens eval`'s metrics.
KEPT = (
    "n",
    "faces_found",
    "age_mae",
    "age_cs5",
    "age_mean_signed_error",
    "gender_accuracy",
    "age_interval_coverage",
    "by_decade",
    "by_race",
)


def _number(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def _pruned(group: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _number(value, 4) for key, value in group.items() if not isinstance(value, dict)}


def evaluation_entry(metrics: Mapping[str, Any], *, date: str, version: str) -> dict[str, Any]:
    """The card's entry for one dataset from `agelens eval` metrics (which must hold the
    command that produced them)."""
    if "command" not in metrics:
        raise ValueError("these metrics do not say which command produced them")
    entry: dict[str, Any] = {"command": metrics["command"], "date": date, "version": version}
    for key in KEPT:
        value = metrics.get(key)
        if isinstance(value, dict):
            entry[key] = {name: _pruned(group) for name, group in value.items()}
        elif value is not None:
            entry[key] = _number(value, 4)
    return entry


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _years(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def dataset_markdown(name: str, entry: Mapping[str, Any], *, level: str = "###") -> list[str]:
    """One dataset's block of figures: the command, the overall row, then per decade and
    per group."""
    lines = [
        f"{level} {name}",
        f"`{entry['command']}` ({entry['date']}, agelens {entry['version']})",
        "",
        "| faces found | age MAE | CS@5 | mean signed error | gender | interval coverage |",
        "|---|---|---|---|---|---|",
        f"| {entry.get('faces_found', '-')} of {entry.get('n', '-')} | "
        f"{_years(entry.get('age_mae'))} | {_percent(entry.get('age_cs5'))} | "
        f"{_years(entry.get('age_mean_signed_error'), True)} | "
        f"{_percent(entry.get('gender_accuracy'))} | "
        f"{_percent(entry.get('age_interval_coverage'))} |",
        "",
    ]
    for group, title in (("by_decade", "true age"), ("by_race", "group")):
        groups = entry.get(group) or {}
        if not groups:
            continue
        lines += [
            f"| {title} | n | age MAE | mean signed error | gender |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {label} | {figures.get('n', '-')} | {_years(figures.get('age_mae'))} | "
            f"{_years(figures.get('age_mean_signed_error'), True)} | "
            f"{_percent(figures.get('gender_accuracy'))} |"
            for label, figures in groups.items()
        ]
        lines.append("")
    return lines


def evaluation_markdown(evaluation: Mapping[str, Any]) -> str:
    """The "Evaluation" section of MODEL_CARD.md: one block per dataset."""
    lines = [
        SECTION,
        "Measured with `agelens eval` on the datasets below (never trained or tuned on; the "
        "command, date and agelens version are given with each).",
        "",
    ]
    for name, entry in evaluation.items():
        lines += dataset_markdown(name, entry)
    return "\n".join(lines)


def _with_section(markdown: str, section: str) -> str:
    """`markdown` with its Evaluation section replaced by `section` (or `section` put before
    the Licence section, or at the end)."""
    start = markdown.find(f"\n{SECTION}\n")
    if start >= 0:
        end = markdown.find("\n## ", start + len(SECTION) + 2)
        rest = markdown[end + 1 :] if end >= 0 else ""
        return markdown[: start + 1] + section + "\n" + rest
    licence = markdown.find("\n## Licence")
    if licence >= 0:
        return markdown[: licence + 1] + section + "\n" + markdown[licence + 1 :]
    return markdown.rstrip("\n") + "\n\n" + section + "\n"


def record_evaluation(
    folder: Path, dataset: str, metrics: Mapping[str, Any], *, date: str, version: str
) -> dict[str, Any]:
    """Add (or replace) `dataset`'s figures in the card of the trained model in `folder`
    (card.json and MODEL_CARD.md, whose sha256 the card keeps); returns the new card."""
    card_path = folder / CARD_FILE
    card: dict[str, Any] = json.loads(card_path.read_text(encoding="utf-8"))
    evaluation = dict(card.get("evaluation", {}))
    evaluation[dataset] = evaluation_entry(metrics, date=date, version=version)
    card["evaluation"] = dict(sorted(evaluation.items()))
    markdown_path = folder / MODEL_CARD_FILE
    markdown_path.write_text(
        _with_section(
            markdown_path.read_text(encoding="utf-8"), evaluation_markdown(card["evaluation"])
        ),
        encoding="utf-8",
    )
    if MODEL_CARD_FILE in card.get("files", {}):
        card["files"][MODEL_CARD_FILE] = sha256_file(markdown_path)
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card
