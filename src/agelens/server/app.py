"""`create_app(settings)`: the FastAPI application of `agelens serve`.

The assembly point: it builds the Service (service.py) and the JobManager from the settings,
loads the models in the lifespan (never at import), and puts together the routers
(routers/, one module per concern, sharing deps.py), the middlewares and the error handlers
(middleware.py). Requests are parsed and checked in the routers, decoding and drawing run on
worker threads, and inference goes through the shared micro-batcher (see engine.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from agelens.errors import AgelensError
from agelens.server.api_docs import install_api_docs
from agelens.server.engine import ModelPool
from agelens.server.errors import OverloadedError
from agelens.server.jobs import JobManager
from agelens.server.middleware import (
    ContainUnexpectedErrors,
    MetricsMiddleware,
    install_error_handlers,
)
from agelens.server.routers import analyze, compat, live, meta, web
from agelens.server.routers import jobs as jobs_routes
from agelens.server.schemas import ErrorOut
from agelens.server.security import (
    AdmissionMiddleware,
    BodyLimitMiddleware,
    FailedAuthLimitMiddleware,
)
from agelens.server.service import Service
from agelens.server.settings import Settings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 408, 413, 415, 422, 429, 503, 504)
}


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
    jobs = JobManager(settings, pool, service.fetcher)

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
    install_error_handlers(app, service.metrics)
    app.add_middleware(ContainUnexpectedErrors, metrics=service.metrics)
    app.add_middleware(
        AdmissionMiddleware,
        max_requests=settings.max_requests_in_flight,
        body_timeout_seconds=settings.body_timeout_seconds,
        on_refused=service.metrics.errors.labels(OverloadedError.code).inc,
    )
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
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

    # In this order, so the OpenAPI document lists the paths as it always has.
    app.include_router(analyze.router)
    app.include_router(meta.router)
    app.include_router(compat.router)
    app.include_router(jobs_routes.router)
    app.include_router(live.router)
    app.mount("/static", StaticFiles(directory=web.web_dir(), check_dir=False), name="static")
    app.include_router(web.router)
    install_api_docs(app)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agelens")
    except PackageNotFoundError:
        return "0"
