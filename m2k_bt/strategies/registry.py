"""The built-in strategies by the names the command line uses, and their parameters."""

from __future__ import annotations

import backtrader as bt

from ..errors import ParameterError, did_you_mean
from .bands import AdaptiveBollinger, BollingerReversion
from .base import M2KStrategy
from .params import strategy_params
from .sma import SmaCrossover

__all__ = ["STRATEGIES", "resolve_strategy", "strategy_params"]


#: Strategy name (as the command line spells it) -> class.
STRATEGIES: dict[str, type[M2KStrategy]] = {
    "sma": SmaCrossover,
    "bollinger": BollingerReversion,
    "adaptive": AdaptiveBollinger,
}


def resolve_strategy(strategy) -> type:
    """The strategy class for a name of :data:`STRATEGIES` or a ``bt.Strategy`` subclass."""
    if isinstance(strategy, str):
        key = strategy.lower()
        if key not in STRATEGIES:
            raise ParameterError(
                f"unknown strategy '{strategy}'{did_you_mean(key, STRATEGIES)}; "
                f"known: {', '.join(sorted(STRATEGIES))} (see --list-strategies)"
            )
        return STRATEGIES[key]
    if isinstance(strategy, type) and issubclass(strategy, bt.Strategy):
        return strategy
    raise ParameterError(f"strategy must be a name or a bt.Strategy subclass, got {strategy!r}")
