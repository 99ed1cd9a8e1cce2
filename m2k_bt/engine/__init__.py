"""Running a configuration: the config, the plan both engines take, cerebro's wiring and the
result.

``config`` (:class:`BacktestConfig` and its checks) -> ``plan`` (:func:`resolve`: one
resolution into a :class:`Plan`) -> ``cerebro`` (:func:`run_backtest`) or the kernel
(:mod:`m2k_bt.kernel`) -> ``result`` (:class:`BacktestResult`, made by :func:`make_result`).
"""

from ..strategies.registry import resolve_strategy
from .cerebro import build_cerebro, check_enough_bars, min_bars, run_backtest
from .config import SIZERS, BacktestConfig, check_config, check_money, coerce
from .plan import (
    RUN_FIELDS,
    Plan,
    choose_sizer,
    comminfo_for,
    event_signal_params,
    resolve,
    select_bars,
    strategy_params,
)
from .result import (
    BacktestResult,
    KernelExtras,
    collect_analysis,
    collect_warnings,
    equity_from,
    make_result,
    plain,
    warning_lines,
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
    "comminfo_for",
    "event_signal_params",
    "check_config",
    "check_money",
    "coerce",
    "check_enough_bars",
    "Plan",
    "RUN_FIELDS",
    "resolve",
    "choose_sizer",
    "strategy_params",
    "KernelExtras",
    "make_result",
    "warning_lines",
]
