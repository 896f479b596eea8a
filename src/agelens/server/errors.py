"""The service's errors: one JSON shape, `{"error": {"code": ..., "message": ...}}`, and the
HTTP status each stable `code` maps to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from agelens.errors import AgelensError, UrlFetchError, UrlForbiddenError

_M = TypeVar("_M", bound=BaseModel)


class _HasErrors(Protocol):
    def errors(self) -> Sequence[Mapping[str, Any]]: ...


class ApiError(AgelensError):
    """An error with an HTTP status; `headers` are added to the response (e.g. Retry-After)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class InvalidRequestError(ApiError):
    """The request is malformed: missing image, wrong field, bad option value."""

    status = 400
    code = "invalid_request"


class UnsupportedMediaTypeError(ApiError):
    """The request body's content type is not one the endpoint reads."""

    status = 415
    code = "unsupported_media_type"


class RequestTooLargeError(ApiError):
    """The request body exceeds `max_body_bytes`."""

    status = 413
    code = "request_too_large"


class UnauthorizedError(ApiError):
    """No API key, or a key that is not configured."""

    status = 401
    code = "unauthorized"


class RateLimitedError(ApiError):
    """The key (or client) sent more requests per minute than allowed."""

    status = 429
    code = "rate_limited"


class OverloadedError(ApiError):
    """The inference queue is full; the client should retry after `Retry-After` seconds."""

    status = 503
    code = "overloaded"


class NotReadyError(ApiError):
    """The models are still loading."""

    status = 503
    code = "not_ready"


class NotFoundError(ApiError):
    """No such resource (or not one the caller's API key may see)."""

    status = 404
    code = "not_found"


class GoneError(ApiError):
    """The resource existed but is gone for good (a job's results past their time to live)."""

    status = 410
    code = "expired"


class InternalServerError(ApiError):
    """A bug: an exception nobody expected (logged with its traceback)."""

    status = 500
    code = "internal_error"


class RequestTimeoutError(ApiError):
    """The request body did not arrive in time."""

    status = 408
    code = "request_timeout"


class TimeoutApiError(ApiError):
    """The analysis did not finish within `request_timeout_seconds`."""

    status = 504
    code = "timeout"


#: statuses of the engine's own errors (agelens.errors) when they reach the HTTP layer
ENGINE_STATUS = {
    "image_decode_error": 422,
    "image_too_large": 413,
    "unknown_model": 400,
    "model_not_fetched": 503,
    "model_fetch_error": 503,
    "missing_extra": 500,
    UrlForbiddenError.code: 400,
    UrlFetchError.code: 422,
}


def status_of(error: AgelensError) -> int:
    """The HTTP status for any agelens error."""
    if isinstance(error, ApiError):
        return error.status
    return ENGINE_STATUS.get(error.code, 400)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error shape every endpoint uses."""
    return {"error": {"code": code, "message": message}}


def validation_message(error: _HasErrors) -> str:
    """One line naming each invalid field (pydantic's or FastAPI's validation errors)."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def validated(model: type[_M], values: Mapping[str, Any] | bytes) -> _M:
    """`model` from a dict or JSON bytes; InvalidRequestError (400) naming the bad fields."""
    try:
        if isinstance(values, bytes):
            return model.model_validate_json(values)
        return model.model_validate(values)
    except ValidationError as error:
        raise InvalidRequestError(validation_message(error)) from error
