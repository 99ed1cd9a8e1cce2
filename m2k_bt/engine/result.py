"""What a backtest produced (:class:`BacktestResult`), made by one builder for every engine.

Cerebro (:func:`m2k_bt.engine.cerebro.run_backtest`), the kernel
(:func:`m2k_bt.kernel.simulation.simulate`) and the live runner (:func:`m2k_bt.cli.live.run_live`)
all make their result with :func:`make_result`, so the start value, the headline metrics, the
equity frame and the warnings are derived in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..outputs import jsonable
from .config import BacktestConfig

__all__ = [
    "BacktestResult",
    "KernelExtras",
    "make_result",
    "collect_analysis",
    "collect_warnings",
    "warning_lines",
    "equity_from",
    "plain",
]


@dataclass
class KernelExtras:
    """What only a kernel run reports beside the result (a cerebro run keeps these on its
    strategy and sizer).

    - ``decisions``: the sizer's :class:`~m2k_bt.sizers.kelly.KellyDecision` list (cerebro:
      ``strategy.getsizer().decisions``).
    - ``order_rejections``: rejected orders by status name, only those that happened
      (cerebro: ``strategy.order_rejections``).
    - ``rolls``: contract rolls traded (cerebro: ``strategy.rolls``).
    - ``shadow_trades``: the Kelly sizer's paper trades.
    - ``indicators``: a signal strategy's extra columns by name (drawn in report.html; cerebro:
      ``strategy.signal_indicators``).
    """

    decisions: list = field(default_factory=list)
    order_rejections: dict = field(default_factory=dict)
    rolls: int = 0
    shadow_trades: int = 0
    indicators: dict = field(default_factory=dict)


@dataclass
class BacktestResult:
    """What a backtest produced; see README "Report fields" for every key.

    ``engine`` names what ran it (``"cerebro"`` or ``"kernel"``); ``kernel`` holds a kernel
    run's :class:`KernelExtras` (``None`` for cerebro, whose ``cerebro`` and ``strategy`` are
    set instead)."""

    config: BacktestConfig
    start_value: float
    final_value: float
    bars: int
    first_dt: Any
    last_dt: Any
    analysis: dict
    metrics: dict
    trades: list
    equity: pd.DataFrame
    margin_events: list
    warnings: list
    cerebro: Any = None
    strategy: Any = None
    elapsed: float = 0.0
    data_report: list = field(default_factory=list)
    engine: str = "cerebro"
    kernel: KernelExtras | None = None
    strategy_cls: type | None = None
    params: dict | None = None
    sizer_cls: type | None = None
    sizer_params: dict | None = None
    lookahead: dict | None = None


def make_result(
    config: BacktestConfig,
    *,
    final_value: float,
    bars: int,
    first_dt,
    last_dt,
    analysis: dict,
    trades: list,
    margin_events: list,
    data_report: list,
    order_rejections: dict | None = None,
    event_warnings: list | None = None,
    more_warnings: list | None = None,
    equity: pd.DataFrame | None = None,
    elapsed: float = 0.0,
    cerebro=None,
    strategy=None,
    kernel: KernelExtras | None = None,
    plan=None,
    lookahead: dict | None = None,
) -> BacktestResult:
    """The :class:`BacktestResult` of a run of ``config`` (every engine makes its result here).

    The start value is ``config.cash``; ``metrics`` come from ``analysis``
    (:func:`~m2k_bt.analyzers.registry.metrics_from`); ``equity`` defaults to the frame of
    ``analysis["equity"]``; the warnings are :func:`warning_lines` of ``data_report``,
    ``margin_events``, ``order_rejections`` and ``event_warnings``, then ``more_warnings``
    (what only the caller knows, e.g. a live stream stopped early). ``kernel`` set marks a
    kernel run. ``plan`` (the run's :class:`~m2k_bt.engine.plan.Plan`) records the strategy
    and sizer classes and every parameter of theirs, defaults included (``strategy_cls``,
    ``params``, ``sizer_cls``, ``sizer_params``), for an engine without backtrader instances
    to read them from: report.json then records them as a cerebro run does. ``lookahead``: a
    signal strategy's look-ahead check (``{"cuts", "bars", "seconds"}``; cerebro's strategy
    carries its own).
    """
    from ..analyzers import metrics_from

    warnings = warning_lines(data_report, margin_events, order_rejections, event_warnings)
    warnings.extend(more_warnings or [])
    return BacktestResult(
        config=config,
        start_value=float(config.cash),
        final_value=float(final_value),
        bars=bars,
        first_dt=first_dt,
        last_dt=last_dt,
        analysis=analysis,
        metrics=metrics_from(analysis),
        trades=list(trades),
        equity=equity_from(analysis) if equity is None else equity,
        margin_events=list(margin_events),
        warnings=warnings,
        cerebro=cerebro,
        strategy=strategy,
        elapsed=elapsed,
        data_report=data_report,
        engine="cerebro" if kernel is None else "kernel",
        kernel=kernel,
        lookahead=lookahead if lookahead is not None else getattr(strategy, "lookahead", None),
        **_plan_fields(plan),
    )


def _plan_fields(plan) -> dict:
    """The strategy's and sizer's classes and full parameters (defaults, then the plan's)."""
    if plan is None:
        return {}

    def full(cls, given: dict) -> dict:
        items = getattr(getattr(cls, "params", None), "_getitems", None)
        return {**(dict(items()) if items else {}), **given}

    return {"strategy_cls": plan.strategy_cls, "params": full(plan.strategy_cls, plan.params),
            "sizer_cls": plan.sizer_cls, "sizer_params": full(plan.sizer_cls, plan.sizer_params)}


def warning_lines(data_report, margin_events, order_rejections=None,
                  event_warnings=None) -> list[str]:
    """The result's warnings, one line each: the loader's repairs (``data_report``), the
    broker's margin events, rejected orders by status, then the strategy's event warnings."""
    out = []
    for entry in data_report or []:
        if isinstance(entry, dict):
            out.append(
                "data: line {line} {timestamp}: {problem} -> {action}".format(
                    **{k: entry.get(k) for k in ("line", "timestamp", "problem", "action")}
                )
            )
        else:
            out.append(f"data: {entry}")
    for ev in margin_events or []:
        out.append(
            f"{ev.kind} at {ev.dt}: equity ${ev.equity:,.2f} vs requirement "
            f"${ev.requirement:,.2f} with {ev.contracts} contracts: {ev.action}"
        )
    for status, count in sorted((order_rejections or {}).items()):
        if count:
            out.append(f"orders: {count} {status}")
    out.extend(event_warnings or [])
    return out


def collect_warnings(strategy, broker, data_report) -> list[str]:
    """:func:`warning_lines` of a cerebro run's ``strategy`` and ``broker``."""
    return warning_lines(data_report, getattr(broker, "margin_events", []),
                         getattr(strategy, "order_rejections", {}),
                         getattr(strategy, "event_warnings", None))


def collect_analysis(strategy) -> dict:
    """Every analyzer's output by name, as plain dicts (names starting with ``_`` skipped)."""
    return {
        name: plain(strategy.analyzers.getbyname(name).get_analysis())
        for name in strategy.analyzers.getnames()
        if not name.startswith("_")
    }


def equity_from(analysis: dict) -> pd.DataFrame:
    """The equity curve of ``analysis["equity"]`` as a frame (an empty one without it)."""
    from ..analyzers import equity_frame

    if "equity" in analysis:
        return equity_frame(analysis["equity"])
    return pd.DataFrame(columns=["value", "cash", "position", "drawdown", "drawdown_pct"])


def plain(obj):
    """Analyzer output as plain dicts/lists (backtrader's AutoOrderedDict included), values
    kept as they are: :func:`m2k_bt.outputs.jsonable` with ``containers_only=True``."""
    return jsonable(obj, containers_only=True)
