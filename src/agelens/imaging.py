"""Decode and validate every image input agelens accepts into one upright RGB uint8 array.

`load_image` is the only way images enter the pipeline. Whatever the source (a path, encoded bytes,
a `PIL.Image` or a numpy array) the result is a C-contiguous `(height, width, 3)` uint8 array in RGB
order, rotated by its EXIF orientation. Every box and keypoint agelens reports is in the pixel frame
of this array.

Encoded inputs are limited in bytes and in pixels, and the pixel count is checked from the header
before any pixel is decoded, so a small file that declares a huge image is refused cheaply.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import stat
import time
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, UnidentifiedImageError

from agelens.errors import ImageDecodeError, ImageTooLargeError

logger = logging.getLogger(__name__)

ImageSource: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | npt.NDArray[Any]
)

# A decompression-bomb guard: a few kilobytes of PNG or GIF can declare an image whose decoded
# pixels need gigabytes of memory. 50 megapixels is above any phone or DSLR photo agelens is meant
# for (about 150 MB once decoded to RGB), and is checked from the header, before decoding.
DEFAULT_MAX_PIXELS = 50_000_000

# Bounds the memory spent reading an encoded file or upload before anything is decoded.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

# libjpeg's JPEG_MAX_DIMENSION: the longest side a JPEG file can hold.
MAX_JPEG_SIDE = 65_500

SUPPORTED_FORMATS_LABEL = "JPEG, PNG, WebP, BMP, TIFF, GIF, HEIC/HEIF"

# Pillow format identifiers tried when opening. Restricting them keeps Pillow from handing
# hostile input to exotic plugins (EPS, for one, runs Ghostscript). The JPEG opener also returns
# the multi-picture (MPO) JPEGs many cameras write.
_PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_HEIF_PILLOW_FORMAT = "HEIF"

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ARRAY_CONTRACT = (
    "ndarray input must be uint8 with shape (H, W, 3) RGB (not BGR), (H, W) grayscale "
    "or (H, W, 4) RGBA"
)


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    label: str | None = None,
) -> npt.NDArray[np.uint8]:
    """Decode `source` into an upright, C-contiguous RGB uint8 array of shape (height, width, 3).

    Accepted sources:
    - a path (`str` or `os.PathLike`) to a regular JPEG, PNG, WebP, BMP, TIFF, GIF (first frame) or
      HEIC/HEIF file; URLs are not fetched;
    - the encoded bytes of such a file (`bytes`, `bytearray`, `memoryview`);
    - a `PIL.Image.Image` (its current frame);
    - a numpy array: uint8 (H, W, 3) in RGB order, not OpenCV's BGR, returned as is (the same
      object, copied only when not C-contiguous); uint8 (H, W) grayscale; uint8 (H, W, 4) RGBA.

    EXIF orientation is applied, so boxes computed on the result are in the upright frame.
    Transparent pixels are composited onto white. 16-bit samples are scaled to 8 bits.

    `label` names the source in error messages (default: `describe_source(source)`; the service
    passes the upload's file name or URL).

    Raises ImageTooLargeError when an encoded source exceeds `max_bytes`, or when any source has
    more than `max_pixels` pixels (checked from the header, before decoding). Raises
    ImageDecodeError when the source is missing, not a regular file, empty, truncated, corrupt, in
    an unsupported format or has zero pixels.
    """
    if max_pixels <= 0 or max_bytes <= 0:
        raise ValueError(
            f"max_pixels and max_bytes must be positive, got {max_pixels}, {max_bytes}"
        )
    label = label or describe_source(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, label=label, max_pixels=max_pixels)
    if isinstance(source, Image.Image):
        with _pillow_warnings_logged(label):
            return _pil_image_to_rgb(source, label=label, max_pixels=max_pixels)
    if isinstance(source, str | os.PathLike):
        data: bytes | bytearray = _read_regular_file(os.fsdecode(source), max_bytes=max_bytes)
    elif isinstance(source, bytes | bytearray | memoryview):
        byte_count = memoryview(source).nbytes
        if byte_count > max_bytes:
            raise ImageTooLargeError(
                f"{label}: image data is {byte_count} bytes, over the limit of {max_bytes} bytes; "
                "send a smaller file or raise max_bytes"
            )
        data = source.tobytes() if isinstance(source, memoryview) else source
    else:
        raise ImageDecodeError(
            f"unsupported image source of type {type(source).__name__}; pass a path, encoded "
            "bytes, a PIL.Image or a numpy array"
        )
    return _decode_encoded_image(data, label=label, max_pixels=max_pixels)


#: The factors libjpeg can shrink a JPEG by while decoding it (DCT scaling, Pillow's `draft`).
JPEG_DRAFT_SCALES = (8, 4, 2, 1)


@dataclass(frozen=True, slots=True)
class ReducedImage:
    """An upright RGB image decoded at 1/`scale` of its full size (`full_wh`, upright).

    A point `(x, y)` of `pixels` is `(x * scale - offset_xy[0], y * scale - offset_xy[1])` in
    the full image. The offset is non-zero only when EXIF orientation flipped an axis whose
    full length is not a multiple of `scale` (libjpeg rounds the reduced size up).
    """

    pixels: npt.NDArray[np.uint8]
    scale: int
    offset_xy: tuple[int, int]
    full_wh: tuple[int, int]

    @classmethod
    def whole(cls, pixels: npt.NDArray[np.uint8]) -> ReducedImage:
        """An image at its full size (`scale` 1)."""
        height, width = pixels.shape[:2]
        return cls(pixels, 1, (0, 0), (int(width), int(height)))

    def to_full(self, x: float, y: float) -> tuple[float, float]:
        """The full-image coordinates of the point `(x, y)` of `pixels`."""
        return x * self.scale - self.offset_xy[0], y * self.scale - self.offset_xy[1]

    def from_full(self, x: float, y: float) -> tuple[float, float]:
        """The coordinates in `pixels` of the full-image point `(x, y)`."""
        return (x + self.offset_xy[0]) / self.scale, (y + self.offset_xy[1]) / self.scale


def load_image_reduced(
    source: ImageSource,
    max_scale: Callable[[tuple[int, int]], int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    label: str | None = None,
) -> ReducedImage:
    """Decode `source` like `load_image`, a JPEG at the smallest DCT scale allowed.

    `max_scale(full_wh)` gets the upright full size and returns the largest factor the image
    may be shrunk by; the JPEG is decoded at the largest of 8, 4, 2 that does not exceed it,
    which costs a fraction of a full decode (libjpeg skips most of the inverse DCT). Other
    formats, PIL images and arrays come back at full size (`scale` 1). Limits, EXIF
    orientation and errors are those of `load_image`; `max_pixels` applies to the full size.
    """
    if max_pixels <= 0 or max_bytes <= 0:
        raise ValueError(
            f"max_pixels and max_bytes must be positive, got {max_pixels}, {max_bytes}"
        )
    label = label or describe_source(source)
    if isinstance(source, str | os.PathLike):
        data: bytes | bytearray = _read_regular_file(os.fsdecode(source), max_bytes=max_bytes)
    elif isinstance(source, bytes | bytearray | memoryview):
        data = source.tobytes() if isinstance(source, memoryview) else source
    else:
        return ReducedImage.whole(load_image(source, max_pixels=max_pixels, label=label))
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"{label}: image data is {len(data)} bytes, over the limit of {max_bytes} bytes; "
            "send a smaller file or raise max_bytes"
        )
    return _decode_encoded_image(data, label=label, max_pixels=max_pixels, max_scale=max_scale)


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image decoded for analysis (`Analyzer.decode`, `decode_encoded`): `image`
    (possibly reduced, see `ReducedImage`) and, when it is reduced, its encoded bytes, to decode
    it again for small faces (`Analyzer.analyze_decoded`)."""

    image: ReducedImage
    encoded: bytes | bytearray | memoryview | None
    label: str
    decode_ms: float

    @classmethod
    def whole(cls, pixels: npt.NDArray[np.uint8], label: str, decode_ms: float) -> DecodedImage:
        """An image decoded at its full size."""
        return cls(ReducedImage.whole(pixels), None, label, decode_ms)


def decode_encoded(
    data: bytes | bytearray | memoryview,
    max_scale: Callable[[tuple[int, int]], int] | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    label: str | None = None,
) -> DecodedImage:
    """Encoded image data decoded for analysis: a JPEG at the smallest DCT scale `max_scale`
    allows (`load_image_reduced`), whole when `max_scale` is None or the format cannot be
    reduced. Limits and errors are `load_image`'s."""
    start = time.perf_counter()
    label = label or describe_source(data)
    if max_scale is None:
        pixels = load_image(data, max_pixels=max_pixels, max_bytes=max_bytes, label=label)
        image = ReducedImage.whole(pixels)
    else:
        image = load_image_reduced(
            data, max_scale, max_pixels=max_pixels, max_bytes=max_bytes, label=label
        )
    return DecodedImage(
        image=image,
        encoded=data if image.scale > 1 else None,
        label=label,
        decode_ms=(time.perf_counter() - start) * 1000,
    )


def read_image_file(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of the image file at `path`, read the way `load_image` reads a path.

    For callers that need the bytes themselves (the batch runner hashes them) before decoding
    them with `load_image(data, label=path)`. FIFOs, devices and folders are refused without
    blocking. Raises ImageDecodeError (missing, unreadable, empty, not a regular file) or
    ImageTooLargeError (over `max_bytes`).
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    return _read_regular_file(os.fsdecode(path), max_bytes=max_bytes)


def describe_source(source: ImageSource) -> str:
    """A short human label for `source`, for logs and results.

    A path gives the path itself; other sources give `<bytes 12345>`, `<PIL.Image 640x480>`
    (width x height) or `<ndarray 480x640x3>` (the array's shape).
    """
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<bytes {memoryview(source).nbytes}>"
    if isinstance(source, Image.Image):
        width, height = source.size
        return f"<PIL.Image {width}x{height}>"
    if isinstance(source, np.ndarray):
        return f"<ndarray {'x'.join(str(length) for length in source.shape)}>"
    return f"<{type(source).__name__}>"


def encode_jpeg(rgb: npt.NDArray[np.uint8], quality: int = 90) -> bytes:
    """Encode an RGB uint8 (height, width, 3) array as JPEG bytes.

    `quality` is Pillow's JPEG quality, 1 (smallest) to 100 (largest; above 95 gains little).
    JPEG cannot hold a side over 65,500 px (`MAX_JPEG_SIDE`): a longer image is downscaled,
    aspect ratio kept (a 65,535 x 1 strip becomes 65,500 x 1), so any decodable image encodes.
    Raises ValueError for any other array shape or dtype, an empty array or a quality out of range.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"encode_jpeg needs a uint8 (H, W, 3) RGB array, got shape {rgb.shape} "
            f"dtype {rgb.dtype}"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"encode_jpeg cannot encode an empty image of shape {rgb.shape}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    height, width = rgb.shape[:2]
    if max(width, height) > MAX_JPEG_SIDE:
        scale = MAX_JPEG_SIDE / max(width, height)
        size = (
            min(MAX_JPEG_SIDE, max(1, round(width * scale))),
            min(MAX_JPEG_SIDE, max(1, round(height * scale))),
        )
        picture = picture.resize(size, Image.Resampling.BOX)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(rgb: npt.NDArray[np.uint8]) -> bytes:
    """Encode an RGB uint8 (height, width, 3) array as PNG bytes (lossless; several times the
    size of a JPEG of a photo). Raises ValueError for any other array shape or dtype, or an
    empty array."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"encode_png needs a uint8 (H, W, 3) RGB array, got shape {rgb.shape} dtype {rgb.dtype}"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"encode_png cannot encode an empty image of shape {rgb.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _read_regular_file(path: str, *, max_bytes: int) -> bytes:
    """Read a whole regular file, refusing FIFOs, devices, sockets and directories without
    blocking."""
    # O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the file
    # type is then checked on the open descriptor, so a path swapped after a stat cannot slip by.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError as error:
        if path.lower().startswith(("http://", "https://")):
            raise ImageDecodeError(
                f"file not found: {path}; URLs are not fetched, download the image and pass "
                "its path or bytes"
            ) from error
        raise ImageDecodeError(f"file not found: {path}") from error
    except IsADirectoryError as error:
        raise ImageDecodeError(f"{path} is a directory, not an image file") from error
    except PermissionError as error:
        raise ImageDecodeError(f"permission denied reading {path}") from error
    except (OSError, ValueError) as error:
        raise ImageDecodeError(f"cannot open {path}: {error}") from error
    try:
        file_status = os.fstat(descriptor)
        if not stat.S_ISREG(file_status.st_mode):
            raise ImageDecodeError(
                f"{path} is {_describe_file_type(file_status.st_mode)}, not a regular file; "
                "agelens reads images only from regular files"
            )
        if file_status.st_size > max_bytes:
            raise ImageTooLargeError(
                f"{path} is {file_status.st_size} bytes, over the limit of {max_bytes} bytes; "
                "use a smaller file or raise max_bytes"
            )
        with open(descriptor, "rb", closefd=False) as file:
            # One byte past the limit tells a file that grew since fstat from one that fits.
            data = file.read(max_bytes + 1)
    except OSError as error:
        raise ImageDecodeError(f"cannot read {path}: {error}") from error
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"{path} is over the limit of {max_bytes} bytes; use a smaller file or raise max_bytes"
        )
    if not data:
        raise ImageDecodeError(f"{path} is empty (0 bytes), not an image")
    return data


def _describe_file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@typing.overload
def _decode_encoded_image(
    data: bytes | bytearray, *, label: str, max_pixels: int, max_scale: None = None
) -> npt.NDArray[np.uint8]: ...


@typing.overload
def _decode_encoded_image(
    data: bytes | bytearray,
    *,
    label: str,
    max_pixels: int,
    max_scale: Callable[[tuple[int, int]], int],
) -> ReducedImage: ...


def _decode_encoded_image(
    data: bytes | bytearray,
    *,
    label: str,
    max_pixels: int,
    max_scale: Callable[[tuple[int, int]], int] | None = None,
) -> npt.NDArray[np.uint8] | ReducedImage:
    if not data:
        raise ImageDecodeError(f"{label}: image data is empty (0 bytes)")
    _route_libtiff_messages()
    formats: tuple[str, ...] = _PILLOW_FORMATS
    if _looks_like_heif(data):
        _register_heif_opener()
        formats = (*_PILLOW_FORMATS, _HEIF_PILLOW_FORMAT)
    with _pillow_warnings_logged(label):
        try:
            image = Image.open(io.BytesIO(data), formats=formats)
        except UnidentifiedImageError as error:
            raise ImageDecodeError(
                f"{label}: not a recognised image format (supported: {SUPPORTED_FORMATS_LABEL})"
            ) from error
        except Image.DecompressionBombError as error:
            raise _bomb_error(label, error, max_pixels) from error
        except MemoryError:
            raise
        except Exception as error:  # Pillow's plugins raise many types on hostile headers.
            raise _decode_failure(label, error) from error
        with image:
            if max_scale is None:
                return _pil_image_to_rgb(image, label=label, max_pixels=max_pixels)
            width, height = image.size
            _check_pixel_count(width, height, label=label, max_pixels=max_pixels)
            orientation = _exif_orientation(image, label=label)
            swapped = orientation in (5, 6, 7, 8)
            upright_wh = (height, width) if swapped else (width, height)
            scale = _draft(image, max_scale(upright_wh))
            pixels = _pil_image_to_rgb(image, label=label, max_pixels=max_pixels)
            reduced_w, reduced_h = image.size
            # The axes of the stored image that orientation flips, and by how many full-image
            # pixels the rounded-up reduced size overshoots along each.
            over_x, over_y = reduced_w * scale - width, reduced_h * scale - height
            flips_x, flips_y = _FLIPPED_STORED_AXES.get(orientation, (False, False))
            offset_x, offset_y = (over_x if flips_x else 0), (over_y if flips_y else 0)
            upright_offset = (offset_y, offset_x) if swapped else (offset_x, offset_y)
            return ReducedImage(pixels, scale, upright_offset, upright_wh)


# libtiff's default handlers print every warning and error straight to stderr (file descriptor
# 2), past logging: ~420 lines for 1,000 damaged compressed TIFFs. Its handlers take a C
# va_list, which is passed as a pointer on x86-64 and aarch64 Linux, so libc's vsnprintf can
# format the message for logging there; elsewhere the handlers are switched off (Pillow still
# raises, and the ImageDecodeError says the file is damaged).
_LIBTIFF_HANDLER_MACHINES = frozenset({"x86_64", "aarch64"})


@functools.cache
def _route_libtiff_messages() -> object:
    """Send libtiff's messages to this module's logger (at DEBUG) instead of stderr, once.

    Returns what must stay alive (the C callback), or None when libtiff is not loaded by
    Pillow's build or cannot be reached.
    """
    import ctypes
    import platform
    import sys

    from PIL import _imaging  # noqa: F401  (loads Pillow's libtiff into the process)

    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line and "/" in line}
        library = ctypes.CDLL(sorted(paths)[0]) if paths else None
    except (OSError, IndexError):
        return None
    if library is None:
        return None
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
    libc = ctypes.CDLL(None)
    vsnprintf = libc.vsnprintf
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

    def log_message(module: bytes | None, fmt: bytes | None, arguments: int | None) -> None:
        buffer = ctypes.create_string_buffer(512)
        vsnprintf(buffer, len(buffer), fmt or b"", arguments)
        where = (module or b"libtiff").decode("utf-8", "replace")
        logger.debug("libtiff: %s: %s", where, buffer.value.decode("utf-8", "replace"))

    callback = (
        handler_type(log_message)
        if platform.machine() in _LIBTIFF_HANDLER_MACHINES
        else handler_type()  # a NULL handler: libtiff stays silent
    )
    for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
        setter = getattr(library, name, None)
        if setter is not None:
            setter.argtypes = [handler_type]
            setter.restype = handler_type
            setter(callback)
    return callback


def _looks_like_heif(data: bytes | bytearray) -> bool:
    """HEIC/HEIF files are ISO base media files, which start with an `ftyp` box."""
    return data[4:8] == b"ftyp"


@functools.cache
def _register_heif_opener() -> None:
    """Teach Pillow to open HEIC/HEIF, once, the first time such a file is decoded."""
    try:
        import pillow_heif
    except ImportError as error:
        raise ImageDecodeError(
            "decoding HEIC/HEIF needs pillow-heif; run: pip install pillow-heif"
        ) from error
    pillow_heif.register_heif_opener()


@contextlib.contextmanager
def _pillow_warnings_logged(label: str) -> Iterator[None]:
    """Turn warnings Pillow raises while decoding into log records.

    Pillow warns about things such as odd EXIF data, which say nothing about whether the pixels
    decoded; a log record keeps that information without printing to stderr or, under
    `-W error`, failing a decode that worked. Pillow's DecompressionBombWarning is dropped
    because `max_pixels` is checked instead. `warnings.catch_warnings` changes process-wide state
    while it is active, so a warning raised by another thread in that window is logged here too.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        finally:
            for warning in caught:
                logger.warning("%s: while decoding: %s", label, warning.message)


def _pil_image_to_rgb(image: Image.Image, *, label: str, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Check the size of a (possibly not yet loaded) image, decode it, orient it upright and
    convert it to RGB."""
    width, height = image.size
    _check_pixel_count(width, height, label=label, max_pixels=max_pixels)
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise _bomb_error(label, error, max_pixels) from error
    except MemoryError:
        raise
    except Exception as error:  # Pillow's decoders raise many types on corrupt data.
        raise _decode_failure(label, error) from error
    upright = _apply_exif_orientation(image, label=label)
    try:
        return _to_rgb_array(upright)
    except ValueError as error:
        raise ImageDecodeError(
            f"{label}: unsupported pixel mode {upright.mode!r} ({error})"
        ) from error


#: how to raise the pixel limit, from each door
RAISE_PIXEL_LIMIT = (
    "downscale it or raise the limit (--max-pixels on the command line, AGELENS_MAX_PIXELS "
    "for the service, max_pixels= in Python)"
)


def _check_pixel_count(width: int, height: int, *, label: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{label}: image has zero pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: image is {width}x{height} ({width * height} pixels), over the limit of "
            f"{max_pixels} pixels; {RAISE_PIXEL_LIMIT}"
        )


_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def _bomb_error(label: str, error: Exception, max_pixels: int) -> ImageTooLargeError:
    """Pillow refuses images over twice its own MAX_IMAGE_PIXELS while opening them, before
    agelens can read the size; say it in agelens's terms (the pixel count is in its message)."""
    found = _BOMB_PIXELS.search(str(error))
    pixels = int(found.group(1)) if found else None
    if pixels is None or pixels > max_pixels:
        size = f" ({pixels} pixels)" if pixels is not None else ""
        return ImageTooLargeError(
            f"{label}: image is over the limit of {max_pixels} pixels{size}; {RAISE_PIXEL_LIMIT}"
        )
    return ImageTooLargeError(
        f"{label}: image has {pixels} pixels, more than the image library (Pillow) opens "
        "safely; downscale it"
    )


def _decode_failure(label: str, error: Exception) -> ImageDecodeError:
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, EOFError) or "truncated" in str(error).lower():
        return ImageDecodeError(
            f"{label}: image data is truncated ({detail}); the file was cut short, copy or "
            "download it again"
        )
    return ImageDecodeError(f"{label}: image data is corrupt ({detail})")


#: For each EXIF orientation, whether the stored image's x and y axes end up reversed.
_FLIPPED_STORED_AXES = {
    2: (True, False),
    3: (True, True),
    4: (False, True),
    5: (False, False),
    6: (False, True),
    7: (True, True),
    8: (True, False),
}


def _draft(image: Image.Image, max_scale: int) -> int:
    """Ask a not yet loaded JPEG to decode at 1/scale (the largest DCT scale up to
    `max_scale`); return the scale it will decode at (1 for other formats)."""
    scale = next(s for s in JPEG_DRAFT_SCALES if s <= max(max_scale, 1))
    if scale == 1 or image.format not in ("JPEG", "MPO"):
        return 1
    width, height = image.size
    drafted = image.draft(image.mode, (max(1, width // scale), max(1, height // scale)))
    if drafted is None:  # a JPEG Pillow cannot scale (several tiles): decoded at full size
        return 1
    return round(width / drafted[1][2])


def _exif_orientation(image: Image.Image, *, label: str) -> int:
    """The image's EXIF orientation (1, upright, when it has none or it cannot be read)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except MemoryError:
        raise
    except Exception as error:  # Unreadable EXIF must not cost an image whose pixels decoded.
        logger.warning("%s: ignoring unreadable EXIF data (%s)", label, error)
        return 1
    return orientation if isinstance(orientation, int) else 1


def _apply_exif_orientation(image: Image.Image, *, label: str) -> Image.Image:
    """Rotate or flip `image` as its EXIF orientation says; return it unchanged when there is
    none."""
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(_exif_orientation(image, label=label))
    return image if transpose is None else image.transpose(transpose)


def _to_rgb_array(image: Image.Image) -> npt.NDArray[np.uint8]:
    """Convert a loaded image of any Pillow mode to a new C-contiguous RGB uint8 array."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_sixteen_bit_to_eight_bit(np.asarray(image)))
    if image.mode == "F":
        # Pillow's own convention for mode F is the 0-255 scale of mode L (it is what
        # convert("F") produces from L), so values are clipped to that range, not rescaled.
        samples = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        return _gray_to_rgb(np.clip(np.rint(samples), 0, 255).astype(np.uint8))
    if image.has_transparency_data:
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.array(rgb, dtype=np.uint8)


def _sixteen_bit_to_eight_bit(samples: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Scale 0-65535 samples to 0-255 with rounding (65535 / 257 == 255), so the full 16-bit
    range maps onto the full 8-bit range instead of saturating. Mode I holds 16-bit samples when
    Pillow decodes 16-bit grayscale; values outside 0-65535 are clipped."""
    wide = np.clip(samples.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _gray_to_rgb(gray: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def _composite_on_white(rgba: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Blend RGBA over an opaque white background.

    Dropping alpha would show whatever colour sits under transparent pixels, often black, and a
    dark face cut out onto a transparent PNG would then vanish into a black background. White
    keeps the face visible, as image viewers show it.
    """
    color = rgba[:, :, :3].astype(np.uint16)
    alpha = rgba[:, :, 3:].astype(np.uint16)
    # At most 255 * 255 + 127, so uint16 cannot overflow.
    blended = (color * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def _array_to_rgb(array: npt.NDArray[Any], *, label: str, max_pixels: int) -> npt.NDArray[np.uint8]:
    is_supported_shape = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not is_supported_shape:
        raise ImageDecodeError(
            f"{_ARRAY_CONTRACT}; got shape {array.shape} dtype {array.dtype}"
            f"{_array_conversion_hint(array)}"
        )
    height, width = array.shape[:2]
    _check_pixel_count(width, height, label=label, max_pixels=max_pixels)
    if array.ndim == 2:
        return _gray_to_rgb(array)
    if array.shape[2] == 4:
        return _composite_on_white(array)
    return np.ascontiguousarray(array)


def _array_conversion_hint(array: npt.NDArray[Any]) -> str:
    if np.issubdtype(array.dtype, np.floating):
        return "; scale floats in [0, 1] with (array * 255).round().astype(numpy.uint8)"
    if array.dtype == np.uint16:
        return (
            "; scale 16-bit samples with "
            "((array.astype(numpy.uint32) + 128) // 257).astype(numpy.uint8)"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        return "; drop the channel axis with array[:, :, 0]"
    return ""
