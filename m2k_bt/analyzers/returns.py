"""Return, risk and drawdown of account equity: :class:`ReturnsRisk`, the function it shares
with the compiled engine (:func:`returns_statistics`) and the annualisation rule.

Annualisation rule (:func:`periods_per_year`): a futures year is 252 trade dates. For daily or
longer bars the feed's timeframe decides (``Days``: 252 / compression, ``Weeks``: 52,
``Months``: 12, ``Years``: 1). For intraday bars it is the median number of bars per CME trade
date observed in the run (a trade date starts at 18:00 New York) x 252, so a regular-hours-only
5-minute series gives 78 x 252 = 19,656 periods and a 23-hour Globex series 276 x 252. The
median ignores partial first and last days and holiday half-days.
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

import backtrader as bt
import numpy as np
from numba import njit

from ..contracts import trade_date
from ..sessions import trade_dates64
from .common import ratio, rounded
from .recorder import BarRecorder

__all__ = [
    "TRADING_DAYS_PER_YEAR",
    "ReturnsRisk",
    "periods_from_counts",
    "periods_per_year",
    "returns_statistics",
    "exact_sum",
]

#: Trade dates in a futures year, used to annualise returns.
TRADING_DAYS_PER_YEAR = 252


def periods_per_year(
    timeframe: int, compression: int, datetimes: Sequence[_dt.datetime] = ()
) -> float:
    """Bars per year for annualising per-bar returns (see the module docstring for the rule).

    The bars themselves win over the feed's declared timeframe: backtrader's ``PandasData``
    declares ``Days`` unless told otherwise, so a 5-minute series loaded without
    ``timeframe=`` would otherwise be annualised as daily. When the median trade date holds
    more than one bar the observed rule applies whatever the declared timeframe.

    >>> periods_per_year(bt.TimeFrame.Days, 1)
    252.0
    >>> rth = [_dt.datetime(2024, 1, d, 9, 30) + _dt.timedelta(minutes=5 * i)
    ...        for d in (2, 3, 4) for i in range(78)]
    >>> periods_per_year(bt.TimeFrame.Minutes, 5, rth)
    19656.0
    >>> periods_per_year(bt.TimeFrame.Days, 1, rth)  # mislabelled intraday feed
    19656.0
    """
    counts = Counter(trade_date(d) for d in datetimes)
    return periods_from_counts(timeframe, compression, list(counts.values()))


def periods_from_counts(timeframe: int, compression: int, bars_per_date: Sequence[int]) -> float:
    """:func:`periods_per_year` from the number of bars on each trade date seen (the rule of
    the module docstring), for a caller that has counted them already: ``timeframe`` and
    ``compression`` are the feed's (``bt.TimeFrame`` constants), ``bars_per_date`` one count
    per trade date, in any order.

    >>> periods_from_counts(bt.TimeFrame.Minutes, 5, [78, 78, 40])
    19656.0
    >>> periods_from_counts(bt.TimeFrame.Days, 1, [1, 1, 1])
    252.0
    """
    compression = max(int(compression or 1), 1)
    per_date = float(statistics.median(bars_per_date)) if len(bars_per_date) else None
    fixed = {
        bt.TimeFrame.Days: TRADING_DAYS_PER_YEAR,
        bt.TimeFrame.Weeks: 52,
        bt.TimeFrame.Months: 12,
        bt.TimeFrame.Years: 1,
    }
    if per_date is not None and (per_date > 1 or timeframe not in fixed):
        return per_date * TRADING_DAYS_PER_YEAR
    if timeframe in fixed:
        return float(fixed[timeframe]) / compression
    # intraday feed and no bars seen: the nominal 23-hour Globex session
    minutes = {bt.TimeFrame.Minutes: 1.0, bt.TimeFrame.Seconds: 1 / 60}.get(timeframe, 1.0)
    return 23 * 60 / (minutes * compression) * TRADING_DAYS_PER_YEAR


class ReturnsRisk(bt.Analyzer):
    """Return, risk and drawdown of account equity, with the bar size's annualisation.

    Values are ``broker.getvalue()`` at each bar close (the value backtrader's ``DrawDown``
    and ``TimeReturn`` receive through ``notify_fund``), preceded by the value at the start. Per-bar
    simple returns r_t = V_t / V_(t-1) - 1 are annualised with :func:`periods_per_year` (P).

    Params:

    - ``riskfreerate`` (def: ``0.0``): annual risk-free rate (fraction), turned into a per-bar
      rate (1 + rf) ** (1 / P) - 1 and subtracted from each return.
    - ``stddev_sample`` (def: ``True``): Sharpe's standard deviation with Bessel's correction
      (n - 1), as pandas; ``False`` divides by n, as backtrader's default.
    - ``periods`` (def: ``None``): force P (bars per year) instead of the rule.

    ``get_analysis()`` keys:

    - ``start_value``, ``end_value``: equity at start and end ($); ``net_profit``: their
      difference ($); ``return_pct``: net_profit / start_value (%).
    - ``bars``: bars seen; ``trade_dates``: distinct CME trade dates; ``periods_per_year``: P;
      ``years``: bars / P.
    - ``cagr``: (end / start) ** (1 / years) - 1 (fraction); None when years is 0, equity ends
      <= 0 or the result overflows.
    - ``volatility``: annualised standard deviation of per-bar returns (fraction).
    - ``sharpe``: mean(r - rf) / stdev(r - rf) x sqrt(P); None with < 2 returns or zero
      deviation.
    - ``sortino``: mean(r - rf) / downside deviation x sqrt(P), the downside deviation being
      sqrt(mean(min(r - rf, 0) ** 2)) over all bars; None without a losing bar.
    - ``max_drawdown``: largest fall from a running peak of equity ($);
      ``max_drawdown_pct``: largest such fall as a % of its peak (%, may come from another
      drawdown than the $ one, as backtrader's ``DrawDown``); ``max_drawdown_bars``: longest
      run of bars below a peak. 0 when equity never fell.
    - ``calmar``: cagr / (max_drawdown_pct / 100); None when either is None or 0.
    - ``riskfreerate``: the annual rate used (fraction).

    Every return figure is None when equity reached 0 or below (returns are undefined there).
    """

    params = (("riskfreerate", 0.0), ("stddev_sample", True), ("periods", None))

    def start(self) -> None:
        self._rec = BarRecorder.attach(self)

    def stop(self) -> None:
        rec = self._rec
        _, per_date = np.unique(trade_dates64(rec.datetimes_np()), return_counts=True)
        periods = self.p.periods or periods_from_counts(
            self.data._timeframe, self.data._compression, per_date.tolist()
        )
        self.rets = returns_statistics(
            rec.start_value,
            rec.values_np(),
            periods,
            riskfreerate=self.p.riskfreerate,
            stddev_sample=self.p.stddev_sample,
        )
        self.rets["trade_dates"] = len(per_date)
        rec.done()

    def get_analysis(self) -> dict[str, Any]:
        return self.rets


def returns_statistics(
    start_value: float,
    values: Sequence[float],
    periods: float,
    riskfreerate: float = 0.0,
    stddev_sample: bool = True,
) -> dict[str, Any]:
    """The :class:`ReturnsRisk` keys from a start value and per-bar equity values.

    >>> s = returns_statistics(100.0, [110.0, 99.0, 108.9], periods=252)
    >>> s["max_drawdown"], round(s["max_drawdown_pct"], 6), s["return_pct"]
    (11.0, 10.0, 8.9)
    """
    values = np.ascontiguousarray(values, dtype="float64")
    n = len(values)
    end_value = float(values[-1]) if n else start_value
    max_dd, max_dd_pct, has_pct, max_run, nonpositive = _drawdown_figures(
        float(start_value), values)
    max_dd_pct = max(0.0, float(max_dd_pct)) if has_pct else 0.0
    years = n / periods if periods else 0.0
    out: dict[str, Any] = {
        "start_value": rounded(start_value),
        "end_value": rounded(end_value),
        "net_profit": rounded(end_value - start_value),
        "return_pct": rounded(ratio(100.0 * (end_value - start_value), start_value), 8),
        "bars": n,
        "trade_dates": None,
        "periods_per_year": periods,
        "years": years,
        "cagr": None,
        "volatility": None,
        "sharpe": None,
        "sortino": None,
        "max_drawdown": rounded(max_dd),
        "max_drawdown_pct": rounded(max_dd_pct, 8),
        "max_drawdown_bars": max_run,
        "calmar": None,
        "riskfreerate": riskfreerate,
    }
    if nonpositive:
        return out
    if years > 0:
        try:
            out["cagr"] = (end_value / start_value) ** (1.0 / years) - 1.0
        except OverflowError:
            out["cagr"] = None
    rets = np.empty(n)  # numpy's own buffer, as the array np.dot read before
    _bar_returns(float(start_value), values, rets)
    rf = (1.0 + riskfreerate) ** (1.0 / periods) - 1.0 if periods else 0.0
    if len(rets) >= 2:
        ddof = 1 if stddev_sample else 0
        sd = float(np.std(rets, ddof=ddof))
        out["volatility"] = sd * math.sqrt(periods)
        excess = rets  # r - rf, in place: rets are not needed any more
        if rf != 0.0:  # x - 0.0 is x, bit for bit: the deviation is the one just computed
            excess -= rf
            sd = float(np.std(excess, ddof=ddof))
        mean = exact_sum(excess) / len(excess)  # as statistics.fmean
        if sd > 0:
            out["sharpe"] = mean / sd * math.sqrt(periods)
        losses = np.minimum(excess, 0.0, out=excess)
        downside = math.sqrt(float(np.dot(losses, losses)) / len(excess))
        if downside > 0:
            out["sortino"] = mean / downside * math.sqrt(periods)
    if out["cagr"] is not None and max_dd_pct > 0:
        out["calmar"] = out["cagr"] / (max_dd_pct / 100.0)
    return out


@njit(cache=True, nogil=True)
def _drawdown_figures(start, values):
    """Drawdown figures of the equity series ``start, *values`` in one pass, as numpy's
    whole-array steps give them (``np.maximum.accumulate`` for the peak, NaN propagating
    through ``max``): the largest $ drawdown; the largest drawdown as % of its peak (over bars
    whose peak is positive) and whether there is such a bar; the longest run of bars below a
    peak; whether any equity is <= 0."""
    peak = start
    max_dd = max_pct = -np.inf
    has_pct = nonpositive = False
    run = longest = 0
    for i in range(len(values) + 1):
        x = start if i == 0 else values[i - 1]
        if i > 0:
            peak = peak if peak >= x or np.isnan(peak) else x
        dd = peak - x
        max_dd = _max_nan(max_dd, dd)
        if peak > 0:
            has_pct = True
            max_pct = _max_nan(max_pct, dd * 100.0 / peak)
        if dd > 0:
            run += 1
            longest = max(longest, run)
        else:
            run = 0
        nonpositive |= x <= 0
    return max_dd, max_pct, has_pct, longest, nonpositive


@njit(cache=True, inline="always")
def _max_nan(top, x):
    """A running ``max`` as numpy's: NaN once seen stays."""
    if np.isnan(top) or np.isnan(x):
        return np.nan
    return x if x > top else top


@njit(cache=True, nogil=True)
def _bar_returns(start, values, out):
    """Per-bar simple returns of ``start, *values`` into ``out``: ``v[i] / v[i - 1] - 1``."""
    prev = start
    for i in range(len(values)):
        out[i] = values[i] / prev - 1.0
        prev = values[i]


def exact_sum(values: np.ndarray) -> float:
    """``math.fsum(values)`` of a float64 array, 10-20x faster: the exact sum, correctly
    rounded (which is what ``fsum`` returns), from whole-number mantissas added per binary
    exponent in a compiled pass, then divided once as Python integers (a correctly rounded
    division). Arrays holding an infinity, a NaN or a value above 1e300 (where ``fsum`` may
    raise) go to ``fsum``.

    >>> x = np.array([1e-17, 1.0, -1e-17, 0.1, 0.2, 3e-320])
    >>> exact_sum(x) == math.fsum(x), exact_sum(np.zeros(0))
    (True, 0.0)
    """
    bits = np.ascontiguousarray(values, dtype="float64").view(np.int64)
    acc = np.zeros(_BUCKETS, np.int64)
    if not _add_mantissas(bits, acc):
        return math.fsum(values)
    total = 0
    for k in np.flatnonzero(acc).tolist():
        total += int(acc[k]) << k
    return total / (1 << 1075)  # bucket k holds units of 2**(k - 1075)


_BUCKETS = 2048 + 128  # exponent fields, and room for the carries above the largest


@njit(cache=True, nogil=True)
def _add_mantissas(bits, acc):
    """Add each double (its bits) into ``acc[exponent field]`` as a signed whole mantissa
    (subnormals into field 1), carrying every 512 values so that no bucket overflows;
    False (nothing summed) when a value is not finite or above 1e300."""
    top = 0
    for start in range(0, len(bits), 512):
        for i in range(start, min(start + 512, len(bits))):
            b = bits[i]
            e = (b >> 52) & 0x7FF
            if e > 2045:  # inf, NaN, or above 2**1023 (fsum may raise on overflow)
                return False
            m = b & 0xFFFFFFFFFFFFF
            if e:
                m |= 0x10000000000000
            else:
                e = 1
            acc[e] += -m if b < 0 else m
            top = max(top, e)
        for k in range(1, top + 64):  # carry: 2 units of bucket k are 1 of bucket k + 1
            acc[k + 1] += acc[k] >> 1
            acc[k] &= 1
    return True
