#!/usr/bin/env python
"""The compiled kernel (m2k_bt.kernel) side by side with cerebro and vectorbt (issue 12).

One invocation measures, in this order, and prints a table::

    .venv/bin/python benchmarks/bench_kernel.py              # 1,000,000 one-minute bars
    .venv/bin/python benchmarks/bench_kernel.py --quick      # 100,000 bars, 6-point grid

1. kernel, SMA 50/200, FixedContracts(1): the first call in this process with the loop
   compiled from scratch (numba, no cache), then warm (best of ``--repeat``): the bar loop
   alone and ``simulate()`` end to end (indicators from scratch, trade log, equity curve,
   metrics), and the peak memory of one ``simulate()`` beyond the bars (``tracemalloc``).
2. kernel, the full default configuration (``BacktestConfig()``: SMA 50/200, KellySizer with
   paper trades, FuturesBroker margin checks, metrics), warm.
3. vectorbt ``Portfolio.from_signals`` on the same bars and the same SMA 50/200 long/short
   reversal, one unit, the signals shifted one bar and filled at the open so that it makes
   the kernel's trades (checked): first call, then warm, timed apart: (a) building the
   signals, (b) ``from_signals`` (and the numba simulation inside it), (c) reading the final
   value and total return; plus (b)+(c) with the bars' tz-aware index, which costs vectorbt a
   ``Timestamp`` object per bar (see :func:`vectorbt_rows`). Skipped when vectorbt is not
   installed (a benchmark-only package, in a venv of its own).
4. trials per minute of a 24-point SMA grid (fast 10..60 x slow 100..250) on the bundled
   5-minute data, kernel (``simulate_many``, indicators shared) vs cerebro (``run_backtest``
   with ``analyzers=False``, as an optimisation trial), both single-process, with every
   trial's final equity and trade count checked equal; then the same grid as the user runs
   it, ``optimize()`` in the kernel (Optuna grid study, ``study.db`` in an output folder,
   DSR and PBO), and the cerebro re-run of its winner that ``optimize`` makes to verify.

The bars of 1-3 are ``bench_compare.cached_bars`` (seeded random walk on the tick grid, Globex
hours), generated once and cached under ``benchmarks/.cache/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_compare import cached_bars  # noqa: E402

from m2k_bt.engine import BacktestConfig, run_backtest  # noqa: E402
from m2k_bt.kernel import loop  # noqa: E402
from m2k_bt.kernel.simulation import prepare, simulate, simulate_many  # noqa: E402

BUNDLED = HERE.parent / "datafeeds" / "m2k_5min.csv.gz"
TICK = 0.10  # M2K minimum price fluctuation, index points


def best(fn, repeat: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def loop_only(data, config) -> float:
    """Seconds of the compiled bar loop alone for ``config`` (arguments built beforehand)."""
    captured = {}
    real = loop.run_loop

    def spy(*args):
        captured["args"] = args
        return real(*args)

    loop.run_loop = spy
    try:
        simulate(data, config)
    finally:
        loop.run_loop = real
    t0 = time.perf_counter()
    real(*captured["args"])
    return time.perf_counter() - t0


def simulate_memory(bars, config) -> tuple[int, int]:
    """Bytes allocated at the peak of one warm ``simulate(bars, config)`` beyond what was
    allocated before it (the bars, the compiled kernel), and the bytes its result keeps
    (``tracemalloc``, which sees numpy's and the compiled kernel's arrays)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        res = simulate(bars, config)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del res
    return peak - base, kept - base


def first_call_compiled(data, config) -> float:
    """Seconds of a first call with the loop compiled from scratch (a fresh dispatcher with
    no disk cache), as on a machine that never ran the kernel."""
    import numba

    fresh = numba.njit(cache=False)(loop.run_loop.py_func)
    real = loop.run_loop
    loop.run_loop = fresh
    try:
        t0 = time.perf_counter()
        simulate(data, config)
        return time.perf_counter() - t0
    finally:
        loop.run_loop = real


def vectorbt_rows(bars, repeat: int, kernel_trades: list) -> list[tuple[str, float, str]]:
    """vectorbt running the kernel's SMA 50/200 long/short reversal, one unit, on the same
    bars, the way a vectorbt user would write it, timed in parts (warm: best of ``repeat``,
    every numba function already compiled by a first call):

    (a) signals: pandas rolling means 50 and 200, long while fast is above slow, short
        otherwise once slow is defined (a tie is short, as in the kernel), shifted one bar so
        that the signal of a bar's close is traded at the next bar's open; also timed with
        vectorbt's own ``vbt.MA.run`` (not used further). Both are float means: where the two
        averages are equal on the 0.10 grid (the kernel decides that exactly, in whole ticks,
        as "not above") they come out a hair apart, so a few ties go the other way (pandas'
        compensated rolling sum: a handful per million bars; vbt.MA's running sum drifts by
        ~1e-9: several times as many). The rows count those bars;
    (b) ``Portfolio.from_signals(close, long, short, direction="both", price=open, size=1)``
        (a short signal while long reverses the position: vectorbt's default
        ``upon_opposite_entry="reversereduce"``), and inside it the numba simulation alone;
    (c) ``pf.final_value()`` and ``pf.total_return()`` on a fresh portfolio (both are cached
        on the portfolio object, so a repeat on the same one would time a dictionary look-up).

    vectorbt is given the bars with New York wall-clock times (a naive index). With the
    bars' tz-aware index instead, every wrap of an array into pandas runs
    ``np.asarray(index)`` just to compare lengths (``checks.assert_shape_equal``), which for a
    tz-aware index builds one ``Timestamp`` object per bar: 2-3 s per million bars here,
    twice per run (the portfolio's constructor and ``final_value``). The last row shows that
    cost; it is what an earlier version of this benchmark timed.

    One unit of the index at $1 a point is a fifth of an M2K contract ($5 a point) and no
    fees are charged, so the check is on the trades: vectorbt's trade count and gross P&L x 5
    against the kernel's trade log. The timed signals differ from the kernel's at those ties;
    the same ``from_signals`` call on the kernel's exact tick-sum signals (untimed) must make
    the kernel's trades, and the (b) row says whether it does.
    """
    try:
        import vectorbt as vbt
        from vectorbt.portfolio import dispatch
    except ImportError:
        return []
    try:
        from vectorbt._engine import is_rust_available

        engine = "rust" if is_rust_available() else "numba"
    except ImportError:  # private module; only used to label the rows
        engine = "numba"
    n = len(bars)
    naive = bars.tz_localize(None)  # New York wall-clock times, the same bars
    close, open_ = naive["close"], naive["open"]

    def signals():
        fast, slow = close.rolling(50).mean(), close.rolling(200).mean()
        above = fast > slow  # False where either average is undefined
        below = ~above & slow.notna()
        return above.shift(1, fill_value=False), below.shift(1, fill_value=False)

    def signals_vbt():
        fast, slow = vbt.MA.run(close, 50), vbt.MA.run(close, 200)
        above = fast.ma_above(slow)
        below = ~above & slow.ma.notna()
        return above.vbt.signals.fshift(1), below.vbt.signals.fshift(1)

    def exact_above():  # the kernel's rule in whole ticks: sum_fast * slow > sum_slow * fast
        ticks = np.rint(close.to_numpy() / TICK).astype(np.int64)
        cum = np.concatenate(([0], np.cumsum(ticks)))
        i = np.arange(n)
        s_fast = cum[i + 1] - cum[np.maximum(i + 1 - 50, 0)]
        s_slow = cum[i + 1] - cum[np.maximum(i + 1 - 200, 0)]
        return (s_fast * 200 > s_slow * 50) & (i >= 199)

    def portfolio(long_, short, close=close, open_=open_):
        return vbt.Portfolio.from_signals(close, entries=long_, exits=short, direction="both",
                                          price=open_, size=1, init_cash=25_000.0, freq="1min")

    def read(pf):
        return float(pf.final_value()), float(pf.total_return())

    t0 = time.perf_counter()
    pf = portfolio(*signals())
    read(pf)
    first = time.perf_counter() - t0
    signals_vbt()  # compiles vbt.MA's numba functions
    t_vbt, (long_vbt, _) = best(signals_vbt, repeat)

    t_sig = t_pf = t_read = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        long_, short = signals()
        t1 = time.perf_counter()
        pf = portfolio(long_, short)
        t2 = time.perf_counter()
        final, total_return = read(pf)
        t3 = time.perf_counter()
        t_sig, t_pf, t_read = min(t_sig, t1 - t0), min(t_pf, t2 - t1), min(t_read, t3 - t2)

    captured = {}
    real = dispatch.simulate_from_signals

    def spy(*args, **kwargs):
        captured["call"] = (args, kwargs)
        return real(*args, **kwargs)

    dispatch.simulate_from_signals = spy
    try:
        portfolio(long_, short)
    finally:
        dispatch.simulate_from_signals = real
    args, kwargs = captured["call"]
    t_sim = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        real(*args, **kwargs)
        t_sim = min(t_sim, time.perf_counter() - t0)

    tz_long = pd.Series(long_.to_numpy(), index=bars.index)
    tz_short = pd.Series(short.to_numpy(), index=bars.index)
    t_tz = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        read(portfolio(tz_long, tz_short, close=bars["close"], open_=bars["open"]))
        t_tz = min(t_tz, time.perf_counter() - t0)

    exact = exact_above()
    ties = int((long_.to_numpy()[1:] != exact[:-1]).sum())
    ties_vbt = int((long_vbt.to_numpy()[1:] != exact[:-1]).sum())
    trades = int(pf.trades.count())
    gross = (final - 25_000.0) * 5.0  # $ for one M2K contract
    k_trades, k_gross = len(kernel_trades), sum(t["gross_pnl"] for t in kernel_trades)
    defined = np.arange(n) >= 199
    pf_x = portfolio(pd.Series(exact, index=close.index).shift(1, fill_value=False),
                     pd.Series(~exact & defined, index=close.index).shift(1, fill_value=False))
    x_trades, x_gross = int(pf_x.trades.count()), (float(pf_x.final_value()) - 25_000.0) * 5.0
    same = x_trades == k_trades and abs(x_gross - k_gross) < 0.01
    parity = (f"on the kernel's exact signals: its {k_trades:,} trades, gross ${k_gross:,.2f}"
              if same else f"on the kernel's exact signals TRADES DIFFER: {x_trades:,} vs "
              f"{k_trades:,}, gross ${x_gross:,.2f} vs ${k_gross:,.2f}")
    warm = t_sig + t_pf + t_read
    label = f"vectorbt {vbt.__version__} ({engine})"
    return [
        (f"{label}: first call in this process, (a)+(b)+(c)", first,
         f"{n / first:,.0f} bars/s (numba compiles, or loads its disk cache)"),
        (f"{label}, warm: (a) signals, pandas rolling 50/200, shifted", t_sig,
         f"{n / t_sig:,.0f} bars/s; {ties} ties decided apart from the kernel"),
        (f"{label}, warm: (a) the same with vbt.MA (not used)", t_vbt,
         f"{n / t_vbt:,.0f} bars/s; {ties_vbt} ties decided apart from the kernel"),
        (f"{label}, warm: (b) Portfolio.from_signals", t_pf,
         f"{n / t_pf:,.0f} bars/s, {trades:,} trades (gross ${gross:,.2f}); {parity}"),
        (f"{label}, warm: (b) of which the numba simulation", t_sim, f"{n / t_sim:,.0f} bars/s"),
        (f"{label}, warm: (c) final_value + total_return", t_read,
         f"total return {total_return:.6f}"),
        (f"{label}, warm: (a)+(b)+(c), sum of the three", warm, f"{n / warm:,.0f} bars/s"),
        (f"{label}, warm: (b)+(c) with the tz-aware index", t_tz,
         f"{n / t_tz:,.0f} bars/s (a Timestamp per bar, twice)"),
    ]


def grid_rows(points: int) -> list[tuple[str, float, str]]:
    from m2k_bt.feeds import load_bars

    bars = load_bars(BUNDLED)
    fasts = (10, 20, 30, 40, 50, 60)
    slows = (100, 150, 200, 250)
    grid = [BacktestConfig(strategy="sma", sizer="fixed", analyzers=False,
                           params={"fast": f, "slow": s}) for f in fasts for s in slows][:points]
    simulate(bars.iloc[:5000], grid[0])  # load the compiled loop once
    t0 = time.perf_counter()
    kernel = simulate_many(bars, grid)
    tk = time.perf_counter() - t0
    t0 = time.perf_counter()
    cerebro = [run_backtest(bars, c) for c in grid]
    tc = time.perf_counter() - t0
    same = all(abs(a.final_value - b.final_value) < 0.005 and len(a.trades) == len(b.trades)
               for a, b in zip(cerebro, kernel))
    note = "identical final equity and trade counts" if same else "RESULTS DIFFER"
    # the optimiser a user runs: an Optuna grid study in the kernel, study.db in --out (written
    # in batches), DSR and PBO; the cerebro re-run of the winner is timed on its own
    import tempfile

    from m2k_bt.optimize import optimize

    base = BacktestConfig(strategy="sma", sizer="fixed")
    space = [f"fast={','.join(map(str, fasts))}", f"slow={','.join(map(str, slows))}"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        study = optimize(bars, base, space, sampler="grid", trials=points, min_trades=0,
                         out=Path(tmp) / "opt", quiet=True, verify=False)
        to = time.perf_counter() - t0
    by_params = {(c.params["fast"], c.params["slow"]): k for c, k in zip(grid, kernel)}
    study_same = all(
        abs(r["net_profit"] - (by_params[(r["param_fast"], r["param_slow"])].final_value
                               - base.cash)) < 0.005
        for r in study.trials.to_dict("records"))
    best = base.replace(params=study.best_params)
    t0 = time.perf_counter()
    run_backtest(bars, best.replace(analyzers=False))
    tv = time.perf_counter() - t0
    n = len(bars)
    return [
        (f"{len(grid)}-point SMA grid, {n:,} bundled 5-min bars: kernel simulate_many", tk, note),
        (f"{len(grid)}-point SMA grid, {n:,} bundled 5-min bars: cerebro run_backtest", tc, note),
        (f"{len(grid)}-point SMA grid: optimize() study in the kernel (Optuna, study.db, "
         f"DSR, PBO)", to, "same net profit per point as simulate_many" if study_same
         else "STUDY DIFFERS FROM simulate_many"),
        ("  + the winner re-run in cerebro (optimize's verification)", tv, ""),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 bars and a 6-point grid")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-grid", action="store_true", help="skip the cerebro grid (slow)")
    args = ap.parse_args(argv)
    n = 100_000 if args.quick else args.bars
    bars = cached_bars(n)
    n = len(bars)
    sma = BacktestConfig(strategy="sma", sizer="fixed", params={"fast": 50, "slow": 200})
    full = BacktestConfig()
    rows: list[tuple[str, float, str]] = []

    data = prepare(bars, sma)
    t_first = first_call_compiled(data, sma)
    rows.append(("kernel SMA 50/200 fixed, first call (loop compiled, no cache)", t_first,
                 f"{n / t_first:,.0f} bars/s"))
    simulate(data, sma)  # the cached loop, loaded
    t_loop = min(loop_only(data, sma) for _ in range(args.repeat))
    rows.append(("kernel SMA 50/200 fixed, warm, bar loop", t_loop, f"{n / t_loop:,.0f} bars/s"))
    t_sim, res = best(lambda: simulate(bars, sma), args.repeat)
    sma_trades = res.trades
    rows.append(("kernel SMA 50/200 fixed, warm, simulate() end to end", t_sim,
                 f"{n / t_sim:,.0f} bars/s, {len(res.trades)} trades"))
    peak, kept = simulate_memory(bars, sma)
    rows.append(("kernel SMA 50/200 fixed, simulate() peak memory beyond the bars", 0.0,
                 f"{peak / n:,.1f} bytes a bar at the peak, {kept / n:,.1f} kept by the "
                 f"result (tracemalloc)"))
    full_data = prepare(bars, full)
    t_full_loop = min(loop_only(full_data, full) for _ in range(args.repeat))
    rows.append(("kernel default config (Kelly, margin), warm, bar loop", t_full_loop,
                 f"{n / t_full_loop:,.0f} bars/s"))
    t_full, res = best(lambda: simulate(bars, full), args.repeat)
    rows.append(("kernel default config (Kelly, margin), warm, simulate()", t_full,
                 f"{n / t_full:,.0f} bars/s, {len(res.trades)} trades"))
    rows.extend(vectorbt_rows(bars, args.repeat, sma_trades))
    if not args.no_grid:
        grid = grid_rows(6 if args.quick else 24)
        tk, tc = grid[0][1], grid[1][1]
        points = 6 if args.quick else 24
        rows.append((grid[0][0], tk, f"{points / tk * 60:,.0f} trials/min; {grid[0][2]}"))
        rows.append((grid[1][0], tc, f"{points / tc * 60:,.1f} trials/min; kernel "
                                     f"{tc / tk:,.0f}x"))
        to, tv = grid[2][1], grid[3][1]
        rows.append((grid[2][0], to, f"{points / to * 60:,.0f} trials/min, {tc / to:,.0f}x "
                                     f"cerebro; {grid[2][2]}"))
        rows.append((grid[3][0], tv, f"study + verification {points / (to + tv) * 60:,.0f} "
                                     f"trials/min, {tc / (to + tv):,.0f}x cerebro"))
    print(f"\n{n:,} one-minute bars (1-3); bundled 5-minute data (4)\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'row':<{width}}  {'seconds':>9}  figure")
    for name, secs, note in rows:
        print(f"{name:<{width}}  {secs:>9.3f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
