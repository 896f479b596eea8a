"""What the bots call to analyse an image: the library in this process, or a running agelens
service through the client. Both answer with the ImageResult and the annotated image as JPEG."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agelens.types import Face, ImageResult

if TYPE_CHECKING:
    from agelens.client import AsyncClient, Client
    from agelens.pipeline import Analyzer


@dataclass(frozen=True, slots=True)
class Analysis:
    """One analysed image: the faces, and the image with boxes and labels as JPEG."""

    result: ImageResult
    annotated_jpeg: bytes


class ImageAnalysis(Protocol):
    """Analyses one encoded image (the bytes of a JPEG, PNG, ... file).

    Raises agelens.errors.ImageDecodeError (in-process) or agelens.client.ImageDecodeError
    (remote) for bytes that are not a usable image.
    """

    description: str

    def analyze(self, data: bytes) -> Analysis:
        """Blocking analysis."""
        ...

    async def analyze_async(self, data: bytes) -> Analysis:
        """The same, without blocking the event loop."""
        ...

    async def aclose(self) -> None:
        """Release connections (on the event loop that used them)."""
        ...


class LibraryAnalysis:
    """The library in this process (models loaded once, in the constructor)."""

    def __init__(self, analyzer: Analyzer, *, max_pixels: int | None = None) -> None:
        self.analyzer = analyzer
        self.max_pixels = max_pixels or analyzer.max_pixels
        self.description = f"in-process ({analyzer.models['estimator']})"
        # An Analyzer's calls are not meant to overlap; chats arrive concurrently.
        self._lock = threading.Lock()

    def analyze(self, data: bytes) -> Analysis:
        from agelens.imaging import encode_jpeg
        from agelens.intake import IntakeOptions, decode_image
        from agelens.render import draw_result

        image = decode_image(data, "<photo>", IntakeOptions(max_pixels=self.max_pixels))
        with self._lock:
            (result,) = self.analyzer.analyze_arrays([image])
        return Analysis(result, encode_jpeg(draw_result(image, result), quality=88))

    async def analyze_async(self, data: bytes) -> Analysis:
        return await asyncio.to_thread(self.analyze, data)

    async def aclose(self) -> None:
        """Nothing to release: the models stay loaded for the next use."""


class ServiceAnalysis:
    """A running agelens service (`agelens serve`, the container, Lambda) through the client.
    The clients are made on first use; `close` / `aclose` release them."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.description = f"the agelens service at {base_url}"
        self._client: Client | None = None
        self._async_client: AsyncClient | None = None

    @classmethod
    def connect(cls, base_url: str, api_key: str | None = None) -> ServiceAnalysis:
        """The analysis on the service at `base_url` (an API key if it needs one)."""
        from agelens.errors import require_extra

        require_extra("httpx", "client")
        return cls(base_url, api_key)

    def analyze(self, data: bytes) -> Analysis:
        if self._client is None:
            from agelens.client import Client

            self._client = Client(self.base_url, self.api_key)
        result, jpeg = self._client.analyze(data, return_image=True)
        return Analysis(result, jpeg)

    async def analyze_async(self, data: bytes) -> Analysis:
        if self._async_client is None:
            from agelens.client import AsyncClient

            self._async_client = AsyncClient(self.base_url, self.api_key)
        result, jpeg = await self._async_client.analyze(data, return_image=True)
        return Analysis(result, jpeg)

    def close(self) -> None:
        """Close the blocking client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close both clients' connections."""
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = None
        self.close()


def face_label(face: Face) -> str:
    """One face as people read it: `F 27 (21-34)`: gender, age, and the 80% age interval."""
    low, high = face.age_interval
    return f"{face.gender} {face.age_years:.0f} ({low:.0f}-{high:.0f})"
