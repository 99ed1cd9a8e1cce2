"""Prices: the tick grid, slippage in ticks, and the fill price of each order type on a bar.

The compiled loop (:mod:`m2k_bt.kernel.loop`) fills its orders with these functions;
:class:`~m2k_bt.brokers.futures.FuturesBroker` slips backtrader's fills with :func:`slip_up`
and :func:`slip_down`. ``NaN`` means "no fill on this bar". Prices are index points.

>>> slip_up(2000.0, 2000.5, slip_distance(2, 0.1))   # 2 ticks x 0.1 = 0.2 pts above the open
2000.2
>>> fill_limit(True, 1999.5, 2000.0, 2001.0, 1999.0)  # the low reached the buy limit
1999.5
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["MARKET", "STOP", "LIMIT", "tick_price", "slip_distance", "slip_up", "slip_down",
           "fill_market", "fill_stop", "fill_limit", "fill_price", "reference_price"]

#: Order types, as the kernel codes them.
MARKET, STOP, LIMIT = 0, 1, 2


@njit(cache=True)
def tick_price(n, tick, p10):
    """The price of ``n`` whole ticks: ``n`` x ``tick`` rounded to ``p10`` (10 ** decimals),
    the double :func:`~m2k_bt.contracts.round_to_tick` gives for the same multiple."""
    return np.rint(n * tick * p10) / p10


@njit(cache=True)
def slip_distance(ticks, tick):
    """Slippage of ``ticks`` ticks of size ``tick``, in points (0 when ``ticks`` is 0)."""
    return ticks * tick if ticks else 0.0


@njit(cache=True)
def slip_up(price, high, slip):
    """A buy's fill: ``price`` plus ``slip`` points, never above the bar's ``high`` (nor below
    ``price`` itself when the high is below it)."""
    if not slip:
        return price
    return min(price + slip, max(high, price))


@njit(cache=True)
def slip_down(price, low, slip):
    """A sell's fill: ``price`` minus ``slip`` points, never below the bar's ``low``."""
    if not slip:
        return price
    return max(price - slip, min(low, price))


@njit(cache=True)
def fill_market(buy, open_, high, low, slip):
    """A market order fills at the open, slipped against the trader."""
    if buy:
        return slip_up(open_, high, slip)
    return slip_down(open_, low, slip)


@njit(cache=True)
def fill_stop(buy, stop, open_, high, low, slip):
    """A stop fills at the open when the bar gaps through it, else at the stop when the bar
    reaches it; slipped. ``NaN``: not triggered."""
    if buy:
        if open_ >= stop:
            return slip_up(open_, high, slip)
        if high >= stop:
            return slip_up(stop, high, slip)
    else:
        if open_ <= stop:
            return slip_down(open_, low, slip)
        if low <= stop:
            return slip_down(stop, low, slip)
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
def fill_price(order_type, buy, price, open_, high, low, slip):
    """The fill of an order of ``order_type`` (:data:`MARKET`, :data:`STOP`, :data:`LIMIT`) with
    stop or limit ``price`` on this bar; ``NaN`` when it does not fill."""
    if order_type == MARKET:
        return fill_market(buy, open_, high, low, slip)
    if order_type == STOP:
        return fill_stop(buy, price, open_, high, low, slip)
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
