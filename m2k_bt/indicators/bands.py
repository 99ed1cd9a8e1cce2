"""Indicators the article uses where backtrader lacks them.

- :class:`BollingerBandsDdof`: Bollinger bands whose standard deviation takes a ``ddof``
  (``ddof=1`` is pandas' ``rolling().std()``, the article's; ``ddof=0`` is backtrader's own
  population bands).
- :class:`AdaptiveBollingerBands`: the article's volatility-adjusted bands: a window of 20 bars
  when recent volatility is high and 14 when it is low, chosen afresh on every bar.
- :class:`FibonacciLevels`: Fibonacci retracement levels over a swing lookback, usable as
  profit targets.

All three compute the same numbers in backtrader's ``runonce`` (vectorised) and ``next``
(bar by bar) modes: both paths call the same numpy routine.
"""

from __future__ import annotations

from array import array

import backtrader as bt
import numpy as np
from numba import njit
from numpy.lib.stride_tricks import sliding_window_view

from ..contracts import M2K

__all__ = [
    "BollingerBandsDdof",
    "AdaptiveBollingerBands",
    "FibonacciLevels",
    "FIB_RATIOS",
    "fibonacci_levels",
    "rolling_bands",
    "TickSums",
    "tick_counts",
    "window_tick_sums",
    "sma_above",
    "band_side",
    "window_sums",
    "window_sum",
    "sma_directions",
    "band_arrays",
    "adaptive_windows",
]

#: Retracement ratios drawn by :class:`FibonacciLevels`, as fractions of the swing.
FIB_RATIOS: tuple[float, ...] = (0.236, 0.382, 0.5, 0.618, 0.786)


def rolling_bands(windows: np.ndarray, devfactor: float, ddof: int) -> tuple[np.ndarray, ...]:
    """Middle, upper and lower band for each row of ``windows`` (shape ``(n, period)``).

    The middle band is the mean of the row; the half-width is ``devfactor`` standard deviations
    with ``ddof`` delta degrees of freedom. A row whose values are all equal gets the value itself
    as middle band and a width of exactly 0, as pandas does, so no rounding noise can put a price
    outside a zero-width band.

    >>> mid, top, bot = rolling_bands(np.array([[1.0, 2.0, 3.0]]), 2.0, 1)
    >>> float(mid[0]), float(top[0]), float(bot[0])
    (2.0, 4.0, 0.0)
    """
    windows = np.asarray(windows, dtype="float64")
    mid = windows.mean(axis=1)
    dev = windows - mid[:, None]
    std = np.sqrt((dev * dev).sum(axis=1) / (windows.shape[1] - ddof))
    flat = windows.max(axis=1) == windows.min(axis=1)
    mid = np.where(flat, windows[:, 0], mid)
    std = np.where(flat, 0.0, std)
    return mid, mid + devfactor * std, mid - devfactor * std


def _window_std(values: np.ndarray, ddof: int) -> np.ndarray:
    """Standard deviation (``ddof``) of each row of a 2-d array."""
    mean = values.mean(axis=1)
    dev = values - mean[:, None]
    return np.sqrt((dev * dev).sum(axis=1) / (values.shape[1] - ddof))


def _put(line, start: int, end: int, values: np.ndarray) -> None:
    line.array[start:end] = array("d", np.asarray(values, dtype="float64").tolist())


class BollingerBandsDdof(bt.Indicator):
    """Bollinger bands with a choice of sample or population standard deviation.

    Lines: ``mid`` (simple moving average), ``top`` and ``bot`` (``mid`` +/- ``devfactor``
    standard deviations of the last ``period`` closes).

    Params:

    - ``period`` (def: ``20``): bars in the window.
    - ``devfactor`` (def: ``2.0``): band half-width in standard deviations.
    - ``ddof`` (def: ``1``): delta degrees of freedom. ``1`` divides by ``period - 1`` like pandas'
      ``rolling().std()`` (the article's bands); ``0`` divides by ``period`` like backtrader's
      ``BollingerBands``.
    """

    lines = ("mid", "top", "bot")
    params = (("period", 20), ("devfactor", 2.0), ("ddof", 1))
    plotinfo = dict(subplot=False)

    def __init__(self) -> None:
        self.addminperiod(self.p.period)

    def next(self) -> None:
        window = np.asarray(self.data.get(size=self.p.period), dtype="float64")[None, :]
        mid, top, bot = rolling_bands(window, self.p.devfactor, self.p.ddof)
        self.lines.mid[0], self.lines.top[0], self.lines.bot[0] = mid[0], top[0], bot[0]

    def once(self, start: int, end: int) -> None:
        period = self.p.period
        start = max(start, period - 1)
        if start >= end:
            return
        src = np.asarray(self.data.array[start - period + 1 : end], dtype="float64")
        mid, top, bot = rolling_bands(sliding_window_view(src, period), self.p.devfactor,
                                      self.p.ddof)
        _put(self.lines.mid, start, end, mid)
        _put(self.lines.top, start, end, top)
        _put(self.lines.bot, start, end, bot)


class AdaptiveBollingerBands(bt.Indicator):
    """The article's volatility-adjusted Bollinger bands, re-evaluated on every bar.

    On each bar the volatility is the sample standard deviation of the last ``vol_lookback``
    simple bar returns (``close / previous close - 1``). When it is above ``vol_threshold`` the
    bands use a window of ``period_high`` bars, otherwise ``period_low`` bars; the bands are then
    ordinary Bollinger bands (:class:`BollingerBandsDdof`) over the chosen window.

    Difference from the article: the article compares the standard deviation of the last 100
    *prices* (index points) with 0.02, which mixes units (a price around 2000 always has a
    standard deviation far above 0.02, so the window would nearly always be 20). Here the
    volatility is measured on returns, in the same units as the threshold. The default
    threshold, 0.0015, is about a 2 % daily move spread over the ~180 five-minute bars of a
    Globex day (0.02 / sqrt(180) = 0.0015); scale it to your bar size.

    Lines: ``mid``, ``top``, ``bot`` as in :class:`BollingerBandsDdof`, ``window`` (bars used on
    this bar) and ``vol`` (the return volatility measured).

    Params:

    - ``period_high`` (def: ``20``): window when volatility is above the threshold.
    - ``period_low`` (def: ``14``): window when it is at or below the threshold.
    - ``vol_lookback`` (def: ``100``): returns in the volatility estimate.
    - ``vol_threshold`` (def: ``0.0015``): per-bar return standard deviation separating high
      from low volatility.
    - ``devfactor`` (def: ``2.0``): band half-width in standard deviations.
    - ``ddof`` (def: ``1``): delta degrees of freedom of the band width (the volatility always
      uses ``ddof=1``, like pandas).
    """

    lines = ("mid", "top", "bot", "window", "vol")
    params = (
        ("period_high", 20),
        ("period_low", 14),
        ("vol_lookback", 100),
        ("vol_threshold", 0.0015),
        ("devfactor", 2.0),
        ("ddof", 1),
    )
    plotinfo = dict(subplot=False)
    plotlines = dict(window=dict(_plotskip=True), vol=dict(_plotskip=True))

    def __init__(self) -> None:
        self.addminperiod(self._need())

    def _need(self) -> int:
        """Closes needed before the first value."""
        return max(self.p.vol_lookback + 1, self.p.period_high, self.p.period_low)

    def _compute(self, closes: np.ndarray, count: int) -> tuple[np.ndarray, ...]:
        """Band values for the last ``count`` bars of ``closes`` (which holds enough history)."""
        p = self.p
        rets = closes[1:] / closes[:-1] - 1.0
        vol = _window_std(sliding_window_view(rets[-(count + p.vol_lookback - 1):],
                                              p.vol_lookback), ddof=1)
        window = np.where(vol > p.vol_threshold, p.period_high, p.period_low)
        out = []
        for period in (p.period_high, p.period_low):
            wins = sliding_window_view(closes[-(count + period - 1):], period)
            out.append(rolling_bands(wins, p.devfactor, p.ddof))
        high = window == p.period_high
        mid, top, bot = (np.where(high, out[0][k], out[1][k]) for k in range(3))
        return mid, top, bot, window.astype("float64"), vol

    def next(self) -> None:
        closes = np.asarray(self.data.get(size=self._need()), dtype="float64")
        values = self._compute(closes, 1)
        for line, value in zip(self.lines, values):
            line[0] = value[0]

    def once(self, start: int, end: int) -> None:
        need = self._need()
        start = max(start, need - 1)
        if start >= end:
            return
        closes = np.asarray(self.data.array[start - need + 1 : end], dtype="float64")
        values = self._compute(closes, end - start)
        for line, value in zip(self.lines, values):
            _put(line, start, end, value)


def fibonacci_levels(high: float, low: float, ratios=FIB_RATIOS) -> dict[float, float]:
    """Retracement prices of a swing from ``low`` up to ``high``: ``high - r * (high - low)``.

    >>> fibonacci_levels(2100.0, 2000.0, (0.382, 0.5, 0.618))
    {0.382: 2061.8, 0.5: 2050.0, 0.618: 2038.2}
    """
    span = high - low
    return {r: round(high - r * span, 10) for r in ratios}


class FibonacciLevels(bt.Indicator):
    """Fibonacci retracement levels of the swing over the last ``lookback`` bars.

    The swing runs from the lowest low to the highest high of the window; each level is
    ``swing_high - ratio * (swing_high - swing_low)`` for the ratios in :data:`FIB_RATIOS`
    (23.6 %, 38.2 %, 50 %, 61.8 %, 78.6 %), as in :func:`fibonacci_levels`. The levels are not
    on the tick grid: snap them with :func:`m2k_bt.contracts.round_to_tick` before using one as
    an order price (a long's target rounded down, a short's up, so it is never more ambitious
    than the level).

    Lines: ``swing_high``, ``swing_low``, ``level_236``, ``level_382``, ``level_500``,
    ``level_618``, ``level_786``.

    Params:

    - ``lookback`` (def: ``100``): bars in the swing window (uses the feed's high and low).
    """

    lines = ("swing_high", "swing_low", "level_236", "level_382", "level_500", "level_618",
             "level_786")
    params = (("lookback", 100),)
    plotinfo = dict(subplot=False)

    def __init__(self) -> None:
        hi = bt.ind.Highest(self.data.high, period=self.p.lookback)
        lo = bt.ind.Lowest(self.data.low, period=self.p.lookback)
        self.l.swing_high = hi
        self.l.swing_low = lo
        for ratio, name in zip(FIB_RATIOS, self.lines.getlinealiases()[2:]):
            setattr(self.l, name, hi - ratio * (hi - lo))


class TickSums(bt.Indicator):
    """Rolling sums of closes (and of their squares) counted in whole ticks, as exact integers.

    The strategies decide their comparisons on these (``SmaCrossover``: fast vs slow average;
    the Bollinger strategies: close vs bands) so that a tie on the 0.10 tick grid is a tie, not
    whatever float noise ``math.fsum(window) / period`` leaves. Each close counts as
    ``round(close / tick)`` ticks (a close off the grid is snapped to the nearest tick). Values
    are integers held in floats, exact while below 2**53 (a 10,000-bar window of closes at
    20,000 ticks has sums of squares of 4e12).

    Lines: ``sum`` (ticks), ``sumsq`` (ticks squared).

    Params:

    - ``period`` (def: ``20``): bars in the window.
    - ``tick`` (def: ``0.10``, M2K's :attr:`~m2k_bt.contracts.ContractSpec.tick_size`): tick
      size, index points.
    """

    lines = ("sum", "sumsq")
    params = (("period", 20), ("tick", M2K.tick_size))
    plotinfo = dict(plot=False)

    def __init__(self) -> None:
        self.addminperiod(self.p.period)

    def next(self) -> None:
        ticks = np.rint(np.asarray(self.data.get(size=self.p.period), dtype="float64")
                        / self.p.tick).astype("int64")
        self.lines.sum[0] = float(ticks.sum())
        self.lines.sumsq[0] = float((ticks * ticks).sum())

    def once(self, start: int, end: int) -> None:
        period = self.p.period
        start = max(start, period - 1)
        if start >= end:
            return
        src = np.asarray(self.data.array[start - period + 1 : end], dtype="float64")
        s, q = window_tick_sums(tick_counts(src, self.p.tick), period)
        _put(self.lines.sum, start, end, s.astype("float64"))
        _put(self.lines.sumsq, start, end, q.astype("float64"))


def tick_counts(prices: np.ndarray, tick: float) -> np.ndarray:
    """Prices as whole ticks (int64), nearest tick: ``round(price / tick)``.

    >>> tick_counts(np.array([2000.0, 2000.1, 1999.9]), 0.1).tolist()
    [20000, 20001, 19999]
    """
    return np.rint(np.asarray(prices, dtype="float64") / tick).astype("int64")


def window_tick_sums(ticks: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``period`` consecutive tick counts and of their squares (exact, int64), one per
    full window: element i covers ``ticks[i : i + period]``.

    >>> s, q = window_tick_sums(np.array([1, 2, 3, 4]), 3)
    >>> s.tolist(), q.tolist()
    ([6, 9], [14, 29])
    """
    ticks = np.asarray(ticks, dtype="int64")
    c = np.concatenate(([0], np.cumsum(ticks)))
    c2 = np.concatenate(([0], np.cumsum(ticks * ticks)))
    return c[period:] - c[:-period], c2[period:] - c2[:-period]


def sma_above(sum_fast: int, fast: int, sum_slow: int, slow: int) -> bool:
    """True when the fast average is strictly above the slow one, decided exactly on integer
    tick sums: ``sum_fast / fast > sum_slow / slow`` as ``sum_fast * slow > sum_slow * fast``.
    Equal averages are not "above".

    >>> sma_above(3, 3, 6, 6), sma_above(4, 3, 6, 6)
    (False, True)
    """
    return int(sum_fast) * slow > int(sum_slow) * fast


def band_side(close_ticks: int, s: int, q: int, n: int, devfactor: float, ddof: int) -> int:
    """Where a close lies against Bollinger bands of ``n`` closes with tick sums ``s``, ``q``:
    +1 strictly above the upper band, -1 strictly below the lower, 0 on or between them.

    With mean m = s/n and variance v = (n q - s^2) / (n (n - ddof)), the close c is below the
    lower band when m - c > devfactor sqrt(v), i.e. when d = s - n c > 0 and
    d^2 (n - ddof) > devfactor^2 n (n q - s^2); above the upper band symmetrically. The left
    side is an exact integer; the right side is the integer n (n q - s^2) times devfactor^2
    (exact for devfactors such as 2, 1.5 or 2.5 whose square is a short binary fraction, else
    rounded once). A close exactly on a band is on it, not outside.

    >>> band_side(2, 0, 8, 2, 2.0, 1)   # closes -2, 2: mean 0, sd 2.83, bands +-5.66
    0
    >>> band_side(10, 0, 8, 2, 2.0, 1)
    1
    """
    d = int(s) - n * int(close_ticks)
    if d == 0:
        return 0
    spread = float(n * (n * int(q) - int(s) * int(s)))
    if float(d * d * (n - ddof)) > (devfactor * devfactor) * spread:
        return -1 if d > 0 else 1
    return 0


# ---------------------------------------------------------------------- whole-array rules
# The same decisions as sma_above / band_side, for every bar at once: the built-in signal
# strategies (m2k_bt.strategies.signals) and the kernel compute their directions with these.
def window_sums(ticks: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`window_tick_sums` aligned with the bars: element i covers the ``period`` bars
    ending at bar i (0 before the first full window).

    >>> s, q = window_sums(np.array([1, 2, 3, 4]), 3)
    >>> s.tolist(), q.tolist()
    ([0, 0, 6, 9], [0, 0, 14, 29])
    """
    ticks = np.asarray(ticks, dtype="int64")
    return window_sum(ticks, period, False), window_sum(ticks, period, True)


@njit(cache=True)
def window_sum(ticks, period, squares):
    """One array of :func:`window_sums` (the sums, or with ``squares`` the sums of squares) in
    one pass without temporaries: a running int64 sum, equal bit for bit to the differences
    of cumulative sums (both wrap modulo 2**64 alike).

    >>> window_sum(np.array([1, 2, 3, 4]), 3, True).tolist()
    [0, 0, 14, 29]
    """
    n = len(ticks)
    out = np.zeros(n, np.int64)
    if n < period:
        return out
    acc = np.int64(0)
    for i in range(n):
        t = ticks[i]
        acc += t * t if squares else t
        if i >= period:
            t = ticks[i - period]
            acc -= t * t if squares else t
        if i >= period - 1:
            out[i] = acc
    return out


@njit(cache=True)
def sma_directions(sum_fast, fast, sum_slow, slow):
    """+1 where the fast average is strictly above the slow one, else -1 (:func:`sma_above`
    on every bar; int64).

    >>> sma_directions(np.array([3, 4]), 3, np.array([6, 6]), 6).tolist()
    [-1, 1]
    """
    out = np.empty(len(sum_fast), np.int64)
    for i in range(len(sum_fast)):
        out[i] = 1 if sum_fast[i] * slow > sum_slow[i] * fast else -1
    return out


def band_arrays(ticks: np.ndarray, s: np.ndarray, q: np.ndarray, n, devfactor: float,
                ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """(band direction, middle side) on every bar, by :func:`band_side`'s arithmetic: the
    direction is +1 strictly below the lower band, -1 strictly above the upper, else 0; the
    middle side is sign(n x close - s) (the close against the mean, exactly). ``n``: the
    window (a number, or one per bar).

    >>> band_arrays(np.array([10, 2]), np.array([0, 0]), np.array([8, 8]), 2, 2.0, 1)
    ... # doctest: +NORMALIZE_WHITESPACE
    (array([-1, 0]), array([1, 1]))
    """
    d = s - n * ticks
    spread = (n * (n * q - s * s)).astype("float64")
    lhs = (d * d * (n - ddof)).astype("float64")
    outside = (lhs > (devfactor * devfactor) * spread) & (d != 0)
    side = np.where(outside, np.where(d > 0, -1, 1), 0)
    return (-side).astype("int64"), np.sign(n * ticks - s).astype("int64")


def adaptive_windows(closes: np.ndarray, period_high: int, period_low: int, vol_lookback: int,
                     vol_threshold: float) -> np.ndarray:
    """The window :class:`AdaptiveBollingerBands` uses on each bar (0 before its first value),
    int64, by the indicator's own routine."""
    n = len(closes)
    need = max(vol_lookback + 1, period_high, period_low)
    out = np.zeros(n, dtype="int64")
    if n >= need:
        class _Self:  # the indicator's params, without backtrader
            p = type("P", (), dict(period_high=period_high, period_low=period_low,
                                   vol_lookback=vol_lookback, vol_threshold=vol_threshold,
                                   devfactor=2.0, ddof=1))
        values = AdaptiveBollingerBands._compute(_Self(), np.asarray(closes, dtype="float64"),
                                                 n - need + 1)
        out[need - 1:] = values[3].astype("int64")
    return out
