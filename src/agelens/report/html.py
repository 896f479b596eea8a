"""Building blocks shared by the HTML reports: the stylesheet, escaping, number formatting,
tables and figures. Plain strings, no template engine; everything is escaped on the way in."""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Sequence
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1100px; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
/* A wide table scrolls inside itself, never the page (phones: 360-390 px). */
table { border-collapse: collapse; margin: .6rem 0; display: block; max-width: 100%;
        overflow-x: auto; }
td { overflow-wrap: anywhere; }
th, td { padding: .2rem .7rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.run td, table.run th, table.text td, table.text th { text-align: left; }
code { background: #f4f4f4; padding: .1rem .3rem; border-radius: 3px; word-break: break-all; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.plots figure { margin: 0; }
.plots svg { max-width: 100%; height: auto; }
.note, .empty { color: #666; }
.caveat { background: #fff8e6; border-left: 4px solid #d9822b; padding: .5rem 1rem; }
footer { margin-top: 3rem; color: #888; font-size: 12px; }
"""


def esc(value: object) -> str:
    """`value` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def num(value: Any, kind: str = "float") -> str:
    """A number for a table cell: `float` (2 decimals), `pct`, `int` or `signed`; None is –."""
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * float(value):.1f}%"
    if kind == "int":
        return f"{int(value)}"
    if kind == "signed":
        return f"{float(value):+.2f}"
    return f"{float(value):.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    """A table; `header` is escaped here, the cells must already be HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(svg: str, caption: str) -> str:
    """An inline SVG plot with its caption (escaped)."""
    return f"<figure>{svg}<figcaption class='note'>{esc(caption)}</figcaption></figure>"


def empty(text: str) -> str:
    """The sentence shown where a section has nothing to plot."""
    return f"<p class='empty'>{esc(text)}</p>"


def page(heading: str, header: str, sections: Sequence[tuple[str, str]], body: str) -> str:
    """A whole self-contained report page: `heading` (escaped), `header` HTML under it, a
    navigation line of (anchor, title) `sections`, the `body` HTML and a dated footer."""
    from agelens import __version__

    nav = " · ".join(f'<a href="#{anchor}">{esc(title)}</a>' for anchor, title in sections)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(heading)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(heading)}</h1>{header}<nav>{nav}</nav></header>"
        f"<main>{body}</main>"
        f"<footer>agelens {esc(__version__)} · generated {stamp}</footer>"
        "</body></html>\n"
    )
