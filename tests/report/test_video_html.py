"""`agelens report` on track files of `agelens video`: people per age band and gender, time in
view, in every file format; other files are still read as photo results.

The track rows here are written by hand (the report reads rows; the rows of real videos are
tested in tests/video)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agelens.cli import EXIT_USAGE, app
from agelens.report.video_html import is_track_file, people_of_tracks, read_tracks
from agelens.video.output import TRACK_COLUMNS, write_table

runner = CliRunner()


def track_row(track_id: int, frame: int, age: float | None, gender: str | None) -> dict[str, Any]:
    return {
        "source": "door.mp4",
        "frame_index": frame,
        "timestamp_s": frame / 10,
        "scene": 0,
        "track_id": track_id,
        "box_x1_px": 10.0,
        "box_y1_px": 10.0,
        "box_x2_px": 90.0,
        "box_y2_px": 90.0,
        "face_size_px": 80.0,
        "detection_score": 0.9,
        "age_years": age,
        "gender": gender,
        "detector": "blazeface-full",
        "estimator": "ensemble",
    }


ROWS = (
    # Track 1: in view 0.0-4.9 s, answered 34 F after its first estimates.
    [track_row(1, f, None if f < 3 else 34.0, None if f < 3 else "F") for f in range(50)]
    # Track 2: 1.0-1.4 s, 67 M.
    + [track_row(2, f, 67.0, "M") for f in range(10, 15)]
    # Track 3: seen twice, never estimated (too small).
    + [track_row(3, f, None, None) for f in (20, 21)]
)


@pytest.fixture(params=[".parquet", ".csv", ".jsonl"])
def track_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / f"tracks{request.param}"
    write_table(path, TRACK_COLUMNS, ROWS)
    return path


def test_track_files_are_told_from_photo_results(track_file: Path, tmp_path: Path) -> None:
    assert is_track_file(track_file)
    photos = tmp_path / "results.csv"
    photos.write_text("path,status\na.jpg,no_face\n")
    assert not is_track_file(photos)
    assert not is_track_file(tmp_path / "absent.parquet")


def test_people_are_tracks_with_their_last_answer_and_dwell(track_file: Path) -> None:
    people = people_of_tracks(read_tracks(track_file))
    assert [(p["track_id"], p["gender"], p["age_years"]) for p in people] == [
        (1, "F", 34.0),
        (2, "M", 67.0),
        (3, None, None),
    ]
    assert [round(p["dwell_s"], 2) for p in people] == [4.9, 0.4, 0.1]


def test_report_json_counts_people_per_band_and_dwell(track_file: Path) -> None:
    result = runner.invoke(app, ["report", str(track_file), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["people"], summary["people_estimated"]) == (3, 2)
    bands = {b["band"]: (b["F"], b["M"]) for b in summary["age_bands"]}
    assert bands["30-39"] == (1, 0)
    assert bands["60-69"] == (0, 1)
    assert summary["dwell_histogram"]["0-1 s"] == 2
    assert summary["dwell_histogram"]["2-5 s"] == 1


def test_report_html_and_pngs_of_a_track_file(track_file: Path, tmp_path: Path) -> None:
    html, pngs = tmp_path / "report.html", tmp_path / "plots"
    result = runner.invoke(
        app, ["report", str(track_file), "--html", str(html), "--png", str(pngs)]
    )
    assert result.exit_code == 0, result.output
    assert "3 people (2 estimated)" in result.output
    page = html.read_text()
    assert "People by age band" in page
    assert "Time in view" in page
    assert "<svg" in page
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert sorted(p.name for p in pngs.iterdir()) == ["dwell_time.png", "people_by_age.png"]


def test_an_empty_track_file_reports_no_people(tmp_path: Path) -> None:
    path = tmp_path / "tracks.parquet"
    write_table(path, TRACK_COLUMNS, [])
    result = runner.invoke(app, ["report", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["people"] == 0


def test_a_track_file_with_a_missing_column_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "tracks.csv"
    path.write_text("track_id,frame_index\n1,0\n")
    result = runner.invoke(app, ["report", str(path), "--json"])
    assert result.exit_code == EXIT_USAGE
    assert "track file" in result.output
