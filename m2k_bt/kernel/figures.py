"""A study trial's figures straight from the kernel loop's arrays, without building a result.

A study needs, per trial, only the headline metrics (:func:`m2k_bt.analyzers.metrics_from`:
net profit, return, CAGR, Sharpe, Sortino, Calmar, SQN, profit factor, win rate, trades, max
drawdown $ and %, expectancy) and the daily returns that DSR and PBO read
(:func:`m2k_bt.optimize.overfitting.daily_returns`). :func:`trial_figures` computes them from
the equity and trade arrays of :func:`m2k_bt.kernel.loop.run_loop`: the equity figures in one
compiled pass (:func:`equity_moments`), the trade figures from the closed trades' net P&L
rounded as the trade analyzer rounds it. No trade log, analyzer dict, equity frame or
:class:`~m2k_bt.engine.result.BacktestResult` is made; a trial a user opens (the best, a
fold's choice) is re-run in full by :func:`~m2k_bt.kernel.simulation.simulate` and cerebro.

The values are the analyzers' (:func:`~m2k_bt.analyzers.returns.returns_statistics`,
:func:`~m2k_bt.analyzers.trades.trade_statistics`) to 1e-12 relative: the sums the analyzers
make exactly (``math.fsum``, ``statistics.pstdev``) are made here with compensated (Neumaier)
sums, and numpy's pairwise sums as plain ones. ``tests/test_figures.py`` checks it on random
runs, and a study re-runs its best trial in cerebro and compares the objective (1e-9).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..analyzers.common import ROUND_DECIMALS, rounded
from ..analyzers.returns import periods_from_counts
from . import loop
from .data import KernelData

__all__ = ["trial_figures", "figures_from", "block_figures", "equity_moments", "daily_rows"]

_MINUTES, _DAYS = 4, 5  # bt.TimeFrame.Minutes, bt.TimeFrame.Days

# equity_moments' output slots
(M_END, M_MAX_DD, M_MAX_DD_PCT, M_MAX_RUN, M_NONPOS, M_MEAN, M_SD, M_DOWNSIDE,
 M_COUNT) = range(9)


@njit(cache=True)
def _neumaier_add(total, comp, x):
    t = total + x
    if abs(total) >= abs(x):
        comp += (total - t) + x
    else:
        comp += (x - t) + total
    return t, comp


@njit(cache=True)
def equity_moments(start, values, rf, ddof):
    """One pass over ``[start] + values`` (account value per bar): the figures
    :func:`~m2k_bt.analyzers.returns.returns_statistics` derives, unrounded, in an array
    indexed by ``M_*``: end value, max drawdown $, max drawdown % (of its peak, >= 0), the
    longest run of bars below a peak, whether any value is <= 0 (1.0/0.0), and of the per-bar
    excess returns ``v[t] / v[t-1] - 1 - rf``: their mean, standard deviation (``ddof``) and
    downside deviation (root mean square of the negative ones), and their count."""
    n = values.shape[0]
    out = np.zeros(9)
    out[M_END] = values[n - 1] if n else start
    peak = start
    max_dd = 0.0
    max_pct = 0.0
    run = 0
    max_run = 0
    nonpos = start <= 0.0
    # branch-free where the branch is unpredictable (max, select): the same values
    low = start
    for i in range(n):
        v = values[i]
        low = min(low, v)
        peak = max(peak, v)
        dd = peak - v
        max_dd = max(max_dd, dd)
        if peak > 0.0:
            max_pct = max(max_pct, dd * 100.0 / peak)
        run = run + 1 if dd > 0.0 else 0
        max_run = max(max_run, run)
    nonpos = nonpos or low <= 0.0
    out[M_MAX_DD] = max_dd
    out[M_MAX_DD_PCT] = max_pct
    out[M_MAX_RUN] = max_run
    out[M_NONPOS] = 1.0 if nonpos else 0.0
    out[M_COUNT] = n
    if nonpos or n < 2:
        return out
    # mean as math.fsum / n (compensated), deviation as numpy's (mean, then squares)
    total, comp = 0.0, 0.0
    plain = 0.0
    prev = start
    for i in range(n):
        r = values[i] / prev - 1.0 - rf
        prev = values[i]
        total, comp = _neumaier_add(total, comp, r)
        plain += r
    mean = (total + comp) / n
    mean_np = plain / n
    ss, ss_c = 0.0, 0.0
    down, down_c = 0.0, 0.0
    prev = start
    for i in range(n):
        r = values[i] / prev - 1.0 - rf
        prev = values[i]
        d = r - mean_np
        ss, ss_c = _neumaier_add(ss, ss_c, d * d)
        # a non-negative return adds 0.0, which leaves a Neumaier sum exactly as it is
        down, down_c = _neumaier_add(down, down_c, r * r if r < 0.0 else 0.0)
    out[M_MEAN] = mean
    out[M_SD] = math.sqrt((ss + ss_c) / (n - ddof)) if n > ddof else np.nan
    out[M_DOWNSIDE] = math.sqrt((down + down_c) / n)
    return out


def daily_rows(data: KernelData) -> tuple[np.ndarray, list[str]]:
    """The row of each CME trade date's last bar in ``data`` and the dates as ``YYYY-MM-DD``
    (a bar at or after 18:00 New York time belongs to the next day), computed once per data
    set: :func:`~m2k_bt.optimize.overfitting.daily_returns`' rule."""
    def make():
        day = (data.times + np.timedelta64(6, "h")).astype("datetime64[D]")
        codes = day.astype("int64")
        rows = np.flatnonzero(np.append(codes[1:] != codes[:-1], True)) if len(codes) else \
            np.zeros(0, dtype="int64")
        return rows, [str(d) for d in day[rows]]
    return data._get(("daily_rows",), make)


def _periods(data: KernelData) -> float:
    return data._get(("periods",), lambda: periods_from_counts(
        _MINUTES if data.intraday else _DAYS, data.compression, data.per_date()))


def _finite(x: float):
    return None if x is None or not math.isfinite(x) else float(x)


def trial_figures(data: KernelData, start_value: float, value: np.ndarray,
                  trades: np.ndarray) -> dict:
    """A trial's ``metrics`` (the keys of :func:`m2k_bt.analyzers.metrics_from`, undefined
    values None), ``final_value`` and ``returns`` (``{"YYYY-MM-DD": daily return}``) from the
    loop's per-bar ``value`` and ``trades`` rows (``loop.T_*`` columns)."""
    m = equity_moments(float(start_value), value, 0.0, 1)
    # closed trades (not the one still open at the end)
    closed = trades[trades[:, loop.T_REASON] != loop.R_END] if len(trades) else trades
    nets = closed[:, loop.T_NET] if len(closed) else np.zeros(0)
    rows, _ = daily_rows(data)
    return figures_from(data, start_value, m, len(value), nets, value[rows])


def figures_from(data: KernelData, start_value: float, m: np.ndarray, n_values: int,
                 nets: np.ndarray, day_values: np.ndarray) -> dict:
    """:func:`trial_figures` from what the compiled passes give: ``m`` (:func:`equity_moments`
    of the ``n_values`` bar values), the closed trades' net P&L ``nets`` (unrounded) and the
    account value at each trade date's last bar (``day_values``, :func:`daily_rows`)."""
    periods = _periods(data)
    end = float(m[M_END])
    years = n_values / periods if periods else 0.0
    cagr = sharpe = sortino = calmar = None
    if not m[M_NONPOS]:
        if years > 0:
            try:
                cagr = _finite((end / start_value) ** (1.0 / years) - 1.0)
            except OverflowError:
                cagr = None
        mean, sd, down = float(m[M_MEAN]), float(m[M_SD]), float(m[M_DOWNSIDE])
        if m[M_COUNT] >= 2:
            if sd > 0:
                sharpe = mean / sd * math.sqrt(periods)
            if down > 0:
                sortino = mean / down * math.sqrt(periods)
    max_pct = float(m[M_MAX_DD_PCT])
    if cagr is not None and max_pct > 0:
        calmar = cagr / (max_pct / 100.0)
    # net P&L as the analyzer rounds it
    net = [round(x, ROUND_DECIMALS) for x in nets.tolist()]
    n = len(net)
    wins = [x for x in net if x > 0]
    losses = [x for x in net if x < 0]
    gross_profit, gross_loss = sum(wins), sum(losses)
    sqn = None
    if n >= 2:
        mean = math.fsum(net) / n
        a = np.asarray(net)
        sd = math.sqrt(math.fsum(((a - a.mean()) ** 2).tolist()) / n)
        if sd > 0:
            sqn = math.sqrt(n) * mean / sd
    metrics = {
        "net_profit": rounded(end - start_value),
        "return_pct": rounded(100.0 * (end - start_value) / start_value, 8)
        if start_value else None,
        "cagr": cagr,
        "sharpe": _finite(sharpe),
        "sortino": _finite(sortino),
        "calmar": _finite(calmar),
        "sqn": _finite(sqn),
        "profit_factor": gross_profit / -gross_loss if losses and gross_loss else None,
        "win_rate": len(wins) / n if n else None,
        "trades": n,
        "max_drawdown": rounded(float(m[M_MAX_DD])),
        "max_drawdown_pct": rounded(max(0.0, max_pct), 8),
        "expectancy": rounded(sum(net) / n) if n else None,
    }
    _, dates = daily_rows(data)
    if len(day_values):
        prev = np.empty_like(day_values)
        prev[0] = start_value
        prev[1:] = day_values[:-1]
        rets = dict(zip(dates, (day_values / prev - 1.0).tolist()))
    else:
        rets = {}
    return {"metrics": metrics, "final_value": end, "returns": rets}


@njit(cache=True)
def block_figures(o, h, lw, c, ct, roll, inwin, sig, sig_i, xl, xl_i, xs, xs_i, al, al_i,
                  ash, ash_i, rth, rth_i, flw, flw_i, stp, stp_i, tgt, tgt_i, ev, ev_i, ext,
                  ext_i, ip, fp, starts, rows):
    """Many runs of :func:`m2k_bt.kernel.loop.run_loop` on one bar set in one call: run ``p``
    reads row ``sig_i[p]`` of ``sig`` (and so on for each per-run input: the distinct arrays
    of a block stacked once), ``ip[p]``, ``fp[p]`` and starts with ``starts[p]``. Returns per
    run its :func:`equity_moments` (rows of ``moments``), its value at the bars ``rows``
    (``day_values``), its closed trades' net P&L (``nets[offsets[p]:offsets[p + 1]]``) and
    the loop's divergence code (``codes``, 0: none; its other outputs are then not used)."""
    P = ip.shape[0]
    moments = np.zeros((P, 9))
    day_values = np.zeros((P, rows.shape[0]))
    codes = np.zeros(P, np.int64)
    offsets = np.zeros(P + 1, np.int64)
    nets = np.empty(256)
    k = 0
    for p in range(P):
        out = loop.run_loop(o, h, lw, c, ct, sig[sig_i[p]], xl[xl_i[p]], xs[xs_i[p]],
                            al[al_i[p]], ash[ash_i[p]], rth[rth_i[p]], flw[flw_i[p]], roll,
                            stp[stp_i[p]], tgt[tgt_i[p]], inwin, ev[ev_i[p]], ext[ext_i[p]],
                            ip[p], fp[p])
        value, trades, counters = out[0], out[3], out[6]
        codes[p] = counters[4]
        moments[p, :] = equity_moments(starts[p], value, 0.0, 1)
        for j in range(rows.shape[0]):
            day_values[p, j] = value[rows[j]]
        for r in range(trades.shape[0]):
            if trades[r, loop.T_REASON] != loop.R_END:
                if k == nets.shape[0]:
                    grown = np.empty(2 * k)
                    grown[:k] = nets
                    nets = grown
                nets[k] = trades[r, loop.T_NET]
                k += 1
        offsets[p + 1] = k
    return moments, day_values, nets[:k], offsets, codes
