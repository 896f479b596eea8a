"""Two `agelens eval --records` runs of the same labelled images, compared face by face: the
engine behind `agelens compare`.

Two runs over one dataset score the same faces, so their difference is measured per face
(paired): each face's change of absolute age error, of "within 5 years" and of gender
correctness, averaged, with the standard error of that mean (sample standard deviation /
sqrt(n)). Paired differences cancel what the faces share, so they resolve changes far smaller
than the spread of either run's error. A change is called `better` or `worse` when it is at
least `SIGNIFICANT` standard errors from zero, else `no measurable change`: the rule agelens
applies before it ships a model (docs/accuracy.md).

Records are matched by `file`; only images where both runs found a face (and that have the
label a metric needs) enter a metric. Faces found by one run only are counted apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agelens.evaluate import decade, group_order

#: Standard errors from zero at which a paired change counts as measured.
SIGNIFICANT = 2.0
#: The fields of an `agelens eval --records` line that a comparison reads.
REQUIRED = ("file", "age", "gender", "pred_age", "pred_gender")

Record = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PairedChange:
    """One metric in two runs over the same faces, and its paired change (after - before)."""

    n: int
    before: float
    after: float
    change: float
    standard_error: float
    #: change / standard_error (0 when both are 0, +-inf when only the error is 0)
    t: float
    #: "better", "worse" or "no measurable change" (`higher_is_better` decides the direction)
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "before": self.before,
            "after": self.after,
            "change": self.change,
            "standard_error": self.standard_error,
            "t": self.t if math.isfinite(self.t) else None,
            "verdict": self.verdict,
        }


def paired_change(
    before: Sequence[float], after: Sequence[float], *, higher_is_better: bool
) -> PairedChange | None:
    """The paired change of a per-face quantity; None without faces."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired values must be as many before as after")
    n = len(a)
    if n == 0:
        return None
    difference = b - a
    change = float(difference.mean())
    error = float(difference.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    if change == 0:
        t = 0.0
    elif error == 0:
        t = math.copysign(math.inf, change)
    else:
        t = change / error
    if abs(t) < SIGNIFICANT:
        verdict = "no measurable change"
    else:
        verdict = "better" if (t > 0) == higher_is_better else "worse"
    return PairedChange(n, float(a.mean()), float(b.mean()), change, error, t, verdict)


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """`agelens eval --records` JSONL by `file`. ValueError (with the line) on a line that is not
    a record, or a file named twice."""
    records: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: not an `agelens eval --records` line (not JSON: {error})"
                ) from error
            missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
            if missing:
                raise ValueError(
                    f"{path}:{number}: not an `agelens eval --records` line "
                    f"(no {', '.join(missing)})"
                )
            file = record["file"]
            if file in records:
                raise ValueError(f"{path}:{number}: {file!r} appears twice")
            records[str(file)] = record
    return records


def _metrics(
    pairs: Sequence[tuple[Record, Record]],
) -> dict[str, PairedChange | None]:
    aged = [(a, b) for a, b in pairs if a["age"] is not None]
    gendered = [(a, b) for a, b in pairs if a["gender"] in ("M", "F")]

    def column(
        rows: Iterable[tuple[Record, Record]], value: Callable[[Record], float]
    ) -> tuple[list[float], list[float]]:
        listed = list(rows)
        return [value(a) for a, _ in listed], [value(b) for _, b in listed]

    def error(r: Record) -> float:
        return abs(float(r["pred_age"]) - float(r["age"]))

    def within_5(r: Record) -> float:
        return float(error(r) <= 5)

    def right_gender(r: Record) -> float:
        return float(r["pred_gender"] == r["gender"])

    return {
        "age_mae": paired_change(*column(aged, error), higher_is_better=False),
        "age_cs5": paired_change(*column(aged, within_5), higher_is_better=True),
        "gender_accuracy": paired_change(*column(gendered, right_gender), higher_is_better=True),
    }


GROUPINGS: dict[str, Callable[[Record], str | None]] = {
    "decade": lambda r: None if r["age"] is None else decade(float(r["age"])),
    "race": lambda r: r.get("race") or None,
}


def compare_records(
    before: Mapping[str, Record], after: Mapping[str, Record], *, by: str | None = None
) -> dict[str, Any]:
    """Paired comparison of two runs' records (see the module docstring). `by` ("decade" or
    "race") adds the same per group."""
    if before.keys().isdisjoint(after.keys()):
        raise ValueError("the two runs share no image: were they run on the same labels?")
    both = sorted(before.keys() & after.keys())
    found_before = {f for f in both if before[f]["pred_age"] is not None}
    found_after = {f for f in both if after[f]["pred_age"] is not None}
    pairs = [(before[f], after[f]) for f in both if f in found_before and f in found_after]
    result: dict[str, Any] = {
        "images": {
            "in_both": len(both),
            "only_before": len(before.keys() - after.keys()),
            "only_after": len(after.keys() - before.keys()),
            "faces_found_before": len(found_before),
            "faces_found_after": len(found_after),
            "compared": len(pairs),
        },
        "significant_at_standard_errors": SIGNIFICANT,
        "metrics": {k: v.as_dict() if v else None for k, v in _metrics(pairs).items()},
    }
    if by is not None:
        if by not in GROUPINGS:
            raise ValueError(f"cannot group by {by!r}; choose from {', '.join(GROUPINGS)}")
        key = GROUPINGS[by]
        groups: dict[str, list[tuple[Record, Record]]] = {}
        for pair in pairs:
            name = key(pair[0])
            if name is not None:
                groups.setdefault(name, []).append(pair)
        result["by"] = by
        result["groups"] = {
            name: {k: v.as_dict() if v else None for k, v in _metrics(members).items()}
            for name, members in sorted(groups.items(), key=lambda item: group_order(item[0]))
        }
    return result
