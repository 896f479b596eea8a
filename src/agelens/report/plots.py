"""Small plots for HTML reports (`agelens eval --html`, `agelens report`). Needs the `report`
extra (matplotlib); it is imported on first use, never at import of agelens.

Plot functions return a `Chart` (render it with `.svg()` for HTML or `.png()` for a file) or,
for the older SVG-only ones, the SVG string itself. The SVG is an `<svg>` element ready to
inline in HTML5: no XML prolog, no DOCTYPE, no metadata, no namespace URLs, text kept as text,
and element ids prefixed so that several plots can share one page without id clashes. Nothing
in the output refers to anything outside it.
"""

from __future__ import annotations

import functools
import io
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec

from agelens.errors import require_extra

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PALETTE = ("#3b6ea8", "#d9822b", "#4c9a5a", "#b5455b", "#7a5aa6", "#8a8a8a")
_RC: Any = {  # matplotlib types its keys as a Literal union
    "svg.fonttype": "none",  # text as <text>, not glyph paths: smaller and searchable
    "svg.hashsalt": "agelens",  # deterministic ids
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_counter = itertools.count(1)
_P = ParamSpec("_P")


def _styled(draw: Callable[_P, str]) -> Callable[_P, str]:
    """Run a plot function under the report's matplotlib settings (read at draw and save)."""

    @functools.wraps(draw)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> str:
        require_extra("matplotlib", "report")
        import matplotlib

        with matplotlib.rc_context(_RC):
            return draw(*args, **kwargs)

    return wrapper


class Chart:
    """A drawn plot, rendered on demand as inline SVG (for HTML) or as PNG bytes (for files).

    Rendering applies the report's matplotlib settings, which matplotlib reads at save time.
    """

    def __init__(self, figure: Figure) -> None:
        self.figure = figure

    def svg(self) -> str:
        """The `<svg>` element, safe to inline (see the module doc)."""
        import matplotlib

        with matplotlib.rc_context(_RC):
            return _svg(self.figure)

    def png(self, dpi: int = 150) -> bytes:
        """The plot as a PNG file's bytes."""
        import matplotlib

        buffer = io.BytesIO()
        with matplotlib.rc_context(_RC):
            self.figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
        return buffer.getvalue()


def _charted(draw: Callable[_P, Figure]) -> Callable[_P, Chart]:
    """A function drawing a Figure (under the report's settings) becomes one returning a Chart."""

    @functools.wraps(draw)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Chart:
        require_extra("matplotlib", "report")
        import matplotlib

        with matplotlib.rc_context(_RC):
            return Chart(draw(*args, **kwargs))

    return wrapper


def _as_svg(chart: Callable[_P, Chart]) -> Callable[_P, str]:
    """A Chart-returning plot function as one returning its inline SVG."""

    @functools.wraps(chart)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> str:
        return chart(*args, **kwargs).svg()

    return wrapper


def _whole_number_ticks() -> Any:
    """Tick positions for an axis of counts: whole numbers only (a count axis from 0 to 2
    would otherwise be ticked at 0.5, 1.0, 1.5)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _figure(width: float = 5.0, height: float = 3.4) -> Figure:
    """A Figure without pyplot: no global backend state, safe in threads and servers."""
    require_extra("matplotlib", "report")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return clean_svg(buffer.getvalue(), prefix=f"p{next(_counter)}-")


def clean_svg(text: str, prefix: str) -> str:
    """The `<svg>` element of a matplotlib SVG document, made safe to inline (see module doc)."""
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    ids = re.findall(r'\bid="([^"]+)"', text)
    for name in sorted(set(ids), key=len, reverse=True):
        escaped = re.escape(name)
        text = re.sub(rf'\bid="{escaped}"', f'id="{prefix}{name}"', text)
        text = re.sub(rf"#{escaped}\b", f"#{prefix}{name}", text)
    return text.strip()


def _apply(axes: Axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_title(title, fontsize=10, loc="left")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)


@_styled
def scatter_identity(
    true: Sequence[float],
    predicted: Sequence[float],
    *,
    title: str = "Predicted vs true age",
    xlabel: str = "true age (years)",
    ylabel: str = "predicted age (years)",
    fit: bool = True,
) -> str:
    """Scatter of predicted against true values, with the identity line (and a least-squares
    line when `fit` and there are two or more distinct true values)."""
    import numpy as np

    figure = _figure(5.0, 4.2)
    axes = figure.add_subplot()
    x = np.asarray(true, dtype=float)
    y = np.asarray(predicted, dtype=float)
    top = max(float(x.max()) if len(x) else 0.0, float(y.max()) if len(y) else 0.0, 10.0) * 1.05
    axes.plot([0, top], [0, top], color="#444", linewidth=1, linestyle="--", label="identity")
    axes.scatter(x, y, s=12, alpha=0.6, color=PALETTE[0], edgecolors="none", label="image")
    if fit and len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        axes.plot(
            [0, top],
            [intercept, intercept + slope * top],
            color=PALETTE[1],
            linewidth=1.2,
            label=f"fit (slope {slope:.2f})",
        )
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.set_aspect("equal")
    axes.legend(loc="upper left", frameon=False)
    _apply(axes, title, xlabel, ylabel)
    return _svg(figure)


@_charted
def bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
    reference: float | None = None,
    reference_label: str | None = None,
    counts: Sequence[int] | None = None,
    whole_numbers: bool = False,
) -> Figure:
    """Grouped bars, one group per category and one bar per series (None is left blank);
    optional horizontal reference line and `n=` labels under the categories. `whole_numbers`:
    the values are counts, so the value axis has no fractional ticks."""
    import numpy as np

    figure = _figure(max(4.0, 0.6 * len(categories) * max(1, len(series)) + 1.5), 3.4)
    axes = figure.add_subplot()
    positions = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else float(v) for v in values]
        offset = (k - (len(series) - 1) / 2) * width
        axes.bar(positions + offset, heights, width, label=name, color=PALETTE[k % len(PALETTE)])
    if reference is not None:
        axes.axhline(reference, color="#444", linewidth=1, linestyle="--", label=reference_label)
    labels = list(categories)
    if counts is not None:
        labels = [f"{c}\nn={n}" for c, n in zip(categories, counts, strict=True)]
    axes.set_xticks(positions, labels)
    axes.axhline(0, color="#999", linewidth=0.8)
    if ylim is not None:
        axes.set_ylim(*ylim)
    if whole_numbers:
        axes.yaxis.set_major_locator(_whole_number_ticks())
    if len(series) > 1 or reference_label:  # below the plot: bars near 1.0 leave no room inside
        handles, names = axes.get_legend_handles_labels()
        figure.legend(
            handles, names, loc="outside lower center", ncols=len(names), frameon=False, fontsize=8
        )
    _apply(axes, title, xlabel, ylabel)
    return figure


bar_chart = _as_svg(bars)
"""`bars` as inline SVG (what `agelens eval --html` inlines)."""


@_styled
def reliability_diagram(
    bins: Sequence[Mapping[str, Any]],
    *,
    title: str = "Gender probability calibration",
    xlabel: str = "predicted probability of the reported gender",
    ylabel: str = "share correct",
) -> str:
    """Reliability diagram from bins with `low`, `high`, `n`, `confidence`, `accuracy` (as in
    agelens.evaluate.gender_calibration): accuracy bars per bin, mean-confidence markers, the
    diagonal of perfect calibration, and each bin's count."""
    figure = _figure(5.0, 3.8)
    axes = figure.add_subplot()
    lows = [float(b["low"]) for b in bins]
    highs = [float(b["high"]) for b in bins]
    left = min(lows) if lows else 0.0
    axes.plot([left, 1], [left, 1], color="#444", linewidth=1, linestyle="--", label="perfect")
    full = [b for b in bins if b["n"]]
    axes.bar(
        [(float(b["low"]) + float(b["high"])) / 2 for b in full],
        [float(b["accuracy"]) for b in full],
        [float(b["high"]) - float(b["low"]) for b in full],
        color=PALETTE[0],
        alpha=0.8,
        edgecolor="white",
        label="accuracy",
    )
    axes.plot(
        [float(b["confidence"]) for b in full],
        [float(b["confidence"]) for b in full],
        "o",
        color=PALETTE[1],
        markersize=4,
        label="mean confidence",
    )
    for b in full:
        axes.annotate(
            f"{b['n']}",
            ((float(b["low"]) + float(b["high"])) / 2, 0.02),
            ha="center",
            fontsize=7,
            color="white" if float(b["accuracy"]) > 0.1 else "#444",
        )
    axes.set_xlim(left, max(highs) if highs else 1.0)
    axes.set_ylim(0, 1.02)
    axes.legend(loc="upper left", frameon=False, fontsize=8)
    _apply(axes, title, xlabel, ylabel)
    return _svg(figure)


@_charted
def histogram(
    series: Mapping[str, Sequence[float]],
    edges: Sequence[float],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "count",
    stacked: bool = True,
    log_x: bool = False,
) -> Figure:
    """Histogram over the bin `edges`, one (stacked) colour per series; values outside the
    edges are clipped into the first or last bin, so none is silently dropped."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    figure = _figure(5.0, 3.4)
    axes = figure.add_subplot()
    low, high = float(edges[0]), float(edges[-1])
    names = list(series)
    values = [np.clip(np.asarray(series[n], dtype=float), low, high) for n in names]
    colors = [_series_color(n, k) for k, n in enumerate(names)]
    if any(len(v) for v in values):
        axes.hist(
            values,
            bins=[float(e) for e in edges],
            stacked=stacked,
            label=[f"{n} (n={len(v)})" for n, v in zip(names, values, strict=True)],
            color=colors,
            edgecolor="white",
            linewidth=0.5,
        )
        if len(names) > 1:
            axes.legend(loc="upper right", frameon=False, fontsize=8)
    if log_x:
        axes.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(plain)
    axes.set_xlim(low, high)
    axes.yaxis.set_major_locator(_whole_number_ticks())  # counts: no 0.5 ticks
    _apply(axes, title, xlabel, ylabel)
    return figure


@_charted
def pyramid(
    bands: Sequence[str],
    left: Sequence[int],
    right: Sequence[int],
    *,
    left_label: str,
    right_label: str,
    title: str,
    xlabel: str = "faces",
) -> Figure:
    """A population pyramid: one row per band (youngest at the bottom), `left` counts drawn
    to the left of the axis and `right` counts to the right, each bar labelled with its count."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    figure = _figure(5.0, max(2.6, 0.32 * len(bands) + 1.2))
    axes = figure.add_subplot()
    positions = np.arange(len(bands))
    left_bars = axes.barh(
        positions, [-v for v in left], color=_series_color(left_label, 0), label=left_label
    )
    right_bars = axes.barh(
        positions, list(right), color=_series_color(right_label, 1), label=right_label
    )
    axes.bar_label(left_bars, labels=[str(v) if v else "" for v in left], padding=2, fontsize=7)
    axes.bar_label(right_bars, labels=[str(v) if v else "" for v in right], padding=2, fontsize=7)
    widest = max([*left, *right, 1])
    axes.set_xlim(-widest * 1.25, widest * 1.25)
    axes.set_yticks(positions, list(bands))
    axes.axvline(0, color="#444", linewidth=0.8)
    axes.xaxis.set_major_locator(_whole_number_ticks())  # counts: no 0.5 ticks
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{abs(value):g}"))
    axes.legend(loc="upper right", frameon=False, fontsize=8)
    _apply(axes, title, xlabel, "")
    return figure


@_charted
def stacked_shares(
    categories: Sequence[str],
    counts: Mapping[str, Sequence[int]],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "share",
    reference: float | None = None,
) -> Figure:
    """Bars of height 1 per category, split into the share of each series (categories with
    no count are left blank); `n=` under each category, optional horizontal reference line."""
    import numpy as np

    figure = _figure(max(4.0, 0.55 * len(categories) + 1.5), 3.4)
    axes = figure.add_subplot()
    positions = np.arange(len(categories))
    matrix = np.asarray([list(v) for v in counts.values()], dtype=float).reshape(
        len(counts), len(categories)
    )
    totals = matrix.sum(axis=0)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    bottom = np.zeros(len(categories))
    for k, name in enumerate(counts):
        axes.bar(positions, shares[k], 0.8, bottom=bottom, label=name, color=_series_color(name, k))
        bottom += shares[k]
    if reference is not None:
        axes.axhline(reference, color="#444", linewidth=1, linestyle="--")
    labels = [f"{c}\nn={int(n)}" for c, n in zip(categories, totals, strict=True)]
    axes.set_xticks(positions, labels)
    axes.set_ylim(0, 1.0)
    handles, names = axes.get_legend_handles_labels()
    figure.legend(
        handles, names, loc="outside lower center", ncols=len(names), frameon=False, fontsize=8
    )
    _apply(axes, title, xlabel, ylabel)
    return figure


#: the colours of the two gender estimates, the same as the web page's boxes
GENDER_COLORS = {"F": "#c2255c", "M": "#1971c2"}


def _series_color(name: str, index: int) -> str:
    first_word = name.split(" ")[0]
    return GENDER_COLORS.get(first_word, PALETTE[index % len(PALETTE)])
