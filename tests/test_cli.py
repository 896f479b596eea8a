"""The `agelens` command: analyze, models, eval; output contracts and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from typer.testing import CliRunner

from agelens.cli import EXIT_MODEL, EXIT_SOME_FAILED, EXIT_USAGE, app

runner = CliRunner()


@pytest.fixture(scope="module")
def astronaut_file(tmp_path_factory: pytest.TempPathFactory, astronaut: NDArray[np.uint8]) -> Path:
    path = tmp_path_factory.mktemp("images") / "astronaut.jpg"
    Image.fromarray(astronaut).save(path, quality=95)
    return path


def _json_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_analyze_json_one_object_per_image(astronaut_file: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 48)).save(blank)
    result = runner.invoke(app, ["analyze", str(astronaut_file), str(blank), "--json"])
    assert result.exit_code == 0, result.output
    objects = _json_lines(result.stdout)
    assert [o["source"] for o in objects] == [str(astronaut_file), str(blank)]
    assert len(objects[0]["faces"]) == 1  # type: ignore[arg-type]
    assert objects[1]["faces"] == []
    assert objects[1]["image_wh"] == [64, 48]


def test_analyze_draw_writes_annotated_file(astronaut_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.jpg"
    result = runner.invoke(app, ["analyze", str(astronaut_file), "--draw", str(target)])
    assert result.exit_code == 0, result.output
    drawn = np.asarray(Image.open(target))
    assert drawn.shape == (512, 512, 3)
    assert "F " in result.stdout


def test_analyze_folder_and_draw_dir(astronaut_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "drawn"
    result = runner.invoke(
        app, ["analyze", str(astronaut_file.parent), "--draw", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "astronaut.jpg").is_file()


def test_bad_file_is_reported_and_the_rest_go_on(astronaut_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = tmp_path / "missing.jpg"
    result = runner.invoke(app, ["analyze", str(bad), str(astronaut_file), str(missing), "--json"])
    assert result.exit_code == EXIT_SOME_FAILED
    objects = _json_lines(result.stdout)
    assert [o["source"] for o in objects] == [str(bad), str(astronaut_file), str(missing)]
    errors = [o for o in objects if "error" in o]
    assert {e["error"]["code"] for e in errors} == {"image_decode_error"}  # type: ignore[index]
    assert "broken.jpg" in result.stderr


def test_stdin_input(astronaut_file: Path) -> None:
    result = runner.invoke(app, ["analyze", "-", "--json"], input=astronaut_file.read_bytes())
    assert result.exit_code == 0, result.output
    assert len(_json_lines(result.stdout)[0]["faces"]) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["analyze", "x.jpg", "--estimator", "nope"], EXIT_USAGE),
        (["analyze", "x.jpg", "--detector", "nope"], EXIT_USAGE),
        (["models", "fetch", "nope"], EXIT_USAGE),
        (["models", "info", "nope"], EXIT_USAGE),
        (["eval", "/nonexistent-dir"], EXIT_USAGE),
        (["analyze", "x.jpg", "--preset", "nope"], EXIT_USAGE),
        (["serve", "--preset", "nope"], EXIT_USAGE),
    ],
)
def test_usage_errors(args: list[str], code: int) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == code
    assert "nope" in result.stderr or "not found" in result.stderr


def test_unfetched_models_exit_3_naming_the_command(
    astronaut_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGELENS_HOME", str(tmp_path / "empty-cache"))
    result = runner.invoke(app, ["analyze", str(astronaut_file)])
    assert result.exit_code == EXIT_MODEL
    assert "agelens models fetch" in result.stderr


def test_models_list_and_info() -> None:
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert {r["name"] for r in rows} >= {"blazeface-full", "cydral", "faceapi"}
    assert all(r["fetched"] for r in rows)
    info = runner.invoke(app, ["models", "info", "faceapi"])
    assert json.loads(info.stdout)["license"] == "MIT"
    trained = json.loads(runner.invoke(app, ["models", "info", "heads-utkface"]).stdout)
    assert trained["source"] == "agelens (shipped)"
    assert trained["license"] == "non-commercial (UTKFace-derived)"
    assert "non-commercial research only" in trained["description"]
    assert trained["card"]["backbones"] == ["faceres", "faceres-deep", "faceapi", "cydral"]
    fine_tuned = json.loads(runner.invoke(app, ["models", "info", "faceapi80-utkface"]).stdout)
    assert fine_tuned["source"] == "agelens (shipped)"
    assert fine_tuned["license"] == "non-commercial (UTKFace-derived)"
    assert fine_tuned["card"]["input_size"] == 80
    assert "fine-tuned at 80 px" in fine_tuned["description"]
    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert "heads-utkface" in table.stdout


@pytest.mark.parametrize(
    ("preset", "estimator"),
    [
        ("fastest", "faceapi80-utkface"),
        ("fast", "faceapi"),
        ("balanced", "ensemble"),
        ("accurate", "heads-utkface"),
    ],
)
def test_analyze_with_a_preset(astronaut_file: Path, preset: str, estimator: str) -> None:
    result = runner.invoke(app, ["analyze", str(astronaut_file), "--preset", preset, "--json"])
    assert result.exit_code == 0, result.output
    [face] = json.loads(result.stdout)["faces"]
    # The wiring is under test here (the +/-10-year rule on the raw portrait is in
    # tests/models); every model reads this JPEG copy of the portrait as 30-36.
    assert 20 <= face["age_years"] <= 60
    assert json.loads(result.stdout)["models"]["estimator"].startswith(estimator)


def test_models_fetch_is_idempotent_and_offline() -> None:
    result = runner.invoke(app, ["models", "fetch", "cydral"])
    assert result.exit_code == 0
    assert "already present" in result.stdout


def test_eval_contract(utkface_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    result = runner.invoke(
        app,
        [
            "eval",
            str(utkface_dir),
            "--split",
            "test",
            "--limit",
            "24",
            "--pad",
            "0.5",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    for key in (
        "n",
        "faces_found",
        "age_mae",
        "age_cs5",
        "gender_accuracy",
        "by_decade",
        "by_race",
        "images_per_second",
        "age_mean_signed_error",
        "age_slope",
        "age_interval_coverage",
        "gender_calibration",
        "models",
    ):
        assert key in metrics
    assert "age_bin_accuracy" not in metrics  # UTKFace has exact ages, no bins
    assert len(metrics["gender_calibration"]["bins"]) == 10
    assert 0 <= metrics["gender_calibration"]["ece"] <= 1
    assert metrics["split"] == "test"
    assert metrics["command"] == (
        f"agelens eval {utkface_dir} --split test --limit 24 --pad 0.5 --out {out}"
    )
    assert metrics["n"] == 24
    assert metrics["faces_found"] >= 22
    assert metrics["age_mae"] < 12


def test_console_script_runs(astronaut_file: Path) -> None:
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "agelens"), "analyze", str(astronaut_file), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["faces"][0]["gender"] == "F"


def test_malloc_arena_cap_is_safe_to_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service caps glibc's malloc arenas (see cli._limit_malloc_arenas); it must never
    fail, whatever the platform, and must respect an explicit MALLOC_ARENA_MAX."""
    from agelens import cli

    calls: list[str] = []
    monkeypatch.setattr("ctypes.util.find_library", lambda name: calls.append(name) or "libc.so.6")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    cli._limit_malloc_arenas()
    assert calls == []  # the operator's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    cli._limit_malloc_arenas()
    assert calls == ["c"]


def test_analyze_help_names_every_detector() -> None:
    from agelens.models.backends import DETECTORS

    result = runner.invoke(app, ["analyze", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    for name in DETECTORS:
        assert name in result.stdout, name


def test_analyze_reports_a_large_jpeg_in_full_image_pixels_with_or_without_drawing(
    samples_dir: Path, tmp_path: Path
) -> None:
    """Without --draw a large JPEG is decoded reduced for the detector; the JSON is the
    full image's either way, and finds the same faces in the same places."""
    photo = samples_dir / "sample6.jpg"
    plain = runner.invoke(app, ["analyze", str(photo), "--json"])
    drawn = runner.invoke(app, ["analyze", str(photo), "--json", "--draw", str(tmp_path / "o.jpg")])
    assert plain.exit_code == drawn.exit_code == 0, plain.output + drawn.output
    (reduced,) = _json_lines(plain.stdout)
    (whole,) = _json_lines(drawn.stdout)
    assert reduced["image_wh"] == whole["image_wh"] == [1920, 1537]
    assert reduced["source"] == str(photo)
    faces = sorted(reduced["faces"], key=lambda f: f["box_xyxy"][0])  # type: ignore[arg-type,index]
    references = sorted(whole["faces"], key=lambda f: f["box_xyxy"][0])  # type: ignore[arg-type,index]
    assert len(faces) == len(references) == 4
    for face, reference in zip(faces, references, strict=True):
        side = reference["box_xyxy"][2] - reference["box_xyxy"][0]
        assert face["box_xyxy"] == pytest.approx(reference["box_xyxy"], abs=0.08 * side)
        assert face["gender"] == reference["gender"]
