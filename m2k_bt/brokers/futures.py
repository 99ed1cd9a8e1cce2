"""A backtrader broker with the futures margin rules backtrader lacks.

``FuturesBroker`` is backtrader's ``BackBroker`` (same cash, value and fill semantics: cash is
marked to market every bar and ``getvalue()`` is cash plus the initial margin held, i.e. account
equity) plus:

- a **maintenance-margin check after every bar**: when equity falls below the maintenance
  requirement of the open positions, every position is liquidated with a market order that
  fills at the next bar's open, and a ``MarginEvent`` is recorded;
- an **intraday margin** regime: with ``intraday_margin`` set on the commission info, the lower
  requirement applies (for accepting orders and for the maintenance check) to bars stamped inside
  ``[intraday_start, intraday_end)`` New York time; on the first bar after the window, positions
  larger than equity supports at the overnight initial margin are cut back (market order at the
  next bar's open) and an ``intraday_cutback`` event is recorded;
- **negative equity** recorded as an event the first bar it happens, so cash never drifts
  negative unnoticed;
- **fixed slippage in ticks** (``slippage_ticks``) applied to market and stop fills, including
  fills at the open, computed in whole cents of contract value (:mod:`m2k_bt.rules.prices`), so
  a slipped fill is the exact grid price (1824.2 less a tick is 1824.1); limit orders fill at
  their limit or better, never slipped.

Use it in any cerebro script::

    cerebro.broker = FuturesBroker(cash=25_000)
    cerebro.broker.addcommissioninfo(M2KCommInfo())

Bar timestamps are read as the feed presents them (``data.datetime.datetime(0)``); our feeds
present New York wall-clock time.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict, dataclass

import backtrader as bt

from ..errors import ParameterError, check_known
from ..rules import margin as rules
from ..rules import prices
from ..rules.margin import day_fraction

__all__ = ["FuturesBroker", "MarginEvent"]


@dataclass(frozen=True)
class MarginEvent:
    """One margin event.

    - ``dt``: bar time at which it was detected (the order fills at the next bar's open).
    - ``kind``: ``"margin_call"``, ``"intraday_cutback"`` or ``"negative_equity"``.
    - ``equity``: account equity (``broker.getvalue()``), dollars.
    - ``requirement``: the margin requirement that was breached, dollars.
    - ``contracts``: signed position size of the data at the event.
    - ``data_name``: the feed's name.
    - ``action``: what the broker did, in words.
    """

    dt: _dt.datetime | None
    kind: str
    equity: float
    requirement: float
    contracts: int
    data_name: str
    action: str

    def as_dict(self) -> dict:
        d = asdict(self)
        d["dt"] = self.dt.isoformat() if self.dt is not None else None
        return d


def _as_time(name: str, value) -> _dt.time:
    if isinstance(value, _dt.time):
        return value
    if isinstance(value, str):
        try:
            return _dt.time.fromisoformat(value)
        except ValueError:
            pass
    raise ParameterError(f"{name} must be a time like '09:30', got {value!r}")


class FuturesBroker(bt.brokers.BackBroker):
    """``BackBroker`` plus maintenance margin, intraday margin and tick slippage.

    Params (besides all of ``BackBroker``'s):

    - ``slippage_ticks`` (def: ``0``): ticks of slippage against the trader on every market and
      stop fill (the fill never leaves the bar's high-low range). The tick size is the data's
      commission info ``tick_size`` (0.10 when it has none).
    - ``intraday_start`` (def: ``"09:30"``): start of the intraday-margin window, New York time.
    - ``intraday_end`` (def: ``"15:45"``): end of the window (exclusive).
    - ``liquidate`` (def: ``True``): act on margin calls; ``False`` only records them.

    Events are in ``margin_events`` (a list of :class:`MarginEvent`).
    """

    params = (
        ("slippage_ticks", 0.0),
        ("intraday_start", "09:30"),
        ("intraday_end", "15:45"),
        ("liquidate", True),
    )

    def __init__(self, **unknown):
        if unknown:
            check_known(unknown, self.params._getkeys(), "FuturesBroker parameter")
        ticks = self.p.slippage_ticks
        if not isinstance(ticks, (int, float)) or not math.isfinite(ticks) or ticks < 0:
            raise ParameterError(f"slippage_ticks must be a number >= 0, got {ticks!r}")
        cash = self.p.cash
        if isinstance(cash, bool) or not isinstance(cash, (int, float)) or not (
            math.isfinite(cash) and cash >= 0
        ):
            raise ParameterError(f"cash must be a number of dollars >= 0, got {cash!r}")
        self._win_start = _as_time("intraday_start", self.p.intraday_start)
        self._win_end = _as_time("intraday_end", self.p.intraday_end)
        if self._win_start >= self._win_end:
            raise ParameterError(
                f"intraday_start {self._win_start} must be before intraday_end {self._win_end}"
            )
        self._win_start_frac = day_fraction(self._win_start)
        self._win_end_frac = day_fraction(self._win_end)
        super().__init__()
        self._any_intraday: bool | None = None  # decided on the first bar
        self._maint_fns: dict = {}
        self.margin_events: list[MarginEvent] = []
        self._owners: dict = {}
        self._forced: dict = {}
        self._negative = False

    def start(self):
        super().start()
        self._any_intraday = None
        self._maint_fns = {}
        self.margin_events = []
        self._owners = {}
        self._forced = {}
        self._negative = False

    # -- a zero account ---------------------------------------------------------------------
    def _get_value(self, datas=None, lever=False):
        """BackBroker's value; an account that started with no cash (``cash=0``, or
        ``setcash(0)`` before the run) holds no fund shares, and BackBroker's fund-value update
        (value / shares) would divide by zero: there the fund value stays at its start."""
        if self._fundshares or self._fundhist:
            return super()._get_value(datas=datas, lever=lever)
        self._fundshares = 1.0  # stand-in share, removed again below
        try:
            return super()._get_value(datas=datas, lever=lever)
        finally:
            self._fundshares -= 1.0  # leaves the shares that cash added meanwhile bought
            self._fundval = (self._value / self._fundshares if self._fundshares
                             else self.p.fundstartval)

    # -- order entry: remember who trades each data, for forced orders ----------------------
    def buy(self, owner, data, size, *args, **kwargs):
        self._owners[data] = owner
        return super().buy(owner, data, size, *args, **kwargs)

    def sell(self, owner, data, size, *args, **kwargs):
        self._owners[data] = owner
        return super().sell(owner, data, size, *args, **kwargs)

    # -- the bar cycle ----------------------------------------------------------------------
    def next(self):
        if self._any_intraday is None:
            self._any_intraday = any(
                getattr(ci.p, "intraday_margin", None) is not None for ci in self.comminfo.values()
            )
        closing = self._update_regime() if self._any_intraday else ()
        super().next()
        if not closing:
            # the usual bar: requirement met, equity positive, nothing to record
            requirement = self._requirement()
            equity = self.getvalue()
            if rules.margin_ok(equity, requirement):
                self._negative = False
                return
            if not requirement:
                return  # flat with negative equity: recorded when it happened
        self._check_margins(closing)

    def _datas(self):
        seen = dict.fromkeys(self.positions)
        for order in self.submitted:
            seen.setdefault(order.data, None)
        for order in self.pending:
            if order is not None:
                seen.setdefault(order.data, None)
        return [d for d in seen if len(d)]

    def _in_window(self, data) -> bool:
        return rules.in_window(data.datetime[0], self._win_start_frac, self._win_end_frac)

    def _update_regime(self) -> list:
        """Set each commission info's intraday flag for this bar; rebase cash so that equity is
        unchanged when the margin held per contract changes. Returns the datas whose window
        just closed."""
        closing = []
        for data in self._datas():
            ci = self.getcommissioninfo(data)
            if getattr(ci.p, "intraday_margin", None) is None or not hasattr(ci, "set_intraday"):
                continue
            active = self._in_window(data)
            if active == ci.intraday_active:
                continue
            pos = self.positions[data]
            price = data.close[-1] if len(data) > 1 else data.close[0]
            before = ci.get_margin(price)
            ci.set_intraday(active)
            # value = cash + margin held stays the same
            self.cash = rules.rebase_cash(self.cash, pos.size, before, ci.get_margin(price))
            if not active:
                closing.append(data)
        return closing

    def _requirement(self) -> float:
        """Maintenance requirement of the open positions now ($)."""
        total = 0.0
        for data, pos in self.positions.items():
            if pos.size:
                total += rules.requirement(pos.size, self._maintenance(data)())
        return total

    def _maintenance(self, data):
        """A function giving ``data``'s maintenance margin per contract now (cached per data:
        the commission info is fixed for the run, its intraday regime is read at each call)."""
        fn = self._maint_fns.get(data)
        if fn is None:
            ci = self.getcommissioninfo(data)
            per = getattr(ci, "maintenance_per_contract", None)
            fixed = getattr(ci.p, "maintenance_margin", None)
            if per is None and fixed is not None:
                fixed = float(fixed)

                def per() -> float:
                    return fixed

            elif per is None and ci.stocklike:

                def per() -> float:
                    return 0.0  # stock-like: the whole price is paid in cash, nothing to call

            elif per is None:  # a futures scheme without a maintenance figure: its initial margin

                def per() -> float:
                    return float(ci.get_margin(data.close[0]) or 0.0)

            fn = self._maint_fns[data] = per
        return fn

    def _check_margins(self, closing: list) -> None:
        equity = self.getvalue()
        if equity < 0 and not self._negative:
            for data, pos in self.positions.items():
                if pos.size:
                    self._record(data, "negative_equity", equity, 0.0, "equity below zero")
                    break
        self._negative = equity < 0

        for data in closing:
            pos = self.positions[data]
            ci = self.getcommissioninfo(data)
            if not pos.size or self._forced_alive(data):
                continue
            overnight = ci.p.margin
            cut = rules.cutback_contracts(pos.size, equity, overnight)
            if cut:
                allowed = abs(pos.size) - cut
                action = f"cut back {cut} contracts at next open (equity supports {allowed})"
                self._record(data, "intraday_cutback", equity,
                             rules.margin_held(pos.size, overnight), action)
                self._force(data, -cut if pos.size > 0 else cut)

        requirement = self._requirement()
        if rules.margin_call(equity, requirement):
            for data, pos in list(self.positions.items()):
                if not pos.size or self._forced_alive(data):
                    continue
                action = f"liquidate {abs(pos.size)} contracts at next open"
                if not self.p.liquidate:
                    action = "recorded only (liquidate=False)"
                self._record(data, "margin_call", equity, requirement, action)
                if self.p.liquidate:
                    self._force(data, -pos.size)

    def _record(self, data, kind, equity, requirement, action) -> None:
        self.margin_events.append(
            MarginEvent(
                dt=data.datetime.datetime(0),
                kind=kind,
                equity=float(equity),
                requirement=float(requirement),
                contracts=int(self.positions[data].size),
                data_name=getattr(data, "_name", "") or "data0",
                action=action,
            )
        )

    def _forced_alive(self, data) -> bool:
        order = self._forced.get(data)
        return order is not None and order.alive()

    def _force(self, data, size) -> None:
        owner = self._owners.get(data)
        method = super().buy if size > 0 else super().sell
        # _checksubmit=False: a closing order must not be refused for lack of cash
        order = method(owner, data, abs(size), exectype=bt.Order.Market, _checksubmit=False)
        order.addinfo(margin_call=True)
        self._forced[data] = order

    # -- slippage in ticks ------------------------------------------------------------------
    # A slip is computed in cents of contract value (rules.prices): the multiplier x 100 of the
    # order's commission info (1 x 100 without one), slippage_ticks x tick x that, whole.
    def _try_exec(self, order):
        if self.p.slippage_ticks:
            ci = self.getcommissioninfo(order.data)
            self._per_point = float(getattr(ci.p, "mult", 1.0) or 1.0) * 100.0
            self._slip = prices.slip_cents(self.p.slippage_ticks,
                                           float(getattr(ci.p, "tick_size", 0.10)),
                                           self._per_point)
        return super()._try_exec(order)

    def _slip_up(self, pmax, price, doslip=True, lim=False):
        if not self.p.slippage_ticks:
            return super()._slip_up(pmax, price, doslip, lim)
        if lim:
            return price  # limits fill at the limit or better
        return prices.slip_up(price, pmax, self._slip, self._per_point)

    def _slip_down(self, pmin, price, doslip=True, lim=False):
        if not self.p.slippage_ticks:
            return super()._slip_down(pmin, price, doslip, lim)
        if lim:
            return price
        return prices.slip_down(price, pmin, self._slip, self._per_point)
