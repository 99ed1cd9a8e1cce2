"""Prices: the tick grid, slippage in ticks, and the fill price of each order type on a bar.

The compiled loop (:mod:`m2k_bt.kernel.loop`) fills its orders with these functions;
:class:`~m2k_bt.brokers.futures.FuturesBroker` slips backtrader's fills with :func:`slip_up`
and :func:`slip_down`. ``NaN`` means "no fill on this bar". Prices are index points.

Exact prices: a price is also an integer, the cents one contract is worth at it
(:func:`to_units`: price x multiplier x 100; ``per_point`` = multiplier x 100 cents per point,
500 for M2K, so one 0.10 tick is 50). Slippage is a whole number of these cents
(:func:`slip_cents`), a slipped fill is computed on them and read back as the double nearest
to its exact price (:func:`from_units`): 1824.2 slipped down one tick is 1824.1, not
1824.1000000000001. A price off the cent grid (data off any tick grid, ``--contract none``) is
snapped to the nearest cent of contract value when it is slipped or booked.

>>> slip_up(2000.0, 2000.5, slip_cents(2, 0.1, 500.0), 500.0)   # 2 ticks x 50 c = 0.2 pts up
2000.2
>>> fill_limit(True, 1999.5, 2000.0, 2001.0, 1999.0)  # the low reached the buy limit
1999.5
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["MARKET", "STOP", "LIMIT", "tick_price", "to_units", "from_units", "slip_cents",
           "slip_up", "slip_down",
           "fill_market", "fill_stop", "fill_limit", "fill_price", "reference_price"]

#: Order types, as the kernel codes them.
MARKET, STOP, LIMIT = 0, 1, 2


@njit(cache=True)
def tick_price(n, tick, p10):
    """The price of ``n`` whole ticks: ``n`` x ``tick`` rounded to ``p10`` (10 ** decimals),
    the double :func:`~m2k_bt.contracts.round_to_tick` gives for the same multiple."""
    return np.rint(n * tick * p10) / p10


@njit(cache=True)
def to_units(price, per_point):
    """``price`` as the whole number of cents one contract is worth at it (``per_point``:
    multiplier x 100), nearest, half to even."""
    return int(np.rint(price * per_point))


@njit(cache=True)
def from_units(units, per_point):
    """The price of ``units`` cents of contract value: the double nearest to it."""
    return units / per_point


@njit(cache=True)
def slip_cents(ticks, tick, per_point):
    """Slippage of ``ticks`` ticks of size ``tick`` in cents of contract value (0 for none);
    ``ticks`` x ``tick`` x ``per_point`` must be whole (checked by the plan)."""
    return int(np.rint(ticks * tick * per_point)) if ticks else 0


@njit(cache=True)
def slip_up(price, high, slip, per_point):
    """A buy's fill: ``price`` plus ``slip`` cents of contract value (:func:`slip_cents`),
    never above the bar's ``high`` (nor below ``price`` itself when the high is below it);
    computed in integers (:func:`to_units`)."""
    if not slip:
        return price
    p = to_units(price, per_point)
    return from_units(min(p + slip, max(to_units(high, per_point), p)), per_point)


@njit(cache=True)
def slip_down(price, low, slip, per_point):
    """A sell's fill: ``price`` minus ``slip`` cents of contract value, never below the bar's
    ``low``; in integers."""
    if not slip:
        return price
    p = to_units(price, per_point)
    return from_units(max(p - slip, min(to_units(low, per_point), p)), per_point)


@njit(cache=True)
def fill_market(buy, open_, high, low, slip, per_point):
    """A market order fills at the open, slipped against the trader."""
    if buy:
        return slip_up(open_, high, slip, per_point)
    return slip_down(open_, low, slip, per_point)


@njit(cache=True)
def fill_stop(buy, stop, open_, high, low, slip, per_point):
    """A stop fills at the open when the bar gaps through it, else at the stop when the bar
    reaches it; slipped. ``NaN``: not triggered."""
    if buy:
        if open_ >= stop:
            return slip_up(open_, high, slip, per_point)
        if high >= stop:
            return slip_up(stop, high, slip, per_point)
    else:
        if open_ <= stop:
            return slip_down(open_, low, slip, per_point)
        if low <= stop:
            return slip_down(stop, low, slip, per_point)
    return np.nan


@njit(cache=True)
def fill_limit(buy, limit, open_, high, low):
    """A limit fills at the open when the bar opens through it, else at the limit when the bar
    reaches it; never slipped. ``NaN``: not reached."""
    if buy:
        if limit >= open_:
            return open_
        if limit >= low:
            return limit
    else:
        if limit <= open_:
            return open_
        if limit <= high:
            return limit
    return np.nan


@njit(cache=True)
def fill_price(order_type, buy, price, open_, high, low, slip, per_point):
    """The fill of an order of ``order_type`` (:data:`MARKET`, :data:`STOP`, :data:`LIMIT`) with
    stop or limit ``price`` on this bar; ``NaN`` when it does not fill."""
    if order_type == MARKET:
        return fill_market(buy, open_, high, low, slip, per_point)
    if order_type == STOP:
        return fill_stop(buy, price, open_, high, low, slip, per_point)
    return fill_limit(buy, price, open_, high, low)


@njit(cache=True)
def reference_price(order_type, buy, price, open_):
    """The fill the same order would get with no slippage (the cost analysis' reference): the
    open for a market order, max(open, stop) for a buy stop, min(open, limit) for a buy limit,
    and the other way round for sells."""
    if order_type == MARKET:
        return open_
    if order_type == STOP:
        return max(open_, price) if buy else min(open_, price)
    return min(open_, price) if buy else max(open_, price)
