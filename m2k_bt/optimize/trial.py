"""One trial: a full backtest of one parameter set, scored on an objective.

A trial's outcome is a plain, picklable dict (what a worker process or a Dask task sends back):
the objective's value, or the reason the trial is infeasible, and the backtest's figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..engine import resolve
from ..engine import run_backtest as run_in_cerebro
from ..errors import ParameterError, interrupt_behind
from ..kernel import run_backtest_fast, run_figures_fast, run_figures_many, shared_bars
from .overfitting import daily_returns
from .space import parse_scalar, strategy_class
from .threads import one_blas_thread

__all__ = ["OBJECTIVES", "evaluate_params", "evaluate_batch"]

#: Objectives (keys of ``BacktestResult.metrics``) and their direction.
OBJECTIVES = {
    "sharpe": "maximize",
    "sortino": "maximize",
    "calmar": "maximize",
    "sqn": "maximize",
    "net_profit": "maximize",
    "return_pct": "maximize",
    "cagr": "maximize",
    "profit_factor": "maximize",
    "win_rate": "maximize",
    "expectancy": "maximize",
    "max_drawdown": "minimize",
    "max_drawdown_pct": "minimize",
}


def _equity_values(result) -> pd.Series:
    eq = getattr(result, "equity", None)
    if eq is not None and len(eq) and "value" in eq:
        return eq["value"]
    return pd.Series(dtype=float, index=pd.DatetimeIndex([]))


def evaluate_params(
    bars: pd.DataFrame,
    config,
    params: dict,
    objective: str = "sharpe",
    min_trades: int = 1,
    run_backtest: Callable | None = None,
) -> dict:
    """Run one trial; a plain, picklable dict (what a worker sends back):

    ``value`` (objective, or None), ``infeasible`` (reason or None) and ``attrs``: ``metrics``,
    ``start_value``, ``final_value``, ``first_dt``, ``last_dt``, ``elapsed`` (s) and
    ``returns`` (``{"YYYY-MM-DD": daily return}``). A study stores ``attrs`` in the trial's user
    attribute ``backtest`` and the reason in ``infeasible``.
    """
    merged, reason = _checked_params(config, params)
    if reason is not None:
        return {"value": None, "infeasible": reason, "attrs": {}}
    if run_backtest is None:
        run_backtest = run_in_cerebro
    t0 = time.perf_counter()
    trial_config = dataclasses.replace(config, params=merged, analyzers=False)
    figures = None
    with _interruptible():
        if run_backtest is run_backtest_fast:  # the kernel's figures, no result object
            figures = run_figures_fast(bars, _trial_plan(config, merged))
        if figures is None:
            result = run_backtest(bars, trial_config)
    elapsed = time.perf_counter() - t0
    if figures is not None:
        return _outcome(_figure_attrs(figures, elapsed), objective, min_trades)
    rets = daily_returns(_equity_values(result), result.start_value)
    attrs = {
        "metrics": {k: _plain_number(v) for k, v in (result.metrics or {}).items()},
        "start_value": float(result.start_value),
        "final_value": float(result.final_value),
        "first_dt": str(result.first_dt),
        "last_dt": str(result.last_dt),
        "elapsed": round(elapsed, 4),
        "returns": dict(zip(rets.index.strftime("%Y-%m-%d"),
                            rets.to_numpy(float).tolist())),
    }
    return _outcome(attrs, objective, min_trades)


def _checked_params(config, params: dict) -> tuple[dict, str | None]:
    """A trial's parameters over the study's fixed ones, and why they are infeasible (the
    strategy's own checks, ``fast < slow``) or None."""
    fixed = dict(getattr(config, "params", {}) or {})
    # command-line --param values arrive as text: compare numbers as numbers
    merged = {**{k: parse_scalar(v) if isinstance(v, str) else v for k, v in fixed.items()},
              **params}
    cls = strategy_class(getattr(config, "strategy", None))
    validate = getattr(cls, "validate_params", None)
    try:
        if validate is not None:
            validate(dict(merged))
        if "fast" in merged and "slow" in merged and merged["fast"] >= merged["slow"]:
            raise ParameterError(f"fast ({merged['fast']}) must be below slow ({merged['slow']})")
    except ParameterError as exc:
        return merged, f"constraint: {exc}"
    return merged, None


def _figure_attrs(figures: dict, elapsed: float) -> dict:
    """A trial's ``attrs`` from the kernel's figures (:func:`run_figures_fast`)."""
    return {
        "metrics": {k: _plain_number(v) for k, v in figures["metrics"].items()},
        "start_value": figures["start_value"],
        "final_value": figures["final_value"],
        "first_dt": figures["first_dt"],
        "last_dt": figures["last_dt"],
        "elapsed": round(elapsed, 4),
        "returns": figures["returns"],
    }


def _outcome(attrs: dict, objective: str, min_trades: int) -> dict:
    """The outcome of a trial with ``attrs``: its objective's value, or why it is infeasible
    (too few trades, an undefined objective)."""
    metrics = attrs["metrics"]
    value = metrics.get(objective)
    trades = metrics.get("trades") or 0
    reason = None
    if trades < min_trades:
        reason = f"min_trades: {trades} trades < {min_trades}"
    elif value is None or not math.isfinite(value):
        reason = f"objective {objective} undefined ({value})"
    return {"value": None if reason else float(value), "infeasible": reason, "attrs": attrs}


#: The plan of the study's configuration, resolved once: ``[copy of the config, its plan]``.
_BASE_PLAN: list = [None, None]


def _trial_plan(config, params: dict):
    """The plan of ``config`` with ``params`` (no analyzers): the study's configuration is
    resolved once (while it stays equal), each trial only swaps its strategy parameters
    (:meth:`m2k_bt.engine.plan.Plan.with_params`, which checks them again)."""
    held, base = _BASE_PLAN
    if held is None or held != config:
        base = resolve(dataclasses.replace(config, analyzers=False))
        _BASE_PLAN[:] = [dataclasses.replace(config), base]
    return base.with_params(params)


@contextlib.contextmanager
def _signals_kept():
    """Within the block, a Ctrl-C (or SIGTERM) that lands in a callback from C code (numba
    compiling the kernel calls llvmlite's ``_raw_object_cache_notify`` through ctypes) is not
    lost: Python can only report it there ("Exception ignored on calling ctypes callback
    function ... KeyboardInterrupt") and carries on; it is raised when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; the hook is the process's: left alone
        return
    caught: list[BaseException] = []
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, BaseException) and not isinstance(exc, Exception):
            caught.append(exc)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
    if caught:
        raise caught[0].with_traceback(None)


@contextlib.contextmanager
def _interruptible():
    """A trial's backtest: :func:`_signals_kept`, and a Ctrl-C (or SIGTERM) that numba's
    compiled code reports as a ``SystemError`` raised as the interrupt itself
    (:func:`m2k_bt.errors.interrupt_behind`)."""
    try:
        with _signals_kept():
            yield
    except SystemError as exc:
        stop = interrupt_behind(exc)
        if stop is None:
            raise
        raise stop from None


def evaluate_batch(
    bars: pd.DataFrame,
    config,
    params_list: Sequence[dict],
    objective: str = "sharpe",
    min_trades: int = 1,
    run_backtest: Callable | None = None,
) -> list[dict]:
    """:func:`evaluate_params` for each of ``params_list``, in this process: one Dask task
    (or one claim of a worker) runs a whole batch. In the kernel, the batch's backtests run
    in one compiled call (:func:`m2k_bt.kernel.run_figures_many`) and share the kernel's
    indicators; the outcomes are :func:`evaluate_params`' exactly, except ``elapsed``: the
    block's time shared equally by its runs. Elsewhere (cerebro), one trial after another."""
    with one_blas_thread(), shared_bars(bars):  # a Dask worker's cores are its processes'
        if run_backtest is not run_backtest_fast or len(params_list) < 2:
            return [evaluate_params(bars, config, p, objective, min_trades, run_backtest)
                    for p in params_list]
        out: list = [None] * len(params_list)
        todo, plans = [], []
        for i, params in enumerate(params_list):
            merged, reason = _checked_params(config, params)
            if reason is not None:
                out[i] = {"value": None, "infeasible": reason, "attrs": {}}
            else:
                todo.append(i)
                plans.append(_trial_plan(config, merged))
        with _interruptible():
            figures = run_figures_many(bars, plans) if plans else []
        for i, fig in zip(todo, figures):
            out[i] = (_outcome(_figure_attrs(fig, fig["elapsed"]), objective, min_trades)
                      if fig is not None else  # not modelled, or diverged: as one trial
                      evaluate_params(bars, config, params_list[i], objective, min_trades,
                                      run_backtest))
        return out


def _plain_number(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
