#!/usr/bin/env python
"""The compiled kernel (m2k_bt.kernel) side by side with cerebro and vectorbt (issue 12).

One invocation measures, in this order, and prints a table::

    .venv/bin/python benchmarks/bench_kernel.py              # 1,000,000 one-minute bars
    .venv/bin/python benchmarks/bench_kernel.py --quick      # 100,000 bars, 6-point grid

1. kernel, SMA 50/200, FixedContracts(1): the first call in this process with the loop
   compiled from scratch (numba, no cache), then warm (best of ``--repeat``): the bar loop
   alone and ``simulate()`` end to end (indicators from scratch, trade log, equity curve,
   metrics).
2. kernel, the full default configuration (``BacktestConfig()``: SMA 50/200, KellySizer with
   paper trades, FuturesBroker margin checks, metrics), warm.
3. vectorbt ``Portfolio.from_signals`` on the same bars and the same SMA 50/200 long/short
   signal (entries at the next open are not modelled by it: it fills at the signal bar's
   close), first call and warm; skipped when vectorbt is not installed (benchmarks only).
4. trials per minute of a 24-point SMA grid (fast 10..60 x slow 100..250) on the bundled
   5-minute data, kernel (``simulate_many``, indicators shared) vs cerebro (``run_backtest``
   with ``analyzers=False``, as an optimisation trial), both single-process, with every
   trial's final equity and trade count checked equal.

The bars of 1-3 are ``bench_compare.cached_bars`` (seeded random walk on the tick grid, Globex
hours), generated once and cached under ``benchmarks/.cache/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_compare import cached_bars  # noqa: E402

from m2k_bt import _kernel_loop as loop  # noqa: E402
from m2k_bt.engine import BacktestConfig, run_backtest  # noqa: E402
from m2k_bt.kernel import prepare, simulate, simulate_many  # noqa: E402

BUNDLED = HERE.parent / "datafeeds" / "m2k_5min.csv.gz"


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


def vectorbt_rows(bars, repeat: int) -> list[tuple[str, float]]:
    try:
        import vectorbt as vbt
    except ImportError:
        return []
    close = bars["close"]
    fast = close.rolling(50).mean()
    slow = close.rolling(200).mean()
    above = (fast > slow).to_numpy()
    defined = slow.notna().to_numpy()
    entries = above & defined
    exits = ~above & defined

    def run():
        pf = vbt.Portfolio.from_signals(close, entries=entries, exits=exits,
                                        short_entries=exits, short_exits=entries,
                                        size=1, init_cash=25_000.0, fees=0.0, freq="1min")
        return float(pf.final_value())

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    warm, _ = best(run, repeat)
    return [("vectorbt from_signals SMA 50/200, first call", first),
            ("vectorbt from_signals SMA 50/200, warm", warm)]


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
    return [
        (f"{len(grid)}-point SMA grid, {len(bars):,} bundled 5-min bars: kernel", tk, note),
        (f"{len(grid)}-point SMA grid, {len(bars):,} bundled 5-min bars: cerebro", tc, note),
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
    rows.append(("kernel SMA 50/200 fixed, warm, simulate() end to end", t_sim,
                 f"{n / t_sim:,.0f} bars/s, {len(res.trades)} trades"))
    full_data = prepare(bars, full)
    t_full_loop = min(loop_only(full_data, full) for _ in range(args.repeat))
    rows.append(("kernel default config (Kelly, margin), warm, bar loop", t_full_loop,
                 f"{n / t_full_loop:,.0f} bars/s"))
    t_full, res = best(lambda: simulate(bars, full), args.repeat)
    rows.append(("kernel default config (Kelly, margin), warm, simulate()", t_full,
                 f"{n / t_full:,.0f} bars/s, {len(res.trades)} trades"))
    for name, secs in vectorbt_rows(bars, args.repeat):
        rows.append((name, secs, f"{n / secs:,.0f} bars/s"))
    if not args.no_grid:
        grid = grid_rows(6 if args.quick else 24)
        tk, tc = grid[0][1], grid[1][1]
        points = 6 if args.quick else 24
        rows.append((grid[0][0], tk, f"{points / tk * 60:,.0f} trials/min; {grid[0][2]}"))
        rows.append((grid[1][0], tc, f"{points / tc * 60:,.1f} trials/min; kernel "
                                     f"{tc / tk:,.0f}x"))
    print(f"\n{n:,} one-minute bars (1-3); bundled 5-minute data (4)\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'row':<{width}}  {'seconds':>9}  figure")
    for name, secs, note in rows:
        print(f"{name:<{width}}  {secs:>9.3f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
