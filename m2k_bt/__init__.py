"""m2k_bt: a Backtrader plugin pack for CME Micro E-mini Russell 2000 futures (M2K).

This module only re-exports; importing it changes nothing in backtrader. The research packages
(``m2k_bt.optimize``: studies, walk-forward, overfitting statistics; ``m2k_bt.kernel``: the compiled
engine) are imported from their packages; ``m2k_bt.optimize`` needs the ``optimize`` extra.
"""

from . import (
    analyzers,
    brokers,
    contracts,
    engine,
    errors,
    feeds,
    indicators,
    report,
    sessions,
    sizers,
    strategies,
)
from .analyzers import (
    CostAnalyzer,
    EquityCurve,
    KellyLog,
    MarginExposure,
    ReturnsRisk,
    TradeStats,
    add_analyzers,
    metrics_from,
)

# The flat module names of 0.1, kept so that existing scripts go on working.
from .brokers import FuturesBroker, M2KCommInfo, MarginEvent, commission
from .brokers import futures as broker
from .contracts import (
    M2K,
    RTY,
    ContractMonth,
    ContractSpec,
    contract_symbol,
    expiry_date,
    front_contract,
    parse_symbol,
    roll_date,
)
from .engine import BacktestConfig, BacktestResult, run_backtest
from .errors import (
    ConfigError,
    ContractSpecError,
    DataFeedError,
    M2KError,
    OutputError,
    ParameterError,
)
from .feeds import (
    BarsFeed,
    EventCalendar,
    QueueFeed,
    ReplaySource,
    Signal,
    SignalFeed,
    align_signal,
    build_continuous,
    calendar_checkdate,
    continuous,
    events,
    live,
    load_bars,
    load_calendar,
    load_signal,
    read_events_csv,
    resample_bars,
    signal_feed,
    validate_bars,
    volume_checkcondition,
)
from .feeds import external as signals
from .indicators import AdaptiveBollingerBands, BollingerBandsDdof, FibonacciLevels
from .report import build_report, format_summary, write_outputs
from .sizers import FixedContracts, KellyDecision, KellySizer, kelly_fraction
from .strategies import (
    STRATEGIES,
    AdaptiveBollinger,
    BollingerReversion,
    M2KStrategy,
    SmaCrossover,
)

__version__ = "0.1.0"

__all__ = [
    # modules
    "analyzers",
    "brokers",
    "broker",
    "commission",
    "continuous",
    "contracts",
    "engine",
    "errors",
    "events",
    "feeds",
    "indicators",
    "live",
    "report",
    "sessions",
    "signals",
    "sizers",
    "strategies",
    # contract facts
    "ContractSpec",
    "ContractMonth",
    "M2K",
    "RTY",
    "contract_symbol",
    "expiry_date",
    "front_contract",
    "parse_symbol",
    "roll_date",
    # commission, margin, broker
    "M2KCommInfo",
    "FuturesBroker",
    "MarginEvent",
    # data
    "load_bars",
    "validate_bars",
    "resample_bars",
    "BarsFeed",
    "build_continuous",
    "calendar_checkdate",
    "volume_checkcondition",
    "QueueFeed",
    "ReplaySource",
    # events and signals
    "EventCalendar",
    "load_calendar",
    "read_events_csv",
    "Signal",
    "SignalFeed",
    "align_signal",
    "load_signal",
    "signal_feed",
    # strategies, indicators, sizers
    "M2KStrategy",
    "SmaCrossover",
    "BollingerReversion",
    "AdaptiveBollinger",
    "STRATEGIES",
    "BollingerBandsDdof",
    "AdaptiveBollingerBands",
    "FibonacciLevels",
    "KellySizer",
    "KellyDecision",
    "FixedContracts",
    "kelly_fraction",
    # analyzers and reports
    "TradeStats",
    "CostAnalyzer",
    "MarginExposure",
    "KellyLog",
    "ReturnsRisk",
    "EquityCurve",
    "add_analyzers",
    "metrics_from",
    "build_report",
    "format_summary",
    "write_outputs",
    # running
    "BacktestConfig",
    "BacktestResult",
    "run_backtest",
    # errors
    "M2KError",
    "ContractSpecError",
    "DataFeedError",
    "ParameterError",
    "ConfigError",
    "OutputError",
]
