"""Money as integers: cents for every amount, and the Kelly samples in hundredths of a cent.

Both engines book a fill, a trade's P&L and every decision that compares money on these
integers (:mod:`.prices` turns a price into the cents one contract is worth at it), so a
break-even trade is exactly 0 in both, whatever the float noise of the prices or of the
broker's cash. A dollar amount from a float (the broker's cash, equity, a commission) is
read with :func:`to_cents`: exact whenever the amount is a whole number of cents, as every
amount of a run is when its prices are on the cent grid (see :mod:`.prices`).

>>> to_cents(1824.1000000000001 * 5 - 9120.5)   # float noise of a zero P&L
0
>>> per_contract(100, 3)     # $1.00 over 3 contracts = 3,333.33 hundredths of a cent
3333
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["CENTS", "SAMPLE", "to_cents", "dollars", "per_contract"]

#: Cents per dollar.
CENTS = 100
#: Kelly sample units per cent: a trade's result per contract is kept in 1/100 cent.
SAMPLE = 100


@njit(cache=True)
def to_cents(dollars):
    """The whole number of cents nearest to ``dollars`` (half to even)."""
    return int(np.rint(dollars * 100.0))


@njit(cache=True)
def dollars(cents):
    """Dollars of ``cents``: the double nearest to cents / 100 (so 1824.1 reads 1824.1)."""
    return cents / 100.0


@njit(cache=True)
def per_contract(cents, contracts):
    """A trade's ``cents`` per contract in 1/100 cent (:data:`SAMPLE`), rounded half to even;
    integers only, the same in both engines."""
    num = cents * SAMPLE
    q = num // contracts
    r = num - q * contracts
    if 2 * r > contracts or (2 * r == contracts and q % 2 == 1):
        q += 1
    return q
