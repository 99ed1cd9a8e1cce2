"""Rows of the run's outputs: trades.csv as a table.

Every timestamp m2k_bt writes (trades.csv, equity.csv, report.json, the summary, report.html)
is ISO 8601 with the New York offset, ``2024-03-11T09:30:00-04:00``:
:func:`m2k_bt.outputs.ny_iso` for one value, :func:`m2k_bt.outputs.ny_index_iso` for a whole
index. :func:`trade_table` gives the rows of trades.csv.
"""

from __future__ import annotations

from typing import Any

from ..outputs import jsonable, ny_iso
from ..sessions import NY_ZONE

__all__ = ["NY", "TRADE_COLUMNS", "trade_table"]

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

#: The time zone every timestamp of the outputs is written in (``sessions.NY_ZONE``).
NY = NY_ZONE


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
