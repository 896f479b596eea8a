"""agelens.intake: sources, reading, limits, zips and per-image isolation, on real files; and
every door (CLI, batch, the service, jobs) giving the same bad input the same typed error."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import stat
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from typer.testing import CliRunner

from agelens import errors, intake
from agelens.errors import (
    BatchInputError,
    ImageDecodeError,
    ImageTooLargeError,
    UrlForbiddenError,
)
from agelens.intake import (
    IntakeOptions,
    SourceLoader,
    UnsafeZipMemberError,
    ZipArchiveError,
    ZipLimits,
    ZipMemberError,
    ZipTooLargeError,
)
from agelens.pipeline import Analyzer
from tests.conftest import WebServer, image_route
from tests.test_imaging import png_declaring_size
from tests.test_layers import SOURCE, import_graph

FAST = {"detector": "blazeface-fast", "estimator": "faceapi"}


def _jpeg(image: NDArray[np.uint8], quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut_bytes(astronaut: NDArray[np.uint8]) -> bytes:
    return _jpeg(astronaut)


#: bad file name -> (its bytes from the astronaut's JPEG, the error type every door reports)
def _bad_files(good: bytes) -> dict[str, tuple[bytes, type[errors.AgelensError]]]:
    return {
        "corrupt.jpg": (b"\xff\xd8\xff\xe0 not really a jpeg" * 4, ImageDecodeError),
        "truncated.jpg": (good[: len(good) // 3], ImageDecodeError),
        "empty.png": (b"", ImageDecodeError),
        "huge.png": (png_declaring_size(20_000, 20_000), ImageTooLargeError),
        "notes.gif": (b"GIF89a but nothing after it", ImageDecodeError),
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut_bytes: bytes) -> Path:
    """A folder: the astronaut, a blank photo, and each bad file, plus a sub-folder."""
    folder = tmp_path_factory.mktemp("intake-photos")
    (folder / "astronaut.jpg").write_bytes(astronaut_bytes)
    (folder / "sub").mkdir()
    (folder / "sub" / "blank.png").write_bytes(_png(64, 48))
    (folder / "readme.md").write_text("not an image suffix")
    for name, (data, _) in _bad_files(astronaut_bytes).items():
        (folder / name).write_bytes(data)
    return folder


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "gray").save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- sources


def test_a_folder_gives_its_images_recursively_in_sorted_order(photos: Path) -> None:
    found = [Path(s).relative_to(photos).as_posix() for s in intake.iter_sources([photos])]
    assert found == [
        "astronaut.jpg",
        "corrupt.jpg",
        "empty.png",
        "huge.png",
        "notes.gif",
        "truncated.jpg",
        "sub/blank.png",
    ]


def test_a_glob_gives_its_matches_and_an_empty_glob_is_refused_up_front(photos: Path) -> None:
    found = [Path(s).name for s in intake.iter_sources([str(photos / "**" / "*.png")])]
    assert found == ["empty.png", "huge.png", "blank.png"]
    with pytest.raises(BatchInputError, match="matches no file"):
        intake.check_inputs([str(photos / "nothing-*.jpg")])
    with pytest.raises(BatchInputError, match="no such file or folder"):
        intake.check_inputs([str(photos / "absent.jpg")])


def test_a_manifest_with_missing_rows_gives_each_row_its_own_error(
    photos: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        f"path,age\n{photos / 'astronaut.jpg'},42\n,7\n{photos / 'gone.jpg'},30\n"
        f"{photos / 'astronaut.jpg'},42\n"
    )
    sources = list(intake.iter_sources([manifest]))
    # the empty cell is skipped, the repeated row comes once, the missing file stays a source
    assert sources == [str(photos / "astronaut.jpg"), str(photos / "gone.jpg")]
    loader = SourceLoader()
    good, missing = (loader.load(source) for source in sources)
    assert good.image is not None
    assert good.error is None
    assert missing.image is None
    assert isinstance(missing.error, ImageDecodeError)
    assert missing.error_code == "image_decode_error"
    assert "file not found" in (missing.error_message or "")
    assert missing.content_sha256 is None


def test_an_unreadable_manifest_is_an_input_error(tmp_path: Path) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(b"\xff\xfe\xfa not utf-8\n")
    with pytest.raises(BatchInputError, match="cannot read the manifest"):
        list(intake.iter_sources([manifest]))


# ----------------------------------------------------------------------------- loading


def test_a_good_image_loads_with_its_hash_and_decode_time(
    photos: Path, astronaut_bytes: bytes
) -> None:
    loaded = SourceLoader().load(str(photos / "astronaut.jpg"))
    assert loaded.image is not None
    assert loaded.image.shape == (512, 512, 3)
    assert loaded.image.dtype == np.uint8
    assert loaded.content_sha256 == hashlib.sha256(astronaut_bytes).hexdigest()
    assert loaded.decode_ms > 0
    assert (loaded.error, loaded.error_code, loaded.skipped) == (None, None, False)


def test_each_bad_file_gets_its_typed_error_and_never_raises(
    photos: Path, astronaut_bytes: bytes
) -> None:
    loader = SourceLoader()
    for name, (data, expected) in _bad_files(astronaut_bytes).items():
        loaded = loader.load(str(photos / name))
        assert type(loaded.error) is expected, name
        assert loaded.error_code == expected.code
        assert loaded.image is None
        # bytes that could be read are hashed, even when they do not decode (an empty file
        # is refused while it is read)
        digest = hashlib.sha256(data).hexdigest() if data else None
        assert loaded.content_sha256 == digest, name
    huge = loader.load(str(photos / "huge.png"))
    assert "over the limit of 50000000 pixels (400000000 pixels)" in (huge.error_message or "")
    assert "DOS attack" not in (huge.error_message or "")


def test_the_byte_and_pixel_limits_apply_to_files_and_bytes_alike(
    photos: Path, astronaut_bytes: bytes
) -> None:
    small = IntakeOptions(max_bytes=1000)
    from_file = SourceLoader(small).load(str(photos / "astronaut.jpg"))
    from_bytes = intake.load_bytes(astronaut_bytes, "upload.jpg", small)
    for loaded in (from_file, from_bytes):
        assert isinstance(loaded.error, ImageTooLargeError)
        assert "over the limit of 1000 bytes" in str(loaded.error)
    few_pixels = IntakeOptions(max_pixels=1000)
    for loaded in (
        SourceLoader(few_pixels).load(str(photos / "astronaut.jpg")),
        intake.load_bytes(astronaut_bytes, "upload.jpg", few_pixels),
    ):
        assert isinstance(loaded.error, ImageTooLargeError)
        assert "512x512 (262144 pixels), over the limit of 1000 pixels" in str(loaded.error)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    import os

    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    loaded = SourceLoader().load(str(fifo))
    assert isinstance(loaded.error, ImageDecodeError)
    assert "FIFO" in str(loaded.error)


def test_sources_done_before_with_the_same_content_are_skipped(photos: Path) -> None:
    path = str(photos / "astronaut.jpg")
    first = SourceLoader().load(path)
    again = SourceLoader(done={path: first.content_sha256}).load(path)
    assert again.skipped
    assert again.image is None
    changed = SourceLoader(done={path: "0" * 64}).load(path)
    assert not changed.skipped
    assert changed.image is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.jpg",
        "http://10.1.2.3/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.jpg",
    ],
)
def test_a_private_address_url_is_refused(url: str) -> None:
    loaded = SourceLoader().load(url)
    assert isinstance(loaded.error, UrlForbiddenError)
    assert loaded.error_code == "url_forbidden"
    assert "not a public address" in str(loaded.error)


def test_a_url_on_an_allowed_network_is_fetched_and_loaded(
    web_server: WebServer, astronaut_bytes: bytes
) -> None:
    web_server.routes["/a.jpg"] = image_route(astronaut_bytes)
    url = f"{web_server.base}/a.jpg"
    allowed = SourceLoader(IntakeOptions(url_allow_networks=("127.0.0.1/32",))).load(url)
    assert allowed.image is not None
    assert allowed.content_sha256 == hashlib.sha256(astronaut_bytes).hexdigest()
    refused = SourceLoader().load(url)
    assert isinstance(refused.error, UrlForbiddenError)
    assert web_server.requested == ["/a.jpg"]  # the refused fetch never connected


def test_base64_and_data_urls_decode_and_garbage_is_a_decode_error(
    astronaut_bytes: bytes,
) -> None:
    text = base64.b64encode(astronaut_bytes).decode()
    assert intake.decode_base64(text) == astronaut_bytes
    assert intake.decode_base64("data:image/jpeg;base64," + text) == astronaut_bytes
    with pytest.raises(ImageDecodeError, match="b64 is not valid base64"):
        intake.decode_base64("abc", field_name="b64")


class _RecordingBudget:
    """A DecodeBudget that records what is asked of it (plumbing only)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.reserved: list[int] = []
        self.released: list[int] = []
        self.held: list[int] = []

    def reserve(self, nbytes: int, label: str) -> None:
        if nbytes > self.budget_bytes:
            raise ImageTooLargeError(f"{label}: {nbytes} bytes do not fit")
        self.reserved.append(nbytes)

    def release(self, nbytes: int) -> None:
        self.released.append(nbytes)

    def hold_while_alive(self, owner: Any, nbytes: int) -> None:
        self.held.append(nbytes)


def test_the_decode_budget_is_reserved_before_decoding_and_returned_on_failure(
    astronaut_bytes: bytes,
) -> None:
    budget = _RecordingBudget(10**9)
    image = intake.decode_image(astronaut_bytes, "a.jpg", IntakeOptions(), budget=budget)
    assert image.shape == (512, 512, 3)
    assert budget.reserved == budget.held == [intake.BYTES_PER_PIXEL * 512 * 512]

    truncated = bytearray(astronaut_bytes)
    truncated[600:] = b"\x00" * (len(truncated) - 600)  # a readable header, damaged pixels
    failed = _RecordingBudget(10**9)
    with pytest.raises(ImageDecodeError):
        intake.decode_image(bytes(truncated[:700]), "t.jpg", IntakeOptions(), budget=failed)
    assert failed.reserved == failed.released

    # an image over the pixel limit is refused by the limit, before any reservation
    huge = _RecordingBudget(10**9)
    with pytest.raises(ImageTooLargeError, match="over the limit of 50000000 pixels"):
        intake.decode_image(png_declaring_size(20_000, 20_000), "h", IntakeOptions(), budget=huge)
    assert huge.reserved == []

    small = _RecordingBudget(1000)
    loaded = intake.load_bytes(astronaut_bytes, "a.jpg", IntakeOptions(), budget=small)
    assert isinstance(loaded.error, ImageTooLargeError)


def test_decoding_for_an_analyzer_reduces_a_large_jpeg_and_reserves_its_full_size(
    large_photo_jpeg: bytes, astronaut_bytes: bytes
) -> None:
    max_scale = Analyzer("blazeface-fast", "faceapi", threads=1).max_decode_scale()
    assert max_scale is not None
    budget = _RecordingBudget(10**9)
    decoded = intake.decode_for_analysis(
        large_photo_jpeg, "phone.jpg", IntakeOptions(), max_scale, budget=budget
    )
    assert decoded.image.scale > 1
    assert decoded.image.full_wh == (3200, 2400)
    assert decoded.encoded == large_photo_jpeg  # to decode it again for a small face
    # the full size is reserved: the Analyzer may decode it again, larger
    assert budget.reserved == budget.held == [intake.BYTES_PER_PIXEL * 3200 * 2400]

    loaded = intake.load_bytes(large_photo_jpeg, "phone.jpg", IntakeOptions(), max_scale=max_scale)
    assert loaded.decoded is not None
    assert loaded.for_analysis() is loaded.decoded
    assert loaded.image is loaded.decoded.image.pixels
    assert loaded.image.shape[1] == 3200 // loaded.decoded.image.scale

    # without max_scale (or for a small image) everything is decoded whole
    whole = intake.load_bytes(large_photo_jpeg, "phone.jpg", IntakeOptions())
    assert whole.decoded is None
    assert whole.image is not None
    assert whole.image.shape == (2400, 3200, 3)
    assert whole.for_analysis().image.scale == 1
    small = intake.load_bytes(astronaut_bytes, "a.jpg", IntakeOptions(), max_scale=max_scale)
    assert small.for_analysis().image.scale == 1
    assert small.for_analysis().encoded is None
    with pytest.raises(ValueError, match="no decoded image"):
        intake.LoadedImage("bad.jpg", None).for_analysis()


# ----------------------------------------------------------------------------- zips


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


LIMITS = ZipLimits(max_members=5, max_total_bytes=10**7, max_member_bytes=10**6, max_ratio=100)


def test_a_zip_gives_its_members_and_refuses_unsafe_names(astronaut_bytes: bytes) -> None:
    data = _zip(
        {
            "a.jpg": astronaut_bytes,
            "photos/b.jpg": astronaut_bytes,
            "__MACOSX/._a.jpg": b"metadata",
            "../evil.jpg": astronaut_bytes,
        }
    )
    members = list(intake.read_zip(data, LIMITS).members())
    assert [m.name for m in members] == ["a.jpg", "photos/b.jpg", "../evil.jpg"]
    assert isinstance(members[2].refused, UnsafeZipMemberError)
    chunks: list[bytes] = []
    assert members[0].copy_to(chunks.append) == len(astronaut_bytes)
    assert b"".join(chunks) == astronaut_bytes
    loaded = intake.load_bytes(b"".join(chunks), members[0].name, IntakeOptions())
    assert loaded.image is not None
    with pytest.raises(UnsafeZipMemberError, match="climbs out"):
        members[2].copy_to(chunks.append)


def test_a_zip_bomb_is_refused_from_its_declared_sizes() -> None:
    bomb = _zip({f"{i}.jpg": bytes(2 * 1024 * 1024) for i in range(4)})
    assert len(bomb) < 40_000
    with pytest.raises(ZipTooLargeError, match="zip bomb"):
        intake.read_zip(bomb, LIMITS)


def test_a_member_that_inflates_past_its_limit_is_its_own_error(astronaut_bytes: bytes) -> None:
    # within the ratio and the total, but one member over the per-member limit
    data = _zip({"big.jpg": bytes(300_000), "a.jpg": astronaut_bytes})
    limits = ZipLimits(max_members=5, max_total_bytes=10**7, max_member_bytes=200_000)
    big, good = intake.read_zip(data, limits).members()
    with pytest.raises(ZipMemberError, match="over 200000"):
        big.copy_to(lambda chunk: None)
    assert good.copy_to(lambda chunk: None) == len(astronaut_bytes)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04 but not really a zip", "not a readable zip"),
        (_zip({"empty/": b""}), "holds no file"),
        (_zip({f"{i}.jpg": b"x" for i in range(6)}), "over the limit of 5"),
    ],
    ids=["not-a-zip", "no-file", "too-many-members"],
)
def test_a_zip_that_cannot_be_taken_as_a_whole_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ZipArchiveError, match=message) as caught:
        intake.read_zip(data, LIMITS)
    assert not isinstance(caught.value, ZipTooLargeError)


def test_a_zip_on_disk_is_read_member_by_member_under_the_same_rules(
    tmp_path: Path, astronaut_bytes: bytes
) -> None:
    outside = tmp_path / "outside.jpg"  # a real image an absolute member name points at
    outside.write_bytes(astronaut_bytes)
    zipped = tmp_path / "photos.zip"
    zipped.write_bytes(
        _zip(
            {
                "a.jpg": astronaut_bytes,
                "sub/zeros.png": bytes(3 * 1024 * 1024),
                "notes.txt": b"not an image suffix: not a source",
                "__MACOSX/._a.jpg": b"metadata",
                str(outside): astronaut_bytes[:100],
            }
        )
    )
    sources = list(intake.iter_sources([zipped]))
    assert sources == [f"{zipped}/a.jpg", f"{zipped}/sub/zeros.png", f"{zipped}/{outside}"]
    with SourceLoader(IntakeOptions(max_bytes=1024 * 1024)) as loader:
        good, zeros, absolute = (loader.load(source) for source in sources)
    assert good.image is not None
    assert good.content_sha256 == hashlib.sha256(astronaut_bytes).hexdigest()
    assert isinstance(zeros.error, ZipMemberError)
    assert "over 1048576" in str(zeros.error)
    # the member is refused by its name; the file on disk it names is never read
    assert isinstance(absolute.error, UnsafeZipMemberError)
    assert "absolute path" in str(absolute.error)

    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 but not really a zip")
    with pytest.raises(BatchInputError, match="cannot read the zip"):
        list(intake.iter_sources([broken]))


def test_members_of_many_zips_load_side_by_side(tmp_path: Path, astronaut_bytes: bytes) -> None:
    """More zips than a loader keeps open, read from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    for number in range(12):
        (tmp_path / f"{number:02d}.zip").write_bytes(
            _zip({"a.jpg": astronaut_bytes, "b.png": _png(32, 24)})
        )
    sources = list(intake.iter_sources([str(tmp_path / "*.zip")]))
    assert sources == []  # a glob gives image files, as in a folder; zips are named directly
    sources = list(intake.iter_sources(sorted(tmp_path.glob("*.zip"))))
    assert len(sources) == 24
    with SourceLoader() as loader, ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(loader.load, sources * 2))
    assert [item.error for item in loaded] == [None] * 48
    assert {item.image.shape for item in loaded if item.image is not None} == {
        (512, 512, 3),
        (24, 32, 3),
    }


# ----------------------------------------------------------------------------- isolation


def test_one_failing_item_costs_only_its_own_result() -> None:
    calls: list[Sequence[int]] = []

    def run(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise RuntimeError("the model broke on 13")
        return [item * 2 for item in items]

    outcomes = intake.run_isolated(run, [1, 13, 3])
    assert outcomes[0] == 2
    assert outcomes[2] == 6
    assert isinstance(outcomes[1], RuntimeError)
    assert calls == [[1, 13, 3], [1], [13], [3]]
    assert intake.run_isolated(run, []) == []

    def out_of_memory(items: Sequence[int]) -> list[int]:
        raise MemoryError

    with pytest.raises(MemoryError):
        intake.run_isolated(out_of_memory, [1, 2])


# ----------------------------------------------------------------------------- layering


def test_intake_is_a_core_module_that_imports_no_door() -> None:
    imported = {i.imported for i in import_graph(SOURCE) if i.importer == "agelens.intake"}
    assert imported, "the reader found no import of agelens.intake"
    doors = ("agelens.server", "agelens.cli", "agelens.bots", "agelens.batch", "agelens.video")
    assert not [m for m in imported if m.startswith(doors)], imported
    assert "agelens.pipeline" not in imported


def test_every_door_reads_through_intake() -> None:
    """The modules that read images import agelens.intake and no longer decode by themselves
    (`load_image` appears nowhere in them)."""
    graph = import_graph(SOURCE)
    readers = {
        "agelens.cli",
        "agelens.batch",
        "agelens.batch.run",
        "agelens.batch.core",
        "agelens.batch.local",
        "agelens.server.service",
        "agelens.server.jobs",
        "agelens.server.memory",
        "agelens.server.routers.live",
        "agelens.video.sources",
        "agelens.bots.analysis",
        "agelens.evaluate",
    }
    importing = {i.importer for i in graph if i.imported == "agelens.intake"}
    assert readers <= importing, readers - importing
    # Ray's actors read through agelens.batch.core's `source_loader`.
    assert "agelens.batch.core" in {i.imported for i in graph if i.importer == "agelens.batch.ray"}
    for module in (readers | {"agelens.batch.ray"}) - {"agelens.batch"}:
        path = SOURCE / (module.replace(".", "/") + ".py")
        assert "load_image(" not in path.read_text(), module


# ----------------------------------------------------------------------------- the doors


@pytest.fixture(scope="module")
def service_pool() -> Any:
    """The service's model pool with the fast models."""
    from agelens.server.engine import ModelPool
    from agelens.server.settings import Settings

    pool = ModelPool(**FAST, threads=1, max_pixels=Settings().max_pixels)
    pool.load_defaults()
    return pool


@pytest.fixture(scope="module")
def service_client(tmp_path_factory: pytest.TempPathFactory, service_pool: Any) -> Iterator[Any]:
    """The service (fast models, default limits), in process."""
    from fastapi.testclient import TestClient

    from agelens.server.app import create_app
    from agelens.server.settings import Settings

    settings = Settings(**FAST, data_dir=tmp_path_factory.mktemp("intake-service"))
    with TestClient(create_app(settings, pool=service_pool)) as client:
        yield client


@pytest.fixture(scope="module")
def lambda_handler(tmp_path_factory: pytest.TempPathFactory, service_pool: Any) -> Iterator[Any]:
    """The AWS Lambda entry point over the same models (behind an authenticating gateway)."""
    pytest.importorskip("mangum", reason="mangum is not installed (agelens[lambda])")
    from agelens.server.aws_lambda import LambdaHandler
    from agelens.server.settings import Settings

    settings = Settings(
        **FAST,
        insecure=True,
        rate_limit_per_minute=0,
        data_dir=tmp_path_factory.mktemp("intake-lambda"),
    )
    handler = LambdaHandler(settings, pool=service_pool)
    yield handler
    handler.close()


def _key(source: str) -> str:
    """A URL as is, a path by its file name."""
    return source if intake.is_url(source) else Path(source).name


def _wait_for_job(client: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_the_same_bad_input_gets_the_same_error_from_every_door(
    photos: Path,
    astronaut_bytes: bytes,
    tmp_path: Path,
    service_client: Any,
    lambda_handler: Any,
) -> None:
    from agelens.batch import BatchOptions, read_output, run_batch
    from agelens.cli import EXIT_SOME_FAILED, app

    bad = _bad_files(astronaut_bytes)
    names = sorted(bad)
    paths = [str(photos / name) for name in names]
    private_url = "http://10.0.0.1/a.jpg"
    expected = {name: bad[name][1] for name in names} | {private_url: UrlForbiddenError}
    codes = {key: error.code for key, error in expected.items()}
    types = {key: error.__name__ for key, error in expected.items()}

    # agelens analyze --json
    result = CliRunner().invoke(
        app, ["analyze", *paths, private_url, str(photos / "astronaut.jpg"), "--json",
              "--preset", "fast"]
    )  # fmt: skip
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    cli = {_key(o["source"]): o for o in lines}
    assert {k: o["error"]["code"] for k, o in cli.items() if "error" in o} == codes
    assert len(cli["astronaut.jpg"]["faces"]) == 1

    # agelens batch (library): one error row each, the run goes on
    out = tmp_path / "rows.jsonl"
    run_batch([*paths, private_url, photos / "astronaut.jpg"], out, options=BatchOptions(**FAST))
    rows = {_key(r["path"]): r for r in read_output(out).to_pylist()}
    assert {k: r["error_type"] for k, r in rows.items() if r["status"] == "error"} == types
    assert rows["astronaut.jpg"]["status"] == "face"

    # the service: one request each, and one batch request holding them all
    for name in names:
        response = service_client.post(
            "/v1/analyze", files={"image": (name, bad[name][0], "application/octet-stream")}
        )
        assert response.json()["error"]["code"] == codes[name], name
    refused = service_client.post("/v1/analyze", json={"image_url": private_url})
    assert refused.json()["error"]["code"] == "url_forbidden"
    batch = service_client.post(
        "/v1/analyze/batch",
        files=[("images", (name, bad[name][0], "image/jpeg")) for name in names]
        + [("images", ("astronaut.jpg", astronaut_bytes, "image/jpeg"))],
    )
    items = batch.json()["results"]
    assert [item.get("error", {}).get("code") for item in items] == [
        *(codes[name] for name in names),
        None,
    ]

    # the Lambda handler, with the old AWS function's direct event
    context = SimpleNamespace(
        function_name="agelens",
        aws_request_id="5b0e6d1e-6f6a-4c8e-9a57-0c4d5e6f7a8b",
        memory_limit_in_mb=3008,
        get_remaining_time_in_millis=lambda: 29_000,
    )
    for name in names:
        if not bad[name][0]:
            continue  # an empty "image" field is a malformed event (invalid_request)
        event = {"image": base64.b64encode(bad[name][0]).decode()}
        answer = json.loads(lambda_handler(event, context)["body"])
        assert answer["error"]["code"] == codes[name], name

    # a zip of the same files, and a member with an unsafe name: jobs (zip upload), batch and
    # analyze (the zip on disk) give each member the same row or line
    members = {name: bad[name][0] for name in names} | {
        "astronaut.jpg": astronaut_bytes,
        "../evil.jpg": astronaut_bytes,
    }
    member_types = {name: types[name] for name in names} | {"../evil.jpg": "UnsafeZipMemberError"}
    archive = _zip(members)
    created = service_client.post(
        "/v1/jobs", files={"file": ("photos.zip", archive, "application/zip")}
    )
    assert created.status_code == 202, created.text
    job = _wait_for_job(service_client, created.json()["id"])
    assert job["status"] == "done"
    results = service_client.get(f"/v1/jobs/{job['id']}/results")
    job_rows = {r["path"]: r for r in map(json.loads, results.text.splitlines())}
    assert {
        k: r["error_type"] for k, r in job_rows.items() if r["status"] == "error"
    } == member_types
    assert job_rows["astronaut.jpg"]["status"] == "face"

    zipped = tmp_path / "photos.zip"
    zipped.write_bytes(archive)
    prefix = f"{zipped}/"
    zip_out = tmp_path / "zip-rows.jsonl"
    run_batch([zipped], zip_out, options=BatchOptions(**FAST))
    zip_rows = {r["path"].removeprefix(prefix): r for r in read_output(zip_out).to_pylist()}
    assert {
        k: r["error_type"] for k, r in zip_rows.items() if r["status"] == "error"
    } == member_types
    digest = job_rows["astronaut.jpg"]["content_sha256"]
    assert zip_rows["astronaut.jpg"]["content_sha256"] == digest
    zip_cli = CliRunner().invoke(app, ["analyze", str(zipped), "--json", "--preset", "fast"])
    zip_lines = {
        o["source"].removeprefix(prefix): o
        for o in map(json.loads, zip_cli.stdout.splitlines())
        if o.get("source")
    }
    assert {k: o["error"]["code"] for k, o in zip_lines.items() if "error" in o} == {
        name: codes.get(name, "unsafe_zip_member") for name in member_types
    }
    assert len(zip_lines["astronaut.jpg"]["faces"]) == 1

    # and the same message for the same limit, whichever door
    message = "over the limit of 50000000 pixels (400000000 pixels)"
    assert message in cli["huge.png"]["error"]["message"]
    assert message in rows["huge.png"]["error_message"]
    assert message in job_rows["huge.png"]["error_message"]
