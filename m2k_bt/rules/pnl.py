"""Money from price moves: P&L and the futures' daily cash adjustment, how a fill splits into
the part that closes and the part that opens a position, and a paper trade's net result.

:class:`~m2k_bt.brokers.commission.M2KCommInfo` answers backtrader's ``profitandloss`` and
``cashadjust`` with :func:`pnl`; the compiled loop marks to market and books fills with it.

>>> pnl(2, 2000.0, 2010.5, 5.0)   # 2 contracts x 10.5 pts x $5
105.0
>>> open_close(3, -5)             # long 3, sell 5: 3 close, 2 open short
(-2, -3)
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["pnl", "open_close", "sign", "average_price", "trade_gross_cents", "average_fill",
           "paper_trade_net"]


@njit(cache=True)
def pnl(contracts, price, new_price, mult):
    """Dollars gained by ``contracts`` (signed) when the price moves from ``price`` to
    ``new_price``, at ``mult`` dollars per point: contracts x (new - old) x mult."""
    return contracts * (new_price - price) * mult


@njit(cache=True)
def open_close(position, size):
    """How an order of ``size`` (signed) meets a ``position`` (signed):
    ``(opened, closed)``, both signed like the order (backtrader's ``Position.update``)."""
    new = position + size
    if new == 0:
        return 0, size
    if position == 0:
        return size, 0
    if position > 0:
        if size > 0:
            return size, 0
        if new > 0:
            return 0, size
        return new, -position
    if size < 0:
        return size, 0
    if new < 0:
        return 0, size
    return new, -position


@njit(cache=True)
def sign(x):
    """1, -1 or 0."""
    if x > 0:
        return 1
    if x < 0:
        return -1
    return 0


@njit(cache=True)
def average_price(position, price, executed, fill):
    """The position's average price after ``executed`` contracts (signed) fill at ``fill``:
    0 when flat, the fill when the position opens or reverses, the weighted average when it
    grows, unchanged when it shrinks (backtrader's ``Position.update``)."""
    new = position + executed
    if new == 0:
        return 0.0
    if position == 0 or sign(position) != sign(new):
        return fill
    if sign(executed) == sign(position):
        return (price * position + executed * fill) / new
    return price


@njit(cache=True)
def trade_gross_cents(direction, entry_units, exit_units):
    """A closed trade's gross P&L in cents: ``entry_units`` and ``exit_units`` are the sums of
    its fills' prices in cents of contract value (:func:`~m2k_bt.rules.prices.to_units`) times
    their contracts. Under average-cost accounting the realised P&L of a trade that ends flat is
    exit value - entry value, however it was scaled in and out.

    >>> trade_gross_cents(1, 2 * 1_000_000, 2 * 1_005_250)   # 2 x 10.5 pts x $5 = $105.00
    10500
    """
    return direction * (exit_units - entry_units)


@njit(cache=True)
def average_fill(units, contracts, per_point):
    """The volume-weighted price of fills worth ``units`` cents of contract value in all, for
    ``contracts`` contracts: the double nearest to it."""
    return units / (contracts * per_point)


@njit(cache=True)
def paper_trade_net(entry, exit_, direction, per_point, per_side_cents, slip_cents):
    """Net cents of a one-contract paper trade: the move in cents of contract value
    (:func:`~m2k_bt.rules.prices.to_units`), less a commission of ``per_side_cents`` and
    ``slip_cents`` of slippage on each side.

    >>> paper_trade_net(2000.0, 2010.5, 1, 500.0, 62, 50)   # 5,250 - 2 x 62 - 2 x 50 c
    5026
    """
    gross = direction * (int(np.rint(exit_ * per_point)) - int(np.rint(entry * per_point)))
    return gross - (per_side_cents + per_side_cents) - 2 * slip_cents
