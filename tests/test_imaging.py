"""Tests for agelens.imaging: every accepted input decodes to an upright RGB uint8 array, and every
bad input fails with the right typed error."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from skimage import data as skimage_data

from agelens.errors import ImageDecodeError, ImageTooLargeError
from agelens.imaging import (
    DEFAULT_MAX_PIXELS,
    MAX_JPEG_SIDE,
    ImageSource,
    describe_source,
    encode_jpeg,
    load_image,
    load_image_reduced,
)

SAMPLES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "samples"
RED = (220, 20, 30)
GRAY = (128, 128, 128)
WHITE = (255, 255, 255)


def smooth_rgb(height: int = 48, width: int = 64) -> npt.NDArray[np.uint8]:
    """A smooth colour gradient: survives lossy codecs well enough to compare values."""
    rows = np.linspace(0, 255, height)[:, np.newaxis]
    columns = np.linspace(0, 255, width)[np.newaxis, :]
    red = np.broadcast_to(columns, (height, width))
    green = np.broadcast_to(rows, (height, width))
    blue = np.full((height, width), 96.0)
    return np.rint(np.stack([red, green, blue], axis=2)).astype(np.uint8)


def encode(image: Image.Image, image_format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def encode_heic(image: Image.Image) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    buffer = io.BytesIO()
    try:
        pillow_heif.from_pillow(image).save(buffer, quality=95)
    except (RuntimeError, ValueError, OSError) as error:
        pytest.skip(f"pillow-heif cannot encode HEIC here: {error}")
    return buffer.getvalue()


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to declare `width` x `height` (CRC fixed up)."""
    png = bytearray(encode(Image.new("RGB", (8, 8)), "PNG"))
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def gif_declaring_size(width: int, height: int) -> bytes:
    gif = bytearray(encode(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)
    return bytes(gif)


def astronaut_jpeg() -> bytes:
    return encode(Image.fromarray(skimage_data.astronaut()), "JPEG", quality=90)


def mean_abs_difference(first: npt.NDArray[np.uint8], second: npt.NDArray[np.uint8]) -> float:
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


def assert_rgb_array(image: npt.NDArray[np.uint8], height: int, width: int) -> None:
    assert image.shape == (height, width, 3)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous


def run_with_deadline(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run `call` in a daemon thread; fail if it is still running after `seconds` (a hang would
    otherwise stall the whole test run). Returns what it raised, or None."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return outcome[0]


@pytest.mark.parametrize(
    ("image_format", "save_params", "max_mean_error"),
    [
        ("JPEG", {"quality": 95}, 3.0),
        ("PNG", {}, 0.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("WEBP", {"quality": 90}, 4.0),
        ("BMP", {}, 0.0),
        ("TIFF", {}, 0.0),
        ("TIFF", {"compression": "tiff_lzw"}, 0.0),
        ("GIF", {}, 12.0),
        ("HEIC", {}, 4.0),
    ],
)
@pytest.mark.parametrize("as_path", [False, True], ids=["bytes", "path"])
def test_each_format_decodes_to_rgb_uint8(
    tmp_path: Path,
    image_format: str,
    save_params: dict[str, Any],
    max_mean_error: float,
    as_path: bool,
) -> None:
    original = smooth_rgb()
    pil_image = Image.fromarray(original)
    if image_format == "HEIC":
        encoded = encode_heic(pil_image)
    else:
        encoded = encode(pil_image, image_format, **save_params)
    source: ImageSource = encoded
    if as_path:
        path = tmp_path / f"image.{image_format.lower()}"
        path.write_bytes(encoded)
        source = path

    decoded = load_image(source)

    assert_rgb_array(decoded, 48, 64)
    assert mean_abs_difference(decoded, original) <= max_mean_error


@pytest.mark.parametrize(
    "make_source",
    [
        pytest.param(lambda encoded, path: encoded, id="bytes"),
        pytest.param(lambda encoded, path: bytearray(encoded), id="bytearray"),
        pytest.param(lambda encoded, path: memoryview(encoded), id="memoryview"),
        pytest.param(lambda encoded, path: str(path), id="str-path"),
        pytest.param(lambda encoded, path: path, id="pathlib-path"),
        pytest.param(lambda encoded, path: Image.open(io.BytesIO(encoded)), id="pil-lazy"),
    ],
)
def test_every_source_kind_gives_the_same_pixels(
    tmp_path: Path, make_source: Callable[[bytes, Path], ImageSource]
) -> None:
    original = smooth_rgb()
    encoded = encode(Image.fromarray(original), "PNG")
    path = tmp_path / "image.png"
    path.write_bytes(encoded)

    decoded = load_image(make_source(encoded, path))

    np.testing.assert_array_equal(decoded, original)
    assert decoded.flags.writeable


def image_with_red_top_left_corner() -> Image.Image:
    """A 60 wide x 40 high gray image whose top-left 12x12 block is red."""
    pixels = np.full((40, 60, 3), GRAY, dtype=np.uint8)
    pixels[:12, :12] = RED
    return Image.fromarray(pixels)


def corner_colors(image: npt.NDArray[np.uint8]) -> dict[str, npt.NDArray[np.float64]]:
    block = 6
    return {
        "top-left": image[:block, :block].mean(axis=(0, 1)),
        "top-right": image[:block, -block:].mean(axis=(0, 1)),
        "bottom-left": image[-block:, :block].mean(axis=(0, 1)),
        "bottom-right": image[-block:, -block:].mean(axis=(0, 1)),
    }


@pytest.mark.parametrize(
    ("orientation", "expected_shape", "red_corner"),
    [
        (1, (40, 60, 3), "top-left"),
        (3, (40, 60, 3), "bottom-right"),
        # 6: the camera was turned clockwise; display rotates 90° clockwise.
        (6, (60, 40, 3), "top-right"),
        # 8: display rotates 90° counter-clockwise.
        (8, (60, 40, 3), "bottom-left"),
    ],
)
@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("as_pil_image", [False, True], ids=["bytes", "pil"])
def test_exif_orientation_is_applied(
    orientation: int,
    expected_shape: tuple[int, int, int],
    red_corner: str,
    image_format: str,
    as_pil_image: bool,
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    encoded = encode(image_with_red_top_left_corner(), image_format, exif=exif, quality=95)
    source: ImageSource = Image.open(io.BytesIO(encoded)) if as_pil_image else encoded

    decoded = load_image(source)

    assert decoded.shape == expected_shape
    for corner, color in corner_colors(decoded).items():
        expected = RED if corner == red_corner else GRAY
        np.testing.assert_allclose(color, expected, atol=12, err_msg=corner)


def palette_image(
    mode: str, fill: int | tuple[int, int], transparency: int | None = None
) -> Image.Image:
    image = Image.new(mode, (8, 6), fill)
    palette = [0, 0, 0] * 256
    palette[3 * 3 : 3 * 3 + 3] = [10, 200, 30]
    image.putpalette(palette)
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def uniform_image(mode: str, fill: float | tuple[int, ...]) -> Image.Image:
    return Image.new(mode, (8, 6), fill)


@pytest.mark.parametrize(
    ("make_image", "image_format", "expected_rgb", "tolerance"),
    [
        pytest.param(lambda: uniform_image("L", 200), None, (200,) * 3, 0, id="L"),
        pytest.param(lambda: uniform_image("L", 200), "PNG", (200,) * 3, 0, id="L-png"),
        pytest.param(lambda: uniform_image("LA", (200, 255)), None, (200,) * 3, 0, id="LA-opaque"),
        pytest.param(lambda: uniform_image("LA", (0, 0)), "PNG", WHITE, 0, id="LA-clear-png"),
        pytest.param(lambda: uniform_image("LA", (0, 128)), None, (127,) * 3, 1, id="LA-half"),
        pytest.param(lambda: palette_image("P", 3, None), None, (10, 200, 30), 0, id="P"),
        pytest.param(lambda: palette_image("P", 3, None), "GIF", (10, 200, 30), 0, id="P-gif"),
        pytest.param(lambda: palette_image("P", 3, 3), "PNG", WHITE, 0, id="P-clear-png"),
        pytest.param(lambda: palette_image("P", 3, 3), "GIF", WHITE, 0, id="P-clear-gif"),
        pytest.param(lambda: palette_image("PA", (3, 0)), None, WHITE, 0, id="PA-clear"),
        pytest.param(
            lambda: palette_image("PA", (3, 255)), "TIFF", (10, 200, 30), 0, id="PA-opaque-tiff"
        ),
        pytest.param(lambda: uniform_image("RGBA", (10, 20, 30, 0)), None, WHITE, 0, id="RGBA"),
        pytest.param(
            lambda: uniform_image("RGBA", (10, 20, 30, 0)), "PNG", WHITE, 0, id="RGBA-clear-png"
        ),
        pytest.param(
            lambda: uniform_image("RGBA", (10, 20, 30, 255)),
            "PNG",
            (10, 20, 30),
            0,
            id="RGBA-opaque-png",
        ),
        pytest.param(
            lambda: uniform_image("RGBA", (10, 20, 30, 0)), "WEBP", WHITE, 1, id="RGBA-clear-webp"
        ),
        pytest.param(
            lambda: uniform_image("CMYK", (255, 0, 0, 0)), None, (0, 255, 255), 0, id="CMYK"
        ),
        pytest.param(
            lambda: uniform_image("CMYK", (255, 0, 0, 0)),
            "JPEG",
            (0, 255, 255),
            3,
            id="CMYK-jpeg",
        ),
        pytest.param(
            lambda: uniform_image("CMYK", (0, 0, 0, 0)), "TIFF", WHITE, 0, id="CMYK-white-tiff"
        ),
        pytest.param(lambda: uniform_image("I;16", 65535), None, WHITE, 0, id="I16-max"),
        pytest.param(lambda: uniform_image("I;16", 32896), "PNG", (128,) * 3, 0, id="I16-png"),
        pytest.param(lambda: uniform_image("I;16", 1000), "TIFF", (4,) * 3, 0, id="I16-tiff"),
        pytest.param(lambda: uniform_image("I", 65535), None, WHITE, 0, id="I-max"),
        pytest.param(lambda: uniform_image("I", 32896), "TIFF", (128,) * 3, 0, id="I-tiff"),
        pytest.param(lambda: uniform_image("F", 100.4), None, (100,) * 3, 0, id="F"),
        pytest.param(lambda: uniform_image("F", 300.0), "TIFF", WHITE, 0, id="F-over-tiff"),
        pytest.param(lambda: uniform_image("1", 1), None, WHITE, 0, id="1"),
        pytest.param(lambda: uniform_image("1", 0), "PNG", (0,) * 3, 0, id="1-black-png"),
        pytest.param(lambda: uniform_image("1", 1), "BMP", WHITE, 0, id="1-bmp"),
        pytest.param(
            lambda: uniform_image("YCbCr", (128, 128, 128)), None, (128,) * 3, 1, id="YCbCr"
        ),
        pytest.param(lambda: uniform_image("RGBX", (1, 2, 3, 0)), None, (1, 2, 3), 0, id="RGBX"),
    ],
)
def test_pixel_modes_normalise_to_rgb(
    make_image: Callable[[], Image.Image],
    image_format: str | None,
    expected_rgb: tuple[int, int, int],
    tolerance: int,
) -> None:
    image = make_image()
    source: ImageSource = image if image_format is None else encode(image, image_format)

    decoded = load_image(source)

    assert_rgb_array(decoded, 6, 8)
    difference = np.abs(decoded.astype(np.int16) - np.array(expected_rgb, dtype=np.int16))
    assert int(difference.max()) <= tolerance, decoded[0, 0]


@pytest.mark.parametrize("image_format", [None, "PNG", "TIFF"])
def test_sixteen_bit_samples_are_scaled_not_clipped(image_format: str | None) -> None:
    samples = np.array([[0, 257, 1000, 32896, 65278, 65535]], dtype=np.uint16)
    image = Image.fromarray(samples)
    source: ImageSource = image if image_format is None else encode(image, image_format)

    decoded = load_image(source)

    np.testing.assert_array_equal(decoded[0, :, 0], [0, 1, 4, 128, 254, 255])
    np.testing.assert_array_equal(decoded[:, :, 0], decoded[:, :, 2])


def test_astronaut_photo_round_trips_through_jpeg_bytes() -> None:
    original = skimage_data.astronaut()

    decoded = load_image(astronaut_jpeg())

    assert_rgb_array(decoded, 512, 512)
    assert mean_abs_difference(decoded, original) < 4.0


def sample_files() -> list[Any]:
    if not SAMPLES_DIR.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{SAMPLES_DIR} is absent"))]
    files = sorted(path for path in SAMPLES_DIR.iterdir() if path.is_file())
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{SAMPLES_DIR} is empty"))]
    return [pytest.param(path, id=path.name) for path in files]


@pytest.mark.parametrize("sample_path", sample_files())
def test_every_shared_sample_decodes(sample_path: Path) -> None:
    decoded = load_image(sample_path)

    assert decoded.ndim == 3
    assert_rgb_array(decoded, decoded.shape[0], decoded.shape[1])
    assert decoded.shape[0] > 0
    assert decoded.shape[1] > 0


def write_file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def make_fifo(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("os.mkfifo is not available on this platform")
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


def existing_device(path: str) -> Path:
    if not Path(path).exists():
        pytest.skip(f"{path} does not exist on this platform")
    return Path(path)


def half_of(encoded: bytes) -> bytes:
    return encoded[: len(encoded) // 2]


@pytest.mark.parametrize(
    ("make_source", "limits", "expected_error", "message_part"),
    [
        pytest.param(lambda tmp: b"", {}, ImageDecodeError, "empty", id="empty-bytes"),
        pytest.param(
            lambda tmp: np.random.default_rng(0).bytes(2000),
            {},
            ImageDecodeError,
            "not a recognised image format",
            id="random-bytes",
        ),
        pytest.param(
            lambda tmp: b"this is a text file, not an image\n" * 20,
            {},
            ImageDecodeError,
            "not a recognised image format",
            id="text-bytes",
        ),
        pytest.param(
            lambda tmp: write_file(tmp, "notes.jpg", b"hello\n" * 100),
            {},
            ImageDecodeError,
            "not a recognised image format",
            id="text-file",
        ),
        pytest.param(
            lambda tmp: half_of(astronaut_jpeg()),
            {},
            ImageDecodeError,
            "truncated",
            id="truncated-jpeg",
        ),
        pytest.param(
            lambda tmp: half_of(encode(Image.fromarray(skimage_data.astronaut()), "PNG")),
            {},
            ImageDecodeError,
            "truncated",
            id="truncated-png",
        ),
        pytest.param(
            lambda tmp: astronaut_jpeg()[:200],
            {},
            ImageDecodeError,
            "truncated",
            id="jpeg-header-only",
        ),
        pytest.param(
            lambda tmp: png_declaring_size(0, 0),
            {},
            ImageDecodeError,
            "",
            id="zero-pixel-png",
        ),
        pytest.param(
            lambda tmp: Image.new("RGB", (0, 0)),
            {},
            ImageDecodeError,
            "zero pixels",
            id="zero-pixel-pil",
        ),
        pytest.param(
            lambda tmp: png_declaring_size(100_000, 100_000),
            {},
            ImageTooLargeError,
            "over the limit of 50000000 pixels (10000000000 pixels); downscale it or raise the "
            "limit (--max-pixels",
            id="bomb-png-100000x100000",
        ),
        pytest.param(
            lambda tmp: png_declaring_size(10_000, 10_000),
            {},
            ImageTooLargeError,
            "over the limit of 50000000 pixels",
            id="bomb-png-in-pillow-warning-range",
        ),
        pytest.param(
            lambda tmp: png_declaring_size(8_000, 8_000),
            {},
            ImageTooLargeError,
            "over the limit of 50000000 pixels",
            id="bomb-png-below-pillow-limits",
        ),
        pytest.param(
            lambda tmp: write_file(tmp, "bomb.png", png_declaring_size(100_000, 100_000)),
            {},
            ImageTooLargeError,
            "over the limit of 50000000 pixels",
            id="bomb-png-file",
        ),
        pytest.param(
            lambda tmp: gif_declaring_size(65_535, 65_535),
            {},
            ImageTooLargeError,
            "pixels",
            id="bomb-gif",
        ),
        pytest.param(
            lambda tmp: encode(Image.new("RGB", (64, 64)), "PNG"),
            {"max_pixels": 1000},
            ImageTooLargeError,
            "over the limit of 1000 pixels",
            id="over-max-pixels",
        ),
        pytest.param(
            lambda tmp: np.zeros((64, 64, 3), dtype=np.uint8),
            {"max_pixels": 1000},
            ImageTooLargeError,
            "over the limit of 1000 pixels",
            id="ndarray-over-max-pixels",
        ),
        pytest.param(
            lambda tmp: astronaut_jpeg(),
            {"max_bytes": 1000},
            ImageTooLargeError,
            "over the limit of 1000 bytes",
            id="bytes-over-max-bytes",
        ),
        pytest.param(
            lambda tmp: memoryview(astronaut_jpeg()),
            {"max_bytes": 1000},
            ImageTooLargeError,
            "over the limit of 1000 bytes",
            id="memoryview-over-max-bytes",
        ),
        pytest.param(
            lambda tmp: write_file(tmp, "big.jpg", astronaut_jpeg()),
            {"max_bytes": 1000},
            ImageTooLargeError,
            "over the limit of 1000 bytes",
            id="file-over-max-bytes",
        ),
        pytest.param(
            lambda tmp: tmp / "missing.jpg",
            {},
            ImageDecodeError,
            "file not found",
            id="nonexistent-path",
        ),
        pytest.param(
            lambda tmp: "https://example.com/face.jpg",
            {},
            ImageDecodeError,
            "URLs are not fetched",
            id="url",
        ),
        pytest.param(
            lambda tmp: write_file(tmp, "empty.jpg", b""),
            {},
            ImageDecodeError,
            "empty",
            id="empty-file",
        ),
        pytest.param(lambda tmp: tmp, {}, ImageDecodeError, "directory", id="directory"),
        pytest.param(make_fifo, {}, ImageDecodeError, "FIFO", id="fifo"),
        pytest.param(
            lambda tmp: existing_device("/dev/zero"),
            {},
            ImageDecodeError,
            "character device",
            id="device-file",
        ),
        pytest.param(
            lambda tmp: np.zeros((4, 4, 3), dtype=np.float32),
            {},
            ImageDecodeError,
            "uint8",
            id="ndarray-float32",
        ),
        pytest.param(
            lambda tmp: np.zeros((4, 4, 3), dtype=np.uint16),
            {},
            ImageDecodeError,
            "uint8",
            id="ndarray-uint16",
        ),
        pytest.param(
            lambda tmp: np.zeros((4, 4, 3), dtype=bool),
            {},
            ImageDecodeError,
            "uint8",
            id="ndarray-bool",
        ),
        pytest.param(
            lambda tmp: np.zeros((4, 4, 1), dtype=np.uint8),
            {},
            ImageDecodeError,
            "shape (4, 4, 1)",
            id="ndarray-one-channel",
        ),
        pytest.param(
            lambda tmp: np.zeros((4, 4, 2), dtype=np.uint8),
            {},
            ImageDecodeError,
            "shape (4, 4, 2)",
            id="ndarray-two-channels",
        ),
        pytest.param(
            lambda tmp: np.zeros(16, dtype=np.uint8),
            {},
            ImageDecodeError,
            "shape (16,)",
            id="ndarray-1d",
        ),
        pytest.param(
            lambda tmp: np.zeros((2, 4, 4, 3), dtype=np.uint8),
            {},
            ImageDecodeError,
            "shape (2, 4, 4, 3)",
            id="ndarray-4d",
        ),
        pytest.param(
            lambda tmp: np.zeros((0, 5, 3), dtype=np.uint8),
            {},
            ImageDecodeError,
            "zero pixels",
            id="ndarray-zero-pixels",
        ),
        pytest.param(
            lambda tmp: 12345,
            {},
            ImageDecodeError,
            "unsupported image source",
            id="unsupported-type",
        ),
    ],
)
def test_bad_inputs_raise_typed_errors_quickly(
    tmp_path: Path,
    make_source: Callable[[Path], ImageSource],
    limits: dict[str, int],
    expected_error: type[ImageDecodeError],
    message_part: str,
) -> None:
    source = make_source(tmp_path)

    error = run_with_deadline(2.0, lambda: load_image(source, **limits))

    assert type(error) is expected_error, repr(error)
    assert message_part in str(error)
    assert "DOS attack" not in str(error)  # Pillow's words, not ours


def test_an_image_over_pillows_own_limit_but_under_ours_says_so() -> None:
    # 20000x20000 is past twice Pillow's MAX_IMAGE_PIXELS, so Pillow refuses it while opening.
    error = run_with_deadline(
        2.0, lambda: load_image(png_declaring_size(20_000, 20_000), max_pixels=10**9)
    )

    assert isinstance(error, ImageTooLargeError)
    assert "400000000 pixels, more than the image library (Pillow) opens safely" in str(error)


def test_decoding_leaves_pillow_and_warning_state_alone() -> None:
    max_image_pixels = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)

    with pytest.raises(ImageTooLargeError):
        load_image(png_declaring_size(10_000, 10_000))
    load_image(astronaut_jpeg())

    assert max_image_pixels == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters


def test_max_pixels_above_pillow_warning_threshold_is_honoured() -> None:
    # 100 megapixels is past Pillow's warning threshold; with a raised limit the header passes
    # the size check and decoding fails only because the patched file holds 8x8 pixels of data.
    source = png_declaring_size(10_000, 10_000)

    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt") as raised:
        load_image(source, max_pixels=200_000_000)

    assert not isinstance(raised.value, ImageTooLargeError)


def test_importing_imaging_registers_nothing() -> None:
    script = (
        "import sys\n"
        "import agelens.imaging\n"
        "from PIL import Image\n"
        "assert 'pillow_heif' not in sys.modules, 'pillow_heif imported'\n"
        "Image.init()\n"
        "assert 'HEIF' not in Image.OPEN, 'HEIF opener registered'\n"
    )

    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize(
    ("make_array", "expected_first_pixel"),
    [
        pytest.param(lambda: np.full((3, 5), 77, dtype=np.uint8), (77, 77, 77), id="gray"),
        pytest.param(
            lambda: np.full((3, 5, 4), (10, 20, 30, 0), dtype=np.uint8), WHITE, id="rgba-clear"
        ),
        pytest.param(
            lambda: np.full((3, 5, 4), (10, 20, 30, 255), dtype=np.uint8),
            (10, 20, 30),
            id="rgba-opaque",
        ),
        pytest.param(
            lambda: np.full((3, 10, 3), (1, 2, 3), dtype=np.uint8)[:, ::2],
            (1, 2, 3),
            id="rgb-strided",
        ),
        pytest.param(
            lambda: np.asfortranarray(np.full((3, 5, 3), (4, 5, 6), dtype=np.uint8)),
            (4, 5, 6),
            id="rgb-fortran-order",
        ),
    ],
)
def test_ndarray_inputs_become_contiguous_rgb(
    make_array: Callable[[], npt.NDArray[np.uint8]], expected_first_pixel: tuple[int, int, int]
) -> None:
    decoded = load_image(make_array())

    assert_rgb_array(decoded, 3, 5)
    np.testing.assert_array_equal(decoded[0, 0], expected_first_pixel)


def test_contiguous_rgb_ndarray_is_returned_without_copy() -> None:
    array = smooth_rgb()

    assert load_image(array) is array


def test_pil_image_input_is_not_modified() -> None:
    image = Image.new("RGBA", (4, 3), (1, 2, 3, 0))

    load_image(image)

    assert image.mode == "RGBA"
    assert image.getpixel((0, 0)) == (1, 2, 3, 0)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("photos/face.jpg", "photos/face.jpg"),
        (Path("photos") / "face.jpg", os.path.join("photos", "face.jpg")),
        (b"\x00" * 12345, "<bytes 12345>"),
        (bytearray(3), "<bytes 3>"),
        (memoryview(b"abcd"), "<bytes 4>"),
        (b"", "<bytes 0>"),
        (Image.new("RGB", (640, 480)), "<PIL.Image 640x480>"),
        (np.zeros((480, 640, 3), dtype=np.uint8), "<ndarray 480x640x3>"),
        (np.zeros((2, 3), dtype=np.uint8), "<ndarray 2x3>"),
    ],
    ids=lambda value: type(value).__name__,
)
def test_describe_source(source: ImageSource, expected: str) -> None:
    assert describe_source(source) == expected


def test_encode_jpeg_round_trips() -> None:
    original = skimage_data.astronaut()

    encoded = encode_jpeg(original)

    assert encoded[:2] == b"\xff\xd8"
    assert mean_abs_difference(load_image(encoded), original) < 4.0
    assert len(encode_jpeg(original, quality=30)) < len(encoded)


@pytest.mark.parametrize(
    ("array", "quality", "message_part"),
    [
        (np.zeros((4, 4), dtype=np.uint8), 90, "uint8 (H, W, 3)"),
        (np.zeros((4, 4, 4), dtype=np.uint8), 90, "uint8 (H, W, 3)"),
        (np.zeros((4, 4, 3), dtype=np.float32), 90, "uint8 (H, W, 3)"),
        (np.zeros((0, 4, 3), dtype=np.uint8), 90, "empty"),
        (np.zeros((4, 4, 3), dtype=np.uint8), 0, "quality"),
        (np.zeros((4, 4, 3), dtype=np.uint8), 101, "quality"),
    ],
)
def test_encode_jpeg_rejects_bad_input(
    array: npt.NDArray[np.uint8], quality: int, message_part: str
) -> None:
    with pytest.raises(ValueError, match=message_part.replace("(", r"\(").replace(")", r"\)")):
        encode_jpeg(array, quality=quality)


def test_default_pixel_limit_is_fifty_megapixels() -> None:
    assert DEFAULT_MAX_PIXELS == 50_000_000


@pytest.mark.parametrize(
    ("height", "width", "expected_wh"),
    [
        (1, 65_535, (65_500, 1)),
        (70_000, 1, (1, 65_500)),
        (2, 131_000, (65_500, 1)),
        (1, 65_500, (65_500, 1)),
    ],
)
def test_encode_jpeg_downscales_sides_jpeg_cannot_hold(
    height: int, width: int, expected_wh: tuple[int, int]
) -> None:
    strip = np.full((height, width, 3), 200, np.uint8)
    decoded = Image.open(io.BytesIO(encode_jpeg(strip)))
    assert decoded.format == "JPEG"
    assert decoded.size == expected_wh
    assert max(decoded.size) <= MAX_JPEG_SIDE


def test_libtiff_messages_go_to_logging_not_stderr(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """libtiff prints warnings and errors on file descriptor 2 by default (~420 lines for
    1,000 damaged compressed TIFFs in the fuzz run); they must come through logging."""
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).resize((96, 96)).save(
        buffer, format="TIFF", compression="tiff_adobe_deflate"
    )
    original = buffer.getvalue()
    caplog.set_level(logging.DEBUG, logger="agelens.imaging")
    for seed in range(30):
        rng = np.random.default_rng(seed)
        damaged = bytearray(original)
        for position in rng.integers(len(original) // 4, len(original), 16):
            damaged[int(position)] = int(rng.integers(256))
        with contextlib.suppress(ImageDecodeError):
            load_image(bytes(damaged))
    assert "ZIPDecode" not in capfd.readouterr().err
    assert any("libtiff: ZIPDecode" in record.getMessage() for record in caplog.records)


def _marked_jpeg(orientation: int, width: int = 203, height: int = 157) -> bytes:
    """A black JPEG with a white 16-px square at stored (120, 40), EXIF `orientation`."""
    stored = np.zeros((height, width, 3), np.uint8)
    stored[40:56, 120:136] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())


def _bright_centre(pixels: npt.NDArray[np.uint8]) -> tuple[float, float]:
    """The brightness-weighted centre of the bright pixels, in pixel-edge coordinates."""
    red = pixels[:, :, 0].astype(np.float64)
    ys, xs = np.nonzero(red > 64)
    weights = red[ys, xs]
    return (
        float(((xs + 0.5) * weights).sum() / weights.sum()),
        float(((ys + 0.5) * weights).sum() / weights.sum()),
    )


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_jpeg_maps_onto_the_full_upright_image(orientation: int, scale: int) -> None:
    data = _marked_jpeg(orientation)
    full = load_image(data)
    reduced = load_image_reduced(data, lambda _: scale)
    assert reduced.scale == scale
    assert reduced.full_wh == (full.shape[1], full.shape[0])
    assert reduced.pixels.dtype == np.uint8
    assert reduced.pixels.flags.c_contiguous
    # libjpeg rounds the reduced size up
    assert reduced.pixels.shape[:2] == tuple(-(-side // scale) for side in full.shape[:2])
    mapped = reduced.to_full(*_bright_centre(reduced.pixels))
    assert mapped == pytest.approx(_bright_centre(full), abs=0.25 * scale)
    assert reduced.from_full(*reduced.to_full(3.0, 7.0)) == pytest.approx((3.0, 7.0))


def test_reduced_decode_takes_the_largest_dct_scale_allowed_and_sees_the_full_size() -> None:
    data = _marked_jpeg(6, width=400, height=300)
    seen: list[tuple[int, int]] = []

    def allow_three(image_wh: tuple[int, int]) -> int:
        seen.append(image_wh)
        return 3

    reduced = load_image_reduced(data, allow_three)
    assert seen == [(300, 400)]  # upright: orientation 6 swaps the sides
    assert reduced.scale == 2
    assert load_image_reduced(data, lambda _: 0).scale == 1
    unreduced = load_image_reduced(data, lambda _: 1)
    assert unreduced.scale == 1
    np.testing.assert_array_equal(unreduced.pixels, load_image(data))


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "BMP"])
def test_reduced_decode_leaves_other_formats_whole(image_format: str) -> None:
    data = encode(Image.fromarray(smooth_rgb(96, 128)), image_format)
    reduced = load_image_reduced(data, lambda _: 8)
    assert (reduced.scale, reduced.offset_xy, reduced.full_wh) == (1, (0, 0), (128, 96))
    np.testing.assert_array_equal(reduced.pixels, load_image(data))


def test_reduced_decode_of_arrays_and_pil_images_is_whole() -> None:
    array = smooth_rgb(96, 128)
    assert load_image_reduced(array, lambda _: 8).pixels is array
    from_pil = load_image_reduced(Image.fromarray(array), lambda _: 8)
    assert from_pil.scale == 1
    np.testing.assert_array_equal(from_pil.pixels, array)


def test_reduced_decode_of_a_path_equals_its_bytes(tmp_path: Path) -> None:
    data = _marked_jpeg(3, width=320, height=240)
    path = tmp_path / "marked.jpg"
    path.write_bytes(data)
    from_path = load_image_reduced(path, lambda _: 4)
    from_bytes = load_image_reduced(memoryview(data), lambda _: 4)
    assert (from_path.scale, from_path.offset_xy) == (from_bytes.scale, from_bytes.offset_xy)
    np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)


def test_reduced_decode_checks_limits_on_the_full_size(tmp_path: Path) -> None:
    data = _marked_jpeg(1, width=400, height=300)
    with pytest.raises(ImageTooLargeError, match="400x300"):
        load_image_reduced(data, lambda _: 8, max_pixels=400 * 300 - 1)
    with pytest.raises(ImageTooLargeError, match="bytes"):
        load_image_reduced(data, lambda _: 8, max_bytes=len(data) - 1)
    path = tmp_path / "marked.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageTooLargeError, match="bytes"):
        load_image_reduced(path, lambda _: 8, max_bytes=len(data) - 1)
    with pytest.raises(ValueError, match="positive"):
        load_image_reduced(data, lambda _: 8, max_pixels=0)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 64],
    ids=["empty", "text", "jpeg-header-only"],
)
def test_reduced_decode_of_bad_data_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        load_image_reduced(data, lambda _: 8)


def test_reduced_decode_of_a_truncated_jpeg_is_a_typed_error() -> None:
    data = encode(Image.fromarray(smooth_rgb(480, 640)), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image_reduced(data[: len(data) // 2], lambda _: 4)
