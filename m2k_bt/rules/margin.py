"""Margin: what a position holds and must keep, the margin call, and the intraday cut-back.

Futures hold a fixed dollar margin per contract. The initial margin is held while a position
is open (and must fit in cash for an order to be accepted); equity below the maintenance
requirement is a margin call. With an intraday margin, the lower figure applies inside the
intraday window; when the window closes, a position larger than equity supports at the
overnight initial margin is cut back.

:class:`~m2k_bt.brokers.commission.M2KCommInfo` (``get_margin``, ``getoperationcost``, ...) and
:class:`~m2k_bt.brokers.futures.FuturesBroker` (maintenance check, margin call, regime switch,
cut-back) call these, and so does the compiled loop. Dollars throughout.

>>> requirement(-3, 700.0)            # 3 contracts x $700 maintenance
2100.0
>>> cutback_contracts(3, 2000.0, 770.0)   # $2,000 supports floor(2000 / 770) = 2: cut 1
1
"""

from __future__ import annotations

import datetime as _dt
import math

import numpy as np
from numba import njit

__all__ = ["day_fraction", "in_window", "regime_margin", "margin_held", "requirement",
           "margin_ok", "margin_call", "supported_contracts", "cutback_contracts", "rebase_cash",
           "free_cash"]


#: Added to a bar's fraction of the day before comparing it with the window's ends: 1e-7 day
#: (9 ms) absorbs the float noise of backtrader's float time.
WINDOW_EPSILON = 1e-7


def day_fraction(t: _dt.time) -> float:
    """A time of day as a fraction of the day, for :func:`in_window`.

    >>> day_fraction(_dt.time(9, 30))   # 34,200 s / 86,400 s
    0.3958333333333333
    """
    return (t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6) / 86400.0


@njit(cache=True)
def in_window(num, start, end):
    """True when backtrader's float time ``num`` falls in the intraday window
    ``[start, end)`` (fractions of the day, :func:`day_fraction`)."""
    frac = num % 1.0 + WINDOW_EPSILON
    return start <= frac < end


@njit(cache=True)
def regime_margin(intraday_active, overnight, intraday):
    """The margin per contract now: ``intraday`` inside the intraday window when there is one
    (``NaN``: none), else ``overnight`` (initial or maintenance)."""
    if intraday_active and not np.isnan(intraday):
        return intraday
    return overnight


@njit(cache=True)
def margin_held(contracts, each):
    """Dollars of margin ``contracts`` (signed or not) hold at ``each`` dollars per contract."""
    return abs(contracts) * each


@njit(cache=True)
def requirement(contracts, maintenance):
    """Maintenance requirement of a position: |contracts| x maintenance, 0 when flat."""
    return abs(contracts) * maintenance if contracts else 0.0


@njit(cache=True)
def margin_ok(equity, requirement):
    """True when equity meets the requirement and is not negative: nothing to do this bar."""
    return equity >= requirement and equity >= 0


@njit(cache=True)
def margin_call(equity, requirement):
    """True when a position's equity is below its (non-zero) maintenance requirement."""
    return requirement != 0 and equity < requirement


@njit(cache=True)
def supported_contracts(equity, each):
    """Whole contracts ``equity`` supports at ``each`` dollars of margin per contract (0 for
    negative equity)."""
    return max(0, int(math.floor(max(equity, 0.0) / each)))


@njit(cache=True)
def cutback_contracts(position, equity, overnight):
    """Contracts to cut from ``position`` when the intraday window closes: what equity does not
    support at the ``overnight`` initial margin (0 when it does)."""
    allowed = supported_contracts(equity, overnight)
    if abs(position) <= allowed:
        return 0
    return abs(position) - allowed


@njit(cache=True)
def rebase_cash(cash, contracts, before, after):
    """Cash after the margin per contract changes from ``before`` to ``after``, so that equity
    (cash + margin held) stays the same."""
    return cash + (margin_held(contracts, before) - margin_held(contracts, after))


@njit(cache=True)
def free_cash(cash, position, buy, each):
    """Cash free for an entry's margin: a reversal (an entry against ``position``) first closes
    the position, which releases its margin (``each`` dollars per contract)."""
    if position and (position > 0) != buy:
        return cash + abs(position) * each
    return cash
