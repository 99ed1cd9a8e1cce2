"""The optimiser's pages, built with Bokeh like ``report.html``: ``study.html``
(:func:`write_study_html`) and ``walkforward.html`` (:func:`write_walkforward_html`).

Each file carries Bokeh's JavaScript and CSS inline, so it opens offline, from disk. The result
objects are duck-typed (an ``OptimizeResult`` or ``WalkForwardResult``, or a dict with the same
keys), so this module does not import :mod:`m2k_bt.optimize`.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .bokeh_parts import CSS, esc, fmt_number, save_html, to_ms

__all__ = ["write_study_html", "study_html_text", "write_walkforward_html"]


def _value(obj, name, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _table_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    """A table of trials or folds: columns with no value at all left out, every cell in the
    format of its column (:func:`fmt_cell`)."""
    if df is None or not len(df):
        return "<p class='m2k-note'>none</p>"
    df = drop_empty_columns(df.head(max_rows))
    head = "".join(f"<th>{esc(_header(c))}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, rec, strict=True):
            text = fmt_cell(str(c), v)
            cls = " class='l'" if isinstance(v, str) and text == v else ""
            cells.append(f"<td{cls}>{esc(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='m2k m2k-wide'><tr>{head}</tr>" + "".join(rows) + "</table>")


def _header(column: str) -> str:
    """``param_fast`` -> ``fast``; underscores become spaces so long names can wrap."""
    return (column[6:] if column.startswith("param_") else column).replace("_", " ")


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and not np.isfinite(v)) or (
        isinstance(v, str) and not v.strip()) or v is pd.NaT


def drop_empty_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The frame without the columns that hold no value in any row (None, NaN, "").

    >>> list(drop_empty_columns(pd.DataFrame({"a": [1, 2], "b": [None, None], "c": ["", "x"]})))
    ['a', 'c']
    """
    keep = [c for c in df.columns if not all(_blank(v) for v in df[c].tolist())]
    return df[keep]


#: Columns shown as dollars (by name or suffix).
_MONEY = ("net_profit", "_value", "max_drawdown", "expectancy", "commission", "slippage",
          "_pnl", "avg_win", "avg_loss", "largest_win", "largest_loss")
#: Columns shown as whole numbers.
_COUNT = ("trades", "_bars", "bars", "_trials", "number", "fold", "retry_of")


def fmt_cell(column: str, v) -> str:
    """One table cell in its column's format: dollars with cents for money, ``12.34 %`` for
    ``*_pct``, whole numbers for counts, dates without the time for window bounds, 3 decimals
    for other numbers (ratios, objectives), text as it is; nothing for a missing value.

    >>> [fmt_cell("oos_final_value", 27250.0), fmt_cell("oos_return_pct", 9.014),
    ...  fmt_cell("is_trades", 44.0), fmt_cell("sharpe", 0.06113), fmt_cell("sharpe", 2.0),
    ...  fmt_cell("oos_start", "2024-03-01 18:00:00-05:00"), fmt_cell("retry_of", None),
    ...  fmt_cell("param_fast", 55), fmt_cell("param_devfactor", 2.25)]
    ['$27,250.00', '9.01 %', '44', '0.061', '2.000', '2024-03-01', '', '55', '2.25']
    """
    if _blank(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if column.endswith(("_start", "_end")) or column in ("start", "end"):
        try:
            return pd.Timestamp(v).strftime("%Y-%m-%d")
        except (ValueError, TypeError):
            return str(v)
    if not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    x = float(v)
    if column.startswith("param_"):
        return f"{int(x)}" if x == int(x) and isinstance(v, (int, np.integer)) else f"{x:g}"
    if column.endswith("_pct"):
        return f"{x:,.2f} %"
    if column.endswith(_MONEY) or column in _MONEY:
        return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"
    if (column.endswith(_COUNT) or column in _COUNT) and x == int(x):
        return f"{int(x):,}"
    return f"{x:,.3f}"


_DSR_TEXT = ("Deflated Sharpe ratio (DSR): the probability that the best trial's Sharpe ratio "
             "is above zero once the number of trials, their spread and the returns' skew and "
             "kurtosis are accounted for (Bailey and Lopez de Prado, 2014).")
_PBO_TEXT = ("Probability of backtest overfitting (PBO): the share of in-sample/out-of-sample "
             "splits in which the in-sample best parameter set ranks below the median out of "
             "sample (Bailey et al., 2015); above 0.5 means the selection is mostly luck.")


def dsr_verdict(dsr) -> tuple[str, str]:
    """(CSS tone, words) for a deflated Sharpe ratio: ``pos`` from 0.95 (the best Sharpe is
    unlikely to be luck at the usual 5 % level), ``neg`` below 0.5 (more likely luck than not),
    ``warn`` between; ``""`` when there is none.

    >>> dsr_verdict(0.97), dsr_verdict(0.7), dsr_verdict(0.188), dsr_verdict(None)
    (('pos', 'significant'), ('warn', 'not significant'), ('neg', 'likely luck'), ('', 'n/a'))
    """
    if dsr is None or not np.isfinite(dsr):
        return "", "n/a"
    if dsr >= 0.95:
        return "pos", "significant"
    return ("warn", "not significant") if dsr >= 0.5 else ("neg", "likely luck")


def pbo_verdict(pbo) -> tuple[str, str]:
    """(CSS tone, words) for a probability of backtest overfitting: ``pos`` up to 0.25,
    ``neg`` from 0.5 (the in-sample best is below the median out of sample in most splits),
    ``warn`` between.

    >>> pbo_verdict(0.1), pbo_verdict(0.3), pbo_verdict(0.571)
    (('pos', 'low'), ('warn', 'moderate'), ('neg', 'overfit'))
    """
    if pbo is None or not np.isfinite(pbo):
        return "", "n/a"
    if pbo <= 0.25:
        return "pos", "low"
    return ("warn", "moderate") if pbo < 0.5 else ("neg", "overfit")


def _trials_frame(result) -> pd.DataFrame:
    trials = _value(result, "trials")
    if trials is None:
        return pd.DataFrame()
    if isinstance(trials, pd.DataFrame):
        return trials.copy()
    rows = []
    for i, tr in enumerate(trials):
        if isinstance(tr, dict):
            row = dict(tr)
        else:
            row = {k: getattr(tr, k) for k in ("number", "value", "params", "metrics", "state")
                   if hasattr(tr, k)}
        params = row.pop("params", None) or {}
        metrics = row.pop("metrics", None) or {}
        row.setdefault("number", i)
        row.update({f"param_{k}": v for k, v in params.items()})
        row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))
                    or v is None})
        rows.append(row)
    return pd.DataFrame(rows)


def study_layout(result: Any):
    """Bokeh layout of ``study.html`` (see :func:`write_study_html`)."""
    from bokeh.layouts import column, row
    from bokeh.models import ColorBar, ColumnDataSource, Div, HoverTool
    from bokeh.plotting import figure
    from bokeh.transform import linear_cmap

    df = _trials_frame(result)
    objective = _value(result, "objective", "objective") or "objective"
    value_col = "value" if "value" in df else None
    params = [c for c in df.columns if c.startswith("param_")]
    parts: list = []
    best = _value(result, "best_params") or {}
    best_value = _value(result, "best_value")
    dsr = _value(result, "dsr", _value(result, "deflated_sharpe"))
    pbo = _value(result, "pbo")
    dsr_v = dsr.get("dsr") if isinstance(dsr, dict) else dsr
    pbo_v = pbo.get("pbo") if isinstance(pbo, dict) else pbo
    dsr_tone, dsr_word = dsr_verdict(dsr_v)
    pbo_tone, pbo_word = pbo_verdict(pbo_v)
    head = (CSS + f"<h1>Optimisation study: {len(df)} trials, objective {esc(objective)}</h1>"
            f"<div class='m2k-sub'>best value {fmt_number(best_value, 3)}; best parameters "
            f"{esc(', '.join(f'{k}={v}' for k, v in best.items()) or 'n/a')}</div>"
            "<div class='m2k-cards'>"
            f"<div class='m2k-card' id='m2k-dsr'><div class='k'>DSR</div><div class='v "
            f"{dsr_tone}'>{esc(fmt_number(dsr_v, 3))}</div><div class='w'>{esc(dsr_word)}"
            "</div></div>"
            f"<div class='m2k-card' id='m2k-pbo'><div class='k'>PBO</div><div class='v "
            f"{pbo_tone}'>{esc(fmt_number(pbo_v, 3))}</div><div class='w'>{esc(pbo_word)}"
            "</div></div></div>"
            f"<p class='m2k-note'>{esc(_DSR_TEXT)}</p><p class='m2k-note'>{esc(_PBO_TEXT)}</p>")
    parts.append(Div(text=head, sizing_mode="stretch_width"))
    if value_col and len(df):
        vals = pd.to_numeric(df[value_col], errors="coerce")
        src = ColumnDataSource({"number": df["number"].to_numpy(), "value": vals.to_numpy(),
                                "best": vals.ffill().cummax().to_numpy()}, name="trials")
        p = figure(title=f"{objective} by trial", height=280, width=560, tools="pan,wheel_zoom,"
                   "box_zoom,reset,save,hover", name="objective_fig")
        p.scatter("number", "value", source=src, size=6, legend_label="trial")
        p.line("number", "best", source=src, color="#d62728", legend_label="best so far")
        p.xaxis.axis_label = "trial"
        p.yaxis.axis_label = str(objective)
        p.legend.orientation = "horizontal"
        p.add_layout(p.legend[0], "above")  # off the data
        figs = [p]
        finite = vals[np.isfinite(vals)]
        lo = float(finite.min()) if len(finite) else 0.0
        hi = float(finite.max()) if len(finite) else 1.0
        cmap = linear_cmap("value", "Viridis256", low=lo, high=hi if hi > lo else lo + 1)
        if len(params) == 2:
            a, b = params
            feasible = np.isfinite(vals.to_numpy(dtype="float64"))
            hsrc = ColumnDataSource({"a": df[a].astype(str)[feasible].tolist(),
                                     "b": df[b].astype(str)[feasible].tolist(),
                                     "value": vals.to_numpy()[feasible]}, name="heatmap")
            xa = sorted(df[a].unique(), key=_sort_key)
            xb = sorted(df[b].unique(), key=_sort_key)
            h = figure(title=f"{objective} by {a[6:]} x {b[6:]}", x_range=[str(v) for v in xa],
                       y_range=[str(v) for v in xb], height=360, width=600, tools="save",
                       name="param_heatmap")
            cells = h.rect("a", "b", 1, 1, source=hsrc, fill_color=cmap, line_color="white")
            if not feasible.all():
                isrc = ColumnDataSource({"a": df[a].astype(str)[~feasible].tolist(),
                                         "b": df[b].astype(str)[~feasible].tolist()},
                                        name="heatmap_infeasible")
                h.rect("a", "b", 1, 1, source=isrc, fill_color="#eeeeee", line_color="white",
                       hatch_pattern="/", hatch_color="#9e9e9e",
                       legend_label=f"infeasible ({int((~feasible).sum())})")
                h.legend.location = "bottom_left"
                h.legend.label_text_font_size = "8pt"
                h.add_layout(h.legend[0], "below")
            h.add_tools(HoverTool(renderers=[cells], tooltips=[
                (a[6:], "@a"), (b[6:], "@b"), (str(objective), "@value{0.000}")]))
            h.add_layout(ColorBar(color_mapper=cmap["transform"], width=10,
                                  title=str(objective), name="heatmap_colorbar"), "right")
            h.xaxis.axis_label, h.yaxis.axis_label = a[6:], b[6:]
            figs.append(h)
        elif len(params) == 1:
            a = params[0]
            s = figure(title=f"{objective} by {a[6:]}", height=280, width=520, tools="save",
                       name="param_scatter")
            s.scatter(pd.to_numeric(df[a], errors="coerce").to_numpy(), vals.to_numpy(), size=7)
            figs.append(s)
        elif len(params) > 2:
            figs.append(_parallel_coordinates(df, params, vals, cmap, objective))
        parts.append(row(*figs))
    shown = df.sort_values(value_col, ascending=False) if value_col and len(df) else df
    parts.append(Div(text=CSS + "<h2>Trials (best first)</h2>" + _table_html(shown),
                     sizing_mode="stretch_width"))
    return column(*parts, sizing_mode="stretch_width")


def _sort_key(v):
    """Numbers (numpy's too) in numeric order, then anything else by its text.

    >>> sorted([10, np.int64(5), "a"], key=_sort_key)
    [np.int64(5), 10, 'a']
    """
    import numbers

    if isinstance(v, numbers.Number) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def _parallel_coordinates(df, params, vals, cmap, objective):
    """One line per trial across the parameters scaled to 0..1 (parallel coordinates)."""
    from bokeh.models import ColorBar, ColumnDataSource, FixedTicker
    from bokeh.plotting import figure

    xs, ys = [], []
    scaled = {}
    for c in params:
        col = pd.to_numeric(df[c], errors="coerce")
        if col.isna().all():
            codes = pd.Categorical(df[c].astype(str)).codes.astype(float)
            col = pd.Series(codes)
        lo, hi = float(col.min()), float(col.max())
        scaled[c] = ((col - lo) / (hi - lo) if hi > lo else col * 0 + 0.5).to_numpy()
    for i in range(len(df)):
        xs.append(list(range(len(params))))
        ys.append([float(scaled[c][i]) for c in params])
    src = ColumnDataSource({"xs": xs, "ys": ys, "value": vals.to_numpy()}, name="parallel")
    p = figure(title=f"Parallel coordinates (colour: {objective})", height=320, width=620,
               tools="save", name="parallel_fig")
    p.multi_line("xs", "ys", source=src, line_color=cmap, line_alpha=0.6)
    p.xaxis.ticker = FixedTicker(ticks=list(range(len(params))))
    p.xaxis.major_label_overrides = {i: c[6:] for i, c in enumerate(params)}
    p.yaxis.axis_label = "scaled 0 (min) .. 1 (max)"
    p.add_layout(ColorBar(color_mapper=cmap["transform"], width=10, title=str(objective),
                          name="parallel_colorbar"), "right")
    return p


def write_study_html(result: Any, path: str | os.PathLike, text: str | None = None) -> Path:
    """Write ``study.html`` for an optimisation result: objective by trial (with the best so
    far), a parameter heatmap for two parameters (parallel coordinates beyond two), DSR and
    PBO with one sentence each, and the trial table. ``result`` is an
    :class:`~m2k_bt.optimize.study.OptimizeResult` or a dict with ``trials`` (rows with ``number``,
    ``value``, ``params``), ``objective``, ``best_params``, ``best_value``, ``dsr``, ``pbo``.
    ``text``: the page already made (:func:`study_html_text`), written as it is."""
    if text is None:
        return save_html(study_layout(result), Path(path), "m2k_bt study")
    from ..outputs import atomic_write_text

    return atomic_write_text(Path(path), text)


def study_html_text(result: Any) -> str:
    """The text of :func:`write_study_html`'s page (made while cerebro checks the winner)."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    return file_html(study_layout(result), resources=INLINE, title="m2k_bt study")


def _folds_frame(result) -> pd.DataFrame:
    folds = _value(result, "folds") or []
    rows = []
    for i, f in enumerate(folds):
        row = dict(f) if isinstance(f, dict) else {
            k: v for k, v in vars(f).items() if not k.startswith("_")
        } if hasattr(f, "__dict__") else _dc_dict(f)
        row.setdefault("fold", i)
        params = row.pop("best_params", row.pop("params", None)) or {}
        row.update({f"param_{k}": v for k, v in params.items()})
        for side in ("is", "oos"):
            metrics = row.pop(f"{side}_metrics", None) or {}
            row.update({f"{side}_{k}": v for k, v in metrics.items()
                        if k in ("net_profit", "sharpe", "trades", "max_drawdown_pct")})
        rows.append({k: v for k, v in row.items()
                     if v is None or isinstance(v, (int, float, str, _dt.date, pd.Timestamp))})
    return pd.DataFrame(rows)


def _dc_dict(obj) -> dict:
    """A dataclass's fields as a shallow dict, values as they are (dates stay dates for the
    folds table); ``{}`` for anything else. Not a JSON clean-up: see ``outputs.jsonable``."""
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {}


#: The folds table's columns in reading order (after the fold number and its parameters); the
#: rest of folds.csv is in the "every column" table below it.
_FOLD_COLUMNS = ("oos_start", "oos_end", "is_start", "is_end", "is_objective", "is_sharpe",
                 "oos_sharpe", "oos_net_profit", "oos_return_pct", "oos_trades",
                 "oos_max_drawdown_pct", "efficiency", "oos_final_value", "engines_agree",
                 "partial")


def folds_table(folds: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """(the readable folds table, the columns with one value in every fold): the fold number,
    its parameters, then :data:`_FOLD_COLUMNS`; a column whose value is the same in every fold
    (the objective, trials per fold, engine) is said once above the table instead.

    >>> t, same = folds_table(pd.DataFrame({"fold": [0, 1], "objective": ["sharpe"] * 2,
    ...     "oos_net_profit": [1.0, 2.0], "param_fast": [10, 20], "is_bars": [5, 6]}))
    >>> list(t), same
    (['fold', 'param_fast', 'oos_net_profit'], {'objective': 'sharpe'})
    """
    if not len(folds):
        return folds, {}
    params = [c for c in folds.columns if c.startswith("param_")]
    same = {}
    if len(folds) > 1:
        for c in folds.columns:
            if c == "fold" or c in params or c.startswith(("is_", "oos_")) and c not in (
                    "is_trials", "oos_engine"):
                continue
            vals = folds[c].tolist()
            if not _blank(vals[0]) and all(v == vals[0] for v in vals):
                same[c] = vals[0]
    shown = ["fold", *params, *(c for c in _FOLD_COLUMNS if c in folds and c not in same)]
    return drop_empty_columns(folds[[c for c in shown if c in folds]]), same


def walkforward_layout(result: Any):
    """Bokeh layout of ``walkforward.html`` (see :func:`write_walkforward_html`)."""
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, Div, Label, NumeralTickFormatter, Span
    from bokeh.plotting import figure

    folds = _folds_frame(result)
    parts: list = []
    eff = _value(result, "efficiency", _value(result, "walk_forward_efficiency"))
    tone = "" if eff is None else ("pos" if eff >= 0.5 else "warn" if eff > 0 else "neg")
    head = (CSS + f"<h1>Walk-forward: {len(folds)} folds</h1><div class='m2k-cards'>"
            f"<div class='m2k-card'><div class='k'>Efficiency</div><div class='v {tone}'>"
            f"{esc(fmt_number(eff, 3))}</div></div></div><p class='m2k-note'>Walk-forward "
            "efficiency: annualised out-of-sample performance over in-sample performance of "
            "the parameters chosen in sample (1.0: the edge carries over; near 0 or negative: "
            "it does not).</p>")
    parts.append(Div(text=head, sizing_mode="stretch_width"))
    equity = _value(result, "oos_equity", _value(result, "equity"))
    if isinstance(equity, pd.DataFrame) and "value" in equity:
        equity = equity["value"]
    if isinstance(equity, pd.Series) and len(equity):
        t = to_ms(equity.index)
        values = equity.to_numpy(dtype="float64")
        src = ColumnDataSource({"t": t, "value": values}, name="oos_equity")
        p = figure(title="Stitched out-of-sample equity (dashed: fold boundaries)", height=320,
                   sizing_mode="stretch_width", x_axis_type="datetime",
                   tools="xpan,xwheel_zoom,box_zoom,reset,save", name="oos_fig")
        p.line("t", "value", source=src, line_width=1.3)
        p.yaxis.axis_label = "equity ($)"
        p.yaxis.formatter = NumeralTickFormatter(format="$0,0")
        for col in ("test_start", "oos_start", "start"):
            if col in folds:
                labels = folds["fold"].tolist() if "fold" in folds else range(len(folds))
                for x, k in zip(to_ms(folds[col].dropna()), labels, strict=False):
                    p.add_layout(Span(location=float(x), dimension="height",
                                      line_color="#888888", line_dash="dashed"))
                    p.add_layout(Label(x=float(x), y=float(np.nanmax(values)), x_offset=3,
                                       text=f"fold {k}", text_font_size="9pt",
                                       text_color="#555555", text_baseline="top",
                                       name="fold_label"))
                break
        parts.append(p)
    params = [c for c in folds.columns if c.startswith("param_")]
    if params and len(folds):
        from bokeh.models import FixedTicker

        figs = []
        for c in params:
            vals = pd.to_numeric(folds[c], errors="coerce")
            if vals.isna().all():
                continue
            f = figure(title=f"{c[6:]} chosen per fold", height=200, width=320, tools="save",
                       name=f"stability_{c[6:]}")
            f.line(folds["fold"].to_numpy(), vals.to_numpy())
            f.scatter(folds["fold"].to_numpy(), vals.to_numpy(), size=7)
            f.xaxis.axis_label = "fold"
            f.xaxis.ticker = FixedTicker(ticks=[int(x) for x in folds["fold"]])
            figs.append(f)
        if figs:
            parts.append(Div(text="<h2>Parameter stability</h2>", sizing_mode="stretch_width"))
            parts.append(row(*figs))
    table, same = folds_table(folds)
    constant = "; ".join(f"{_header(k)}: {fmt_cell(k, v)}" for k, v in same.items())
    parts.append(Div(
        text=CSS + "<h2>Folds</h2>"
        + (f"<p class='m2k-note'>Every fold: {esc(constant)}.</p>" if constant else "")
        + _table_html(table).replace("<table class='m2k m2k-wide'>",
                                     "<table class='m2k m2k-wide' id='m2k-folds'>", 1)
        + "<details><summary class='m2k-note'>Every column of folds.csv</summary>"
        + _table_html(folds) + "</details>",
        sizing_mode="stretch_width"))
    return column(*parts, sizing_mode="stretch_width")


def write_walkforward_html(result: Any, path: str | os.PathLike) -> Path:
    """Write ``walkforward.html``: stitched out-of-sample equity with fold boundaries, the
    per-fold table, the walk-forward efficiency and the parameters chosen per fold (stability).
    ``result`` is a :class:`~m2k_bt.optimize.walkforward.WalkForwardResult` or a dict with
    ``folds``, ``oos_equity`` (Series or frame with ``value``) and ``efficiency``."""
    return save_html(walkforward_layout(result), Path(path), "m2k_bt walk-forward")
