"""The dependencies the routes share, in one place: the service, the jobs manager, and the key
and rate-limit checks. Routes take them through the `Annotated` aliases (`ServiceDep`,
`Authorized`, ...); tests can swap any of them with `app.dependency_overrides`.

Every route but the unauthenticated probes (/health, /ready, /healthz) and the web page's
files checks the key and the rate limit through one of these, so every door of the service
has the same limits.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from agelens.server.errors import UnauthorizedError
from agelens.server.jobs import JobManager
from agelens.server.security import authenticate, key_matches
from agelens.server.service import Service
from agelens.server.settings import hash_api_key

__all__ = [
    "Authorized",
    "AuthorizedCompat",
    "JobManagerDep",
    "JobOwner",
    "ServiceDep",
    "check_presented_key",
]


def _service(connection: HTTPConnection) -> Service:
    """The app's Service (for HTTP routes and WebSockets alike)."""
    service: Service = connection.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(_service)]


def _require_key(request: Request, service: ServiceDep) -> str:
    identity = authenticate(request, service.key_digests)
    service.limiter.check(identity)
    return identity


def _require_key_or_basic(request: Request, service: ServiceDep) -> str:
    identity = authenticate(
        request,
        service.key_digests,
        allow_basic=True,
        basic_username=service.settings.basic_auth_username,
    )
    service.limiter.check(identity)
    return identity


#: The caller's identity (key digest prefix, or address without keys), key and limit checked.
Authorized = Annotated[str, Depends(_require_key)]
#: As `Authorized`, also accepting HTTP basic auth with the key as password (the compat routes).
AuthorizedCompat = Annotated[str, Depends(_require_key_or_basic)]


def _job_manager(request: Request) -> JobManager:
    manager: JobManager = request.app.state.jobs
    return manager


JobManagerDep = Annotated[JobManager, Depends(_job_manager)]


def _job_owner(service: ServiceDep, identity: Authorized) -> str | None:
    """The owner recorded on jobs, key and limit checked (None without keys: then a job id is
    all it takes to read a job, and ids are random 128-bit values)."""
    return identity if service.key_digests else None


JobOwner = Annotated[str | None, Depends(_job_owner)]


def check_presented_key(service: Service, key: object, client_host: str) -> str:
    """The identity for a key presented outside the HTTP headers (the live WebSocket's start
    message), with the rate limit checked: the same identity `Authorized` gives for that key.
    Raises UnauthorizedError (no key or a wrong key where keys are configured) or
    RateLimitedError."""
    digests = service.key_digests
    if digests and not (isinstance(key, str) and key_matches(key, digests)):
        raise UnauthorizedError("an API key is required, or the key is wrong")
    identity = f"key:{hash_api_key(str(key))[:16]}" if digests else f"addr:{client_host}"
    service.limiter.check(identity)
    return identity
