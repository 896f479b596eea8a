"""One way in for images: what an input names, how it is read, and the limits it must meet.

Every door reads its images here: `agelens analyze` and `agelens batch` (paths, folders, globs,
manifests, URLs, stdin), the service's routes (uploads, base64, URLs), its jobs (URLs and the
members of an uploaded zip), the Lambda handler (through the service) and video's frame
folders. So the same input gets the same treatment, and the same typed error, whichever door it
comes through.

- Sources: `iter_sources` turns command-line inputs (files, folders, globs, `.txt`/`.csv`
  manifests, http(s) URLs) into one path or URL at a time; `check_inputs` refuses the ones that
  name nothing before a long run starts (BatchInputError).
- Reading: a path is read as a regular file within `max_bytes` (`agelens.imaging`); a URL is
  fetched by the SSRF-safe `agelens.urlfetch.UrlFetcher` (only public addresses, unless
  `url_allow_networks` says otherwise); raw bytes (an upload, stdin) are held to the same
  `max_bytes`; base64 text is decoded by `decode_base64`; a zip's members by `read_zip`, within
  `ZipLimits` (member count, bytes per member and in all, and the inflation ratio of a bomb).
- Decoding: `decode_image` applies the pixel limit (read from the header, before any pixel is
  decoded) and, when a `DecodeBudget` is given (the service's memory budget for all decoded
  images at once), reserves the image's memory first.
- Isolation: `SourceLoader.load` and `load_bytes` never raise for a bad input: the result
  carries its typed error, so one bad input costs one row or one error item, never a run;
  `run_isolated` does the same for the analysis that follows (a failed shared run is retried
  image by image).

Everything here raises or carries an `agelens.errors.AgelensError`: ImageDecodeError,
ImageTooLargeError, UrlForbiddenError, UrlFetchError, MissingExtraError, BatchInputError,
ZipMemberError / UnsafeZipMemberError, ZipArchiveError / ZipTooLargeError.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import glob
import io
import logging
import os
import stat
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from agelens.errors import (
    AgelensError,
    BatchInputError,
    ImageDecodeError,
    ImageTooLargeError,
    MissingExtraError,
    require_extra,
)
from agelens.imaging import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    decode_encoded,
    read_image_file,
)
from agelens.rows import sha256_bytes

if TYPE_CHECKING:
    from agelens.models.base import RGBImage
    from agelens.urlfetch import UrlFetcher

__all__ = [
    "BYTES_PER_PIXEL",
    "IMAGE_SUFFIXES",
    "MANIFEST_PATH_COLUMNS",
    "MANIFEST_SUFFIXES",
    "DecodeBudget",
    "IntakeOptions",
    "LoadedImage",
    "SourceLoader",
    "UnsafeZipMemberError",
    "ZipArchiveError",
    "ZipLimits",
    "ZipMember",
    "ZipMemberError",
    "ZipReader",
    "ZipTooLargeError",
    "check_inputs",
    "check_size",
    "decode_base64",
    "decode_for_analysis",
    "decode_image",
    "fetch_url",
    "header_pixels",
    "is_url",
    "iter_manifest",
    "iter_sources",
    "iter_zip_sources",
    "load_bytes",
    "read_zip",
    "run_isolated",
    "unsafe_name_reason",
    "url_fetcher",
    "zip_member_of",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
)
MANIFEST_SUFFIXES = frozenset({".csv", ".txt"})
ZIP_SUFFIX = ".zip"
#: header names (case-insensitive) a CSV manifest's path column may have; else its first column
MANIFEST_PATH_COLUMNS = ("path", "file", "filename", "url", "image", "uri")
_GLOB_CHARACTERS = frozenset("*?[")

#: Bytes a decoded pixel is counted as against a DecodeBudget: 3 for the RGB array, 1 more for
#: what decoding and conversion hold beside it (a palette or alpha image, EXIF transposition).
BYTES_PER_PIXEL = 4


@dataclass(frozen=True, slots=True)
class IntakeOptions:
    """The limits every input is held to, and the rules for URLs.

    `max_pixels`: pixels of one decoded image (checked from the header). `max_bytes`: bytes of
    one encoded image, whether a file, an upload or a URL's body. `url_timeout_seconds`,
    `url_max_redirects`: for fetching URLs. `url_allow_networks`: networks exempt from the
    public-address rule (e.g. an internal image store); empty means public addresses only.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    url_timeout_seconds: float = 30.0
    url_max_redirects: int = 3
    url_allow_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_pixels <= 0 or self.max_bytes <= 0:
            raise ValueError(
                f"max_pixels and max_bytes must be positive, got {self.max_pixels}, "
                f"{self.max_bytes}"
            )


# ----------------------------------------------------------------------------- sources


def is_url(source: str) -> bool:
    """True for http(s) URLs (fetched), false for everything else (a local path)."""
    return source.lower().startswith(("http://", "https://"))


def check_inputs(inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Raise BatchInputError naming the first input that is no file, folder, URL or matching
    glob (checked before a long run starts, not in the middle of it)."""
    if not inputs:
        raise BatchInputError("no inputs given; pass folders, files, globs or manifests")
    for raw in inputs:
        text = os.path.expanduser(os.fspath(raw))
        if is_url(text) or Path(text).exists():
            continue
        if _GLOB_CHARACTERS & set(text):
            if next(glob.iglob(text, recursive=True), None) is None:
                raise BatchInputError(f"{text}: the pattern matches no file")
            continue
        raise BatchInputError(f"{text}: no such file or folder")


def iter_sources(inputs: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Every image path or URL the inputs name, once each, in a stable order.

    Folders are walked recursively in sorted order and give their files with an image suffix
    (IMAGE_SUFFIXES: .jpg, .png, .webp, .heic, ...); globs (`**` recurses) give their matches
    in sorted order; `.csv` / `.txt` files are manifests (see `iter_manifest`); any other file
    or URL is itself a source.
    Raises BatchInputError for an input that does not exist (see `check_inputs`).
    """
    seen: set[str] = set()
    for raw in inputs:
        for source in _expand_input(os.fspath(raw)):
            if source not in seen:
                seen.add(source)
                yield source


def _expand_input(text: str) -> Iterator[str]:
    if is_url(text):
        yield text
        return
    text = os.path.expanduser(text)
    path = Path(text)
    if path.is_dir():
        yield from _walk_images(path)
    elif path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            yield from iter_manifest(path)
        elif path.suffix.lower() == ZIP_SUFFIX:
            yield from iter_zip_sources(path)
        else:
            yield text
    elif _GLOB_CHARACTERS & set(text):
        for match in sorted(glob.iglob(text, recursive=True)):
            if os.path.isdir(match):
                yield from _walk_images(Path(match))
            elif Path(match).suffix.lower() in IMAGE_SUFFIXES:
                yield match
    else:
        raise BatchInputError(f"{text}: no such file or folder")


def _walk_images(folder: Path) -> Iterator[str]:
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(root, name)


def iter_zip_sources(archive: Path) -> Iterator[str]:
    """The image files of a zip on disk, in archive order, each as the source `ARCHIVE/NAME`
    (read by `SourceLoader` from the archive, never extracted). Like a folder, only names with
    an image suffix count; folders and macOS metadata are skipped. Raises BatchInputError when
    the zip cannot be read."""
    try:
        with zipfile.ZipFile(archive) as opened:
            infos = opened.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as error:
        raise BatchInputError(f"cannot read the zip {archive}: {error}") from error
    for info in infos:
        name = info.filename
        is_image = Path(name).suffix.lower() in IMAGE_SUFFIXES
        if is_image and not info.is_dir() and not _ignored_member(name):
            # joined as text: os.path.join would drop the archive before an absolute name
            yield f"{archive}/{name}"


def zip_member_of(source: str) -> tuple[str, str] | None:
    """(archive, member name) when `source` names a file inside a zip on disk
    (`photos.zip/a.jpg`, as `iter_zip_sources` gives them), else None."""
    lowered = source.lower()
    start = 0
    while (found := lowered.find(ZIP_SUFFIX + "/", start)) != -1:
        archive = source[: found + len(ZIP_SUFFIX)]
        if os.path.isfile(archive):
            return archive, source[found + len(ZIP_SUFFIX) + 1 :]
        start = found + 1
    return None


def iter_manifest(manifest: Path) -> Iterator[str]:
    """The paths and URLs a manifest lists.

    A `.txt` manifest has one per line (blank lines and lines starting with `#` are skipped). A
    `.csv` manifest uses the column named one of MANIFEST_PATH_COLUMNS (path, file, url, ...)
    when its header has one, else its first column (and then a first row that names no existing
    file is a header); rows with that column empty are skipped.
    Relative paths are relative to the manifest's folder. A listed file that does not exist is
    not checked here: it becomes that image's own error when it is read. Raises
    BatchInputError when the manifest itself cannot be read.
    """
    base = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as file:
            if manifest.suffix.lower() == ".csv":
                entries: Iterator[str] = _csv_manifest_entries(csv.reader(file), base)
            else:
                entries = (
                    line.strip()
                    for line in file
                    if line.strip() and not line.lstrip().startswith("#")
                )
            for entry in entries:
                yield entry if is_url(entry) else str(base / os.path.expanduser(entry))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BatchInputError(f"cannot read the manifest {manifest}: {error}") from error


def _csv_manifest_entries(reader: Iterator[list[str]], base: Path) -> Iterator[str]:
    header = next(reader, None)
    if header is None:
        return
    lowered = [name.strip().lower() for name in header]
    column = next((lowered.index(n) for n in MANIFEST_PATH_COLUMNS if n in lowered), None)
    if column is None:
        column = 0
        first = header[0].strip() if header else ""
        if first and (is_url(first) or (base / first).exists()):
            yield first
    for record in reader:
        if len(record) > column and record[column].strip():
            yield record[column].strip()


# ----------------------------------------------------------------------------- reading


def decode_base64(text: str, *, field_name: str = "image_base64") -> bytes:
    """The bytes of base64 text (a `data:` URL from a browser is accepted as well).

    Raises ImageDecodeError naming `field_name` when the text is not base64; what the bytes
    hold is checked when they are decoded as an image.
    """
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as error:
        raise ImageDecodeError(f"{field_name} is not valid base64: {error}") from error


def url_fetcher(options: IntakeOptions) -> UrlFetcher:
    """The SSRF-safe fetcher for `options` (MissingExtraError naming agelens[server] when
    httpx is not installed)."""
    try:
        require_extra("httpx", "server")
    except MissingExtraError as error:
        raise MissingExtraError(f"fetching URLs needs httpx; {error}") from error
    from agelens.urlfetch import UrlFetcher

    return UrlFetcher(
        max_bytes=options.max_bytes,
        timeout_seconds=options.url_timeout_seconds,
        max_redirects=options.url_max_redirects,
        allow_networks=options.url_allow_networks,
    )


async def fetch_url(fetcher: UrlFetcher, url: str) -> bytes:
    """The body of an image URL, every hop checked by `fetcher` (UrlForbiddenError for an
    address that is not allowed, UrlFetchError when fetching fails or the body is too large)."""
    return bytes((await fetcher.fetch(url)).data)


def check_size(data: bytes | bytearray | memoryview, label: str, options: IntakeOptions) -> None:
    """ImageTooLargeError when encoded image data exceeds `options.max_bytes`."""
    byte_count = memoryview(data).nbytes
    if byte_count > options.max_bytes:
        raise ImageTooLargeError(
            f"{label}: image data is {byte_count} bytes, over the limit of "
            f"{options.max_bytes} bytes; send a smaller file or raise max_bytes"
        )


# ----------------------------------------------------------------------------- decoding


class DecodeBudget(Protocol):
    """Memory shared by every image decoded at once (the service's DecodedMemory).

    `reserve` raises (an AgelensError) when the bytes do not fit; a reservation is returned by
    `release`, or when the decoded array is freed after `hold_while_alive`.
    """

    def reserve(self, nbytes: int, label: str) -> None:
        """Take `nbytes`, or raise."""

    def release(self, nbytes: int) -> None:
        """Give `nbytes` back."""

    def hold_while_alive(self, owner: Any, nbytes: int) -> None:
        """Release `nbytes` when `owner` is freed."""


def header_pixels(data: bytes | bytearray) -> int | None:
    """Width x height read from the image's header without decoding it; None when Pillow
    cannot read the header (decoding will then say why)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:
        return None
    return int(width) * int(height)


def decode_image(
    data: bytes | bytearray,
    label: str,
    options: IntakeOptions,
    *,
    budget: DecodeBudget | None = None,
) -> RGBImage:
    """The upright RGB uint8 array of encoded image data (`agelens.imaging.load_image`).

    Raises ImageTooLargeError over `options.max_bytes` or `options.max_pixels` (from the
    header, before decoding) and ImageDecodeError for data that is no image. With a `budget`,
    the decoded image's memory (BYTES_PER_PIXEL per pixel) is reserved before decoding and
    held as long as the array lives; the budget's own error is raised when it does not fit.
    """
    return decode_for_analysis(data, label, options, None, budget=budget).image.pixels


def decode_for_analysis(
    data: bytes | bytearray,
    label: str,
    options: IntakeOptions,
    max_scale: Callable[[tuple[int, int]], int] | None,
    *,
    budget: DecodeBudget | None = None,
) -> DecodedImage:
    """Encoded image data decoded for an Analyzer (`agelens.imaging.decode_encoded`): a JPEG
    at the smallest DCT scale `max_scale` (`Analyzer.max_decode_scale()`) allows, anything else
    (or everything, when `max_scale` is None) whole. Limits and errors are `decode_image`'s.

    With a `budget`, the memory of the image at full size is reserved, whatever size it is
    decoded at, and held as long as the decoded pixels live: the Analyzer may decode it again,
    larger, for a small face, and that must fit too.
    """
    nbytes = 0
    if budget is not None:
        pixels = header_pixels(data)
        # Only within the pixel limit: load_image refuses the rest before decoding anything.
        if pixels and pixels <= options.max_pixels:
            nbytes = BYTES_PER_PIXEL * pixels
            budget.reserve(nbytes, label)
    try:
        decoded = decode_encoded(
            data,
            max_scale,
            max_pixels=options.max_pixels,
            max_bytes=options.max_bytes,
            label=label,
        )
    except BaseException:
        if budget is not None and nbytes:
            budget.release(nbytes)
        raise
    if budget is not None and nbytes:
        budget.hold_while_alive(decoded.image.pixels, nbytes)
    return decoded


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """One input after reading: its decoded image, or its error, or `skipped`.

    `label` names it in results and errors (the path or URL as given, an upload's file name, a
    zip member's name). `content_sha256` is the sha256 of its encoded bytes (None when they
    could not be read). `decode_ms` is the time spent decoding. `error` is the typed error (an
    exception; a `(type name, message)` pair when it was recorded earlier, e.g. a zip member
    refused at submission).
    """

    label: str
    content_sha256: str | None
    image: RGBImage | None = None
    error: BaseException | tuple[str, str] | None = None
    decode_ms: float = 0.0
    skipped: bool = False
    #: the image as decoded for an Analyzer (`max_scale` given): `image` is then its pixels,
    #: which may be reduced (`decoded.image.scale`); None when decoded whole without one
    decoded: DecodedImage | None = None

    def for_analysis(self) -> DecodedImage:
        """What `Analyzer.analyze_decoded` takes: `decoded`, or the whole `image`.
        ValueError when nothing was decoded."""
        if self.decoded is not None:
            return self.decoded
        if self.image is None:
            raise ValueError(f"{self.label}: no decoded image")
        return DecodedImage.whole(self.image, self.label, self.decode_ms)

    @property
    def path(self) -> str:
        """The label (batch rows call it `path`)."""
        return self.label

    @property
    def error_code(self) -> str | None:
        """The stable code of the error (`image_decode_error`, ...), None without one."""
        if self.error is None:
            return None
        if isinstance(self.error, tuple):
            return "error"
        return str(getattr(self.error, "code", "internal_error"))

    @property
    def error_message(self) -> str | None:
        """The error's message, None without one."""
        if self.error is None:
            return None
        return self.error[1] if isinstance(self.error, tuple) else str(self.error)


def _as_error(label: str, error: BaseException) -> BaseException:
    """The error to report for `label`: an AgelensError as is, anything else logged (a decoder
    bug must cost one image, not the run). The traceback is dropped so a held error does not
    keep the failed image's frames (and bytes) alive."""
    if not isinstance(error, AgelensError):
        logger.error("%s: unexpected error while reading", label, exc_info=error)
    return error.with_traceback(None)


def load_bytes(
    data: bytes | bytearray,
    label: str,
    options: IntakeOptions,
    *,
    budget: DecodeBudget | None = None,
    content_sha256: str | None = None,
    max_scale: Callable[[tuple[int, int]], int] | None = None,
) -> LoadedImage:
    """Hash and decode encoded image data (an upload, stdin, a zip member, a fetched URL);
    with `max_scale` (`Analyzer.max_decode_scale()`), a JPEG at a reduced size
    (`decode_for_analysis`).

    Never raises for bad data: the LoadedImage carries the error. MemoryError, and the errors
    of `budget` that are not the image's fault (the service is busy), are raised.
    """
    digest = content_sha256 or sha256_bytes(bytes(data))
    start = time.perf_counter()
    try:
        check_size(data, label, options)
        decoded = decode_for_analysis(data, label, options, max_scale, budget=budget)
    except MemoryError:
        raise
    except (ImageDecodeError, ImageTooLargeError) as error:
        return LoadedImage(label, digest, error=_as_error(label, error))
    except AgelensError:
        raise  # the budget's "busy, retry": not this image's fault
    except Exception as error:
        return LoadedImage(label, digest, error=_as_error(label, error))
    decode_ms = (time.perf_counter() - start) * 1000
    return LoadedImage(
        label,
        digest,
        decoded.image.pixels,
        decode_ms=decode_ms,
        decoded=replace(decoded, decode_ms=decode_ms) if max_scale is not None else None,
    )


class SourceLoader:
    """Reads, hashes and decodes paths and URLs (thread-safe; one per run or per worker).

    `done` maps sources finished earlier to their content hash: such a source with the same
    hash comes back `skipped` without being decoded (a URL is skipped by URL alone, since
    hashing it would mean fetching it). The URL fetcher is built on the first URL. With
    `max_scale` (`Analyzer.max_decode_scale()`), JPEGs are decoded at a reduced size for that
    Analyzer (`load_bytes`).
    """

    def __init__(
        self,
        options: IntakeOptions | None = None,
        done: dict[str, str | None] | None = None,
        *,
        max_scale: Callable[[tuple[int, int]], int] | None = None,
    ) -> None:
        self.options = options or IntakeOptions()
        self.done = done or {}
        self.max_scale = max_scale
        self._fetcher: UrlFetcher | None = None
        self._fetcher_lock = threading.Lock()
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._zips_lock = threading.Lock()

    def read(self, source: str) -> bytes:
        """The encoded bytes of a path, a zip member (`ARCHIVE.zip/NAME`) or a URL within
        `max_bytes`; raises the typed error."""
        if is_url(source):
            return self._fetch(source)
        member = zip_member_of(source)
        if member is not None:
            return self._read_zip_member(*member)
        return read_image_file(source, max_bytes=self.options.max_bytes)

    def close(self) -> None:
        """Close the zip archives opened so far."""
        with self._zips_lock:
            for opened in self._zips.values():
                opened.close()
            self._zips.clear()

    def __enter__(self) -> SourceLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_zip_member(self, archive: str, name: str) -> bytes:
        """A member read into memory under the zip rules of the jobs API: unsafe names are
        refused, and a member stops inflating at `max_bytes` (a zip bomb costs one row)."""
        with self._zips_lock:
            opened = self._zips.get(archive)
            if opened is None:
                try:
                    opened = zipfile.ZipFile(archive)
                except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as error:
                    raise ZipMemberError(f"cannot read the zip {archive}: {error}") from error
                if len(self._zips) >= _OPEN_ZIPS:
                    # dropped, not closed: another thread may still be reading a member of
                    # it (ZipFile closes its file when the last reference goes)
                    self._zips.pop(next(iter(self._zips)))
                self._zips[archive] = opened
        try:
            info = opened.getinfo(name)
        except KeyError as error:
            raise ZipMemberError(f"{name!r} is not in {archive}") from error
        reason = unsafe_name_reason(info)
        if reason is not None:
            raise UnsafeZipMemberError(reason)
        chunks: list[bytes] = []
        ZipMember(name, None, opened, info, self.options.max_bytes).copy_to(chunks.append)
        return b"".join(chunks)

    def load(self, source: str) -> LoadedImage:
        """The loaded image of a path or URL. Never raises for a bad source: its error is in
        the result (MemoryError is raised)."""
        if is_url(source) and source in self.done:
            return LoadedImage(source, self.done[source], skipped=True)
        try:
            data = self.read(source)
        except MemoryError:
            raise
        except Exception as error:
            # An unreadable file has no hash; done with hash None means it failed the same way.
            if source in self.done and self.done[source] is None:
                return LoadedImage(source, None, skipped=True)
            return LoadedImage(source, None, error=_as_error(source, error))
        content_sha256 = sha256_bytes(data)
        if source in self.done and self.done[source] == content_sha256:
            return LoadedImage(source, content_sha256, skipped=True)
        return load_bytes(
            data, source, self.options, content_sha256=content_sha256, max_scale=self.max_scale
        )

    def _fetch(self, url: str) -> bytes:
        with self._fetcher_lock:
            if self._fetcher is None:
                self._fetcher = url_fetcher(self.options)
            fetcher = self._fetcher
        return asyncio.run(fetch_url(fetcher, url))


# ----------------------------------------------------------------------------- zip archives


class ZipArchiveError(AgelensError):
    """An uploaded zip as a whole cannot be taken: not a zip, no file, too many files."""

    code = "zip_archive_error"


class ZipTooLargeError(ZipArchiveError):
    """A zip's files inflate to more than allowed: in all, per byte of the zip (a zip bomb), or
    beyond the disk space left for uploads."""

    code = "zip_too_large"


class ZipMemberError(AgelensError):
    """A member of an uploaded zip could not be read (its row says why)."""

    code = "zip_member_error"


class UnsafeZipMemberError(ZipMemberError):
    """A zip member whose name could escape the upload folder (absolute, `..`, a link)."""

    code = "unsafe_zip_member"


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """What an uploaded zip may hold: `max_members` files, `max_member_bytes` each and
    `max_total_bytes` in all once inflated, at most `max_ratio` times the zip's own size, and
    within `disk_budget_bytes` (what may still be written; None: `max_total_bytes`)."""

    max_members: int
    max_total_bytes: int
    max_member_bytes: int
    max_ratio: float = float("inf")
    disk_budget_bytes: int | None = None


_ZIP_COPY_CHUNK = 1024 * 1024
#: zip archives a SourceLoader keeps open (reading a member reuses its central directory)
_OPEN_ZIPS = 8
_IGNORED_MEMBERS = ("__MACOSX/",)
_IGNORED_BASENAMES = (".DS_Store", "Thumbs.db")


def _ignored_member(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.startswith(_IGNORED_MEMBERS) or base.startswith("._") or base in _IGNORED_BASENAMES


def unsafe_name_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member must not be extracted, or None. Members are stored under generated names
    anyway; this refuses the names that signal a crafted archive."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"{name!r} is an absolute path; zip members must be relative"
    if ".." in parts:
        return f"{name!r} climbs out of the archive with '..'"
    if "\x00" in name:
        return "a member name holds a NUL character"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"{name!r} is a symbolic link"
    return None


@dataclass(frozen=True, slots=True)
class ZipMember:
    """One file of a zip: its name in the archive, and either `refused` (why it cannot be read
    safely, as a ZipMemberError) or a way to inflate it (`copy_to`)."""

    name: str
    refused: ZipMemberError | None
    _archive: zipfile.ZipFile | None = field(default=None, repr=False)
    _info: zipfile.ZipInfo | None = field(default=None, repr=False)
    _max_bytes: int = 0

    def copy_to(self, sink: Callable[[bytes], object]) -> int:
        """Inflate the member into `sink` chunk by chunk, stopping at the member limit; the
        bytes written. Raises ZipMemberError (encrypted, too large, damaged)."""
        if self.refused is not None:
            raise self.refused
        assert self._archive is not None
        assert self._info is not None
        info, max_bytes = self._info, self._max_bytes
        if info.flag_bits & 0x1:
            raise ZipMemberError(f"{info.filename!r} is encrypted")
        if info.file_size > max_bytes:
            raise ZipMemberError(f"{info.filename!r} is {info.file_size} bytes, over {max_bytes}")
        written = 0
        try:
            with self._archive.open(info) as source:
                while chunk := source.read(_ZIP_COPY_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise ZipMemberError(
                            f"{info.filename!r} inflates to over {max_bytes} bytes"
                        )
                    sink(chunk)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError) as e:
            raise ZipMemberError(f"{info.filename!r} cannot be read: {e}") from e
        return written


class ZipReader:
    """The files of a zip archive within ZipLimits; see `read_zip`."""

    def __init__(self, data: bytes, limits: ZipLimits) -> None:
        self.limits = limits
        self.zip_bytes = len(data)
        try:
            self._archive = zipfile.ZipFile(io.BytesIO(data))
            infos = [
                m
                for m in self._archive.infolist()
                if not m.is_dir() and not _ignored_member(m.filename)
            ]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as error:
            raise ZipArchiveError(f"the upload is not a readable zip file: {error}") from error
        if not infos:
            raise ZipArchiveError("the zip holds no file")
        if len(infos) > limits.max_members:
            raise ZipArchiveError(
                f"the zip holds {len(infos)} files, over the limit of {limits.max_members} per job"
            )
        self._infos = infos
        self.check_total(sum(m.file_size for m in infos))

    def check_total(self, total_bytes: int) -> None:
        """ZipTooLargeError when `total_bytes` (declared, or inflated so far) is over a limit."""
        limits = self.limits
        if total_bytes > limits.max_total_bytes:
            raise ZipTooLargeError(
                f"the zip's files add up to more than {limits.max_total_bytes} bytes "
                "uncompressed; split it into several jobs"
            )
        if total_bytes > limits.max_ratio * max(self.zip_bytes, 1):
            raise ZipTooLargeError(
                f"the zip's files inflate to more than {limits.max_ratio:g} times the zip's "
                f"{self.zip_bytes} bytes; such an archive is refused as a zip bomb"
            )
        budget = (
            limits.disk_budget_bytes
            if limits.disk_budget_bytes is not None
            else limits.max_total_bytes
        )
        if total_bytes > budget:
            raise ZipTooLargeError(
                f"the jobs' uploads already use the disk space this server allows for them "
                f"({max(budget, 0)} bytes left); retry when running jobs have ended"
            )

    def members(self) -> Iterator[ZipMember]:
        """Each file in archive order (folders and macOS metadata skipped); a member with an
        unsafe name comes `refused` with an UnsafeZipMemberError."""
        for info in self._infos:
            reason = unsafe_name_reason(info)
            if reason is not None:
                yield ZipMember(info.filename, UnsafeZipMemberError(reason))
            else:
                yield ZipMember(
                    info.filename, None, self._archive, info, self.limits.max_member_bytes
                )


def read_zip(data: bytes, limits: ZipLimits) -> ZipReader:
    """Open an uploaded zip after checking it as a whole: ZipArchiveError (not a zip, no file,
    over `max_members`) or ZipTooLargeError (the sizes the archive declares are over a limit;
    call `ZipReader.check_total` again on the bytes actually inflated)."""
    return ZipReader(data, limits)


# ----------------------------------------------------------------------------- isolation

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def run_isolated(
    run: Callable[[Sequence[_Item]], Sequence[_Result]], items: Sequence[_Item]
) -> list[_Result | Exception]:
    """`run` over all `items` at once (one batched network run); if it raises, over each item
    alone, an item whose own run raises getting its exception in place of its result. So one
    image that breaks the models costs its own row, not its neighbours'. MemoryError is raised:
    running the images one by one would not make memory appear."""
    if not items:
        return []
    try:
        return list(run(items))
    except MemoryError:
        raise
    except Exception as error:
        if len(items) == 1:  # already alone: running it again would fail the same way
            logger.exception("analysis failed for one image")
            return [error]
        logger.warning("a shared run failed; analysing its %d images one by one", len(items))
    return [_run_alone(run, item) for item in items]


def _run_alone(
    run: Callable[[Sequence[_Item]], Sequence[_Result]], item: _Item
) -> _Result | Exception:
    try:
        return run([item])[0]
    except MemoryError:
        raise
    except Exception as error:
        logger.exception("analysis failed for one image")
        return error
