"""A seeded generator of malformed and unusual images, made from real photos.

`malformed_images(seed, count, photos)` yields `Case`s cycling through the kinds in `KINDS`:
truncations, byte flips, header damage, huge declared sizes, decompression bombs, odd pixel
modes, EXIF garbage, animations, 1 x N strips, and plain garbage. The same seed gives the same
bytes, so a failing case can be named by (seed, index) and replayed. Used by
tests/fuzz/test_fuzz.py (a few hundred cases in CI) and benchmarks/bench_fuzz.py (>= 10,000).
"""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

Photo = NDArray[np.uint8]

_SAVE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")


@dataclass(frozen=True, slots=True)
class Case:
    """One input: which kind of damage, a short description, and the bytes."""

    index: int
    kind: str
    detail: str
    data: bytes


def load_photos(folder: Path | None, *, side: int = 128, limit: int = 8) -> list[Photo]:
    """Real photos to damage: skimage's astronaut, plus up to `limit` photos of `folder`
    (when it exists), each shrunk so its long side is at most `side` pixels."""
    import skimage.data

    images = [Image.fromarray(np.ascontiguousarray(skimage.data.astronaut()))]
    if folder is not None and folder.is_dir():
        for path in sorted(folder.iterdir())[:limit]:
            if path.suffix.lower() in {".jpg", ".jpeg", ".png"}:
                with Image.open(path) as opened:
                    images.append(opened.convert("RGB"))
    photos = []
    for image in images:
        image.thumbnail((side, side))
        photos.append(np.asarray(image.convert("RGB")))
    return photos


def _encode(photo: Photo | Image.Image, image_format: str, **options: object) -> bytes:
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(photo)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # e.g. Pillow deprecating some mode/format pairs
        warnings.simplefilter("ignore")
        image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _png_declaring(width: int, height: int, rows: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def _truncated(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    image_format = rng.choice(_SAVE_FORMATS)
    data = _encode(photo, image_format)
    cut = rng.randrange(0, len(data))
    return f"{image_format} cut at {cut}/{len(data)}", data[:cut]


def _byte_flips(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    image_format = rng.choice(_SAVE_FORMATS)
    data = bytearray(_encode(photo, image_format))
    flips = rng.choice((1, 4, 32, 256))
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return f"{image_format} with {flips} random bytes", bytes(data)


def _header_damage(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    image_format = rng.choice(_SAVE_FORMATS)
    data = bytearray(_encode(photo, image_format))
    start = rng.randrange(0, min(64, len(data)))
    length = rng.randrange(1, 16)
    data[start : start + length] = bytes(rng.randrange(256) for _ in range(length))
    return f"{image_format} header bytes {start}..{start + length} overwritten", bytes(data)


def _huge_declared(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    width, height = rng.choice(
        ((2**31 - 1, 2**31 - 1), (1_000_000, 1_000_000), (2, 24_999_999), (65_535, 65_535))
    )
    which = rng.choice(("png", "gif", "bmp", "jpeg"))
    if which == "png":
        return f"PNG declaring {width}x{height}", _png_declaring(width, height)
    if which == "gif":
        data = bytearray(_encode(photo, "GIF"))
        data[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
        return f"GIF screen declaring {min(width, 65535)}x{min(height, 65535)}", bytes(data)
    if which == "bmp":
        data = bytearray(_encode(photo, "BMP"))
        data[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
        return f"BMP declaring {width}x{height}", bytes(data)
    data = bytearray(_encode(photo, "JPEG"))
    marker = data.find(b"\xff\xc0")
    if marker >= 0:
        data[marker + 5 : marker + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
    return f"JPEG SOF declaring {min(width, 65535)}x{min(height, 65535)}", bytes(data)


def _bomb(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    side = rng.choice((8_000, 12_000, 20_000))
    row = b"\x00" + bytes(side * 3)
    # Declares side x side pixels (hundreds of MB decoded) in a few hundred KB of zeros; only
    # the first rows are present, the rest of the stream is missing.
    rows = row * rng.choice((1, 16, 64))
    return f"PNG bomb {side}x{side}", _png_declaring(side, side, rows)


def _odd_mode(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    image = Image.fromarray(photo)
    mode = rng.choice(("1", "L", "LA", "P", "PA", "I", "I;16", "F", "CMYK", "RGBA", "YCbCr", "LAB"))
    if mode == "PA":
        converted = image.convert("P").convert("PA")
    elif mode == "I;16":
        converted = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    else:
        converted = image.convert(mode)
    for image_format in rng.sample(("TIFF", "PNG", "JPEG", "WEBP", "BMP", "GIF"), 6):
        try:
            return f"{mode} saved as {image_format}", _encode(converted, image_format)
        except (OSError, ValueError, KeyError):
            continue
    return f"{mode} saved as TIFF (raw)", _encode(converted.convert("L"), "TIFF")


def _exif_garbage(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    exif = Image.Exif()
    choice = rng.choice(("orientation", "random", "huge-tag"))
    if choice == "orientation":
        exif[0x0112] = rng.choice((0, 9, 255, 65535))
        data = _encode(photo, "JPEG", exif=exif)
        return f"JPEG with EXIF orientation {exif[0x0112]}", data
    data = bytearray(_encode(photo, "JPEG", exif=exif.tobytes() if choice == "huge-tag" else b""))
    garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 2000)))
    segment = b"\xff\xe1" + struct.pack(">H", len(garbage) + 8) + b"Exif\x00\x00" + garbage
    return f"JPEG with {len(garbage)} bytes of EXIF garbage", bytes(data[:2] + segment + data[2:])


def _animated(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    small = np.ascontiguousarray(photo[:96, :96])
    frames = [Image.fromarray(np.roll(small, shift, axis=1)) for shift in (0, 7, 19)]
    image_format = rng.choice(("GIF", "WEBP", "PNG"))
    data = _encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=50)
    return f"animated {image_format}, 3 frames", data


def _strip(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    length = rng.choice((1, 2, 3, 17, 4_000, 65_535, 70_000))
    vertical = rng.random() < 0.5
    size = (1, length) if vertical else (length, 1)
    image_format = rng.choice(("PNG", "GIF", "BMP", "TIFF"))
    if image_format == "GIF" and length > 65_535:  # GIF sides are 16-bit
        image_format = "PNG"
    image = Image.new("RGB", size, tuple(int(v) for v in photo[0, 0]))
    return f"{image_format} strip {size[0]}x{size[1]}", _encode(image, image_format)


def _garbage(rng: random.Random, photo: Photo) -> tuple[str, bytes]:
    magic = rng.choice(
        (b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP")
    )
    magic += b"II*\x00" if rng.random() < 0.1 else b""
    tail = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 16, 512))))
    return f"{len(magic)} magic bytes + {len(tail)} random", magic + tail


KINDS: dict[str, Callable[[random.Random, Photo], tuple[str, bytes]]] = {
    "truncated": _truncated,
    "byte_flips": _byte_flips,
    "header_damage": _header_damage,
    "huge_declared": _huge_declared,
    "bomb": _bomb,
    "odd_mode": _odd_mode,
    "exif_garbage": _exif_garbage,
    "animated": _animated,
    "strip": _strip,
    "garbage": _garbage,
}


def malformed_images(seed: int, count: int, photos: Sequence[Photo]) -> Iterator[Case]:
    """`count` cases, the kinds in turn, each from a photo and a generator seeded by
    (seed, index): case i is the same whatever `count` is."""
    kinds = list(KINDS.items())
    for index in range(count):
        kind, make = kinds[index % len(kinds)]
        rng = random.Random(seed * 1_000_003 + index)
        detail, data = make(rng, photos[rng.randrange(len(photos))])
        yield Case(index, kind, detail, data)
