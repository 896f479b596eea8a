"""The service's errors: one JSON shape, `{"error": {"code": ..., "message": ...}}`, and the
HTTP status of each stable `code`, read from agelens.error_codes (the table the client shares)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from agelens.error_codes import HTTP_STATUS, http_status
from agelens.errors import AgelensError

_M = TypeVar("_M", bound=BaseModel)


class _HasErrors(Protocol):
    def errors(self) -> Sequence[Mapping[str, Any]]: ...


class ApiError(AgelensError):
    """An error with an HTTP status; `headers` are added to the response (e.g. Retry-After).

    A subclass names its `code`; its `status` is that code's in agelens.error_codes.HTTP_STATUS
    (a code missing from the table fails at import, so the table stays complete)."""

    code = "bad_request"
    status: ClassVar[int] = HTTP_STATUS[code]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = HTTP_STATUS[cls.code]

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class InvalidRequestError(ApiError):
    """The request is malformed: missing image, wrong field, bad option value."""

    code = "invalid_request"


class UnsupportedMediaTypeError(ApiError):
    """The request body's content type is not one the endpoint reads."""

    code = "unsupported_media_type"


class RequestTooLargeError(ApiError):
    """The request body exceeds `max_body_bytes`."""

    code = "request_too_large"


class UnauthorizedError(ApiError):
    """No API key, or a key that is not configured."""

    code = "unauthorized"


class RateLimitedError(ApiError):
    """The key (or client) sent more requests per minute than allowed."""

    code = "rate_limited"


class OverloadedError(ApiError):
    """The inference queue is full; the client should retry after `Retry-After` seconds."""

    code = "overloaded"


class NotReadyError(ApiError):
    """The models are still loading."""

    code = "not_ready"


class NotFoundError(ApiError):
    """No such resource (or not one the caller's API key may see)."""

    code = "not_found"


class GoneError(ApiError):
    """The resource existed but is gone for good (a job's results past their time to live)."""

    code = "expired"


class InternalServerError(ApiError):
    """A bug: an exception nobody expected (logged with its traceback)."""

    code = "internal_error"


class RequestTimeoutError(ApiError):
    """The request body did not arrive in time."""

    code = "request_timeout"


class TimeoutApiError(ApiError):
    """The analysis did not finish within `request_timeout_seconds`."""

    code = "timeout"


def status_of(error: AgelensError) -> int:
    """The HTTP status for any agelens error: its code's in agelens.error_codes.HTTP_STATUS."""
    if isinstance(error, ApiError):
        return error.status
    return http_status(error.code)


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
