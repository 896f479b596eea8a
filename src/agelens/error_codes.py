"""Every stable error code the service answers, and the HTTP status it answers it with.

The one table both sides read: the service (`agelens.server.errors`) takes each error's status
from it, and the client (`agelens.client`) gives an error the status of its code when the
response did not say. It lives in the core so the client needs nothing from `agelens.server`.
A code not listed here answers 400 (a request the service refused).
"""

from __future__ import annotations

#: stable error code -> HTTP status
HTTP_STATUS: dict[str, int] = {
    # the request
    "bad_request": 400,
    "invalid_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "request_timeout": 408,
    "expired": 410,
    "request_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    # the image or URL it names
    "unknown_model": 400,
    "invalid_option": 400,
    "url_forbidden": 400,
    "image_too_large": 413,
    "image_decode_error": 422,
    "url_fetch_error": 422,
    # the service
    "internal_error": 500,
    "missing_extra": 500,
    "overloaded": 503,
    "not_ready": 503,
    "model_not_fetched": 503,
    "model_fetch_error": 503,
    "examples_unavailable": 503,
    "timeout": 504,
}

#: status of a code the table does not list
DEFAULT_STATUS = 400


def http_status(code: str) -> int:
    """The HTTP status of an error code (DEFAULT_STATUS for a code not in HTTP_STATUS)."""
    return HTTP_STATUS.get(code, DEFAULT_STATUS)
