"""Commissions and slippage paid, per fill: :class:`CostAnalyzer`."""

from __future__ import annotations

from typing import Any

import backtrader as bt

from .common import ratio, rounded, tick_size_and_value
from .recorder import quiet_dispatch

__all__ = ["CostAnalyzer"]


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

    Params:

    - ``tick_size`` (def: ``None``): index points per tick, for the slippage in ticks; ``None``
      reads the commission scheme's ``tick_size`` (``M2KCommInfo``) or falls back to M2K's 0.10.

    ``get_analysis()`` keys:

    - ``fills``: execution bits seen (count); ``contracts_traded``: contracts bought plus sold
      (count of sides, e.g. a 2-lot round trip is 4).
    - ``commission``: total commission ($); ``commission_per_contract``: commission /
      contracts_traded ($ per contract per side); None without fills.
    - ``slippage``: total slippage paid ($; negative would mean price improvement);
      ``slippage_per_contract`` ($ per contract per side) and ``slippage_ticks_per_contract``
      (ticks); None without fills.
    - ``total_costs``: commission + slippage ($); ``costs_per_contract``: total_costs /
      contracts_traded ($ per contract per side); None without fills.
    - ``gross_profit``: what the run would have made with free, frictionless fills:
      equity change over the run + total_costs ($; includes open P&L at the end).
    - ``commission_pct_of_gross``, ``slippage_pct_of_gross``, ``costs_pct_of_gross``: each cost
      as a percentage of ``gross_profit``; None when gross_profit <= 0.
    - ``unpriced_fills``: fills whose slippage could not be measured (count).
    """

    params = (("tick_size", None),)

    def start(self) -> None:
        quiet_dispatch(self)
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
        tick, _ = tick_size_and_value(comminfo, self.p.tick_size)
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
            return rounded(100.0 * x / gross, 6) if gross > 0 else None

        self.rets = {
            "fills": self.fills,
            "contracts_traded": c,
            "commission": rounded(self.commission),
            "commission_per_contract": rounded(ratio(self.commission, c)),
            "slippage": rounded(self.slippage),
            "slippage_per_contract": rounded(ratio(self.slippage, c)),
            "slippage_ticks_per_contract": rounded(ratio(self.slippage_ticks, c), 6),
            "total_costs": rounded(total),
            "costs_per_contract": rounded(ratio(total, c)),
            "gross_profit": rounded(gross),
            "commission_pct_of_gross": pct(self.commission),
            "slippage_pct_of_gross": pct(self.slippage),
            "costs_pct_of_gross": pct(total),
            "unpriced_fills": self.unpriced,
        }

    def get_analysis(self) -> dict[str, Any]:
        return self.rets
