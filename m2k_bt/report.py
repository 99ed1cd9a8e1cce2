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

``trades.csv``: one row per closed trade, columns :data:`TRADE_COLUMNS` (times and prices of
entry and exit, contracts, gross and net P&L and commission in $, ticks, bars held, exit reason,
Kelly inputs ``kelly_p``/``kelly_b``/``kelly_f``); further columns a strategy logs follow.
``equity.csv``: one row per bar, columns ``datetime, value, cash, position, close, drawdown,
drawdown_pct`` (see :class:`m2k_bt.analyzers.EquityCurve`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

from .analyzers import METRIC_KEYS, equity_frame, metrics_from
from .errors import OutputError
from .outputs import OutputFolder, atomic_open, atomic_path, atomic_write_text

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "REPORT_JSON_SCHEMA",
    "TRADE_COLUMNS",
    "build_report",
    "validate_report",
    "write_outputs",
    "format_summary",
    "atomic_path",
]

#: Version of the report.json layout ("MAJOR.MINOR").
REPORT_SCHEMA_VERSION = "1.0"

#: Columns of trades.csv, in order; extra keys of a strategy's trade log follow them.
TRADE_COLUMNS = (
    "entry_dt",
    "exit_dt",
    "direction",
    "contracts",
    "entry_price",
    "exit_price",
    "gross_pnl",
    "commission",
    "net_pnl",
    "ticks",
    "bars_held",
    "exit_reason",
    "kelly_p",
    "kelly_b",
    "kelly_f",
)

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
    },
    "$defs": {
        "component": {
            "type": "object",
            "required": ["name", "params"],
            "properties": {"name": {"type": _STR}, "params": {"type": "object"}},
        }
    },
}


# -------------------------------------------------------------------------------------------
# JSON conversion
# -------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: dates to ISO strings, NaN/inf to None, numpy scalars to Python."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if hasattr(obj, "isoformat") and callable(obj.isoformat):  # pandas Timestamp
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, type):
        return obj.__name__
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return _jsonable(obj.item())
    return str(obj)


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


# -------------------------------------------------------------------------------------------
# building the report
# -------------------------------------------------------------------------------------------


def _inputs(result: Any) -> dict[str, Any]:
    cfg = getattr(result, "config", None)

    def c(name: str) -> Any:
        return getattr(cfg, name, None)

    spec = c("spec")
    tick_value = getattr(spec, "tick_value", None)
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
        "strategy": {
            "name": c("strategy_name") or _name(c("strategy")),
            "params": dict(c("params") or {}),
        },
        "sizer": {"name": _name(c("sizer")), "params": dict(c("sizer_params") or {})},
    }


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
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": _package_version(),
        "inputs": _inputs(result),
        "results": results,
        "analyzers": {k: v for k, v in analysis.items() if k != "equity"},
        "margin_events": list(events),
        "warnings": warnings,
    }
    return _jsonable(report)


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


def _trade_rows(result: Any) -> list[dict[str, Any]]:
    rows = list(getattr(result, "trades", None) or [])
    if not rows:
        analysis = getattr(result, "analysis", None) or {}
        rows = list((analysis.get("trades") or {}).get("trade_list", []))
    return [_jsonable(r) for r in rows]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 10) if isinstance(value, float) else value  # drop float noise


def _write_trades(result: Any, path: Path) -> Path:
    rows = _trade_rows(result)
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in TRADE_COLUMNS and k not in extra]
    columns = list(TRADE_COLUMNS) + extra
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    return path


def _equity_df(result: Any):
    df = getattr(result, "equity", None)
    if df is None:
        analysis = getattr(result, "analysis", None) or {}
        if "equity" in analysis:
            df = equity_frame(analysis["equity"])
    return df


#: Files :func:`write_outputs` may write; an earlier run's copies are removed before writing.
OUTPUT_FILES = ("report.json", "trades.csv", "equity.csv", "plot.png", "equity.png")


def write_outputs(result: Any, out_dir: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """Write report.json, trades.csv, equity.csv and (``plot=True``) plot.png, equity.png.

    The folder is locked for the duration (:class:`m2k_bt.outputs.OutputFolder`; a caller that
    already holds the lock keeps it). An earlier run's outputs are removed first, report.json
    first of all; every file is written atomically and report.json comes last, listing the
    others under ``files``: a folder holding report.json is always one complete run. A plot
    that fails is reported as a warning in report.json instead of stopping the run (the
    numbers are still good). A write that fails (a full disk, say) removes what this call
    wrote and raises :class:`~m2k_bt.errors.OutputError` naming the file. Returns role ->
    path for the files written: roles ``trades``, ``equity``, ``plot``, ``equity_plot``,
    ``report``.
    """
    from .plotting import plot_backtrader, plot_equity

    out = Path(out_dir)
    written: dict[str, Path] = {}
    extra_warnings: list[str] = []
    with OutputFolder(out) as folder:
        folder.clear(OUTPUT_FILES)
        try:
            written["trades"] = _write_trades(result, out / "trades.csv")
            equity = _equity_df(result)
            if equity is not None:
                with atomic_open(out / "equity.csv", "w", newline="") as fh:
                    equity.round(8).to_csv(fh, index_label="datetime")
                written["equity"] = out / "equity.csv"
            if plot:
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

            report = build_report(result)
            report["warnings"] += extra_warnings
            report["files"] = {p.name: role for role, p in written.items()}
            atomic_write_text(out / "report.json",
                              json.dumps(report, indent=2, allow_nan=False) + "\n")
            written["report"] = out / "report.json"
        except OutputError:
            folder.clear(p.name for p in written.values())  # no half run left behind
            raise
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
    ]
    head = (
        f"{root} {name}: {data.get('first_dt') or '?'} -> {data.get('last_dt') or '?'}"
        f" ({_num(bars, 0)} bars)"
    ).strip()
    width = max(len(k) for k, _ in rows)
    lines = [head, "-" * len(head)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    warnings = report.get("warnings") or []
    if warnings:
        lines.append(f"Warnings ({len(warnings)}):")
        lines += [f"  - {w}" for w in warnings[:SUMMARY_WARNINGS]]
        if len(warnings) > SUMMARY_WARNINGS:
            lines.append(
                f"  ... and {len(warnings) - SUMMARY_WARNINGS} more: every one is in report.json"
            )
    return "\n".join(lines)
