"""URL input: every private, loopback, link-local and metadata target is refused, directly or
through a redirect; public fetches are size-, time- and type-limited."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from agelens.errors import UrlFetchError, UrlForbiddenError
from agelens.urlfetch import IPV4_REFUSED, IPV6_RULES, UrlFetcher, is_public_address
from tests.conftest import WebServer, image_route, redirect_route

ADDRESSES = [
    ("127.0.0.1", False),
    ("127.8.9.10", False),
    ("10.1.2.3", False),
    ("172.16.0.1", False),
    ("192.168.1.1", False),
    ("169.254.169.254", False),
    ("169.254.1.1", False),
    ("100.64.0.1", False),
    ("100.100.100.200", False),
    ("0.0.0.0", False),
    ("224.0.0.1", False),
    ("255.255.255.255", False),
    ("::1", False),
    ("::", False),
    ("fe80::1", False),
    ("fc00::1", False),
    ("fd00:ec2::254", False),
    ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False),
    ("ff02::1", False),
    ("8.8.8.8", True),
    ("93.184.216.34", True),
    ("2606:4700:4700::1111", True),
    ("::ffff:8.8.8.8", True),
    # IPv6 forms that embed an IPv4 address are judged by what they embed (issue 16)
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
    ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
    ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ("64:ff9b:1::a9fe:a9fe", False),  # local-use NAT64 prefix: never
    ("64:ff9b:1::808:808", False),
    ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
    ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
    ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
    ("::a9fe:a9fe", False),  # IPv4-compatible 169.254.169.254
    ("::7f00:1", False),
    ("::808:808", True),
    ("::ffff:0:a9fe:a9fe", False),  # SIIT 169.254.169.254
    ("::ffff:0:808:808", True),
    ("::ffff:a9fe:a9fe", False),  # IPv4-mapped
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True),  # Teredo, server 65.54.227.120, client 8.8.8.8
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo client 127.0.0.1
    ("2001:0:a00:1:8000:63bf:f7f7:f7f7", False),  # Teredo server 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:5601:5601", False),  # Teredo client 169.254.169.254
    # deprecated, reserved and special-purpose ranges
    ("fec0::1", False),  # site-local
    ("192.0.0.192", False),
    ("192.0.0.9", False),
    ("192.0.2.1", False),
    ("192.88.99.1", False),
    ("198.18.0.1", False),
    ("198.51.100.7", False),
    ("203.0.113.7", False),
    ("240.0.0.1", False),
    ("168.63.129.16", False),
    ("100::1", False),
    ("2001:2::1", False),
    ("2001:10::1", False),
    ("2001:db8::1", False),
    ("3fff::1", False),
    ("5f00::1", False),
    ("4000::1", False),
    ("fe80::1%eth0", False),
    ("fd00::1", False),
    ("1.1.1.1", True),
    ("2a00:1450:4001:80b::200e", True),
]


@pytest.mark.parametrize(("address", "public"), ADDRESSES)
def test_public_address_table(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def _fetcher(**overrides: object) -> UrlFetcher:
    options: dict[str, object] = {
        "max_bytes": 1_000_000,
        "timeout_seconds": 3.0,
        "max_redirects": 3,
        "allow_networks": ["127.0.0.1/32"],
    }
    options.update(overrides)
    return UrlFetcher(**options)  # type: ignore[arg-type]


FORBIDDEN_URLS = [
    "http://127.0.0.1/a.jpg",
    "http://localhost/a.jpg",
    "http://10.0.0.1/a.jpg",
    "http://192.168.0.10/a.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/a.jpg",
    "http://[::ffff:127.0.0.1]/a.jpg",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "http://[2002:a9fe:a9fe::1]/a.jpg",
    "http://[fec0::1]/a.jpg",
    "http://192.0.0.192/a.jpg",
    "http://0.0.0.0/a.jpg",
    "http://2130706433/a.jpg",  # 127.0.0.1 as one decimal number
    "ftp://example.com/a.jpg",
    "file:///etc/passwd",
    "gopher://example.com/",
    "http://user:secret@example.com/a.jpg",
    "not a url",
    "http:///a.jpg",
]


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_private_and_odd_urls_are_refused_without_connecting(url: str) -> None:
    with pytest.raises((UrlForbiddenError, UrlFetchError)) as caught:
        asyncio.run(UrlFetcher(max_bytes=1000, timeout_seconds=3).fetch(url))
    assert caught.value.code in {"url_forbidden", "url_fetch_error"}
    if not url.startswith("http://2130706433"):
        assert caught.value.code == "url_forbidden"


def test_an_allowed_server_is_fetched(web_server: WebServer) -> None:
    base, routes = web_server.base, web_server.routes
    routes["/face.jpg"] = image_route(b"\xff\xd8 pretend jpeg")
    fetched = asyncio.run(_fetcher().fetch(f"{base}/face.jpg"))
    assert fetched.data == b"\xff\xd8 pretend jpeg"
    assert fetched.content_type == "image/jpeg"


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/face.jpg",  # loopback outside the allowed /32
        "http://10.0.0.1/face.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/face.jpg",
        "file:///etc/passwd",
    ],
)
def test_redirects_to_private_targets_are_refused(web_server: WebServer, target: str) -> None:
    base, routes = web_server.base, web_server.routes
    port = base.rsplit(":", 1)[1]
    routes["/face.jpg"] = image_route(b"secret")
    routes["/hop"] = redirect_route(target.format(port=port))
    with pytest.raises(UrlForbiddenError):
        asyncio.run(_fetcher().fetch(f"{base}/hop"))


def test_redirects_are_followed_a_few_times_only(web_server: WebServer) -> None:
    base, routes = web_server.base, web_server.routes
    routes["/face.jpg"] = image_route(b"jpeg")
    routes["/one"] = redirect_route("/face.jpg")
    assert asyncio.run(_fetcher().fetch(f"{base}/one")).data == b"jpeg"
    routes["/loop"] = redirect_route("/loop")
    with pytest.raises(UrlFetchError, match="redirects"):
        asyncio.run(_fetcher().fetch(f"{base}/loop"))


def test_limits_on_type_size_status_and_time(web_server: WebServer) -> None:
    base, routes = web_server.base, web_server.routes
    routes["/page.html"] = image_route(b"<html></html>", "text/html")
    routes["/big.jpg"] = image_route(b"x" * 5000)

    def streamed_big(handler: BaseHTTPRequestHandler) -> None:  # no Content-Length
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        for _ in range(10):
            handler.wfile.write(b"y" * 1000)

    def slow(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(2.0)
        image_route(b"late")(handler)

    routes["/streamed.jpg"] = streamed_big
    routes["/slow.jpg"] = slow
    with pytest.raises(UrlFetchError, match="not an image"):
        asyncio.run(_fetcher().fetch(f"{base}/page.html"))
    with pytest.raises(UrlFetchError, match="limit"):
        asyncio.run(_fetcher(max_bytes=1024).fetch(f"{base}/big.jpg"))
    with pytest.raises(UrlFetchError, match="limit"):
        asyncio.run(_fetcher(max_bytes=1024).fetch(f"{base}/streamed.jpg"))
    with pytest.raises(UrlFetchError, match="404"):
        asyncio.run(_fetcher().fetch(f"{base}/missing.jpg"))
    start = time.perf_counter()
    with pytest.raises(UrlFetchError, match="longer than"):
        asyncio.run(_fetcher(timeout_seconds=0.5).fetch(f"{base}/slow.jpg"))
    assert time.perf_counter() - start < 1.8


def test_the_documented_rules_table_is_the_one_in_the_code() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    for network, why in IPV4_REFUSED:
        assert f"| `{network}` | {why} |" in page, network
    for network, verdict, why in IPV6_RULES:
        assert f"| `{network}` | {verdict}" in page, network
        assert page.count(f"`{network}`") >= 1
        assert why in page, why
