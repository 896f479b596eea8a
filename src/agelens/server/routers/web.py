"""The web page: `/` (the page, with its security headers), its files under `/static` (mounted
by `create_app` from `web_dir()`), and `/v1/examples` (the example photos it offers)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agelens.server.deps import ServiceDep
from agelens.server.examples import is_example_name
from agelens.server.examples import media_type as example_media_type

__all__ = ["router", "web_dir"]

router = APIRouter(tags=["web"])

_PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def web_dir() -> Path:
    """The folder of the page's files, inside the installed package."""
    return Path(str(resources.files("agelens.server") / "web"))


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(web_dir() / "index.html", headers=_PAGE_SECURITY_HEADERS)


@router.get("/v1/examples")
async def examples(service: ServiceDep) -> dict[str, Any]:
    """Example photos for the web page (`AGELENS_EXAMPLES_DIR`: a folder or an S3 prefix)."""
    source = service.examples
    if source is None:
        return {
            "examples": [],
            "reason": "no examples folder is configured (AGELENS_EXAMPLES_DIR)",
        }
    names = await anyio.to_thread.run_sync(source.names)
    reason = None if names else f"{source.description} holds no photo"
    return {"examples": names, "reason": reason}


@router.get("/v1/examples/{name}", response_class=Response)
async def example(name: str, service: ServiceDep) -> Response:
    """One example photo by file name (no paths)."""
    source = service.examples
    if source is None or not is_example_name(name):
        raise StarletteHTTPException(404, f"no example named {name!r}")
    data = await anyio.to_thread.run_sync(
        lambda: source.read(name, max_bytes=service.settings.max_body_bytes)
    )
    return Response(data, media_type=example_media_type(name))
