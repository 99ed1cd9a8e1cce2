"""The kernel's loop output turned into a result: the trade log, the analyzers' keys and the
:class:`~m2k_bt.engine.result.BacktestResult` (made by the engine's one builder,
:func:`~m2k_bt.engine.result.make_result`).

The ``trades`` and ``returns`` analyses come from the analyzers' own functions
(:func:`~m2k_bt.analyzers.trades.trade_statistics`,
:func:`~m2k_bt.analyzers.returns.returns_statistics`); ``costs``, ``margin`` and ``kelly`` are
rebuilt here from the loop's arrays with the analyzers' keys and roundings (the backtrader
analyzers compute them bar by bar; ``tests/test_kernel.py`` checks they agree).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from ..analyzers import returns_statistics, trade_statistics
from ..analyzers.common import event_dict, ratio, rounded
from ..analyzers.kelly import kelly_log
from ..analyzers.returns import periods_from_counts
from ..brokers.futures import MarginEvent
from ..engine import KernelExtras, Plan, make_result
from ..rules.margin import supported_contracts
from ..sizers.kelly import BINDINGS, KellyDecision
from ..strategies.base import EXIT_REASONS
from . import loop
from .data import KernelData

__all__ = ["KERNEL_EXIT_REASONS", "kernel_result", "trade_rows"]

_MINUTES, _DAYS = 4, 5  # bt.TimeFrame.Minutes, bt.TimeFrame.Days

#: Exit reasons the kernel produces, by the loop's reason code (all of ``EXIT_REASONS``).
KERNEL_EXIT_REASONS = ("signal", "stop", "target", "session_close", "margin_call", "roll", "end",
                       "event")
assert set(KERNEL_EXIT_REASONS) <= set(EXIT_REASONS)
_REASONS = KERNEL_EXIT_REASONS


def _none(x: float):
    return None if x != x else float(x)


def trade_rows(trades, data: KernelData, root: str, tick: float, tick_value: float) -> tuple:
    """The trade log (``trades.csv`` rows) and the closed trades ``trade_statistics`` reads,
    from the loop's trade array: one column at a time as plain Python numbers (a numpy scalar
    per cell costs more than the backtest), the same values and roundings as the analyzers."""
    if not len(trades):
        return [], []
    col = trades.T
    entry_i = col[loop.T_ENTRY_I].astype("int64")
    exit_i = col[loop.T_EXIT_I].astype("int64")
    entry_dt = data.times[entry_i].tolist()  # datetime64[us] -> datetime, as .item() gives
    exit_dt = data.times[exit_i].tolist()
    dirs = col[loop.T_DIR].astype("int64").tolist()
    contracts = col[loop.T_CONTRACTS].tolist()
    entry, exit_ = col[loop.T_ENTRY_PX].tolist(), col[loop.T_EXIT_PX].tolist()
    gross, comm, net = (col[loop.T_GROSS].tolist(), col[loop.T_COMM].tolist(),
                        col[loop.T_NET].tolist())
    bars = col[loop.T_BARS].astype("int64").tolist()
    reasons = [_REASONS[k] for k in col[loop.T_REASON].astype("int64").tolist()]
    kp, kb, kf = ([None if x != x else x for x in col[j].tolist()]
                  for j in (loop.T_KP, loop.T_KB, loop.T_KF))
    ids = col[loop.T_ID].astype("int64").tolist()
    rows, closed = [], []
    for k in range(len(ids)):
        e, x, d, c = entry[k], exit_[k], dirs[k], contracts[k]
        rows.append({
            "entry_dt": entry_dt[k],
            "exit_dt": exit_dt[k],
            "direction": "long" if d > 0 else "short",
            "contracts": c,
            "entry_price": e,
            "exit_price": x,
            "gross_pnl": gross[k],
            "commission": comm[k],
            "net_pnl": net[k],
            "ticks": round((x - e) * d / tick, 6) + 0.0,  # never -0.0
            "bars_held": bars[k],
            "exit_reason": reasons[k],
            "kelly_p": kp[k],
            "kelly_b": kb[k],
            "kelly_f": kf[k],
            "trade_id": ids[k],
        })
        if reasons[k] != "end":
            closed.append({
                "ref": len(closed) + 1,
                "data_name": root,
                "entry_dt": entry_dt[k],
                "exit_dt": exit_dt[k],
                "direction": "long" if d > 0 else "short",
                "contracts": int(c),  # as the analyzer's (backtrader's trade sizes, int)
                "entry_price": round(e, 10),
                "exit_price": round(x, 10),
                "gross_pnl": round(gross[k], 10),
                "commission": round(comm[k], 10),
                "net_pnl": round(net[k], 10),
                "ticks": round(gross[k] / (c * tick_value), 6) + 0.0,
                "net_ticks": round(net[k] / (c * tick_value), 6),
                "bars_held": bars[k],
            })
    return rows, closed


def kernel_result(plan: Plan, data: KernelData, value, cash, pos, trades, dec, mev, counters,
                  costs, active, elapsed: float, lookahead: dict | None = None,
                  filtered: dict | None = None, indicators: dict | None = None):
    """The :class:`~m2k_bt.engine.result.BacktestResult` of one run of the loop (its output
    arrays as :func:`m2k_bt.kernel.loop.run_loop` returns them) on ``data``; ``lookahead``:
    the signal's look-ahead check; ``filtered``: what the event and external-series filters
    did (:meth:`m2k_bt.kernel.filters.Gates.report`)."""
    config, ci = plan.config, plan.comminfo
    tick = float(ci.p.tick_size)
    mult = float(ci.p.mult)
    tick_value = round(tick * mult, 10)
    root = config.spec.root
    rows, closed = trade_rows(trades, data, root, tick, tick_value)
    tstats = trade_statistics(closed)
    tstats["open_trades"] = int(bool(rows) and rows[-1]["exit_reason"] == "end")
    start_value = float(config.cash)
    per_date = data.per_date()
    timeframe = _MINUTES if data.intraday else _DAYS
    periods = periods_from_counts(timeframe, data.compression, per_date)
    rstats = returns_statistics(start_value, value, periods)
    rstats["trade_dates"] = len(per_date)
    peak = np.maximum.accumulate(value) if len(value) else value
    np.maximum(peak, start_value, out=peak)
    drawdown = peak - value
    positive = peak > 0
    pct = np.divide(drawdown, peak, out=np.zeros_like(drawdown), where=positive) * 100.0
    pct[~positive] = np.nan
    equity_cols = {
        "datetime": data.times,
        "value": value,
        "cash": cash,
        "position": pos.astype("int64"),
        "close": data.close,
        "drawdown": drawdown,
        "drawdown_pct": pct,
    }
    analysis = {"returns": rstats, "trades": tstats, "equity": equity_cols}
    equity = pd.DataFrame({k: v for k, v in equity_cols.items() if k != "datetime"},
                          index=data.dtindex(), copy=False)
    events = _margin_events(mev, data, float(ci.p.margin), root)
    decisions = [
        KellyDecision(dt=data.when(int(d[0])), p=_none(d[1]), b=_none(d[2]),
                      f_star=_none(d[3]), f_used=_none(d[4]), equity=float(d[5]),
                      risk_per_contract=_none(d[6]), contracts=int(d[7]),
                      binding=BINDINGS[int(d[8])], trades_used=int(d[9]))
        for d in dec
    ]
    final_value = float(value[-1]) if len(value) else start_value
    if config.analyzers:
        analysis["costs"] = _costs(costs, final_value - start_value)
        analysis["margin"] = _margin(data, ci, value, pos, events, active)
        analysis["kelly"] = _kelly_log(decisions, config)
        analysis = {k: analysis[k] for k in ("trades", "costs", "margin", "kelly", "returns",
                                              "equity")}
    if filtered is not None:
        analysis["events"] = filtered["analysis"]
    rejections = {name: int(counters[j]) for name, j in (("Margin", 1), ("Rejected", 2),
                                                         ("Canceled", 3)) if counters[j]}
    return make_result(
        config,
        final_value=final_value,
        bars=data.n,
        first_dt=data.bars.index[0],
        last_dt=data.bars.index[-1],
        analysis=analysis,
        trades=rows,
        equity=equity,
        margin_events=events,
        order_rejections=rejections,
        event_warnings=filtered["warnings"] if filtered is not None else None,
        data_report=data.data_report,
        elapsed=elapsed,
        kernel=KernelExtras(decisions=decisions, order_rejections=rejections,
                            rolls=int(counters[0]), shadow_trades=int(counters[5]),
                            indicators=indicators or {}),
        plan=plan,
        lookahead=lookahead,
    )


def _margin_events(mev, data: KernelData, margin: float, root: str) -> list[MarginEvent]:
    """The loop's margin-event rows as the broker's :class:`~m2k_bt.brokers.futures.MarginEvent`
    list (kind 0 margin call, 2 intraday cut-back, else negative equity)."""
    events = []
    for r in mev:
        i, k = int(r[0]), int(r[1])
        size = int(r[4])
        when = data.when(i)
        if k == 0:
            events.append(MarginEvent(dt=when, kind="margin_call", equity=float(r[2]),
                                      requirement=float(r[3]), contracts=size, data_name=root,
                                      action=f"liquidate {abs(size)} contracts at next open"))
        elif k == 2:
            allowed = supported_contracts(float(r[2]), margin)
            events.append(MarginEvent(
                dt=when, kind="intraday_cutback", equity=float(r[2]),
                requirement=float(r[3]), contracts=size, data_name=root,
                action=f"cut back {abs(size) - allowed} contracts at next open (equity "
                       f"supports {allowed})"))
        else:
            events.append(MarginEvent(dt=when, kind="negative_equity", equity=float(r[2]),
                                      requirement=0.0, contracts=size, data_name=root,
                                      action="equity below zero"))
    return events



def _costs(costs, change: float) -> dict:
    """:class:`~m2k_bt.analyzers.costs.CostAnalyzer`'s keys from the loop's fill sums."""
    fills, c, commission, slippage, slip_ticks = (float(x) for x in costs)
    total = commission + slippage
    gross = change + total

    def pct(x: float):
        return rounded(100.0 * x / gross, 6) if gross > 0 else None

    return {
        "fills": int(fills),
        "contracts_traded": c,
        "commission": rounded(commission),
        "commission_per_contract": rounded(ratio(commission, c)),
        "slippage": rounded(slippage),
        "slippage_per_contract": rounded(ratio(slippage, c)),
        "slippage_ticks_per_contract": rounded(ratio(slip_ticks, c), 6),
        "total_costs": rounded(total),
        "costs_per_contract": rounded(ratio(total, c)),
        "gross_profit": rounded(gross),
        "commission_pct_of_gross": pct(commission),
        "slippage_pct_of_gross": pct(slippage),
        "costs_pct_of_gross": pct(total),
        "unpriced_fills": 0,
    }


def _margin(data: KernelData, ci, value, pos, events, active) -> dict:
    """:class:`~m2k_bt.analyzers.margin.MarginExposure`'s keys, from the equity curve."""
    n = len(value)
    size = np.abs(pos)
    market = size != 0
    idx = np.flatnonzero(market)
    im = ci.p.intraday_margin
    on = active[idx] if im is not None else np.zeros(len(idx), dtype=bool)
    init = size[idx] * np.where(on, float(im or 0.0), float(ci.p.margin))
    maint = size[idx] * np.where(on, float(im or 0.0), float(ci.p.maintenance_margin))
    notional = size[idx] * data.close[idx] * float(ci.p.mult)
    equity = value[idx]
    out_low = low_i = None
    if len(idx):
        excess = equity - maint
        j = int(np.argmin(excess))
        out_low, low_i = float(excess[j]), int(idx[j])
    flat = np.flatnonzero(~market)
    if len(flat):
        j = int(np.argmin(value[flat]))
        v, i = float(value[flat][j]), int(flat[j])
        if out_low is None or v < out_low or (v == out_low and i < low_i):
            out_low, low_i = v, i
    peak_margin = peak_i = peak_pct = peak_notional = peak_lev = None
    if len(idx):
        j = int(np.argmax(init))
        peak_margin, peak_i = float(init[j]), int(idx[j])
        peak_notional = max(0.0, float(notional.max()))
        pos_eq = equity > 0
        if pos_eq.any():
            peak_pct = max(0.0, float((100.0 * init[pos_eq] / equity[pos_eq]).max()))
            peak_lev = max(0.0, float((notional[pos_eq] / equity[pos_eq]).max()))
    dicts = [event_dict(e) for e in events]
    kinds = Counter(e["kind"] for e in dicts)
    in_market = len(idx)
    return {
        "peak_initial_margin": rounded(peak_margin),
        "peak_initial_margin_dt": data.when(peak_i) if peak_i is not None else None,
        "peak_margin_pct_of_equity": rounded(peak_pct, 6),
        "lowest_excess_equity": rounded(out_low),
        "lowest_excess_equity_dt": data.when(low_i) if low_i is not None else None,
        "peak_notional": rounded(peak_notional),
        "peak_leverage": rounded(peak_lev, 6),
        "peak_contracts": max(0.0, float(size.max())) if n else 0.0,
        "bars": n,
        "bars_in_market": in_market,
        "time_in_market_pct": rounded(ratio(100.0 * in_market, n), 6),
        "nonpositive_equity_bars": int((equity <= 0).sum()),
        "margin_calls": kinds.get("margin_call", 0),
        "intraday_cutbacks": kinds.get("intraday_cutback", 0),
        "negative_equity_events": kinds.get("negative_equity", 0),
        "margin_events": dicts,
    }


def _kelly_log(decisions, config) -> dict:
    """:class:`~m2k_bt.analyzers.kelly.KellyLog`'s keys from the sizer decisions (a fixed
    sizer keeps none, as in cerebro)."""
    if str(config.sizer).lower() == "kelly":
        return kelly_log("KellySizer", decisions)
    return kelly_log("FixedContracts", None)
