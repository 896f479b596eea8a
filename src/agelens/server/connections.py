"""Connection-level limits for uvicorn: a deadline for request headers, the keep-alive idle
timeout and a cap on open connections (what a reverse proxy would otherwise enforce).

uvicorn cuts idle keep-alive connections but has no deadline for headers: a client sending
its headers a byte at a time (slowloris) holds a connection for ever; 200 such connections
were never cut off. `HeaderDeadlineProtocol` closes a connection whose request headers are not
complete within `header_timeout_seconds` of the connection opening or of the request's first
byte. Slow bodies are cut by the admission middleware (security.AdmissionMiddleware).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agelens.server.settings import Settings

logger = logging.getLogger(__name__)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose headers come too slowly."""

    header_timeout_seconds = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline as the connection opens."""
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_message_begin(self) -> None:
        """A request starts (on a new or a kept-alive connection): its headers have a deadline."""
        super().on_message_begin()
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        """The headers are in: no deadline any more (the body has its own)."""
        self._disarm_header_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline with the connection."""
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(
            self.header_timeout_seconds, self._headers_too_slow
        )

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
        self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            logger.debug("closing %s: no complete request headers in time", self.client)
            self.transport.close()


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run`/`uvicorn.Config`: the header deadline protocol,
    the keep-alive idle timeout and the cap on open connections (beyond it uvicorn answers
    requests with a plain 503)."""
    protocol = type(
        "HeaderDeadlineProtocol",
        (HeaderDeadlineProtocol,),
        {"header_timeout_seconds": settings.header_timeout_seconds},
    )
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": 64 * 1024,
    }
