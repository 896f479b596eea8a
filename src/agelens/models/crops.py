"""Cutting face chips out of images."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray


def crop_resized(
    image: NDArray[np.uint8], box_xyxy: Sequence[float] | NDArray[np.float32], size: int
) -> NDArray[np.uint8]:
    """The box's pixels resized to `size` x `size`; parts outside the image are black.

    Black, not replicated edges, because that is how face-api pads its inputs to a square.
    Shrinking uses area averaging so a large face does not alias into the small chip.
    """
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (round(float(v)) for v in box_xyxy)
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    region = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if sx2 > sx1 and sy2 > sy1:
        region[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    shrinking = region.shape[0] > size or region.shape[1] > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(region, (size, size), interpolation=interpolation), np.uint8)
