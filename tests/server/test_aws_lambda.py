"""The AWS Lambda entry point, driven locally with real API Gateway HTTP API events
(payload format 2.0) carrying real images through Mangum into the real app and models."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

import agelens.server
from agelens.server import aws_lambda
from agelens.server.aws_lambda import LambdaConfigurationError, LambdaHandler
from agelens.server.engine import ModelPool
from agelens.server.settings import Settings, hash_api_key

HOST = "abc123defg.execute-api.eu-west-1.amazonaws.com"
CONTEXT = SimpleNamespace(
    function_name="agelens",
    aws_request_id="5b0e6d1e-6f6a-4c8e-9a57-0c4d5e6f7a8b",
    memory_limit_in_mb=3008,
    get_remaining_time_in_millis=lambda: 29_000,
)


def http_api_event(
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
    base64_body: bool = True,
) -> dict[str, Any]:
    """An event as API Gateway HTTP API sends it to a Lambda proxy integration (format 2.0)."""
    all_headers = {
        "accept": "*/*",
        "host": HOST,
        "user-agent": "curl/8.5.0",
        "x-amzn-trace-id": "Root=1-65f0c1a2-3b4c5d6e7f8091a2b3c4d5e6",
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    if body is not None:
        all_headers["content-length"] = str(len(body))
    if content_type is not None:
        all_headers["content-type"] = content_type
    all_headers.update(headers or {})
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "ANY /{proxy+}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": all_headers,
        "pathParameters": {"proxy": path.lstrip("/")},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123defg",
            "domainName": HOST,
            "domainPrefix": "abc123defg",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "ANY /{proxy+}",
            "stage": "$default",
            "time": "12/Mar/2024:10:15:30 +0000",
            "timeEpoch": 1710238530000,
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    if body is not None:
        if base64_body:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
        else:
            event["body"] = body.decode("utf-8")
    return event


def _json(response: dict[str, Any]) -> Any:
    assert response["headers"]["content-type"] == "application/json"
    assert response["isBase64Encoded"] is False
    return json.loads(response["body"])


def _error_code(response: dict[str, Any]) -> str:
    body = _json(response)
    assert set(body) == {"error"}
    assert body["error"]["message"]
    return str(body["error"]["code"])


@pytest.fixture
def make_handler(model_pool: ModelPool) -> Iterator[Any]:
    handlers: list[LambdaHandler] = []

    def factory(**settings: Any) -> LambdaHandler:
        handler = LambdaHandler(Settings(**settings), pool=model_pool)
        handlers.append(handler)
        return handler

    yield factory
    for handler in handlers:
        handler.close()


@pytest.fixture
def handler(make_handler: Any) -> LambdaHandler:
    """Behind an authenticating API Gateway: no keys of its own."""
    result: LambdaHandler = make_handler(insecure=True, rate_limit_per_minute=0)
    return result


def _assert_astronaut(body: Any) -> None:
    assert body["image_wh"] == [512, 512]
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert face["gender"] == "F"
    assert 30 <= face["age_years"] <= 52


def test_raw_image_body_base64_encoded_by_the_gateway(
    handler: LambdaHandler, astronaut_jpeg: bytes
) -> None:
    event = http_api_event(
        "POST", "/v1/analyze", body=astronaut_jpeg, content_type="image/jpeg", query="max_faces=3"
    )
    response = handler(event, CONTEXT)
    assert response["statusCode"] == 200, response["body"]
    body = _json(response)
    _assert_astronaut(body)
    assert body["source"] == "<upload>"


def test_json_with_image_base64_plain_and_base64_encoded(
    handler: LambdaHandler, astronaut_jpeg: bytes
) -> None:
    payload = json.dumps(
        {"image_base64": base64.b64encode(astronaut_jpeg).decode(), "return_image": True}
    ).encode()
    for encoded in (False, True):
        event = http_api_event(
            "POST",
            "/v1/analyze",
            body=payload,
            content_type="application/json",
            base64_body=encoded,
        )
        response = handler(event, CONTEXT)
        assert response["statusCode"] == 200, response["body"]
        body = _json(response)
        _assert_astronaut(body)
        assert base64.b64decode(body["image_jpeg_base64"])[:3] == b"\xff\xd8\xff"


def test_multipart_upload_as_a_browser_sends_it(
    handler: LambdaHandler, astronaut_jpeg: bytes
) -> None:
    boundary = "----agelens7MA4YWxkTrZu0gW"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="image"; filename="astronaut.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + astronaut_jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    event = http_api_event(
        "POST",
        "/v1/analyze",
        body=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    response = handler(event, CONTEXT)
    assert response["statusCode"] == 200, response["body"]
    body_json = _json(response)
    _assert_astronaut(body_json)
    assert body_json["source"] == "astronaut.jpg"


def test_health_ready_and_not_found(handler: LambdaHandler) -> None:
    response = handler(http_api_event("GET", "/health"), CONTEXT)
    assert response["statusCode"] == 200
    assert _json(response) == {"status": "ok"}
    ready = handler(http_api_event("GET", "/ready"), CONTEXT)
    assert ready["statusCode"] == 200
    assert _json(ready)["status"] == "ready"
    missing = handler(http_api_event("GET", "/v2/nothing"), CONTEXT)
    assert missing["statusCode"] == 404
    assert _error_code(missing) == "not_found"


def test_errors_keep_their_shape_and_status(handler: LambdaHandler) -> None:
    corrupt = handler(
        http_api_event(
            "POST", "/v1/analyze", body=b"\xff\xd8\xffnot a jpeg", content_type="image/jpeg"
        ),
        CONTEXT,
    )
    assert corrupt["statusCode"] == 422
    assert _error_code(corrupt) == "image_decode_error"
    wrong_type = handler(
        http_api_event("POST", "/v1/analyze", body=b"hello", content_type="text/plain"), CONTEXT
    )
    assert wrong_type["statusCode"] == 415
    assert _error_code(wrong_type) == "unsupported_media_type"
    loopback = handler(
        http_api_event(
            "POST",
            "/v1/analyze",
            body=json.dumps({"image_url": "http://169.254.169.254/latest/meta-data/"}).encode(),
            content_type="application/json",
            base64_body=False,
        ),
        CONTEXT,
    )
    assert loopback["statusCode"] == 400
    assert _error_code(loopback) == "url_forbidden"


def test_api_keys_in_the_function(make_handler: Any, astronaut_jpeg: bytes) -> None:
    handler = make_handler(api_key_hashes=[hash_api_key("lambda-key")])
    event = http_api_event("POST", "/v1/analyze", body=astronaut_jpeg, content_type="image/jpeg")
    refused = handler(event, CONTEXT)
    assert refused["statusCode"] == 401
    assert _error_code(refused) == "unauthorized"
    assert refused["headers"]["www-authenticate"].startswith("Bearer")
    keyed = http_api_event(
        "POST",
        "/v1/analyze",
        body=astronaut_jpeg,
        content_type="image/jpeg",
        headers={"x-api-key": "lambda-key"},
    )
    accepted = handler(keyed, CONTEXT)
    assert accepted["statusCode"] == 200
    _assert_astronaut(_json(accepted))


def test_refuses_to_serve_without_keys_or_insecure(make_handler: Any) -> None:
    handler = make_handler()
    with pytest.raises(LambdaConfigurationError, match="AGELENS_API_KEY_HASHES") as caught:
        handler(http_api_event("GET", "/health"), CONTEXT)
    assert "AGELENS_INSECURE=true" in str(caught.value)


@pytest.fixture
def lambda_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment of a deployed function behind an authenticating gateway."""
    for name in ("AGELENS_API_KEY_HASHES", "AGELENS_API_KEYS", "AGELENS_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGELENS_INSECURE", "true")
    monkeypatch.setenv("AGELENS_THREADS", "2")
    aws_lambda.reset()
    yield
    aws_lambda.reset()


@pytest.mark.usefixtures("lambda_environment")
def test_the_entry_point_loads_models_once_per_container(astronaut_jpeg: bytes) -> None:
    assert aws_lambda._default.app is None  # nothing is built at import
    handler = agelens.server.lambda_handler
    assert handler is aws_lambda.lambda_handler
    event = http_api_event("POST", "/v1/analyze", body=astronaut_jpeg, content_type="image/jpeg")
    first = handler(event, CONTEXT)
    assert first["statusCode"] == 200, first["body"]
    _assert_astronaut(_json(first))
    pool: ModelPool = aws_lambda._default.app.state.service.pool
    assert pool.ready  # loaded by the app's lifespan, which Mangum ran
    analyzer = pool.analyzer(pool.default_detector, pool.default_estimator)
    second = handler(event, CONTEXT)
    assert second["statusCode"] == 200
    assert aws_lambda._default.app.state.service.pool is pool
    assert pool.analyzer(pool.default_detector, pool.default_estimator) is analyzer
    assert handler(http_api_event("GET", "/health"), CONTEXT)["statusCode"] == 200


@pytest.mark.usefixtures("lambda_environment")
def test_warm_loads_the_models_before_the_first_request() -> None:
    aws_lambda.warm()
    pool: ModelPool = aws_lambda._default.app.state.service.pool
    assert pool.ready
    response = agelens.server.lambda_handler(http_api_event("GET", "/ready"), CONTEXT)
    assert response["statusCode"] == 200


# ------------------------------------------------------------------ the older Lambda system


def rest_api_event(path: str, body: str) -> dict[str, Any]:
    """An event as an API Gateway REST API sends it to a Lambda proxy integration (format 1.0)."""
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json", "Host": HOST},
        "multiValueHeaders": {"Content-Type": ["application/json"], "Host": [HOST]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": "POST",
            "path": f"/prod{path}",
            "accountId": "123456789012",
            "stage": "prod",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "Mozilla/5.0"},
            "apiId": "abc123defg",
        },
        "body": body,
        "isBase64Encoded": False,
    }


def _page_request(jpeg: bytes, *, data_url: bool = False) -> str:
    """What the old React page posts: the photo as base64 (a FileReader data URL or bare)."""
    encoded = base64.b64encode(jpeg).decode()
    return json.dumps({"image": f"data:image/jpeg;base64,{encoded}" if data_url else encoded})


def _assert_annotated_png(response: dict[str, Any], original: bytes) -> None:
    """The old page shows `outputResultsData` as a PNG: the photo with the face boxed."""
    assert response["statusCode"] == 200, response["body"]
    body = _json(response)
    png = base64.b64decode(body["outputResultsData"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(io.BytesIO(original)).convert("RGB")).astype(int)
    assert drawn.shape == plain.shape == (512, 512, 3)
    assert (np.abs(drawn - plain).max(axis=2) > 80).mean() > 0.005  # boxes and labels
    (face,) = body["faces"]
    assert face["gender"] == "F"
    assert 30 <= face["age_years"] <= 52


def test_the_old_pages_request_through_a_proxy_event_v2_and_v1(
    handler: LambdaHandler, astronaut_jpeg: bytes
) -> None:
    v2 = http_api_event(
        "POST",
        "/lambda",
        body=_page_request(astronaut_jpeg).encode(),
        content_type="application/json",
        base64_body=False,
    )
    _assert_annotated_png(handler(v2, CONTEXT), astronaut_jpeg)
    v1 = rest_api_event("/lambda", _page_request(astronaut_jpeg, data_url=True))
    _assert_annotated_png(handler(v1, CONTEXT), astronaut_jpeg)


def test_the_old_functions_direct_event(handler: LambdaHandler, astronaut_jpeg: bytes) -> None:
    event = json.loads(_page_request(astronaut_jpeg))
    _assert_annotated_png(handler(event, CONTEXT), astronaut_jpeg)


def test_a_direct_event_with_a_bad_image_or_no_known_shape_is_a_400(
    handler: LambdaHandler,
) -> None:
    not_base64_image = handler({"image": base64.b64encode(b"not an image").decode()}, CONTEXT)
    assert not_base64_image["statusCode"] == 422
    assert _error_code(not_base64_image) == "image_decode_error"
    wrong_type = handler({"image": 42}, CONTEXT)
    assert wrong_type["statusCode"] == 400
    assert _error_code(wrong_type) == "invalid_request"
    unknown = handler({"Records": [{"eventSource": "aws:s3"}]}, CONTEXT)
    assert unknown["statusCode"] == 400
    assert _error_code(unknown) == "invalid_request"


def test_a_direct_event_carries_its_key_in_headers(
    make_handler: Any, astronaut_jpeg: bytes
) -> None:
    handler = make_handler(api_key_hashes=[hash_api_key("lambda-key")])
    event = json.loads(_page_request(astronaut_jpeg))
    refused = handler(event, CONTEXT)
    assert refused["statusCode"] == 401
    keyed = {**event, "headers": {"x-api-key": "lambda-key"}}
    _assert_annotated_png(handler(keyed, CONTEXT), astronaut_jpeg)
