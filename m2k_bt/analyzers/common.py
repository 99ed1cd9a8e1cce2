"""Small helpers every analyzer of this package uses: rounding, safe division, tick values.

They are public because the compiled engine (:mod:`m2k_bt.kernel`) builds the same analyzer
outputs from its own sums and must round and divide exactly as the analyzers do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..contracts import M2K

__all__ = [
    "ROUND_DECIMALS",
    "rounded",
    "ratio",
    "mean_or_none",
    "tick_size_and_value",
    "event_dict",
]

#: Decimals kept on $ and price outputs, to drop float noise like 0.30000000000000004.
ROUND_DECIMALS = 10


def rounded(x: float | None, nd: int = ROUND_DECIMALS) -> float | None:
    """``x`` as a float rounded to ``nd`` decimals; None stays None.

    >>> rounded(0.1 + 0.2), rounded(None), rounded(2.123456789, 6)
    (0.3, None, 2.123457)
    """
    return None if x is None else round(float(x), nd)


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is None or ``b`` is 0 (an undefined figure is None,
    never ``inf`` or ``NaN``).

    >>> ratio(3, 4), ratio(1, 0), ratio(None, 2)
    (0.75, None, None)
    """
    if a is None or b is None or b == 0:
        return None
    return a / b


def mean_or_none(xs: Sequence[float]) -> float | None:
    """The arithmetic mean of ``xs``; None when it is empty.

    >>> mean_or_none([1.0, 2.0, 6.0]), mean_or_none([])
    (3.0, None)
    """
    return sum(xs) / len(xs) if xs else None


def tick_size_and_value(comminfo, tick_size: float | None) -> tuple[float, float]:
    """(tick size in points, $ per tick per contract) for a commission scheme.

    ``tick_size`` None reads the scheme's ``tick_size`` param (``M2KCommInfo``), else M2K's
    0.10 points; the dollar value is tick size x the scheme's ``mult`` (1 when it has none).
    """
    if tick_size is None:
        tick_size = getattr(comminfo.p, "tick_size", None) or M2K.tick_size
    mult = float(getattr(comminfo.p, "mult", 1.0) or 1.0)
    return float(tick_size), round(float(tick_size) * mult, 10)


def event_dict(event: Any) -> dict[str, Any]:
    """A broker event or sizer decision as a plain dict: a dataclass's fields (deep, as
    ``dataclasses.asdict``), a copy of a dict, anything else as ``{"event": str(event)}``."""
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return dataclasses.asdict(event)
    if isinstance(event, dict):
        return dict(event)
    return {"event": str(event)}
