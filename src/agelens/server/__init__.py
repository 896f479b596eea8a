"""The REST service with its web page: `create_app(settings)`, run by `agelens serve`.

Needs the `server` extra (`pip install 'agelens[server]'`). `lambda_handler` is the AWS Lambda
entry point (API Gateway HTTP API), which needs the `lambda` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agelens.errors import require_extra

if TYPE_CHECKING:
    from agelens.server.app import create_app
    from agelens.server.settings import Settings

__all__ = ["Settings", "create_app", "lambda_handler"]


def __getattr__(name: str) -> Any:
    if name in {"create_app", "Settings"}:
        require_extra("fastapi", "server")
        from agelens.server import app, settings

        return app.create_app if name == "create_app" else settings.Settings
    if name == "lambda_handler":
        from agelens.server.aws_lambda import lambda_handler

        return lambda_handler
    raise AttributeError(f"module 'agelens.server' has no attribute {name!r}")
