"""Backtrader analyzers for futures: trades, costs, margin, Kelly sizing, returns and equity.

Each one works in any cerebro script, with any strategy and any broker: add it with
``cerebro.addanalyzer(TradeStats, _name="trades")`` or add them all with :func:`add_analyzers`.
They read only what backtrader itself provides (``notify_trade``, ``notify_order``,
``notify_fund``, the broker and the commission scheme); extras from this package
(``FuturesBroker.margin_events``, ``KellySizer.decisions``) are read with fallbacks.

Conventions for every key listed in the classes' docstrings:

- ``$`` is US dollars of account equity; ``ticks`` are contract ticks (M2K: 0.10 pt = $0.50).
- keys ending ``_pct`` are percentages (``12.5`` means 12.5 %); ``win_rate`` and ``cagr`` are
  fractions (``0.125``), as in the flat :func:`metrics_from` dict.
- a value that cannot be computed (no trades, no losing trade, zero volatility...) is ``None``,
  never ``0``, ``inf`` or ``NaN``.
- dates are naive ``datetime`` objects in the data feed's time zone (New York for this package's
  loaders).

Annualisation rule (:func:`periods_per_year`): a futures year is 252 trade dates. For daily or
longer bars the feed's timeframe decides (``Days``: 252 / compression, ``Weeks``: 52,
``Months``: 12, ``Years``: 1). For intraday bars it is the median number of bars per CME trade
date observed in the run (a trade date starts at 18:00 New York) x 252, so a regular-hours-only
5-minute series gives 78 x 252 = 19,656 periods and a 23-hour Globex series 276 x 252. The
median ignores partial first and last days and holiday half-days.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import statistics
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import backtrader as bt
import numpy as np

from ..contracts import M2K, trade_date
from ..sessions import num2datetime64, trade_dates64

__all__ = [
    "TRADING_DAYS_PER_YEAR",
    "ANALYZER_NAMES",
    "MINIMAL_ANALYZER_NAMES",
    "METRIC_KEYS",
    "TradeStats",
    "CostAnalyzer",
    "MarginExposure",
    "KellyLog",
    "ReturnsRisk",
    "EquityCurve",
    "add_analyzers",
    "metrics_from",
    "periods_per_year",
    "equity_frame",
    "trade_statistics",
    "returns_statistics",
]

#: Trade dates in a futures year, used to annualise returns.
TRADING_DAYS_PER_YEAR = 252

#: Fixed names under which :func:`add_analyzers` adds each analyzer.
ANALYZER_NAMES: dict[str, str] = {
    "trades": "TradeStats",
    "costs": "CostAnalyzer",
    "margin": "MarginExposure",
    "kelly": "KellyLog",
    "returns": "ReturnsRisk",
    "equity": "EquityCurve",
}

#: The analyzers an optimisation trial needs (``add_analyzers(minimal=True)``).
MINIMAL_ANALYZER_NAMES = ("returns", "trades", "equity")

#: Keys of the flat dict returned by :func:`metrics_from`.
METRIC_KEYS = (
    "net_profit",
    "return_pct",
    "cagr",
    "sharpe",
    "sortino",
    "calmar",
    "sqn",
    "profit_factor",
    "win_rate",
    "trades",
    "max_drawdown",
    "max_drawdown_pct",
    "expectancy",
)

_ROUND = 10  # decimals kept on $ and price outputs, to drop float noise like 0.30000000000000004


def _r(x: float | None, nd: int = _ROUND) -> float | None:
    return None if x is None else round(float(x), nd)


def _div(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is None or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _tick_value(comminfo, tick_size: float | None) -> tuple[float, float]:
    """(tick size in points, $ per tick per contract) for a commission scheme."""
    if tick_size is None:
        tick_size = getattr(comminfo.p, "tick_size", None) or M2K.tick_size
    mult = float(getattr(comminfo.p, "mult", 1.0) or 1.0)
    return float(tick_size), round(float(tick_size) * mult, 10)


# -------------------------------------------------------------------------------------------
# the per-bar recorder shared by MarginExposure, ReturnsRisk and EquityCurve
# -------------------------------------------------------------------------------------------

def _view(values, n: int) -> np.ndarray:
    """The first ``n`` values of a finished line buffer without copying them when it is an
    ``array('d')`` (backtrader gives a re-run fresh buffers, so the view stays valid)."""
    if isinstance(values, array) and values.typecode == "d":
        return np.frombuffer(values, dtype="float64", count=n)
    return _floats(values, n)


def _floats(values, n: int) -> np.ndarray:
    """The first ``n`` values of a line buffer or ``array('d')`` as a new float64 array."""
    if isinstance(values, array) and values.typecode == "d":
        return np.frombuffer(values, dtype="float64", count=n).copy()
    out = np.fromiter(values, dtype="float64", count=n)  # a bounded buffer (deque)
    return out


_PER_BAR_HOOKS = ("next", "prenext", "nextstart")
_FUND_HOOKS = ("notify_fund", "notify_cashvalue")


def _ignore(*args) -> None:
    """Stands in for backtrader's per-bar dispatch to an analyzer with nothing to do."""


def _quiet(analyzer: bt.Analyzer, per_bar=None) -> None:
    """Make backtrader's per-bar calls to one of this module's analyzers cost one call.

    Every bar, backtrader calls each analyzer's ``_next`` (or ``_prenext``/``_nextstart``),
    ``_notify_fund`` and ``_notify_cashvalue``, which loop over child analyzers and then call
    ``next``/``notify_fund``/``notify_cashvalue``. Ours have no children and, but for the
    recorder's driver (``per_bar``), nothing to do per bar, so those entry points are bound
    straight to ``per_bar`` or to a no-op. A subclass that defines any of these hooks, or has
    children, keeps backtrader's normal dispatch for that group.
    """
    if analyzer._children:
        return
    cls = type(analyzer)
    if all(getattr(cls, h) is getattr(bt.Analyzer, h) for h in _FUND_HOOKS):
        analyzer._notify_fund = analyzer._notify_cashvalue = _ignore
    if all(getattr(cls, h) is getattr(bt.Analyzer, h) for h in _PER_BAR_HOOKS):
        call = per_bar or _ignore
        analyzer._next = analyzer._prenext = analyzer._nextstart = call
    elif per_bar is not None:  # a subclass with its own next: run both
        own_next = type(analyzer).next.__get__(analyzer)

        def both() -> None:
            per_bar()
            own_next()

        analyzer.next = both


def _shared_floats(values: np.ndarray) -> list[float]:
    """``values.tolist()`` with one float object per distinct value: an equity curve repeats
    itself (flat stretches, prices on a tick grid), so ~10x fewer objects stay alive, and
    only those are ever made."""
    if ((values == 0) & np.signbit(values)).any():
        return values.tolist()  # a -0.0 would be merged with 0.0
    distinct, which = np.unique(values, return_inverse=True)
    return distinct.astype(object)[which].tolist()


class _BarRecorder:
    """Account state at every bar, recorded once per strategy for the analyzers that need it.

    :class:`MarginExposure`, :class:`ReturnsRisk` and :class:`EquityCurve` share one recorder,
    attached to the strategy; the first of them to start drives it (see :func:`_quiet`), so
    the others do nothing per bar. Per bar it appends three doubles: ``broker.getvalue()``,
    ``broker.getcash()`` and the first feed's position. Bar times and closes are read after
    the run from backtrader's line buffers (the strategy's ``datetime`` line, the first feed's
    ``close``), which hold every bar in every ``preload``/``runonce`` mode; only when they may
    not (``exactbars`` > 0, a replayed feed, or a close with several feeds) are the float time
    and the close recorded per bar as well. Times become datetimes once, at the end, vectorised.
    While a position is open, and only then, ``MarginExposure`` is called for its margin sums.
    """

    ATTR = "_m2k_bar_recorder"

    def __init__(self, strategy) -> None:
        self.strategy = strategy
        self.start_value = strategy.broker.getvalue()
        self.values = array("d")
        self.cash = array("d")
        self.positions = array("d")
        datas = strategy.datas
        cerebro = getattr(strategy, "cerebro", None)
        exactbars = int(getattr(getattr(cerebro, "p", None), "exactbars", 0) or 0)
        replay = any(getattr(d, "replaying", False) for d in datas)
        self._dtline = strategy.lines.datetime
        self.tz = getattr(self._dtline, "_tz", None)
        own_times = exactbars > 0 or replay
        self.times = array("d") if own_times else None
        self.closes = array("d") if own_times or len(datas) != 1 else None
        self.margin_hook = None  # MarginExposure._in_market(i, equity), set at its start
        self._driver = None
        self._users = 0
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def attach(cls, analyzer: bt.Analyzer) -> _BarRecorder:
        """The strategy's recorder (made on first use); the first analyzer attached drives it."""
        strategy = analyzer.strategy
        rec = getattr(strategy, cls.ATTR, None)
        if rec is None:
            rec = cls(strategy)
            setattr(strategy, cls.ATTR, rec)
        if rec._driver is None:
            rec._driver = analyzer
            _quiet(analyzer, rec._first_bar)
        else:
            _quiet(analyzer)
        rec._users += 1
        return rec

    def _first_bar(self) -> None:
        """Build the per-bar function once every analyzer has started, then run it."""
        record = self._recorder()
        _quiet(self._driver, record)
        record()

    def _recorder(self):
        strategy = self.strategy
        broker = strategy.broker
        data = strategy.datas[0]
        datas = strategy.datas
        multi = len(datas) > 1
        getvalue, getcash = broker.getvalue, broker.getcash
        if type(broker).getposition is bt.brokers.BackBroker.getposition:
            getpos = broker.positions.__getitem__  # what BackBroker.getposition does
        else:
            getpos = broker.getposition
        values_append = self.values.append
        cash_append = self.cash.append
        pos_append = self.positions.append
        times_append = self.times.append if self.times is not None else None
        closes_append = self.closes.append if self.closes is not None else None
        dtline, close = self._dtline, data.close
        hook = self.margin_hook
        nvalues = self.values.__len__

        def record() -> None:
            value = getvalue()
            values_append(value)
            cash_append(getcash())
            size = getpos(data).size
            pos_append(size)
            if times_append is not None:
                times_append(dtline[0])
            if closes_append is not None:
                closes_append(close[0])
            if hook is not None and (size or multi and any(getpos(d).size for d in datas)):
                hook(nvalues() - 1, value)

        return record

    def __len__(self) -> int:
        return len(self.values)

    def column(self, key: str) -> np.ndarray:
        """One column over the bars as a float64 array (``datetime64[us]`` for
        ``"datetimes"``), computed once: ``values``, ``cash``, ``positions``, ``times``
        (backtrader float times), ``closes`` (first feed) or ``datetimes``."""
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self._compute(key)
        return out

    def _compute(self, key: str) -> np.ndarray:
        n = len(self.values)
        if key in ("values", "cash", "positions"):
            # a view, not a copy: nothing appends to the recorder after the run, and done()
            # swaps in empty arrays, leaving these buffers to the views alone
            return np.frombuffer(getattr(self, key), dtype="float64", count=n)
        if key == "times":
            if self.times is not None:
                return _floats(self.times, n)
            if len(self._dtline) != n:  # cannot happen without replay or exactbars
                raise RuntimeError(
                    f"m2k_bt analyzers: {n} bars recorded but the strategy has "
                    f"{len(self._dtline)}; please report this with your cerebro settings"
                )
            return _view(self._dtline.array, n)
        if key == "closes":
            if self.closes is not None:
                return _floats(self.closes, n)
            data = self.strategy.datas[0]
            m = len(data)
            closes = _view(data.close.array, m)
            if m == n:
                return closes
            # not expected with one feed: each bar's close is the feed's last bar by then
            at = np.searchsorted(_floats(data.datetime.array, m), self.times_np(), "right") - 1
            return np.where(at >= 0, closes[np.maximum(at, 0)], np.nan)
        if key == "datetimes":
            times = self.column("times")
            if self.tz is None:
                return num2datetime64(times)
            return np.array(
                [bt.num2date(t, tz=self.tz, naive=True) for t in times.tolist()],
                dtype="datetime64[us]",
            ).reshape(-1)
        raise KeyError(key)

    def values_np(self) -> np.ndarray:
        """``broker.getvalue()`` at each bar ($)."""
        return self.column("values")

    def times_np(self) -> np.ndarray:
        """The strategy's float time at each bar (backtrader's day numbers)."""
        return self.column("times")

    def datetimes_np(self) -> np.ndarray:
        """Each bar's time as naive ``datetime64[us]``, as ``strategy.datetime.datetime(0)``."""
        return self.column("datetimes")

    def datetime_at(self, i: int | None) -> _dt.datetime | None:
        """Bar ``i``'s time, as ``strategy.datetime.datetime(0)`` gave it on that bar."""
        if i is None:
            return None
        return bt.num2date(float(self.times_np()[i]), tz=self.tz, naive=True)

    def done(self) -> None:
        """Called from each user's ``stop``: after the last one only the length is kept."""
        self._users -= 1
        if self._users <= 0:
            self._cache.clear()
            for name in ("values", "cash", "positions", "times", "closes"):
                if getattr(self, name) is not None:
                    setattr(self, name, array("d"))


# -------------------------------------------------------------------------------------------
# trade statistics
# -------------------------------------------------------------------------------------------


class TradeStats(bt.Analyzer):
    """Closed-trade statistics in dollars and ticks, from ``notify_trade``.

    A trade is backtrader's: it opens when a position leaves zero and closes when it returns to
    zero (a reversal closes one trade and opens another). Net P&L is after commission; fill
    prices already include slippage. A trade wins when its net P&L is > 0 and loses when < 0;
    a net P&L of exactly 0 is neither (backtrader's ``TradeAnalyzer`` counts it as won).

    Params:

    - ``tick_size`` (def: ``None``): index points per tick; ``None`` reads the commission
      scheme's ``tick_size`` (``M2KCommInfo``) or falls back to M2K's 0.10.

    ``get_analysis()`` keys:

    - ``trades``: closed trades (count). ``open_trades``: trades still open at the end (count).
    - ``winners``, ``losers``, ``breakeven``: counts by net P&L sign.
    - ``win_rate``: winners / trades (fraction 0-1); None without trades.
    - ``net_pnl``, ``gross_pnl``, ``commission``: sums over closed trades ($).
    - ``gross_profit``: sum of winners' net P&L ($, >= 0); ``gross_loss``: sum of losers' net
      P&L ($, <= 0).
    - ``profit_factor``: gross_profit / -gross_loss; None without a losing trade.
    - ``avg_win`` / ``avg_loss``: mean net P&L of winners / losers ($; avg_loss < 0); None
      without winners / losers.
    - ``avg_win_ticks`` / ``avg_loss_ticks``: the same per contract, in ticks (net $ per
      contract / tick value).
    - ``payoff_ratio``: avg_win / -avg_loss; None unless both exist.
    - ``expectancy``: mean net P&L per trade ($); ``expectancy_ticks``: mean net ticks per
      contract per trade. None without trades.
    - ``avg_ticks``: mean gross ticks per contract (the price move captured, before
      commission); None without trades.
    - ``largest_win`` / ``largest_loss``: best / worst single net P&L ($); None without
      winners / losers.
    - ``longest_winning_streak`` / ``longest_losing_streak``: most consecutive winners / losers
      in closing order (count; a breakeven trade ends a streak). 0 without trades.
    - ``avg_bars_held``: mean bars from entry to exit; ``avg_holding_minutes``: mean wall-clock
      minutes from entry fill to exit fill. None without trades.
    - ``sqn``: System Quality Number, sqrt(n) x mean(net) / stdev(net) with the population
      standard deviation, as backtrader's ``SQN``; None with fewer than 2 trades or zero
      spread (backtrader reports 0 there).
    - ``trade_list``: one dict per closed trade, in closing order: ``ref``, ``data_name``,
      ``entry_dt``, ``exit_dt``, ``direction`` (``"long"``/``"short"``), ``contracts`` (largest
      absolute size held), ``entry_price`` (average, points), ``exit_price`` (average, derived
      from gross P&L: entry + gross / (direction x contracts closed x multiplier)),
      ``gross_pnl``, ``commission``, ``net_pnl`` ($), ``ticks`` (gross ticks per contract),
      ``net_ticks`` (net ticks per contract), ``bars_held``.
    """

    params = (("tick_size", None),)

    def start(self) -> None:
        _quiet(self)
        self._open: dict[int, dict[str, float]] = {}
        self._closed: list[dict[str, Any]] = []

    def notify_trade(self, trade) -> None:
        state = self._open.setdefault(trade.ref, {"peak": 0.0, "last": 0.0, "closed_vol": 0.0})
        size = abs(trade.size)
        if size < state["last"]:
            state["closed_vol"] += state["last"] - size
        state["peak"] = max(state["peak"], size)
        state["last"] = size
        if not trade.isclosed:
            return
        del self._open[trade.ref]
        comminfo = self.strategy.broker.getcommissioninfo(trade.data)
        mult = float(getattr(comminfo.p, "mult", 1.0) or 1.0)
        tick, tick_value = _tick_value(comminfo, self.p.tick_size)
        sign = 1.0 if trade.long else -1.0
        closed_vol = state["closed_vol"] or state["peak"]
        exit_price = trade.price + trade.pnl / (sign * closed_vol * mult)
        self._closed.append(
            {
                "ref": trade.ref,
                "data_name": getattr(trade.data, "_name", "") or "",
                "entry_dt": trade.open_datetime(),
                "exit_dt": trade.close_datetime(),
                "direction": "long" if trade.long else "short",
                "contracts": state["peak"],
                "entry_price": _r(trade.price),
                "exit_price": _r(exit_price),
                "gross_pnl": _r(trade.pnl),
                "commission": _r(trade.commission),
                "net_pnl": _r(trade.pnlcomm),
                "ticks": _r(trade.pnl / (closed_vol * tick_value), 6),
                "net_ticks": _r(trade.pnlcomm / (closed_vol * tick_value), 6),
                "bars_held": trade.barlen,
            }
        )

    def stop(self) -> None:
        self.rets = trade_statistics(self._closed)
        self.rets["open_trades"] = len(self._open)

    def get_analysis(self) -> dict[str, Any]:
        return self.rets


def _streak(flags: Iterable[bool]) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def trade_statistics(closed: list[dict[str, Any]]) -> dict[str, Any]:
    """The :class:`TradeStats` keys from a list of closed-trade dicts (see ``trade_list``)."""
    net = [t["net_pnl"] for t in closed]
    wins = [t for t in closed if t["net_pnl"] > 0]
    losses = [t for t in closed if t["net_pnl"] < 0]
    n = len(closed)
    gross_profit = sum(t["net_pnl"] for t in wins)
    gross_loss = sum(t["net_pnl"] for t in losses)

    def per_contract_ticks(ts: list[dict[str, Any]]) -> float | None:
        return _r(_mean([t["net_ticks"] for t in ts]), 6)

    avg_win = _mean([t["net_pnl"] for t in wins])
    avg_loss = _mean([t["net_pnl"] for t in losses])
    sqn = None
    if n >= 2:
        sd = statistics.pstdev(net)
        if sd > 0:
            sqn = math.sqrt(n) * statistics.fmean(net) / sd
    minutes = [(t["exit_dt"] - t["entry_dt"]).total_seconds() / 60.0 for t in closed]
    return {
        "trades": n,
        "open_trades": 0,
        "winners": len(wins),
        "losers": len(losses),
        "breakeven": n - len(wins) - len(losses),
        "win_rate": _div(len(wins), n),
        "net_pnl": _r(sum(net)),
        "gross_pnl": _r(sum(t["gross_pnl"] for t in closed)),
        "commission": _r(sum(t["commission"] for t in closed)),
        "gross_profit": _r(gross_profit),
        "gross_loss": _r(gross_loss),
        "profit_factor": _div(gross_profit, -gross_loss) if losses else None,
        "avg_win": _r(avg_win),
        "avg_loss": _r(avg_loss),
        "avg_win_ticks": per_contract_ticks(wins),
        "avg_loss_ticks": per_contract_ticks(losses),
        "payoff_ratio": _div(avg_win, -avg_loss) if avg_win is not None and avg_loss else None,
        "expectancy": _r(_mean(net)),
        "expectancy_ticks": per_contract_ticks(closed),
        "avg_ticks": _r(_mean([t["ticks"] for t in closed]), 6),
        "largest_win": _r(max(t["net_pnl"] for t in wins)) if wins else None,
        "largest_loss": _r(min(t["net_pnl"] for t in losses)) if losses else None,
        "longest_winning_streak": _streak(x > 0 for x in net),
        "longest_losing_streak": _streak(x < 0 for x in net),
        "avg_bars_held": _mean([t["bars_held"] for t in closed]),
        "avg_holding_minutes": _mean(minutes),
        "sqn": sqn,
        "trade_list": closed,
    }


# -------------------------------------------------------------------------------------------
# costs
# -------------------------------------------------------------------------------------------


class CostAnalyzer(bt.Analyzer):
    """Commissions and slippage paid, per fill, from ``notify_order``.

    Commission is the ``comm`` of each execution bit backtrader reports (exact, whatever the
    scheme). Slippage is measured, not assumed: for each fill it is

        (fill price - reference price) x signed contracts x multiplier

    where the reference is the price backtrader's matching rules give the same order with no
    slippage on that bar: ``Market``: the bar's open (the creation bar's close under
    cheat-on-close); ``Close``: the bar's close; ``Limit``: a buy fills at min(open, limit), a
    sell at max(open, limit); ``Stop``/``StopTrail``: a buy at max(open, stop), a sell at
    min(open, stop). This stays exact when a broker caps slippage at the bar's high or low, and
    it works for ``FuturesBroker(slippage_ticks=...)``, backtrader's ``slip_fixed``/``slip_perc``
    and any other broker that fills at backtrader's prices plus slippage. ``StopLimit`` fills
    (whose trigger bar makes the reference ambiguous) count zero slippage and are counted in
    ``unpriced_fills``.

    ``get_analysis()`` keys:

    - ``fills``: execution bits seen (count); ``contracts_traded``: contracts bought plus sold
      (count of sides, e.g. a 2-lot round trip is 4).
    - ``commission``: total commission ($); ``commission_per_contract``: commission /
      contracts_traded ($ per contract per side); None without fills.
    - ``slippage``: total slippage paid ($; negative would mean price improvement);
      ``slippage_per_contract`` ($ per contract per side) and ``slippage_ticks_per_contract``
      (ticks); None without fills.
    - ``total_costs``: commission + slippage ($); ``costs_per_contract`` ($ per side).
    - ``gross_profit``: what the run would have made with free, frictionless fills:
      equity change over the run + total_costs ($; includes open P&L at the end).
    - ``commission_pct_of_gross``, ``slippage_pct_of_gross``, ``costs_pct_of_gross``: each cost
      as a percentage of ``gross_profit``; None when gross_profit <= 0.
    - ``unpriced_fills``: fills whose slippage could not be measured (count).
    """

    params = (("tick_size", None),)

    def start(self) -> None:
        _quiet(self)
        self._start_value = self.strategy.broker.getvalue()
        self.fills = 0
        self.contracts = 0.0
        self.commission = 0.0
        self.slippage = 0.0
        self.slippage_ticks = 0.0  # sum of ticks x contracts
        self.unpriced = 0

    def _reference(self, order, data) -> float | None:
        isbuy = order.isbuy()
        broker = self.strategy.broker
        popen = data.open[0]
        et = order.exectype
        if et == bt.Order.Market:
            if getattr(broker.p, "coc", False) and order.info.get("coc", True):
                return order.created.pclose
            return popen
        if et == bt.Order.Close:
            return data.close[0]
        if et == bt.Order.Limit:
            return min(popen, order.created.price) if isbuy else max(popen, order.created.price)
        if et in (bt.Order.Stop, bt.Order.StopTrail):
            return max(popen, order.created.price) if isbuy else min(popen, order.created.price)
        return None

    def notify_order(self, order) -> None:
        if order.status not in (order.Partial, order.Completed):
            return
        data = order.data
        comminfo = self.strategy.broker.getcommissioninfo(data)
        mult = float(getattr(comminfo.p, "mult", 1.0) or 1.0)
        tick, _ = _tick_value(comminfo, self.p.tick_size)
        ref = self._reference(order, data)
        for bit in order.executed.iterpending():
            self.fills += 1
            self.contracts += abs(bit.size)
            self.commission += bit.comm
            if ref is None:
                self.unpriced += 1
                continue
            self.slippage += (bit.price - ref) * bit.size * mult
            self.slippage_ticks += (bit.price - ref) * bit.size / tick

    def stop(self) -> None:
        change = self.strategy.broker.getvalue() - self._start_value
        total = self.commission + self.slippage
        gross = change + total
        c = self.contracts

        def pct(x: float) -> float | None:
            return _r(100.0 * x / gross, 6) if gross > 0 else None

        self.rets = {
            "fills": self.fills,
            "contracts_traded": c,
            "commission": _r(self.commission),
            "commission_per_contract": _r(_div(self.commission, c)),
            "slippage": _r(self.slippage),
            "slippage_per_contract": _r(_div(self.slippage, c)),
            "slippage_ticks_per_contract": _r(_div(self.slippage_ticks, c), 6),
            "total_costs": _r(total),
            "costs_per_contract": _r(_div(total, c)),
            "gross_profit": _r(gross),
            "commission_pct_of_gross": pct(self.commission),
            "slippage_pct_of_gross": pct(self.slippage),
            "costs_pct_of_gross": pct(total),
            "unpriced_fills": self.unpriced,
        }

    def get_analysis(self) -> dict[str, Any]:
        return self.rets


# -------------------------------------------------------------------------------------------
# margin and exposure
# -------------------------------------------------------------------------------------------


def _event_dict(event: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return dataclasses.asdict(event)
    if isinstance(event, dict):
        return dict(event)
    return {"event": str(event)}


class MarginExposure(bt.Analyzer):
    """Margin used, excess equity and notional exposure, bar by bar at the close.

    Equity is ``broker.getvalue()`` (for futures: cash + margin held). Per open position the
    initial margin is ``comminfo.get_margin(close) x |contracts|``; the maintenance requirement
    uses ``comminfo.maintenance_per_contract()`` (``M2KCommInfo``), else a
    ``maintenance_margin`` param, else the initial margin. A stock-like scheme (no margin)
    counts the full position value as margin. Notional is
    ``|contracts| x close x multiplier``. Margin events come from the broker's
    ``margin_events`` list (``FuturesBroker``); other brokers report none.

    ``get_analysis()`` keys:

    - ``peak_initial_margin``: largest initial margin held at a bar close ($);
      ``peak_initial_margin_dt`` its bar; None when never in the market.
    - ``peak_margin_pct_of_equity``: largest initial margin / equity (%); None when never in
      the market with positive equity.
    - ``lowest_excess_equity``: smallest equity - maintenance requirement over all bars ($;
      equals equity on flat bars); ``lowest_excess_equity_dt`` its bar; None without bars.
    - ``peak_notional``: largest notional exposure ($); None when never in the market.
    - ``peak_leverage``: largest notional / equity (multiple, e.g. 13.0 = 13x); None when never
      in the market with positive equity.
    - ``peak_contracts``: largest absolute position (contracts, summed over feeds).
    - ``bars``: bars seen; ``bars_in_market``: bars with a position;
      ``time_in_market_pct``: their share (%); None without bars.
    - ``nonpositive_equity_bars``: bars closed with equity <= 0 while in the market (count).
    - ``margin_calls``, ``intraday_cutbacks``, ``negative_equity_events``: broker events by
      kind (count).
    - ``margin_events``: every broker event as a dict (``dt``, ``kind``, ``equity``,
      ``requirement``, ``contracts``, ``data_name`` for ``FuturesBroker``).
    """

    def start(self) -> None:
        self._rec = _BarRecorder.attach(self)
        self._rec.margin_hook = self._in_market
        self._market_bars = array("q")  # indices of the bars closed with a position
        self._schemes: dict[Any, tuple] = {}
        self.nonpositive = 0
        self.peak_margin: float | None = None
        self._peak_margin_i: int | None = None
        self.peak_margin_pct: float | None = None
        self._low_excess: float | None = None  # over bars in the market
        self._low_excess_i: int | None = None
        self.peak_notional: float | None = None
        self.peak_lev: float | None = None
        self.peak_contracts = 0.0

    def _terms(self, comminfo) -> tuple[float, Any, Any]:
        """(multiplier, initial margin(price), maintenance(price)) per contract for a scheme,
        worked out once per scheme (see the class docstring for the rules)."""
        terms = self._schemes.get(comminfo)
        if terms is not None:
            return terms
        mult = float(getattr(comminfo.p, "mult", 1.0) or 1.0)
        if comminfo.stocklike:

            def initial(price: float) -> float:
                return price * mult  # stock-like: fully paid

        else:
            get_margin = comminfo.get_margin

            def initial(price: float) -> float:
                margin = get_margin(price)
                return float(margin) if margin is not None else price * mult

        per = getattr(comminfo, "maintenance_per_contract", None)
        fixed = getattr(comminfo.p, "maintenance_margin", None)
        if callable(per):

            def maintenance(price: float) -> float:
                return float(per())

        elif fixed is not None:

            def maintenance(price: float) -> float:
                return float(fixed)

        else:
            maintenance = initial
        terms = self._schemes[comminfo] = (mult, initial, maintenance)
        return terms

    def _in_market(self, i: int, equity: float) -> None:
        """Bar ``i`` closed with a position (called by the recorder; flat bars cost nothing:
        their excess equity is the equity itself, read at the end)."""
        broker = self.strategy.broker
        init = maint = notional = contracts = 0.0
        for data in self.datas:
            size = broker.getposition(data).size
            if not size:
                continue
            mult, initial, maintenance = self._terms(broker.getcommissioninfo(data))
            price = data.close[0]
            init += abs(size) * initial(price)
            maint += abs(size) * maintenance(price)
            notional += abs(size) * price * mult
            contracts += abs(size)
        excess = equity - maint
        if self._low_excess is None or excess < self._low_excess:
            self._low_excess, self._low_excess_i = excess, i
        if not contracts:
            return
        self._market_bars.append(i)
        self.peak_contracts = max(self.peak_contracts, contracts)
        if self.peak_margin is None or init > self.peak_margin:
            self.peak_margin, self._peak_margin_i = init, i
        self.peak_notional = max(self.peak_notional or 0.0, notional)
        if equity <= 0:
            self.nonpositive += 1
            return
        self.peak_margin_pct = max(self.peak_margin_pct or 0.0, 100.0 * init / equity)
        self.peak_lev = max(self.peak_lev or 0.0, notional / equity)

    def _lowest_excess(self) -> tuple[float | None, int | None]:
        """(lowest excess equity, its bar): the first bar where it is lowest, flat or not."""
        low, low_i = self._low_excess, self._low_excess_i
        n = len(self._rec)
        flat = np.ones(n, dtype=bool)
        flat[np.frombuffer(self._market_bars, dtype="int64")] = False
        if flat.any():
            where = np.flatnonzero(flat)
            values = self._rec.values_np()[where]
            j = int(np.argmin(values))
            value, i = float(values[j]), int(where[j])
            if low is None or value < low or (value == low and i < low_i):
                low, low_i = value, i
        return low, low_i

    def stop(self) -> None:
        events = [
            _event_dict(e) for e in getattr(self.strategy.broker, "margin_events", None) or []
        ]
        kinds = Counter(e.get("kind") for e in events)
        rec = self._rec
        bars, in_market = len(rec), len(self._market_bars)
        low_excess, low_i = self._lowest_excess()
        self.rets = {
            "peak_initial_margin": _r(self.peak_margin),
            "peak_initial_margin_dt": rec.datetime_at(self._peak_margin_i),
            "peak_margin_pct_of_equity": _r(self.peak_margin_pct, 6),
            "lowest_excess_equity": _r(low_excess),
            "lowest_excess_equity_dt": rec.datetime_at(low_i),
            "peak_notional": _r(self.peak_notional),
            "peak_leverage": _r(self.peak_lev, 6),
            "peak_contracts": self.peak_contracts,
            "bars": bars,
            "bars_in_market": in_market,
            "time_in_market_pct": _r(_div(100.0 * in_market, bars), 6),
            "nonpositive_equity_bars": self.nonpositive,
            "margin_calls": kinds.get("margin_call", 0),
            "intraday_cutbacks": kinds.get("intraday_cutback", 0),
            "negative_equity_events": kinds.get("negative_equity", 0),
            "margin_events": events,
        }
        rec.done()

    def get_analysis(self) -> dict[str, Any]:
        return self.rets


# -------------------------------------------------------------------------------------------
# Kelly decisions
# -------------------------------------------------------------------------------------------


class KellyLog(bt.Analyzer):
    """The sizing decisions of a Kelly sizer over time (``strategy.getsizer().decisions``).

    Works with any sizer: one without a ``decisions`` list reports ``available: False``.

    ``get_analysis()`` keys:

    - ``sizer``: the sizer's class name, or None.
    - ``available``: True when the sizer keeps a ``decisions`` list.
    - ``decisions``: one dict per sizing call, in order; for ``KellySizer``: ``dt``, ``p`` (win
      probability, fraction), ``b`` (payoff ratio), ``f_star`` (full Kelly fraction),
      ``f_used`` (fraction applied after scaling and caps), ``equity`` ($),
      ``risk_per_contract`` ($), ``contracts``, ``binding`` (which limit set the size),
      ``trades_used`` (closed trades in the estimate).
    - ``count``: number of decisions; ``zero_size``: decisions that gave 0 contracts.
    - ``mean_f_used``, ``last_f_used``: fraction of equity risked (fraction); None without
      decisions carrying ``f_used``.
    - ``max_contracts``: largest size decided; None without decisions.
    - ``binding``: count of decisions per binding limit (dict).
    """

    def start(self) -> None:
        _quiet(self)

    def stop(self) -> None:
        try:
            sizer = self.strategy.getsizer()
        except Exception:  # noqa: BLE001 - any strategy: no sizer is not an error here
            sizer = None
        raw = getattr(sizer, "decisions", None)
        decisions = [_event_dict(d) for d in raw] if raw is not None else []
        f_used = [d["f_used"] for d in decisions if d.get("f_used") is not None]
        sizes = [d["contracts"] for d in decisions if d.get("contracts") is not None]
        self.rets = {
            "sizer": type(sizer).__name__ if sizer is not None else None,
            "available": raw is not None,
            "decisions": decisions,
            "count": len(decisions),
            "zero_size": sum(1 for s in sizes if s == 0),
            "mean_f_used": _mean(f_used),
            "last_f_used": f_used[-1] if f_used else None,
            "max_contracts": max(sizes) if sizes else None,
            "binding": dict(Counter(str(d.get("binding")) for d in decisions if "binding" in d)),
        }

    def get_analysis(self) -> dict[str, Any]:
        return self.rets


# -------------------------------------------------------------------------------------------
# returns and risk
# -------------------------------------------------------------------------------------------


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
    return _periods(timeframe, compression, list(counts.values()))


def _periods(timeframe: int, compression: int, bars_per_date: Sequence[int]) -> float:
    """:func:`periods_per_year` from the number of bars on each trade date seen."""
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
        self._rec = _BarRecorder.attach(self)

    def stop(self) -> None:
        rec = self._rec
        _, per_date = np.unique(trade_dates64(rec.datetimes_np()), return_counts=True)
        periods = self.p.periods or _periods(
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
    values = np.asarray(values, dtype="float64")
    n = len(values)
    end_value = float(values[-1]) if n else start_value
    series = np.concatenate(([start_value], values))
    # drawdown
    peak = np.maximum.accumulate(series)
    dd = peak - series
    max_dd = float(dd.max())
    above = peak > 0
    if above.all():
        pct = dd * 100.0
        pct /= peak
    else:
        pct = 100.0 * dd[above] / peak[above]
    max_dd_pct = max(0.0, float(pct.max())) if len(pct) else 0.0
    del pct, peak, above
    edges = np.diff(np.concatenate(([0], (dd > 0).astype("int8"), [0])))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    max_run = int(runs.max()) if len(runs) else 0
    del dd, edges, runs
    years = n / periods if periods else 0.0
    out: dict[str, Any] = {
        "start_value": _r(start_value),
        "end_value": _r(end_value),
        "net_profit": _r(end_value - start_value),
        "return_pct": _r(_div(100.0 * (end_value - start_value), start_value), 8),
        "bars": n,
        "trade_dates": None,
        "periods_per_year": periods,
        "years": years,
        "cagr": None,
        "volatility": None,
        "sharpe": None,
        "sortino": None,
        "max_drawdown": _r(max_dd),
        "max_drawdown_pct": _r(max_dd_pct, 8),
        "max_drawdown_bars": max_run,
        "calmar": None,
        "riskfreerate": riskfreerate,
    }
    if (series <= 0).any():
        return out
    if years > 0:
        try:
            out["cagr"] = (end_value / start_value) ** (1.0 / years) - 1.0
        except OverflowError:
            out["cagr"] = None
    rets = series[1:] / series[:-1]
    rets -= 1.0
    rf = (1.0 + riskfreerate) ** (1.0 / periods) - 1.0 if periods else 0.0
    if len(rets) >= 2:
        ddof = 1 if stddev_sample else 0
        out["volatility"] = float(np.std(rets, ddof=ddof)) * math.sqrt(periods)
        excess = rets  # r - rf, in place: rets are not needed any more
        excess -= rf
        mean = math.fsum(excess) / len(excess)  # as statistics.fmean
        sd = float(np.std(excess, ddof=ddof))
        if sd > 0:
            out["sharpe"] = mean / sd * math.sqrt(periods)
        losses = np.minimum(excess, 0.0)
        downside = math.sqrt(float(np.dot(losses, losses)) / len(excess))
        if downside > 0:
            out["sortino"] = mean / downside * math.sqrt(periods)
    if out["cagr"] is not None and max_dd_pct > 0:
        out["calmar"] = out["cagr"] / (max_dd_pct / 100.0)
    return out


# -------------------------------------------------------------------------------------------
# equity curve
# -------------------------------------------------------------------------------------------


class EquityCurve(bt.Analyzer):
    """Equity, cash and position at each bar close, for ``equity.csv`` and plots.

    ``get_analysis()`` is a dict of equal-length numpy arrays (columns), one row per bar
    (``.tolist()`` gives Python objects):

    - ``datetime``: bar time (naive, feed time zone).
    - ``value``: account equity, ``broker.getvalue()`` ($).
    - ``cash``: ``broker.getcash()`` ($; for futures, equity minus margin held).
    - ``position``: signed contracts held in the first data feed.
    - ``close``: the first feed's close (points).
    - ``drawdown``: running peak of value - value ($, >= 0); ``drawdown_pct``: as a % of the
      peak (%; NaN while the peak is not positive).

    :func:`equity_frame` turns it into a DataFrame indexed by ``datetime``. Per bar it costs
    three appended doubles (shared with :class:`ReturnsRisk` and :class:`MarginExposure`);
    the columns are built at the end.
    """

    COLUMNS = ("datetime", "value", "cash", "position", "close", "drawdown", "drawdown_pct")

    def start(self) -> None:
        self._rec = _BarRecorder.attach(self)
        self.rets = {c: [] for c in self.COLUMNS}

    def stop(self) -> None:
        rec = self._rec
        values = rec.values_np()
        peak = np.maximum.accumulate(values)  # running peak, the start value included
        np.maximum(peak, rec.start_value, out=peak)
        drawdown = peak - values
        positive = peak > 0
        pct = np.divide(drawdown, peak, out=peak, where=positive)  # reuses peak's memory
        pct *= 100.0
        pct[~positive] = np.nan
        position = rec.column("positions")
        whole = bool(np.all(position == np.trunc(position)))  # contracts: ints, as before
        # numpy columns: 8 bytes a bar, no Python object per value
        self.rets = {
            "datetime": rec.datetimes_np(),
            "value": values,
            "cash": rec.column("cash"),
            "position": position.astype("int64") if whole else position,
            "close": rec.column("closes"),
            "drawdown": drawdown,
            "drawdown_pct": pct,
        }
        rec.done()

    def get_analysis(self) -> dict[str, list]:
        return self.rets


def equity_frame(analysis: dict):
    """A pandas DataFrame of an :class:`EquityCurve` analysis, indexed by ``datetime``."""
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime(analysis.get("datetime", [])), name="datetime")
    cols = {c: analysis.get(c, []) for c in EquityCurve.COLUMNS if c != "datetime"}
    return pd.DataFrame(cols, index=index, copy=False)


# -------------------------------------------------------------------------------------------
# wiring
# -------------------------------------------------------------------------------------------

_CLASSES: dict[str, type[bt.Analyzer]] = {
    "trades": TradeStats,
    "costs": CostAnalyzer,
    "margin": MarginExposure,
    "kelly": KellyLog,
    "returns": ReturnsRisk,
    "equity": EquityCurve,
}


def add_analyzers(cerebro: bt.Cerebro, minimal: bool = False, **returns_params) -> list[str]:
    """Add this module's analyzers to ``cerebro`` under the names of :data:`ANALYZER_NAMES`.

    ``minimal=True`` adds only ``returns``, ``trades`` and ``equity``, what an optimisation
    trial needs (the equity curve gives the per-day returns of the overfitting statistics).
    ``returns_params`` go to :class:`ReturnsRisk` (e.g. ``riskfreerate=0.04``). Returns the
    names added. Read them after ``cerebro.run()`` with
    ``{name: strat.analyzers.getbyname(name).get_analysis() for name in names}``.
    """
    names = list(MINIMAL_ANALYZER_NAMES) if minimal else list(_CLASSES)
    for name in names:
        kwargs = returns_params if name == "returns" else {}
        cerebro.addanalyzer(_CLASSES[name], _name=name, **kwargs)
    return names


def metrics_from(analysis: dict[str, dict]) -> dict[str, Any]:
    """The flat headline metrics from ``{name: get_analysis()}`` of :func:`add_analyzers`.

    Keys (:data:`METRIC_KEYS`): ``net_profit`` ($), ``return_pct`` (%), ``cagr`` (fraction),
    ``sharpe``, ``sortino``, ``calmar`` (annualised ratios), ``sqn``, ``profit_factor``,
    ``win_rate`` (fraction), ``trades`` (count), ``max_drawdown`` ($), ``max_drawdown_pct``
    (%), ``expectancy`` ($ per trade). A missing analyzer or undefined value gives None.

    >>> metrics_from({})["sharpe"] is None
    True
    """
    ret = analysis.get("returns") or {}
    trd = analysis.get("trades") or {}
    return {
        "net_profit": ret.get("net_profit"),
        "return_pct": ret.get("return_pct"),
        "cagr": ret.get("cagr"),
        "sharpe": ret.get("sharpe"),
        "sortino": ret.get("sortino"),
        "calmar": ret.get("calmar"),
        "sqn": trd.get("sqn"),
        "profit_factor": trd.get("profit_factor"),
        "win_rate": trd.get("win_rate"),
        "trades": trd.get("trades"),
        "max_drawdown": ret.get("max_drawdown"),
        "max_drawdown_pct": ret.get("max_drawdown_pct"),
        "expectancy": trd.get("expectancy"),
    }
