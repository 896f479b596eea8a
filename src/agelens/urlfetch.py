"""Fetching an image from a user-given URL without becoming a proxy into the private network.

Rules (server-side request forgery defence):
- only `http` and `https`, no credentials in the URL;
- the host name is resolved here, every address it resolves to must be public (not loopback,
  private, link-local, multicast, reserved, unspecified, shared or a cloud metadata address,
  nor an IPv6 form that embeds such an IPv4 address: see IPV4_REFUSED and IPV6_RULES),
  and the connection goes to the address that was checked (pinned), so DNS cannot change its
  answer between the check and the connection;
- redirects are followed by hand, a few at most, and each hop is checked the same way;
- the body is streamed with a byte limit and an overall time limit, and must say it is an image.

`allow_networks` lists networks exempt from the public-address rule, for operators whose images
live on an internal store (and for tests).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from agelens.errors import UrlFetchError, UrlForbiddenError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The rules are pinned here instead of taken from `ipaddress`'s is_global/is_private, whose
# tables change between Python patch releases and do not look inside IPv6 forms that carry an
# IPv4 address (NAT64, 6to4, Teredo, ...), through which a host on a NAT64 network reaches
# 169.254.169.254 or 10/8. Sources: the IANA IPv4 and IPv6 Special-Purpose Address Registries,
# RFC 4291 (IPv4-compatible/-mapped, site-local), RFC 6052 and 8215 (NAT64), RFC 3056 (6to4),
# RFC 4380 (Teredo), RFC 2765 (SIIT). docs/reliability.md shows the same table.

#: IPv4 networks never fetched, with why; every other IPv4 address is public.
IPV4_REFUSED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (carrier NAT; Alibaba Cloud metadata)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata 169.254.169.254)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and the broadcast address"),
    ("168.63.129.16/32", "Azure platform endpoint (metadata, DNS)"),
)

#: How an IPv6 address is judged: the first rule whose network holds it decides.
#: "refuse" never fetches; "public" fetches; "embedded" judges the IPv4 address(es) it carries.
IPV6_RULES: tuple[tuple[str, str, str], ...] = (
    ("::/128", "refuse", "unspecified"),
    ("::1/128", "refuse", "loopback"),
    ("::ffff:0:0/96", "embedded", "IPv4-mapped"),
    ("::ffff:0:0:0/96", "embedded", "IPv4-translated (SIIT)"),
    ("::/96", "embedded", "IPv4-compatible (deprecated)"),
    ("64:ff9b::/96", "embedded", "NAT64 well-known prefix"),
    ("64:ff9b:1::/48", "refuse", "NAT64 local-use prefix"),
    ("100::/64", "refuse", "discard-only"),
    ("2001::/32", "embedded", "Teredo (server and client addresses)"),
    ("2001::/23", "refuse", "IETF protocol assignments (benchmarking, ORCHID, ...)"),
    ("2001:db8::/32", "refuse", "documentation"),
    ("2002::/16", "embedded", "6to4"),
    ("3fff::/20", "refuse", "documentation"),
    ("5f00::/16", "refuse", "segment routing (SRv6) identifiers"),
    ("fc00::/7", "refuse", "unique local (cloud metadata fd00:ec2::254)"),
    ("fe80::/10", "refuse", "link-local"),
    ("fec0::/10", "refuse", "site-local (deprecated)"),
    ("ff00::/8", "refuse", "multicast"),
    ("2000::/3", "public", "global unicast"),
    ("::/0", "refuse", "reserved or unassigned"),
)

_IPV4_REFUSED = tuple((ipaddress.IPv4Network(net), why) for net, why in IPV4_REFUSED)
_IPV6_RULES = tuple((ipaddress.IPv6Network(net), verdict, why) for net, verdict, why in IPV6_RULES)
_LOW_32_BITS = 0xFFFFFFFF
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries in a translation or tunnelling form
    (IPv4-mapped, -compatible, SIIT, NAT64 well-known prefix, 6to4, Teredo), else ()."""
    value = int(address)
    rule = _first_ipv6_rule(address)
    if rule[1] != "embedded":
        return ()
    if rule[0] == _SIX_TO_FOUR:  # 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
        return (ipaddress.IPv4Address((value >> 80) & _LOW_32_BITS),)
    if rule[0] == _TEREDO:  # server in bits 32-63, client (bits inverted) in the last 32
        return (
            ipaddress.IPv4Address((value >> 64) & _LOW_32_BITS),
            ipaddress.IPv4Address(~value & _LOW_32_BITS),
        )
    return (ipaddress.IPv4Address(value & _LOW_32_BITS),)


def _first_ipv6_rule(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv6Network, str, str]:
    for rule in _IPV6_RULES:
        if address in rule[0]:
            return rule
    raise AssertionError("::/0 holds every address")  # pragma: no cover


def address_verdict(address: IPAddress) -> tuple[bool, str]:
    """Whether the address may be fetched, and the rule that decided (see IPV4_REFUSED and
    IPV6_RULES): an IPv6 form that embeds an IPv4 address is as public as what it embeds."""
    if isinstance(address, ipaddress.IPv4Address):
        for network, why in _IPV4_REFUSED:
            if address in network:
                return False, why
        return True, "public IPv4"
    address = ipaddress.IPv6Address(int(address))  # drop any %scope
    _, verdict, why = _first_ipv6_rule(address)
    if verdict == "embedded":
        for inner in embedded_ipv4(address):
            inner_public, inner_why = address_verdict(inner)
            if not inner_public:
                return False, f"{why} of {inner} ({inner_why})"
        return True, why
    return verdict == "public", why


def is_public_address(address: IPAddress) -> bool:
    """True when the address may be fetched: not private, loopback, link-local, metadata,
    documentation, reserved or deprecated, directly or embedded in an IPv6 form."""
    return address_verdict(address)[0]


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """The body of a fetched URL and where it finally came from."""

    data: bytes
    final_url: str
    content_type: str


class UrlFetcher:
    """Fetches images from public URLs; raises UrlForbiddenError / UrlFetchError."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_seconds: float,
        max_redirects: int = 3,
        allow_networks: Sequence[str] = (),
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.max_redirects = max_redirects
        self.allow_networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allow_networks
        )

    def address_allowed(self, address: IPAddress) -> bool:
        """Public addresses, plus those in `allow_networks`."""
        if any(address in network for network in self.allow_networks):
            return True
        return is_public_address(address)

    async def fetch(self, url: str) -> FetchedImage:
        """The image at `url`, after checking every hop. Never raises anything but ApiErrors."""
        try:
            return await asyncio.wait_for(self._fetch(url), timeout=self.timeout_seconds)
        except TimeoutError as error:
            raise UrlFetchError(
                f"fetching the image took longer than {self.timeout_seconds:g} s"
            ) from error

    async def _fetch(self, url: str) -> FetchedImage:
        timeout = httpx.Timeout(self.timeout_seconds)
        async with httpx.AsyncClient(
            follow_redirects=False, timeout=timeout, trust_env=False
        ) as client:
            current = url
            for _hop in range(self.max_redirects + 1):
                parsed, address = await self._checked_target(current)
                response_or_redirect = await self._request(client, parsed, address)
                if isinstance(response_or_redirect, FetchedImage):
                    return response_or_redirect
                current = urljoin(current, response_or_redirect)
            raise UrlFetchError(f"more than {self.max_redirects} redirects")

    async def _checked_target(self, url: str) -> tuple[httpx.URL, IPAddress]:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as error:
            raise UrlForbiddenError(f"not a valid URL: {error}") from error
        if parsed.scheme not in {"http", "https"}:
            raise UrlForbiddenError(f"only http and https URLs are fetched, not {parsed.scheme!r}")
        if parsed.userinfo:
            raise UrlForbiddenError("URLs with credentials are not fetched")
        host = parsed.host
        if not host:
            raise UrlForbiddenError("the URL has no host")
        addresses = await _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80))
        refused = [a for a in addresses if not self.address_allowed(a)]
        if refused:
            raise UrlForbiddenError(
                f"{host} resolves to {refused[0]}, which is not a public address "
                f"({address_verdict(refused[0])[1]}); only images on the public internet "
                "are fetched"
            )
        return parsed, addresses[0]

    async def _request(
        self, client: httpx.AsyncClient, url: httpx.URL, address: IPAddress
    ) -> FetchedImage | str:
        """The image, or the Location of a redirect."""
        pinned = url.copy_with(host=str(address))
        headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*"}
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        try:
            async with client.stream(
                "GET", pinned, headers=headers, extensions=extensions
            ) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    location: str | None = response.headers.get("location")
                    if not location:
                        raise UrlFetchError("redirect without a Location header")
                    return urljoin(str(url), location)
                if response.status_code != 200:
                    raise UrlFetchError(f"the URL answered HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                if content_type and not (
                    content_type.startswith("image/") or content_type == "application/octet-stream"
                ):
                    raise UrlFetchError(f"the URL is not an image (content type {content_type})")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise UrlFetchError(
                        f"the image is {declared} bytes, over the limit of {self.max_bytes}"
                    )
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > self.max_bytes:
                        raise UrlFetchError(
                            f"the image is over the limit of {self.max_bytes} bytes"
                        )
                return FetchedImage(bytes(body), str(url), content_type)
        except httpx.HTTPError as error:
            raise UrlFetchError(
                f"could not fetch the URL: {type(error).__name__}: {error}"
            ) from error


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise UrlFetchError(f"cannot resolve {host}: {error}") from error
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlFetchError(f"{host} has no address")
    return addresses
