"""The interactive, self-contained ``report.html`` of a backtest, built with Bokeh
(:func:`write_report_html`); ``study.html`` and ``walkforward.html`` are in
:mod:`m2k_bt.report.study_html`, the pieces the pages share in :mod:`m2k_bt.report.bokeh_parts`.

The file carries Bokeh's JavaScript and CSS inline (``bokeh.resources.INLINE``), so it opens
offline, from disk, with no server. The charts are Bokeh glyphs; the only JavaScript written
here is two short Bokeh ``CustomJS`` callbacks (which price resolution to show for the visible
range, and fitting the price axis to it).

``report.html``, top to bottom:

- summary cards: the headline numbers of report.json;
- the price chart: candles at the resolution the zoom allows, every entry (triangle up: long,
  down: short) and exit (shape and colour by exit reason) joined by a line green for a winner and
  red for a loser, stop and target levels when the trades log them, roll markers (grey dashed
  verticals), margin events (magenta diamonds), and the strategy's price indicators (SMAs,
  bands) as lines. A hover on a trade mark shows its row of trades.csv;
- linked panels below (zoom and pan move them all): equity, drawdown (%), position
  (contracts), initial margin used vs equity, and the strategy's oscillators (ATR, ADX, RSI) when
  it has any;
- monthly returns heatmap, P&L distribution, costs breakdown, Kelly log (fraction wanted vs
  used, coloured by which cap bound), the trade table (click a header to sort), warnings and
  data repairs.

**Resolution** (see :mod:`m2k_bt.report.bokeh_parts`): the price chart shows the finest OHLC
level with at most :data:`~m2k_bt.report.bokeh_parts.MAX_CANDLES` candles in view; lines keep
every bar up to :data:`~m2k_bt.report.bokeh_parts.MAX_LINE_POINTS`, beyond that each bucket's
lowest and highest equity row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .bokeh_parts import (
    CSS,
    MAX_CANDLES,
    TOOLS,
    aggregate_ohlc,
    esc,
    fmt_money,
    fmt_number,
    line_colours,
    line_rows,
    linked_panel,
    resolution_levels,
    save_html,
    source_columns,
    to_ms,
)

# TEMPORARY: optimize/study.py and optimize/walkforward.py (another branch) still import these
# from here; remove once they import them from m2k_bt.report (or .study_html).

__all__ = [
    "EXIT_MARKERS",
    "MAX_TRADE_MARKS",
    "report_layout",
    "write_report_html",
]

#: Exit reason -> (Bokeh marker, colour) on the price chart.
EXIT_MARKERS = {
    "signal": ("x", "#222222"),
    "stop": ("square", "#d62728"),
    "target": ("circle", "#2ca02c"),
    "session_close": ("diamond", "#9467bd"),
    "margin_call": ("star", "#e377c2"),
    "roll": ("hex", "#7f7f7f"),
    "end": ("plus", "#1f77b4"),
}
_OTHER_EXIT = ("asterisk", "#8c564b")
#: Most trades drawn as marks in view; zoomed out past it the entries are a density strip.
MAX_TRADE_MARKS = 150
#: Number formats of trade columns in the hover (Bokeh's numeral.js syntax).
_TOOLTIP_FORMATS = {
    **dict.fromkeys(("gross_pnl", "commission", "net_pnl"), "{$0,0.00}"),
    **dict.fromkeys(("entry_price", "exit_price", "stop_level", "target_level"), "{0,0.00}"),
    **dict.fromkeys(("kelly_p", "kelly_b", "kelly_f"), "{0.0000}"),
    "ticks": "{0.0}",
}
_UP, _DOWN = "#26a69a", "#ef5350"
#: Trade table column widths (px): the ISO times need 190 to show in full.
_COLUMN_WIDTHS = {"entry_dt": 190, "exit_dt": 190, "exit_reason": 100, "direction": 70,
                  "contracts": 70}


# -------------------------------------------------------------------------------------------
# data of a run
# -------------------------------------------------------------------------------------------


def _bars_of(result: Any) -> pd.DataFrame | None:
    """OHLC (+ roll) per bar from the strategy's data lines, indexed by wall time (ms)."""
    strategy = getattr(result, "strategy", None)
    data = getattr(strategy, "datas", [None])[0] if strategy is not None else None
    n = getattr(result, "bars", None)
    if data is not None:
        try:
            dt = np.asarray(data.datetime.array, dtype="float64")
            cols = {k: np.asarray(getattr(data, k).array, dtype="float64")
                    for k in ("open", "high", "low", "close")}
        except (AttributeError, IndexError):
            dt = None
        if dt is not None and len(dt) and (n is None or len(dt) == n) and all(
            len(v) == len(dt) for v in cols.values()
        ):
            # backtrader's day number: 719163.0 is 1970-01-01; round to the second
            ms = np.round((dt - 719163.0) * 86400.0) * 1000.0
            frame = pd.DataFrame(cols, index=ms)
            roll = getattr(data.lines, "roll", None)
            if roll is not None and len(roll.array) == len(dt):
                frame["roll"] = np.nan_to_num(np.asarray(roll.array, dtype="float64"))
            return frame
    equity = getattr(result, "equity", None)
    if equity is not None and len(equity) and "close" in equity:
        close = equity["close"].to_numpy(dtype="float64")
        return pd.DataFrame(
            {"open": close, "high": close, "low": close, "close": close},
            index=to_ms(equity.index),
        )
    return None


def _indicators_of(result: Any, n: int, bars: pd.DataFrame | None = None
                   ) -> tuple[dict, dict, list[str]]:
    """(price overlays, oscillators, left out): label -> values for the strategy's
    indicators with one value per bar and a signal strategy's extra columns; ``left out``
    names each one that could not be drawn, and why (said on the page)."""
    import backtrader as bt

    strategy = getattr(result, "strategy", None)
    overlay: dict[str, np.ndarray] = {}
    panel: dict[str, np.ndarray] = {}
    left_out: list[str] = []
    try:
        indicators = strategy.getindicators()
    except AttributeError:  # no strategy object: a kernel run
        indicators = []

    def put(target: dict, label: str, arr: np.ndarray) -> None:
        while label in target:
            label += "'"
        target[label] = arr

    for ind in indicators:
        if not isinstance(ind, bt.Indicator):
            continue  # a line operation such as data.high(-1) inside an indicator's input
        plotinfo = getattr(ind, "plotinfo", None)
        if plotinfo is not None and not getattr(plotinfo, "plot", True):
            continue  # an internal helper (backtrader would not plot it either)
        try:
            base = ind.plotlabel().replace(" (", "(")
        except Exception:  # noqa: BLE001 - a label is a nicety
            base = type(ind).__name__
        try:
            aliases = ind.lines.getlinealiases()
            for i, alias in enumerate(aliases):
                arr = np.asarray(ind.lines[i].array, dtype="float64")
                if len(arr) != n:
                    left_out.append(f"{base} {alias} ({len(arr)} values for {n} bars)")
                    continue
                label = base if len(aliases) == 1 else f"{base} {alias}"
                subplot = getattr(plotinfo, "subplot", True) if plotinfo is not None else True
                put(panel if subplot else overlay, label, arr)
        except Exception as exc:  # noqa: BLE001 - one indicator must not cost the page
            left_out.append(f"{base} ({type(exc).__name__}: {exc})")
    extras = getattr(strategy, "signal_indicators", None) or getattr(
        getattr(result, "kernel", None), "indicators", None) or {}
    for label, arr in extras.items():
        arr = np.asarray(arr, dtype="float64")
        if len(arr) != n:
            left_out.append(f"{label} ({len(arr)} values for {n} bars)")
            continue
        on_price = False
        if bars is not None and np.isfinite(arr).any():
            mid = float(np.nanmedian(arr))
            on_price = float(bars["low"].min()) <= mid <= float(bars["high"].max())
        put(overlay if on_price else panel, label, arr)
    return overlay, panel, left_out


def _trade_frame(result: Any) -> pd.DataFrame:
    from .records import trade_table

    return trade_table(result)


# -------------------------------------------------------------------------------------------
# the run report
# -------------------------------------------------------------------------------------------


def _cards_html(report: dict) -> str:
    res = report.get("results", {})
    inp = report.get("inputs", {})
    data = inp.get("data", {})
    strat = inp.get("strategy", {}) or {}
    root = (inp.get("contract") or {}).get("root") or ""

    def sign(x):
        return "" if x is None else ("neg" if x < 0 else "pos")

    ov = report.get("overview") or {}
    an = report.get("analyzers") or {}
    trades_an, margin_an = an.get("trades") or {}, an.get("margin") or {}
    bh = ov.get("buy_and_hold") or {}
    dd = ov.get("drawdowns") or {}
    cards = [
        ("Final equity", fmt_money(res.get("final_value")), ""),
        ("Net profit", fmt_money(res.get("net_profit")), sign(res.get("net_profit"))),
        ("Return", fmt_number(res.get("return_pct"), 2, " %"), sign(res.get("return_pct"))),
        ("CAGR", fmt_number(None if res.get("cagr") is None else 100 * res["cagr"], 2, " %"),
         sign(res.get("cagr"))),
        ("Sharpe", fmt_number(res.get("sharpe")), ""),
        ("Sortino", fmt_number(res.get("sortino")), ""),
        ("Calmar", fmt_number(res.get("calmar")), ""),
        ("Max drawdown", f"{fmt_money(res.get('max_drawdown'))} "
         f"({fmt_number(res.get('max_drawdown_pct'), 1, ' %')})", "neg"),
        ("Trades", fmt_number(res.get("trades"), 0), ""),
        ("Win rate", fmt_number(None if res.get("win_rate") is None else 100 * res["win_rate"], 1,
                          " %"), ""),
        ("Profit factor", fmt_number(res.get("profit_factor")), ""),
        ("Expectancy", fmt_money(res.get("expectancy")), sign(res.get("expectancy"))),
        ("SQN", fmt_number(res.get("sqn")), ""),
        ("Commission", fmt_money(res.get("commission")), ""),
        ("Slippage", fmt_money(res.get("slippage")), ""),
        ("Margin calls", fmt_number(res.get("margin_calls"), 0), ""),
        ("Buy & hold, 1 contract", f"{fmt_money(bh.get('net_profit'))} "
         f"({fmt_number(bh.get('return_pct'), 1, ' %')})", sign(bh.get("net_profit"))),
        ("Time in market", fmt_number(margin_an.get("time_in_market_pct"), 1, " %"), ""),
        ("Longest drawdown", fmt_number(dd.get("max_duration_days"), 1, " days"), ""),
        ("Peak margin / equity", fmt_number(margin_an.get("peak_margin_pct_of_equity"), 1,
                                            " %"), ""),
        ("Peak leverage", fmt_number(margin_an.get("peak_leverage"), 1, "x"), ""),
        *((label, fmt_money(trades_an.get(key)), sign(trades_an.get(key)))
          for label, key in (("Largest win", "largest_win"), ("Largest loss", "largest_loss"),
                             ("Average win", "avg_win"), ("Average loss", "avg_loss"))),
    ]
    head = (
        f"<h1>{esc(root)} {esc(strat.get('name') or 'strategy')}: "
        f"{esc(data.get('first_dt') or '?')} &rarr; {esc(data.get('last_dt') or '?')}</h1>"
        f"<div class='m2k-sub'>{fmt_number(data.get('bars'), 0)} bars from "
        f"{esc(data.get('path') or 'memory')}; starting equity "
        f"{fmt_money(res.get('start_value'))}; sizer "
        f"{esc((inp.get('sizer') or {}).get('name') or 'none')}; "
        f"{esc(changed_params_text(ov.get('changed_params') or {}))}</div>"
    )
    body = "".join(
        f"<div class='m2k-card'><div class='k'>{esc(k)}</div>"
        f"<div class='v {cls}'>{esc(v)}</div></div>"
        for k, v, cls in cards
    )
    return CSS + head + _notices_html(ov) + f"<div class='m2k-cards'>{body}</div>"


def changed_params_text(changed: dict) -> str:
    """The parameters that differ from the defaults, for the page header.

    >>> changed_params_text({"strategy": {"fast": 10}, "sizer": {}})
    'parameters changed from the defaults: fast=10'
    >>> changed_params_text({"strategy": {}, "sizer": {}})
    'every parameter at its default'
    """
    items = [f"{k}={v}" for part in ("strategy", "sizer")
             for k, v in (changed.get(part) or {}).items()]
    if not items:
        return "every parameter at its default"
    return "parameters changed from the defaults: " + ", ".join(items)


def _notices_html(ov: dict) -> str:
    """Banners above the cards: synthetic data, entries the sizer declined."""
    out = []
    if ov.get("data_notice"):
        out.append(f"<div class='m2k-banner warn'>{esc(ov['data_notice'])}</div>")
    declined = ov.get("entries_declined") or {}
    if declined.get("declined"):
        from .overview import declined_text

        hint = f" Why: {esc(declined['hint'])}." if declined.get("hint") else ""
        out.append(f"<div class='m2k-banner info' id='m2k-declined'>Entries declined by the "
                   f"sizer: {esc(declined_text(declined))}.{hint}</div>")
    return "".join(out)


def _price_figure(bars, trades, overlay, margin_events, x_range):
    from bokeh.models import (
        ColumnDataSource,
        CustomJS,
        HoverTool,
        Range1d,
        Span,
    )
    from bokeh.plotting import figure
    from bokeh.transform import factor_cmap, factor_mark, linear_cmap

    n = len(bars)
    lo, hi = float(np.nanmin(bars["low"])), float(np.nanmax(bars["high"]))
    pad = (hi - lo) * 0.05 or 1.0
    p = figure(
        height=430, sizing_mode="stretch_width", x_axis_type="datetime", x_range=x_range,
        y_range=Range1d(lo - pad, hi + pad, name="price_y"), tools=TOOLS,
        active_scroll="xwheel_zoom", title="Price", name="price", output_backend="canvas",
    )
    p.yaxis.axis_label = "price (points)"
    t = bars.index.to_numpy(dtype="float64")
    step = float(np.median(np.diff(t))) if n > 1 else 60_000.0
    sizes = resolution_levels(n)
    groups, sources = [], []
    for size in sizes:
        src = ColumnDataSource(aggregate_ohlc(bars, size), name=f"ohlc_{size}")
        color = linear_cmap("up", palette=[_DOWN, _UP], low=0, high=1)
        wick = p.segment("t", "high", "t", "low", source=src, color=color, line_width=1)
        body = p.vbar("t", width=step * size * 0.7, top="open", bottom="close", source=src,
                      fill_color=color, line_color=color)
        visible = size == sizes[-1]
        wick.visible = body.visible = visible
        groups.append([wick, body])
        sources.append(src)

    for (label, values), colour in zip(overlay.items(), line_colours(len(overlay)), strict=False):
        rows = line_rows(n, values)
        src = ColumnDataSource({"t": t[rows], "y": values[rows].astype("float32")})
        p.line("t", "y", source=src, color=colour, line_width=1.2, legend_label=label)

    if "roll" in bars:
        for x in t[bars["roll"].to_numpy() > 0][:500]:
            p.add_layout(Span(location=float(x), dimension="height", line_color="#888888",
                              line_dash="dashed", line_width=1))

    trade_marks: list = []
    rug = None
    tsrc = None
    if len(trades):
        tsrc = ColumnDataSource(source_columns(trades.assign(rug_y=0.04)), name="trades")
        trade_marks.append(p.segment("x_entry", "entry_price", "x_exit", "exit_price",
                                     source=tsrc, color="link_color", line_width=1.5,
                                     line_alpha=0.8))
        for col, colour in (("stop_level", "#d62728"), ("target_level", "#2ca02c")):
            if col in trades and trades[col].notna().any():
                trade_marks.append(p.segment(
                    "x_entry", col, "x_exit", col, source=tsrc, color=colour,
                    line_dash="dashed", line_width=1.2, legend_label=col.split("_")[0]))
        entries = p.scatter(
            "x_entry", "entry_price", source=tsrc, size=11, line_color="black",
            marker=factor_mark("direction", ["triangle", "inverted_triangle"],
                               ["long", "short"]),
            fill_color=factor_cmap("direction", [_UP, _DOWN], ["long", "short"]),
            legend_field="direction", name="entry_marks",
        )
        reasons = sorted(set(trades["exit_reason"].astype(str)))
        exits = p.scatter(
            "x_exit", "exit_price", source=tsrc, size=10, line_width=2,
            marker=factor_mark("exit_reason", [EXIT_MARKERS.get(r, _OTHER_EXIT)[0]
                                               for r in reasons], reasons),
            color=factor_cmap("exit_reason", [EXIT_MARKERS.get(r, _OTHER_EXIT)[1]
                                              for r in reasons], reasons),
            fill_alpha=0.3, legend_field="exit_reason", name="exit_marks",
        )
        trade_marks += [entries, exits]
        # zoomed out past MAX_TRADE_MARKS trades in view: one tick per entry along the bottom
        # (a density strip) instead of the marks; the resolution callback switches them
        p.extra_y_ranges = {"rug": Range1d(0, 1)}
        rug = p.scatter("x_entry", "rug_y", source=tsrc, y_range_name="rug", marker="dash",
                        angle=np.pi / 2, size=14, line_width=1.5, line_alpha=0.6,
                        color=factor_cmap("direction", [_UP, _DOWN], ["long", "short"]),
                        legend_label="entries (zoom in for the trade marks)",
                        name="trade_rug")
        dense = len(trades) > MAX_TRADE_MARKS
        for r in trade_marks:
            r.visible = not dense
        rug.visible = dense
        columns = [c for c in trades.columns if not c.startswith(("x_", "link_"))]
        p.add_tools(HoverTool(
            renderers=[entries, exits], name="trade_hover",
            tooltips=[(c, f"@{{{c}}}{_TOOLTIP_FORMATS.get(c, '')}") for c in columns],
        ))
    if margin_events is not None and len(margin_events):
        msrc = ColumnDataSource(source_columns(margin_events), name="margin_events")
        marks = p.scatter("x", "price", source=msrc, marker="diamond", size=14,
                          color="#e377c2", legend_label="margin event")
        p.add_tools(HoverTool(renderers=[marks], tooltips=[
            (c, f"@{{{c}}}") for c in margin_events.columns if c not in ("x", "price")]))
    _legend_above(p)
    p.legend.label_text_font_size = "9pt"

    resolution = CustomJS(
        args=dict(xr=x_range, yr=p.y_range, groups=groups, sources=sources, sizes=sizes,
                  step=step, maxc=MAX_CANDLES, marks=trade_marks, rug=rug, tsrc=tsrc,
                  maxm=MAX_TRADE_MARKS),
        code=_RESOLUTION_JS,
    )
    x_range.js_on_change("start", resolution)
    x_range.js_on_change("end", resolution)
    return p


# Picks the finest level with at most maxc candles in view, shows only its renderers, and fits
# the price axis to the visible candles (binary search in the level's sorted times).
_RESOLUTION_JS = """
const span = (xr.end - xr.start) / step;
let k = sizes.length - 1;
for (let i = 0; i < sizes.length; i++) { if (span / sizes[i] <= maxc) { k = i; break; } }
for (let i = 0; i < groups.length; i++) {
  for (const r of groups[i]) { if (r.visible != (i == k)) { r.visible = (i == k); } }
}
const d = sources[k].data, t = d.t, n = t.length;
let a = 0, b = n;
while (a < b) { const m = (a + b) >> 1; if (t[m] < xr.start) { a = m + 1; } else { b = m; } }
let lo = Infinity, hi = -Infinity;
for (let i = a; i < n && t[i] <= xr.end; i++) {
  if (d.low[i] < lo) { lo = d.low[i]; }
  if (d.high[i] > hi) { hi = d.high[i]; }
}
if (lo < hi) { const pad = (hi - lo) * 0.05; yr.start = lo - pad; yr.end = hi + pad; }
if (rug !== null) {
  const x = tsrc.data.x_entry, m = x.length;
  let u = 0, w = m;
  while (u < w) { const h = (u + w) >> 1; if (x[h] < xr.start) { u = h + 1; } else { w = h; } }
  let c = 0;
  for (let i = u; i < m && x[i] <= xr.end; i++) { c++; }
  const dense = c > maxm;
  for (const r of marks) { if (r.visible == dense) { r.visible = !dense; } }
  if (rug.visible != dense) { rug.visible = dense; }
}
"""


def _legend_above(p) -> None:
    """A panel's legend in one row above its plot, off the data (the width stays that of the
    other linked panels)."""
    p.legend.orientation = "horizontal"
    p.legend.label_text_font_size = "8pt"
    p.legend.click_policy = "hide"
    p.legend.padding = 2
    p.legend.margin = 0
    p.add_layout(p.legend[0], "above")


def sizer_flat_spans(t: np.ndarray, position: np.ndarray, decisions: list[dict]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) times of the stretches the account was flat because the sizer declined
    the entry: from a sizing decision of 0 contracts while flat until the position opens again
    (or the run ends). ``t`` are the bars' times (ms, ascending), ``position`` the contracts
    held per bar, ``decisions`` the Kelly log's rows (``x``: decision time in ms,
    ``contracts``).

    >>> t = np.arange(8) * 10.0
    >>> pos = np.array([0, 1, 1, 0, 0, 0, 2, 0])
    >>> log = [{"x": 30.0, "contracts": 0}, {"x": 50.0, "contracts": 2}]
    >>> [s.tolist() for s in sizer_flat_spans(t, pos, log)]  # declined at bar 3, sized at 5
    [[30.0], [50.0]]
    """
    n = len(t)
    if not n or not decisions:
        return np.zeros(0), np.zeros(0)
    dx = np.asarray([d["x"] for d in decisions], dtype="float64")
    declined = np.asarray([(d.get("contracts") or 0) == 0 for d in decisions])
    order = np.argsort(dx, kind="stable")
    dx, declined = dx[order], declined[order]
    last = np.searchsorted(dx, t, side="right") - 1  # the latest decision at or before a bar
    mask = (last >= 0) & declined[np.clip(last, 0, None)] & (position == 0)
    edges = np.diff(np.concatenate([[0], mask.astype("int8"), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    right = np.where(ends < n, t[np.minimum(ends, n - 1)], t[-1])
    return t[starts], right


def _curve_panels(result, report, bars_t, panel_ind, x_range):
    """Equity, drawdown, position, margin vs equity and oscillator panels, linked on x."""
    from bokeh.models import ColumnDataSource, NumeralTickFormatter, Range1d

    equity = getattr(result, "equity", None)
    panels = []
    if equity is None or not len(equity):
        return panels
    value = equity["value"].to_numpy(dtype="float64")
    n = len(value)
    rows = line_rows(n, value)
    t = to_ms(equity.index)[rows] if len(bars_t) != n else bars_t[rows]
    pos = equity["position"].to_numpy(dtype="float64") if "position" in equity else np.zeros(n)
    margins = (report.get("inputs") or {}).get("margins") or {}
    initial = margins.get("initial") or 0.0
    maint = margins.get("maintenance") or 0.0
    if "drawdown_pct" in equity:
        dd = equity["drawdown_pct"].to_numpy(dtype="float64")
    else:
        peak = np.maximum.accumulate(value)
        dd = 100.0 * (peak - value) / peak
    src = ColumnDataSource({
        "t": t,
        "value": value[rows].astype("float32"),
        "dd": (-np.nan_to_num(dd[rows])).astype("float32"),
        "pos": pos[rows].astype("float32"),
        "margin": (np.abs(pos[rows]) * initial).astype("float32"),
        "maint": (np.abs(pos[rows]) * maint).astype("float32"),
    }, name="curves")

    p = linked_panel("Equity", x_range, 190, "equity ($)", "equity")
    fitted = [p.line("t", "value", source=src, color="#1f77b4", line_width=1.3,
                     legend_label="strategy")]
    if "close" in equity:
        from .overview import buy_and_hold_curve

        mult = float(((report.get("inputs") or {}).get("contract") or {}).get("multiplier")
                     or 0.0)
        start = float((report.get("results") or {}).get("start_value") or value[0])
        bench = buy_and_hold_curve(equity["close"].to_numpy(dtype="float64"), mult, start)
        bsrc = ColumnDataSource({"t": t, "bh": bench[rows].astype("float32")},
                                name="buy_and_hold")
        fitted.append(p.line("t", "bh", source=bsrc, color="#9e9e9e", line_width=1.0,
                             line_dash="dashed", legend_label="buy & hold 1 contract"))
    p.y_range.renderers = fitted  # the axis fits the curves, not the shading
    decisions = ((report.get("analyzers") or {}).get("kelly") or {}).get("decisions") or []
    full_t = to_ms(equity.index) if len(bars_t) != n else bars_t
    left, right = sizer_flat_spans(
        full_t, pos, [{"x": x, "contracts": d.get("contracts")}
                      for x, d in zip(to_ms([d["dt"] for d in decisions]), decisions,
                                      strict=True)])
    if len(left):
        p.extra_y_ranges = {"shade": Range1d(0, 1)}
        p.quad(left=left, right=right, bottom=0, top=1, y_range_name="shade",
               fill_color="#ffcc80", fill_alpha=0.35, line_alpha=0, level="underlay",
               legend_label=f"flat: the sizer declined ({len(left)} stretches)",
               name="sizer_flat")
    p.yaxis.formatter = NumeralTickFormatter(format="$0,0")
    _legend_above(p)
    panels.append(p)

    p = linked_panel("Drawdown", x_range, 110, "drawdown (%)", "drawdown")
    p.varea("t", y1="dd", y2=0, source=src, color="#d62728", alpha=0.35)
    p.line("t", "dd", source=src, color="#d62728", line_width=0.8)
    panels.append(p)

    p = linked_panel("Position", x_range, 110, "contracts", "position")
    p.step("t", "pos", source=src, color="#2ca02c", mode="after")
    panels.append(p)

    p = linked_panel("Margin used vs equity", x_range, 160, "$", "margin")
    p.line("t", "value", source=src, color="#1f77b4", legend_label="equity")
    p.step("t", "margin", source=src, color="#ff7f0e", mode="after",
           legend_label=f"initial margin ({fmt_money(initial)}/contract)")
    p.step("t", "maint", source=src, color="#d62728", mode="after", line_dash="dotted",
           legend_label=f"maintenance ({fmt_money(maint)}/contract)")
    p.yaxis.formatter = NumeralTickFormatter(format="$0,0")
    _legend_above(p)
    panels.append(p)

    if panel_ind:
        p = linked_panel("Indicators", x_range, 130, "", "indicators")
        for (label, values), colour in zip(panel_ind.items(), line_colours(len(panel_ind)),
                                           strict=False):
            ind_src = ColumnDataSource({"t": t, "y": values[rows].astype("float32")})
            p.line("t", "y", source=ind_src, color=colour, legend_label=label)
        _legend_above(p)
        panels.append(p)
    return panels


def _monthly_returns(result: Any) -> pd.DataFrame:
    """Year x month returns (%) from the equity curve: each month's last value over the
    previous month's (the first month over the starting equity)."""
    equity = getattr(result, "equity", None)
    if equity is None or not len(equity):
        return pd.DataFrame()
    idx = pd.DatetimeIndex(equity.index)
    idx = idx.tz_localize(None) if idx.tz is not None else idx
    value = pd.Series(equity["value"].to_numpy(dtype="float64"), index=idx)
    month_end = value.groupby(value.index.to_period("M")).last()
    start = float(getattr(result, "start_value", None) or value.iloc[0])
    prev = month_end.shift(1).fillna(start)
    ret = 100.0 * (month_end / prev - 1.0)
    return pd.DataFrame({"year": ret.index.year.astype(str), "month": ret.index.strftime("%b"),
                         "ret": ret.to_numpy()})


def _monthly_figure(result):
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    from bokeh.transform import linear_cmap

    df = _monthly_returns(result)
    if df.empty:
        return None
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    years = sorted(df["year"].unique(), reverse=True)
    df["label"] = [f"{r:+.1f}%" for r in df["ret"]]
    lim = max(float(np.nanmax(np.abs(df["ret"]))), 0.01)
    src = ColumnDataSource(source_columns(df), name="monthly")
    p = figure(title="Monthly returns (%)", x_range=months, y_range=years, height=90 + 34 *
               len(years), width=560, tools="save", toolbar_location=None, name="monthly_fig")
    palette = ["#b71c1c", "#e57373", "#ffcdd2", "#f5f5f5", "#c8e6c9", "#81c784", "#1b5e20"]
    p.rect("month", "year", 1, 1, source=src, line_color="white",
           fill_color=linear_cmap("ret", palette, low=-lim, high=lim))
    p.text("month", "year", text="label", source=src, text_align="center",
           text_baseline="middle", text_font_size="8pt")
    p.add_tools(HoverTool(tooltips=[("month", "@month @year"), ("return", "@ret{0.00} %")]))
    p.grid.grid_line_color = None
    p.axis.axis_line_color = None
    return p


def _pnl_figure(trades):
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    if not len(trades):
        return None
    pnl = trades["net_pnl"].astype(float).to_numpy()
    counts, edges = np.histogram(pnl, bins=min(40, max(5, len(pnl) // 5)))
    mid = (edges[:-1] + edges[1:]) / 2
    src = ColumnDataSource({"left": edges[:-1], "right": edges[1:], "count": counts,
                            "color": [_UP if m >= 0 else _DOWN for m in mid]})
    p = figure(title=f"P&L per trade ($), {len(pnl)} trades", height=260, width=420,
               tools="save", toolbar_location=None, name="pnl_hist")
    p.quad(left="left", right="right", top="count", bottom=0, source=src, fill_color="color",
           line_color="white")
    p.add_tools(HoverTool(tooltips=[("P&L", "@left{$0,0} to @right{$0,0}"),
                                    ("trades", "@count")]))
    p.xaxis.axis_label = "net P&L per trade ($)"
    p.yaxis.axis_label = "trades"
    return p


def costs_breakdown(report: dict, trades: pd.DataFrame) -> dict[str, float]:
    """Costs in $: ``commission`` and ``slippage`` of the run (report.json) and ``rolls``: what
    the rolls cost (each closes and reopens its contracts: 2 sides x contracts x (commission per
    side + slippage ticks x tick value)), a part of the first two.

    >>> r = {"results": {"commission": 10.0, "slippage": 0.0},
    ...      "inputs": {"costs": {"commission": 0.62, "slippage_ticks": 0},
    ...                 "contract": {"tick_value": 0.5}}}
    >>> t = pd.DataFrame({"exit_reason": ["roll", "signal"], "contracts": [2, 1]})
    >>> costs_breakdown(r, t)["rolls"]  # 2 sides x 2 contracts x $0.62
    2.48
    """
    res = report.get("results") or {}
    costs = (report.get("inputs") or {}).get("costs") or {}
    tick_value = ((report.get("inputs") or {}).get("contract") or {}).get("tick_value") or 0.0
    per_side = (costs.get("commission") or 0.0) + (costs.get("slippage_ticks") or 0.0) * tick_value
    rolled = 0.0
    if len(trades) and "exit_reason" in trades:
        rolled = float(trades.loc[trades["exit_reason"] == "roll", "contracts"].sum())
    return {
        "commission": float(res.get("commission") or 0.0),
        "slippage": float(res.get("slippage") or 0.0),
        "rolls": round(2 * rolled * per_side, 2),
    }


def waterfall_steps(costs: dict) -> list[dict]:
    """The bars of the gross-to-net waterfall: (name, bottom, top, value) from
    ``overview.costs``; each cost hangs down from where the previous step ended.

    >>> [(s["name"], s["bottom"], s["top"]) for s in waterfall_steps(
    ...     {"gross_pnl": 117.4, "commission": 8.68, "slippage": 2.0, "rolls": 6.72,
    ...      "net_pnl": 100.0})]  # 117.40 - 8.68 = 108.72; - 2.00 = 106.72; - 6.72 = 100.00
    [('gross P&L', 0.0, 117.4), ('commission', 108.72, 117.4), ('slippage', 106.72, 108.72), \
('roll costs', 100.0, 106.72), ('net P&L', 0.0, 100.0)]
    """
    gross = float(costs.get("gross_pnl") or 0.0)
    steps = [{"name": "gross P&L", "bottom": 0.0, "top": gross, "value": gross}]
    level = gross
    for key, name in (("commission", "commission"), ("slippage", "slippage"),
                      ("rolls", "roll costs")):
        cost = float(costs.get(key) or 0.0)
        after = round(level - cost, 2)
        steps.append({"name": name, "bottom": min(level, after), "top": max(level, after),
                      "value": -cost if cost else 0.0})
        level = after
    net = float(costs.get("net_pnl") or 0.0)
    steps.append({"name": "net P&L", "bottom": min(0.0, net), "top": max(0.0, net),
                  "value": net})
    return steps


def _costs_figure(report, trades):
    from bokeh.core.properties import field
    from bokeh.models import ColumnDataSource, HoverTool, Span
    from bokeh.plotting import figure

    costs = (report.get("overview") or {}).get("costs")
    if not costs:
        return None
    steps = waterfall_steps(costs)
    names = [s["name"] for s in steps]
    colours = ["#1f77b4" if steps[0]["value"] >= 0 else "#c62828", "#ff7f0e", "#ffb74d",
               "#7f7f7f", "#2e7d32" if steps[-1]["value"] >= 0 else "#c62828"]
    src = ColumnDataSource({"name": names, "bottom": [s["bottom"] for s in steps],
                            "top": [s["top"] for s in steps],
                            "value": [s["value"] for s in steps], "color": colours,
                            "label": [fmt_money(s["value"]) for s in steps],
                            # a gain's label above its bar, a cost's or loss's below
                            "label_y": [s["top"] if s["value"] >= 0 else s["bottom"]
                                        for s in steps],
                            "baseline": ["bottom" if s["value"] >= 0 else "top"
                                         for s in steps]}, name="costs")
    p = figure(x_range=names, title="Gross P&L to net: costs ($)", height=280, width=380,
               tools="save", toolbar_location=None, name="costs_fig")
    p.vbar("name", bottom="bottom", top="top", width=0.6, source=src, color="color")
    p.text("name", "label_y", text="label", source=src, text_align="center",
           text_baseline=field("baseline"), text_font_size="8pt")
    p.add_layout(Span(location=0, dimension="width", line_color="#444444", line_width=1))
    p.add_tools(HoverTool(tooltips=[("", "@name: @value{$0,0.00}")]))
    p.xaxis.major_label_orientation = 0.5
    p.yaxis.axis_label = "$"
    p.y_range.range_padding = 0.15
    return p


def _row_html(cells: list, classes: list[str] | None = None, tag: str = "td") -> str:
    classes = classes or [""] * len(cells)
    return "<tr>" + "".join(f"<{tag} class='{c}'>{esc(v)}</{tag}>"
                            for v, c in zip(cells, classes, strict=False)) + "</tr>"


def _tone(x) -> str:
    return "" if x is None else ("neg" if x < 0 else "pos")


def _tables_html(report: dict) -> str:
    """Long vs short, yearly returns, the worst drawdowns and the cost waterfall as tables."""
    ov = report.get("overview") or {}
    out = []
    d = ov.get("directions") or {}
    if d:
        rows = [_row_html(["", "trades", "win rate", "net P&L", "per trade"],
                          ["l", "", "", "", ""], "th")]
        for side in ("long", "short"):
            x = d.get(side) or {}
            rate = x.get("win_rate")
            rows.append(_row_html(
                [side, fmt_number(x.get("trades"), 0),
                 fmt_number(None if rate is None else 100 * rate, 1, " %"),
                 fmt_money(x.get("net_pnl")), fmt_money(x.get("avg_pnl"))],
                ["l", "", "", _tone(x.get("net_pnl")), _tone(x.get("avg_pnl"))]))
        out.append("<div><h3>Long vs short</h3><table class='m2k' id='m2k-directions'>"
                   + "".join(rows) + "</table></div>")
    years = ov.get("yearly_returns") or []
    if years:
        rows = [_row_html(["year", "return", "net P&L", "end equity"], ["l", "", "", ""], "th")]
        rows += [_row_html([y["year"], fmt_number(y.get("return_pct"), 2, " %"),
                            fmt_money(y.get("net_profit")), fmt_money(y.get("end_value"))],
                           ["l", _tone(y.get("return_pct")), _tone(y.get("net_profit")), ""])
                 for y in years]
        out.append("<div><h3>Yearly returns</h3><table class='m2k' id='m2k-years'>"
                   + "".join(rows) + "</table></div>")
    dd = ov.get("drawdowns") or {}
    worst = dd.get("worst") or []
    if worst:
        rows = [_row_html(["peak", "trough", "recovered", "depth", "depth %", "days"],
                          ["l", "l", "l", "", "", ""], "th")]
        rows += [_row_html([w["peak_dt"][:10], w["trough_dt"][:10],
                            (w.get("recovery_dt") or "not yet")[:10], fmt_money(-w["depth"]),
                            fmt_number(w.get("depth_pct"), 2, " %"),
                            fmt_number(w.get("days"), 1)],
                           ["l", "l", "l", "neg", "neg", ""]) for w in worst]
        out.append(f"<div><h3>Worst drawdowns (longest: "
                   f"{fmt_number(dd.get('max_duration_days'), 1)} days)</h3>"
                   f"<table class='m2k' id='m2k-drawdowns'>" + "".join(rows) + "</table></div>")
    costs = ov.get("costs") or {}
    if costs:
        rows = [_row_html([s["name"], fmt_money(s["value"])], ["l", _tone(s["value"])])
                for s in waterfall_steps(costs)]
        out.append("<div><h3>Costs, gross to net</h3><table class='m2k' id='m2k-costs'>"
                   + "".join(rows) + f"</table><p class='m2k-note'>"
                   f"{esc(costs.get('slippage_note') or '')}; roll costs are the rolls' "
                   "commission and assumed slippage, taken out of the two lines above.</p>"
                   "</div>")
    if not out:
        return ""
    # each Div is its own shadow root: the style sheet goes with it
    return CSS + "<h2>At a glance</h2><div class='m2k-tables'>" + "".join(out) + "</div>"


def _kelly_figures(report, x_range):
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    from bokeh.transform import factor_cmap

    kelly = (report.get("analyzers") or {}).get("kelly") or {}
    decisions = kelly.get("decisions") or []
    if not decisions:
        return None
    df = pd.DataFrame(decisions)
    df["x"] = to_ms(df["dt"])
    for col in ("f_star", "f_used"):
        df[col] = pd.to_numeric(df.get(col), errors="coerce")
    df["binding"] = df["binding"].astype(str)
    df["dt"] = df["dt"].astype(str)
    kinds = sorted(df["binding"].unique())
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#7f7f7f",
               "#17becf"]
    src = ColumnDataSource(source_columns(df[["x", "dt", "f_star", "f_used", "binding",
                                        "contracts"]]), name="kelly")
    p = figure(title="Kelly log: fraction wanted (f*) vs used, coloured by the cap that bound;"
               " x on zero: entry declined",
               height=240, sizing_mode="stretch_width", x_axis_type="datetime", x_range=x_range,
               tools=TOOLS, active_scroll="xwheel_zoom", name="kelly_fig")
    p.scatter("x", "f_star", source=src, marker="circle", size=5, color="#bbbbbb",
              legend_label="f* wanted")
    used = p.scatter("x", "f_used", source=src, size=6,
                     color=factor_cmap("binding", palette[: len(kinds)] or ["#1f77b4"], kinds),
                     legend_field="binding")
    zero = df[df["contracts"] == 0]
    renderers = [used]
    if len(zero):  # declined entries (no_edge has no fraction used): x marks on the zero line
        zsrc = ColumnDataSource(source_columns(
            zero[["x", "dt", "f_star", "f_used", "binding", "contracts"]].assign(y=0.0)),
            name="kelly_declined")
        renderers.append(p.scatter(
            "x", "y", source=zsrc, marker="x", size=8, line_width=1.5,
            color=factor_cmap("binding", palette[: len(kinds)] or ["#1f77b4"], kinds),
            legend_label=f"declined: 0 contracts ({len(zero)})"))
    p.add_tools(HoverTool(renderers=renderers, tooltips=[
        ("dt", "@dt"), ("f*", "@f_star{0.0000}"), ("f used", "@f_used{0.0000}"),
        ("bound by", "@binding"), ("contracts", "@contracts")]))
    p.yaxis.axis_label = "fraction of equity"
    p.legend.label_text_font_size = "8pt"
    p.legend.click_policy = "hide"
    p.legend.spacing = 0
    p.legend.padding = 4
    p.add_layout(p.legend[0], "right")  # off the data
    counts = df["binding"].value_counts()
    declined = zero["binding"].value_counts().reindex(counts.index, fill_value=0)
    bsrc = ColumnDataSource({"binding": list(counts.index), "count": counts.to_numpy(),
                             "declined": declined.to_numpy(),
                             "label": [f"{n} ({z} at 0)" if z else str(n)
                                       for n, z in zip(counts, declined, strict=True)]},
                            name="kelly_counts")
    b = figure(x_range=list(counts.index), title="Entries by binding cap (declined at 0)",
               height=240,
               width=360, tools="save", toolbar_location=None, name="kelly_binding")
    b.vbar("binding", top="count", width=0.6, source=bsrc,
           color=factor_cmap("binding", palette[: len(kinds)] or ["#1f77b4"], kinds))
    b.text("binding", "count", text="label", source=bsrc, text_align="center",
           text_baseline="bottom", text_font_size="8pt")
    b.add_tools(HoverTool(tooltips=[("", "@binding: @count entries, @declined sized to 0")]))
    b.xaxis.major_label_orientation = 0.6
    b.y_range.start = 0
    b.y_range.range_padding = 0.15
    return p, b


def _trade_table(trades):
    from bokeh.models import ColumnDataSource, DataTable, NumberFormatter, TableColumn

    if not len(trades):
        return None
    columns = [c for c in trades.columns if not c.startswith(("x_", "link_"))]
    src = ColumnDataSource(source_columns(trades[columns]), name="trade_table_source")
    money = {"gross_pnl", "commission", "net_pnl"}
    cols = []
    for c in columns:
        fmt = None
        if c in money:
            fmt = NumberFormatter(format="$0,0.00")
        elif c in ("entry_price", "exit_price", "stop_level", "target_level"):
            fmt = NumberFormatter(format="0,0.00")
        width = _COLUMN_WIDTHS.get(c, 80)
        cols.append(TableColumn(field=c, title=c, width=width,
                                **({"formatter": fmt} if fmt else {})))
    return DataTable(source=src, columns=cols, sortable=True, reorderable=False, height=320,
                     sizing_mode="stretch_width", index_position=None, name="trade_table",
                     autosize_mode="none")


def _warnings_html(report: dict, result: Any) -> str:
    warnings = list(report.get("warnings") or [])
    repairs = [w for w in warnings if w.startswith("data:")]
    other = [w for w in warnings if not w.startswith("data:")]
    out = ["<h2>Warnings and data repairs</h2>"]
    if not warnings:
        out.append("<p class='m2k-note'>No warnings: no data repairs, margin calls or rejected "
                   "orders.</p>")
    if other:
        out.append(f"<p class='m2k-note'>{len(other)} warning(s):</p><ul class='m2k-list'>"
                   + "".join(f"<li>{esc(w)}</li>" for w in other) + "</ul>")
    if repairs:
        out.append(f"<p class='m2k-note'>{len(repairs)} data repair(s):</p><ul class='m2k-list'>"
                   + "".join(f"<li>{esc(w)}</li>" for w in repairs) + "</ul>")
    return "".join(out)


def _margin_event_frame(result, bars) -> pd.DataFrame:
    events = list(getattr(result, "margin_events", None) or [])
    if not events:
        return pd.DataFrame()
    rows = []
    for ev in events:
        get = ev.get if isinstance(ev, dict) else lambda k, e=ev: getattr(e, k, None)
        rows.append({k: get(k) for k in ("dt", "kind", "equity", "requirement", "contracts",
                                          "action")})
    df = pd.DataFrame(rows)
    df["x"] = to_ms(df["dt"])
    t = bars.index.to_numpy(dtype="float64")
    i = np.clip(np.searchsorted(t, df["x"].to_numpy()), 0, len(t) - 1)
    df["price"] = bars["close"].to_numpy()[i]
    df["dt"] = df["dt"].astype(str)
    return df.fillna("")


def _bracket_levels(result: Any, bars: pd.DataFrame, trades: pd.DataFrame) -> pd.DataFrame:
    """Add ``stop_level``/``target_level`` to the trades of a strategy with stops or targets,
    the way :meth:`m2k_bt.strategies.base.M2KStrategy._bracket_for` sets them: from the signal bar's
    close (the bar before the entry fill), ``stop_ticks``/``target_ticks`` ticks or
    ``stop_atr``/``target_atr`` times that bar's ATR, floored to whole ticks (>= 1). A trade
    reopened by a roll keeps the levels of the trade it continues."""
    strategy = getattr(result, "strategy", None)
    p = getattr(strategy, "p", None)
    if p is None or not len(trades) or bars is None or "stop_level" in trades:
        return trades
    spec = getattr(getattr(result, "config", None), "spec", None)
    tick = float(getattr(spec, "tick_size", 0.0) or 0.0)
    if not tick:
        return trades
    atr_line = getattr(strategy, "_atr", None)
    atr = np.asarray(atr_line.array, dtype="float64") if atr_line is not None else None
    t = bars.index.to_numpy(dtype="float64")
    close = bars["close"].to_numpy(dtype="float64")
    sig = np.clip(np.searchsorted(t, trades["x_entry"].to_numpy()) - 1, 0, len(t) - 1)
    direction = np.where(trades["direction"] == "long", 1.0, -1.0)

    def distance(kind: str) -> np.ndarray | None:
        ticks, atrs = getattr(p, f"{kind}_ticks", None), getattr(p, f"{kind}_atr", None)
        if ticks is not None:
            points = np.full(len(sig), ticks * tick)
        elif atrs is not None and atr is not None and len(atr) == len(t):
            points = atrs * atr[sig]
        else:
            return None
        return np.maximum(1, np.floor(points / tick + 1e-9)) * tick

    out = trades.copy()
    ref = np.round(close[sig] / tick) * tick
    for kind, sign in (("stop", -1.0), ("target", 1.0)):
        dist = distance(kind)
        if dist is None:
            continue
        level = np.round((ref + sign * direction * dist) / tick) * tick
        reasons = out["exit_reason"].tolist()
        for i in range(1, len(out)):  # a roll's continuation keeps the carried-over levels
            if reasons[i - 1] == "roll" and out["entry_dt"].iat[i] == out["exit_dt"].iat[i - 1]:
                level[i] = level[i - 1]
        out[f"{kind}_level"] = np.round(level, 6)
    return out


def _plot_trades(trades: pd.DataFrame) -> pd.DataFrame:
    """The trades.csv rows plus the columns the chart needs (x in ms, link colour)."""
    df = trades.copy()
    if not len(df):
        return df
    df["x_entry"] = to_ms(df["entry_dt"])
    df["x_exit"] = to_ms(df["exit_dt"])
    df["link_color"] = np.where(df["net_pnl"].astype(float) >= 0, "#2e7d32", "#c62828")
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: "" if v is None else v)
    return df


def report_layout(result: Any, report: dict[str, Any]):
    """The Bokeh layout of ``report.html`` for a backtest result and its report.json content
    (see the module doc)."""
    from bokeh.layouts import column, row
    from bokeh.models import Div, Range1d

    bars = _bars_of(result)
    trades = _bracket_levels(result, bars, _plot_trades(_trade_frame(result)))
    parts: list = [Div(text=_cards_html(report), sizing_mode="stretch_width")]
    x_range = None
    if bars is not None and len(bars):
        t = bars.index.to_numpy(dtype="float64")
        span = (t[-1] - t[0]) or 3_600_000.0
        x_range = Range1d(t[0] - span * 0.01, t[-1] + span * 0.01, name="price_x",
                          bounds=(t[0] - span * 0.05, t[-1] + span * 0.05))
        overlay, panel_ind, left_out = _indicators_of(result, len(bars), bars)
        price = _price_figure(bars, trades, overlay, _margin_event_frame(result, bars), x_range)
        panels = [price, *_curve_panels(result, report, t, panel_ind, x_range)]
        for p in panels[1:-1]:  # dates under the price chart and under the last panel
            p.xaxis.visible = False
        parts.append(Div(text="<p class='m2k-note'>Scroll to zoom, drag to pan: all panels "
                         "follow. Candles aggregate bars when zoomed out; a hover on a trade "
                         "mark shows its trades.csv row; click a legend entry to hide it.</p>",
                         sizing_mode="stretch_width"))
        parts.append(column(*panels, sizing_mode="stretch_width"))
        if left_out:
            parts.append(Div(text="<p class='m2k-note'>Not drawn: "
                             + esc("; ".join(left_out)) + "</p>", sizing_mode="stretch_width"))
    glance = _tables_html(report)
    if glance:
        parts.append(Div(text=glance, sizing_mode="stretch_width"))
    lower = [f for f in (_monthly_figure(result), _pnl_figure(trades),
                         _costs_figure(report, trades)) if f is not None]
    if lower:
        parts.append(row(*lower))
    kelly = _kelly_figures(report, x_range if x_range is not None else Range1d(0, 1))
    if kelly is not None:
        parts.append(row(kelly[0], kelly[1], sizing_mode="stretch_width"))
    table = _trade_table(trades)
    if table is not None:
        parts.append(Div(text=f"<h2>Trades ({len(trades)})</h2><p class='m2k-note'>The rows "
                         "of trades.csv; click a column header to sort.</p>",
                         sizing_mode="stretch_width"))
        parts.append(table)
    parts.append(Div(text=_warnings_html(report, result), sizing_mode="stretch_width"))
    return column(*parts, sizing_mode="stretch_width")


def write_report_html(result: Any, path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write ``report.html`` for a backtest result; returns the path.

    - ``result``: a :class:`~m2k_bt.engine.cerebro.BacktestResult` (the strategy's data lines
      give the candles and indicators; without them the equity curve's close is drawn).
    - ``report``: its report.json content (``m2k_bt.report.summary.build_report(result)``): the
      cards, costs, Kelly log and warnings come from it.

    The file is written atomically and carries every resource inline (opens offline).
    """
    layout = report_layout(result, report)
    title = "m2k_bt report"
    return save_html(layout, Path(path), title)
