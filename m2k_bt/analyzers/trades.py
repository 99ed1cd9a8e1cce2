"""Closed-trade statistics: :class:`TradeStats` and the function it shares with the compiled
engine, :func:`trade_statistics`."""

from __future__ import annotations

import math
import statistics
from itertools import compress
from typing import Any

import backtrader as bt
import numpy as np

from ..rules import money
from .common import mean_or_none, ratio, rounded, tick_size_and_value
from .recorder import quiet_dispatch

__all__ = ["TradeStats", "closed_trade_statistics", "trade_statistics"]


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
    - ``trade_list``: one dict per closed trade, in closing order: ``ref`` (1, 2, ... in the
      run), ``data_name``,
      ``entry_dt``, ``exit_dt``, ``direction`` (``"long"``/``"short"``), ``contracts`` (largest
      absolute size held), ``entry_price`` (average, points), ``exit_price`` (average, derived
      from gross P&L: entry + gross / (direction x contracts closed x multiplier)),
      ``gross_pnl``, ``commission``, ``net_pnl`` ($, whole cents),
      ``ticks`` (gross ticks per contract),
      ``net_ticks`` (net ticks per contract), ``bars_held``.
    """

    params = (("tick_size", None),)

    def start(self) -> None:
        quiet_dispatch(self)
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
        tick, tick_value = tick_size_and_value(comminfo, self.p.tick_size)
        sign = 1.0 if trade.long else -1.0
        closed_vol = state["closed_vol"] or state["peak"]
        exit_price = trade.price + trade.pnl / (sign * closed_vol * mult)
        # money in whole cents (rules.money), as the strategy's trade log books it
        gross, comm = money.to_cents(trade.pnl), money.to_cents(trade.commission)
        pnl, pnlcomm = money.dollars(gross), money.dollars(gross - comm)
        self._closed.append(
            {
                "ref": len(self._closed) + 1,
                "data_name": getattr(trade.data, "_name", "") or "",
                "entry_dt": trade.open_datetime(),
                "exit_dt": trade.close_datetime(),
                "direction": "long" if trade.long else "short",
                "contracts": state["peak"],
                "entry_price": rounded(trade.price),
                "exit_price": rounded(exit_price),
                "gross_pnl": pnl,
                "commission": money.dollars(comm),
                "net_pnl": pnlcomm,
                "ticks": rounded(pnl / (closed_vol * tick_value), 6),
                "net_ticks": rounded(pnlcomm / (closed_vol * tick_value), 6),
                "bars_held": trade.barlen,
            }
        )

    def stop(self) -> None:
        self.rets = trade_statistics(self._closed)
        self.rets["open_trades"] = len(self._open)

    def get_analysis(self) -> dict[str, Any]:
        return self.rets


def _streak(flags) -> int:
    """The longest run of True in ``flags`` (a bool array or list)."""
    f = np.asarray(flags, dtype=bool)
    if not f.any():
        return 0
    # runs start where a True follows a False and end where a False follows a True
    edges = np.flatnonzero(np.diff(np.concatenate(([False], f, [False])).astype(np.int8)))
    return int((edges[1::2] - edges[::2]).max())


def trade_statistics(closed: list[dict[str, Any]]) -> dict[str, Any]:
    """The :class:`TradeStats` keys from a list of closed-trade dicts (see ``trade_list``)."""
    return closed_trade_statistics(
        [t["net_pnl"] for t in closed], [t["gross_pnl"] for t in closed],
        [t["commission"] for t in closed], [t["ticks"] for t in closed],
        [t["net_ticks"] for t in closed], [t["bars_held"] for t in closed],
        [(t["exit_dt"] - t["entry_dt"]).total_seconds() / 60.0 for t in closed], closed)


def closed_trade_statistics(net: list, gross: list, commission: list, ticks: list,
                            net_ticks: list, bars_held: list, minutes: list,
                            trade_list: list) -> dict[str, Any]:
    """:func:`trade_statistics` from the closed trades' columns (Python numbers in closing
    order: the ``trade_list`` dicts' ``net_pnl``, ``gross_pnl``, ``commission``, ``ticks``,
    ``net_ticks``, ``bars_held`` and holding minutes, ``(exit_dt - entry_dt).total_seconds()
    / 60``), which the compiled engine has without reading the dicts; ``trade_list`` is
    returned as it is. The same sums in the same order: the same numbers to the last bit."""
    is_win = [x > 0 for x in net]
    is_loss = [x < 0 for x in net]
    win_net, loss_net = list(compress(net, is_win)), list(compress(net, is_loss))
    n = len(net)
    gross_profit = sum(win_net)
    gross_loss = sum(loss_net)

    def per_contract_ticks(ts: list[float]) -> float | None:
        return rounded(mean_or_none(ts), 6)

    avg_win = mean_or_none(win_net)
    avg_loss = mean_or_none(loss_net)
    sqn = None
    if n >= 2:
        sd = statistics.pstdev(net)
        if sd > 0:
            sqn = math.sqrt(n) * statistics.fmean(net) / sd
    return {
        "trades": n,
        "open_trades": 0,
        "winners": len(win_net),
        "losers": len(loss_net),
        "breakeven": n - len(win_net) - len(loss_net),
        "win_rate": ratio(len(win_net), n),
        "net_pnl": rounded(sum(net)),
        "gross_pnl": rounded(sum(gross)),
        "commission": rounded(sum(commission)),
        "gross_profit": rounded(gross_profit),
        "gross_loss": rounded(gross_loss),
        "profit_factor": ratio(gross_profit, -gross_loss) if loss_net else None,
        "avg_win": rounded(avg_win),
        "avg_loss": rounded(avg_loss),
        "avg_win_ticks": per_contract_ticks(list(compress(net_ticks, is_win))),
        "avg_loss_ticks": per_contract_ticks(list(compress(net_ticks, is_loss))),
        "payoff_ratio": ratio(avg_win, -avg_loss) if avg_win is not None and avg_loss else None,
        "expectancy": rounded(mean_or_none(net)),
        "expectancy_ticks": per_contract_ticks(net_ticks),
        "avg_ticks": rounded(mean_or_none(ticks), 6),
        "largest_win": rounded(max(win_net)) if win_net else None,
        "largest_loss": rounded(min(loss_net)) if loss_net else None,
        "longest_winning_streak": _streak(np.array(is_win, dtype=bool)),
        "longest_losing_streak": _streak(np.array(is_loss, dtype=bool)),
        "avg_bars_held": mean_or_none(bars_held),
        "avg_holding_minutes": mean_or_none(minutes),
        "sqn": sqn,
        "trade_list": trade_list,
    }
