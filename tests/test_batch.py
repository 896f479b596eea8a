"""agelens.batch and `agelens batch`: inputs, rows, formats, resume, crash safety, equality
across worker counts. Real models (the fast configuration) on real images."""

from __future__ import annotations

import csv
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from numpy.typing import NDArray
from PIL import Image
from typer.testing import CliRunner

import agelens
from agelens.batch import (
    BatchOptions,
    ImageRows,
    check_inputs,
    crop_name,
    iter_image_rows,
    iter_sources,
    output_format,
    parts_folder,
    read_output,
    run_batch,
)
from agelens.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, app
from agelens.errors import BatchInputError, BatchOutputError, MissingExtraError
from agelens.pipeline import Analyzer
from agelens.rows import COLUMN_NAMES
from tests.conftest import DecodeSpy

FAST = {"detector": "blazeface-fast", "estimator": "faceapi"}
FLOAT_COLUMNS = [name for name, kind in agelens.rows.COLUMNS if kind == "float32"]
runner = CliRunner()


@pytest.fixture(scope="module")
def fast_analyzer() -> Analyzer:
    return Analyzer(FAST["detector"], FAST["estimator"], threads=1, workers=2)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory, astronaut: NDArray[np.uint8]) -> Path:
    """The astronaut (one face), a blank image (no face) and bad files, in nested folders."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    Image.fromarray(astronaut).save(folder / "astronaut.jpg", quality=95)
    Image.new("RGB", (64, 48), "gray").save(folder / "sub" / "blank.png")
    encoded = (folder / "astronaut.jpg").read_bytes()
    (folder / "sub" / "truncated.jpg").write_bytes(encoded[: len(encoded) // 3])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (folder / "notes.jpg").write_text("not an image")
    (folder / "readme.md").write_text("not an image suffix: not a source")
    return folder


def _utkface_test_paths(utkface_dir: Path, count: int) -> list[str]:
    with (utkface_dir / "labels.csv").open() as file:
        rows = [r for r in csv.DictReader(file) if r["split"] == "test"]
    return [str(utkface_dir / r["file"]) for r in rows[:count]]


def _sorted_rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: (r["path"], r["face_index"] or 0))


def assert_same_rows(left: pa.Table, right: pa.Table) -> None:
    """Same images, same faces, same values (floats within a tolerance that allows for the
    different batch compositions of different engines and worker counts)."""
    rows_left, rows_right = _sorted_rows(left), _sorted_rows(right)
    assert [(r["path"], r["face_index"]) for r in rows_left] == [
        (r["path"], r["face_index"]) for r in rows_right
    ]
    exact = [name for name in COLUMN_NAMES if name not in FLOAT_COLUMNS]
    for a, b in zip(rows_left, rows_right, strict=True):
        assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
        for name in FLOAT_COLUMNS:
            if a[name] is None or b[name] is None:
                assert a[name] is b[name], name
            else:
                assert a[name] == pytest.approx(b[name], rel=1e-3, abs=1e-2), (a["path"], name)


def assert_one_set_per_image(table: pa.Table, expected_paths: set[str]) -> None:
    rows = table.to_pylist()
    assert {r["path"] for r in rows} == expected_paths
    by_path: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    for path, image_rows in by_path.items():
        if image_rows[0]["status"] == "face":
            indices = sorted(r["face_index"] for r in image_rows)
            assert indices == list(range(image_rows[0]["faces_in_image"])), path
        else:
            assert len(image_rows) == 1, path


# ----------------------------------------------------------------------------- inputs


def test_sources_from_folders_globs_and_manifests(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/2.jpg", "a/1.PNG", "a/b/3.webp", "a/skip.md", "x.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# comment\n\nx.jpg\nhttps://example.com/p.jpg\n")
    (tmp_path / "with_header.csv").write_text("age,file\n30,a/2.jpg\n40,x.jpg\n")
    (tmp_path / "no_header.csv").write_text("x.jpg,1\na/b/3.webp,2\n")
    cases = [
        ([tmp_path / "a"], ["a/1.PNG", "a/2.jpg", "a/b/3.webp"]),
        ([str(tmp_path / "**" / "*.jpg")], ["a/2.jpg", "x.jpg"]),
        ([tmp_path / "list.txt"], ["x.jpg", "https://example.com/p.jpg"]),
        ([tmp_path / "with_header.csv"], ["a/2.jpg", "x.jpg"]),
        ([tmp_path / "no_header.csv"], ["x.jpg", "a/b/3.webp"]),
        ([tmp_path / "x.jpg", tmp_path / "list.txt"], ["x.jpg", "https://example.com/p.jpg"]),
        ([tmp_path / "a" / "skip.md"], ["a/skip.md"]),  # named explicitly: a source
    ]
    for inputs, expected in cases:
        found = [
            s if s.startswith("http") else Path(s).relative_to(tmp_path).as_posix()
            for s in iter_sources(inputs)
        ]
        assert found == expected, inputs


@pytest.mark.parametrize("missing", ["nowhere/", "nothing-*.jpg"])
def test_missing_input_is_an_error_before_the_run(tmp_path: Path, missing: str) -> None:
    with pytest.raises(BatchInputError, match=r"no such file|matches no file"):
        check_inputs([str(tmp_path / missing)])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("r.parquet", "parquet"),
        ("r.PQ", "parquet"),
        ("r.csv", "csv"),
        ("r.jsonl", "jsonl"),
        ("r.ndjson", "jsonl"),
        ("r.xlsx", None),
        ("r", None),
    ],
)
def test_output_format_from_suffix(name: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(BatchOutputError, match=r"\.parquet, \.csv or \.jsonl"):
            output_format(name)
    else:
        assert output_format(name) == expected


# ----------------------------------------------------------------------------- rows


def test_rows_for_faces_no_face_and_bad_files(
    photo_folder: Path, tmp_path: Path, fast_analyzer: Analyzer
) -> None:
    crops = tmp_path / "crops"
    out = tmp_path / "r.parquet"
    summary = run_batch(
        [photo_folder],
        out,
        options=BatchOptions(**FAST, crops_dir=crops),
        analyzer=fast_analyzer,
    )
    table = read_output(out)
    assert table.column_names == list(COLUMN_NAMES)
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert set(rows) == {"astronaut.jpg", "blank.png", "truncated.jpg", "corrupt.png", "notes.jpg"}
    face = rows["astronaut.jpg"]
    assert (face["status"], face["face_index"], face["faces_in_image"]) == ("face", 0, 1)
    assert face["gender"] == "F"
    assert 20 < face["age_years"] < 60
    assert (face["image_width_px"], face["image_height_px"]) == (512, 512)
    assert face["content_sha256"] == agelens.rows.sha256_bytes(
        (photo_folder / "astronaut.jpg").read_bytes()
    )
    assert rows["blank.png"]["status"] == "no_face"
    for name, words in [
        ("truncated.jpg", "truncated"),
        ("corrupt.png", "corrupt"),
        ("notes.jpg", "not a recognised image"),
    ]:
        assert rows[name]["status"] == "error"
        assert rows[name]["error_type"] == "ImageDecodeError"
        assert words in rows[name]["error_message"]
    assert (summary.images, summary.faces, summary.no_face_images, summary.error_images) == (
        5,
        1,
        1,
        3,
    )
    with Image.open(crops / crop_name(face["content_sha256"], 0)) as crop:
        assert abs(crop.width - (face["box_x2_px"] - face["box_x1_px"])) <= 2
    assert not parts_folder(out).exists()


def test_a_large_jpeg_is_decoded_reduced_unless_crops_are_saved(
    tmp_path: Path, fast_analyzer: Analyzer, large_photo_jpeg: bytes, decode_spy: DecodeSpy
) -> None:
    """Rows as `Analyzer.analyze` gives for the file (a phone-sized JPEG decoded reduced for
    the detector); with `crops_dir`, decoded whole, since the crops are cut from it."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "phone.jpg").write_bytes(large_photo_jpeg)
    run_batch(
        [folder], tmp_path / "r.parquet", options=BatchOptions(**FAST), analyzer=fast_analyzer
    )
    assert decode_spy.scales
    assert decode_spy.scales[0] > 1
    (row,) = read_output(tmp_path / "r.parquet").to_pylist()
    (expected,) = fast_analyzer.analyze(folder / "phone.jpg").faces
    box = [row[f"box_{name}_px"] for name in ("x1", "y1", "x2", "y2")]
    assert box == pytest.approx(list(expected.box_xyxy), abs=0.01)
    assert row["age_years"] == pytest.approx(expected.age_years, abs=0.01)
    assert (row["image_width_px"], row["image_height_px"]) == (3200, 2400)

    decode_spy.scales.clear()
    crops = tmp_path / "crops"
    options = BatchOptions(**FAST, crops_dir=crops)
    run_batch([folder], tmp_path / "c.parquet", options=options, analyzer=fast_analyzer)
    assert decode_spy.scales == []
    (whole,) = read_output(tmp_path / "c.parquet").to_pylist()
    with Image.open(crops / crop_name(whole["content_sha256"], 0)) as crop:
        assert abs(crop.width - (whole["box_x2_px"] - whole["box_x1_px"])) <= 2
    assert whole["box_x1_px"] == pytest.approx(row["box_x1_px"], abs=0.05 * crop.width)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_csv_and_jsonl_hold_the_same_rows_as_parquet(
    photo_folder: Path, tmp_path: Path, fast_analyzer: Analyzer, suffix: str
) -> None:
    options = BatchOptions(**FAST)
    run_batch([photo_folder], tmp_path / "r.parquet", options=options, analyzer=fast_analyzer)
    run_batch([photo_folder], tmp_path / f"r{suffix}", options=options, analyzer=fast_analyzer)
    assert_same_rows(read_output(tmp_path / f"r{suffix}"), read_output(tmp_path / "r.parquet"))


def test_iter_image_rows_in_input_order_without_output(
    photo_folder: Path, fast_analyzer: Analyzer
) -> None:
    sources = list(iter_sources([photo_folder]))
    items = list(iter_image_rows(sources, fast_analyzer, BatchOptions(**FAST, batch_size=2)))
    assert [item.path for item in items] == sources
    assert all(isinstance(item, ImageRows) and item.rows for item in items)


def test_same_rows_with_one_or_two_workers(
    utkface_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    inputs = [*_utkface_test_paths(utkface_dir, 40), str(samples_dir)]
    tables = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.parquet"
        run_batch(inputs, out, options=BatchOptions(**FAST, workers=workers, batch_size=8))
        tables.append(read_output(out))
    assert_same_rows(tables[0], tables[1])
    assert tables[0].num_rows > 40  # the sample photos hold several faces


# ----------------------------------------------------------------------------- URLs


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def image_server(photo_folder: Path) -> Iterator[str]:
    handler = type(
        "Handler", (_ImageHandler,), {"body": (photo_folder / "astronaut.jpg").read_bytes()}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/astronaut.jpg"
    server.shutdown()
    server.server_close()
    thread.join()


def test_manifest_urls_fetched_and_private_ones_refused(
    image_server: str, tmp_path: Path, fast_analyzer: Analyzer
) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text(f"{image_server}\n")
    refused = tmp_path / "refused.parquet"
    run_batch([manifest], refused, options=BatchOptions(**FAST), analyzer=fast_analyzer)
    (row,) = read_output(refused).to_pylist()
    assert (row["status"], row["error_type"]) == ("error", "UrlForbiddenError")
    assert "not a public address" in row["error_message"]

    allowed = tmp_path / "allowed.parquet"
    options = BatchOptions(**FAST, url_allow_networks=("127.0.0.1/32",))
    run_batch([manifest], allowed, options=options, analyzer=fast_analyzer)
    (row,) = read_output(allowed).to_pylist()
    assert (row["path"], row["status"], row["gender"]) == (image_server, "face", "F")


def test_urls_without_httpx_give_an_error_row_naming_the_extra(
    tmp_path: Path, fast_analyzer: Analyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    out = tmp_path / "r.parquet"
    run_batch(["https://example.com/a.jpg"], out, analyzer=fast_analyzer)
    (row,) = read_output(out).to_pylist()
    assert row["error_type"] == "MissingExtraError"
    assert "pip install 'agelens[server]'" in row["error_message"]


def test_ray_engine_without_ray_names_the_extra(
    photo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'agelens\[ray\]'"):
        run_batch([photo_folder], tmp_path / "r.parquet", engine="ray")


# ----------------------------------------------------------------------------- resume


def test_existing_output_needs_resume_or_overwrite(
    photo_folder: Path, tmp_path: Path, fast_analyzer: Analyzer
) -> None:
    out = tmp_path / "r.parquet"
    options = BatchOptions(**FAST)
    run_batch([photo_folder], out, options=options, analyzer=fast_analyzer)
    with pytest.raises(BatchOutputError, match=r"--resume .* --overwrite"):
        run_batch([photo_folder], out, options=options, analyzer=fast_analyzer)
    again = run_batch([photo_folder], out, options=options, analyzer=fast_analyzer, overwrite=True)
    assert again.images == 5


def test_resume_adds_new_images_redoes_changed_ones_and_skips_the_rest(
    photo_folder: Path, tmp_path: Path, fast_analyzer: Analyzer, astronaut: NDArray[np.uint8]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in photo_folder.rglob("*.*"):
        (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "r.csv"
    options = BatchOptions(**FAST)
    run_batch([folder], out, options=options, analyzer=fast_analyzer)
    Image.fromarray(astronaut[:, ::-1]).save(folder / "mirrored.jpg")
    Image.fromarray(astronaut[:256]).save(folder / "astronaut.jpg")  # content changed
    summary = run_batch([folder], out, options=options, analyzer=fast_analyzer, resume=True)
    assert (summary.images, summary.skipped_images) == (2, 4)
    table = read_output(out)
    assert_one_set_per_image(table, {str(p) for p in folder.iterdir() if p.suffix != ".md"})
    changed = next(r for r in table.to_pylist() if r["path"].endswith("astronaut.jpg"))
    assert changed["image_height_px"] == 256
    assert changed["content_sha256"] == agelens.rows.sha256_bytes(
        (folder / "astronaut.jpg").read_bytes()
    )


def test_resume_refuses_other_models(
    photo_folder: Path, tmp_path: Path, fast_analyzer: Analyzer
) -> None:
    out = tmp_path / "r.parquet"
    run_batch([photo_folder], out, options=BatchOptions(**FAST), analyzer=fast_analyzer)
    with pytest.raises(BatchOutputError, match="estimator"):
        run_batch(
            [photo_folder],
            out,
            options=BatchOptions(**FAST),
            resume=True,
            analyzer=Analyzer(FAST["detector"], "cydral", threads=1),
        )


def test_interrupt_keeps_finished_images_and_resume_completes(
    utkface_dir: Path, tmp_path: Path, fast_analyzer: Analyzer
) -> None:
    inputs = _utkface_test_paths(utkface_dir, 30)
    out = tmp_path / "r.parquet"
    options = BatchOptions(**FAST, batch_size=4, chunk_images=100)
    seen: list[str] = []

    def interrupt_after_ten(item: ImageRows) -> None:
        seen.append(item.path)
        if len(seen) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(
            inputs, out, options=options, analyzer=fast_analyzer, progress=interrupt_after_ten
        )
    assert not out.exists()
    parts = parts_folder(out)
    (parts / ".part-000001.parquet.999.tmp").write_bytes(b"half a part a killed run left")
    summary = run_batch(inputs, out, options=options, analyzer=fast_analyzer, resume=True)
    assert (summary.images, summary.skipped_images) == (20, 10)
    assert_one_set_per_image(read_output(out), set(inputs))


def _batch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "agelens", "batch", *args]


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    source_root = str(Path(agelens.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_gives_each_image_once(
    utkface_dir: Path, photo_folder: Path, tmp_path: Path, fast_analyzer: Analyzer
) -> None:
    inputs = [*_utkface_test_paths(utkface_dir, 150), *map(str, sorted(photo_folder.rglob("*.*")))]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(inputs) + "\n")
    expected = set(inputs)  # readme.md too: a manifest entry is a source (an error row)
    out = tmp_path / "r.parquet"
    command = _batch_command(
        str(manifest), "--out", str(out), "--detector", FAST["detector"],
        "--estimator", FAST["estimator"], "--workers", "1", "--batch-size", "4",
        "--chunk-size", "5", "--quiet",
    )  # fmt: skip
    parts = parts_folder(out)
    # Killed twice: in the first run, then in a resumed one.
    for kills, parts_before_kill in enumerate((3, 12)):
        args = command if kills == 0 else [*command, "--resume"]
        log = tmp_path / f"run{kills}.log"
        with (
            log.open("wb") as stderr,
            subprocess.Popen(args, env=_subprocess_env(), stderr=stderr) as process,
        ):
            deadline = time.monotonic() + 120
            while len(list(parts.glob("part-*.parquet"))) < parts_before_kill:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
        assert process.returncode == -signal.SIGKILL
        assert not out.exists()
    finished = subprocess.run(
        [*command, "--resume"], env=_subprocess_env(), capture_output=True, text=True, check=False
    )
    assert finished.returncode == EXIT_SOME_FAILED, finished.stderr  # the bad files
    assert not parts.exists()
    table = read_output(out)
    assert_one_set_per_image(table, expected)
    reference = tmp_path / "reference.parquet"
    run_batch(list(expected), reference, options=BatchOptions(**FAST), analyzer=fast_analyzer)
    assert_same_rows(table, read_output(reference))


# ----------------------------------------------------------------------------- command


def test_batch_command_exit_codes(photo_folder: Path, tmp_path: Path) -> None:
    astronaut_only = str(photo_folder / "astronaut.jpg")
    out = tmp_path / "r.jsonl"
    fast = ["--detector", FAST["detector"], "--estimator", FAST["estimator"], "-q"]
    result = runner.invoke(app, ["batch", astronaut_only, "--out", str(out), *fast])
    assert result.exit_code == EXIT_OK, result.output
    result = runner.invoke(app, ["batch", astronaut_only, "--out", str(out), *fast])
    assert result.exit_code == EXIT_USAGE
    assert "--resume" in result.output
    assert "--overwrite" in result.output
    result = runner.invoke(
        app, ["batch", str(photo_folder), "--out", str(out), "--overwrite", *fast]
    )
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    result = runner.invoke(app, ["batch", str(tmp_path / "none"), "--out", str(out), *fast])
    assert result.exit_code == EXIT_USAGE
    assert "no such file" in result.output
    result = runner.invoke(app, ["batch", astronaut_only, "--out", str(tmp_path / "r.xls"), *fast])
    assert result.exit_code == EXIT_USAGE
    assert ".parquet" in result.output
