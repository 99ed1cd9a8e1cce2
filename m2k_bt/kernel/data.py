"""The kernel's data: one selected bar set with every array the kernel derives from it.

A :class:`KernelData` (made by :func:`prepare`) holds the price columns, tick counts, bar times
and the indicator arrays already built, so that every trial of a study on the same bars shares
them; :func:`m2k_bt.kernel.simulation.simulate` takes it in place of the bars.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pandas as pd

from ..engine import BacktestConfig, Plan, select_bars
from ..indicators.bands import (
    adaptive_windows,
    band_arrays,
    sma_directions,
    tick_counts,
    window_sums,
)
from ..rules.margin import day_fraction
from ..sessions import date2num, num2datetime64, trade_dates64

__all__ = ["KernelData", "prepare", "ParamsStandIn", "SIGNALS_KEPT", "SUMS_KEPT"]

#: Per-trial signal arrays a KernelData keeps (see ``KernelData._get_signal``).
SIGNALS_KEPT = 8
#: Windows whose tick sums a KernelData keeps (two int64 arrays of n bars each; a window is
#: recomputed in one O(n) pass when it comes back): a search over 100 windows of 1M bars
#: would otherwise hold 1.6 GB.
SUMS_KEPT = 32


def _recent(store: dict, key, make, limit: int):
    """``store[key]``, made if missing; the ``limit`` most recently used entries are kept."""
    value = store.pop(key, None)
    if value is None:
        value = make()
    store[key] = value  # most recent last
    while len(store) > limit:
        del store[next(iter(store))]
    return value


class KernelData:
    """One selected bar set with everything the kernel derives from it, computed once.

    Holds the price columns, tick counts, bar times and the indicator arrays already built
    (window tick sums by period, SMA signals by (fast, slow), band sides, ATR/ADX/RSI by
    period), so that every trial of a study on the same bars shares them. Made by
    :func:`prepare`; pass it to :func:`simulate` instead of the bars.
    """

    def __init__(self, selected: pd.DataFrame, tick: float, data_report: list) -> None:
        self.bars = selected
        self.tick = float(tick)
        self.data_report = data_report
        self.n = len(selected)
        self.open = selected["open"].to_numpy(dtype="float64")
        self.high = selected["high"].to_numpy(dtype="float64")
        self.low = selected["low"].to_numpy(dtype="float64")
        self.close = selected["close"].to_numpy(dtype="float64")
        roll = selected["roll"].to_numpy() if "roll" in selected.columns else None
        self.roll = (np.asarray(roll, dtype="float64") == 1.0) if roll is not None else \
            np.zeros(self.n, dtype=bool)

        idx = selected.index
        if idx.tz is not None:
            idx = idx.tz_convert("America/New_York").tz_localize(None)
        self.num = date2num(idx)  # backtrader's float times
        self.times = num2datetime64(self.num)  # bar times exactly as backtrader's
        self.tod = (self.times - self.times.astype("datetime64[D]")).astype("int64")  # us
        steps = np.diff(idx.as_unit("ns").asi8)
        spacing = float(np.median(steps)) / 60e9 if len(steps) else None
        self.intraday = spacing is not None and spacing < 1440
        self.compression = max(1, int(round(spacing))) if self.intraday else 1
        self.ct = tick_counts(self.close, tick)
        self._memo: dict = {}  # shared by trials: tick sums by window, ATR/ADX/RSI, windows
        self._signals: dict = {}  # per trial: the last SIGNALS_KEPT signals
        self._sums: dict = {}  # tick sums of the last SUMS_KEPT windows used
        self._per_date = None
        self._dtindex = None

    def per_date(self) -> list[int]:
        """Bars on each CME trade date (for the annualisation rule), computed once."""
        if self._per_date is None:
            _, counts = np.unique(trade_dates64(self.times), return_counts=True)
            self._per_date = counts.tolist()
        return self._per_date

    def dtindex(self) -> pd.DatetimeIndex:
        """The bar times as the equity curve's index (naive New York time), made once."""
        if self._dtindex is None:
            self._dtindex = pd.DatetimeIndex(self.times, name="datetime")
        return self._dtindex

    def intraday_window(self, start: str = "09:30", end: str = "15:45") -> np.ndarray:
        """Bars inside ``FuturesBroker``'s intraday-margin window, by its own rule (fraction
        of the day of backtrader's float time, plus 1e-7 day)."""
        key = ("window", start, end)

        def make():
            lo = day_fraction(_dt.time.fromisoformat(start))
            hi = day_fraction(_dt.time.fromisoformat(end))
            frac = self.num % 1.0 + 1e-7
            return (lo <= frac) & (frac < hi)
        return self._get(key, make)

    def when(self, i: int) -> _dt.datetime:
        """Bar ``i``'s time as a naive ``datetime``, as backtrader's ``num2date`` gives it."""
        return self.times[i].item()

    def _get(self, key, make):
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = make()
        return value

    def _get_signal(self, key, make):
        """A trial's own signal (one per parameter set, so a study would otherwise keep one
        array of n bars per trial): only the last :data:`SIGNALS_KEPT` are kept."""
        return _recent(self._signals, key, make, SIGNALS_KEPT)

    def sums(self, period: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact tick sums of ``period`` closes (and squares) ending at each bar (0 before)."""
        return _recent(self._sums, ("sums", period), lambda: window_sums(self.ct, period),
                       SUMS_KEPT)

    def sma_signal(self, fast: int, slow: int) -> np.ndarray:
        """+1 where the fast SMA is above the slow one, else -1 (exact, in ticks)."""
        def make():
            return sma_directions(self.sums(fast)[0], fast, self.sums(slow)[0], slow)
        return self._get_signal(("sma", fast, slow), make)

    def band(self, period: int, devfactor: float, ddof: int) -> tuple[np.ndarray, np.ndarray]:
        """(band signal, middle side) per bar for fixed-window bands: signal +1 below the lower
        band, -1 above the upper, else 0; middle side = sign(n x close - sum)."""
        def make():
            s, q = self.sums(period)
            return band_arrays(self.ct, s, q, period, devfactor, ddof)
        return self._get_signal(("band", period, float(devfactor), int(ddof)), make)

    def adaptive_window(self, p) -> np.ndarray:
        key = ("adaptive", p["period_high"], p["period_low"], p["vol_lookback"],
               float(p["vol_threshold"]))
        return self._get(key, lambda: adaptive_windows(
            self.close, p["period_high"], p["period_low"], p["vol_lookback"],
            p["vol_threshold"]))

    def adaptive_band(self, p) -> tuple[np.ndarray, np.ndarray]:
        key = ("aband", p["period_high"], p["period_low"], p["vol_lookback"],
               float(p["vol_threshold"]), float(p["devfactor"]), int(p["ddof"]))

        def make():
            window = self.adaptive_window(p)
            sh, qh = self.sums(p["period_high"])
            sl, ql = self.sums(p["period_low"])
            high = window == p["period_high"]
            s = np.where(high, sh, sl)
            q = np.where(high, qh, ql)
            w = np.where(window > 0, window, p["period_low"])
            return band_arrays(self.ct, s, q, w, p["devfactor"], p["ddof"])
        return self._get_signal(key, make)

    def signals(self, key, make):
        """A signal strategy's computed signal (kept like the built-ins' signals)."""
        return self._get_signal(key, make)

    def indicator(self, kind: str, period: int) -> tuple[np.ndarray, int]:
        """backtrader's own ATR / ADX / RSI(safediv) values and minimum period, computed once
        in a cerebro pass (runonce) over these bars."""
        key = ("bt", kind, period)
        if key not in self._memo:
            missing = [k for k in self._pending_bt if ("bt", *k) not in self._memo]
            self._probe(sorted(set(missing) | {(kind, period)}))
        return self._memo[key]

    _pending_bt: tuple = ()

    def _probe(self, specs) -> None:
        import backtrader as bt

        from ..feeds.bars import BarsFeed

        class Probe(bt.Strategy):
            def __init__(self):
                self.made = {}
                for kind, period in specs:
                    if kind == "atr":
                        ind = bt.ind.ATR(self.data, period=period)
                    elif kind == "adx":
                        ind = bt.ind.ADX(self.data, period=period)
                    else:
                        ind = bt.ind.RSI(self.data.close, period=period, safediv=True)
                    self.made[(kind, period)] = ind

        cerebro = bt.Cerebro(runonce=True, preload=True, stdstats=False)
        cerebro.adddata(BarsFeed(dataname=self.bars))
        cerebro.addstrategy(Probe)
        strat = cerebro.run()[0]
        for spec, ind in strat.made.items():
            values = np.frombuffer(ind.lines[0].array, dtype="float64", count=self.n).copy() \
                if self.n else np.zeros(0)
            self._memo[("bt", *spec)] = (values, int(ind._minperiod))


class ParamsStandIn:
    """A stand-in for an indicator's or a sizer's ``self`` holding only ``p`` (to call its
    ``_compute`` or its checks without backtrader)."""

    def __init__(self, **kw) -> None:
        self.p = type("P", (), kw)


def prepare(bars: pd.DataFrame, config: BacktestConfig | Plan | None = None) -> KernelData:
    """The bars ``config`` (or its plan) selects (start, end, resample), ready for
    :func:`~m2k_bt.kernel.simulation.simulate`."""
    config = config.config if isinstance(config, Plan) else (config or BacktestConfig())
    data_report = list(getattr(bars, "attrs", {}).get("report", []) or [])
    selected = select_bars(bars, config)
    return KernelData(selected, float(config.spec.tick_size), data_report)
