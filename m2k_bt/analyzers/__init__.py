"""backtrader analyzers: trades, costs, margin exposure, Kelly decisions, returns and risk, equity."""

from .standard import (
    ANALYZER_NAMES,
    METRIC_KEYS,
    MINIMAL_ANALYZER_NAMES,
    TRADING_DAYS_PER_YEAR,
    CostAnalyzer,
    EquityCurve,
    KellyLog,
    MarginExposure,
    ReturnsRisk,
    TradeStats,
    add_analyzers,
    equity_frame,
    metrics_from,
    periods_per_year,
    returns_statistics,
    trade_statistics,
)

__all__ = [
    "TRADING_DAYS_PER_YEAR",
    "ANALYZER_NAMES",
    "MINIMAL_ANALYZER_NAMES",
    "METRIC_KEYS",
    "TradeStats",
    "CostAnalyzer",
    "MarginExposure",
    "KellyLog",
    "ReturnsRisk",
    "EquityCurve",
    "add_analyzers",
    "metrics_from",
    "periods_per_year",
    "equity_frame",
    "trade_statistics",
    "returns_statistics",
]
