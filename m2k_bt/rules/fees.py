"""Fees: a fixed commission in dollars per contract per side.

:class:`~m2k_bt.brokers.commission.M2KCommInfo` charges it (``_getcommission``) and the
compiled loop charges it on every fill.

>>> commission(-2, 0.62)   # 2 contracts x $0.62, either side
1.24
"""

from __future__ import annotations

from numba import njit

__all__ = ["commission"]


@njit(cache=True)
def commission(contracts, per_side):
    """Dollars for ``contracts`` (signed or not) at ``per_side`` dollars per contract."""
    return abs(contracts) * per_side
