"""Rows of the run's outputs: times in one format, trades.csv as a table.

Every timestamp m2k_bt writes (trades.csv, equity.csv, report.json, the summary, report.html)
is ISO 8601 with the New York offset, ``2024-03-11T09:30:00-04:00``: :func:`ny_iso` for one
value, :func:`ny_index_iso` for a whole index. :func:`trade_table` gives the rows of trades.csv.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["NY", "TRADE_COLUMNS", "jsonable", "ny_iso", "ny_index_iso", "trade_table"]

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

#: The time zone every timestamp of the outputs is written in.
NY = ZoneInfo("America/New_York")


def ny_iso(value: Any) -> str | None:
    """ISO 8601 with the New York offset; a naive time is New York wall time (backtrader's
    times are), an aware one is converted. At the autumn repeat a naive time is read as the
    first (daylight-saving) one.

    >>> ny_iso(_dt.datetime(2024, 1, 2, 9, 30))
    '2024-01-02T09:30:00-05:00'
    >>> ny_iso("2024-07-01T14:00:00+00:00")
    '2024-07-01T10:00:00-04:00'
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    if isinstance(value, _dt.datetime):
        value = value.replace(tzinfo=NY) if value.tzinfo is None else value.astimezone(NY)
        return value.isoformat(timespec="seconds" if not value.microsecond else "auto")
    if isinstance(value, _dt.date):
        return value.isoformat()
    return str(value)


def ny_index_iso(index) -> list[str]:
    """:func:`ny_iso` of every time of a DatetimeIndex, vectorised (an equity curve's index)."""
    import pandas as pd

    idx = pd.DatetimeIndex(index)
    if idx.tz is None:
        try:
            idx = idx.tz_localize(NY.key, ambiguous="infer", nonexistent="shift_forward")
        except (ValueError, TypeError):  # not inferable (a gap at the repeat): first one
            idx = idx.tz_localize(NY.key, ambiguous=[True] * len(idx),
                                  nonexistent="shift_forward")
    else:
        idx = idx.tz_convert(NY.key)
    text = pd.Index(idx.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return list(text.str[:-2] + ":" + text.str[-2:])


def jsonable(obj: Any) -> Any:
    """Plain JSON types: times to ISO strings in New York time, NaN/inf to None, numpy scalars
    to Python."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (_dt.datetime, _dt.date)) or hasattr(obj, "to_pydatetime"):
        return ny_iso(obj)
    if isinstance(obj, _dt.time):
        return obj.isoformat()
    if hasattr(obj, "isoformat") and callable(obj.isoformat):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, type):
        return obj.__name__
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return jsonable(obj.item())
    return str(obj)


def _trade_rows(result: Any) -> list[dict[str, Any]]:
    rows = list(getattr(result, "trades", None) or [])
    if not rows:
        analysis = getattr(result, "analysis", None) or {}
        rows = list((analysis.get("trades") or {}).get("trade_list", []))
    return [jsonable(r) for r in rows]


_TIME_COLUMNS = ("entry_dt", "exit_dt")


def _trade_record(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in _TIME_COLUMNS:
        if key in out:
            out[key] = ny_iso(out[key])
    size = out.get("contracts")
    if isinstance(size, float) and size.is_integer():
        out["contracts"] = int(size)
    return out


def trade_table(result: Any):
    """The rows of trades.csv as a DataFrame: columns :data:`TRADE_COLUMNS` then any a
    strategy logs; times as ISO 8601 strings with the New York offset, ``contracts`` as
    integers, a missing value as None."""
    import pandas as pd

    rows = [_trade_record(r) for r in _trade_rows(result)]
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in TRADE_COLUMNS and k not in extra]
    columns = list(TRADE_COLUMNS) + extra
    frame = pd.DataFrame([{k: row.get(k) for k in columns} for row in rows], columns=columns)
    if len(frame) and frame["contracts"].notna().all():
        frame["contracts"] = frame["contracts"].astype("int64")
    return frame.astype(object).where(frame.notna(), None)
