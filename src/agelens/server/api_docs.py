"""The service's API reference page (/docs, Swagger UI), served offline.

FastAPI's own page loads Swagger UI from a CDN, so it is blank where the service cannot reach
the internet (an air-gapped host, a locked-down cluster). Here the same page is built with
FastAPI's `get_swagger_ui_html`, pointed at the copy of the Swagger UI 5 bundle that PyPI's
`fastapi-offline` ships (part of the `server` extra). `swagger-ui-bundle` on PyPI ships Swagger
UI 4, which cannot read the OpenAPI 3.1 documents FastAPI writes. There is no /redoc: ReDoc
2.5 stops at the `$defs` references of this service's schema ("Invalid reference token").
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_URL", "install_api_docs"]

#: Where the Swagger UI bundle is served.
ASSETS_URL = "/docs-assets"
_OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


def _assets_dir() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


def install_api_docs(app: FastAPI) -> None:
    """Add /docs to an app created with `docs_url=None, redoc_url=None`."""
    app.mount(ASSETS_URL, StaticFiles(directory=_assets_dir()), name="api-docs")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - API reference",
            oauth2_redirect_url=f"{root}{_OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
        )

    @app.get(_OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
