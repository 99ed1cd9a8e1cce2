"""The figures a trader reads first, for ``report.json``'s ``overview``, the summary and
report.html: :func:`build_overview` and the small functions it is made of.

Every figure here is derived from numbers the run already has (the equity curve, the trade
list, the costs, the Kelly log), so both engines get the same overview. Money is in $ rounded
to the cent, percentages in % (12.5 = 12.5 %), dates ISO 8601 in New York time.

``overview`` keys (see :data:`OVERVIEW_SCHEMA` for the types):

- ``synthetic_data`` (bool): the bar file is one of the bundled synthetic files
  (:func:`is_bundled_synthetic`); ``data_notice`` (str|null) says so in words.
- ``entries_declined``: entries the sizer sized to 0 contracts, from the Kelly log:
  ``sizer``, ``entries`` (sizing decisions), ``declined`` (0 contracts), ``by_binding``
  (declined per limit, largest first), ``reasons`` (binding -> what it means) and ``hint``
  (what to change, or null); see :func:`declined_hint`.
- ``buy_and_hold``: one contract bought at the first bar's close and held to the last bar's
  close, no costs: ``contracts`` (1), ``entry_price``, ``exit_price`` (points),
  ``net_profit`` ($), ``return_pct`` (% of the starting equity). On a back-adjusted
  continuous series the roll gaps are out of the closes.
- ``drawdowns``: ``max_duration_days`` (longest time below a peak, peak to recovery or to the
  last bar, days), ``max_duration_bars`` (bars) and ``worst``: the 5 deepest drawdowns in $
  (``peak_dt``, ``trough_dt``, ``recovery_dt`` (null: not recovered), ``depth`` ($),
  ``depth_pct`` (% of the peak), ``days``, ``bars``).
- ``directions``: ``long`` and ``short``: ``trades``, ``winners``, ``win_rate`` (fraction or
  null), ``net_pnl`` ($), ``avg_pnl`` ($ per trade or null).
- ``yearly_returns``: one row per calendar year: ``year``, ``start_value``, ``end_value``,
  ``net_profit`` ($) and ``return_pct`` (%, end over the previous year's end, the first year
  over the starting equity).
- ``costs``: the way from gross to net, each step once: ``gross_pnl`` (the run with free,
  frictionless fills), ``commission`` and ``slippage`` (paid outside rolls), ``rolls`` (what the
  rolls cost, commission and assumed slippage), ``net_pnl`` (= gross - commission - slippage -
  rolls), ``slippage_ticks_assumed`` (ticks per fill, the run's setting) and
  ``slippage_note`` (the assumption in words).
- ``changed_params``: ``strategy`` and ``sizer``: the parameters whose value differs from the
  class default (all configured ones when no instance is at hand, as for the kernel engine).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..analyzers.kelly import DECLINE_REASONS, declined_entries
from ..outputs import ny_iso
from ..sizers import FixedContracts, KellySizer
from ..strategies import STRATEGIES

__all__ = [
    "OVERVIEW_SCHEMA",
    "WORST_DRAWDOWNS",
    "bundled_data_files",
    "is_bundled_synthetic",
    "declined_hint",
    "buy_and_hold",
    "buy_and_hold_curve",
    "drawdown_periods",
    "yearly_returns",
    "direction_split",
    "roll_costs",
    "cost_waterfall",
    "changed_params",
    "declined_text",
    "build_overview",
]

#: Drawdowns listed in ``overview.drawdowns.worst``.
WORST_DRAWDOWNS = 5

_NUM = ["number", "null"]
_INT = ["integer", "null"]
_STR = ["string", "null"]
_SIDE = {"type": "object", "required": ["trades", "net_pnl"],
         "properties": {"trades": {"type": "integer"}, "winners": {"type": "integer"},
                        "win_rate": {"type": _NUM}, "net_pnl": {"type": "number"},
                        "avg_pnl": {"type": _NUM}}}

#: JSON Schema of ``report.json``'s ``overview`` (part of the report's schema).
OVERVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["synthetic_data", "entries_declined", "buy_and_hold", "drawdowns",
                 "directions", "yearly_returns", "costs", "changed_params"],
    "properties": {
        "synthetic_data": {"type": "boolean"},
        "data_notice": {"type": _STR},
        "entries_declined": {
            "type": "object",
            "required": ["entries", "declined", "by_binding"],
            "properties": {
                "sizer": {"type": _STR},
                "entries": {"type": "integer", "minimum": 0},
                "declined": {"type": "integer", "minimum": 0},
                "by_binding": {"type": "object", "additionalProperties": {"type": "integer"}},
                "reasons": {"type": "object", "additionalProperties": {"type": "string"}},
                "hint": {"type": _STR},
            },
        },
        "buy_and_hold": {
            "type": "object",
            "required": ["contracts", "net_profit", "return_pct"],
            "properties": {"contracts": {"type": "integer"}, "entry_price": {"type": _NUM},
                           "exit_price": {"type": _NUM}, "net_profit": {"type": _NUM},
                           "return_pct": {"type": _NUM}},
        },
        "drawdowns": {
            "type": "object",
            "required": ["max_duration_days", "max_duration_bars", "worst"],
            "properties": {
                "max_duration_days": {"type": _NUM},
                "max_duration_bars": {"type": _INT},
                "worst": {"type": "array", "items": {
                    "type": "object",
                    "required": ["peak_dt", "trough_dt", "recovery_dt", "depth", "depth_pct",
                                 "days", "bars"],
                    "properties": {"peak_dt": {"type": "string"},
                                   "trough_dt": {"type": "string"},
                                   "recovery_dt": {"type": _STR}, "depth": {"type": "number"},
                                   "depth_pct": {"type": _NUM}, "days": {"type": "number"},
                                   "bars": {"type": "integer"}}}},
            },
        },
        "directions": {"type": "object", "required": ["long", "short"],
                       "properties": {"long": _SIDE, "short": _SIDE}},
        "yearly_returns": {"type": "array", "items": {
            "type": "object", "required": ["year", "net_profit", "return_pct"],
            "properties": {"year": {"type": "integer"}, "start_value": {"type": "number"},
                           "end_value": {"type": "number"}, "net_profit": {"type": "number"},
                           "return_pct": {"type": _NUM}}}},
        "costs": {
            "type": "object",
            "required": ["gross_pnl", "commission", "slippage", "rolls", "net_pnl",
                         "slippage_ticks_assumed"],
            "properties": {k: {"type": _NUM} for k in (
                "gross_pnl", "commission", "slippage", "rolls", "net_pnl",
                "slippage_ticks_assumed")} | {"slippage_note": {"type": _STR}},
        },
        "changed_params": {
            "type": "object", "required": ["strategy", "sizer"],
            "properties": {"strategy": {"type": "object"}, "sizer": {"type": "object"}},
        },
    },
}


def _cents(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 2)


# -------------------------------------------------------------------------------------------
# the data
# -------------------------------------------------------------------------------------------


def bundled_data_files() -> list[Path]:
    """The synthetic files bundled in ``datafeeds/`` (written by :mod:`m2k_bt.feeds.synth`)."""
    from ..feeds.synth import BUNDLE_CONTRACTS

    root = Path(__file__).resolve().parents[2] / "datafeeds"
    names = ["m2k_5min.csv.gz", "m2k_1min.csv.gz",
             *(f"contracts/{sym}_5min.csv.gz" for sym in BUNDLE_CONTRACTS)]
    return [root / n for n in names]


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def is_bundled_synthetic(files: list[dict[str, Any]]) -> bool:
    """True when every bar file of a run (``inputs.data.files``: ``path``, ``sha256``) is one
    of the bundled synthetic files: at its bundled path, or a copy with the same bytes. A
    user's own file is never one of them.

    >>> is_bundled_synthetic([{"path": "/my/own/m2k.csv", "sha256": "00"}])
    False
    >>> is_bundled_synthetic([])
    False
    """
    if not files:
        return False
    bundled = bundled_data_files()
    places = {str(p) for p in bundled}
    digests: dict[str, str | None] = {}
    for f in files:
        path = str(f.get("path") or "")
        if path in places or str(Path(path).resolve()) in places:
            continue
        name = Path(path).name
        twin = next((p for p in bundled if p.name == name), None)
        if twin is None or f.get("sha256") is None:
            return False
        if name not in digests:
            digests[name] = _sha256(twin)
        if digests[name] != f.get("sha256"):
            return False
    return True


# -------------------------------------------------------------------------------------------
# entries the sizer declined
# -------------------------------------------------------------------------------------------


def declined_hint(by_binding: dict[str, int], entries: int, *, cash: float | None = None,
                  notional: float | None = None, margin: float | None = None,
                  max_exposure: float | None = None) -> str | None:
    """What to change when the sizer declined entries, or None when it declined none.

    ``notional`` is one contract's typical notional ($: median close x multiplier),
    ``margin`` the initial margin per contract ($), ``cash`` the starting equity ($).

    >>> print(declined_hint({"max_exposure": 3}, 3, cash=25_000, notional=100_000,
    ...                     max_exposure=2.0))  # $100,000 / 2.0 = $50,000
    each entry needs about $100,000 of notional per contract, above max_exposure 2 x equity: \
raise --cash to at least $50,000 or use --sizer fixed
    >>> print(declined_hint({"no_edge": 60, "zero": 3}, 100))  # zero: 3 / 63 < 1/5
    the strategy's recent trades (winners and paper trades) showed no edge, so the sizer \
stood aside until they did; --sizer fixed takes every signal
    >>> declined_hint({}, 10) is None
    True
    """
    if not by_binding:
        return None
    declined = sum(by_binding.values())
    everything = declined >= entries
    top = next(iter(by_binding))
    # a size limit (the account is too small) comes first when it declined a fifth or more
    for limit in ("max_exposure", "margin", "zero"):
        if by_binding.get(limit, 0) * 5 >= declined:
            top = limit
            break
    if top == "max_exposure" and notional and max_exposure:
        return (f"each entry needs about ${notional:,.0f} of notional per contract, above "
                f"max_exposure {max_exposure:g} x equity: raise --cash to at least "
                f"${notional / max_exposure:,.0f} or use --sizer fixed")
    if top == "margin" and margin:
        return (f"each entry needs ${margin:,.0f} of initial margin per contract, more than the "
                f"free cash: raise --cash or use --sizer fixed")
    if top == "zero":
        return ("the Kelly fraction of equity was below one contract's risk: raise --cash, "
                "raise --sizer-param kelly_scale or use --sizer fixed")
    if top == "no_edge":
        return ("the strategy's recent trades (winners and paper trades) showed no edge, so the "
                "sizer stood aside until they did"
                + ("; use --sizer fixed to take every signal" if everything else
                   "; --sizer fixed takes every signal"))
    return None


# -------------------------------------------------------------------------------------------
# benchmark, drawdowns, years
# -------------------------------------------------------------------------------------------


def buy_and_hold(closes, multiplier: float, start_value: float) -> dict[str, Any]:
    """One contract bought at the first close and sold at the last, no costs.

    >>> b = buy_and_hold([2000.0, 1990.0, 2010.5], 5.0, 25_000.0)
    >>> b["net_profit"], b["return_pct"]  # 10.5 pts x $5 = 52.50; 52.50 / 25,000 = 0.21 %
    (52.5, 0.21)
    """
    c = np.asarray(closes, dtype="float64")
    if not len(c):
        return {"contracts": 1, "entry_price": None, "exit_price": None, "net_profit": None,
                "return_pct": None}
    net = float(c[-1] - c[0]) * multiplier
    pct = 100.0 * net / start_value if start_value else None
    return {"contracts": 1, "entry_price": float(c[0]), "exit_price": float(c[-1]),
            "net_profit": _cents(net), "return_pct": None if pct is None else round(pct, 4)}


def buy_and_hold_curve(closes, multiplier: float, start_value: float) -> np.ndarray:
    """Equity of :func:`buy_and_hold` at each bar: start + (close - first close) x multiplier."""
    c = np.asarray(closes, dtype="float64")
    return start_value + (c - (c[0] if len(c) else 0.0)) * multiplier


def drawdown_periods(index, values, start_value: float,
                     top: int = WORST_DRAWDOWNS) -> dict[str, Any]:
    """The drawdowns of an equity curve (``values`` at the bar times ``index``, the starting
    equity before the first bar): the longest one's duration and the ``top`` deepest in $.

    A drawdown starts at the last bar at a running peak and ends at the first bar back at or
    above it (its recovery; none while still below at the end). A peak at the starting equity
    is dated at the first bar.
    """
    idx = pd.DatetimeIndex(index)
    v = np.asarray(values, dtype="float64")
    out: dict[str, Any] = {"max_duration_days": 0.0 if len(v) else None,
                           "max_duration_bars": 0 if len(v) else None, "worst": []}
    if not len(v):
        return out
    series = np.concatenate(([start_value], v))
    times = idx.insert(0, idx[0])  # the starting equity is dated at the first bar
    peak = np.maximum.accumulate(series)
    under = series < peak
    periods = []
    i, n = 1, len(series)
    while i < n:
        if not under[i]:
            i += 1
            continue
        start = i - 1  # the last bar at the peak
        j = i
        while j < n and under[j]:
            j += 1
        recovered = j < n
        end = j if recovered else n - 1
        trough = start + int(np.argmin(series[start:end + 1]))
        depth = float(peak[start] - series[trough])
        periods.append({
            "peak_dt": ny_iso(times[start]),
            "trough_dt": ny_iso(times[trough]),
            "recovery_dt": ny_iso(times[end]) if recovered else None,
            "depth": _cents(depth),
            "depth_pct": round(100.0 * depth / peak[start], 4) if peak[start] > 0 else None,
            "days": round((times[end] - times[start]).total_seconds() / 86400.0, 4),
            "bars": int(end - start),
        })
        i = j
    if periods:
        longest = max(periods, key=lambda p: (p["days"], p["bars"]))
        out["max_duration_days"] = longest["days"]
        out["max_duration_bars"] = max(p["bars"] for p in periods)
    out["worst"] = sorted(periods, key=lambda p: -p["depth"])[:top]
    return out


def yearly_returns(index, values, start_value: float) -> list[dict[str, Any]]:
    """Each calendar year's last equity over the previous year's (the first year over the
    starting equity)."""
    idx = pd.DatetimeIndex(index)
    if not len(idx):
        return []
    idx = idx.tz_localize(None) if idx.tz is not None else idx
    year_end = pd.Series(np.asarray(values, dtype="float64"), index=idx).groupby(idx.year).last()
    rows, prev = [], float(start_value)
    for year, end in year_end.items():
        rows.append({"year": int(year), "start_value": _cents(prev), "end_value": _cents(end),
                     "net_profit": _cents(end - prev),
                     "return_pct": round(100.0 * (end / prev - 1.0), 4) if prev > 0 else None})
        prev = float(end)
    return rows


# -------------------------------------------------------------------------------------------
# trades and costs
# -------------------------------------------------------------------------------------------


def direction_split(trade_list: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Closed trades by direction: count, winners, win rate, net P&L and its mean.

    >>> s = direction_split([{"direction": "long", "net_pnl": 100.0},
    ...                      {"direction": "long", "net_pnl": -40.0},
    ...                      {"direction": "short", "net_pnl": -10.0}])
    >>> s["long"]  # (100 - 40) / 2 = 30
    {'trades': 2, 'winners': 1, 'win_rate': 0.5, 'net_pnl': 60.0, 'avg_pnl': 30.0}
    """
    out = {}
    for side in ("long", "short"):
        pnl = [float(t.get("net_pnl") or 0.0) for t in trade_list if t.get("direction") == side]
        wins = sum(1 for x in pnl if x > 0)
        out[side] = {"trades": len(pnl), "winners": wins,
                     "win_rate": wins / len(pnl) if pnl else None,
                     "net_pnl": _cents(sum(pnl)),
                     "avg_pnl": _cents(sum(pnl) / len(pnl)) if pnl else None}
    return out


def roll_costs(rolled_contracts: float, commission: float, slippage_ticks: float,
               tick_value: float) -> dict[str, float]:
    """What rolling cost: each roll closes and reopens its contracts, 2 sides x contracts x
    (commission per side + slippage ticks x tick value).

    >>> roll_costs(3, 0.62, 1.0, 0.5)  # 2 x 3 x 0.62 = 3.72; 2 x 3 x 1 x 0.50 = 3.00
    {'commission': 3.72, 'slippage': 3.0, 'total': 6.72}
    """
    comm = 2 * rolled_contracts * commission
    slip = 2 * rolled_contracts * slippage_ticks * tick_value
    return {"commission": round(comm, 2), "slippage": round(slip, 2),
            "total": round(comm + slip, 2)}


def cost_waterfall(net_pnl: float, commission: float, slippage: float,
                   rolls: dict[str, float], slippage_ticks: float | None,
                   tick_value: float | None) -> dict[str, Any]:
    """Gross P&L -> commission -> slippage -> roll costs -> net, each cost counted once: the
    rolls' share is taken out of commission and slippage.

    >>> w = cost_waterfall(100.0, 12.4, 5.0, {"commission": 3.72, "slippage": 3.0}, 1.0, 0.5)
    >>> w["gross_pnl"], w["commission"], w["slippage"], w["rolls"], w["net_pnl"]
    (117.4, 8.68, 2.0, 6.72, 100.0)
    """
    gross = net_pnl + commission + slippage
    ticks = slippage_ticks or 0.0
    note = (f"{ticks:g} ticks of slippage per fill assumed"
            + (f" (${ticks * tick_value:,.2f} per contract per side)" if tick_value else ""))
    if not ticks:
        note = "0 ticks of slippage assumed: fills at the bar's price, a best case"
    return {
        "gross_pnl": _cents(gross),
        "commission": _cents(commission - rolls.get("commission", 0.0)),
        "slippage": _cents(slippage - rolls.get("slippage", 0.0)),
        "rolls": _cents(rolls.get("commission", 0.0) + rolls.get("slippage", 0.0)),
        "net_pnl": _cents(net_pnl),
        "slippage_ticks_assumed": ticks,
        "slippage_note": note,
    }


def declined_text(declined: dict[str, Any]) -> str:
    """``overview.entries_declined`` in words: ``"621 of 956 sized to 0 (no_edge 602, zero
    19)"``, or ``"none of 956"``.

    >>> declined_text({"entries": 84, "declined": 84,
    ...                "by_binding": {"no_edge": 34, "zero": 26, "max_exposure": 24}})
    '84 of 84 sized to 0 (no_edge 34, zero 26, max_exposure 24)'
    """
    entries, n = declined.get("entries") or 0, declined.get("declined") or 0
    if not n:
        return f"none of {entries:,}"
    parts = ", ".join(f"{k} {v:,}" for k, v in (declined.get("by_binding") or {}).items())
    return f"{n:,} of {entries:,} sized to 0 ({parts})"


def changed_params(component: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``params`` whose value differs from ``component``'s class default
    (backtrader ``params``; ``component`` is an instance or the class itself); all of them when
    there is nothing to compare with."""
    klass = component if isinstance(component, type) or component is None else type(component)
    pairs = getattr(getattr(klass, "params", None), "_getpairs", None)
    if pairs is None:
        return {k: v for k, v in (params or {}).items()}
    defaults = dict(pairs())
    return {k: v for k, v in (params or {}).items()
            if k not in defaults or not _same(defaults[k], v)}


def _class_named(name: Any, classes) -> type | None:
    """The class of ``classes`` whose ``__name__`` is ``name``, or ``None``."""
    return next((c for c in classes if c.__name__ == name), None)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b) or (
            isinstance(a, (int, float)) and isinstance(b, (int, float))
            and not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b))
    except Exception:  # noqa: BLE001 - incomparable values differ
        return False


# -------------------------------------------------------------------------------------------
# all of it
# -------------------------------------------------------------------------------------------


def build_overview(report: dict[str, Any], equity: pd.DataFrame | None = None,
                   trades: pd.DataFrame | None = None, strategy: Any = None,
                   strategy_cls: type | None = None) -> dict[str, Any]:
    """The ``overview`` of a report (the module doc lists the keys) from its report.json
    content, the equity curve (``equity.csv``'s frame), the trade table (trades.csv's rows,
    for the rolls) and the strategy instance (for the defaults of its and its sizer's
    parameters)."""
    inputs = report.get("inputs") or {}
    results = report.get("results") or {}
    analyzers = report.get("analyzers") or {}
    data = inputs.get("data") or {}
    contract = inputs.get("contract") or {}
    costs_in = inputs.get("costs") or {}
    mult = float(contract.get("multiplier") or 0.0)
    start = float(results.get("start_value") or inputs.get("cash") or 0.0)
    synthetic = is_bundled_synthetic(data.get("files") or [])

    has_equity = equity is not None and len(equity) > 0
    closes = equity["close"].to_numpy(dtype="float64") if has_equity and "close" in equity \
        else np.zeros(0)
    values = equity["value"].to_numpy(dtype="float64") if has_equity else np.zeros(0)
    index = equity.index if has_equity else pd.DatetimeIndex([])

    kelly = analyzers.get("kelly") or {}
    declined = declined_entries(kelly.get("decisions") or [])
    sizer_params = (inputs.get("sizer") or {}).get("params") or {}
    median_close = float(np.median(closes)) if len(closes) else None
    declined.update({
        "sizer": kelly.get("sizer"),
        "reasons": {k: DECLINE_REASONS.get(k, k) for k in declined["by_binding"]},
        "hint": declined_hint(
            declined["by_binding"], declined["entries"], cash=start,
            notional=median_close * mult if median_close else None,
            margin=(inputs.get("margins") or {}).get("initial"),
            max_exposure=sizer_params.get("max_exposure")),
    })

    rolled = 0.0
    if trades is not None and len(trades) and "exit_reason" in trades:
        rolled = float(pd.to_numeric(trades.loc[trades["exit_reason"] == "roll", "contracts"])
                       .sum())
    rolls = roll_costs(rolled, float(costs_in.get("commission") or 0.0),
                       float(costs_in.get("slippage_ticks") or 0.0),
                       float(contract.get("tick_value") or 0.0))
    net = results.get("net_profit")
    if net is None:
        net = (values[-1] - start) if len(values) else 0.0
    waterfall = cost_waterfall(float(net), float(results.get("commission") or 0.0),
                               float(results.get("slippage") or 0.0), rolls,
                               costs_in.get("slippage_ticks"), contract.get("tick_value"))

    # the classes the report names, so that every engine (the kernel has no strategy object)
    # gives the same answer
    strat_in, sizer_in = inputs.get("strategy") or {}, inputs.get("sizer") or {}
    strat_params = strat_in.get("params") or {}
    strat_cls = strategy_cls or _class_named(strat_in.get("class"), STRATEGIES.values())
    if strat_cls is None and strategy is not None:
        strat_cls = type(strategy)
    sizer_cls = _class_named(sizer_in.get("class"), (KellySizer, FixedContracts))
    if sizer_cls is None and strategy is not None:
        sizer_cls = getattr(strategy, "_sizer", None)
    return {
        "synthetic_data": synthetic,
        "data_notice": ("SYNTHETIC DATA: bundled sample bars (m2k_bt.feeds.synth), not market "
                        "prices; --data loads your own file") if synthetic
        else None,
        "entries_declined": declined,
        "buy_and_hold": buy_and_hold(closes, mult, start),
        "drawdowns": drawdown_periods(index, values, start),
        "directions": direction_split((analyzers.get("trades") or {}).get("trade_list") or []),
        "yearly_returns": yearly_returns(index, values, start),
        "costs": waterfall,
        "changed_params": {"strategy": changed_params(strat_cls, strat_params),
                           "sizer": changed_params(sizer_cls, sizer_params)},
    }
