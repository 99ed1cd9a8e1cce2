"""backtrader sizers: KellySizer and FixedContracts."""

from .kelly import (
    kelly_fraction,
    signal_trades,
    FixedContracts,
    KellySizer,
    KellyDecision,
    BINDINGS,
)

__all__ = [
    "kelly_fraction",
    "signal_trades",
    "FixedContracts",
    "KellySizer",
    "KellyDecision",
    "BINDINGS",
]
