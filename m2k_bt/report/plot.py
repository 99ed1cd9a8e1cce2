"""Headless PNG plots: backtrader's own chart and an equity-and-drawdown chart.

Both render with matplotlib's Agg backend, set their own size and dpi, and write atomically
(a temporary file in the target folder, then ``os.replace``), so a half-written PNG never sits
under the final name.

Readability of ``plot_backtrader`` for long series: backtrader draws every bar it is given, so
100,000 minute bars become an unreadable smear. When the run has more than ``max_bars`` bars,
the chart shows the window of the last trades: from the entry of the ``last_trades``-th last
trade (fewer when they would span more than ``max_bars`` bars, at least the last one) to the end,
so a strategy that has been flat for months still shows its fills; with no trade at all it shows
the last ``max_bars`` bars. The title says which window it is, and the whole run stays visible in
``equity.png`` and, interactively, in ``report.html``. A window was chosen over resampling
because resampling would need a second run of the strategy on other bars: the window shows the
real fills, indicators and observers of this run. Up to ``candle_bars`` bars are drawn as
candles, more as a close line. Legends name the observers plainly, one entry per mark ("buy",
"sell", "account value") instead of backtrader's ``Value (None)`` / ``BuySell (True, 0.002)``
with each line's alias under it; volume has its own panel under the price.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..outputs import atomic_path

__all__ = [
    "DEFAULT_MAX_BARS",
    "DEFAULT_CANDLE_BARS",
    "DEFAULT_LAST_TRADES",
    "plot_backtrader",
    "plot_equity",
    "plot_window",
]

#: Bars shown by :func:`plot_backtrader` before it switches to the window of the last trades.
DEFAULT_MAX_BARS = 3000

#: Trades the window of :func:`plot_backtrader` aims to show.
DEFAULT_LAST_TRADES = 20

#: Plain legend names of the observers the engine adds for plotting.
OBSERVER_LABELS = {"BuySell": "buy / sell", "Value": "account value", "Broker": "cash / value"}

#: Up to this many shown bars are drawn as candles, above it as a line.
DEFAULT_CANDLE_BARS = 300


def _save_atomic(fig, path: Path, dpi: int) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor="white")
    return path


def plot_backtrader(
    cerebro,
    path: str | os.PathLike,
    max_bars: int = DEFAULT_MAX_BARS,
    size: tuple[float, float] = (16.0, 9.0),
    dpi: int = 100,
    candle_bars: int = DEFAULT_CANDLE_BARS,
    last_trades: int = DEFAULT_LAST_TRADES,
) -> Path:
    """Save backtrader's built-in plot of the first strategy of a finished run as a PNG.

    - ``cerebro``: a ``bt.Cerebro`` after ``run()`` (not with ``exactbars >= 1``, which frees
      the bars plotting needs).
    - ``path``: the PNG to write; its folder must exist.
    - ``max_bars`` (def: ``3000``): most bars drawn; longer runs show the window of the last
      trades (see the module doc and :func:`plot_window`).
    - ``last_trades`` (def: ``20``): trades that window aims to hold.
    - ``size`` (def: ``(16, 9)``) inches and ``dpi`` (def: ``100``): 1600 x 900 pixels.
    - ``candle_bars`` (def: ``300``): candles up to this many shown bars, a line above.

    Returns ``path`` as a ``Path``. Raises :class:`~m2k_bt.errors.ConfigError` when the
    cerebro has not run or ``max_bars`` < 2.
    """
    import backtrader.plot  # noqa: F401 - forces TkAgg at import: switch to Agg after it
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not isinstance(max_bars, int) or max_bars < 2:
        raise ConfigError(f"max_bars must be a whole number >= 2, got {max_bars!r}")
    runstrats = getattr(cerebro, "runstrats", None) or []
    if not runstrats or not runstrats[0]:
        raise ConfigError("plot_backtrader needs a cerebro that has run: call cerebro.run() first")
    strategy = runstrats[0][0]
    if getattr(cerebro.p, "exactbars", 0) >= 1:
        raise ConfigError(
            "plot_backtrader cannot plot a run with exactbars >= 1 (bars were freed); "
            "use exactbars=0, -1 or -2"
        )
    total = len(strategy)
    trades = _trade_bars(strategy)
    start, end, n_trades = plot_window(total, trades, max_bars, last_trades)
    shown = end - start
    style = "candle" if shown <= candle_bars else "line"
    _plain_labels(strategy)
    # voloverlay=False: volume in its own panel under the price, not drawn over it
    figs = cerebro.plot(iplot=False, start=start, end=end, numfigs=1, style=style, volume=True,
                        voloverlay=False)
    fig = figs[0][0]
    try:
        fig.set_size_inches(*size)
        _one_line_legends(fig)
        _date_axis(fig, strategy, start, shown)
        if shown == total:
            label = f"all {total:,} bars, {len(trades)} trades"
        elif n_trades:
            label = (f"last {n_trades} of {len(trades)} trades (bars {start + 1:,}-{end:,} "
                     f"of {total:,}; the whole run is in equity.png and report.html)")
        else:
            label = f"last {shown:,} of {total:,} bars (no trades)"
        fig.suptitle(f"{type(strategy).__name__}: {label}", fontsize=11)
        return _save_atomic(fig, Path(path), dpi)
    finally:
        for group in figs:
            for f in group:
                plt.close(f)


def plot_window(total: int, trades: list[tuple[int, int]], max_bars: int, last_trades: int
                ) -> tuple[int, int, int]:
    """(first bar drawn, bar after the last drawn, trades in the window) for a run of
    ``total`` bars whose trades span the bar indices ``trades`` [(entry, exit), ...] (sorted).

    The whole run when it has at most ``max_bars`` bars. Otherwise the window of the last
    trades: from a few bars before the entry of the ``last_trades``-th last trade (or of the
    oldest one that keeps the window within ``max_bars``; always at least the last trade) to a
    few bars after the last exit. With no trades, the last ``max_bars`` bars.

    >>> plot_window(1000, [(10, 20), (500, 600)], max_bars=2000, last_trades=20)
    (0, 1000, 2)
    >>> plot_window(10_000, [(100, 200), (5000, 5100), (7000, 7400), (8000, 8200)],
    ...             max_bars=3000, last_trades=20)  # pad 3000 // 60 = 50; end past exit 8200
    (6950, 8251, 2)
    >>> plot_window(10_000, [], max_bars=3000, last_trades=20)
    (7000, 10000, 0)
    """
    if total <= max_bars:
        return 0, total, len(trades)
    if not trades:
        return total - max_bars, total, 0
    pad = max(5, max_bars // 60)
    end = min(total, trades[-1][1] + pad + 1)
    chosen, count = trades[-1][0], 1
    for i in range(2, min(last_trades, len(trades)) + 1):
        candidate = trades[-i][0]
        if end - (candidate - pad) > max_bars:
            break
        chosen, count = candidate, i
    return max(0, chosen - pad), end, count


def _trade_bars(strategy) -> list[tuple[int, int]]:
    """(entry, exit) bar indices (0-based) of the strategy's logged trades."""
    import backtrader as bt
    import numpy as np

    log = [r for r in getattr(strategy, "trade_log", None) or []
           if r.get("entry_dt") is not None and r.get("exit_dt") is not None]
    if not log:
        return []
    times = np.asarray(strategy.datetime.array, dtype="float64")

    def index(key):
        nums = np.asarray([bt.date2num(r[key]) for r in log])
        return np.minimum(np.searchsorted(times, nums - 1e-9), len(times) - 1)

    return sorted(zip(index("entry_dt").tolist(), index("exit_dt").tolist(), strict=True))


def _plain_labels(strategy) -> None:
    """Legend names without backtrader's parameter tuples (``BuySell (True, 0.002)``)."""
    for obs in strategy.getobservers():
        name = OBSERVER_LABELS.get(type(obs).__name__)
        if name:
            obs.plotinfo.plotname = name
            obs._plotlabel = list  # no "(params...)" suffix


def legend_label(text: str) -> str:
    r"""One legend line per mark: backtrader labels each line of an observer with its name on a
    line of its own above the line's alias (``"buy / sell\nbuy"``); the buy and sell marks keep
    their alias, other observers their name and last value.

    >>> legend_label("buy / sell\nbuy"), legend_label("account value\nvalue 22060.06")
    ('buy', 'account value 22060.06')
    >>> legend_label("SMA (50) 1863.20")
    'SMA (50) 1863.20'
    """
    head, newline, tail = text.partition("\n")
    if not newline:
        return text
    if head == OBSERVER_LABELS["BuySell"]:
        return tail
    _alias, _, value = tail.partition(" ")
    return f"{head} {value}".strip()


def _one_line_legends(fig) -> None:
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            for text in legend.get_texts():
                text.set_text(legend_label(text.get_text()))


def _date_axis(fig, strategy, start: int, shown: int) -> None:
    """Date labels on the bottom axis. backtrader's own date locator draws no ticks under
    matplotlib >= 3.8, so the x axis (bar indices 0..shown-1) gets a plain index locator and a
    formatter that maps an index to its bar's time."""
    import backtrader as bt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    dts = [bt.num2date(x) for x in strategy.datetime.plot(start, shown)]
    if not dts:
        return
    spacing = (dts[-1] - dts[0]) / max(len(dts) - 1, 1)
    fmt = "%Y-%m-%d" if spacing.total_seconds() >= 86400 else "%Y-%m-%d\n%H:%M"

    def label(x: float, pos=None) -> str:
        i = int(round(x))
        return dts[i].strftime(fmt) if 0 <= i < len(dts) else ""

    bottom = min(fig.axes, key=lambda ax: ax.get_position().y0)
    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(label))
        ax.tick_params(axis="x", labelbottom=ax.get_position().y0 == bottom.get_position().y0)
    fig.subplots_adjust(top=0.95, bottom=0.08)


def plot_equity(
    equity_df,
    path: str | os.PathLike,
    title: str | None = None,
    size: tuple[float, float] = (12.0, 7.0),
    dpi: int = 110,
) -> Path:
    """Save equity (top) and drawdown in % (bottom) of a whole run as a PNG.

    - ``equity_df``: a DataFrame indexed by datetime with a ``value`` column ($) and optionally
      ``drawdown_pct`` (%); the drawdown is computed from ``value`` when missing. This is the
      ``equity`` attribute of a backtest result, or ``analyzers.equity_frame(...)``.
    - ``path``: the PNG to write; ``title`` (def: ``None``): a heading.
    - ``size`` (def: ``(12, 7)``) inches and ``dpi`` (def: ``110``).

    Uses matplotlib's object API with an Agg canvas: it never touches pyplot's global state.
    Raises :class:`~m2k_bt.errors.ConfigError` for an empty frame or no ``value`` column.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if equity_df is None or len(equity_df) == 0 or "value" not in equity_df:
        raise ConfigError("plot_equity needs a non-empty DataFrame with a 'value' column")
    value = equity_df["value"].astype(float)
    if "drawdown_pct" in equity_df:
        dd = equity_df["drawdown_pct"].astype(float)
    else:
        peak = value.cummax()
        dd = 100.0 * (peak - value) / peak
    x = equity_df.index

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot(x, value, color="tab:blue", linewidth=1.0)
    top.axhline(value.iloc[0], color="grey", linewidth=0.8, linestyle="--")
    top.set_ylabel("equity ($)")
    top.grid(alpha=0.3)
    top.yaxis.set_major_formatter("${x:,.0f}")
    change = value.iloc[-1] - value.iloc[0]
    # a bare "$" pair would switch matplotlib to math text: escape it
    sign = "+" if change >= 0 else "-"
    heading = (
        f"Equity \\${value.iloc[0]:,.2f} to \\${value.iloc[-1]:,.2f} ({sign}\\${abs(change):,.2f})"
    )
    top.set_title(title or heading, fontsize=11)
    bottom.fill_between(x, -dd.fillna(0.0), 0.0, color="tab:red", alpha=0.4, linewidth=0)
    bottom.plot(x, -dd.fillna(0.0), color="tab:red", linewidth=0.8)
    bottom.set_ylabel("drawdown (%)")
    bottom.grid(alpha=0.3)
    worst = dd.max()
    if worst == worst and worst > 0:  # not NaN
        bottom.set_title(f"max drawdown {worst:.2f} %", fontsize=9, loc="left")
    fig.autofmt_xdate()
    return _save_atomic(fig, Path(path), dpi)
