"""The M2K strategies: the M2KStrategy base and the built-in rules.

- :mod:`.base`: :class:`M2KStrategy`, direction trading with risk control and a trade log.
- :mod:`.sma`: :class:`SmaCrossover`; :mod:`.bands`: :class:`BollingerReversion`,
  :class:`AdaptiveBollinger`.
- :mod:`.registry`: :data:`STRATEGIES` by command-line name, :func:`resolve_strategy`,
  :func:`strategy_params`.
"""

from .bands import AdaptiveBollinger, BollingerReversion
from .base import EXIT_REASONS, M2KStrategy
from .registry import STRATEGIES, resolve_strategy, strategy_params
from .sma import SmaCrossover

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
