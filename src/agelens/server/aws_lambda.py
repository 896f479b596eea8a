"""AWS Lambda entry point: `agelens.server.lambda_handler`, the service behind API Gateway.

Needs the `lambda` extra (`pip install 'agelens[lambda]'`, which adds Mangum). Mangum turns
API Gateway events (HTTP API payload 2.0 or 1.0, REST API, ALB, function URLs) into ASGI
requests for the same app `agelens serve` runs, with the same settings from `AGELENS_*`
environment variables.

Lifetime: nothing is built at import. The first invocation of a container builds the app and
loads the default models (a few hundred ms on a warm disk); later invocations of that container
reuse them. Mangum runs the ASGI lifespan around every invocation; the app's lifespan only
loads models that are not loaded yet, so after the first one it just starts and stops the
micro-batcher (cheap). Each container handles one request at a time, so batching across
requests does not happen here; `/v1/analyze/batch` still batches its own images.

Events: API Gateway proxy events (HTTP API payload 2.0 and 1.0, REST API), and the direct event
of the older AWS Lambda system (`{"image": "<base64>"}`, from a non-proxy integration or a plain
`Invoke`): that one goes to `POST /lambda` and the handler returns its proxy-shaped response
(`statusCode`, `headers`, `body` holding `{"outputResultsData": ...}`), as the old function did.
Headers for it (an `x-api-key`, say) may come in the event's `headers`. An event of no known shape
gets a 400 in the same shape instead of an exception.

Authentication: an API Gateway function cannot tell whether the gateway authenticates
callers, so, like `agelens serve` on a public address, it refuses to run without keys
(`AGELENS_API_KEY_HASHES`) unless `AGELENS_INSECURE=true` says that the gateway does it (an
IAM, JWT or Lambda authorizer, or a usage-plan API key on a REST API).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import TYPE_CHECKING, Any

from agelens.errors import AgelensError, require_extra

if TYPE_CHECKING:
    from mangum import Mangum

    from agelens.server.engine import ModelPool
    from agelens.server.settings import Settings

__all__ = ["LambdaConfigurationError", "LambdaHandler", "lambda_handler", "warm"]

#: Responses Mangum returns as text rather than base64: ours are JSON, except `/metrics`
#: (text) and the web page (HTML, scripts, styles).
TEXT_MIME_TYPES = [
    "application/json",
    "text/",
    "application/javascript",
    "application/openmetrics-text",
]


class LambdaConfigurationError(AgelensError):
    """The function's settings would make it unsafe or unable to serve."""

    code = "lambda_configuration_error"


class LambdaHandler:
    """A Lambda handler around `create_app(settings, pool=pool)`, built on first call.

    `settings` default to `Settings()` (the environment). It owns an asyncio event loop,
    which Mangum runs each invocation on; `close()` releases it (tests; Lambda never needs to).
    """

    def __init__(self, settings: Settings | None = None, *, pool: ModelPool | None = None):
        self._settings = settings
        self._pool = pool
        self._mangum: Mangum | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _build(self) -> Mangum:
        require_extra("mangum", "lambda")
        require_extra("fastapi", "server")
        from mangum import Mangum

        from agelens.server.app import create_app
        from agelens.server.settings import Settings

        settings = self._settings if self._settings is not None else Settings()
        if not settings.auth_required and not settings.insecure:
            raise LambdaConfigurationError(
                "refusing to serve from AWS Lambda without API keys: anyone who can reach the "
                "endpoint could use it. Set AGELENS_API_KEY_HASHES (digests from `agelens keys "
                "new`), or set AGELENS_INSECURE=true if API Gateway authenticates the callers "
                "(an IAM, JWT or Lambda authorizer, or a usage-plan API key)"
            )
        # Mangum runs every invocation with run_until_complete on the current event loop.
        # Lambda calls handlers on one thread; a loop of our own avoids asyncio's deprecated
        # implicit loop creation.
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        # lifespan="on": the app's lifespan loads the models (once) and starts the batcher;
        # a failing lifespan fails the invocation instead of serving without them.
        return Mangum(
            create_app(settings, pool=self._pool),
            lifespan="on",
            text_mime_types=TEXT_MIME_TYPES,
        )

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        with self._lock:
            if self._mangum is None:
                self._mangum = self._build()
            asyncio.set_event_loop(self._loop)  # in case something replaced it in between
            if is_direct_event(event):
                event = direct_event_as_http_api(event)
            try:
                self._mangum.infer(event, context)
            except RuntimeError as error:  # Mangum: "unable to infer a handler"
                return _error_response(
                    400,
                    "invalid_request",
                    "the Lambda event is neither an API Gateway, ALB or function URL event nor "
                    f'a direct {{"image": "<base64>"}} event ({error})',
                )
            return self._mangum(event, context)

    def warm(self) -> None:
        """Build the app and load its default models now, e.g. at import time of your own
        handler module so that Lambda's init phase does it rather than the first request."""
        with self._lock:
            if self._mangum is None:
                self._mangum = self._build()
            app: Any = self._mangum.app
            pool: ModelPool = app.state.service.pool
        if not pool.ready:
            pool.load_defaults()

    @property
    def app(self) -> Any:
        """The FastAPI app once built (None before the first invocation)."""
        return self._mangum.app if self._mangum is not None else None

    def close(self) -> None:
        """Close the event loop and forget the app; the next call builds them again."""
        with self._lock:
            if self._loop is not None:
                if _current_loop() is self._loop:
                    asyncio.set_event_loop(None)
                self._loop.close()
            self._loop = None
            self._mangum = None


#: keys by which Mangum recognises the proxy events it handles
_PROXY_KEYS = frozenset({"requestContext", "httpMethod", "routeKey", "version", "rawPath"})


def is_direct_event(event: object) -> bool:
    """Whether `event` is the older Lambda system's direct event: `{"image": ...}` as the
    function's own input, not wrapped in an API Gateway request."""
    return isinstance(event, dict) and "image" in event and not _PROXY_KEYS & set(event)


def direct_event_as_http_api(event: dict[str, Any]) -> dict[str, Any]:
    """The direct event as the HTTP API (payload 2.0) request `POST /lambda` with its image in
    a JSON body; `event["headers"]`, when given, are sent along (an API key, say)."""
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    headers.update({"content-type": "application/json", "host": "lambda.direct"})
    return {
        "version": "2.0",
        "routeKey": "POST /lambda",
        "rawPath": "/lambda",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "http": {
                "method": "POST",
                "path": "/lambda",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "lambda-direct",
            },
            "routeKey": "POST /lambda",
            "stage": "$default",
        },
        "body": json.dumps({"image": event["image"]}),
        "isBase64Encoded": False,
    }


def _error_response(status: int, code: str, message: str) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"error": {"code": code, "message": message}}),
        "isBase64Encoded": False,
    }


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        return None


_default = LambdaHandler()


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (`agelens.server.lambda_handler`): settings from `AGELENS_*`;
    the app and its models are built on the first invocation of each container."""
    return _default(event, context)


def warm() -> None:
    """`LambdaHandler.warm` of the default handler."""
    _default.warm()


def reset() -> None:
    """Forget the default handler's app and loop (tests that change the environment)."""
    _default.close()
