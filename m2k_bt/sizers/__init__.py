"""backtrader sizers: KellySizer and FixedContracts."""

from .kelly import (
    BINDINGS,
    FixedContracts,
    KellyDecision,
    KellySizer,
    kelly_fraction,
    signal_trades,
)

__all__ = [
    "kelly_fraction",
    "signal_trades",
    "FixedContracts",
    "KellySizer",
    "KellyDecision",
    "BINDINGS",
]
