"""API keys, per-key rate limits, the request body limit and in-memory multipart parsing."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from agelens.server.errors import (
    ApiError,
    InvalidRequestError,
    OverloadedError,
    RateLimitedError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnauthorizedError,
    error_body,
)
from agelens.server.settings import hash_api_key

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """The user name and password of an HTTP basic `Authorization` header."""

    username: str
    password: str


def basic_credentials(request: Request) -> BasicCredentials | None:
    """The request's HTTP basic credentials, or None when it sends none (or unreadable ones)."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, _, password = decoded.partition(":")
    return BasicCredentials(username, password)


def presented_key(
    request: Request, *, allow_basic: bool = False, basic_username: str | None = None
) -> str | None:
    """The API key a request carries: `Authorization: Bearer KEY`, `X-API-Key: KEY`, or (where
    `allow_basic`, for the TF container's clients on `/predict`) HTTP basic with the key as
    password.

    With `basic_username` set, basic credentials count only with that user name (compared in
    constant time). Without it any user name goes, and a key sent as the user name with an
    empty password (`curl -u KEY:`) is accepted too.
    """
    header_key = request.headers.get("x-api-key")
    if header_key:
        return header_key.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if not allow_basic:
        return None
    basic = basic_credentials(request)
    if basic is None:
        return None
    if basic_username is not None:
        user_matches = hmac.compare_digest(
            basic.username.encode("utf-8"), basic_username.encode("utf-8")
        )
        return basic.password if user_matches and basic.password else None
    return basic.password or basic.username or None


def key_matches(key: str, digests: frozenset[str]) -> bool:
    """Whether `key` hashes to one of `digests`, compared in constant time against every one."""
    digest = hash_api_key(key)
    matched = False
    for candidate in digests:
        matched |= hmac.compare_digest(digest, candidate)
    return matched


def authenticate(
    request: Request,
    digests: frozenset[str],
    *,
    allow_basic: bool = False,
    basic_username: str | None = None,
) -> str:
    """The identity used for rate limiting: the key's digest prefix, or the client address when
    no keys are configured. Raises UnauthorizedError when keys are configured and not matched
    (with basic auth: also when the user name is not `basic_username`, where that is set)."""
    if not digests:
        return f"addr:{request.client.host if request.client else 'unknown'}"
    challenge = 'Basic realm="agelens"' if allow_basic else 'Bearer realm="agelens"'
    key = presented_key(request, allow_basic=allow_basic, basic_username=basic_username)
    if key is None:
        if allow_basic and basic_credentials(request) is not None:
            raise UnauthorizedError(
                "the user name or password is not valid", headers={"WWW-Authenticate": challenge}
            )
        raise UnauthorizedError(
            "an API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
            + (" or HTTP basic auth with the key as password" if allow_basic else ""),
            headers={"WWW-Authenticate": challenge},
        )
    if not key_matches(key, digests):
        raise UnauthorizedError("the API key is not valid", headers={"WWW-Authenticate": challenge})
    return f"key:{hash_api_key(key)[:16]}"


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class RateLimiter:
    """A token bucket per identity: `per_minute` requests a minute, bursts up to `per_minute`.

    Memory is bounded: the least recently seen identities are forgotten beyond `max_identities`
    (a forgotten identity starts again with a full bucket).
    """

    def __init__(self, per_minute: int, *, max_identities: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_identities = max_identities
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, identity: str) -> None:
        """Take one token or raise RateLimitedError with Retry-After."""
        wait = self._take(identity, consume=True)
        if wait > 0:
            raise RateLimitedError(
                f"more than {self.per_minute} requests a minute; retry in {wait:.1f} s",
                headers={"Retry-After": retry_after(wait)},
            )

    def take(self, identity: str) -> None:
        """Take one token when there is one (never raises)."""
        self._take(identity, consume=True)

    def wait_seconds(self, identity: str) -> float:
        """Seconds until `identity` has a token again (0 when it has one); takes none."""
        return self._take(identity, consume=False)

    def _take(self, identity: str, *, consume: bool) -> float:
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.pop(identity, None) or _Bucket(float(self.per_minute), now)
            bucket.tokens = min(
                float(self.per_minute), bucket.tokens + (now - bucket.updated) * rate
            )
            bucket.updated = now
            self._buckets[identity] = bucket
            while len(self._buckets) > self.max_identities:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                if consume:
                    bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate


def retry_after(wait_seconds: float) -> str:
    """A Retry-After value (whole seconds, at least 1) for a wait."""
    return str(max(1, round(wait_seconds + 0.5)))


class FailedAuthLimitMiddleware:
    """Slows down key guessing: each 401 answered to a client address takes a token from that
    address's bucket (`per_minute` a minute, bursts up to `per_minute`); an address with no
    token left gets 429 `rate_limited` + Retry-After on every path but `exempt_paths`
    (health checks) until its bucket refills. Keyed by the peer address: clients behind one
    NAT share a bucket."""

    def __init__(self, app: ASGIApp, per_minute: int, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self.per_minute = per_minute
        self.exempt_paths = exempt_paths
        self.failures = RateLimiter(per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.per_minute <= 0
            or scope.get("path") in self.exempt_paths
        ):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = f"addr:{client[0] if client else 'unknown'}"
        wait = self.failures.wait_seconds(address)
        if wait > 0:
            await send_error(
                send,
                RateLimitedError(
                    f"more than {self.per_minute} failed authentications a minute from this "
                    f"address; retry in {wait:.0f} s",
                    headers={"Retry-After": retry_after(wait)},
                ),
                close=False,
            )
            return

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.failures.take(address)
            await send(message)

        await self.app(scope, receive, watching_send)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes`, by Content-Length up front and by counting the
    bytes of streamed (chunked) bodies as they arrive, so an oversized body is never held."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _send_too_large(send, self.max_bytes)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLargeError(_too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


def _too_large_message(max_bytes: int) -> str:
    return f"the request body is over the limit of {max_bytes} bytes"


async def _send_too_large(send: Send, max_bytes: int) -> None:
    await send_error(send, RequestTooLargeError(_too_large_message(max_bytes)))


async def send_error(send: Send, error: ApiError, *, close: bool = True) -> None:
    """Answer `error` in the service's error shape straight from ASGI (before any route runs),
    the request body unread. With `close`, the connection is closed after the answer (and a
    client still sending may see a reset instead); without, the server reads and discards the
    rest of the body and keeps the connection (uvicorn does so once a response is complete)."""
    body = json.dumps(error_body(error.code, str(error))).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    for name, value in error.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AdmissionMiddleware:
    """Admission control at the door: at most `max_requests` POST requests are in the service
    at once (their bodies being read, decoded, queued or analysed); one more is answered
    503 `overloaded` with Retry-After at once, before its body is read, instead of queueing
    without bound in front of the inference queue. GETs (health, readiness, results, the page)
    are never refused. `on_refused` is called for each refusal (metrics)."""

    def __init__(
        self,
        app: ASGIApp,
        max_requests: int,
        *,
        body_timeout_seconds: float = 60.0,
        retry_after_seconds: int = 1,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.max_requests = max_requests
        self.body_timeout_seconds = body_timeout_seconds
        self.retry_after_seconds = retry_after_seconds
        self.on_refused = on_refused
        # One event loop runs every request, so a plain counter is exact.
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:
            if self.on_refused is not None:
                self.on_refused()
            await send_error(
                send,
                OverloadedError(
                    f"the server is busy with {self.in_flight} requests; retry in "
                    f"{self.retry_after_seconds} s",
                    headers={"Retry-After": str(self.retry_after_seconds)},
                ),
                # Closing with the body unread makes the kernel reset the connection, and
                # clients still uploading then lose the 503: 224 of 256 did in the benchmark.
                close=False,
            )
            return
        self.in_flight += 1
        deadline = time.monotonic() + self.body_timeout_seconds
        body_done = False

        async def receive_in_time() -> Message:
            # A slow body would hold its slot for ever; after the body, receive() only waits
            # for a disconnect, which has no deadline.
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError as error:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.body_timeout_seconds:g} s"
                ) from error
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        try:
            await self.app(scope, receive_in_time, send)
        finally:
            self.in_flight -= 1


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """One file part of a multipart body, held in memory."""

    field_name: str
    filename: str
    content_type: str
    data: bytes


def parse_multipart(
    body: bytes, content_type: str, *, max_parts: int = 64
) -> tuple[dict[str, str], list[UploadedFile]]:
    """Form fields and files of a multipart/form-data body, entirely in memory.

    Written here instead of Starlette's parser because that one spools files over 1 MB to a
    temporary file, and the service must never write images to disk.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequestError("multipart body without a boundary")
    fields: dict[str, str] = {}
    files: list[UploadedFile] = []
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": bytearray()}

    def on_part_begin() -> None:
        state["headers"], state["data"] = {}, bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] += data[start:end]

    def on_part_end() -> None:
        if len(fields) + len(files) >= max_parts:
            raise InvalidRequestError(f"more than {max_parts} parts in the form")
        disposition, options = parse_options_header(state["headers"].get("content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequestError("a multipart part without a form-data name")
        name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            files.append(
                UploadedFile(
                    field_name=name,
                    filename=options[b"filename"].decode("utf-8", "replace"),
                    content_type=state["headers"].get("content-type", b"").decode("latin-1"),
                    data=bytes(state["data"]),
                )
            )
        else:
            fields[name] = bytes(state["data"]).decode("utf-8", "replace")

    try:
        # Inside the try: the constructor itself refuses some boundaries (over 256 bytes).
        parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": on_part_begin,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
            },
        )
        parser.write(body)
        parser.finalize()
    except InvalidRequestError:
        raise
    except Exception as error:  # python-multipart raises several unrelated types
        raise InvalidRequestError(f"malformed multipart body: {error}") from error
    return fields, files
