"""The kernel's data: one selected bar set with every array the kernel derives from it.

A :class:`KernelData` (made by :func:`prepare`) holds the price columns, tick counts, bar times
and the indicator arrays already built, so that every trial of a study on the same bars shares
them; :func:`m2k_bt.kernel.simulation.simulate` takes it in place of the bars.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pandas as pd
from numba import njit

from ..engine import BacktestConfig, Plan, select_bars
from ..indicators.bands import (
    adaptive_windows,
    band_arrays,
    sma_directions,
    tick_counts,
    window_sum,
)
from ..rules.margin import day_fraction, in_window
from ..sessions import EPOCH_ORDINAL, GLOBEX_REOPEN, date2num, trade_dates64

__all__ = ["KernelData", "prepare", "ParamsStandIn", "SIGNALS_KEPT", "SUMS_KEPT"]

#: Per-trial signal arrays a KernelData keeps (see ``KernelData._get_signal``).
SIGNALS_KEPT = 8
#: Windows whose tick sums a KernelData keeps (two int64 arrays of n bars each; a window is
#: recomputed in one O(n) pass when it comes back): a search over 100 windows of 1M bars
#: would otherwise hold 1.6 GB.
SUMS_KEPT = 32
#: Bytes of tick sums a KernelData may keep beyond :data:`SUMS_KEPT` windows: on a short bar
#: set every window of a study's grid stays (200 windows of 17,547 bars: 42 MB at most), on
#: 1M bars :data:`SUMS_KEPT` windows do (0.4 GB at most, as before).
SUMS_BYTES = 96 * 2**20


_DAY_US = 86_400_000_000
_REOPEN_US = (GLOBEX_REOPEN.hour * 60 + GLOBEX_REOPEN.minute) * 60_000_000
#: FuturesBroker's intraday-margin window (``intraday_window``'s default), computed with the
#: bar times.
_WINDOW_TIMES = ("09:30", "15:45")
_WINDOW = tuple(day_fraction(_dt.time.fromisoformat(t)) for t in _WINDOW_TIMES)


def _wall_clock_ns(index: pd.DatetimeIndex) -> np.ndarray:
    """New York wall-clock times of ``index`` (naive ones as they are), int64 nanoseconds.

    Equal to ``index.tz_convert("America/New_York").tz_localize(None)`` without pandas'
    per-bar look-up of the UTC offset: the offset is looked up every :data:`_STRIDE` bars, and
    a stretch whose two ends have the same offset and lie less than a week apart has it
    throughout (New York's clocks change twice a year, months apart); other stretches are
    converted by pandas.
    """
    if index.tz is None:
        return index.as_unit("ns").asi8
    utc = index.as_unit("ns").asi8
    ends = np.unique(np.append(np.arange(0, len(utc), _STRIDE), len(utc) - 1))
    offsets = _ny_wall(utc[ends]) - utc[ends]
    wall = np.empty(len(utc), np.int64)
    for a, b in _shift_stretches(utc, ends, offsets, wall).tolist():
        wall[a:b + 1] = _ny_wall(utc[a:b + 1])
    return wall


_STRIDE = 1024
_WEEK_NS = 7 * 86_400 * 10**9


def _ny_wall(utc: np.ndarray) -> np.ndarray:
    """pandas' New York wall-clock nanoseconds of UTC nanoseconds."""
    return pd.DatetimeIndex(utc.view("datetime64[ns]")).tz_localize("UTC").tz_convert(
        "America/New_York").tz_localize(None).asi8


@njit(cache=True)
def _shift_stretches(utc, ends, offsets, wall):
    """``wall = utc + offset`` over each stretch ``ends[j]..ends[j + 1]`` whose ends share
    their offset less than a week apart; returns the other stretches (first, last bar)."""
    other = np.empty((max(len(ends) - 1, 0), 2), np.int64)
    k = 0
    if len(ends) == 1:
        wall[0] = utc[0] + offsets[0]
    for j in range(len(ends) - 1):
        a, b = ends[j], ends[j + 1]
        if offsets[j] == offsets[j + 1] and utc[b] - utc[a] < _WEEK_NS:
            for i in range(a, b + 1):
                wall[i] = utc[i] + offsets[j]
        else:
            other[k, 0], other[k, 1] = a, b
            k += 1
    return other[:k]


@njit(cache=True)
def _bar_time(ns, lo, hi):
    """One bar's time as backtrader reads it from naive wall-clock nanoseconds ``ns``: int64
    microseconds equal to ``sessions.num2datetime64(sessions.date2num(ns))`` (the same float
    steps, in the same order), and whether it is inside ``FuturesBroker``'s intraday window
    ``[lo, hi)`` (:func:`~m2k_bt.rules.margin.in_window` of the float time)."""
    # sessions.date2num
    days = ns // 86_400_000_000_000
    rem = ns - days * 86_400_000_000_000
    hour = rem // 3_600_000_000_000
    minute = (rem // 60_000_000_000) % 60
    second = (rem // 1_000_000_000) % 60
    micro = (rem // 1000) % 1_000_000
    num = float(days + EPOCH_ORDINAL) + (hour / 24.0 + minute / 1440.0 + second / 86400.0
                                         + micro / 86400000000.0)
    inside = in_window(num, lo, hi)
    # sessions.num2datetime64
    day = np.floor(num)
    part = (num - day) * 24.0
    h = np.floor(part)
    part = (part - h) * 60.0
    m = np.floor(part)
    part = (part - m) * 60.0
    sec = np.floor(part)
    us = np.int64((part - sec) * 1e6)
    if us < 10:
        us = 0
    elif us > 999_990:
        us = 1_000_000
    whole = (np.int64(day) - EPOCH_ORDINAL) * 24 + np.int64(h)
    whole = (whole * 60 + np.int64(m)) * 60 + np.int64(sec)
    return whole * 1_000_000 + us, inside


@njit(cache=True)
def _bar_times(wall, lo, hi):
    """:func:`_bar_time` of every bar of ``wall`` (naive wall-clock nanoseconds), in one pass:
    int64 microseconds and the intraday-window flags.

    A bar on a whole minute reuses the answer of an earlier bar on the same minute of the
    day. That is exact: ``date2num`` adds the day number ``D`` (an integer) to the fraction
    of the day, and every later step reads only ``num - floor(num)``; while ``D`` keeps its
    binary exponent (every date pandas holds in nanoseconds has the same), the rounding of
    ``D + fraction`` depends on the fraction alone, so the bar's time is ``D``'s midnight
    plus the same offset, and its window flag the same (the memo is checked for that).

    >>> from m2k_bt.sessions import num2datetime64
    >>> w = pd.DatetimeIndex(["2024-03-10 02:59:59.999995", "2024-11-03 01:30:00.000007",
    ...                       "1969-12-31 23:59:00", "2024-07-01 15:44:59"]).as_unit("ns")
    >>> t, inwin = _bar_times(w.asi8, *_WINDOW)
    >>> bool((t == num2datetime64(date2num(w)).view("int64")).all()), inwin.tolist()
    (True, [False, False, False, True])
    """
    n = len(wall)
    times = np.empty(n, np.int64)
    inwin = np.empty(n, np.bool_)
    memo_day = np.zeros(1440, np.int64)  # D of the bar the answer was made on (0: none)
    memo_add = np.zeros(1440, np.int64)  # its time minus its day's midnight, microseconds
    memo_in = np.zeros(1440, np.bool_)
    for i in range(n):
        ns = wall[i]
        days = ns // 86_400_000_000_000
        rem = ns - days * 86_400_000_000_000
        big = days + EPOCH_ORDINAL
        if big > 0 and rem % 60_000_000_000 == 0:
            key = rem // 60_000_000_000
            seen = memo_day[key]
            if seen > 0 and (seen ^ big) < (seen & big):  # the same binary exponent
                times[i] = days * 86_400_000_000 + memo_add[key]
                inwin[i] = memo_in[key]
                continue
            t, inside = _bar_time(ns, lo, hi)
            memo_day[key] = big
            memo_add[key] = t - days * 86_400_000_000
            memo_in[key] = inside
        else:
            t, inside = _bar_time(ns, lo, hi)
        times[i] = t
        inwin[i] = inside
    return times, inwin


@njit(cache=True)
def _majority_step(wall):
    """The step between consecutive times held by more than half of them, and how many hold
    it (Boyer-Moore vote; the count says whether it is a majority)."""
    best, votes = 0, 0
    for i in range(1, len(wall)):
        step = wall[i] - wall[i - 1]
        if votes == 0:
            best, votes = step, 1
        elif step == best:
            votes += 1
        else:
            votes -= 1
    count = 0
    for i in range(1, len(wall)):
        if wall[i] - wall[i - 1] == best:
            count += 1
    return best, count


def _median_step(wall: np.ndarray) -> float:
    """``np.median(np.diff(wall))`` without the two arrays when one step is a majority (then
    both middle elements are that step)."""
    step, count = _majority_step(wall)
    if 2 * count > len(wall) - 1:
        return float(step)
    return float(np.median(np.diff(wall)))


@njit(cache=True)
def _date_runs(times, reopen):
    """Bars on each CME trade date (``sessions.trade_dates64``: from ``reopen`` microseconds
    on, the next day's) of bar times in microseconds, or None when the trade dates are not in
    order."""
    n = len(times)
    starts = np.empty(n + 1, np.int64)  # the first bar of each run of one date
    k = 0
    last = np.int64(0)
    lo = np.int64(1)  # the current date's bars are in [lo, hi) (empty before the first)
    hi = np.int64(0)
    for i in range(n):
        t = times[i]
        if lo <= t < hi:  # the same trade date: no division
            continue
        day = t // _DAY_US
        date = day + (1 if t - day * _DAY_US >= reopen else 0)
        if k > 0 and date < last:
            return None
        if k == 0 or date != last:
            starts[k] = i
            k += 1
            last = date
        lo = (date - 1) * _DAY_US + reopen  # trade date ``date``: from the reopen before it
        hi = date * _DAY_US + reopen
    starts[k] = n
    return np.diff(starts[:k + 1])


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

        wall = _wall_clock_ns(selected.index)
        times, inwin = _bar_times(wall, *_WINDOW)
        self.times = times.view("datetime64[us]")  # bar times exactly as backtrader's
        steps = len(wall) - 1
        spacing = _median_step(wall) / 60e9 if steps > 0 else None
        del wall
        self.intraday = spacing is not None and spacing < 1440
        self.compression = max(1, int(round(spacing))) if self.intraday else 1
        self.ct = tick_counts(self.close, tick)
        self._memo: dict = {}  # shared by trials: tick sums by window, ATR/ADX/RSI, windows
        self._signals: dict = {}  # per trial: the last SIGNALS_KEPT signals
        self._sums: dict = {}  # tick sums of the last windows used (``_sums_kept``)
        # windows kept: SUMS_KEPT, or as many as fit SUMS_BYTES (int32 sums + int64 squares)
        self._sums_kept = max(SUMS_KEPT, SUMS_BYTES // max(1, 12 * self.n))
        self._per_date = None
        self._dtindex = None
        self._memo[("window", *_WINDOW_TIMES)] = inwin

    @property
    def num(self) -> np.ndarray:
        """backtrader's float times of the bars (``sessions.date2num``), made when first read
        (only the event filters read them)."""
        return self._get(("num",), lambda: date2num(_wall_clock_ns(self.bars.index)
                                                   .view("datetime64[ns]")))

    def minus_ones(self) -> np.ndarray:
        """An int64 array of -1 per bar, made once and shared (never written to): "none" for
        the loop's per-bar inputs that may hold nothing (no stop distance, no event). Not
        flagged read-only: numba would compile the loop again for that type."""
        return self._get(("minus_ones",), lambda: np.full(self.n, -1, dtype="int64"))

    def per_date(self) -> list[int]:
        """Bars on each CME trade date (for the annualisation rule), computed once."""
        if self._per_date is None:
            counts = _date_runs(self.times.view("int64"), _REOPEN_US)
            if counts is None:  # not in time order: count them apart
                _, counts = np.unique(trade_dates64(self.times), return_counts=True)
            self._per_date = counts.tolist()
        return self._per_date

    def dtindex(self) -> pd.DatetimeIndex:
        """The bar times as the equity curve's index (naive New York time), made once."""
        if self._dtindex is None:
            self._dtindex = pd.DatetimeIndex(self.times, name="datetime", copy=False)
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

    def forget_signals(self) -> None:
        """Drop the kept signals and tick sums (they are made again when asked for)."""
        self._signals.clear()
        self._sums.clear()

    def _get_signal(self, key, make):
        """A trial's own signal (one per parameter set, so a study would otherwise keep one
        array of n bars per trial): only the last :data:`SIGNALS_KEPT` are kept."""
        return _recent(self._signals, key, make, SIGNALS_KEPT)

    def sums(self, period: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact tick sums of ``period`` closes (and squares) ending at each bar (0 before),
        int64."""
        kept = self._kept_sums(period)
        if kept[0].dtype != np.int64:
            kept[0] = kept[0].astype(np.int64)
        if kept[1] is None:
            kept[1] = window_sum(self.ct, period, True)
        return kept[0], kept[1]

    def _kept_sums(self, period: int) -> list:
        """``[sums, squares or None]`` of ``period``: the squares are made when first asked
        for (an SMA reads only the sums), and the sums are kept as int32 while they fit (the
        SMA rule multiplies them in int64; :meth:`sums` gives int64)."""
        def make():
            s = window_sum(self.ct, period, False)
            if len(s) and -2**31 < s.min() and s.max() < 2**31:
                s = s.astype(np.int32)
            return [s, None]
        return _recent(self._sums, ("sums", period), make, self._sums_kept)

    def sma_signal(self, fast: int, slow: int) -> np.ndarray:
        """+1 where the fast SMA is above the slow one, else -1 (exact, in ticks)."""
        def make():
            return sma_directions(self._kept_sums(fast)[0], fast, self._kept_sums(slow)[0],
                                  slow)
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
