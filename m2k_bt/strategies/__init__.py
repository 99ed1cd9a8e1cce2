"""The M2K strategies: the M2KStrategy base and the built-in rules."""

from .base import (
    EXIT_REASONS,
    STRATEGIES,
    AdaptiveBollinger,
    BollingerReversion,
    M2KStrategy,
    SmaCrossover,
    resolve_strategy,
    strategy_params,
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
