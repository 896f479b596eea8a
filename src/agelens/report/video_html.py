"""`agelens report` on a track file of `agelens video`: people (not faces) per age band and
gender, and how long each stayed in view (dwell time), as figures, an HTML page and PNGs.

A person is a track; its age and gender are the last fused answer of its rows, its dwell time
the seconds between its first and last sighting.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agelens.errors import ResultsFileError
from agelens.report.batch_html import (
    AGE_BANDS,
    CAVEAT,
    GENDERS,
    SUFFIXES,
    ReportChart,
    _band,
    _spread,
    write_pngs,
)
from agelens.report.html import empty, esc, figure, num, page, table

if TYPE_CHECKING:
    import pyarrow

SECTIONS = (
    ("summary", "Summary"),
    ("people-by-age", "People by age band and estimated gender"),
    ("dwell", "Time in view"),
    ("people", "Every person"),
)
#: Upper edges (seconds) of the dwell-time histogram's bins; the last bin takes the rest.
DWELL_EDGES_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
MAX_LISTED_PEOPLE = 200


def is_track_file(path: Path) -> bool:
    """True when `path` looks like a track file of `agelens video` (it has `track_id` and
    `frame_index` columns); False for anything else, including unreadable files."""
    kind = SUFFIXES.get(path.suffix.lower())
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            names = set(pq.read_schema(path).names)
        elif kind == "csv":
            with path.open(encoding="utf-8") as file:
                names = {n.strip().strip('"') for n in file.readline().split(",")}
        elif kind == "jsonl":
            with path.open(encoding="utf-8") as file:
                first = next((line for line in file if line.strip()), "{}")
            names = set(json.loads(first))
        else:
            return False
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    except Exception:
        return False
    return {"track_id", "frame_index"} <= names


def read_tracks(path: Path) -> pyarrow.Table:
    """A track file as an Arrow table with the track columns (ResultsFileError otherwise)."""
    import pyarrow as pa

    from agelens.video.output import TRACK_COLUMNS, read_table

    if not path.is_file():
        raise ResultsFileError(f"no track file at {path}")
    try:
        return read_table(path, TRACK_COLUMNS)
    except (pa.ArrowException, OSError, ValueError, KeyError) as error:
        raise ResultsFileError(
            f"{path} is not a readable track file of `agelens video` ({error})"
        ) from error


def people_of_tracks(tracks: pyarrow.Table) -> list[dict[str, Any]]:
    """One dict per (source, track): first/last seen, dwell, frames, last fused answer."""
    people: dict[tuple[str, int], dict[str, Any]] = {}
    for row in tracks.to_pylist():
        key = (str(row["source"]), int(row["track_id"]))
        person = people.setdefault(
            key,
            {
                "source": key[0],
                "track_id": key[1],
                "first_seen_s": row["timestamp_s"],
                "last_seen_s": row["timestamp_s"],
                "frames_seen": 0,
                "age_years": None,
                "gender": None,
            },
        )
        person["first_seen_s"] = min(person["first_seen_s"], row["timestamp_s"])
        person["last_seen_s"] = max(person["last_seen_s"], row["timestamp_s"])
        person["frames_seen"] += 1
        if row["age_years"] is not None:
            person["age_years"] = float(row["age_years"])
            person["gender"] = row["gender"]
    for person in people.values():
        person["dwell_s"] = person["last_seen_s"] - person["first_seen_s"]
    return sorted(people.values(), key=lambda p: (p["source"], p["track_id"]))


def _dwell_bin(seconds: float) -> str:
    for low, high in itertools.pairwise(DWELL_EDGES_S):
        if seconds < high:
            return f"{low:g}-{high:g} s"
    return f"{DWELL_EDGES_S[-1]:g}+ s"


def summarise_tracks(tracks: pyarrow.Table) -> dict[str, Any]:
    """The report's figures as a JSON-ready dict: people per age band and gender, dwell time
    spread and histogram, and the people themselves (the first MAX_LISTED_PEOPLE)."""
    people = people_of_tracks(tracks)
    bands = []
    for _, name in AGE_BANDS:
        members = [
            p for p in people if p["age_years"] is not None and _band(p["age_years"]) == name
        ]
        bands.append(
            {"band": name, "people": len(members)}
            | {g: sum(1 for p in members if p["gender"] == g) for g in GENDERS}
        )
    dwell_counts = Counter(_dwell_bin(p["dwell_s"]) for p in people)
    dwell_order = [_dwell_bin(low) for low in DWELL_EDGES_S]
    sources = sorted({p["source"] for p in people})
    frames = {
        (r["source"], r["frame_index"])
        for r in tracks.select(["source", "frame_index"]).to_pylist()
    }
    return {
        "kind": "tracks",
        "sources": sources,
        "rows": tracks.num_rows,
        "frames_with_faces": len(frames),
        "people": len(people),
        "people_estimated": sum(1 for p in people if p["age_years"] is not None),
        "gender": {g: sum(1 for p in people if p["gender"] == g) for g in GENDERS},
        "age_years": _spread([p["age_years"] for p in people if p["age_years"] is not None]),
        "age_bands": bands,
        "dwell_s": _spread([p["dwell_s"] for p in people]),
        "dwell_histogram": {b: dwell_counts.get(b, 0) for b in dwell_order},
        "listed": [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in p.items()}
            for p in people[:MAX_LISTED_PEOPLE]
        ],
        "not_listed": max(0, len(people) - MAX_LISTED_PEOPLE),
        "models": {
            kind: sorted({str(v) for v in tracks.column(kind).to_pylist() if v is not None})
            for kind in ("detector", "estimator")
        },
    }


def draw_track_charts(summary: Mapping[str, Any]) -> list[ReportChart]:
    """The pyramid of people per age band and the dwell-time bars. Needs matplotlib."""
    from agelens.report import plots

    charts: list[ReportChart] = []
    bands = summary["age_bands"]
    if summary["people_estimated"]:
        charts.append(
            ReportChart(
                "people_by_age",
                "people-by-age",
                f"{summary['people_estimated']} people with an estimate, by the fused apparent "
                "age and estimated gender of their track.",
                plots.pyramid(
                    [b["band"] for b in bands],
                    [b["F"] for b in bands],
                    [b["M"] for b in bands],
                    left_label="F (estimated)",
                    right_label="M (estimated)",
                    title="People by apparent age band",
                    xlabel="people",
                ),
            )
        )
    if summary["people"]:
        histogram = summary["dwell_histogram"]
        charts.append(
            ReportChart(
                "dwell_time",
                "dwell",
                "Seconds between each person's first and last sighting.",
                plots.bars(
                    list(histogram),
                    {"people": [float(v) for v in histogram.values()]},
                    title="Time in view",
                    xlabel="dwell time",
                    ylabel="people",
                ),
            )
        )
    return charts


def _figures(charts: Sequence[ReportChart], section: str, missing: str) -> str:
    chosen = [figure(c.chart.svg(), c.caption) for c in charts if c.section == section]
    return f"<div class='plots'>{''.join(chosen)}</div>" if chosen else empty(missing)


def render_tracks_html(
    summary: Mapping[str, Any], charts: Sequence[ReportChart], *, source: str | None = None
) -> str:
    """The track report as one self-contained HTML page."""
    dwell = summary["dwell_s"] or {}
    age = summary["age_years"] or {}
    overview = [
        ("people (tracks)", num(summary["people"], "int")),
        ("people with an age and gender", num(summary["people_estimated"], "int")),
        ("estimated F", num(summary["gender"]["F"], "int")),
        ("estimated M", num(summary["gender"]["M"], "int")),
        ("apparent age, median (years)", num(age.get("median"))),
        ("time in view, median (s)", num(dwell.get("median"))),
        ("time in view, longest (s)", num(dwell.get("max"))),
        ("frames with a face", num(summary["frames_with_faces"], "int")),
    ]
    listed = [
        (
            esc(p["track_id"]),
            esc(p["gender"] or "–"),
            num(p["age_years"]),
            num(p["first_seen_s"]),
            num(p["last_seen_s"]),
            num(p["dwell_s"]),
            num(p["frames_seen"], "int"),
        )
        for p in summary["listed"]
    ]
    people_table = (
        table(
            ("track", "gender", "age", "first seen (s)", "last seen (s)", "dwell (s)", "rows"),
            listed,
        )
        if listed
        else empty("No person in this track file.")
    )
    if summary["not_listed"]:
        people_table += f"<p>{summary['not_listed']} more not listed.</p>"
    sections = {
        "summary": table(("", "value"), [(esc(k), v) for k, v in overview]),
        "people-by-age": _figures(charts, "people-by-age", "No person was estimated."),
        "dwell": _figures(charts, "dwell", "No person in this track file."),
        "people": people_table,
    }
    body = "".join(
        f'<section id="{anchor}"><h2>{esc(title)}</h2>{sections[anchor]}</section>'
        for anchor, title in SECTIONS
    )
    run = [
        ("track file", f"<code>{esc(source or '–')}</code>"),
        ("videos", esc(", ".join(summary["sources"]) or "–")),
        ("detector", esc(", ".join(summary["models"]["detector"]) or "–")),
        ("estimator", esc(", ".join(summary["models"]["estimator"]) or "–")),
    ]
    header = table(("run", ""), [(esc(k), v) for k, v in run], css="run")
    header += f"<p class='caveat'>{CAVEAT}</p>"
    return page(f"agelens video report: {source or 'tracks'}", header, SECTIONS, body)


def write_tracks_report(
    tracks: pyarrow.Table,
    *,
    html_path: Path | None = None,
    png_dir: Path | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Write the HTML page and/or PNGs of a track file; return `summarise_tracks`'s dict."""
    summary = summarise_tracks(tracks)
    if html_path is None and png_dir is None:
        return summary
    charts = draw_track_charts(summary)
    if png_dir is not None:
        write_pngs(charts, png_dir)
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_tracks_html(summary, charts, source=source), encoding="utf-8")
    return summary


__all__ = [
    "DWELL_EDGES_S",
    "is_track_file",
    "people_of_tracks",
    "read_tracks",
    "render_tracks_html",
    "summarise_tracks",
    "write_tracks_report",
]
