"""The self-contained HTML report of `agelens eval --html`: one file, plots inlined as SVG, no
external URL (no CDN, font, script or image from elsewhere), readable offline and attachable to
an issue. Needs the `report` extra (matplotlib).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agelens.report import plots
from agelens.report.html import empty as _empty
from agelens.report.html import esc as _esc
from agelens.report.html import figure as _figure
from agelens.report.html import num as _num
from agelens.report.html import page
from agelens.report.html import table as _table

SECTIONS = (
    ("summary", "Headline metrics"),
    ("age-scatter", "Predicted vs true age"),
    ("age-decades", "Age error by decade"),
    ("age-bins", "Age-bin accuracy"),
    ("gender-groups", "Gender accuracy by group"),
    ("interval-calibration", "Age interval calibration"),
    ("gender-calibration", "Gender probability calibration"),
)


def _section(anchor: str, body: str) -> str:
    title = dict(SECTIONS)[anchor]
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>{body}</section>'


def _header(metrics: Mapping[str, Any]) -> str:
    models = metrics.get("models") or {}
    model_text = ", ".join(f"{k}: {v}" for k, v in models.items()) or "–"
    rows = [
        ("dataset", f"<code>{_esc(metrics.get('dataset', '–'))}</code>"),
        ("labels", f"<code>{_esc(metrics.get('labels', '–'))}</code>"),
        ("split", _esc(metrics.get("split") or "all rows")),
        ("n (images scored)", _num(metrics.get("n"), "int")),
        ("faces found", _faces_found(metrics)),
        ("models", _esc(model_text)),
        ("pad", _esc(metrics.get("pad", "–"))),
        ("command", f"<code>{_esc(metrics.get('command', '–'))}</code>"),
    ]
    return _table(("run", ""), [(_esc(k), v) for k, v in rows], css="run")


def _faces_found(metrics: Mapping[str, Any]) -> str:
    n, found = metrics.get("n") or 0, metrics.get("faces_found") or 0
    share = f" ({100 * found / n:.1f}%)" if n else ""
    return f"{found}{share}"


def _summary(metrics: Mapping[str, Any]) -> str:
    calibration = metrics.get("gender_calibration") or {}
    rows = [
        ("age MAE (years)", _num(metrics.get("age_mae"))),
        ("age RMSE (years)", _num(metrics.get("age_rmse"))),
        ("age MSE (years²)", _num(metrics.get("age_mse"))),
        ("age CS@5 (|error| ≤ 5 years)", _num(metrics.get("age_cs5"), "pct")),
        ("age mean signed error (years)", _num(metrics.get("age_mean_signed_error"), "signed")),
        ("slope of predicted vs true age", _num(metrics.get("age_slope"))),
        ("gender accuracy", _num(metrics.get("gender_accuracy"), "pct")),
        ("gender calibration error (ECE)", _num(calibration.get("ece"), "pct")),
        (
            "age interval coverage (nominal "
            + _num(metrics.get("age_interval_nominal_coverage"), "pct")
            + ")",
            _num(metrics.get("age_interval_coverage"), "pct"),
        ),
        ("faces found", _faces_found(metrics)),
        ("images per second", _num(metrics.get("images_per_second"))),
    ]
    if "age_bin_accuracy" in metrics:
        rows.insert(4, ("age-bin accuracy", _num(metrics["age_bin_accuracy"], "pct")))
    return _table(("metric", "value"), [(_esc(k), v) for k, v in rows])


def _scatter(records: Sequence[Mapping[str, Any]]) -> str:
    pairs = [
        (float(r["age"]), float(r["pred_age"]))
        for r in records
        if r.get("age") is not None and r.get("pred_age") is not None
    ]
    if not pairs:
        return _empty("No image with both a true age and a found face.")
    true, predicted = zip(*pairs, strict=True)
    svg = plots.scatter_identity(true, predicted)
    return _figure(
        svg,
        f"{len(pairs)} images. Points above the dashed identity line are over-estimates; a fit "
        "slope below 1 means young ages are over- and old ages under-estimated.",
    )


def _decades(metrics: Mapping[str, Any]) -> str:
    by_decade: Mapping[str, Mapping[str, Any]] = metrics.get("by_decade") or {}
    if not by_decade:
        return _empty("No image with a true age and a found face.")
    names = list(by_decade)
    svg = plots.bar_chart(
        names,
        {
            "mean signed error": [by_decade[d]["age_mean_signed_error"] for d in names],
            "MAE": [by_decade[d]["age_mae"] for d in names],
        },
        title="Age error by decade of the true age",
        xlabel="true age",
        ylabel="years",
        counts=[by_decade[d]["n"] for d in names],
    )
    table = _table(
        ("decade", "n", "MAE", "CS@5", "signed error", "interval coverage", "gender acc."),
        [
            (
                _esc(d),
                _num(g["n"], "int"),
                _num(g.get("age_mae")),
                _num(g.get("age_cs5"), "pct"),
                _num(g.get("age_mean_signed_error"), "signed"),
                _num(g.get("age_interval_coverage"), "pct"),
                _num(g.get("gender_accuracy"), "pct"),
            )
            for d, g in by_decade.items()
        ],
    )
    return f"<div class='plots'>{_figure(svg, 'Signed error = predicted - true.')}</div>{table}"


def _bins(metrics: Mapping[str, Any]) -> str:
    if "age_bin_accuracy" not in metrics:
        return _empty("The labels have no age_low,age_high columns (or no binned row had a face).")
    groups: Mapping[str, Mapping[str, Any]] = metrics.get("age_bin_by_decade") or {}
    names = list(groups)
    svg = plots.bar_chart(
        names,
        {"bin accuracy": [groups[d]["age_bin_accuracy"] for d in names]},
        title="Age-bin accuracy by decade of the bin centre",
        xlabel="bin centre",
        ylabel="share inside the bin",
        ylim=(0, 1.05),
        reference=float(metrics["age_bin_accuracy"]),
        reference_label="overall",
        counts=[groups[d]["n"] for d in names],
    )
    note = (
        f"Overall {_num(metrics['age_bin_accuracy'], 'pct')}: a prediction counts as right when "
        "the predicted age, rounded to whole years, lies inside [age_low, age_high]."
    )
    return f"<div class='plots'>{_figure(svg, note)}</div>"


def _gender_groups(metrics: Mapping[str, Any]) -> str:
    figures = []
    for key, label in (("by_decade", "decade of the true age"), ("by_race", "race")):
        groups: Mapping[str, Mapping[str, Any]] = metrics.get(key) or {}
        names = [n for n in groups if groups[n].get("gender_accuracy") is not None]
        if not names:
            continue
        svg = plots.bar_chart(
            names,
            {"gender accuracy": [groups[n]["gender_accuracy"] for n in names]},
            title=f"Gender accuracy by {label}",
            ylabel="accuracy",
            ylim=(0, 1.05),
            reference=metrics.get("gender_accuracy"),
            reference_label="overall",
            counts=[groups[n]["n"] for n in names],
        )
        figures.append(_figure(svg, "Dashed line: overall accuracy; n = images with a face."))
    if not figures:
        return _empty("No image with a gender label and a found face.")
    by_race: Mapping[str, Mapping[str, Any]] = metrics.get("by_race") or {}
    table = ""
    if by_race:
        table = _table(
            ("race", "n", "gender acc.", "age MAE", "signed error", "interval coverage"),
            [
                (
                    _esc(r),
                    _num(g["n"], "int"),
                    _num(g.get("gender_accuracy"), "pct"),
                    _num(g.get("age_mae")),
                    _num(g.get("age_mean_signed_error"), "signed"),
                    _num(g.get("age_interval_coverage"), "pct"),
                )
                for r, g in by_race.items()
            ],
        )
    return f"<div class='plots'>{''.join(figures)}</div>{table}"


def _interval(metrics: Mapping[str, Any]) -> str:
    overall = metrics.get("age_interval_coverage")
    if overall is None:
        return _empty("No image with a true age and a found face.")
    nominal = metrics.get("age_interval_nominal_coverage")
    by_decade: Mapping[str, Mapping[str, Any]] = metrics.get("by_decade") or {}
    names = ["all", *by_decade]
    values = [overall, *(g.get("age_interval_coverage") for g in by_decade.values())]
    counts = [sum(int(g["n"]) for g in by_decade.values()), *(g["n"] for g in by_decade.values())]
    svg = plots.bar_chart(
        names,
        {"share of true ages inside the interval": values},
        title="Age interval coverage, overall and by decade",
        ylabel="coverage",
        ylim=(0, 1.05),
        reference=nominal,
        reference_label=None if nominal is None else f"nominal {_num(nominal, 'pct')}",
        counts=counts,
    )
    note = (
        f"Overall {_num(overall, 'pct')} of true ages fall inside the predicted age interval. "
        "Above the nominal line the intervals are too wide, below it too narrow."
    )
    return f"<div class='plots'>{_figure(svg, note)}</div>"


def _calibration(metrics: Mapping[str, Any]) -> str:
    calibration = metrics.get("gender_calibration") or {}
    if not calibration.get("n"):
        return _empty("No gender probability to calibrate (no gender label with a found face).")
    bins: Sequence[Mapping[str, Any]] = calibration["bins"]
    svg = plots.reliability_diagram(bins)
    table = _table(
        ("probability bin", "n", "mean confidence", "accuracy"),
        [
            (
                f"{b['low']:.2f}–{b['high']:.2f}",
                _num(b["n"], "int"),
                _num(b["confidence"], "pct"),
                _num(b["accuracy"], "pct"),
            )
            for b in bins
        ],
    )
    note = (
        f"ECE {_num(calibration.get('ece'), 'pct')} over {calibration['n']} images: bars below "
        "the diagonal mean over-confidence. Numbers in the bars are the bin counts."
    )
    return f"<div class='plots'>{_figure(svg, note)}{table}</div>"


def render_eval_html(
    metrics: Mapping[str, Any], records: Sequence[Mapping[str, Any]], *, title: str | None = None
) -> str:
    """The report as one HTML string, from `agelens.evaluate.evaluate`'s (metrics, records);
    `dataset`, `labels`, `split` and `command` in metrics fill the header when present."""
    heading = title or f"agelens eval: {metrics.get('dataset', 'dataset')}"
    body = "".join(
        (
            _section("summary", _summary(metrics)),
            _section("age-scatter", _scatter(records)),
            _section("age-decades", _decades(metrics)),
            _section("age-bins", _bins(metrics)),
            _section("gender-groups", _gender_groups(metrics)),
            _section("interval-calibration", _interval(metrics)),
            _section("gender-calibration", _calibration(metrics)),
        )
    )
    return page(heading, _header(metrics), SECTIONS, body)


def write_eval_html(
    path: Path, metrics: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> None:
    """Write `render_eval_html` to `path` (its folder is created)."""
    text = render_eval_html(metrics, records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
