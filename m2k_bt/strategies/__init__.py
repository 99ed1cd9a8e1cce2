"""The M2K strategies: the M2KStrategy base and the built-in rules."""

from .base import (
    M2KStrategy,
    SmaCrossover,
    BollingerReversion,
    AdaptiveBollinger,
    STRATEGIES,
    resolve_strategy,
    strategy_params,
    EXIT_REASONS,
)

__all__ = [
    "M2KStrategy",
    "SmaCrossover",
    "BollingerReversion",
    "AdaptiveBollinger",
    "STRATEGIES",
    "resolve_strategy",
    "strategy_params",
    "EXIT_REASONS",
]
