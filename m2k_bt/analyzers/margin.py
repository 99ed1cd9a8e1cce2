"""Margin used, excess equity and notional exposure, bar by bar: :class:`MarginExposure`."""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Any

import backtrader as bt
import numpy as np

from .common import event_dict, ratio, rounded
from .recorder import BarRecorder

__all__ = ["MarginExposure"]


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
        self._rec = BarRecorder.attach(self)
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
            event_dict(e) for e in getattr(self.strategy.broker, "margin_events", None) or []
        ]
        kinds = Counter(e.get("kind") for e in events)
        rec = self._rec
        bars, in_market = len(rec), len(self._market_bars)
        low_excess, low_i = self._lowest_excess()
        self.rets = {
            "peak_initial_margin": rounded(self.peak_margin),
            "peak_initial_margin_dt": rec.datetime_at(self._peak_margin_i),
            "peak_margin_pct_of_equity": rounded(self.peak_margin_pct, 6),
            "lowest_excess_equity": rounded(low_excess),
            "lowest_excess_equity_dt": rec.datetime_at(low_i),
            "peak_notional": rounded(self.peak_notional),
            "peak_leverage": rounded(self.peak_lev, 6),
            "peak_contracts": self.peak_contracts,
            "bars": bars,
            "bars_in_market": in_market,
            "time_in_market_pct": rounded(ratio(100.0 * in_market, bars), 6),
            "nonpositive_equity_bars": self.nonpositive,
            "margin_calls": kinds.get("margin_call", 0),
            "intraday_cutbacks": kinds.get("intraday_cutback", 0),
            "negative_equity_events": kinds.get("negative_equity", 0),
            "margin_events": events,
        }
        rec.done()

    def get_analysis(self) -> dict[str, Any]:
        return self.rets
