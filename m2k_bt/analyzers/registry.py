"""The package's analyzers by name: :func:`add_analyzers` adds them to a cerebro,
:func:`metrics_from` reads the flat headline metrics from their outputs."""

from __future__ import annotations

from typing import Any

import backtrader as bt

from .costs import CostAnalyzer
from .equity import EquityCurve
from .kelly import KellyLog
from .margin import MarginExposure
from .returns import ReturnsRisk
from .trades import TradeStats

__all__ = [
    "ANALYZER_NAMES",
    "MINIMAL_ANALYZER_NAMES",
    "METRIC_KEYS",
    "add_analyzers",
    "metrics_from",
]

#: Fixed names under which :func:`add_analyzers` adds each analyzer.
ANALYZER_NAMES: dict[str, str] = {
    "trades": "TradeStats",
    "costs": "CostAnalyzer",
    "margin": "MarginExposure",
    "kelly": "KellyLog",
    "returns": "ReturnsRisk",
    "equity": "EquityCurve",
}

#: The analyzers an optimisation trial needs (``add_analyzers(minimal=True)``).
MINIMAL_ANALYZER_NAMES = ("returns", "trades", "equity")

#: Keys of the flat dict returned by :func:`metrics_from`.
METRIC_KEYS = (
    "net_profit",
    "return_pct",
    "cagr",
    "sharpe",
    "sortino",
    "calmar",
    "sqn",
    "profit_factor",
    "win_rate",
    "trades",
    "max_drawdown",
    "max_drawdown_pct",
    "expectancy",
)

_CLASSES: dict[str, type[bt.Analyzer]] = {
    "trades": TradeStats,
    "costs": CostAnalyzer,
    "margin": MarginExposure,
    "kelly": KellyLog,
    "returns": ReturnsRisk,
    "equity": EquityCurve,
}


def add_analyzers(cerebro: bt.Cerebro, minimal: bool = False, **returns_params) -> list[str]:
    """Add this package's analyzers to ``cerebro`` under the names of :data:`ANALYZER_NAMES`.

    ``minimal=True`` adds only ``returns``, ``trades`` and ``equity``, what an optimisation
    trial needs (the equity curve gives the per-day returns of the overfitting statistics).
    ``returns_params`` go to :class:`ReturnsRisk` (e.g. ``riskfreerate=0.04``). Returns the
    names added. Read them after ``cerebro.run()`` with
    ``{name: strat.analyzers.getbyname(name).get_analysis() for name in names}``.
    """
    names = list(MINIMAL_ANALYZER_NAMES) if minimal else list(_CLASSES)
    for name in names:
        kwargs = returns_params if name == "returns" else {}
        cerebro.addanalyzer(_CLASSES[name], _name=name, **kwargs)
    return names


def metrics_from(analysis: dict[str, dict]) -> dict[str, Any]:
    """The flat headline metrics from ``{name: get_analysis()}`` of :func:`add_analyzers`.

    Keys (:data:`METRIC_KEYS`): ``net_profit`` ($), ``return_pct`` (%), ``cagr`` (fraction),
    ``sharpe``, ``sortino``, ``calmar`` (annualised ratios), ``sqn``, ``profit_factor``,
    ``win_rate`` (fraction), ``trades`` (count), ``max_drawdown`` ($), ``max_drawdown_pct``
    (%), ``expectancy`` ($ per trade). A missing analyzer or undefined value gives None.

    >>> metrics_from({})["sharpe"] is None
    True
    """
    ret = analysis.get("returns") or {}
    trd = analysis.get("trades") or {}
    return {
        "net_profit": ret.get("net_profit"),
        "return_pct": ret.get("return_pct"),
        "cagr": ret.get("cagr"),
        "sharpe": ret.get("sharpe"),
        "sortino": ret.get("sortino"),
        "calmar": ret.get("calmar"),
        "sqn": trd.get("sqn"),
        "profit_factor": trd.get("profit_factor"),
        "win_rate": trd.get("win_rate"),
        "trades": trd.get("trades"),
        "max_drawdown": ret.get("max_drawdown"),
        "max_drawdown_pct": ret.get("max_drawdown_pct"),
        "expectancy": trd.get("expectancy"),
    }
