"""Limits that stop trading and flatten: a maximum position, a maximum daily loss, a maximum
number of orders per minute. :class:`Limits` holds the settings; :class:`LimitGuard` answers,
for one order or one mark of the account, which limit (if any) is broken. The broker then
halts: it cancels its open orders, closes the position at market, and refuses every order after.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..errors import ParameterError

__all__ = ["Limits", "LimitGuard"]


@dataclass(frozen=True)
class Limits:
    """- ``max_position`` (def: ``None``): most contracts held either way; ``None``: no limit.
    - ``max_daily_loss`` (def: ``None``): dollars, realised plus open, since the CME trade
      date began (18:00 New York); ``None``: no limit.
    - ``max_orders_per_minute`` (def: ``None``): orders sent to IB in any 60 seconds (a
      bracket counts its legs); ``None``: no limit.
    """

    max_position: int | None = None
    max_daily_loss: float | None = None
    max_orders_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_position", "max_orders_per_minute"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ParameterError(f"{name} must be a whole number >= 1 or None, got {v!r}")
        v = self.max_daily_loss
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ParameterError(f"max_daily_loss must be dollars > 0 or None, got {v!r}")


class LimitGuard:
    """Checks :class:`Limits`; ``now`` arguments are seconds (``time.monotonic()``).

    >>> g = LimitGuard(Limits(max_position=2, max_orders_per_minute=2))
    >>> g.check_order(position_after=3, legs=1, now=0.0)
    'max position: 3 contracts after the order, limit 2'
    >>> g.record_sent(2, now=0.0); g.check_order(position_after=1, legs=1, now=30.0)
    'max orders per minute: 3 in 60 s, limit 2'
    >>> g.check_order(position_after=1, legs=1, now=61.0) is None
    True
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._sent: deque[float] = deque()

    def _recent(self, now: float) -> int:
        while self._sent and now - self._sent[0] >= 60.0:
            self._sent.popleft()
        return len(self._sent)

    def check_order(self, position_after: float, legs: int, now: float) -> str | None:
        """The limit an order would break (``None``: none)."""
        lim = self.limits
        if lim.max_position is not None and abs(position_after) > lim.max_position:
            return (f"max position: {abs(position_after):g} contracts after the order, "
                    f"limit {lim.max_position}")
        if lim.max_orders_per_minute is not None:
            n = self._recent(now) + legs
            if n > lim.max_orders_per_minute:
                return f"max orders per minute: {n} in 60 s, limit {lim.max_orders_per_minute}"
        return None

    def record_sent(self, legs: int, now: float) -> None:
        self._sent.extend([now] * legs)

    def check_loss(self, day_pnl: float) -> str | None:
        """The daily loss limit, given the trade date's realised + open profit in dollars.

        >>> LimitGuard(Limits(max_daily_loss=100)).check_loss(-100.5)
        'max daily loss: $-100.50 today, limit $100.00'
        """
        lim = self.limits.max_daily_loss
        if lim is not None and day_pnl <= -lim:
            return f"max daily loss: ${day_pnl:,.2f} today, limit ${lim:,.2f}"
        return None
