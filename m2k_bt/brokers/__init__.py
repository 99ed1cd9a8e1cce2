"""backtrader broker and commission plug-ins for futures: M2KCommInfo and FuturesBroker."""

from .commission import (
    M2KCommInfo,
    slippage_points,
)
from .futures import (
    FuturesBroker,
    MarginEvent,
)

__all__ = [
    "M2KCommInfo",
    "slippage_points",
    "FuturesBroker",
    "MarginEvent",
]
