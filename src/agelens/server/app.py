"""`create_app(settings)`: the FastAPI application of `agelens serve`.

Thin by design: requests are parsed and checked here, decoding and drawing run on worker
threads, and inference goes through the shared micro-batcher (see engine.py). Models load in
the lifespan, never at import.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from agelens import intake
from agelens.errors import AgelensError
from agelens.imaging import encode_jpeg, encode_png
from agelens.models.base import RGBImage
from agelens.render import draw_result
from agelens.server.api_docs import install_api_docs
from agelens.server.engine import AnalysisOptions, MicroBatcher, ModelPool
from agelens.server.errors import (
    ApiError,
    InternalServerError,
    InvalidRequestError,
    NotReadyError,
    OverloadedError,
    TimeoutApiError,
    UnsupportedMediaTypeError,
    error_body,
    status_of,
    validated,
    validation_message,
)
from agelens.server.examples import is_example_name, open_examples
from agelens.server.examples import media_type as example_media_type
from agelens.server.jobs import JobManager
from agelens.server.jobs_api import router as jobs_router
from agelens.server.live import router as live_router
from agelens.server.memory import DecodedMemory
from agelens.server.metrics import CONTENT_TYPE_LATEST, Metrics
from agelens.server.schemas import (
    AnalyzeJson,
    AnalyzeOptions,
    BatchItemOut,
    BatchJson,
    BatchOut,
    ErrorDetail,
    ErrorOut,
    FaceOut,
    ImageResultOut,
    LambdaImageIn,
    LambdaResultOut,
    ModelOut,
    ModelsOut,
    PredictIn,
    PredictOut,
)
from agelens.server.security import (
    AdmissionMiddleware,
    ASGIApp,
    BodyLimitMiddleware,
    FailedAuthLimitMiddleware,
    Message,
    RateLimiter,
    Receive,
    Scope,
    Send,
    authenticate,
    parse_multipart,
    send_error,
)
from agelens.server.settings import Settings
from agelens.types import ImageResult
from agelens.urlfetch import UrlFetcher

logger = logging.getLogger(__name__)

#: `/predict`'s `face_detector` values. "fast" is the range-switching BlazeFace: it finds the
#: same faces as the tiled full-range model on every photo of ../shared/data/samples
#: (tests/server/test_app_predict.py), where the short-range model alone takes torsos for faces.
PREDICT_DETECTORS = {"fast": "blazeface-fast", "accurate": "blazeface-full"}
_PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


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

    async def decode(self, data: bytes, label: str) -> tuple[RGBImage, float]:
        """Decoded RGB array and decode milliseconds, on a worker thread, within the limits
        and the decoded-memory budget (agelens.intake.decode_image)."""
        limits = intake.IntakeOptions(
            max_pixels=self.settings.max_pixels, max_bytes=self.settings.max_body_bytes
        )

        def work() -> tuple[RGBImage, float]:
            start = time.perf_counter()
            image = intake.decode_image(data, label, limits, budget=self.decoded_memory)
            return image, (time.perf_counter() - start) * 1000

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
        """Decode, analyse (micro-batched) and optionally draw one image: the response dict."""
        image, decode_ms = await self.decode(data, label)
        result = await self.infer(options, image)
        result = replace(
            result, source=label, timings_ms={"decode": decode_ms, **result.timings_ms}
        )
        body = result.to_dict()
        if return_image:
            body["image_jpeg_base64"] = await self.annotated_jpeg_base64(image, result)
        return body

    async def infer(self, options: AnalysisOptions, image: RGBImage) -> ImageResult:
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


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(_service)]


def _require_key(request: Request, service: ServiceDep) -> str:
    identity = authenticate(request, service.key_digests)
    service.limiter.check(identity)
    return identity


def _require_key_or_basic(request: Request, service: ServiceDep) -> str:
    identity = authenticate(
        request,
        service.key_digests,
        allow_basic=True,
        basic_username=service.settings.basic_auth_username,
    )
    service.limiter.check(identity)
    return identity


Authorized = Annotated[str, Depends(_require_key)]
AuthorizedCompat = Annotated[str, Depends(_require_key_or_basic)]

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 408, 413, 415, 422, 429, 503, 504)
}
_IMAGE_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "detector": {"type": "string"},
                        "estimator": {"type": "string"},
                        "min_face": {"type": "number"},
                        "max_faces": {"type": "integer"},
                        "return_image": {"type": "boolean"},
                    },
                    "required": ["image"],
                }
            },
            "application/json": {"schema": AnalyzeJson.model_json_schema()},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_BATCH_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                    },
                    "required": ["images"],
                }
            },
            "application/json": {"schema": BatchJson.model_json_schema()},
        },
    }
}


def _decode_base64(text: str) -> bytes:
    return intake.decode_base64(text)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


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
        return _decode_base64(image_base64), "<base64>"
    assert image_url is not None
    return await service.fetch_url(image_url), image_url


def create_app(settings: Settings | None = None, *, pool: ModelPool | None = None) -> FastAPI:
    """The service. `pool` may be given (tests share one across apps); by default one is built
    from `settings` and its default models load in the lifespan."""
    settings = settings or Settings()
    pool = pool or ModelPool(
        settings.detector,
        settings.estimator,
        threads=settings.threads,
        max_pixels=settings.max_pixels,
    )
    service = Service(settings, pool)
    jobs = JobManager(
        settings, pool, service.fetcher, key_digests=service.key_digests, limiter=service.limiter
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not pool.ready:
            try:
                await anyio.to_thread.run_sync(pool.load_defaults)
            except AgelensError as error:
                service.startup_error = str(error)
                logger.error("models could not be loaded: %s", error)
        await service.batcher.start()
        await jobs.start()
        logger.info("agelens service ready (models: %s)", pool.loaded())
        try:
            yield
        finally:
            await jobs.stop()
            await service.batcher.stop()

    app = FastAPI(
        title="agelens",
        summary="Apparent age and gender of every face in a photo.",
        version=_version(),
        lifespan=lifespan,
        responses=_ERROR_RESPONSES,
        docs_url=None,  # served offline by install_api_docs
        redoc_url=None,
    )
    app.state.service = service
    app.state.jobs = jobs
    _install_error_handlers(app, service)
    app.add_middleware(_ContainUnexpectedErrors, metrics=service.metrics)
    app.add_middleware(
        AdmissionMiddleware,
        max_requests=settings.max_requests_in_flight,
        body_timeout_seconds=settings.body_timeout_seconds,
        on_refused=service.metrics.errors.labels(OverloadedError.code).inc,
    )
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(
        FailedAuthLimitMiddleware,
        per_minute=settings.auth_failures_per_minute,
        exempt_paths=frozenset({"/health", "/ready", "/healthz"}),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.post(
        "/v1/analyze",
        response_model=ImageResultOut,
        response_model_exclude_none=True,
        openapi_extra=_IMAGE_BODY_DOC,
        tags=["analyze"],
    )
    async def analyze(request: Request, service: ServiceDep, _key: Authorized) -> dict[str, Any]:
        """Every face of one image: a multipart upload (field `image`), a JSON body with
        `image_base64` or `image_url`, or the raw image bytes (`Content-Type: image/...`).
        Options come as JSON fields, form fields or query parameters."""
        media_type = _media_type(request)
        query = dict(request.query_params)
        body = await request.body()
        if media_type == "multipart/form-data":
            fields, files = parse_multipart(body, request.headers["content-type"])
            uploads = [f for f in files if f.field_name == "image"] or files
            if len(uploads) != 1:
                raise InvalidRequestError("send one file in the form field `image`")
            given = validated(AnalyzeOptions, {**query, **fields})
            data, label = uploads[0].data, uploads[0].filename or "<upload>"
        elif media_type == "application/json":
            request_json = validated(AnalyzeJson, body)
            given = validated(
                AnalyzeOptions,
                {
                    **query,
                    **request_json.model_dump(
                        exclude={"image_base64", "image_url"}, exclude_unset=True
                    ),
                },
            )
            data, label = await _image_from_json(
                service, request_json.image_base64, request_json.image_url
            )
        elif media_type.startswith("image/") or media_type == "application/octet-stream":
            given = validated(AnalyzeOptions, query)
            data, label = body, "<upload>"
        else:
            raise UnsupportedMediaTypeError(
                f"unsupported content type {media_type or '(none)'}; send multipart/form-data, "
                "application/json or the image itself (image/jpeg, image/png, ...)"
            )
        return await service.analyze(
            data, label, service.options(given), return_image=given.return_image
        )

    @app.post(
        "/v1/analyze/batch",
        response_model=BatchOut,
        response_model_exclude_none=True,
        openapi_extra=_BATCH_BODY_DOC,
        tags=["analyze"],
    )
    async def analyze_batch(request: Request, service: ServiceDep, _key: Authorized) -> BatchOut:
        """Several images in one request: multipart files (field `images`) or JSON
        `{"images": [{"image_base64"|"image_url": ...}, ...]}`. One result or one error per
        image, in request order; one bad image does not fail the others."""
        media_type = _media_type(request)
        query = dict(request.query_params)
        body = await request.body()
        sources: list[Callable[[], Awaitable[tuple[bytes, str]]]] = []
        if media_type == "multipart/form-data":
            fields, files = parse_multipart(
                body,
                request.headers["content-type"],
                max_parts=service.settings.max_batch_images + 8,
            )
            given = validated(AnalyzeOptions, {**query, **fields})
            for upload in files:
                sources.append(_constant_source(upload.data, upload.filename or "<upload>"))
        elif media_type == "application/json":
            batch = validated(BatchJson, body)
            given = validated(
                AnalyzeOptions,
                {**query, **batch.model_dump(exclude={"images"}, exclude_unset=True)},
            )
            for item in batch.images:
                sources.append(_json_source(service, item.image_base64, item.image_url))
        else:
            raise UnsupportedMediaTypeError(
                f"unsupported content type {media_type or '(none)'}; send multipart/form-data "
                "or application/json"
            )
        if not sources:
            raise InvalidRequestError("the batch holds no image")
        if len(sources) > service.settings.max_batch_images:
            raise InvalidRequestError(
                f"{len(sources)} images in one batch, over the limit of "
                f"{service.settings.max_batch_images}"
            )
        options = service.options(given)

        async def one(
            index: int, source: Callable[[], Awaitable[tuple[bytes, str]]]
        ) -> BatchItemOut:
            try:
                data, label = await source()
                result = await service.analyze(
                    data, label, options, return_image=given.return_image
                )
            except AgelensError as error:
                service.metrics.errors.labels(error.code).inc()
                return BatchItemOut(
                    index=index, error=ErrorDetail(code=error.code, message=str(error))
                )
            except Exception:  # one image's failure never fails the batch
                logger.exception("unexpected error on image %d of a batch", index)
                service.metrics.errors.labels("internal_error").inc()
                return BatchItemOut(
                    index=index,
                    error=ErrorDetail(
                        code="internal_error",
                        message="an unexpected error happened; it has been logged",
                    ),
                )
            return BatchItemOut(index=index, result=ImageResultOut.model_validate(result))

        items = await asyncio.gather(*(one(i, s) for i, s in enumerate(sources)))
        return BatchOut(results=list(items))

    @app.get("/v1/models", response_model=ModelsOut, tags=["service"])
    async def models(service: ServiceDep, _key: Authorized) -> ModelsOut:
        """The registered detectors and estimators, the defaults, and what is loaded."""
        from agelens.models.backends import DETECTORS, estimator_names
        from agelens.models.fetch import is_fetched
        from agelens.models.registry import MODELS

        return ModelsOut(
            default_detector=service.settings.detector,
            default_estimator=service.settings.estimator,
            detectors=sorted(DETECTORS),
            estimators=estimator_names(),
            loaded=service.pool.loaded(),
            models=[
                ModelOut(
                    name=spec.name,
                    task=spec.task,
                    source=f"{spec.source.registry}:{spec.source.pinned}",
                    license=spec.license,
                    fetched=is_fetched(spec),
                )
                for spec in MODELS.values()
            ],
        )

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers. No authentication."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], responses={503: {"model": ErrorOut}})
    async def ready(service: ServiceDep) -> dict[str, Any]:
        """Readiness: the default models are loaded. No authentication."""
        if not service.pool.ready:
            raise NotReadyError(service.startup_error or "the models are still loading")
        return {"status": "ready", "loaded": service.pool.loaded()}

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics(service: ServiceDep, _key: Authorized) -> Response:
        """Prometheus metrics (authenticated when keys are configured)."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/predict", response_model=PredictOut, response_model_exclude_none=True, tags=["compat"]
    )
    async def predict(body: PredictIn, service: ServiceDep, _key: AuthorizedCompat) -> PredictOut:
        """Drop-in for the Dockerised TF container: same request and response shapes and types.
        Faces are `[x1, y1, x2, y2, w, h, confidence, age, gender]` (integer pixels and age,
        gender "M" or "F"); `confidence` and `nms` are the detector's own thresholds."""
        start = time.perf_counter()
        data, label = await _image_from_json(service, body.b64, body.url, names=("b64", "url"))
        image, _ = await service.decode(data, label)
        detector = PREDICT_DETECTORS[body.face_detector]
        options = replace(
            service.options(AnalyzeOptions(detector=detector)),
            score_threshold=body.confidence,
            iou_threshold=body.nms,
        )
        result = await service.infer(options, image)
        faces: list[list[int | float | str | None]] = []
        for face in result.faces:
            x1, y1, x2, y2 = (round(v) for v in face.box_xyxy)
            row: list[int | float | str | None] = [x1, y1, x2, y2, x2 - x1, y2 - y1]
            row.append(round(face.detection_score, 4))
            if body.get_attributes:
                row += [round(face.age_years), face.gender]
            else:
                row += [None, None]
            faces.append(row)
        image_b64 = None
        if body.return_image and body.draw:
            image_b64 = await service.annotated_jpeg_base64(image, result)
        elif body.return_image:
            image_b64 = await service.plain_jpeg_base64(image)
        return PredictOut(
            faces=faces,
            image_size=list(result.image_wh),
            confidence=body.confidence,
            inference_time=round((time.perf_counter() - start) * 1000, 2),
            image=image_b64,
        )

    @app.post(
        "/lambda", response_model=LambdaResultOut, response_model_by_alias=True, tags=["compat"]
    )
    async def lambda_compat(
        body: LambdaImageIn, service: ServiceDep, _key: Authorized
    ) -> LambdaResultOut:
        """Drop-in for the AWS Lambda system's page: `{"image": "<base64>"}` in,
        `{"outputResultsData": "<base64 PNG with boxes and labels>"}` out (plus `faces`). The
        Lambda handler routes its direct (non-proxy) events here too."""
        data = _decode_base64(body.image)
        image, _ = await service.decode(data, "<image>")
        result = await service.infer(service.options(AnalyzeOptions()), image)

        def annotated_png() -> str:
            return base64.b64encode(encode_png(draw_result(image, result))).decode()

        png = await anyio.to_thread.run_sync(annotated_png, limiter=service.decode_limiter)
        return LambdaResultOut(
            output_results_data=png,
            faces=[FaceOut.model_validate(face) for face in result.to_dict()["faces"]],
        )

    @app.get("/healthz", tags=["compat"])
    async def healthz() -> dict[str, str]:
        """Seed 003's health check. No authentication."""
        return {"status": "ok"}

    app.include_router(jobs_router)
    app.include_router(live_router)
    _install_web(app, service)
    install_api_docs(app)
    return app


def _constant_source(data: bytes, label: str) -> Callable[[], Awaitable[tuple[bytes, str]]]:
    async def source() -> tuple[bytes, str]:
        return data, label

    return source


def _json_source(
    service: Service, image_base64: str | None, image_url: str | None
) -> Callable[[], Awaitable[tuple[bytes, str]]]:
    async def source() -> tuple[bytes, str]:
        return await _image_from_json(service, image_base64, image_url)

    return source


def _install_error_handlers(app: FastAPI, service: Service) -> None:
    def respond(
        code: str, message: str, status: int, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        service.metrics.errors.labels(code).inc()
        return JSONResponse(error_body(code, message), status_code=status, headers=headers)

    @app.exception_handler(AgelensError)
    async def agelens_error(request: Request, error: AgelensError) -> JSONResponse:
        headers = error.headers if isinstance(error, ApiError) else None
        return respond(error.code, str(error), status_of(error), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return respond("invalid_request", validation_message(error), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        cause = error.__cause__
        if isinstance(cause, AgelensError):
            # FastAPI turns any error raised while reading a JSON body into a 400; the body
            # limit's RequestTooLargeError (a chunked body over the limit) keeps its own answer.
            return await agelens_error(request, cause)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return respond(
            codes.get(error.status_code, "http_error"), str(error.detail), error.status_code
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return respond("internal_error", "an unexpected error happened; it has been logged", 500)


class _ContainUnexpectedErrors:
    """Answers an unexpected exception with the 500 `internal_error` body and ends the request
    normally. Left to Starlette, the exception is re-raised after the 500 is sent, and uvicorn
    then closes the connection under the client: the next request on that kept-alive
    connection failed 9 times in 10."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watching(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_watching)
        except Exception:
            if started:  # too late for an error body: let the server close the connection
                raise
            logger.exception("unexpected error on %s %s", scope["method"], scope["path"])
            self.metrics.errors.labels("internal_error").inc()
            await send_error(
                send,
                InternalServerError("an unexpected error happened; it has been logged"),
                close=False,
            )


class _MetricsMiddleware:
    """Counts requests by route template, method and status, and times them (pure ASGI, so
    errors raised while reading the body keep their type on the way to the error handlers)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


def _web_dir() -> Path:
    return Path(str(resources.files("agelens.server") / "web"))


def _install_web(app: FastAPI, service: Service) -> None:
    web = _web_dir()
    app.mount("/static", StaticFiles(directory=web, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(web / "index.html", headers=_PAGE_SECURITY_HEADERS)

    @app.get("/v1/examples", tags=["web"])
    async def examples(service: ServiceDep) -> dict[str, Any]:
        """Example photos for the web page (`AGELENS_EXAMPLES_DIR`: a folder or an S3 prefix)."""
        source = service.examples
        if source is None:
            return {
                "examples": [],
                "reason": "no examples folder is configured (AGELENS_EXAMPLES_DIR)",
            }
        names = await anyio.to_thread.run_sync(source.names)
        reason = None if names else f"{source.description} holds no photo"
        return {"examples": names, "reason": reason}

    @app.get("/v1/examples/{name}", tags=["web"], response_class=Response)
    async def example(name: str, service: ServiceDep) -> Response:
        """One example photo by file name (no paths)."""
        source = service.examples
        if source is None or not is_example_name(name):
            raise StarletteHTTPException(404, f"no example named {name!r}")
        data = await anyio.to_thread.run_sync(
            lambda: source.read(name, max_bytes=service.settings.max_body_bytes)
        )
        return Response(data, media_type=example_media_type(name))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agelens")
    except PackageNotFoundError:
        return "0"
