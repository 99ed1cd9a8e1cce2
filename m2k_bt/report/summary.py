"""The run report: ``report.json``, ``trades.csv``, ``equity.csv``, plots and a text summary.

:func:`write_outputs` writes every file atomically (temporary file in the same folder, then
``os.replace``) and writes ``report.json`` last, so a folder holding ``report.json`` is complete.
:func:`format_summary` prints the report's own numbers, never recomputed ones.

``report.json`` (schema ``m2k_bt/report``, version :data:`REPORT_SCHEMA_VERSION`; machine
form :data:`REPORT_JSON_SCHEMA`, check with :func:`validate_report`). Units: ``$`` US dollars,
``%`` percent (12.5 = 12.5 %), fraction (0.125); dates are ISO 8601 strings in the data's time
zone (New York); ``null`` means "not defined" (no trades, no losing trade, zero volatility...).

- ``schema`` (str): always ``"m2k_bt/report"``. ``schema_version`` (str): ``"MAJOR.MINOR"``;
  MINOR grows when keys are added, MAJOR when a key changes meaning or goes away.
- ``generated_at`` (str): UTC time the report was built. ``package_version`` (str|null).
- ``engine`` (str|null): what ran the backtest, ``"cerebro"`` or ``"kernel"`` (`--engine`).
- ``inputs`` (object): what the run used.

  - ``data``: ``path`` (str|null, the bar file), ``rows`` (int|null, rows read from it),
    ``bars`` (int, bars the strategy saw), ``first_dt`` / ``last_dt`` (str|null, first and
    last bar), ``start`` / ``end`` (str|null, requested range), ``resample`` (str|null),
    ``rth_only`` (bool|null).
  - ``contract``: ``root``, ``description``, ``multiplier`` ($ per point), ``tick_size``
    (points), ``tick_value`` ($ per tick), ``exchange``, ``currency``.
  - ``costs``: ``commission`` ($ per contract per side), ``slippage_ticks`` (ticks per fill).
  - ``margins``: ``initial``, ``maintenance`` ($ per contract), ``intraday`` ($ per contract
    or null).
  - ``cash`` ($, starting cash); ``seed`` (int|null).
  - ``strategy`` and ``sizer``: ``name`` (str|null) and ``params`` (object).

- ``results`` (object): the headline numbers. ``start_value``, ``final_value`` ($ equity),
  ``net_profit`` ($), ``return_pct`` (%), ``cagr`` (fraction), ``sharpe``, ``sortino``,
  ``calmar`` (annualised ratios), ``sqn``, ``profit_factor``, ``win_rate`` (fraction),
  ``trades`` (count), ``max_drawdown`` ($), ``max_drawdown_pct`` (%), ``expectancy`` ($ per
  trade), ``commission`` and ``slippage`` ($ paid; null without the cost analyzer),
  ``margin_calls`` (count; null without the margin analyzer).
- ``analyzers`` (object): each analyzer's full output under its name (``trades``, ``costs``,
  ``margin``, ``kelly``, ``returns``; the per-bar ``equity`` goes to ``equity.csv``
  instead). Every key is documented in :mod:`m2k_bt.analyzers`.
- ``margin_events`` (array of objects): the broker's margin events (``dt``, ``kind``,
  ``equity``, ``requirement``, ``contracts``, ``data_name``).
- ``warnings`` (array of str): data repairs, margin calls, rejected orders and anything else
  a trader must know before trusting the numbers.
- ``files`` (object): file name -> role, for the files written next to the report.
- ``overview`` (object, from 1.2): the figures a trader reads first, derived from the above
  and the equity curve: the synthetic-data flag, the entries the sizer declined and why,
  buy-and-hold of one contract, drawdown durations and the worst drawdowns, long vs short,
  yearly returns, the gross-to-net cost waterfall, the parameters that differ from the
  defaults. Every key is documented in :mod:`m2k_bt.report.overview`.

``trades.csv``: one row per closed trade, columns :data:`TRADE_COLUMNS` (times and prices of
entry and exit, contracts, gross and net P&L and commission in $, ticks, bars held, exit reason,
Kelly inputs ``kelly_p``/``kelly_b``/``kelly_f``); further columns a strategy logs follow.
``equity.csv``: one row per bar, columns ``datetime, value, cash, position, close, drawdown,
drawdown_pct`` (see :class:`m2k_bt.analyzers.equity.EquityCurve`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..analyzers import METRIC_KEYS, equity_frame, metrics_from
from ..errors import OutputError
from ..feeds.cache import file_sha256
from ..outputs import (
    OutputFolder,
    atomic_open,
    atomic_path,
    atomic_write_text,
    jsonable,
    ny_index_iso,
    ny_iso,
)
from .overview import OVERVIEW_SCHEMA, build_overview, declined_text
from .records import NY, TRADE_COLUMNS, trade_table

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "REPORT_JSON_SCHEMA",
    "TRADE_COLUMNS",
    "build_report",
    "ny_iso",
    "ny_index_iso",
    "trade_table",
    "validate_report",
    "write_outputs",
    "format_summary",
    "atomic_path",
]

#: Version of the report.json layout ("MAJOR.MINOR").
REPORT_SCHEMA_VERSION = "1.3"

#: Warnings printed in the text summary; report.json keeps them all.
SUMMARY_WARNINGS = 10

#: Keys of ``report["results"]``: the equity, the headline metrics, the costs, margin calls.
RESULT_KEYS = ("start_value", "final_value", *METRIC_KEYS, "commission", "slippage",
               "margin_calls")
_COUNT_KEYS = ("win_rate", "trades", "margin_calls")  # typed separately below

_NUM = ["number", "null"]
_INT = ["integer", "null"]
_STR = ["string", "null"]

#: JSON Schema (draft 2020-12) of report.json; see the module docstring for the meaning.
REPORT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "m2k_bt backtest report",
    "type": "object",
    "required": [
        "schema",
        "schema_version",
        "generated_at",
        "versions",
        "inputs",
        "results",
        "analyzers",
        "margin_events",
        "warnings",
    ],
    "properties": {
        "schema": {"const": "m2k_bt/report"},
        "schema_version": {"type": "string"},
        "generated_at": {"type": "string"},
        "package_version": {"type": _STR},
        "engine": {"type": _STR},
        "lookahead_check": {
            "type": ["object", "null"],
            "properties": {"cuts": {"type": "integer"}, "bars": {"type": "integer"},
                           "seconds": {"type": "number"}},
        },
        "versions": {
            "type": "object",
            "required": ["m2k_bt", "backtrader", "pandas", "numpy"],
            "additionalProperties": {"type": _STR},
        },
        "inputs": {
            "type": "object",
            "required": ["data", "contract", "costs", "margins", "cash", "strategy", "sizer"],
            "properties": {
                "data": {
                    "type": "object",
                    "required": ["path", "rows", "bars", "first_dt", "last_dt"],
                    "properties": {
                        "path": {"type": _STR},
                        "rows": {"type": _INT},
                        "bars": {"type": _INT},
                        "first_dt": {"type": _STR},
                        "last_dt": {"type": _STR},
                        "start": {"type": _STR},
                        "end": {"type": _STR},
                        "resample": {"type": _STR},
                        "rth_only": {"type": ["boolean", "null"]},
                        "files": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["path", "sha256"],
                                "properties": {
                                    "path": {"type": "string"},
                                    "sha256": {"type": _STR},
                                    "bytes": {"type": _INT},
                                },
                            },
                        },
                        "format": {"type": _STR},
                        "tz": {"type": _STR},
                        "lenient": {"type": ["boolean", "null"]},
                        "roll": {"type": _STR},
                        "adjust": {"type": _STR},
                    },
                },
                "contract": {
                    "type": "object",
                    "required": ["root", "multiplier", "tick_size", "tick_value"],
                    "properties": {
                        "root": {"type": _STR},
                        "description": {"type": _STR},
                        "multiplier": {"type": _NUM},
                        "tick_size": {"type": _NUM},
                        "tick_value": {"type": _NUM},
                        "exchange": {"type": _STR},
                        "currency": {"type": _STR},
                    },
                },
                "costs": {
                    "type": "object",
                    "required": ["commission", "slippage_ticks"],
                    "properties": {
                        "commission": {"type": _NUM},
                        "slippage_ticks": {"type": _NUM},
                    },
                },
                "margins": {
                    "type": "object",
                    "required": ["initial", "maintenance", "intraday"],
                    "properties": {
                        "initial": {"type": _NUM},
                        "maintenance": {"type": _NUM},
                        "intraday": {"type": _NUM},
                    },
                },
                "cash": {"type": _NUM},
                "seed": {"type": _INT},
                "events": {"type": "object"},
                "strategy": {"$ref": "#/$defs/component"},
                "sizer": {"$ref": "#/$defs/component"},
            },
        },
        "results": {
            "type": "object",
            "required": list(RESULT_KEYS),
            "properties": {
                **{k: {"type": _NUM} for k in RESULT_KEYS if k not in _COUNT_KEYS},
                "win_rate": {"type": _NUM, "minimum": 0, "maximum": 1},
                "trades": {"type": _INT, "minimum": 0},
                "margin_calls": {"type": _INT, "minimum": 0},
            },
        },
        "analyzers": {"type": "object", "additionalProperties": {"type": "object"}},
        "margin_events": {"type": "array", "items": {"type": "object"}},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
        "overview": OVERVIEW_SCHEMA,
    },
    "$defs": {
        "component": {
            "type": "object",
            "required": ["name", "params"],
            "properties": {
                "name": {"type": _STR},
                "class": {"type": _STR},
                "params": {"type": "object"},
                "param_types": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    },
}


# -------------------------------------------------------------------------------------------
# JSON conversion
# -------------------------------------------------------------------------------------------


#: Keys holding dollars: rounded to the cent in report.json.
MONEY_KEYS = frozenset({
    "start_value", "final_value", "end_value", "net_profit", "max_drawdown", "expectancy",
    "commission", "slippage", "total_costs", "gross_pnl", "net_pnl", "gross_profit",
    "gross_loss", "avg_win", "avg_loss", "largest_win", "largest_loss", "equity",
    "requirement", "risk_per_contract", "peak_initial_margin", "lowest_excess_equity",
    "peak_notional", "cash", "initial", "maintenance", "intraday", "commission_per_contract",
    "slippage_per_contract", "costs_per_contract", "tick_value", "value",
})
#: Keys holding ratios: 4 decimals.
RATIO_KEYS = frozenset({
    "sharpe", "sortino", "calmar", "sqn", "profit_factor", "payoff_ratio", "peak_leverage",
    "efficiency",
})


def _rounded(obj: Any, key: str = "") -> Any:
    """Money to the cent, ratios and percentages (``*_pct``) to 4 decimals, other floats to 10
    significant digits (which drops binary noise such as 13323.739999999982)."""
    if isinstance(obj, dict):
        return {k: _rounded(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, key) for v in obj]
    if isinstance(obj, float):
        if key in MONEY_KEYS:
            return round(obj, 2)
        if key in RATIO_KEYS or key.endswith("_pct"):
            return round(obj, 4)
        return float(f"{obj:.10g}")
    return obj


def _name(component: Any) -> str | None:
    if component is None:
        return None
    if isinstance(component, str):
        return component
    return getattr(component, "__name__", type(component).__name__)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _package_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("m2k_bt")
    except Exception:  # noqa: BLE001 - not installed: no version to report
        return None


def versions() -> dict[str, str | None]:
    """Versions of the software a run used: m2k_bt, backtrader, pandas, numpy, Python."""
    import backtrader
    import numpy
    import pandas

    return {
        "m2k_bt": _package_version(),
        "backtrader": getattr(backtrader, "__version__", None),
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
    }


def _param_types(component: Any, params: dict[str, Any]) -> dict[str, str]:
    """Type name of each parameter's value; for a None the declared optional type, as
    ``"int|None"`` (the pack's strategies declare them in ``_optional_types``)."""
    declared: dict[str, Any] = {}
    mro = component.__mro__ if isinstance(component, type) else type(component).__mro__
    for klass in reversed(mro):
        declared.update(getattr(klass, "_optional_types", None) or {})
    out = {}
    for key, value in params.items():
        if value is not None:
            out[key] = type(value).__name__
        elif isinstance(declared.get(key), type):
            out[key] = f"{declared[key].__name__}|None"
        else:
            out[key] = "None"
    return out


def _effective_params(component: Any, fallback: dict) -> dict[str, Any]:
    """Every parameter of a backtrader strategy/sizer instance (defaults included), or the
    configured ones when no instance is at hand."""
    params = getattr(component, "params", None)
    keys = getattr(params, "_getkeys", None)
    if keys is None:
        return dict(fallback or {})
    return {k: getattr(params, k) for k in keys()}  # the instance's values, not the defaults


def _data_files(cfg: Any) -> list[dict[str, Any]]:
    options = getattr(cfg, "data_options", None) or {}
    paths = options.get("paths")
    if not paths:
        joined = getattr(cfg, "data_path", None)
        paths = [p for p in str(joined).split(", ")] if joined else []
    out = []
    for path in paths:
        p = Path(path)
        out.append({
            "path": str(p.resolve()) if p.exists() else str(path),
            "sha256": file_sha256(p),
            "bytes": p.stat().st_size if p.exists() else None,
        })
    return out


#: BacktestConfig fields of the events and signals, recorded under ``inputs.events``.
EVENT_FIELDS = ("avoid_events", "event_before", "event_after", "flat_before_event", "events",
                "signal", "signal_min", "signal_max", "signal_max_age")


def _events_inputs(cfg: Any) -> dict[str, Any]:
    out = {}
    for key in EVENT_FIELDS:
        value = getattr(cfg, key, None)
        if key in ("events", "signal") and value is not None and not isinstance(value, str):
            value = f"<{type(value).__name__} given in Python>"
        out[key] = value
    return out


def _inputs(result: Any) -> dict[str, Any]:
    cfg = getattr(result, "config", None)

    def c(name: str) -> Any:
        return getattr(cfg, name, None)

    spec = c("spec")
    tick_value = getattr(spec, "tick_value", None)
    strategy = getattr(result, "strategy", None)
    sizer = getattr(strategy, "_sizer", None) if strategy is not None else None
    # an engine without backtrader instances (the kernel) records its plan's classes and
    # every parameter (result.params): the same inputs a cerebro run's instances give
    if strategy is None and getattr(result, "strategy_cls", None) is not None:
        strategy = result.strategy_cls
        strat_params = dict(result.params)
    else:
        strat_params = _effective_params(strategy, c("params"))
    if sizer is None and getattr(result, "sizer_cls", None) is not None:
        sizer = result.sizer_cls
        sizer_params = dict(result.sizer_params)
    else:
        sizer_params = _effective_params(sizer, c("sizer_params"))
    options = dict(c("data_options") or {})
    return {
        "data": {
            "path": c("data_path"),
            "rows": c("data_rows"),
            "bars": getattr(result, "bars", None),
            "first_dt": getattr(result, "first_dt", None),
            "last_dt": getattr(result, "last_dt", None),
            "start": c("start"),
            "end": c("end"),
            "resample": c("resample"),
            "rth_only": c("rth_only"),
            "files": _data_files(cfg),
            "format": options.get("format"),
            "tz": options.get("tz"),
            "lenient": options.get("lenient"),
            "roll": options.get("roll"),
            "adjust": options.get("adjust"),
        },
        "contract": {
            "root": getattr(spec, "root", None),
            "description": getattr(spec, "description", None),
            "multiplier": getattr(spec, "multiplier", None),
            "tick_size": getattr(spec, "tick_size", None),
            "tick_value": tick_value,
            "exchange": getattr(spec, "exchange", None),
            "currency": getattr(spec, "currency", None),
        },
        "costs": {
            "commission": _first(c("commission"), getattr(spec, "commission", None)),
            "slippage_ticks": c("slippage_ticks"),
        },
        "margins": {
            "initial": _first(c("margin"), getattr(spec, "initial_margin", None)),
            "maintenance": _first(
                c("maintenance_margin"), getattr(spec, "maintenance_margin", None)
            ),
            "intraday": _first(c("intraday_margin"), getattr(spec, "intraday_margin", None)),
        },
        "cash": c("cash"),
        "seed": c("seed"),
        "events": _events_inputs(cfg),
        "strategy": {
            "name": c("strategy_name") or _name(c("strategy")),
            "class": _class_name(strategy) or _name(c("strategy")),
            "params": strat_params,
            "param_types": _param_types(strategy, strat_params),
        },
        "sizer": {
            "name": _name(c("sizer")),
            "class": _class_name(sizer),
            "params": sizer_params,
            "param_types": _param_types(sizer, sizer_params),
        },
    }


def _class_name(component: Any) -> str | None:
    """The class name of a strategy or sizer instance, or of a class."""
    if component is None:
        return None
    return component.__name__ if isinstance(component, type) else type(component).__name__


def _own_warnings(analysis: dict[str, dict]) -> list[str]:
    out = []
    trades = analysis.get("trades") or {}
    if trades.get("open_trades"):
        out.append(
            f"{trades['open_trades']} trade(s) still open at the end: net profit includes their "
            "open P&L, trade statistics do not"
        )
    returns = analysis.get("returns") or {}
    years = returns.get("years")
    if years is not None and 0 < years < 0.25:
        out.append(
            f"the run covers {years * 252:.1f} trade dates: annualised figures (CAGR, Sharpe, "
            "Sortino, Calmar) extrapolate it to a year"
        )
    costs = analysis.get("costs") or {}
    if costs.get("unpriced_fills"):
        out.append(
            f"slippage of {costs['unpriced_fills']} StopLimit fill(s) could not be measured "
            "and counts as 0"
        )
    return out


def build_report(result: Any) -> dict[str, Any]:
    """The report.json content (plain JSON types) of a backtest result.

    ``result`` is duck-typed: any object with the attributes of the engine's
    ``BacktestResult`` (``config``, ``start_value``, ``final_value``, ``bars``, ``first_dt``,
    ``last_dt``, ``analysis``, ``metrics``, ``margin_events``, ``warnings``); a missing one
    reports ``null``.
    """
    analysis = dict(getattr(result, "analysis", None) or {})
    metrics = dict(getattr(result, "metrics", None) or metrics_from(analysis))
    costs = analysis.get("costs") or {}
    margin = analysis.get("margin") or {}
    results = {
        "start_value": getattr(result, "start_value", None),
        "final_value": getattr(result, "final_value", None),
        **metrics,
        "commission": costs.get("commission"),
        "slippage": costs.get("slippage"),
        "margin_calls": margin.get("margin_calls"),
    }
    events = getattr(result, "margin_events", None)
    if events is None:
        events = margin.get("margin_events", [])
    warnings = [str(w) for w in getattr(result, "warnings", None) or []]
    warnings += [w for w in _own_warnings(analysis) if w not in warnings]
    report = {
        "schema": "m2k_bt/report",
        "schema_version": REPORT_SCHEMA_VERSION,
        "generated_at": _dt.datetime.now(NY).replace(microsecond=0),
        "package_version": _package_version(),
        "engine": getattr(result, "engine", None),
        "lookahead_check": getattr(result, "lookahead", None),
        "versions": versions(),
        "inputs": _inputs(result),
        "results": results,
        "analyzers": {k: v for k, v in analysis.items() if k != "equity"},
        "margin_events": list(events),
        "warnings": warnings,
    }
    report = jsonable(report)
    for key in ("results", "analyzers", "margin_events"):  # inputs stay exact for --rerun
        report[key] = _rounded(report[key], key)
    report["overview"] = jsonable(build_overview(
        report, _equity_df(result), trade_table(result), getattr(result, "strategy", None),
        getattr(result, "strategy_cls", None)))
    return report


# -------------------------------------------------------------------------------------------
# validation (a small checker for the JSON Schema subset REPORT_JSON_SCHEMA uses)
# -------------------------------------------------------------------------------------------

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (
        isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()
    ),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _check(value: Any, schema: dict, where: str, root: dict, errors: list[str]) -> None:
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}, got {value!r}")
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            errors.append(f"{where}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing key '{key}'")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if key in props:
                _check(sub, props[key], f"{where}.{key}", root, errors)
            elif isinstance(extra, dict):
                _check(sub, extra, f"{where}.{key}", root, errors)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]", root, errors)


def validate_report(report: dict[str, Any]) -> list[str]:
    """Problems of ``report`` against :data:`REPORT_JSON_SCHEMA` (empty list: valid).

    >>> validate_report({"schema": "m2k_bt/report"})[0]
    "report: missing key 'schema_version'"
    """
    errors: list[str] = []
    _check(report, REPORT_JSON_SCHEMA, "report", REPORT_JSON_SCHEMA, errors)
    return errors


# -------------------------------------------------------------------------------------------
# files
# -------------------------------------------------------------------------------------------


#: trades.csv columns written in dollars and cents (``-324.00``), whatever the float noise.
MONEY_COLUMNS = frozenset({"gross_pnl", "commission", "net_pnl"})


def _cell(value: Any, money: bool = False) -> Any:
    if value is None:
        return ""
    if money and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f}"  # money is whole cents in both engines
    return round(value, 10) if isinstance(value, float) else value  # drop float noise


def _write_trades(result: Any, path: Path) -> Path:
    frame = trade_table(result)
    money = [c in MONEY_COLUMNS for c in frame.columns]
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(list(frame.columns))
        for row in frame.itertuples(index=False):
            writer.writerow([_cell(v, m) for v, m in zip(row, money)])
    return path


def _write_equity(equity, path: Path) -> Path:
    frame = equity.round(8)
    frame.index = ny_index_iso(frame.index)
    if "position" in frame:
        frame["position"] = frame["position"].astype("int64")
    with atomic_open(path, "w", newline="") as fh:
        frame.to_csv(fh, index_label="datetime")
    return path


def _equity_df(result: Any):
    df = getattr(result, "equity", None)
    if df is None:
        analysis = getattr(result, "analysis", None) or {}
        if "equity" in analysis:
            df = equity_frame(analysis["equity"])
    return df


#: Files :func:`write_outputs` may write; an earlier run's copies are removed before writing.
OUTPUT_FILES = ("report.json", "trades.csv", "equity.csv", "report.html", "plot.png",
                "equity.png")


def write_outputs(result: Any, out_dir: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """Write report.json, trades.csv, equity.csv and (``plot=True``) report.html, plot.png,
    equity.png.

    The folder is locked for the duration (:class:`m2k_bt.outputs.OutputFolder`; a caller that
    already holds the lock keeps it). An earlier run's outputs are removed first, report.json
    first of all; every file is written atomically and report.json comes last, listing the
    others under ``files``: a folder holding report.json is always one complete run. A plot
    that fails is recorded as a warning in report.json, the other files are written (the
    numbers are still good), and then :class:`~m2k_bt.errors.OutputError` names what was not
    written. A write that fails (a full disk, say) removes what this call
    wrote and raises :class:`~m2k_bt.errors.OutputError` naming the file. Returns role ->
    path for the files written: roles ``trades``, ``equity``, ``html``, ``plot``,
    ``equity_plot``, ``report``.
    """
    from .plot import plot_backtrader, plot_equity

    out = Path(out_dir)
    written: dict[str, Path] = {}
    extra_warnings: list[str] = []
    with OutputFolder(out) as folder:
        folder.clear(OUTPUT_FILES)
        try:
            written["trades"] = _write_trades(result, out / "trades.csv")
            equity = _equity_df(result)
            if equity is not None:
                written["equity"] = _write_equity(equity, out / "equity.csv")
            report = build_report(result)
            if plot:
                from .html import write_report_html

                try:
                    written["html"] = write_report_html(result, out / "report.html",
                                                        report=report)
                except OutputError:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported in report.json
                    extra_warnings.append(f"report.html not written: {type(exc).__name__}: {exc}")
                cerebro = getattr(result, "cerebro", None)
                if cerebro is not None:
                    try:
                        written["plot"] = plot_backtrader(cerebro, out / "plot.png")
                    except OutputError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - reported in report.json
                        extra_warnings.append(f"plot.png not written: {type(exc).__name__}: {exc}")
                if equity is not None and len(equity):
                    try:
                        written["equity_plot"] = plot_equity(equity, out / "equity.png")
                    except OutputError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - reported in report.json
                        extra_warnings.append(
                            f"equity.png not written: {type(exc).__name__}: {exc}"
                        )

            report["warnings"] += extra_warnings
            report["files"] = {p.name: role for role, p in written.items()}
            atomic_write_text(out / "report.json",
                              json.dumps(report, indent=2, allow_nan=False) + "\n")
            written["report"] = out / "report.json"
        except BaseException:  # a full disk, Ctrl-C, SIGTERM: no half run left behind
            folder.clear(p.name for p in written.values())
            raise
    if extra_warnings:  # the run's numbers are written; a requested file is not: say so
        raise OutputError("; ".join(extra_warnings) + f" (the other outputs are in {out}/; "
                          f"--no-plot skips the plots)")
    return written


# -------------------------------------------------------------------------------------------
# text summary
# -------------------------------------------------------------------------------------------


def _money(x: Any) -> str:
    if x is None:
        return "n/a"
    return f"-${-x:,.2f}" if x < 0 else f"${x:,.2f}"


def _num(x: Any, nd: int = 2, suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:,.{nd}f}{suffix}"


def _frac_pct(x: Any) -> str:
    return "n/a" if x is None else f"{100.0 * x:,.2f} %"


def _overview_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary's rows from ``overview`` and the margin analyzer (none for a report
    without them)."""
    ov = report.get("overview") or {}
    margin = (report.get("analyzers") or {}).get("margin") or {}
    rows = []
    bh = ov.get("buy_and_hold") or {}
    if bh.get("net_profit") is not None:
        rows.append(("Buy & hold 1 ct", f"{_money(bh['net_profit'])}  "
                                         f"({_num(bh.get('return_pct'))} %)"))
    if margin.get("time_in_market_pct") is not None:
        rows.append(("Time in market", _num(margin["time_in_market_pct"], 1, " %")))
    dd = ov.get("drawdowns") or {}
    if dd.get("max_duration_days") is not None:
        rows.append(("Longest drawdown", _num(dd["max_duration_days"], 1, " days")))
    declined = ov.get("entries_declined") or {}
    if declined.get("entries"):
        rows.append(("Entries declined", declined_text(declined)))
    return rows


def format_summary(report: dict[str, Any]) -> str:
    """A short human table of a report's headline numbers (the report's values, formatted).

    $ amounts print with 2 decimals, ratios with 2, percentages with 2.
    """
    res = report.get("results", {})
    inp = report.get("inputs", {})
    data = inp.get("data", {})
    name = (inp.get("strategy") or {}).get("name") or "strategy"
    root = (inp.get("contract") or {}).get("root") or ""
    bars = data.get("bars")
    rows = [
        ("Start equity", _money(res.get("start_value"))),
        ("Final equity", _money(res.get("final_value"))),
        ("Net profit", f"{_money(res.get('net_profit'))}  ({_num(res.get('return_pct'))} %)"),
        ("CAGR", _frac_pct(res.get("cagr"))),
        ("Sharpe", _num(res.get("sharpe"))),
        ("Sortino", _num(res.get("sortino"))),
        ("Calmar", _num(res.get("calmar"))),
        (
            "Max drawdown",
            f"{_money(res.get('max_drawdown'))}  ({_num(res.get('max_drawdown_pct'))} %)",
        ),
        ("Trades", _num(res.get("trades"), 0)),
        ("Win rate", _frac_pct(res.get("win_rate"))),
        ("Profit factor", _num(res.get("profit_factor"))),
        ("Expectancy", f"{_money(res.get('expectancy'))} per trade"),
        ("SQN", _num(res.get("sqn"))),
        ("Commission", _money(res.get("commission"))),
        ("Slippage", _money(res.get("slippage"))),
        ("Margin calls", _num(res.get("margin_calls"), 0)),
        *_overview_rows(report),
    ]
    head = (
        f"{root} {name}: {data.get('first_dt') or '?'} -> {data.get('last_dt') or '?'}"
        f" ({_num(bars, 0)} bars)"
    ).strip()
    width = max(len(k) for k, _ in rows)
    lines = [head, "-" * len(head)]
    notice = (report.get("overview") or {}).get("data_notice")
    if notice:
        lines.append(notice)
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    hint = ((report.get("overview") or {}).get("entries_declined") or {}).get("hint")
    if hint:
        lines.append(f"Why: {hint}")
    warnings = report.get("warnings") or []
    if warnings:
        lines.append(f"Warnings ({len(warnings)}):")
        lines += [f"  - {w}" for w in warnings[:SUMMARY_WARNINGS]]
        if len(warnings) > SUMMARY_WARNINGS:
            lines.append(
                f"  ... and {len(warnings) - SUMMARY_WARNINGS} more: every one is in report.json"
            )
    return "\n".join(lines)
