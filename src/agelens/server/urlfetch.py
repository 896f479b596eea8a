"""Fetching an image from a user-given URL without becoming a proxy into the private network.

Rules (server-side request forgery defence):
- only `http` and `https`, no credentials in the URL;
- the host name is resolved here, every address it resolves to must be public (not loopback,
  private, link-local, multicast, reserved, unspecified, shared or a cloud metadata address),
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

from agelens.server.errors import UrlFetchError, UrlForbiddenError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: addresses that are "global" by the registry yet must never be fetched (metadata services)
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("169.254.170.2"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def is_public_address(address: IPAddress) -> bool:
    """True when the address is globally routable and not a metadata service."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public_address(address.ipv4_mapped)
    if address in _METADATA_ADDRESSES:
        return False
    return address.is_global and not address.is_multicast


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
                f"{host} resolves to {refused[0]}, which is not a public address; only images "
                "on the public internet are fetched"
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
