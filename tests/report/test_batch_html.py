"""`agelens report`: real result rows (the Analyzer on real photos, plus an error row and a
no-face row) in each file format, turned into a self-contained page, PNGs and JSON figures;
empty and corrupt results files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from agelens.cli import EXIT_USAGE, app
from agelens.errors import ImageDecodeError, ResultsFileError
from agelens.pipeline import Analyzer
from agelens.report.batch_html import (
    CAVEAT,
    MAX_LISTED_ERRORS,
    SECTIONS,
    read_results,
    render_batch_html,
    summarise,
)
from agelens.rows import COLUMN_NAMES, error_row, result_rows, rows_to_table, sha256_bytes
from tests.report.test_eval_html import _assert_self_contained

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHART_NAMES = {
    "faces_per_image",
    "age_histogram",
    "age_pyramid",
    "gender_share_by_age",
    "detection_scores",
    "face_sizes",
}


@pytest.fixture(scope="module")
def fast_analyzer() -> Analyzer:
    return Analyzer("blazeface-fast", "faceapi")


@pytest.fixture(scope="module")
def rows(fast_analyzer: Analyzer, astronaut: NDArray[np.uint8]) -> list[dict[str, Any]]:
    """The astronaut (one face), a grey picture (no face) and an image that failed."""
    [portrait, grey] = fast_analyzer.analyze_arrays(
        [astronaut, np.full((240, 320, 3), 128, np.uint8)]
    )
    return [
        *result_rows("photos/astronaut.png", sha256_bytes(astronaut.tobytes()), portrait),
        *result_rows("photos/grey.png", "0" * 64, grey),
        error_row("photos/broken.jpg", None, ImageDecodeError("photos/broken.jpg is truncated")),
    ]


def write_results(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows in the format the suffix names, the way batch and the jobs API write them."""
    table = rows_to_table(rows)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_report_from_each_format(rows: list[dict[str, Any]], tmp_path: Path, suffix: str) -> None:
    results = write_results(rows, tmp_path / f"results{suffix}")
    html, png = tmp_path / "out" / "report.html", tmp_path / "png"
    outcome = runner.invoke(
        app, ["report", str(results), "--html", str(html), "--png", str(png), "--json"]
    )
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.stdout)
    assert summary["images"] == 3
    assert summary["images_analysed"] == 2
    assert summary["images_with_faces"] == summary["images_without_faces"] == 1
    assert summary["images_failed"] == 1
    assert summary["faces"] == 1
    assert summary["faces_per_image"]["counts"] == {"0": 1, "1": 1}
    assert summary["gender"] == {"F": 1, "M": 0}  # Eileen Collins
    assert 20 <= summary["age_years"]["median"] <= 60
    assert summary["errors"]["by_type"] == {"ImageDecodeError": 1}
    assert summary["errors"]["listed"][0]["path"] == "photos/broken.jpg"
    assert summary["models"]["detector"] == ["blazeface-fast"]
    assert sum(b["faces"] for b in summary["age_bands"]) == 1

    page = html.read_text(encoding="utf-8")
    _assert_self_contained(page)
    for anchor, title in SECTIONS:
        assert f'id="{anchor}"' in page
        assert title in page
    assert CAVEAT in page
    assert page.count("<svg") == len(CHART_NAMES)
    assert "photos/broken.jpg is truncated" in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids clash between inlined plots"
    assert {p.stem for p in png.iterdir()} == CHART_NAMES
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in png.iterdir())


def test_report_on_sample_photos(
    samples_dir: Path, fast_analyzer: Analyzer, rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    sample_rows = list(rows)
    photos = sorted(samples_dir.glob("*.jpg"))
    for photo in photos:
        data = photo.read_bytes()
        sample_rows += result_rows(str(photo), sha256_bytes(data), fast_analyzer.analyze(data))
    results = write_results(sample_rows, tmp_path / "samples.parquet")
    outcome = runner.invoke(app, ["report", str(results), "--json"])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.stdout)
    assert summary["images"] == 3 + len(photos)
    assert summary["faces"] == sum(r["status"] == "face" for r in sample_rows)
    assert summary["faces"] >= 20  # sample1-6 hold 3 to 5 women each
    counts = summary["faces_per_image"]["counts"]
    assert sum(counts.values()) == summary["images_analysed"]
    assert sum(int(k) * n for k, n in counts.items()) == summary["faces"]
    assert summary["gender"]["F"] > summary["gender"]["M"]
    bands = summary["age_bands"]
    assert sum(b["F"] + b["M"] for b in bands) == summary["faces"]
    page = render_batch_html(read_results(results), source="samples")
    _assert_self_contained(page)
    assert page.count("<svg") == len(CHART_NAMES)


@pytest.mark.parametrize("name", ["empty.parquet", "empty.jsonl", "header-only.csv"])
def test_empty_results_file_gives_an_empty_report(tmp_path: Path, name: str) -> None:
    results = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(rows_to_table([]), results)
    elif name.endswith(".csv"):
        results.write_text(",".join(COLUMN_NAMES) + "\n")
    else:
        results.write_bytes(b"")
    html = tmp_path / "report.html"
    outcome = runner.invoke(app, ["report", str(results), "--html", str(html), "--json"])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.stdout)
    assert summary["images"] == summary["faces"] == summary["rows"] == 0
    assert summary["age_years"] is None
    page = html.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert "<svg" not in page
    assert "No face in these results." in page


def _corrupt(tmp_path: Path, kind: str) -> Path:
    if kind == "garbage parquet":
        path = tmp_path / "r.parquet"
        path.write_bytes(b"this is not parquet at all")
    elif kind == "truncated parquet":
        full = tmp_path / "full.parquet"
        pq.write_table(rows_to_table([error_row("a.jpg", None, ("E", "m"))]), full)
        path = tmp_path / "r.parquet"
        path.write_bytes(full.read_bytes()[:-20])
    elif kind == "csv without the columns":
        path = tmp_path / "r.csv"
        path.write_text("file,age\na.jpg,30\n")
    elif kind == "jsonl with a broken line":
        path = tmp_path / "r.jsonl"
        path.write_text('{"path": "a.jpg", "status": "no_face"}\n{"path": \n')
    elif kind == "unknown status":
        path = tmp_path / "r.parquet"
        table = rows_to_table([error_row("a.jpg", None, ("E", "m"))])
        table = table.set_column(2, "status", pa.array(["maybe"]))
        pq.write_table(table, path)
    elif kind == "unknown suffix":
        path = tmp_path / "r.txt"
        path.write_text("path,status\n")
    else:
        path = tmp_path / "absent.parquet"
    return path


@pytest.mark.parametrize(
    "kind",
    [
        "garbage parquet",
        "truncated parquet",
        "csv without the columns",
        "jsonl with a broken line",
        "unknown status",
        "unknown suffix",
        "missing file",
    ],
)
def test_corrupt_results_file_is_a_usage_error(tmp_path: Path, kind: str) -> None:
    results = _corrupt(tmp_path, kind)
    with pytest.raises(ResultsFileError):
        read_results(results)
    html = tmp_path / "report.html"
    outcome = runner.invoke(app, ["report", str(results), "--html", str(html)])
    assert outcome.exit_code == EXIT_USAGE
    assert outcome.stdout == ""
    assert outcome.stderr.startswith("error: ")
    assert not html.exists()


def test_error_list_is_capped_with_a_count(rows: list[dict[str, Any]]) -> None:
    failures = [
        error_row(f"bad/{i}.jpg", None, ("UrlFetchError", f"HTTP 404 <{i}>")) for i in range(60)
    ]
    table = rows_to_table([*rows, *failures])
    summary = summarise(table)
    assert summary["errors"]["count"] == 61
    assert len(summary["errors"]["listed"]) == MAX_LISTED_ERRORS
    assert summary["errors"]["not_listed"] == 61 - MAX_LISTED_ERRORS
    page = render_batch_html(table, summary=summary, charts=[])
    assert "and 11 more" in page
    assert "HTTP 404 &lt;0&gt;" in page  # messages are escaped
    assert "<0>" not in page


def test_report_needs_an_output(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    results = write_results(rows, tmp_path / "r.parquet")
    outcome = runner.invoke(app, ["report", str(results)])
    assert outcome.exit_code == EXIT_USAGE
    assert "--html" in outcome.stderr


def test_count_axes_have_whole_number_ticks() -> None:
    from agelens.report import plots

    # 2 images at most: matplotlib alone would tick 0, 0.25, 0.5, ... 2.0
    faces_per_image = plots.bars(
        ["0", "1", "2"], {"images": [1.0, 2.0, 1.0]}, title="t", whole_numbers=True
    )
    ages = plots.histogram({"F": [30.0, 31.0], "M": [50.0]}, [0, 20, 40, 60], title="t")
    pyramid = plots.pyramid(
        ["0-9", "10-19"], [1, 2], [2, 1], left_label="F", right_label="M", title="t"
    )
    for ticks in (
        faces_per_image.figure.axes[0].get_yticks(),
        ages.figure.axes[0].get_yticks(),
        pyramid.figure.axes[0].get_xticks(),
    ):
        assert len(ticks) >= 2
        assert all(float(tick).is_integer() for tick in ticks), ticks


def test_report_page_does_not_scroll_sideways_on_a_phone(
    rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip("needs Debian's chromium")
    from playwright.sync_api import sync_playwright

    long_path = "photos/" + "/".join(["a-folder-with-a-rather-long-name"] * 6) + "/broken.jpg"
    wide = [*rows, error_row(long_path, None, ImageDecodeError(f"{long_path} is truncated"))]
    page_file = tmp_path / "report.html"
    page_file.write_text(render_batch_html(rows_to_table(wide), source="results.parquet"))
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(page_file.as_uri())
            widths = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
        finally:
            browser.close()
    assert widths[0] <= widths[1], widths
