"""Pieces the Bokeh pages share (``report.html``, ``study.html``, ``walkforward.html``): the
page style, number formats, times as Bokeh's milliseconds, saving a self-contained file, the
resolution levels that keep long series light, and the linked time-axis panels.

Every file carries Bokeh's JavaScript and CSS inline (``bokeh.resources.INLINE``), so it opens
offline, from disk, with no server.

**Resolution.** Bars are aggregated into OHLC buckets of 1, 4, 16, ... bars (open first, high
max, low min, close last: the min/max of each bucket). A chart shows the finest level with at
most :data:`MAX_CANDLES` candles in view, so a zoomed-out view of 140,000 bars draws a few
hundred candles and a zoomed-in view draws real bars. Lines (equity, indicators) keep every bar
up to :data:`MAX_LINE_POINTS`; beyond that each bucket keeps its lowest and highest equity row.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MAX_CANDLES",
    "MAX_LINE_POINTS",
    "LEVEL_FACTOR",
    "TOOLS",
    "CSS",
    "to_ms",
    "fmt_money",
    "fmt_number",
    "esc",
    "source_columns",
    "save_html",
    "resolution_levels",
    "aggregate_ohlc",
    "line_rows",
    "line_colours",
    "linked_panel",
]

#: Most candles drawn for the visible range; a coarser level is shown above it.
MAX_CANDLES = 1500

#: Line panels keep every bar up to this many; above it, min/max per bucket.
MAX_LINE_POINTS = 50_000

#: Bucket sizes grow by this factor from one resolution level to the next.
LEVEL_FACTOR = 4

#: Tools of the time-axis charts (pan and zoom along time only).
TOOLS = "xpan,xwheel_zoom,box_zoom,reset,save"

#: The pages' style sheet (summary cards, notes, tables), put first in their first ``Div``.
CSS = """
<style>
 body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 12px 18px; }
 h1 { font-size: 20px; margin: 4px 0; } h2 { font-size: 16px; margin: 14px 0 4px 0; }
 .m2k-sub { color: #555; font-size: 13px; }
 .m2k-cards { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
 .m2k-card { border: 1px solid #ddd; border-radius: 6px; padding: 6px 10px; min-width: 110px;
             background: #fafafa; }
 .m2k-card .k { color: #666; font-size: 11px; text-transform: uppercase; }
 .m2k-card .v { font-size: 17px; font-weight: 600; }
 .m2k-card .v.neg { color: #c62828; } .m2k-card .v.pos { color: #2e7d32; }
 .m2k-card .v.warn { color: #e65100; } .m2k-card .w { color: #666; font-size: 11px; }
 .m2k-list { font-size: 13px; } .m2k-list li { margin: 2px 0; }
 .m2k-note { color: #555; font-size: 12px; }
 table.m2k { border-collapse: collapse; font-size: 12px; }
 table.m2k td, table.m2k th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
 table.m2k th { background: #f3f3f3; } table.m2k td.l, table.m2k th.l { text-align: left; }
 table.m2k td.neg { color: #c62828; } table.m2k td.pos { color: #2e7d32; }
 table.m2k-wide th { white-space: normal; max-width: 90px; vertical-align: bottom; }
 table.m2k-wide td { white-space: nowrap; }
 .m2k-banner { border-radius: 6px; padding: 7px 12px; margin: 6px 0; font-size: 14px; }
 .m2k-banner.warn { background: #fff3e0; border: 1px solid #fb8c00; color: #7a3e00;
                    font-weight: 600; }
 .m2k-banner.info { background: #e8f0fe; border: 1px solid #5c85d6; color: #1a3570; }
 .m2k-tables { display: flex; flex-wrap: wrap; gap: 22px; align-items: flex-start; }
 .m2k-tables h3 { font-size: 13px; margin: 8px 0 3px 0; }
</style>
"""


# -------------------------------------------------------------------------------------------
# small helpers
# -------------------------------------------------------------------------------------------


def to_ms(values) -> np.ndarray:
    """Milliseconds of wall time for datetimes, ISO strings (any offset dropped) or Timestamps."""
    idx = pd.DatetimeIndex([_wall(v) for v in values]) if len(values) else pd.DatetimeIndex([])
    return (idx.as_unit("ms").asi8).astype("float64") if len(idx) else np.zeros(0)


def _wall(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize(None) if ts.tzinfo is not None else ts


def fmt_money(x) -> str:
    """Dollars with cents and thousands separators, ``-$1,234.50``; None or NaN as ``n/a``."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"


def fmt_number(x, nd=2, suffix="") -> str:
    """A number with ``nd`` decimals, thousands separators and ``suffix``; None or NaN as
    ``n/a``."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:,.{nd}f}{suffix}"


def esc(x) -> str:
    """``str(x)`` escaped for HTML."""
    return html.escape(str(x))


def source_columns(df: pd.DataFrame) -> dict[str, Any]:
    """A frame's columns for a ColumnDataSource (numbers as arrays, the rest as lists)."""
    out = {}
    for c in df.columns:
        col = df[c]
        out[str(c)] = col.to_numpy() if col.dtype.kind in "biuf" else col.tolist()
    return out


def save_html(layout, path: Path, title: str) -> Path:
    """Write a Bokeh layout to ``path`` as one self-contained HTML file (resources inline),
    atomically; returns the path."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from ..outputs import atomic_write_text

    return atomic_write_text(Path(path), file_html(layout, resources=INLINE, title=title))


# -------------------------------------------------------------------------------------------
# resolution levels
# -------------------------------------------------------------------------------------------


def resolution_levels(n: int, max_candles: int = MAX_CANDLES) -> list[int]:
    """Bucket sizes 1, 4, 16, ... up to the first that shows all ``n`` bars in
    ``max_candles`` candles.

    >>> resolution_levels(140_000)
    [1, 4, 16, 64, 256]
    >>> resolution_levels(1000)
    [1]
    """
    sizes = [1]
    while math.ceil(n / sizes[-1]) > max_candles:
        sizes.append(sizes[-1] * LEVEL_FACTOR)
    return sizes


def aggregate_ohlc(bars: pd.DataFrame, size: int) -> dict[str, np.ndarray]:
    """OHLC buckets of ``size`` bars: x at the bucket's middle, open first, high max, low min,
    close last."""
    t = bars.index.to_numpy(dtype="float64")
    o, h, l_, c = (bars[k].to_numpy(dtype="float64") for k in ("open", "high", "low", "close"))
    if size == 1:
        x, oo, hh, ll, cc = t, o, h, l_, c
    else:
        starts = np.arange(0, len(t), size)
        ends = np.minimum(starts + size, len(t)) - 1
        x = (t[starts] + t[ends]) / 2.0
        oo, cc = o[starts], c[ends]
        hh = np.maximum.reduceat(h, starts)
        ll = np.minimum.reduceat(l_, starts)
    return {
        "t": x,
        "open": oo.astype("float32"),
        "high": hh.astype("float32"),
        "low": ll.astype("float32"),
        "close": cc.astype("float32"),
        "up": (cc >= oo).astype("int8"),
    }


def line_rows(n: int, value: np.ndarray, max_points: int | None = None) -> np.ndarray:
    """Row numbers the line panels keep: all of them, or each bucket's min and max of
    ``value`` (in time order) when there are more than ``max_points``.

    >>> line_rows(5, np.arange(5.0)).tolist()
    [0, 1, 2, 3, 4]
    >>> line_rows(8, np.array([3., 1, 2, 5, 0, 4, 6, 7]), max_points=4).tolist()
    [1, 3, 4, 7]
    """
    max_points = MAX_LINE_POINTS if max_points is None else max_points
    if n <= max_points:
        return np.arange(n)
    size = math.ceil(2 * n / max_points)
    starts = np.arange(0, n, size)
    pad = (-n) % size
    v = np.concatenate([value, np.full(pad, np.nan)]).reshape(-1, size)
    lo = np.nanargmin(np.where(np.isnan(v), np.inf, v), axis=1) + starts
    hi = np.nanargmax(np.where(np.isnan(v), -np.inf, v), axis=1) + starts
    return np.unique(np.concatenate([lo, hi]))


# -------------------------------------------------------------------------------------------
# linked panels
# -------------------------------------------------------------------------------------------


def line_colours(n: int) -> list[str]:
    """``n`` line colours, the base seven repeated."""
    base = ["#ff7f0e", "#1f77b4", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#e377c2"]
    return [base[i % len(base)] for i in range(n)]


def linked_panel(title, x_range, height, y_label, name):
    """A full-width time-axis figure sharing ``x_range`` (zoom and pan move every panel)."""
    from bokeh.plotting import figure

    p = figure(height=height, sizing_mode="stretch_width", x_axis_type="datetime",
               x_range=x_range, tools=TOOLS, active_scroll="xwheel_zoom", title=title,
               name=name)
    p.yaxis.axis_label = y_label
    p.title.text_font_size = "10pt"
    return p
