"""A typed Python client for the agelens REST service (`agelens serve`, the container, Lambda).

Needs only the `client` extra (`pip install 'agelens[client]'`, which adds httpx)::

    from agelens.client import Client

    with Client("https://agelens.example", api_key="...") as client:
        result = client.analyze("photo.jpg")             # a path, bytes, or an http(s) URL
        for face in result.faces:
            print(face.gender, face.age_years, face.age_interval)
        result, jpeg = client.analyze("photo.jpg", return_image=True)  # + the annotated JPEG
        items = client.analyze_batch(["a.jpg", "b.jpg"])  # ImageResult or ClientError each
        job = client.submit_job(["https://example.com/a.jpg", ...])  # or files, or a .zip
        job = client.wait(job.id)                         # polls until done or failed
        rows = client.job_results(job.id)                 # one dict per face (agelens.rows)

Results are the same frozen dataclasses the library returns (`agelens.types.ImageResult`).
Server errors raise a `ClientError` subclass per error code (`UnauthorizedError`,
`UrlForbiddenError`, `OverloadedError`, ...), each with `.code`, `.status` and `.message`.

Retries: a 502/503 answer (overloaded, models still loading, a proxy whose upstream is not up)
is retried up to `retries` times, waiting as the server's Retry-After says (capped at
`max_retry_wait`) or with exponential backoff and jitter; so is a connection that failed before
a response arrived. Every endpoint but `submit_job` is free of side effects, so a repeat is
safe; `submit_job` is retried only on a 503 (the server said it did not queue the job). Other
4xx and 5xx answers and read timeouts are never retried. `AsyncClient` is the same with `await`.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import random
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, overload

from agelens.error_codes import HTTP_STATUS
from agelens.errors import require_extra

require_extra("httpx", "client")

import httpx  # noqa: E402

from agelens.types import ImageResult  # noqa: E402

__all__ = [
    "AnalysisTimeoutError",
    "AsyncClient",
    "Client",
    "ClientError",
    "ConnectionFailedError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "InvalidRequestError",
    "Job",
    "JobExpiredError",
    "JobTimeoutError",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "RateLimitedError",
    "RequestTooLargeError",
    "Source",
    "UnauthorizedError",
    "UnknownModelError",
    "UnsupportedMediaTypeError",
    "UrlFetchError",
    "UrlForbiddenError",
]

#: an image to analyse: a file path, the encoded file's bytes, or an http(s) URL (str) that the
#: server fetches itself (it refuses private and loopback addresses)
Source: TypeAlias = str | os.PathLike[str] | bytes

DEFAULT_TIMEOUT_S = 120.0
RETRY_STATUSES = frozenset({502, 503})
USER_AGENT = "agelens-client"


# ----------------------------------------------------------------------------- errors


class ClientError(Exception):
    """An error answer of the service, or no answer at all.

    `code` is the service's stable error code (`"unauthorized"`, `"url_forbidden"`, ...);
    `status` the HTTP status (None for a connection failure, and the usual status of the code
    for an item of a batch); `retry_after` the seconds the server asked to wait, if it did.
    """

    default_code = "client_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.message} ({where}{self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r})"


class ConnectionFailedError(ClientError):
    """The server could not be reached (or the connection broke), after every retry."""

    default_code = "connection_error"


class InvalidRequestError(ClientError):
    """The request was malformed: a bad option value, no image, a wrong field."""

    default_code = "invalid_request"


class UnknownModelError(InvalidRequestError):
    """A detector or estimator name the server does not know."""

    default_code = "unknown_model"


class UnauthorizedError(ClientError):
    """No API key, or a key the server does not accept."""

    default_code = "unauthorized"


class NotFoundError(ClientError):
    """No such endpoint (is `base_url` the service's root?)."""

    default_code = "not_found"


class RequestTooLargeError(ClientError):
    """The request body is over the server's limit."""

    default_code = "request_too_large"


class UnsupportedMediaTypeError(ClientError):
    """The server does not read this content type."""

    default_code = "unsupported_media_type"


class ImageDecodeError(ClientError):
    """The server could not decode the image (corrupt, truncated, not an image)."""

    default_code = "image_decode_error"


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the server allows."""

    default_code = "image_too_large"


class UrlForbiddenError(ClientError):
    """The server refuses to fetch this URL (scheme, or a private/loopback address)."""

    default_code = "url_forbidden"


class UrlFetchError(ClientError):
    """The server could not fetch the URL (unreachable, HTTP error, too large, not an image)."""

    default_code = "url_fetch_error"


class RateLimitedError(ClientError):
    """Too many requests for this key; `retry_after` says when to try again. Not retried."""

    default_code = "rate_limited"


class OverloadedError(ClientError):
    """The server's queue was full on every attempt."""

    default_code = "overloaded"


class NotReadyError(ClientError):
    """The server's models are not loaded (yet)."""

    default_code = "not_ready"


class AnalysisTimeoutError(ClientError):
    """The analysis took longer than the server allows."""

    default_code = "timeout"


class JobExpiredError(ClientError):
    """The job's results were deleted (they are kept `AGELENS_JOBS_RESULT_TTL_S` seconds)."""

    default_code = "expired"


class JobTimeoutError(ClientError):
    """`wait` gave up: the job had not ended within its `timeout`."""

    default_code = "job_timeout"


#: the typed error of each service error code; its status is in agelens.error_codes.HTTP_STATUS
_ERRORS_BY_CODE: dict[str, type[ClientError]] = {
    "invalid_request": InvalidRequestError,
    "bad_request": InvalidRequestError,
    "unknown_model": UnknownModelError,
    "unauthorized": UnauthorizedError,
    "not_found": NotFoundError,
    "request_too_large": RequestTooLargeError,
    "unsupported_media_type": UnsupportedMediaTypeError,
    "image_decode_error": ImageDecodeError,
    "image_too_large": ImageTooLargeError,
    "url_forbidden": UrlForbiddenError,
    "url_fetch_error": UrlFetchError,
    "rate_limited": RateLimitedError,
    "overloaded": OverloadedError,
    "not_ready": NotReadyError,
    "model_not_fetched": NotReadyError,
    "model_fetch_error": NotReadyError,
    "timeout": AnalysisTimeoutError,
    "expired": JobExpiredError,
}


def error_for(
    code: str, message: str, *, status: int | None = None, retry_after: float | None = None
) -> ClientError:
    """The typed error for a service error code (ClientError for a code this client does not
    know); `status` defaults to the code's usual HTTP status (agelens.error_codes.HTTP_STATUS,
    the table the service answers with; None for a code the table does not list)."""
    return _ERRORS_BY_CODE.get(code, ClientError)(
        message,
        code=code,
        status=status if status is not None else HTTP_STATUS.get(code),
        retry_after=retry_after,
    )


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_from_response(response: httpx.Response) -> ClientError:
    retry_after = _retry_after(response.headers.get("retry-after"))
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        # Not the service's error shape: a proxy, a load balancer or API Gateway answered.
        code = {502: "bad_gateway", 503: "unavailable", 504: "timeout"}.get(
            response.status_code, "http_error"
        )
        text = response.text.strip().replace("\n", " ")[:200]
        message = f"HTTP {response.status_code} {response.reason_phrase}: {text or '(no body)'}"
    return error_for(code, message, status=response.status_code, retry_after=retry_after)


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class _Call:
    """One HTTP request, built once and sent as many times as retries need."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def send_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": self.params or None, "headers": self.headers}
        if self.json is not None:
            kwargs["json"] = self.json
        if self.content is not None:
            kwargs["content"] = self.content
        if self.files is not None:
            kwargs["files"] = self.files
            kwargs["data"] = self.data
        return kwargs


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source[:8].lower().startswith(("http://", "https://"))


def _read(source: Source) -> tuple[bytes, str | None]:
    """The bytes of a path or bytes source, and the file name to report."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), None
    if isinstance(source, str) and "://" in source[:16]:
        raise ValueError(f"only http:// and https:// URLs can be analysed, not {source!r}")
    path = Path(os.fspath(source))
    return path.read_bytes(), path.name


def _options(
    detector: str | None,
    estimator: str | None,
    min_face: float | None,
    max_faces: int | None,
    return_image: bool,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "detector": detector,
        "estimator": estimator,
        "min_face": min_face,
        "max_faces": max_faces,
        "return_image": True if return_image else None,
    }
    return {k: v for k, v in options.items() if v is not None}


def _as_text(options: Mapping[str, Any]) -> dict[str, str]:
    """Options as form fields or query parameters."""
    return {k: ("true" if v is True else str(v)) for k, v in options.items()}


def _analyze_call(source: Source, options: dict[str, Any]) -> _Call:
    if _is_url(source):
        return _Call("POST", "/v1/analyze", json={"image_url": source, **options})
    data, name = _read(source)
    if name is None:  # raw body: the result's source is "<upload>"
        return _Call(
            "POST",
            "/v1/analyze",
            params=_as_text(options),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
    return _Call(
        "POST",
        "/v1/analyze",
        files=[("image", (name, data, "application/octet-stream"))],
        data=_as_text(options),
    )


def _batch_call(sources: Sequence[Source], options: dict[str, Any]) -> _Call:
    if any(_is_url(s) for s in sources):  # JSON carries URLs and base64 side by side
        images: list[dict[str, str]] = []
        for source in sources:
            if _is_url(source):
                images.append({"image_url": str(source)})
            else:
                data, _ = _read(source)
                images.append({"image_base64": base64.b64encode(data).decode("ascii")})
        return _Call("POST", "/v1/analyze/batch", json={"images": images, **options})
    files = []
    for number, source in enumerate(sources):
        data, name = _read(source)
        files.append(("images", (name or f"image-{number}", data, "application/octet-stream")))
    return _Call("POST", "/v1/analyze/batch", files=files, data=_as_text(options))


def _parse_analyze(body: Any, return_image: bool) -> ImageResult | tuple[ImageResult, bytes]:
    result = ImageResult.from_dict(body)
    if not return_image:
        return result
    encoded = body.get("image_jpeg_base64")
    if not isinstance(encoded, str):
        raise ClientError("the server sent no annotated image", code="bad_response")
    return result, base64.b64decode(encoded)


def _parse_batch(body: Any) -> list[ImageResult | ClientError]:
    items: list[ImageResult | ClientError] = []
    for item in sorted(body["results"], key=lambda i: int(i["index"])):
        if item.get("error") is not None:
            items.append(error_for(str(item["error"]["code"]), str(item["error"]["message"])))
        else:
            items.append(ImageResult.from_dict(item["result"]))
    return items


def _chunks(sources: Iterable[Source], size: int) -> Iterator[list[Source]]:
    chunk: list[Source] = []
    for source in sources:
        chunk.append(source)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


#: the states in which a job no longer changes
JOB_END_STATES = frozenset({"done", "failed", "expired"})


@dataclass(frozen=True, slots=True)
class Job:
    """A job of the service (`/v1/jobs`): its state and counts when it was asked for.

    `status` is one of queued, running, done, failed, expired; `message` says why a job
    failed. Counts are of the images analysed so far (`faces`: faces found in them).
    """

    id: str
    status: str
    progress: float
    images_total: int
    images_done: int
    images_without_faces: int
    errors: int
    faces: int
    detector: str
    estimator: str
    message: str | None = None

    @property
    def ended(self) -> bool:
        """Whether the job has stopped changing (done, failed or expired)."""
        return self.status in JOB_END_STATES

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Job:
        """The job from the service's JSON."""
        return cls(
            id=str(body["id"]),
            status=str(body["status"]),
            progress=float(body["progress"]),
            images_total=int(body["images_total"]),
            images_done=int(body["images_done"]),
            images_without_faces=int(body["images_without_faces"]),
            errors=int(body["errors"]),
            faces=int(body["faces"]),
            detector=str(body["detector"]),
            estimator=str(body["estimator"]),
            message=body.get("message"),
        )


def _zip_of(sources: Sequence[Source]) -> bytes:
    """Local images (paths or bytes) packed into a zip in memory, names kept where known."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        used: set[str] = set()
        for number, source in enumerate(sources):
            data, name = _read(source)
            member = name or f"image-{number:05d}"
            if member in used:
                member = f"{number:05d}-{member}"
            used.add(member)
            archive.writestr(member, data)
    return buffer.getvalue()


def _is_zip_file(source: object) -> bool:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[:4]) == b"PK\x03\x04"
    return isinstance(source, str | os.PathLike) and os.fspath(source).lower().endswith(".zip")


def _submit_job_call(images: Iterable[Source] | Source, options: dict[str, Any]) -> _Call:
    if _is_zip_file(images):
        data, _ = _read(images)  # type: ignore[arg-type]
        return _Call(
            "POST",
            "/v1/jobs",
            params=_as_text(options),
            content=data,
            headers={"Content-Type": "application/zip"},
        )
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike):
        raise ValueError(
            "submit_job takes several images (a list of URLs, paths or bytes) or one .zip file"
        )
    sources = list(images)
    if not sources:
        raise ValueError("submit_job needs at least one image")
    urls = [s for s in sources if _is_url(s)]
    if len(urls) == len(sources):
        return _Call("POST", "/v1/jobs", json={"urls": urls, **options})
    if urls:
        raise ValueError("submit_job takes either URLs or local images (paths, bytes), not both")
    return _Call(
        "POST",
        "/v1/jobs",
        params=_as_text(options),
        content=_zip_of(sources),
        headers={"Content-Type": "application/zip"},
    )


def _parse_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class _Base:
    """Settings and retry policy shared by Client and AsyncClient."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        retries: int,
        backoff_seconds: float,
        max_retry_wait: float,
        batch_size: int,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_retry_wait = max_retry_wait
        self.batch_size = batch_size
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def _wait(self, attempt: int, error: ClientError | None) -> float:
        """Seconds before retry number `attempt + 1`: Retry-After if given, else backoff."""
        if error is not None and error.retry_after is not None:
            wait = error.retry_after + random.uniform(0, 0.1)
        else:
            base = self.backoff_seconds * (2**attempt)
            wait = random.uniform(base / 2, base)
        return min(wait, self.max_retry_wait)

    @staticmethod
    def _connection_error(call: _Call, error: httpx.TransportError) -> ConnectionFailedError:
        return ConnectionFailedError(
            f"{call.method} {call.path}: {type(error).__name__}: {error or 'connection failed'}"
        )


#: errors where the request may not have been processed and repeating it is harmless:
#: no connection, or the connection broke before an answer. A read timeout is not retried.
_RETRYABLE_TRANSPORT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


def _retryable(status: int, creates: bool) -> bool:
    """Whether an error answer may be retried: 502/503, and for a call that creates something
    only 503 (the service answered that it did not; a 502 may come after it did)."""
    return status == 503 if creates else status in RETRY_STATUSES


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


async def _async_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


class Client(_Base):
    """A blocking client of the agelens service. Use it as a context manager or call close().

    `retries` is how many times a 502/503 or a failed connection is retried; `timeout` bounds
    each attempt (seconds); `max_retry_wait` caps one wait between attempts; `batch_size` is
    how many images `analyze_batch` sends per request (the server's default limit is 16).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        max_retry_wait: float = 30.0,
        batch_size: int = 16,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, retries, backoff_seconds, max_retry_wait, batch_size)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(
        self, call: _Call, *, retry: bool = True, text: bool = False, creates: bool = False
    ) -> Any:
        """The JSON (or with `text`, the text) of a successful answer. `creates`: the call has
        a side effect, so only an answer saying it was not done (503) is retried."""
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(call.method, call.path, **call.send_kwargs())
            except _RETRYABLE_TRANSPORT as error:
                if last or creates:
                    raise self._connection_error(call, error) from error
                _sleep(self._wait(attempt, None))
                continue
            except httpx.TransportError as error:
                raise self._connection_error(call, error) from error
            if response.is_success:
                return response.text if text else response.json()
            failure = _error_from_response(response)
            if last or not _retryable(response.status_code, creates):
                raise failure
            _sleep(self._wait(attempt, failure))
        raise AssertionError("unreachable")  # pragma: no cover

    @overload
    def analyze(
        self,
        source: Source,
        *,
        detector: str | None = ...,
        estimator: str | None = ...,
        min_face: float | None = ...,
        max_faces: int | None = ...,
        return_image: Literal[False] = ...,
    ) -> ImageResult: ...

    @overload
    def analyze(
        self,
        source: Source,
        *,
        detector: str | None = ...,
        estimator: str | None = ...,
        min_face: float | None = ...,
        max_faces: int | None = ...,
        return_image: Literal[True],
    ) -> tuple[ImageResult, bytes]: ...

    def analyze(
        self,
        source: Source,
        *,
        detector: str | None = None,
        estimator: str | None = None,
        min_face: float | None = None,
        max_faces: int | None = None,
        return_image: bool = False,
    ) -> ImageResult | tuple[ImageResult, bytes]:
        """Every face of one image: a path, bytes, or an http(s) URL the server fetches.

        With `return_image=True` the answer is `(result, jpeg)`: the image with boxes and
        labels drawn, as JPEG bytes. Options left as None take the server's defaults.
        """
        options = _options(detector, estimator, min_face, max_faces, return_image)
        return _parse_analyze(self._send(_analyze_call(source, options)), return_image)

    def analyze_batch(
        self,
        sources: Iterable[Source],
        *,
        detector: str | None = None,
        estimator: str | None = None,
        min_face: float | None = None,
        max_faces: int | None = None,
    ) -> list[ImageResult | ClientError]:
        """One ImageResult or one ClientError per source, in order: a bad image does not fail
        the others. Sent `batch_size` images per request; an error of a whole request (a bad
        key, a request too large) raises instead."""
        options = _options(detector, estimator, min_face, max_faces, False)
        items: list[ImageResult | ClientError] = []
        for chunk in _chunks(sources, self.batch_size):
            items += _parse_batch(self._send(_batch_call(chunk, options)))
        return items

    def submit_job(
        self,
        images: Iterable[Source] | Source,
        *,
        detector: str | None = None,
        estimator: str | None = None,
        min_face: float | None = None,
        max_faces: int | None = None,
    ) -> Job:
        """Queue a job on the service (`POST /v1/jobs`) and return it at once (queued).

        `images`: http(s) URLs the server fetches, or local images (paths or bytes, sent as
        one zip), or a single `.zip` file (path or bytes). Then `wait(job.id)` and
        `job_results(job.id)`. Raises ValueError for URLs mixed with local images.
        """
        options = _options(detector, estimator, min_face, max_faces, False)
        return Job.from_dict(self._send(_submit_job_call(images, options), creates=True))

    def job(self, job_id: str) -> Job:
        """The job's current state (NotFoundError for an unknown id, or another key's job)."""
        return Job.from_dict(self._send(_Call("GET", f"/v1/jobs/{job_id}")))

    def job_results(self, job_id: str) -> list[dict[str, Any]]:
        """The job's result rows so far (all of them once done): one dict per face, per image
        without a face and per failed image, with the columns of `agelens.rows`.
        JobExpiredError once the results have been deleted."""
        return _parse_rows(
            self._send(_Call("GET", f"/v1/jobs/{job_id}/results", {"format": "jsonl"}), text=True)
        )

    def wait(self, job_id: str, *, timeout: float | None = None, poll_seconds: float = 1.0) -> Job:
        """Poll the job every `poll_seconds` until it has ended (done, failed or expired) and
        return it; check `job.status`. JobTimeoutError after `timeout` seconds (None: no
        limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.ended:
                return job
            if deadline is not None and time.monotonic() + poll_seconds > deadline:
                raise JobTimeoutError(
                    f"job {job_id} is still {job.status} after {timeout:g} s "
                    f"({job.images_done} of {job.images_total} images)"
                )
            _sleep(poll_seconds)

    def models(self) -> dict[str, Any]:
        """The server's detectors and estimators, its defaults, and what is loaded."""
        return dict(self._send(_Call("GET", "/v1/models")))

    def health(self) -> dict[str, Any]:
        """Liveness (`{"status": "ok"}`); raises ConnectionFailedError when unreachable."""
        return dict(self._send(_Call("GET", "/health")))

    def ready(self) -> bool:
        """Whether the server's models are loaded (one request, no retries)."""
        try:
            self._send(_Call("GET", "/ready"), retry=False)
        except (NotReadyError, ConnectionFailedError):
            return False
        return True


class AsyncClient(_Base):
    """`Client` for asyncio: the same methods, awaited. Use `async with` or `await aclose()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        max_retry_wait: float = 30.0,
        batch_size: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, retries, backoff_seconds, max_retry_wait, batch_size)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(
        self, call: _Call, *, retry: bool = True, text: bool = False, creates: bool = False
    ) -> Any:
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._http.request(call.method, call.path, **call.send_kwargs())
            except _RETRYABLE_TRANSPORT as error:
                if last or creates:
                    raise self._connection_error(call, error) from error
                await _async_sleep(self._wait(attempt, None))
                continue
            except httpx.TransportError as error:
                raise self._connection_error(call, error) from error
            if response.is_success:
                return response.text if text else response.json()
            failure = _error_from_response(response)
            if last or not _retryable(response.status_code, creates):
                raise failure
            await _async_sleep(self._wait(attempt, failure))
        raise AssertionError("unreachable")  # pragma: no cover

    @overload
    async def analyze(
        self,
        source: Source,
        *,
        detector: str | None = ...,
        estimator: str | None = ...,
        min_face: float | None = ...,
        max_faces: int | None = ...,
        return_image: Literal[False] = ...,
    ) -> ImageResult: ...

    @overload
    async def analyze(
        self,
        source: Source,
        *,
        detector: str | None = ...,
        estimator: str | None = ...,
        min_face: float | None = ...,
        max_faces: int | None = ...,
        return_image: Literal[True],
    ) -> tuple[ImageResult, bytes]: ...

    async def analyze(
        self,
        source: Source,
        *,
        detector: str | None = None,
        estimator: str | None = None,
        min_face: float | None = None,
        max_faces: int | None = None,
        return_image: bool = False,
    ) -> ImageResult | tuple[ImageResult, bytes]:
        """See `Client.analyze` (files are read before the request, on the event loop)."""
        options = _options(detector, estimator, min_face, max_faces, return_image)
        return _parse_analyze(await self._send(_analyze_call(source, options)), return_image)

    async def analyze_batch(
        self,
        sources: Iterable[Source],
        *,
        detector: str | None = None,
        estimator: str | None = None,
        min_face: float | None = None,
        max_faces: int | None = None,
    ) -> list[ImageResult | ClientError]:
        """See `Client.analyze_batch`."""
        options = _options(detector, estimator, min_face, max_faces, False)
        items: list[ImageResult | ClientError] = []
        for chunk in _chunks(sources, self.batch_size):
            items += _parse_batch(await self._send(_batch_call(chunk, options)))
        return items

    async def submit_job(
        self,
        images: Iterable[Source] | Source,
        *,
        detector: str | None = None,
        estimator: str | None = None,
        min_face: float | None = None,
        max_faces: int | None = None,
    ) -> Job:
        """See `Client.submit_job`."""
        options = _options(detector, estimator, min_face, max_faces, False)
        return Job.from_dict(await self._send(_submit_job_call(images, options), creates=True))

    async def job(self, job_id: str) -> Job:
        """See `Client.job`."""
        return Job.from_dict(await self._send(_Call("GET", f"/v1/jobs/{job_id}")))

    async def job_results(self, job_id: str) -> list[dict[str, Any]]:
        """See `Client.job_results`."""
        call = _Call("GET", f"/v1/jobs/{job_id}/results", {"format": "jsonl"})
        return _parse_rows(await self._send(call, text=True))

    async def wait(
        self, job_id: str, *, timeout: float | None = None, poll_seconds: float = 1.0
    ) -> Job:
        """See `Client.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job.ended:
                return job
            if deadline is not None and time.monotonic() + poll_seconds > deadline:
                raise JobTimeoutError(
                    f"job {job_id} is still {job.status} after {timeout:g} s "
                    f"({job.images_done} of {job.images_total} images)"
                )
            await _async_sleep(poll_seconds)

    async def models(self) -> dict[str, Any]:
        """See `Client.models`."""
        return dict(await self._send(_Call("GET", "/v1/models")))

    async def health(self) -> dict[str, Any]:
        """See `Client.health`."""
        return dict(await self._send(_Call("GET", "/health")))

    async def ready(self) -> bool:
        """See `Client.ready`."""
        try:
            await self._send(_Call("GET", "/ready"), retry=False)
        except (NotReadyError, ConnectionFailedError):
            return False
        return True
