"""The app's middlewares and error handlers: every request counted and timed, every error
(ours, FastAPI's validation errors, Starlette's 404/405, anything unexpected) answered with the
same `{"error": {"code", "message"}}` body.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agelens.errors import AgelensError
from agelens.server.errors import (
    ApiError,
    InternalServerError,
    error_body,
    status_of,
    validation_message,
)
from agelens.server.metrics import Metrics
from agelens.server.security import ASGIApp, Message, Receive, Scope, Send, send_error

__all__ = ["ContainUnexpectedErrors", "MetricsMiddleware", "install_error_handlers"]

logger = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Answer every error with the `{"error": {"code", "message"}}` body and its status (see
    agelens.error_codes), counting it by code in `metrics`."""

    def respond(
        code: str, message: str, status: int, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        metrics.errors.labels(code).inc()
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


class ContainUnexpectedErrors:
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


class MetricsMiddleware:
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
