"""Running a configuration: the plan both engines take, cerebro's wiring and the result."""

from .cerebro import (
    SIZERS,
    BacktestConfig,
    BacktestResult,
    build_cerebro,
    collect_analysis,
    collect_warnings,
    equity_from,
    min_bars,
    plain,
    resolve_strategy,
    run_backtest,
    select_bars,
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
