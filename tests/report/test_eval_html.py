"""`agelens eval --html`: a real run on a labelled folder made here (and on UTKFace when the
shared data is present); the report is one self-contained file with every section and plot."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from typer.testing import CliRunner

from agelens.cli import EXIT_USAGE, app
from agelens.evaluate import compute_metrics
from agelens.report.eval_html import SECTIONS, render_eval_html
from agelens.report.plots import bar_chart, clean_svg

runner = CliRunner()


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory: pytest.TempPathFactory, astronaut: NDArray[np.uint8]) -> Path:
    """Exact ages, binned-only rows, two races, a face-less image and a row of another split."""
    folder = tmp_path_factory.mktemp("labelled")
    rows = ["file,age,gender,race,age_low,age_high,split"]
    for i, (age, gender) in enumerate([(42, "F"), (35, "F"), (58, "M"), (42, "F")]):
        Image.fromarray(astronaut).save(folder / f"exact{i}.jpg", quality=95 - 5 * i)
        rows.append(f"exact{i}.jpg,{age},{gender},White,,,test")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(folder / "binned0.jpg")
    rows.append("binned0.jpg,,F,Black,25,45,test")
    Image.fromarray(astronaut).save(folder / "binned1.png")
    rows.append("binned1.png,,F,Black,60,100,test")
    Image.new("RGB", (160, 120), (90, 140, 200)).save(folder / "sky.png")
    rows.append("sky.png,30,M,Asian,,,test")
    rows.append("elsewhere.jpg,30,M,Asian,,,train")  # filtered out by --split
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def _assert_self_contained(page: str) -> None:
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", page)  # only in-page anchors
    assert "url(" not in page.replace("url(#", "")


def test_eval_html_report(labelled_dir: Path, tmp_path: Path) -> None:
    html, out = tmp_path / "nested" / "report.html", tmp_path / "metrics.json"
    result = runner.invoke(
        app,
        ["eval", str(labelled_dir), "--split", "test", "--html", str(html), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 7
    assert metrics["faces_found"] == 6  # the sky has none
    assert metrics["dataset"] == str(labelled_dir)
    assert metrics["split"] == "test"
    assert metrics["command"].startswith("agelens eval ")
    assert "--html" in metrics["command"]
    assert 0 <= metrics["age_bin_accuracy"] <= 1
    assert set(metrics["age_bin_by_decade"]) == {"30-39", "70+"}
    assert metrics["gender_calibration"]["n"] == 6
    assert len(metrics["gender_calibration"]["bins"]) == 10
    assert "age_interval_coverage" in metrics["by_decade"]["40-49"]

    page = html.read_text(encoding="utf-8")
    _assert_self_contained(page)
    for anchor, title in SECTIONS:
        assert f'id="{anchor}"' in page
        assert title in page
    # scatter, error by decade, bins, gender by decade and by race, interval, reliability
    assert page.count("<svg") == 7
    assert "class='empty'" not in page
    for text in ("Headline metrics", "age MAE", "age-bin accuracy", "ECE", str(labelled_dir)):
        assert text in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids clash between inlined plots"


def test_report_of_nothing_says_so() -> None:
    page = render_eval_html(compute_metrics([], n=0), [])
    _assert_self_contained(page)
    assert "<svg" not in page
    assert page.count("class='empty'") == len(SECTIONS) - 1  # all but the headline table


def test_missing_report_extra_names_the_pip_command(
    labelled_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    html = tmp_path / "report.html"
    result = runner.invoke(app, ["eval", str(labelled_dir), "--html", str(html)])
    assert result.exit_code == EXIT_USAGE
    assert "pip install 'agelens[report]'" in result.output
    assert not html.exists()


def test_plots_are_inline_svg_with_private_ids() -> None:
    svg = bar_chart(["a", "b"], {"x": [0.5, None]}, title="t")
    assert svg.startswith("<svg")
    assert "xmlns" not in svg
    assert "<metadata" not in svg
    assert clean_svg('<?xml?><svg id="q"><use href="#q"/></svg>', "z-") == (
        '<svg id="z-q"><use href="#z-q"/></svg>'
    )


def test_no_plotting_library_at_import() -> None:
    code = (
        "import sys, agelens, agelens.cli, agelens.evaluate, agelens.report.eval_html;"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr


def test_eval_html_on_utkface(utkface_dir: Path, tmp_path: Path) -> None:
    html = tmp_path / "utk.html"
    args = ["eval", str(utkface_dir), "--split", "test", "--limit", "40", "--pad", "0.5"]
    result = runner.invoke(app, [*args, "--html", str(html), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 40
    assert metrics["faces_found"] >= 36
    assert metrics["gender_calibration"]["n"] >= 30
    page = html.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert page.count("<svg") == 6  # no bins in UTKFace's labels
    assert "age_low,age_high" in page
