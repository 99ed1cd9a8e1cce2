"""A plan run in backtrader: cerebro wired with the pack's feed, broker, strategy, sizer and
analyzers.

The command line, the optimiser, walk-forward and the benchmarks all run backtests through
:func:`run_backtest`, so a trial in a study is exactly the backtest the runner would print.
Both take a :class:`~m2k_bt.engine.plan.Plan` or a :class:`~m2k_bt.engine.config.BacktestConfig`
(resolved on the way).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import backtrader as bt
import pandas as pd

from ..brokers.futures import FuturesBroker
from ..errors import M2KError, NotEnoughBarsError
from ..strategies.signals import probing
from .config import BacktestConfig
from .plan import Plan, resolve, select_bars
from .result import BacktestResult, collect_analysis, make_result

__all__ = ["build_cerebro", "run_backtest", "min_bars", "check_enough_bars"]


class _Progress(bt.Analyzer):
    """Calls ``callback(done, total)`` every ``every`` bars."""

    params = (("callback", None), ("total", 0), ("every", 500))

    def start(self):
        self._n = 0

    def next(self):
        self._n += 1
        if self._n % self.p.every == 0:
            self.p.callback(self._n, self.p.total)

    def stop(self):
        self.p.callback(self._n, self.p.total)

    def get_analysis(self):
        return {}


def build_cerebro(bars: pd.DataFrame | None, plan: Plan | BacktestConfig, progress=None,
                  feed=None):
    """A ready cerebro for ``plan`` (a config is resolved first); returns (cerebro, feed).

    The feed is ``BarsFeed(dataname=bars)`` (bars already selected), a ``SignalFeed`` when the
    plan has an external signal, or ``feed`` when given (a live ``QueueFeed``, say): everything
    else is the same, so a live run trades what a backtest tests."""
    from ..analyzers import add_analyzers
    from ..feeds.bars import BarsFeed

    plan = resolve(plan)
    config = plan.config
    cerebro = bt.Cerebro(runonce=config.runonce, preload=config.preload, stdstats=False)
    if feed is None:
        if plan.signal is not None:
            from ..feeds.external import SignalFeed

            feed = SignalFeed(dataname=bars, signal=plan.signal)
        else:
            feed = BarsFeed(dataname=bars)
    cerebro.adddata(feed, name=config.spec.root)
    cerebro.broker = FuturesBroker(cash=float(config.cash), slippage_ticks=config.slippage_ticks)
    # the broker switches the scheme's intraday margin on and off: each cerebro its own copy
    cerebro.broker.addcommissioninfo(copy.copy(plan.comminfo))
    cerebro.addstrategy(plan.strategy_cls, **plan.params)
    cerebro.addsizer(plan.sizer_cls, **plan.sizer_params)
    add_analyzers(cerebro, minimal=not config.analyzers)
    if plan.filtered:
        from ..feeds.events import EventActions

        cerebro.addanalyzer(EventActions, _name="events")
    if config.plot:
        cerebro.addobserver(bt.observers.BuySell, barplot=True, bardist=0.002)
        cerebro.addobserver(bt.observers.Value)
        if plan.filtered:
            from ..feeds.events import EventMarks

            cerebro.addobserver(EventMarks)
    if progress is not None:
        total = len(bars) if bars is not None else 0
        cerebro.addanalyzer(_Progress, _name="_progress", callback=progress, total=total)
    return cerebro, feed


def min_bars(bars: pd.DataFrame, plan: Plan | BacktestConfig) -> int:
    """Bars the strategy of ``plan`` needs before its indicators give a first value.

    This is backtrader's own minimum period of the strategy (the longest of its indicators'
    warm-up, e.g. ``slow`` for an SMA crossover, ``2 * adx_period`` with the ADX filter),
    measured by building the strategy on the first two of ``bars`` in backtrader's bar-by-bar
    mode, which accepts data shorter than the warm-up.
    """
    probe = resolve(plan).replace(runonce=False, preload=True, plot=False, analyzers=False)
    if "lookahead_check" in probe.params:  # two bars prove nothing and cost a check
        probe = dataclasses.replace(probe, params={**probe.params, "lookahead_check": False})
    cerebro, _ = build_cerebro(bars.iloc[:2], probe)
    with probing():  # a signal strategy computes no signal on these two bars
        strategy = cerebro.run()[0]
    return max(int(getattr(strategy, "_minperiod", 1)), 1)


def check_enough_bars(selected: pd.DataFrame, plan: Plan | BacktestConfig,
                      always: bool = False) -> None:
    """Raise :class:`~m2k_bt.errors.NotEnoughBarsError` when ``selected`` is shorter than the
    strategy's warm-up (:func:`min_bars`), naming the parameter that explains it.

    The probe is skipped (unless ``always``) when ``selected`` is longer than three times the
    plan's longest length parameter: indicators need at most about twice their length."""
    plan = resolve(plan)
    settings = {**dict(plan.strategy_cls.params._getitems()), **plan.params}
    lengths = {k: v for k, v in settings.items()
               if isinstance(v, int) and not isinstance(v, bool) and v > 1}
    if not always and len(selected) > 3 * max(lengths.values(), default=1) + 10:
        return
    need = min_bars(selected, plan)
    have = len(selected)
    if have >= need:
        return

    def fit(item):  # the parameter that explains the warm-up: need = k * value + c
        value = item[1]
        return (min(abs(need - (k * value + c)) for k in (1, 2) for c in (0, 1)), -value)

    culprit = min(lengths.items(), key=fit, default=None)
    what = (f"{culprit[0]}={culprit[1]}" if culprit is not None and fit(culprit)[0] <= 2
            else f"strategy {plan.strategy_cls.__name__}")
    span = ""
    if have:
        first, last = (f"{t:%Y-%m-%d %H:%M}" for t in (selected.index[0], selected.index[-1]))
        span = f" ({first} to {last})"
    fix = f"a smaller {culprit[0]}" if "=" in what else "another strategy setting"
    raise NotEnoughBarsError(
        f"need at least {need} bars for {what}, the selection has {have}{span}; "
        f"widen the date range (start/end) or choose {fix}",
        need=need, have=have,
    )


def run_backtest(
    bars: pd.DataFrame,
    config: BacktestConfig | Plan | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """Run one backtest of ``config`` (a :class:`BacktestConfig` or its
    :class:`~m2k_bt.engine.plan.Plan`) on ``bars``; every user mistake raises an ``M2KError``.
    """
    config = config or BacktestConfig()
    data_report = list(getattr(bars, "attrs", {}).get("report", []) or [])
    selected = select_bars(bars, config)
    plan = resolve(config)
    check_enough_bars(selected, plan)
    cerebro, feed = build_cerebro(selected, plan, progress)
    t0 = time.perf_counter()
    try:
        strategy = cerebro.run()[0]
    except (IndexError, ValueError) as exc:
        if isinstance(exc, M2KError):
            raise
        # a strategy whose parameters do not tell its indicators' lengths: measure, then say
        check_enough_bars(selected, plan, always=True)
        raise
    elapsed = time.perf_counter() - t0

    broker = cerebro.broker
    return make_result(
        plan.config,
        final_value=broker.getvalue(),
        bars=len(selected),
        first_dt=selected.index[0],
        last_dt=selected.index[-1],
        analysis=collect_analysis(strategy),
        trades=getattr(strategy, "trade_log", []),
        margin_events=getattr(broker, "margin_events", []),
        order_rejections=getattr(strategy, "order_rejections", {}),
        event_warnings=getattr(strategy, "event_warnings", None),
        data_report=data_report,
        elapsed=elapsed,
        cerebro=cerebro,
        strategy=strategy,
    )
