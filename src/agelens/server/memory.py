"""A global budget for the memory decoded images hold in the service.

The pixel limit (`AGELENS_MAX_PIXELS`) bounds one image, and admission control bounds how many
requests are in flight, but their product is large: sixteen 50-megapixel images hold about
2.4 GB once decoded. `DecodedMemory` counts the bytes every decoded image holds (read from the
header before decoding, as width x height x 4: the RGB array plus what decoding needs beside
it) against one budget (`AGELENS_MAX_DECODED_BYTES`). A reservation lasts as long as the
decoded array: it is returned when the array is freed (`weakref.finalize`), whichever request,
batch or drawing still holds it. An image that does not fit now is refused with 503 `overloaded`
and Retry-After; one larger than the whole budget with 413 `image_too_large`.

`agelens.intake.decode_image(..., budget=...)` reserves from it (the header read and the
bytes per pixel are the intake's, `header_pixels` and `BYTES_PER_PIXEL`).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from agelens.errors import ImageTooLargeError
from agelens.intake import BYTES_PER_PIXEL, header_pixels
from agelens.server.errors import OverloadedError

__all__ = ["BYTES_PER_PIXEL", "DecodedMemory", "header_pixels"]


class DecodedMemory:
    """Bytes reserved by decoded images, against `budget_bytes` (thread-safe)."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        """Bytes reserved now."""
        with self._lock:
            return self._used

    def reserve(self, nbytes: int, label: str) -> None:
        """Take `nbytes` from the budget, or raise: ImageTooLargeError (413) when they exceed
        the whole budget, OverloadedError (503, retry) when they do not fit now."""
        if nbytes > self.budget_bytes:
            raise ImageTooLargeError(
                f"{label}: decoded it would take {nbytes / 2**20:.0f} MiB, more than the "
                f"{self.budget_bytes / 2**20:.0f} MiB this server allows for all images at once "
                "(AGELENS_MAX_DECODED_BYTES)"
            )
        with self._lock:
            if self._used + nbytes > self.budget_bytes:
                raise OverloadedError(
                    "the server is holding as many decoded images as its memory budget "
                    "allows; retry shortly",
                    headers={"Retry-After": "1"},
                )
            self._used += nbytes

    def release(self, nbytes: int) -> None:
        """Give `nbytes` back."""
        with self._lock:
            self._used = max(0, self._used - nbytes)

    def hold_while_alive(self, owner: Any, nbytes: int) -> None:
        """Release `nbytes` when `owner` (the decoded array) is freed."""
        weakref.finalize(owner, self.release, nbytes)
