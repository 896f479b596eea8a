"""Drawing boxes and "F 34 (29–41)" labels on an image."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from agelens.types import BoxXYXY, Face, ImageResult

_COLOURS = {"F": (236, 72, 153), "M": (59, 130, 246)}


def face_label(face: Face, dash: str = "–") -> str:
    """The short label for a face, e.g. "F 34 (29–41)"."""
    low, high = face.age_interval
    return f"{face.gender} {face.age_years:.0f} ({low:.0f}{dash}{high:.0f})"


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


#: Colour of a box whose gender is not known yet (a video track before its first estimate).
UNKNOWN_COLOUR = (120, 120, 120)


def gender_colour(gender: str | None) -> tuple[int, int, int]:
    """The box colour of a gender ("F", "M"), grey when unknown."""
    return _COLOURS.get(gender or "", UNKNOWN_COLOUR)


def draw_result(image: NDArray[np.uint8], result: ImageResult) -> NDArray[np.uint8]:
    """A copy of the RGB image with each face's box and label drawn on it.

    Line width and text size follow the image size (and the face size), so labels stay legible
    on 200-px thumbnails and 6000-px photos alike.
    """
    # Pillow's built-in font has no en dash; a hyphen reads the same on an image.
    return draw_labelled_boxes(
        image,
        [(f.box_xyxy, face_label(f, dash="-"), _COLOURS[f.gender]) for f in result.faces],
    )


def draw_labelled_boxes(
    image: NDArray[np.uint8],
    boxes: Sequence[tuple[BoxXYXY, str, tuple[int, int, int]]],
) -> NDArray[np.uint8]:
    """A copy of the RGB image with each (box, label, colour) drawn: the box outlined, the
    label on a filled tag above it (inside its top edge when there is no room above)."""
    canvas = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    base = max(width, height)
    line = max(1, round(base / 400))
    for (x1, y1, x2, y2), label, colour in boxes:
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        face_side = max(x2 - x1, 1.0)
        text_size = int(np.clip(max(base / 45, face_side / 5), 11, base / 12 + 11))
        font = _font(text_size)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_w, text_h = right - left, bottom - top
        pad = max(2, text_size // 6)
        box_h = text_h + 2 * pad
        y_top = y1 - box_h if y1 - box_h >= 0 else y1
        x_left = min(max(0.0, x1), max(0.0, width - text_w - 2 * pad))
        draw.rectangle((x_left, y_top, x_left + text_w + 2 * pad, y_top + box_h), fill=colour)
        draw.text((x_left + pad - left, y_top + pad - top), label, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)
