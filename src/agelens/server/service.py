"""`Service`: what every route of the app shares (settings, model pool, micro-batcher, URL
fetcher, limits, metrics), built once by `create_app`, and how a request's image is taken in.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import anyio

from agelens import intake
from agelens.imaging import DecodedImage, encode_jpeg
from agelens.models.base import RGBImage
from agelens.render import draw_result
from agelens.server.engine import AnalysisOptions, MicroBatcher, ModelPool
from agelens.server.errors import InvalidRequestError, NotReadyError, TimeoutApiError
from agelens.server.examples import open_examples
from agelens.server.memory import DecodedMemory
from agelens.server.metrics import Metrics
from agelens.server.schemas import AnalyzeOptions
from agelens.server.security import RateLimiter
from agelens.server.settings import Settings
from agelens.types import ImageResult
from agelens.urlfetch import UrlFetcher

__all__ = ["Service"]


class Service:
    """Everything a request needs, built once per app: settings, models, batcher, limits."""

    def __init__(self, settings: Settings, pool: ModelPool) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = Metrics()
        self.batcher = MicroBatcher(
            pool.run,
            window_ms=settings.batch_window_ms,
            max_images=settings.batch_max_images,
            queue_size=settings.queue_size,
            workers=settings.inference_workers,
            metrics=self.metrics,
        )
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        self.fetcher = UrlFetcher(
            max_bytes=settings.url_max_bytes,
            timeout_seconds=settings.url_timeout_seconds,
            max_redirects=settings.url_max_redirects,
            allow_networks=settings.url_allow_networks,
        )
        self.key_digests = settings.key_digests()
        # Decoding a large photo takes ~3 bytes a pixel: bound how many decode at once.
        self.decode_limiter = anyio.CapacityLimiter(max(2, settings.inference_workers * 2))
        self.decoded_memory = DecodedMemory(settings.max_decoded_bytes)
        self.startup_error: str | None = None
        self.examples = open_examples(settings.examples_dir)

    # ------------------------------------------------------------------ image intake

    async def fetch_url(self, url: str) -> bytes:
        """The bytes behind a URL, with every SSRF check (or UrlForbiddenError/UrlFetchError)."""
        if not self.settings.url_fetch_enabled:
            raise InvalidRequestError("URL input is turned off on this server")
        return await intake.fetch_url(self.fetcher, url)

    async def decode(
        self, data: bytes, label: str, options: AnalysisOptions | None = None
    ) -> DecodedImage:
        """The image decoded on a worker thread, within the limits and the decoded-memory
        budget (agelens.intake.decode_for_analysis).

        With `options`, a large JPEG is decoded at the reduced size their detector needs, as
        `agelens analyze` and `Analyzer.analyze` decode it (and decoded again, larger, when a
        face in it is too small to cut a sharp chip from); without, whole: an image that is
        drawn on or sent back must be whole.
        """
        limits = intake.IntakeOptions(
            max_pixels=self.settings.max_pixels, max_bytes=self.settings.max_body_bytes
        )

        def work() -> DecodedImage:
            max_scale = self.pool.max_decode_scale(options) if options is not None else None
            return intake.decode_for_analysis(
                data, label, limits, max_scale, budget=self.decoded_memory
            )

        return await anyio.to_thread.run_sync(work, limiter=self.decode_limiter)

    def options(self, given: AnalyzeOptions) -> AnalysisOptions:
        """Engine options with the server defaults filled in (names checked)."""
        options = AnalysisOptions(
            detector=given.detector or self.settings.detector,
            estimator=given.estimator or self.settings.estimator,
            min_face=given.min_face,
            max_faces=given.max_faces,
        )
        self.pool.check_names(options.detector, options.estimator)
        return options

    async def analyze(
        self,
        data: bytes,
        label: str,
        options: AnalysisOptions,
        *,
        return_image: bool,
    ) -> dict[str, Any]:
        """Decode, analyse (micro-batched) and optionally draw one image: the response dict.
        A large JPEG is decoded reduced unless it is drawn on (`decode`)."""
        decoded = await self.decode(data, label, None if return_image else options)
        # `analyze_decoded` names the source and counts decoding (again, too) in the timings.
        result = await self.infer(options, decoded)
        body = result.to_dict()
        if return_image:
            body["image_jpeg_base64"] = await self.annotated_jpeg_base64(
                decoded.image.pixels, result
            )
        return body

    async def infer(self, options: AnalysisOptions, image: DecodedImage) -> ImageResult:
        """The micro-batched inference with the request timeout."""
        if not self.pool.ready:
            raise NotReadyError(self.startup_error or "the models are still loading")
        try:
            result = await asyncio.wait_for(
                self.batcher.submit(options, image), self.settings.request_timeout_seconds
            )
        except TimeoutError as error:
            raise TimeoutApiError(
                f"the analysis took longer than {self.settings.request_timeout_seconds:g} s"
            ) from error
        self.metrics.images.inc()
        self.metrics.faces.inc(len(result.faces))
        return result

    async def annotated_jpeg_base64(self, image: RGBImage, result: ImageResult) -> str:
        """The image with boxes and labels, as base64 JPEG (drawn on a worker thread)."""

        def work() -> str:
            return base64.b64encode(encode_jpeg(draw_result(image, result), quality=88)).decode()

        return await anyio.to_thread.run_sync(work, limiter=self.decode_limiter)

    async def plain_jpeg_base64(self, image: RGBImage) -> str:
        """The image as it was analysed (upright), as base64 JPEG, nothing drawn on it."""

        def work() -> str:
            return base64.b64encode(encode_jpeg(image, quality=88)).decode()

        return await anyio.to_thread.run_sync(work, limiter=self.decode_limiter)


async def _image_from_json(
    service: Service,
    image_base64: str | None,
    image_url: str | None,
    *,
    names: tuple[str, str] = ("image_base64", "image_url"),
) -> tuple[bytes, str]:
    if (image_base64 is None) == (image_url is None):
        raise InvalidRequestError(f"send exactly one of {names[0]} and {names[1]}")
    if image_base64 is not None:
        return intake.decode_base64(image_base64), "<base64>"
    assert image_url is not None
    return await service.fetch_url(image_url), image_url
