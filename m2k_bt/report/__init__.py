"""Outputs of a run: report.json, the summary, report.html, plot.png and trade records; the
optimiser's study.html and walkforward.html."""

from ..outputs import jsonable, ny_index_iso, ny_iso
from .bokeh_parts import MAX_CANDLES, MAX_LINE_POINTS
from .html import EXIT_MARKERS, report_layout, write_report_html
from .plot import (
    DEFAULT_CANDLE_BARS,
    DEFAULT_LAST_TRADES,
    DEFAULT_MAX_BARS,
    plot_backtrader,
    plot_equity,
    plot_window,
)
from .records import NY, TRADE_COLUMNS, trade_table
from .study_html import write_study_html, write_walkforward_html
from .summary import (
    REPORT_JSON_SCHEMA,
    REPORT_SCHEMA_VERSION,
    build_report,
    format_summary,
    validate_report,
    write_outputs,
)

__all__ = [
    "MAX_CANDLES",
    "MAX_LINE_POINTS",
    "EXIT_MARKERS",
    "report_layout",
    "write_report_html",
    "write_study_html",
    "write_walkforward_html",
    "DEFAULT_MAX_BARS",
    "DEFAULT_CANDLE_BARS",
    "DEFAULT_LAST_TRADES",
    "plot_backtrader",
    "plot_equity",
    "plot_window",
    "NY",
    "TRADE_COLUMNS",
    "jsonable",
    "ny_iso",
    "ny_index_iso",
    "trade_table",
    "REPORT_SCHEMA_VERSION",
    "REPORT_JSON_SCHEMA",
    "build_report",
    "validate_report",
    "write_outputs",
    "format_summary",
]
