"""The M2K strategies: the M2KStrategy base and the built-in rules.

- :mod:`.base`: :class:`M2KStrategy`, direction trading with risk control and a trade log.
- :mod:`.sma`: :class:`SmaCrossover`; :mod:`.bands`: :class:`BollingerReversion`,
  :class:`AdaptiveBollinger`.
- :mod:`.signals`: :class:`SignalStrategy`, :func:`signal_strategy` (a vectorised function as a
  strategy), :func:`check_lookahead`; :mod:`.vectorised`: the built-in rules as signals.
- :mod:`.registry`: :data:`STRATEGIES` by command-line name, :func:`resolve_strategy`,
  :func:`strategy_params`.
"""

from .bands import AdaptiveBollinger, BollingerReversion
from .base import EXIT_REASONS, M2KStrategy
from .registry import STRATEGIES, load_strategy, resolve_strategy, strategy_params
from .signals import (
    Signals,
    SignalStrategy,
    bt_indicator,
    check_lookahead,
    compute_signals,
    signal_strategy,
)
from .sma import SmaCrossover
from .vectorised import AdaptiveSignal, BollingerSignal, SmaSignal

__all__ = [
    "M2KStrategy",
    "SmaCrossover",
    "BollingerReversion",
    "AdaptiveBollinger",
    "STRATEGIES",
    "resolve_strategy",
    "strategy_params",
    "EXIT_REASONS",
    "load_strategy",
    "SignalStrategy",
    "Signals",
    "signal_strategy",
    "compute_signals",
    "check_lookahead",
    "bt_indicator",
    "SmaSignal",
    "BollingerSignal",
    "AdaptiveSignal",
]
