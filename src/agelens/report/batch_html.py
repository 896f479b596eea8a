"""`agelens report`: what a results table (the rows of `agelens.rows`, from `agelens batch` or
the jobs API) says about a photo collection, as figures (`summarise`), as one self-contained
HTML page (plots inlined as SVG, no external URL) and as PNG files.

Reading a results file needs only pyarrow; drawing needs the `report` extra (matplotlib).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agelens.errors import ResultsFileError
from agelens.report.html import empty, esc, figure, num, page, table
from agelens.rows import COLUMN_NAMES, arrow_schema

if TYPE_CHECKING:
    import pyarrow

    from agelens.report.plots import Chart

#: (lowest age, label); a band runs to the next band's lowest age
AGE_BANDS: tuple[tuple[float, str], ...] = (
    (0, "0-2"),
    (3, "3-9"),
    (10, "10-19"),
    (20, "20-29"),
    (30, "30-39"),
    (40, "40-49"),
    (50, "50-59"),
    (60, "60-69"),
    (70, "70+"),
)
GENDERS = ("F", "M")
MAX_LISTED_ERRORS = 50
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl"}
SUFFIXES |= {".ndjson": "jsonl", ".json": "jsonl"}
STATUSES = frozenset({"face", "no_face", "error"})

CAVEAT = (
    "<strong>How to read these figures.</strong> <em>Apparent</em> age is how old a face looks "
    "to the model, not a birth date. The gender figures are binary estimates from appearance "
    "(F or M); they say nothing about anyone's gender identity. Errors are larger for children "
    "and older people, and for groups that are under-represented in the models' training data, "
    "and the distributions below inherit those errors. Use them to describe a collection, "
    "never to make decisions about individuals."
)

SECTIONS = (
    ("summary", "Summary"),
    ("faces-per-image", "Faces per image"),
    ("age", "Apparent age by estimated gender"),
    ("gender-by-age", "Estimated gender share by age band"),
    ("detection", "Detection scores and face sizes"),
    ("errors", "Images that could not be analysed"),
)


# ------------------------------------------------------------------ reading


def read_results(path: Path) -> pyarrow.Table:
    """A results file as an Arrow table with exactly the columns of agelens.rows, in order.

    The format follows the suffix: `.parquet`/`.pq`, `.csv`, `.jsonl`/`.ndjson`/`.json` (one
    object per line). An empty CSV or JSONL file is an empty table. Extra columns are dropped.
    Raises ResultsFileError when the file is missing, unreadable, or lacks a column.
    """
    import pyarrow as pa

    if not path.is_file():
        raise ResultsFileError(f"no results file at {path}")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ResultsFileError(
            f"cannot tell the format of {path.name}: name it .parquet, .csv or .jsonl"
        )
    try:
        if kind != "parquet" and not path.read_bytes().strip():
            return arrow_schema().empty_table()
        loaded = _read(path, kind)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ResultsFileError(
            f"{path} is not a readable {kind} results file ({type(error).__name__}: {error}); "
            "write it with `agelens batch` or download it from the jobs API"
        ) from error
    return conform(loaded, str(path))


def _read(path: Path, kind: str) -> pyarrow.Table:
    schema = arrow_schema()
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if kind == "csv":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={f.name: f.type for f in schema}, strings_can_be_null=True
            ),
        )
    import pyarrow.json as pajson

    return pajson.read_json(path, parse_options=pajson.ParseOptions(explicit_schema=schema))


def conform(loaded: pyarrow.Table, label: str = "the results") -> pyarrow.Table:
    """`loaded` with exactly the columns of agelens.rows, cast to their types (ResultsFileError
    names what is missing or of the wrong type)."""
    import pyarrow as pa

    schema = arrow_schema()
    missing = [name for name in COLUMN_NAMES if name not in loaded.column_names]
    if missing:
        raise ResultsFileError(
            f"{label} lacks the column(s) {', '.join(missing)} of agelens.rows; is it a results "
            "file of `agelens batch` or of the jobs API?"
        )
    try:
        columns = [loaded.column(f.name).cast(f.type) for f in schema]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ResultsFileError(f"{label} has a column of the wrong type: {error}") from error
    conformed = pa.Table.from_arrays(columns, schema=schema.remove_metadata())
    unknown = set(conformed.column("status").to_pylist()) - STATUSES
    if unknown:
        raise ResultsFileError(
            f"{label} has rows with status {sorted(map(str, unknown))}; "
            f"expected one of {sorted(STATUSES)}"
        )
    return conformed


# ------------------------------------------------------------------ figures


def _band(age: float) -> str:
    label = AGE_BANDS[0][1]
    for low, name in AGE_BANDS:
        if age >= low:
            label = name
    return label


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def quantile(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {
        "min": float(ordered[0]),
        "p10": quantile(0.1),
        "median": float(statistics.median(ordered)),
        "mean": float(statistics.fmean(ordered)),
        "p90": quantile(0.9),
        "max": float(ordered[-1]),
    }


def _faces_bucket(count: int) -> str:
    return "10+" if count >= 10 else str(count)


def summarise(results: pyarrow.Table) -> dict[str, Any]:
    """The report's figures as a JSON-ready dict (counts, spreads, per-band counts, errors).

    An image is counted once per no-face row, error row, or face row with `face_index` 0, so an
    input listed twice counts twice. Ages and genders are per face.
    """
    rows: list[dict[str, Any]] = results.to_pylist()
    faces = [r for r in rows if r["status"] == "face"]
    no_face = [r for r in rows if r["status"] == "no_face"]
    failed = [r for r in rows if r["status"] == "error"]
    firsts = [r for r in faces if r["face_index"] == 0]
    per_image = [0] * len(no_face) + [int(r["faces_in_image"] or 0) for r in firsts]
    buckets = Counter(_faces_bucket(n) for n in per_image)
    order = [str(k) for k in range(10)] + ["10+"]
    shown = [
        k for k in order if order.index(k) <= max((order.index(b) for b in buckets), default=0)
    ]

    aged = [r for r in faces if r["age_years"] is not None]
    bands = []
    for _, name in AGE_BANDS:
        members = [r for r in aged if _band(float(r["age_years"])) == name]
        counts = {g: sum(1 for r in members if r["gender"] == g) for g in GENDERS}
        with_gender = counts["F"] + counts["M"]
        bands.append(
            {
                "band": name,
                "faces": len(members),
                **counts,
                "share_F": counts["F"] / with_gender if with_gender else None,
            }
        )
    error_types = Counter(str(r["error_type"] or "unknown") for r in failed)
    return {
        "rows": len(rows),
        "images": len(no_face) + len(failed) + len(firsts),
        "images_analysed": len(no_face) + len(firsts),
        "images_with_faces": len(firsts),
        "images_without_faces": len(no_face),
        "images_failed": len(failed),
        "faces": len(faces),
        "faces_per_image": {
            "mean": statistics.fmean(per_image) if per_image else None,
            "counts": {k: buckets.get(k, 0) for k in shown} if per_image else {},
        },
        "gender": {g: sum(1 for r in faces if r["gender"] == g) for g in GENDERS},
        "age_years": _spread([float(r["age_years"]) for r in aged]),
        "age_years_by_gender": {
            g: _spread([float(r["age_years"]) for r in aged if r["gender"] == g]) for g in GENDERS
        },
        "age_bands": bands,
        "detection_score": _spread(
            [float(r["detection_score"]) for r in faces if r["detection_score"] is not None]
        ),
        "face_size_px": _spread(
            [float(r["face_size_px"]) for r in faces if r["face_size_px"] is not None]
        ),
        "errors": {
            "count": len(failed),
            "by_type": dict(error_types.most_common()),
            "listed": [
                {k: r[k] for k in ("path", "error_type", "error_message")}
                for r in failed[:MAX_LISTED_ERRORS]
            ],
            "not_listed": max(0, len(failed) - MAX_LISTED_ERRORS),
        },
        "models": {
            kind: sorted({str(r[kind]) for r in rows if r[kind] is not None})
            for kind in ("detector", "estimator")
        },
    }


# ------------------------------------------------------------------ plots


@dataclass(frozen=True, slots=True)
class ReportChart:
    """One plot of the report: a file-name stem, the section it belongs to and its caption."""

    name: str
    section: str
    caption: str
    chart: Chart


def draw_charts(results: pyarrow.Table, summary: Mapping[str, Any]) -> list[ReportChart]:
    """Every plot the data allows (none for a table without faces). Needs matplotlib."""
    import numpy as np

    from agelens.report import plots

    charts: list[ReportChart] = []
    counts: Mapping[str, int] = summary["faces_per_image"]["counts"]
    if counts:
        charts.append(
            ReportChart(
                "faces_per_image",
                "faces-per-image",
                f"{summary['images_analysed']} analysed images; mean "
                f"{num(summary['faces_per_image']['mean'])} faces per image.",
                plots.bars(
                    list(counts),
                    {"images": [float(v) for v in counts.values()]},
                    title="Faces found per image",
                    xlabel="faces in the image",
                    ylabel="images",
                    whole_numbers=True,
                ),
            )
        )
    faces = [r for r in results.to_pylist() if r["status"] == "face"]
    ages = {
        g: [float(r["age_years"]) for r in faces if r["gender"] == g and r["age_years"] is not None]
        for g in GENDERS
    }
    if any(ages.values()):
        top = max(100.0, 5 * math.ceil(max(max(v, default=0) for v in ages.values()) / 5))
        charts.append(
            ReportChart(
                "age_histogram",
                "age",
                "Apparent age of every face, in 5-year bins, stacked by estimated gender.",
                plots.histogram(
                    {f"{g} (estimated)": v for g, v in ages.items()},
                    list(np.arange(0, top + 5, 5)),
                    title="Apparent age by estimated gender",
                    xlabel="apparent age (years)",
                    ylabel="faces",
                ),
            )
        )
        bands: Sequence[Mapping[str, Any]] = summary["age_bands"]
        charts.append(
            ReportChart(
                "age_pyramid",
                "age",
                "Faces per apparent-age band: estimated F to the left, M to the right.",
                plots.pyramid(
                    [b["band"] for b in bands],
                    [b["F"] for b in bands],
                    [b["M"] for b in bands],
                    left_label="F (estimated)",
                    right_label="M (estimated)",
                    title="Age pyramid",
                ),
            )
        )
        charts.append(
            ReportChart(
                "gender_share_by_age",
                "gender-by-age",
                "Share of faces estimated F and M in each apparent-age band; the dashed line "
                "is parity. Bands with few faces say little.",
                plots.stacked_shares(
                    [b["band"] for b in bands],
                    {
                        "F (estimated)": [b["F"] for b in bands],
                        "M (estimated)": [b["M"] for b in bands],
                    },
                    title="Estimated gender share by apparent-age band",
                    xlabel="apparent age",
                    reference=0.5,
                ),
            )
        )
    scores = [float(r["detection_score"]) for r in faces if r["detection_score"] is not None]
    if scores:
        low = min(0.5, math.floor(min(scores) * 20) / 20)
        charts.append(
            ReportChart(
                "detection_scores",
                "detection",
                "Detector confidence of every kept face. Many faces near the threshold suggest "
                "hard photos (small, blurred, turned or occluded faces).",
                plots.histogram(
                    {"faces": scores},
                    list(np.linspace(low, 1.0, 21)),
                    title="Detection score",
                    xlabel="detection score",
                    ylabel="faces",
                ),
            )
        )
    sizes = [float(r["face_size_px"]) for r in faces if r["face_size_px"] is not None]
    if sizes:
        smallest, largest = max(1.0, min(sizes)), max(sizes)
        if largest <= smallest * 1.01:
            smallest, largest = smallest / 1.5, largest * 1.5
        charts.append(
            ReportChart(
                "face_sizes",
                "detection",
                "Longer side of each face box, on a log scale. Estimates on faces under about "
                "40 pixels are less reliable.",
                plots.histogram(
                    {"faces": sizes},
                    list(np.geomspace(smallest, largest, 21)),
                    title="Face size",
                    xlabel="face box, longer side (pixels)",
                    ylabel="faces",
                    log_x=True,
                ),
            )
        )
    return charts


def write_pngs(charts: Sequence[ReportChart], folder: Path) -> list[Path]:
    """Each chart as `folder/<name>.png` (the folder is created); the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for item in charts:
        target = folder / f"{item.name}.png"
        target.write_bytes(item.chart.png())
        written.append(target)
    return written


# ------------------------------------------------------------------ HTML


def _figures(charts: Sequence[ReportChart], section: str, missing: str) -> str:
    chosen = [figure(c.chart.svg(), c.caption) for c in charts if c.section == section]
    return f"<div class='plots'>{''.join(chosen)}</div>" if chosen else empty(missing)


def _summary_table(summary: Mapping[str, Any]) -> str:
    age = summary["age_years"] or {}
    gender = summary["gender"]
    faces = summary["faces"]

    def share(n: int) -> str:
        return f"{n} ({100 * n / faces:.1f}%)" if faces else str(n)

    rows = [
        ("images", num(summary["images"], "int")),
        ("images analysed", num(summary["images_analysed"], "int")),
        ("images with at least one face", num(summary["images_with_faces"], "int")),
        ("images without a face", num(summary["images_without_faces"], "int")),
        ("images that could not be analysed", num(summary["images_failed"], "int")),
        ("faces", num(faces, "int")),
        ("faces per analysed image (mean)", num(summary["faces_per_image"]["mean"])),
        ("faces estimated F", share(gender["F"])),
        ("faces estimated M", share(gender["M"])),
        ("apparent age, median (years)", num(age.get("median"))),
        ("apparent age, 10th–90th percentile", f"{num(age.get('p10'))} – {num(age.get('p90'))}"),
    ]
    return table(("", "value"), [(esc(k), v) for k, v in rows])


def _band_table(summary: Mapping[str, Any]) -> str:
    bands: Sequence[Mapping[str, Any]] = summary["age_bands"]
    if not any(b["faces"] for b in bands):
        return ""
    return table(
        ("apparent age", "faces", "estimated F", "estimated M", "share F"),
        [
            (
                esc(b["band"]),
                num(b["faces"], "int"),
                num(b["F"], "int"),
                num(b["M"], "int"),
                num(b["share_F"], "pct"),
            )
            for b in bands
        ],
    )


def _errors(summary: Mapping[str, Any]) -> str:
    errors = summary["errors"]
    if not errors["count"]:
        return empty("Every image was read and analysed.")
    by_type = table(
        ("error type", "images"),
        [(f"<code>{esc(t)}</code>", num(n, "int")) for t, n in errors["by_type"].items()],
    )
    listed = table(
        ("path", "type", "message"),
        [
            (
                f"<code>{esc(e['path'])}</code>",
                esc(e["error_type"] or "–"),
                esc(e["error_message"] or ""),
            )
            for e in errors["listed"]
        ],
        css="text",
    )
    more = ""
    if errors["not_listed"]:
        more = f"<p class='note'>… and {errors['not_listed']} more, not listed here.</p>"
    return by_type + listed + more


def _section(anchor: str, body: str) -> str:
    title = dict(SECTIONS)[anchor]
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def render_batch_html(
    results: pyarrow.Table,
    *,
    source: str | None = None,
    title: str | None = None,
    summary: Mapping[str, Any] | None = None,
    charts: Sequence[ReportChart] | None = None,
) -> str:
    """The report as one HTML string. `summary` and `charts` are computed when not given
    (pass them to avoid drawing twice when PNGs are written too). Needs matplotlib."""
    summary = summary if summary is not None else summarise(results)
    charts = charts if charts is not None else draw_charts(results, summary)
    heading = title or f"agelens report: {source or 'results'}"
    models = summary["models"]
    run = [
        ("results", f"<code>{esc(source or '–')}</code>"),
        ("rows", num(summary["rows"], "int")),
        ("detector", esc(", ".join(models["detector"]) or "–")),
        ("estimator", esc(", ".join(models["estimator"]) or "–")),
    ]
    no_faces = "No face in these results."
    body = "".join(
        (
            _section("summary", _summary_table(summary)),
            _section(
                "faces-per-image", _figures(charts, "faces-per-image", "No image was analysed.")
            ),
            _section("age", _figures(charts, "age", no_faces)),
            _section(
                "gender-by-age", _figures(charts, "gender-by-age", no_faces) + _band_table(summary)
            ),
            _section("detection", _figures(charts, "detection", no_faces)),
            _section("errors", _errors(summary)),
        )
    )
    header = (
        table(("run", ""), [(esc(k), v) for k, v in run], css="run")
        + f"<p class='caveat'>{CAVEAT}</p>"
    )
    return page(heading, header, SECTIONS, body)


def write_report(
    results: pyarrow.Table,
    *,
    html_path: Path | None = None,
    png_dir: Path | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Write the HTML page and/or the PNGs (folders are created); return `summarise`'s dict."""
    summary = summarise(results)
    if html_path is None and png_dir is None:
        return summary
    charts = draw_charts(results, summary)
    if png_dir is not None:
        write_pngs(charts, png_dir)
    if html_path is not None:
        page = render_batch_html(results, source=source, summary=summary, charts=charts)
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(page, encoding="utf-8")
    return summary


def summary_json(summary: Mapping[str, Any]) -> str:
    """`summarise`'s dict as indented JSON."""
    return json.dumps(summary, indent=2, ensure_ascii=False)
