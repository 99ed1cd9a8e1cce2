"""Backtrader analyzers for futures: trades, costs, margin, Kelly sizing, returns and equity.

One family per module, as backtrader's own ``analyzers/``: :mod:`.trades` (``TradeStats``),
:mod:`.costs` (``CostAnalyzer``), :mod:`.margin` (``MarginExposure``), :mod:`.kelly`
(``KellyLog``), :mod:`.returns` (``ReturnsRisk`` and the annualisation rule), :mod:`.equity`
(``EquityCurve``); :mod:`.recorder` holds the per-bar recorder three of them share,
:mod:`.common` the rounding and division every one uses, :mod:`.registry` the names
:func:`add_analyzers` adds them under and :func:`metrics_from`.

Each one works in any cerebro script, with any strategy and any broker: add it with
``cerebro.addanalyzer(TradeStats, _name="trades")`` or add them all with :func:`add_analyzers`.
They read only what backtrader itself provides (``notify_trade``, ``notify_order``,
``notify_fund``, the broker and the commission scheme); extras from this package
(``FuturesBroker.margin_events``, ``KellySizer.decisions``) are read with fallbacks.

Conventions for every key listed in the classes' docstrings:

- ``$`` is US dollars of account equity; ``ticks`` are contract ticks (M2K: 0.10 pt = $0.50).
- keys ending ``_pct`` are percentages (``12.5`` means 12.5 %); ``win_rate`` and ``cagr`` are
  fractions (``0.125``), as in the flat :func:`metrics_from` dict.
- a value that cannot be computed (no trades, no losing trade, zero volatility...) is ``None``,
  never ``0``, ``inf`` or ``NaN``.
- dates are naive ``datetime`` objects in the data feed's time zone (New York for this package's
  loaders).
"""

from .costs import CostAnalyzer
from .equity import EquityCurve, equity_frame
from .kelly import KellyLog
from .margin import MarginExposure
from .registry import (
    ANALYZER_NAMES,
    METRIC_KEYS,
    MINIMAL_ANALYZER_NAMES,
    add_analyzers,
    metrics_from,
)
from .returns import (
    TRADING_DAYS_PER_YEAR,
    ReturnsRisk,
    periods_per_year,
    returns_statistics,
)
from .trades import TradeStats, trade_statistics

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
