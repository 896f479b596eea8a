"""The SSRF-safe URL fetcher, kept importable from its old place: it lives in `agelens.urlfetch`
(the core), so batch and video can use it without importing the server."""

from agelens.errors import UrlFetchError, UrlForbiddenError
from agelens.urlfetch import (
    IPV4_REFUSED,
    IPV6_RULES,
    FetchedImage,
    IPAddress,
    IPNetwork,
    UrlFetcher,
    address_verdict,
    embedded_ipv4,
    is_public_address,
)

__all__ = [
    "IPV4_REFUSED",
    "IPV6_RULES",
    "FetchedImage",
    "IPAddress",
    "IPNetwork",
    "UrlFetchError",
    "UrlFetcher",
    "UrlForbiddenError",
    "address_verdict",
    "embedded_ipv4",
    "is_public_address",
]
