"""IB orders built from backtrader orders: our own reference on every order, brackets as a
parent plus an OCA stop and target, every price on the contract's tick grid.

- :func:`order_ref`: the reference an order carries at IB, made from the bar it was decided
  on, so that the same decision after a restart has the same reference and is not sent twice.
- :func:`bracket_prices`: stop and target snapped to the tick grid, each rounded towards the
  entry (a stop then risks no more than asked, a target asks no more than asked).
- :func:`ib_orders`: the ``ib_async`` orders for one order or one bracket.

A resting stop or limit order sent alone is put in an OCA group of its own (or in the group of
the order it is ``oco`` with), so that an order placed later with backtrader's ``oco=`` (a
bracket's stop moved: cancel it, sell a new stop ``oco=`` the target) is cancelled by IB when
its partner fills, as backtrader's broker cancels it.
"""

from __future__ import annotations

import datetime as _dt

from ..contracts import ContractSpec, round_to_tick
from ..errors import ParameterError
from .errors import require_ib_async

__all__ = ["REF_TAG", "order_ref", "bracket_prices", "plan_orders", "ib_orders", "OrderPlan"]

#: Prefix of the ``orderRef`` of every order we send; orders without it are not ours.
REF_TAG = "m2k"


def order_ref(tag: str, bar_dt: _dt.datetime, seq: int, leg: str = "") -> str:
    """``"{tag}-{bar time}-{n}"`` (plus ``-S``/``-T`` for a bracket's stop/target).

    >>> order_ref("m2k", _dt.datetime(2025, 10, 1, 10, 35), 1)
    'm2k-202510011035-1'
    >>> order_ref("m2k", _dt.datetime(2025, 10, 1, 10, 35), 1, "S")
    'm2k-202510011035-1-S'
    """
    return f"{tag}-{bar_dt:%Y%m%d%H%M}-{seq}" + (f"-{leg}" if leg else "")


def bracket_prices(spec: ContractSpec, is_buy: bool, stop: float | None,
                   target: float | None) -> tuple[float | None, float | None]:
    """Stop and target on ``spec``'s tick grid, each rounded towards the entry: for a buy the
    stop (below) rounds up and the target (above) down; for a sell, the reverse. A stop then
    risks no more than asked, and a target asks no more than asked.

    >>> from m2k_bt.contracts import M2K
    >>> bracket_prices(M2K, True, 1989.96, 2010.04)   # 0.10-point ticks
    (1990.0, 2010.0)
    >>> bracket_prices(M2K, False, 2010.04, 1989.96)
    (2010.0, 1990.0)
    """
    stop_mode, target_mode = ("up", "down") if is_buy else ("down", "up")
    s = None if stop is None else round_to_tick(float(stop), spec.tick_size, stop_mode)
    t = None if target is None else round_to_tick(float(target), spec.tick_size, target_mode)
    return s, t


class OrderPlan:
    """What one backtrader order (or bracket) becomes at IB, before it is sent: ``legs`` are
    ``(role, action, quantity, order type, price or None, ref)`` with role ``"entry"``,
    ``"stop"`` or ``"target"``; ``oca`` the OCA group of a bracket's stop and target."""

    def __init__(self, legs: list[tuple], oca: str = "", entry_oca: bool = False) -> None:
        self.legs = legs
        self.oca = oca
        self.entry_oca = entry_oca  # the entry is in the OCA group too (a resting order)

    def describe(self) -> str:
        parts = [f"{role} {action} {qty:g} {otype}" + (f" @ {price:.2f}" if price else "")
                 + f" [{ref}]" for role, action, qty, otype, price, ref in self.legs]
        return "; ".join(parts) + (f" (OCA {self.oca})" if self.oca else "")


def plan_orders(spec: ContractSpec, is_buy: bool, size: float, ref: str, entry_type: str = "MKT",
                entry_price: float | None = None, stop: float | None = None,
                target: float | None = None, oca: str = "") -> OrderPlan:
    """The :class:`OrderPlan` of an entry with an optional bracket (prices snapped with
    :func:`bracket_prices`). ``size`` must be a whole number of contracts > 0. A resting
    (stop or limit) order without a bracket is in OCA group ``oca`` (def: one of its own).

    >>> from m2k_bt.contracts import M2K
    >>> plan_orders(M2K, False, 1, "m2k-1", "STP", 1995.04, oca="m2k-0-OCA").describe()
    'entry SELL 1 STP @ 1995.00 [m2k-1] (OCA m2k-0-OCA)'
    """
    if size <= 0 or size != int(size):
        raise ParameterError(f"IB orders need a whole number of contracts > 0, got {size!r}")
    action, other = ("BUY", "SELL") if is_buy else ("SELL", "BUY")
    if entry_price is not None:
        entry_price = round_to_tick(entry_price, spec.tick_size)
    legs = [("entry", action, float(size), entry_type, entry_price, ref)]
    stop, target = bracket_prices(spec, is_buy, stop, target)
    if stop is not None:
        legs.append(("stop", other, float(size), "STP", stop, f"{ref}-S"))
    if target is not None:
        legs.append(("target", other, float(size), "LMT", target, f"{ref}-T"))
    if len(legs) == 1 and entry_type != "MKT":
        return OrderPlan(legs, oca=oca or f"{ref}-OCA", entry_oca=True)
    return OrderPlan(legs, oca=f"{ref}-OCA" if len(legs) > 1 else "")


def ib_orders(plan: OrderPlan, first_id: int, account: str = "") -> list:
    """The ``ib_async`` orders of ``plan``, with order ids from ``first_id`` on: children carry
    the parent's id and the OCA group (type 1: cancel the others on a fill); only the last
    order transmits, so IB receives the bracket whole."""
    ib_async = require_ib_async()
    out = []
    for i, (role, action, qty, otype, price, ref) in enumerate(plan.legs):
        o = ib_async.Order(orderId=first_id + i, action=action, totalQuantity=qty,
                           orderType=otype, orderRef=ref, account=account, tif="GTC",
                           transmit=i == len(plan.legs) - 1)
        if otype == "LMT":
            o.lmtPrice = price
        elif otype == "STP":
            o.auxPrice = price
        if role != "entry":
            o.parentId = first_id
        if role != "entry" or plan.entry_oca:
            o.ocaGroup = plan.oca
            o.ocaType = 1
        out.append(o)
    return out
