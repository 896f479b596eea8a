"""Every preset's accuracy on UTKFace `test` and on `aaf`, as the README's presets table gives it.

    python benchmarks/bench_accuracy.py                       # the four presets, both sets
    python benchmarks/bench_accuracy.py --presets fastest --configs blazeface-auto:MODEL_DIR
    python benchmarks/bench_accuracy.py --limit 300 --json out.json   # a quick seeded sample
    python benchmarks/bench_accuracy.py --presets balanced --details  # per decade and group too
    python benchmarks/bench_accuracy.py --presets --configs D:A D:B --averages D:A+D:B

It runs exactly what `agelens eval` runs (`agelens.evaluate.evaluate`): UTKFace `test` padded
by 50% (`agelens eval utkface/ --split test --pad 0.5`), `aaf` as it is (`agelens eval aaf/`),
and prints one markdown row per configuration: faces found, age MAE / CS@5 / gender on each set,
with the date and agelens version, so a change is checked on both sets in one command.
`--averages` adds rows for the per-face mean of configurations scored in the same run (their
ages and P(male) averaged where every one found the face; the 80% interval is the mean of
theirs, not re-calibrated), which tells whether two estimators combined would pay before one is
built. A change
that helps one set and hurts the other is not kept (docs/accuracy.md). `aaf` is for evaluation
only: nothing agelens ships is trained or fitted on it.

Reads the shared data from `../shared/data` (relative to the repository root) and exits 0 with
a message when it is absent. Never part of the unit tests: `accurate` alone takes several
minutes on two cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import agelens
from agelens.errors import UnknownModelError
from agelens.evaluate import LabelledImage, compute_metrics, evaluate, read_labels
from agelens.models.backends import PRESETS, resolve_models
from agelens.pipeline import Analyzer
from agelens.train.cards import dataset_markdown, evaluation_entry

logger = logging.getLogger("bench_accuracy")

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: (name, folder under the data root, split, pad): the two sets every change is checked on
SETS = (("utkface-test", "utkface", "test", 0.5), ("aaf", "aaf", None, 0.0))


def configurations(presets: Sequence[str], configs: Sequence[str]) -> list[tuple[str, str, str]]:
    """(label, detector, estimator) for each preset, then each DETECTOR:ESTIMATOR."""
    chosen = []
    for name in presets:
        try:
            chosen.append((name, *resolve_models(name, None, None)))
        except UnknownModelError as error:
            raise SystemExit(str(error)) from error
    for config in configs:
        detector, sep, estimator = config.partition(":")
        if not sep or not detector or not estimator:
            raise SystemExit(f"--configs takes DETECTOR:ESTIMATOR, got {config!r}")
        chosen.append((config, detector, estimator))
    return chosen


def average_records(members: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-image records of the mean of several estimators: each member's records of the same
    rows in the same order; ages, intervals and P(male) averaged where every member found a
    face, no face where any did not."""
    averaged = []
    for rows in zip(*members, strict=True):
        first = rows[0]
        if len({row["file"] for row in rows}) != 1:
            raise ValueError(f"records out of step at {first['file']}")
        record = {**first}
        if any(row["pred_age"] is None for row in rows):
            record.update(pred_age=None, pred_gender=None, gender_probability=None, interval=None)
            averaged.append(record)
            continue
        male = [
            p if row["pred_gender"] == "M" else 1 - p
            for row in rows
            for p in [float(row["gender_probability"])]
        ]
        p_male = sum(male) / len(male)
        record.update(
            pred_age=sum(row["pred_age"] for row in rows) / len(rows),
            pred_gender="M" if p_male >= 0.5 else "F",
            gender_probability=max(p_male, 1 - p_male),
            interval=[sum(row["interval"][i] for row in rows) / len(rows) for i in (0, 1)],
        )
        averaged.append(record)
    return averaged


def _cell(metrics: dict[str, Any]) -> str:
    mae, cs5, gender = metrics["age_mae"], metrics["age_cs5"], metrics["gender_accuracy"]
    if mae is None:
        return "no face found"
    gender_text = f"{gender:.1%}" if gender is not None else "-"
    return f"{mae:.2f} / {cs5:.1%} / {gender_text}"


def format_table(results: dict[str, dict[str, Any]], set_names: Sequence[str]) -> str:
    """The markdown table: one row per configuration, faces found and figures per set."""
    header = ["configuration", "detector + estimator"]
    for name in set_names:
        header += [f"{name} faces", f"{name} MAE / CS@5 / gender"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, result in results.items():
        row = [f"`{label}`", f"`{result['detector']}` + `{result['estimator']}`"]
        for name in set_names:
            metrics = result["sets"].get(name)
            if metrics is None:
                row += ["", ""]
                continue
            row += [f"{metrics['faces_found']:,} of {metrics['n']:,}", _cell(metrics)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_details(results: dict[str, dict[str, Any]], *, date: str) -> str:
    """Per configuration and set: the figures per decade of true age and per group, in the
    model cards' layout."""
    lines = []
    for label, result in results.items():
        lines += [f"## `{label}`: `{result['detector']}` + `{result['estimator']}`", ""]
        for name, metrics in result["sets"].items():
            entry = evaluation_entry(metrics, date=date, version=agelens.__version__)
            lines += dataset_markdown(name, entry)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument(
        "--presets", nargs="*", default=list(PRESETS), help="presets to score (default: all)"
    )
    parser.add_argument(
        "--configs", nargs="*", default=[], help="more DETECTOR:ESTIMATOR pairs to score"
    )
    parser.add_argument(
        "--sets", nargs="*", default=[name for name, *_ in SETS], help="utkface-test and/or aaf"
    )
    parser.add_argument(
        "--averages",
        nargs="*",
        default=[],
        help="LABEL+LABEL...: also score the per-face mean of configurations of this run "
        "(labels: preset names or DETECTOR:ESTIMATOR as given)",
    )
    parser.add_argument("--limit", type=int, help="score a seeded sample of N rows of each set")
    parser.add_argument("--threads", type=int, default=2, help="threads per model")
    parser.add_argument("--json", type=Path, help="write every metric here")
    parser.add_argument(
        "--details", action="store_true", help="also print the figures per decade and group"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    available: list[tuple[str, Path, list[LabelledImage], float]] = []
    for name, folder, split, pad in SETS:
        if name not in args.sets:
            continue
        labels = args.data_root / folder / "labels.csv"
        if labels.is_file():
            rows = read_labels(labels, split=split, limit=args.limit)
            available.append((name, labels.parent, rows, pad))
        else:
            logger.warning("%s not found: skipping %s", labels, name)
    if not available:
        logger.warning("no data set found under %s: nothing to measure", args.data_root)
        return 0

    command = " ".join(["python benchmarks/bench_accuracy.py", *(argv or sys.argv[1:])])
    chosen = configurations(args.presets, args.configs)
    labels = [label for label, *_ in chosen]
    for average in args.averages:
        unknown = [part for part in average.split("+") if part not in labels]
        if unknown or "+" not in average:
            raise SystemExit(
                f"--averages {average!r}: {unknown or 'one member'} not among {labels}"
            )
    results: dict[str, dict[str, Any]] = {}
    records: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for label, detector, estimator in chosen:
        analyzer = Analyzer(detector, estimator, threads=args.threads)
        result: dict[str, Any] = {"detector": detector, "estimator": estimator, "sets": {}}
        results[label] = result
        for name, dataset_dir, rows, pad in available:
            start = time.perf_counter()
            metrics, records[label, name] = evaluate(analyzer, dataset_dir, rows, pad=pad)
            metrics["command"] = command
            logger.info(
                "%s on %s: MAE %.3f, %d of %d faces, %.0f s",
                label,
                name,
                metrics["age_mae"] or float("nan"),
                metrics["faces_found"],
                metrics["n"],
                time.perf_counter() - start,
            )
            result["sets"][name] = metrics
    for average in args.averages:
        members = average.split("+")
        result = {
            "detector": " / ".join(dict.fromkeys(results[m]["detector"] for m in members)),
            "estimator": " + ".join(results[m]["estimator"] for m in members),
            "sets": {},
        }
        for name, _, rows, pad in available:
            metrics = compute_metrics(
                average_records([records[m, name] for m in members]), len(rows)
            )
            result["sets"][name] = {**metrics, "pad": pad, "command": command}
        results[f"mean of {average}"] = result
    date = datetime.date.today().isoformat()
    sample = f", a seeded sample of {args.limit} rows per set" if args.limit else ""
    report = [
        f"agelens {agelens.__version__}, {date}{sample}; UTKFace test padded 50%, aaf as it is",
        "",
        format_table(results, [name for name, *_ in available]),
    ]
    if args.details:
        report += ["", format_details(results, date=date)]
    sys.stdout.write("\n".join(report) + "\n")
    if args.json is not None:
        payload = {"agelens": agelens.__version__, "date": date, "limit": args.limit}
        args.json.write_text(json.dumps({**payload, "results": results}, indent=2) + "\n")
        logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
