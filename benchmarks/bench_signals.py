#!/usr/bin/env python
"""A user's signal strategy (issue 22): the article's SMA snippet as a signal function, in the
kernel, against the built-in SMA and cerebro.

::

    .venv/bin/python benchmarks/bench_signals.py            # 1,000,000 bars; grids 20/200
    .venv/bin/python benchmarks/bench_signals.py --quick    # 100,000 bars; grids 10/40

1. One backtest on ``--bars`` one-minute bars (``bench_compare.cached_bars``), SMA 50/200,
   FixedContracts(1): the signal function alone (pandas), the look-ahead check alone (8
   cuts), ``simulate()`` end to end with the check and without it, and the compiled bar loop
   alone, for the user's function and for the built-in ``SmaCrossover`` (bars/s, warm, best
   of ``--repeat``). The two make the same trades (checked).
2. The bar loop alone on one quarter of the bundled 5-minute data (``--start``..``--end``),
   built-in SMA, FixedContracts(1), at both ends of a grid with many trades (fast 10 / slow
   250 and 90 / 340): best of ``--repeat`` x 100 calls.
3. A grid study through the command line, end to end, as a user runs it
   (``run_backtest.py optimize --strategy FILE:sma_cross --sampler grid --workers 1``, one
   quarter of the bundled 5-minute data): a small and a large grid for the kernel, two small
   ones for cerebro; the per-trial cost is the slope between the two (start-up, data
   loading, the cerebro check of the winner, DSR/PBO and outputs cancel out). Each kernel
   trial computes the user's signal for its parameters; the look-ahead check runs once per
   study (before the trials, and again on the winner), so it is in the fixed cost, which
   is printed too.

Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_compare import cached_bars  # noqa: E402
from bench_kernel import BUNDLED, best, loop_only  # noqa: E402

from m2k_bt.engine import BacktestConfig  # noqa: E402
from m2k_bt.kernel.simulation import prepare, simulate  # noqa: E402
from m2k_bt.strategies import check_lookahead, signal_strategy  # noqa: E402

SNIPPET = textwrap.dedent('''
    import numpy as np


    def sma_cross(bars, fast=50, slow=200):
        df = bars
        df["SMA_fast"] = df["close"].rolling(window=fast).mean()
        df["SMA_slow"] = df["close"].rolling(window=slow).mean()
        df["Signal"] = np.where(df["SMA_fast"] > df["SMA_slow"], 1, -1)
        df.loc[df["SMA_slow"].isna(), "Signal"] = np.nan
        return df
''')


_NAMESPACE: dict = {}
exec(SNIPPET, _NAMESPACE)  # the function the CLI grids load from a file, as written there
sma_cross = _NAMESPACE["sma_cross"]


def one_backtest(n: int, repeat: int) -> list[tuple[str, str]]:
    bars = cached_bars(n)
    rows = []
    user = BacktestConfig(strategy=sma_cross, sizer="fixed")
    unchecked = user.replace(params={"lookahead_check": False})
    builtin = BacktestConfig(strategy="sma", sizer="fixed")
    t, _ = best(lambda: sma_cross(bars.copy(deep=False)), repeat)
    rows.append(("signal function alone (pandas)", f"{t * 1e3:8.1f} ms"))
    t, report = best(lambda: check_lookahead(sma_cross, bars), repeat)
    rows.append((f"look-ahead check ({report['cuts']} cuts)", f"{t * 1e3:8.1f} ms"))
    simulate(prepare(bars, user), user)  # compile / warm
    for label, config in (("user signal", user), ("user signal, no check", unchecked),
                          ("built-in SmaCrossover", builtin)):
        def run(config=config):
            return simulate(prepare(bars, config), config)  # signal computed afresh each time
        t, res = best(run, repeat)
        rows.append((f"simulate end to end: {label}", f"{n / t / 1e6:8.2f} M bars/s "
                     f"({t:.2f} s, {len(res.trades)} trades)"))
    a = simulate(bars, user)
    b = simulate(bars, builtin)
    same = [(x["entry_dt"], x["exit_dt"], x["net_pnl"]) for x in a.trades] == \
        [(x["entry_dt"], x["exit_dt"], x["net_pnl"]) for x in b.trades]
    rows.append(("user signal's trades == built-in's (float SMAs vs exact ticks: ties "
                 "may differ)", f"{same} ({len(a.trades)} vs {len(b.trades)} trades)"))
    data = prepare(bars, user)
    for label, config in (("user signal", user), ("built-in SmaCrossover", builtin)):
        t = min(loop_only(data, config) for _ in range(repeat))
        rows.append((f"bar loop alone: {label}", f"{n / t / 1e6:8.2f} M bars/s"))
    assert signal_strategy(sma_cross)
    return rows


def quarter_loop(start: str, end: str, repeat: int) -> list[tuple[str, str]]:
    from m2k_bt.feeds import load_bars

    bars = load_bars(BUNDLED).loc[start:end]
    rows = []
    for fast, slow in ((10, 250), (90, 340)):
        config = BacktestConfig(strategy="sma", sizer="fixed", params={"fast": fast, "slow": slow})
        data = prepare(bars, config)
        trades = len(simulate(data, config).trades)
        t = min(loop_only(data, config) for _ in range(repeat * 100))
        rows.append((f"bar loop alone, {len(bars):,} 5-min bars, built-in SMA {fast}/{slow}",
                     f"{t * 1e3:8.3f} ms ({trades} trades)"))
    return rows


def cli_grid(folder: Path, strategy: str, engine: str, fast: list[int], slow: list[int],
             start: str, end: str) -> float:
    space = ["fast=" + ",".join(map(str, fast)), "slow=" + ",".join(map(str, slow))]
    out = folder / f"{engine}-{len(fast) * len(slow)}-{strategy.rpartition(':')[2]}"
    cmd = [sys.executable, str(ROOT / "run_backtest.py"), "optimize", "--strategy", strategy,
           "--space", *space, "--sampler", "grid", "--engine", engine, "--workers", "1",
           "--sizer", "fixed", "--min-trades", "0", "--start", start, "--end", end,
           "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def grids(quick: bool, start: str, end: str) -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "mine.py").write_text(SNIPPET)
        user = f"{folder / 'mine.py'}:sma_cross"
        small = ([10, 20], [100, 150, 200, 250, 300][: 5 if not quick else 5])
        large_n = 40 if quick else 200
        fast_l = list(range(10, 10 + 2 * (large_n // 10), 2))[: large_n // 10]
        large = (fast_l, [100, 120, 140, 160, 180, 200, 220, 240, 260, 280])
        slopes = {}
        for label, strategy in (("user signal", user), ("built-in sma", "sma")):
            a = cli_grid(folder, strategy, "kernel", *small, start, end)
            b = cli_grid(folder, strategy, "kernel", *large, start, end)
            na, nb = len(small[0]) * len(small[1]), len(large[0]) * len(large[1])
            slope = (b - a) / (nb - na)
            slopes[label] = slope
            rows.append((f"kernel CLI grid, {label}: {na} pts / {nb} pts",
                         f"{a:6.1f} s / {b:6.1f} s; {slope * 1e3:7.1f} ms per trial, "
                         f"fixed {a - na * slope:4.1f} s"))
        a = cli_grid(folder, user, "cerebro", [10], [100, 200], start, end)
        b = cli_grid(folder, user, "cerebro", [10, 20, 30], [100, 200], start, end)
        slope = (b - a) / 4
        rows.append(("cerebro CLI grid, user signal: 2 pts / 6 pts",
                     f"{a:6.1f} s / {b:6.1f} s; {slope * 1e3:7.1f} ms per trial"))
        rows.append(("per-trial: cerebro / kernel (user signal)",
                     f"{slope / slopes['user signal']:7.0f} x"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bars", type=int)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--start", default="2024-01-01")
    ap.add_argument("--end", default="2024-03-31")
    ap.add_argument("--skip-grid", action="store_true")
    args = ap.parse_args(argv)
    n = args.bars or (100_000 if args.quick else 1_000_000)
    rows = one_backtest(n, args.repeat)
    rows += quarter_loop(args.start, args.end, args.repeat)
    if not args.skip_grid:
        rows += grids(args.quick, args.start, args.end)
    width = max(len(k) for k, _ in rows)
    print(f"bench_signals: {n:,} bars for the single backtest; grids on {args.start}.."
          f"{args.end} of the bundled 5-minute data")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
