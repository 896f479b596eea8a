"""MkDocs hooks of the docs site (mkdocs.yml `hooks:`).

The CLI reference is generated from the Typer app at build time, so it cannot drift from the
command: `docs/cli.md` holds the marker below and this hook replaces it with Typer's own
Markdown rendering of every command (typer.cli.get_docs_for_click, what `typer ... utils docs`
prints).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

CLI_MARKER = "<!-- cli-reference -->"
_SRC = Path(__file__).resolve().parent.parent / "src"


def cli_reference() -> str:
    """Markdown for every `agelens` command, options and defaults included."""
    if str(_SRC) not in sys.path:
        sys.path.insert(0, str(_SRC))
    import click
    import typer.main
    from typer.cli import get_docs_for_click

    from agelens.cli import app

    command = typer.main.get_command(app)
    context = click.Context(command, info_name="agelens")
    return get_docs_for_click(obj=command, ctx=context, name="agelens", indent=1)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the CLI marker with the generated reference."""
    if CLI_MARKER in markdown:
        return markdown.replace(CLI_MARKER, cli_reference())
    return markdown
