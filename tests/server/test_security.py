"""Keys, rate limits and the in-memory multipart parser."""

from __future__ import annotations

import base64

import pytest
from starlette.requests import Request

from agelens.server.errors import InvalidRequestError, RateLimitedError, UnauthorizedError
from agelens.server.security import (
    RateLimiter,
    authenticate,
    key_matches,
    parse_multipart,
    presented_key,
)
from agelens.server.settings import hash_api_key


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw, "client": ("203.0.113.9", 5000)})


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("headers", "allow_basic", "expected"),
    [
        ({}, False, None),
        ({"Authorization": "Bearer abc"}, False, "abc"),
        ({"Authorization": "bearer  abc "}, False, "abc"),
        ({"X-API-Key": "xyz"}, False, "xyz"),
        ({"X-API-Key": "xyz", "Authorization": "Bearer abc"}, False, "xyz"),
        ({"Authorization": "Bearer "}, False, None),
        ({"Authorization": _basic("u", "pw")}, False, None),
        ({"Authorization": _basic("u", "pw")}, True, "pw"),
        ({"Authorization": _basic("key-as-user", "")}, True, "key-as-user"),
        ({"Authorization": "Basic !!notbase64"}, True, None),
        ({"Authorization": "Digest abc"}, True, None),
    ],
)
def test_presented_key(headers: dict[str, str], allow_basic: bool, expected: str | None) -> None:
    assert presented_key(_request(headers), allow_basic=allow_basic) == expected


@pytest.mark.parametrize(
    ("user", "password", "expected"),
    [
        ("tf-client", "the-key", "the-key"),
        ("someone", "the-key", None),
        ("tf-client", "", None),
        ("the-key", "", None),  # the key-as-user-name form only goes without a configured user
        ("TF-CLIENT", "the-key", None),
    ],
)
def test_presented_key_with_a_basic_auth_user_name(
    user: str, password: str, expected: str | None
) -> None:
    request = _request({"Authorization": _basic(user, password)})
    assert presented_key(request, allow_basic=True, basic_username="tf-client") == expected


def test_key_matching_and_identity() -> None:
    digests = frozenset({hash_api_key("alpha"), hash_api_key("beta")})
    assert key_matches("beta", digests)
    assert not key_matches("gamma", digests)
    assert not key_matches("", digests)
    identity = authenticate(_request({"X-API-Key": "alpha"}), digests)
    assert identity.startswith("key:")
    assert "alpha" not in identity
    with pytest.raises(UnauthorizedError):
        authenticate(_request({}), digests)
    with pytest.raises(UnauthorizedError):
        authenticate(_request({"X-API-Key": "gamma"}), digests)
    assert authenticate(_request({}), frozenset()) == "addr:203.0.113.9"


def test_rate_limiter_refills_over_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("agelens.server.security.time.monotonic", lambda: clock[0])
    limiter = RateLimiter(per_minute=3)
    for _ in range(3):
        limiter.check("a")
    with pytest.raises(RateLimitedError) as caught:
        limiter.check("a")
    assert caught.value.headers["Retry-After"] == "20"
    limiter.check("b")  # buckets are per identity
    clock[0] += 20.0  # one token back (3 a minute)
    limiter.check("a")
    with pytest.raises(RateLimitedError):
        limiter.check("a")
    RateLimiter(per_minute=0).check("anyone")  # 0 turns it off


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(per_minute=5, max_identities=10)
    for index in range(1000):
        limiter.check(f"client-{index}")
    assert len(limiter._buckets) == 10


def _form(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            + ("Content-Type: image/jpeg\r\n" if filename else "")
            + "\r\n"
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    body = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks)
    return body + f"--{boundary}--\r\n".encode()


def test_multipart_parsing_in_memory() -> None:
    body = _form([("max_faces", None, b"2"), ("image", "a.jpg", b"\xff\xd8\x00binary\r\n--")])
    fields, files = parse_multipart(body, "multipart/form-data; boundary=XyZ")
    assert fields == {"max_faces": "2"}
    assert len(files) == 1
    assert files[0].field_name == "image"
    assert files[0].filename == "a.jpg"
    assert files[0].content_type == "image/jpeg"
    assert files[0].data == b"\xff\xd8\x00binary\r\n--"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"whatever", "multipart/form-data"),
        (
            b"--XyZ\r\nContent-Disposition: attachment\r\n\r\nx\r\n--XyZ--\r\n",
            "multipart/form-data; boundary=XyZ",
        ),
        (b"garbage without boundary lines", "multipart/form-data; boundary=XyZ"),
        (b"--" + b"b" * 300 + b"--\r\n", "multipart/form-data; boundary=" + "b" * 300),
    ],
)
def test_malformed_multipart(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_multipart(body, content_type)


def test_multipart_part_count_is_limited() -> None:
    body = _form([(f"f{i}", None, b"x") for i in range(10)])
    with pytest.raises(InvalidRequestError, match="parts"):
        parse_multipart(body, "multipart/form-data; boundary=XyZ", max_parts=5)
