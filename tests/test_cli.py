"""The `agelens` command: analyze, models, eval; output contracts and exit codes."""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from typer.testing import CliRunner

from agelens.cli import EXIT_MODEL, EXIT_SOME_FAILED, EXIT_USAGE, app
from agelens.models.convert.int8 import int8_enabled

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
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    result = runner.invoke(app, ["analyze", str(bad), str(astronaut_file), str(empty), "--json"])
    assert result.exit_code == EXIT_SOME_FAILED
    objects = _json_lines(result.stdout)
    assert [o["source"] for o in objects] == [str(bad), str(astronaut_file), str(empty)]
    errors = [o for o in objects if "error" in o]
    assert len(errors) == 2
    assert {e["error"]["code"] for e in errors} == {"image_decode_error"}  # type: ignore[index]
    assert "broken.jpg" in result.stderr


def test_stdin_input(astronaut_file: Path) -> None:
    result = runner.invoke(app, ["analyze", "-", "--json"], input=astronaut_file.read_bytes())
    assert result.exit_code == 0, result.output
    assert len(_json_lines(result.stdout)[0]["faces"]) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["analyze", "-", "--estimator", "nope"], EXIT_USAGE),
        (["analyze", "-", "--detector", "nope"], EXIT_USAGE),
        (["models", "fetch", "nope"], EXIT_USAGE),
        (["models", "info", "nope"], EXIT_USAGE),
        (["eval", "/nonexistent-dir"], EXIT_USAGE),
        (["analyze", "-", "--preset", "nope"], EXIT_USAGE),
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


def test_heads_over_an_unknown_backbone_are_listed_as_not_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heads trained by another agelens version may name a backbone this one does not know:
    `models list` still answers, and shows them as not usable."""
    from agelens.models.heads import shipped_dir

    monkeypatch.setenv("AGELENS_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "trained" / "heads-odd"
    shutil.copytree(shipped_dir() / "heads-utkface", folder)
    card = json.loads((folder / "card.json").read_text())
    card["name"], card["backbones"] = "heads-odd", ["faceres@999", "faceapi"]
    (folder / "card.json").write_text(json.dumps(card))
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["heads-odd"]["fetched"] is False


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
    assert trained["card"]["backbones"] == [
        "faceres@192-int8",
        "faceres-deep@192-qat",
        "faceapi",
        "cydral",
    ]
    int8 = ["faceres@192-int8", "faceres-deep@192-qat"]
    assert trained["int8"] == {"backbones": int8, "here": int8_enabled()}
    assert f"int8 on this CPU: {'yes' if int8_enabled() else 'no'}." in trained["description"]
    fine_tuned = json.loads(runner.invoke(app, ["models", "info", "faceapi112-distilled"]).stdout)
    assert fine_tuned["source"] == "agelens (shipped)"
    assert fine_tuned["license"] == "non-commercial (UTKFace-derived)"
    assert fine_tuned["card"]["input_size"] == 112
    assert fine_tuned["card"]["training"]["teacher"]["name"] == "heads-utkface"
    assert "fine-tuned at 112 px" in fine_tuned["description"]
    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert "heads-utkface" in table.stdout


@pytest.mark.parametrize(
    ("preset", "estimator"),
    [
        ("fastest", "faceapi112-distilled"),
        ("fast", "faceapi"),
        ("balanced", "ensemble"),
        ("accurate", "heads-ensemble"),
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
        "age_mse",
        "age_rmse",
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
    # RMSE weighs large errors more: at least the MAE, and the square root of the MSE
    assert metrics["age_rmse"] >= metrics["age_mae"]
    assert metrics["age_rmse"] ** 2 == pytest.approx(metrics["age_mse"])


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
    # click wraps help at 80 columns and may break a name after its hyphen
    text = re.sub(r"-\n\s+", "-", result.stdout)
    for name in DETECTORS:
        assert name in text, name


def test_analyze_thousands_of_file_arguments_under_a_small_stack(
    astronaut: NDArray[np.uint8], tmp_path: Path
) -> None:
    """`agelens analyze $(ls DIR/*.jpg)` once crashed with exit 139 (ONNX Runtime's import
    overflows the main-thread stack in proportion to the command line's length)."""
    face = tmp_path / "face.jpg"
    Image.fromarray(astronaut).resize((96, 96)).save(face, quality=90)
    folder = tmp_path / "a-folder-with-a-longish-name-like-mktemp-makes"
    folder.mkdir()
    paths = []
    for index in range(1500):
        link = folder / f"padded-utkface-test-image-{index:05d}.jpg"
        link.symlink_to(face)
        paths.append(str(link))
    completed = subprocess.run(
        [sys.executable, "-m", "agelens", "analyze", *paths, "--json", "--preset", "fastest"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=_small_stack,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    objects = _json_lines(completed.stdout)
    assert [o["source"] for o in objects] == paths
    assert all(len(o["faces"]) == 1 for o in objects)  # type: ignore[arg-type]


def _small_stack() -> None:
    size = 2 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_STACK, (size, size))


def test_analyze_draw_of_a_side_over_65500_px_is_downscaled(tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    Image.new("RGB", (65_535, 1), (90, 90, 90)).save(strip)
    target = tmp_path / "out.jpg"
    result = runner.invoke(app, ["analyze", str(strip), "--draw", str(target), "--json"])
    assert result.exit_code == 0, result.output
    with Image.open(target) as drawn:
        assert drawn.size == (65_500, 1)


# ----------------------------------------------------------------------------- help and version


def _help_pages() -> list[list[str]]:
    import typer.main

    command = typer.main.get_command(app)
    pages = [["--help"]]
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        pages.append([name, "--help"])
        pages += [[name, inner, "--help"] for inner in getattr(sub, "commands", {})]
    return pages


def test_every_help_page_is_plain_text_without_type_noise() -> None:
    pages = _help_pages()
    assert len(pages) > 10
    for args in pages:
        result = runner.invoke(app, args, env={"COLUMNS": "100"})
        assert result.exit_code == 0, (args, result.output)
        for noise in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list["):
            assert noise not in result.stdout, (args, noise)


@pytest.mark.parametrize(
    ("command", "hint"),
    [("batch", "agelens[ray]"), ("report", "agelens[report]"), ("eval", "agelens[report]")],
)
def test_help_keeps_install_hints_in_brackets(command: str, hint: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert hint in result.stdout


def test_version() -> None:
    from agelens import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"agelens {__version__}"


def test_train_and_finetune_help_say_why_their_pad_defaults_differ() -> None:
    # click wraps help at 80 columns: compare the words
    train = " ".join(runner.invoke(app, ["train", "--help"]).stdout.split())
    finetune = " ".join(runner.invoke(app, ["finetune", "--help"]).stdout.split())
    assert "0 suits ordinary photos; use 0.5 for tightly cropped faces" in train
    assert "finetune defaults to 0.5" in train
    assert "The default 0.5 suits tightly cropped faces" in finetune
    assert "train defaults to 0" in finetune


def test_the_cli_default_pixel_limit_is_the_librarys() -> None:
    from agelens import cli
    from agelens.imaging import DEFAULT_MAX_PIXELS

    assert cli.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS


# ----------------------------------------------------------------------------- models


def test_models_list_shows_every_name_users_pass_uncut_at_80_columns() -> None:
    from agelens.models.backends import DETECTORS, ESTIMATORS, PRESETS

    names = {*DETECTORS, *ESTIMATORS, *(p.estimator for p in PRESETS.values())}
    assert {"ensemble", "blazeface-fast", "blazeface-portrait"} <= names
    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "80"})
    assert table.exit_code == 0
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    cells = {cell.strip() for line in table.stdout.splitlines() for cell in line.split("│")}
    assert names <= cells, names - cells
    listed = {
        row["name"] for row in json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    }
    assert names <= listed


@pytest.mark.parametrize(
    ("name", "combines", "license"),
    [
        ("ensemble", ["cydral", "faceapi"], "CC0-1.0 + MIT"),
        ("blazeface-fast", ["blazeface-short", "blazeface-full"], "Apache-2.0"),
        ("blazeface-portrait", ["blazeface-short", "blazeface-full"], "Apache-2.0"),
    ],
)
def test_models_info_knows_the_combined_names(name: str, combines: list[str], license: str) -> None:
    result = runner.invoke(app, ["models", "info", name])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["combines"] == combines
    assert info["license"] == license
    assert info["fetched"] is True
    assert info["description"]


@pytest.mark.parametrize(
    ("name", "kind", "fields"),
    [
        ("blazeface-auto", "RangeSwitchingParams", {"full_first": True, "full_tiled": True}),
        ("blazeface-portrait", "RangeSwitchingParams", {"portrait_input_size": 96}),
        ("blazeface-full", "BlazeFaceParams", {"tiled": True, "input_size": None}),
        ("ensemble", "EnsembleParams", {"flip": True}),
        ("cydral", "NoParams", {}),
    ],
)
def test_models_info_shows_each_backends_params(
    name: str, kind: str, fields: dict[str, object]
) -> None:
    result = runner.invoke(app, ["models", "info", name])
    assert result.exit_code == 0, result.output
    params = json.loads(result.stdout)["params"]
    assert params["type"] == kind
    assert fields.items() <= params["fields"].items()
    assert set(params["types"]) == set(params["fields"])


def test_models_info_of_a_plain_registry_model_has_no_params() -> None:
    result = runner.invoke(app, ["models", "info", "heads-utkface"])
    assert result.exit_code == 0, result.output
    assert "params" not in json.loads(result.stdout)


# ----------------------------------------------------------------------------- analyze --draw


def test_draw_dir_keeps_same_named_inputs_from_different_folders_apart(
    astronaut_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    Image.open(astronaut_file).save(first)
    Image.open(astronaut_file).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)
    unique = tmp_path / "a" / "y.jpg"
    Image.open(astronaut_file).save(unique)
    out = tmp_path / "drawn"
    result = runner.invoke(
        app, ["analyze", str(first), str(second), str(unique), "--draw", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a_x.jpg", "b_x.jpg", "y.jpg"]
    assert (out / "a_x.jpg").read_bytes() != (out / "b_x.jpg").read_bytes()


def test_draw_file_with_several_inputs_is_a_usage_error(
    astronaut_file: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out.jpg"
    result = runner.invoke(
        app, ["analyze", str(astronaut_file), str(astronaut_file), "--draw", str(target)]
    )
    assert result.exit_code == EXIT_USAGE
    assert "give a folder instead" in result.stderr
    assert not target.exists()


# ----------------------------------------------------------------------------- exit codes


@pytest.fixture
def inputs(astronaut_file: Path, tmp_path: Path) -> dict[str, str]:
    """One input per row of the exit-code table."""
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here\n")
    bad = tmp_path / "bad" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {
        "good": str(astronaut_file),
        "missing": str(tmp_path / "missing.jpg"),
        "empty folder": str(empty),
        "bad image": str(bad),
    }


EXIT_CODE_TABLE = [
    ("good", 0),
    ("missing", EXIT_USAGE),
    ("empty folder", EXIT_USAGE),
    ("bad image", EXIT_SOME_FAILED),
]


@pytest.mark.parametrize("command", ["analyze", "batch"])
@pytest.mark.parametrize(("given", "code"), EXIT_CODE_TABLE)
def test_one_exit_code_table_for_analyze_and_batch(
    command: str, given: str, code: int, inputs: dict[str, str], tmp_path: Path
) -> None:
    fast = ["--preset", "fast"]
    args = [command, inputs[given], *fast]
    if command == "batch":
        args += ["--out", str(tmp_path / "results.jsonl"), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    if code == EXIT_USAGE:
        assert "no such file" in result.stderr or "no images found" in result.stderr


def test_exit_codes_in_the_docs_are_the_clis() -> None:
    from agelens import cli
    from tests.conftest import REPO_ROOT

    page = (REPO_ROOT / "docs" / "cli.md").read_text()
    for code in (cli.EXIT_OK, cli.EXIT_SOME_FAILED, cli.EXIT_USAGE, cli.EXIT_MODEL):
        assert f"\n| `{code}` |" in page
    assert f"\n| `{cli.EXIT_INTERRUPTED}` |" in page


# ----------------------------------------------------------------------------- output


def test_json_timings_include_decode(astronaut_file: Path) -> None:
    result = runner.invoke(app, ["analyze", str(astronaut_file), "--json"])
    timings = json.loads(result.stdout)["timings_ms"]
    assert set(timings) >= {"decode", "detect", "align", "estimate"}
    assert timings["decode"] > 0


def test_a_decompression_bomb_gets_our_limit_message(tmp_path: Path) -> None:
    from tests.test_imaging import png_declaring_size

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring_size(20_000, 20_000))
    result = runner.invoke(app, ["analyze", str(bomb), "--preset", "fast"])
    assert result.exit_code == EXIT_SOME_FAILED
    assert "over the limit of 50000000 pixels (400000000 pixels)" in result.stderr
    assert "--max-pixels" in result.stderr
    assert "DOS attack" not in result.stderr


def test_max_pixels_option_sets_the_limit(astronaut_file: Path) -> None:
    result = runner.invoke(app, ["analyze", str(astronaut_file), "--max-pixels", "1000"])
    assert result.exit_code == EXIT_SOME_FAILED
    assert "over the limit of 1000 pixels" in result.stderr


@pytest.fixture
def labelled_folder(astronaut_file: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "labelled"
    folder.mkdir()
    rows = ["file,age,gender"]
    for index in range(3):
        (folder / f"a{index}.jpg").write_bytes(astronaut_file.read_bytes())
        rows.append(f"a{index}.jpg,42,F")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_eval_prints_a_summary_and_what_it_wrote(labelled_folder: Path, tmp_path: Path) -> None:
    out, records = tmp_path / "metrics.json", tmp_path / "records.jsonl"
    args = ["eval", str(labelled_folder), "--preset", "fast"]
    result = runner.invoke(
        app, [*args, "--out", str(out), "--records", str(records)], env={"COLUMNS": "120"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) < 25
    assert "age MAE (years)" in result.stdout
    assert "gender accuracy" in result.stdout
    assert "│ 100.0%" in result.stdout
    assert f"wrote {out} (every metric, JSON)" in lines
    assert f"wrote {records} (one prediction per image, JSONL)" in lines
    assert json.loads(out.read_text())["n"] == 3

    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["gender_accuracy"] == 1.0


def test_compare_two_eval_runs_face_by_face(labelled_folder: Path, tmp_path: Path) -> None:
    runs = {}
    for preset in ("fast", "balanced"):
        runs[preset] = tmp_path / f"{preset}.jsonl"
        args = ["eval", str(labelled_folder), "--preset", preset, "--records", str(runs[preset])]
        assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(
        app, ["compare", str(runs["fast"]), str(runs["balanced"])], env={"COLUMNS": "150"}
    )
    assert result.exit_code == 0, result.output
    assert "3 faces found by both" in result.stdout
    assert "age MAE (years)" in result.stdout
    as_json = runner.invoke(
        app, ["compare", str(runs["fast"]), str(runs["balanced"]), "--by", "decade", "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    comparison = json.loads(as_json.stdout)
    fast = [json.loads(line) for line in runs["fast"].read_text().splitlines()]
    balanced = [json.loads(line) for line in runs["balanced"].read_text().splitlines()]
    mae = comparison["metrics"]["age_mae"]
    assert mae["before"] == pytest.approx(np.mean([abs(r["pred_age"] - 42) for r in fast]))
    assert mae["after"] == pytest.approx(np.mean([abs(r["pred_age"] - 42) for r in balanced]))
    assert list(comparison["groups"]) == ["40-49"]
    # A run against itself: nothing changed.
    same = runner.invoke(app, ["compare", str(runs["fast"]), str(runs["fast"]), "--json"])
    assert json.loads(same.stdout)["metrics"]["age_mae"]["verdict"] == "no measurable change"


def test_compare_refuses_what_is_not_two_runs_of_records(
    labelled_folder: Path, tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics.json"
    assert (
        runner.invoke(
            app, ["eval", str(labelled_folder), "--preset", "fast", "--out", str(metrics)]
        ).exit_code
        == 0
    )
    wrong = runner.invoke(app, ["compare", str(metrics), str(metrics)])
    assert wrong.exit_code == EXIT_USAGE
    assert "not an `agelens eval --records` line" in wrong.output
    missing = runner.invoke(app, ["compare", str(tmp_path / "none.jsonl"), str(metrics)])
    assert missing.exit_code == EXIT_USAGE


# ----------------------------------------------------------------------------- batch progress


def test_batch_progress_shows_no_rate_until_it_rests_on_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from agelens import cli

    clock = iter([100.0 + 0.0001 * i for i in range(9)] + [102.0])
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    progress = cli._BatchProgress(enabled=True)
    item = SimpleNamespace(face_count=1, status="face", skipped=False)
    rates = []
    for _ in range(10):
        progress.update(item)
        rates.append(progress._progress.tasks[0].fields["rate"])
    assert rates[:9] == ["-"] * 9  # 9 images within a millisecond: no rate yet
    assert rates[9] == "4.5"  # 9 images after the first, over 2 s


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


def test_an_image_the_models_fail_on_costs_only_its_own_line(
    astronaut_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The models are made to fail on one image size (plumbing: real models run the rest);
    the shared run is retried image by image, as batch and jobs do."""
    from agelens.pipeline import Analyzer

    odd = tmp_path / "odd.png"
    Image.new("RGB", (61, 43), "gray").save(odd)
    real = Analyzer.analyze_decoded

    def failing_on_odd(self: Analyzer, images: list[object], **options: object) -> object:
        if any(image.image.full_wh == (61, 43) for image in images):  # type: ignore[attr-defined]
            raise RuntimeError("the network broke on this image")
        return real(self, images, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(Analyzer, "analyze_decoded", failing_on_odd)
    args = ["analyze", str(astronaut_file), str(odd), str(astronaut_file), "--json"]
    result = runner.invoke(app, [*args, "--preset", "fast"])
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    objects = _json_lines(result.stdout)
    assert [o["source"] for o in objects] == [str(astronaut_file), str(odd), str(astronaut_file)]
    assert objects[1]["error"] == {  # type: ignore[comparison-overlap]
        "code": "internal_error",
        "message": "the network broke on this image",
    }
    assert [len(objects[i]["faces"]) for i in (0, 2)] == [1, 1]  # type: ignore[arg-type]


@pytest.mark.parametrize(("setting", "here"), [("0", False), ("1", True), ("maybe", False)])
def test_models_info_says_whether_int8_runs_here(
    setting: str, here: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`AGELENS_INT8` decides; a bad value is reported when the heads load, not by listing."""
    monkeypatch.setenv("AGELENS_INT8", setting)
    info = runner.invoke(app, ["models", "info", "heads-utkface"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["int8"]["here"] is here
    assert "int8" not in json.loads(runner.invoke(app, ["models", "info", "faceapi"]).stdout)
