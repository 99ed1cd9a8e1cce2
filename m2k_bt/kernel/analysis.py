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

import _thread
from collections import Counter

import numpy as np
import pandas as pd
from numba import njit

from ..analyzers import returns_statistics
from ..analyzers.common import event_dict, ratio, rounded
from ..analyzers.kelly import kelly_log
from ..analyzers.returns import periods_from_counts
from ..analyzers.trades import closed_trade_statistics
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


def _own_rounding(x: np.ndarray) -> np.ndarray:
    """Where ``round(v, nd)`` is ``v`` itself for any ``nd >= 2``: ``v`` is the double nearest
    a whole number of cents (``v == rint(v * 100) / 100``), so rounding its exact value to
    ``nd`` decimals gives that number of cents back, which reads back as ``v``."""
    with np.errstate(invalid="ignore", over="ignore"):
        return x == np.rint(x * 100.0) / 100.0


def _rounded(x: np.ndarray, nd: int, plus_zero: bool = False) -> list:
    """``[round(v, nd) (+ 0.0) for v in x]`` as Python floats, calling ``round`` only where
    :func:`_own_rounding` does not settle it (``round`` costs a microsecond a number)."""
    values = (x + 0.0 if plus_zero else x).tolist()
    own = _own_rounding(x)
    if not own.all():
        raw = x.tolist()
        for k in np.flatnonzero(~own).tolist():
            values[k] = round(raw[k], nd) + 0.0 if plus_zero else round(raw[k], nd)
    return values


def trade_rows(trades, data: KernelData, root: str, tick: float, tick_value: float) -> tuple:
    """The trade log (``trades.csv`` rows) and the closed trades ``trade_statistics`` reads,
    from the loop's trade array: one column at a time as plain Python numbers (a numpy scalar
    per cell costs more than the backtest), the same values and roundings as the analyzers."""
    if not len(trades):
        return [], [], ([],) * 7
    col = trades.T
    entry_t = data.times[col[loop.T_ENTRY_I].astype("int64")]  # datetime64[us]
    exit_t = data.times[col[loop.T_EXIT_I].astype("int64")]
    entry_dt, exit_dt = entry_t.tolist(), exit_t.tolist()  # datetimes, as .item()
    # each trade's (exit_dt - entry_dt).total_seconds() / 60: whole microseconds (exact as
    # doubles) divided by 10**6, then by 60, each division correctly rounded as Python's
    minutes = (exit_t.view("int64") - entry_t.view("int64")).astype("float64") / 1e6 / 60.0
    d = col[loop.T_DIR].astype("int64")
    directions = ["long" if x > 0 else "short" for x in d.tolist()]
    c = col[loop.T_CONTRACTS]
    e, x = col[loop.T_ENTRY_PX], col[loop.T_EXIT_PX]
    gross, comm, net = col[loop.T_GROSS], col[loop.T_COMM], col[loop.T_NET]
    bars = col[loop.T_BARS].astype("int64").tolist()
    reasons = [_REASONS[k] for k in col[loop.T_REASON].astype("int64").tolist()]
    kp, kb, kf = ([None if v != v else v for v in col[j].tolist()]
                  for j in (loop.T_KP, loop.T_KB, loop.T_KF))
    ids = col[loop.T_ID].astype("int64").tolist()
    rows = [{
        "entry_dt": a, "exit_dt": b, "direction": side, "contracts": n, "entry_price": pe,
        "exit_price": px, "gross_pnl": g, "commission": f, "net_pnl": nt, "ticks": t,
        "bars_held": h, "exit_reason": r, "kelly_p": p_, "kelly_b": b_, "kelly_f": f_,
        "trade_id": i,
    } for a, b, side, n, pe, px, g, f, nt, t, h, r, p_, b_, f_, i in zip(
        entry_dt, exit_dt, directions, c.tolist(), e.tolist(), x.tolist(), gross.tolist(),
        comm.tolist(), net.tolist(), _rounded((x - e) * d / tick, 6, plus_zero=True), bars,
        reasons, kp, kb, kf, ids)]
    keep = col[loop.T_REASON] != _REASONS.index("end")
    if not keep.all():
        pick = np.flatnonzero(keep).tolist()
        entry_dt, exit_dt, directions, bars = ([v[k] for k in pick] for v in (
            entry_dt, exit_dt, directions, bars))
        c, e, x, gross, comm, net, minutes = (v[keep] for v in (c, e, x, gross, comm, net,
                                                                 minutes))
    per_tick = c * tick_value
    g_, f_, nt_ = _rounded(gross, 10), _rounded(comm, 10), _rounded(net, 10)
    t_, nk_ = _rounded(gross / per_tick, 6, plus_zero=True), _rounded(net / per_tick, 6)
    closed = [{
        "ref": ref, "data_name": root, "entry_dt": a, "exit_dt": b, "direction": side,
        "contracts": n,  # as the analyzer's (backtrader's trade sizes, int)
        "entry_price": pe, "exit_price": px, "gross_pnl": g, "commission": f, "net_pnl": nt,
        "ticks": t, "net_ticks": nk, "bars_held": h,
    } for ref, a, b, side, n, pe, px, g, f, nt, t, nk, h in zip(
        range(1, len(bars) + 1), entry_dt, exit_dt, directions, c.astype("int64").tolist(),
        _rounded(e, 10), _rounded(x, 10), g_, f_, nt_, t_, nk_, bars)]
    return rows, closed, (nt_, g_, f_, t_, nk_, bars, minutes.tolist())


def kernel_result(plan: Plan, data: KernelData, value, cash, pos, trades, dec, mev, counters,
                  costs, active, elapsed: float, lookahead: dict | None = None,
                  filtered: dict | None = None, indicators: dict | None = None):
    """The :class:`~m2k_bt.engine.result.BacktestResult` of one run of the loop (its output
    arrays as :func:`m2k_bt.kernel.loop.run_loop` returns them) on ``data``; ``lookahead``:
    the signal's look-ahead check; ``filtered``: what the event and external-series filters
    did (:meth:`m2k_bt.kernel.filters.Gates.report`). The loop's float positions ``pos``
    become the equity frame's int64 ``position`` column in place (8 bytes a bar less at the
    peak): the loop's arrays are not read after this."""
    config, ci = plan.config, plan.comminfo
    tick = float(ci.p.tick_size)
    mult = float(ci.p.mult)
    tick_value = round(tick * mult, 10)
    root = config.spec.root
    start_value = float(config.cash)
    # the compiled passes over every bar run in threads while the trade log is made
    drawdown_pass = _behind(_drawdown_columns, value, start_value)
    margin_pass = _margin_pass_of(data, ci, value, pos, active) if config.analyzers else None
    per_date = data.per_date()
    timeframe = _MINUTES if data.intraday else _DAYS
    periods = periods_from_counts(timeframe, data.compression, per_date)
    # and the returns statistics (compiled passes and numpy reductions that let go of the GIL)
    returns_pass = _behind(returns_statistics, start_value, value, periods)
    rows, closed, columns = trade_rows(trades, data, root, tick, tick_value)
    tstats = closed_trade_statistics(*columns, closed)
    tstats["open_trades"] = int(bool(rows) and rows[-1]["exit_reason"] == "end")
    rstats = returns_pass()
    rstats["trade_dates"] = len(per_date)
    drawdown, pct = drawdown_pass()
    events = _margin_events(mev, data, float(ci.p.margin), root)
    # read before ``pos`` becomes int64 in place below
    margin = _margin(data, ci, value, pos, events, active, margin_pass) \
        if config.analyzers else None
    equity_cols = {
        "datetime": data.times,
        "value": value,
        "cash": cash,
        "position": _int64_in_place(pos),  # pos.astype("int64"), over pos
        "close": data.close,
        "drawdown": drawdown,
        "drawdown_pct": pct,
    }
    analysis = {"returns": rstats, "trades": tstats, "equity": equity_cols}
    equity = pd.DataFrame({k: v for k, v in equity_cols.items() if k != "datetime"},
                          index=data.dtindex(), copy=False)
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
        analysis["margin"] = margin
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


@njit(cache=True, nogil=True)
def _drawdown_columns(value, start):
    """The equity frame's ``drawdown`` ($ below the running peak of ``value`` and ``start``)
    and ``drawdown_pct`` (% of that peak, NaN where it is not positive) in one pass, as
    ``np.maximum.accumulate`` / ``np.maximum`` / ``np.divide`` give them (NaN propagates)."""
    n = len(value)
    drawdown = np.empty(n)
    pct = np.empty(n)
    run = np.nan
    for i in range(n):
        v = value[i]
        run = v if i == 0 else _np_maximum(run, v)
        peak = _np_maximum(run, start)
        dd = peak - v
        drawdown[i] = dd
        pct[i] = dd / peak * 100.0 if peak > 0 else np.nan
    return drawdown, pct


@njit(cache=True)
def _int64_in_place(pos):
    """``pos.astype("int64")`` written over ``pos`` (each float is read before its integer
    takes its place), as an int64 view of the same memory."""
    ints = pos.view(np.int64)
    for i in range(len(pos)):
        ints[i] = np.int64(pos[i])
    return ints


@njit(cache=True, inline="always")
def _np_maximum(a, b):
    """``np.maximum(a, b)``: ``a`` unless ``b`` is larger, NaN if either is."""
    return a if a >= b or np.isnan(a) else b


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


@njit(cache=True, nogil=True)
def _margin_pass(value, pos, active, close, use_active, im, margin, maint, mult):
    """What :func:`_margin` reads of every bar, in one pass without temporaries, with numpy's
    rules for NaN (``argmin``/``argmax``: the first NaN wins; ``max``: NaN): bars in the
    market; their lowest excess equity (value - maintenance) and its bar; the flat bars'
    lowest value and its bar; the highest initial margin and its bar; the highest notional,
    margin % of equity and leverage (over bars with positive equity, ``n_pos`` of them);
    the most contracts; the bars in the market with equity <= 0. Margins are per contract,
    ``im`` inside the intraday window (``active``) when ``use_active``."""
    n = len(value)
    in_market = n_pos = nonpositive = 0
    low_x, low_i, flat_v, flat_i, init_top, init_i = np.nan, -1, np.nan, -1, np.nan, -1
    notional_top = pct_top = lev_top = contracts_top = -np.inf
    for i in range(n):
        size = abs(pos[i])
        contracts_top = _nan_max(contracts_top, size)
        v = value[i]
        if size == 0:
            if flat_i < 0 or (not np.isnan(flat_v) and (v < flat_v or np.isnan(v))):
                flat_v, flat_i = v, i
            continue
        on = use_active and active[i]
        init = size * (im if on else margin)
        excess = v - size * (im if on else maint)
        notional = size * close[i] * mult
        if low_i < 0 or (not np.isnan(low_x) and (excess < low_x or np.isnan(excess))):
            low_x, low_i = excess, i
        if init_i < 0 or (not np.isnan(init_top) and (init > init_top or np.isnan(init))):
            init_top, init_i = init, i
        notional_top = _nan_max(notional_top, notional)
        if v > 0:
            n_pos += 1
            pct_top = _nan_max(pct_top, 100.0 * init / v)
            lev_top = _nan_max(lev_top, notional / v)
        if v <= 0:
            nonpositive += 1
        in_market += 1
    return (in_market, low_x, low_i, flat_v, flat_i, init_top, init_i, notional_top, n_pos,
            pct_top, lev_top, contracts_top, nonpositive)


@njit(cache=True, inline="always")
def _nan_max(top, x):
    """``max`` as numpy's: NaN once seen stays."""
    if np.isnan(top) or np.isnan(x):
        return np.nan
    return x if x > top else top


def _margin_pass_of(data: KernelData, ci, value, pos, active):
    """:func:`_margin_pass` of a run (started behind: see :func:`_behind`)."""
    im = ci.p.intraday_margin
    return _behind(_margin_pass, value, pos, active, data.close, im is not None,
                   float(im or 0.0), float(ci.p.margin), float(ci.p.maintenance_margin),
                   float(ci.p.mult))


def _behind(fn, *args):
    """Start the pass ``fn(*args)`` (numba ``nogil`` code, numpy) in a thread of its own, while
    this thread goes on with the trade log and statistics in Python; returns a function that
    waits for it and gives its result (or raises its error). The thread ends with the pass.

    A bare thread and a lock, not ``threading.Thread``: its ``start`` and ``join`` wait on a
    condition, and a Ctrl-C landing inside that wait can surface as ``RuntimeError: release
    unlocked lock`` instead of the interrupt; a plain lock's ``acquire`` is interrupted
    cleanly (the pass still ends and releases it)."""
    box: dict = {}
    done = _thread.allocate_lock()
    done.acquire()

    def run():
        try:
            box["out"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - raised where the result is read
            box["err"] = exc
        finally:
            done.release()

    _thread.start_new_thread(run, ())

    def result():
        done.acquire()
        done.release()
        if "err" in box:
            raise box["err"]
        return box["out"]

    return result


def _margin(data: KernelData, ci, value, pos, events, active, passed=None) -> dict:
    """:class:`~m2k_bt.analyzers.margin.MarginExposure`'s keys, from the equity curve
    (``passed``: its :func:`_margin_pass_of`, already started)."""
    n = len(value)
    passed = passed or _margin_pass_of(data, ci, value, pos, active)
    (in_market, low_x, low_at, flat_v, flat_i, init_top, init_i, notional_top, n_pos, pct_top,
     lev_top, contracts_top, nonpositive) = passed()
    out_low = low_i = None
    if in_market:
        out_low, low_i = float(low_x), int(low_at)
    if flat_i >= 0:
        v, i = float(flat_v), int(flat_i)
        if out_low is None or v < out_low or (v == out_low and i < low_i):
            out_low, low_i = v, i
    peak_margin = peak_i = peak_pct = peak_notional = peak_lev = None
    if in_market:
        peak_margin, peak_i = float(init_top), int(init_i)
        peak_notional = max(0.0, float(notional_top))
        if n_pos:
            peak_pct = max(0.0, float(pct_top))
            peak_lev = max(0.0, float(lev_top))
    dicts = [event_dict(e) for e in events]
    kinds = Counter(e["kind"] for e in dicts)
    return {
        "peak_initial_margin": rounded(peak_margin),
        "peak_initial_margin_dt": data.when(peak_i) if peak_i is not None else None,
        "peak_margin_pct_of_equity": rounded(peak_pct, 6),
        "lowest_excess_equity": rounded(out_low),
        "lowest_excess_equity_dt": data.when(low_i) if low_i is not None else None,
        "peak_notional": rounded(peak_notional),
        "peak_leverage": rounded(peak_lev, 6),
        "peak_contracts": max(0.0, float(contracts_top)) if n else 0.0,
        "bars": n,
        "bars_in_market": in_market,
        "time_in_market_pct": rounded(ratio(100.0 * in_market, n), 6),
        "nonpositive_equity_bars": nonpositive,
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
