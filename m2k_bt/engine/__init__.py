"""Running a configuration: the plan both engines take, cerebro's wiring and the result."""

from .cerebro import (
    BacktestConfig,
    BacktestResult,
    SIZERS,
    build_cerebro,
    run_backtest,
    resolve_strategy,
    select_bars,
    min_bars,
    collect_analysis,
    collect_warnings,
    equity_from,
    plain,
)

__all__ = [
    "BacktestConfig",
    "BacktestResult",
    "SIZERS",
    "build_cerebro",
    "run_backtest",
    "resolve_strategy",
    "select_bars",
    "min_bars",
    "collect_analysis",
    "collect_warnings",
    "equity_from",
    "plain",
]
