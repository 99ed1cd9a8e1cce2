#!/usr/bin/env python
"""A parameter grid in the kernel side by side with vectorbt's broadcast grid (issue #23).

vectorbt is not a dependency of the pack: run this with a benchmark-only venv that has it and
the project installed (the kernel rows run in the project's ``.venv``), e.g.::

    python3 -m venv /tmp/vbt && /tmp/vbt/bin/pip install vectorbt -e .
    /tmp/vbt/bin/python benchmarks/bench_vbt_grid.py            # 800 points, one quarter
    /tmp/vbt/bin/python benchmarks/bench_vbt_grid.py --repeat 5

The grid: SMA crossover ``fast`` 10..89 x ``slow`` 250..340 step 10 (800 points), long/short,
one contract (``FixedContracts(1)``), on one quarter of the bundled 5-minute bars (2024-01-01
.. 2024-03-31, 17,547 bars). Each row runs in its own child process (peak RSS is that
child's), warm: every compiled function is called once first, then the best of ``--repeat``
is kept.

1. **kernel, figures of every point** (what a study trial computes: the loop, the headline
   metrics and the daily returns; :func:`m2k_bt.kernel.run_figures_many` in blocks of
   ``KERNEL_BATCH`` points, one compiled call a block, as a study runs them), one process.
2. **kernel study in process**: ``optimize(..., sampler="grid", workers=1)`` on the same grid,
   end to end as a library user calls it: Optuna study in memory, DSR and PBO, the winner
   re-run in cerebro (fixed cost included, so this row is per point of this grid).
3. **vectorbt broadcast grid**: ``vbt.MA.run`` with the window of each of the 800 columns
   (fast and slow lists), ``fast.ma_above(slow)``, long/short signals shifted one bar, one
   ``Portfolio.from_signals(close, long, short, direction="both", price=open, size=1)`` call
   over all columns, then ``final_value()`` of every column; and the same with
   ``sharpe_ratio()`` of every column too (a study needs an objective per point; the
   kernel's rows compute Sharpe, Sortino, Calmar, SQN and the rest for every point).

The check: vectorbt's float means tie differently from the kernel's exact tick sums on a few
bars, so the same ``from_signals`` call is also given the kernel's exact signals for a sample
of points, and vectorbt's gross P&L x 5 (one M2K contract is $5 a point; no fees) must equal
the kernel's (``commission=0``) to the cent: the row says how many of the sample agree.
Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

FAST = list(range(10, 90))
SLOW = list(range(250, 341, 10))
TICK = 0.1
START, END = "2024-01-01", "2024-03-31"


def _bars():
    from m2k_bt.engine import BacktestConfig, select_bars
    from m2k_bt.feeds import load_bars

    bars = load_bars(str(ROOT / "datafeeds" / "m2k_5min.csv.gz"))
    return select_bars(bars, BacktestConfig(start=START, end=END))


def _config(**kw):
    from m2k_bt.engine import BacktestConfig

    return BacktestConfig(strategy="sma", sizer="fixed", sizer_params={"contracts": 1},
                          analyzers=False, **kw)


def _best(fn, repeat: int):
    fn()
    out, best = None, float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def part_figures(repeat: int) -> dict:
    from m2k_bt.kernel import run_figures_many, shared_bars
    from m2k_bt.optimize.drivers import KERNEL_BATCH
    from m2k_bt.optimize.trial import _trial_plan

    bars, config = _bars(), _config()
    points = [{"fast": f, "slow": s} for f in FAST for s in SLOW]

    def run():  # in blocks, as a study's process claims and runs them
        with shared_bars(bars):
            plans = [_trial_plan(config, p) for p in points]
            return [f["final_value"] for k in range(0, len(plans), KERNEL_BATCH)
                    for f in run_figures_many(bars, plans[k:k + KERNEL_BATCH])]

    t, finals = _best(run, repeat)
    return {"seconds": t, "points": len(points), "sample": finals[:3]}


def part_study(repeat: int) -> dict:
    from m2k_bt.optimize import optimize

    bars, config = _bars(), _config()
    space = [f"fast={FAST[0]}:{FAST[-1]}:1", f"slow={SLOW[0]}:{SLOW[-1]}:10"]

    def run():
        return optimize(bars, config, space, sampler="grid", workers=1, quiet=True,
                        min_trades=0)

    t, res = _best(run, repeat)
    return {"seconds": t, "points": res.n_complete + res.n_infeasible}


def part_vbt(repeat: int) -> dict:
    import vectorbt as vbt

    bars = _bars()
    naive = bars.tz_localize(None)  # vectorbt on a tz-aware index builds a Timestamp per bar
    close, open_ = naive["close"], naive["open"]
    pairs = [(f, s) for f in FAST for s in SLOW]

    def portfolio():
        # one MA column per point (vectorbt runs each distinct window once and tiles it)
        fast = vbt.MA.run(close, window=[f for f, _ in pairs], short_name="fast")
        slow = vbt.MA.run(close, window=[s for _, s in pairs], short_name="slow")
        above = fast.ma_above(slow)
        below = ~above & slow.ma.notna().to_numpy()  # short once slow is defined (tie: short)
        return vbt.Portfolio.from_signals(
            close, entries=above.vbt.signals.fshift(1), exits=below.vbt.signals.fshift(1),
            direction="both", price=open_, size=1, init_cash=25_000.0, freq="5min")

    def run_final():
        return portfolio().final_value().to_numpy()

    def run():
        pf = portfolio()
        return pf.final_value().to_numpy(), pf.sharpe_ratio().to_numpy()

    t_final, _ = _best(run_final, repeat)
    t, _ = _best(run, repeat)
    check = _check_vbt(vbt, bars, close, open_)
    return {"seconds": t, "seconds_final": t_final, "points": len(pairs),
            "version": vbt.__version__, **check}


def _check_vbt(vbt, bars, close, open_) -> dict:
    """vectorbt on the kernel's exact signals, for a sample of points: gross P&L x 5 against
    the kernel's, to the cent."""
    import pandas as pd

    from m2k_bt.kernel import simulate

    n = len(close)
    ticks = np.rint(close.to_numpy() / TICK).astype(np.int64)
    cum = np.concatenate(([0], np.cumsum(ticks)))
    i = np.arange(n)
    sample = [(10, 250), (25, 300), (47, 340), (89, 270), (60, 310)]
    agree = 0
    for f, s in sample:
        s_fast = cum[i + 1] - cum[np.maximum(i + 1 - f, 0)]
        s_slow = cum[i + 1] - cum[np.maximum(i + 1 - s, 0)]
        above = (s_fast * s > s_slow * f) & (i >= s - 1)
        below = ~above & (i >= s - 1)
        pf = vbt.Portfolio.from_signals(
            close, entries=pd.Series(above, index=close.index).shift(1, fill_value=False),
            exits=pd.Series(below, index=close.index).shift(1, fill_value=False),
            direction="both", price=open_, size=1, init_cash=25_000.0, freq="5min")
        gross_vbt = (float(pf.final_value()) - 25_000.0) * 5.0
        res = simulate(bars, _config(commission=0.0, params={"fast": f, "slow": s}))
        gross_k = sum(t["gross_pnl"] for t in res.trades)
        agree += abs(gross_vbt - gross_k) < 0.005
    return {"sample": len(sample), "agree": agree}


PARTS = {"figures": part_figures, "study": part_study, "vbt": part_vbt}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        out = PARTS[args.part](args.repeat)
        import resource

        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("@@" + json.dumps(out))
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    project = ROOT / ".venv" / "bin" / "python"  # the kernel rows in the project's venv
    pythons = {"figures": str(project) if project.exists() else sys.executable,
               "study": str(project) if project.exists() else sys.executable,
               "vbt": sys.executable}
    print(f"grid: fast {FAST[0]}..{FAST[-1]} x slow {SLOW[0]}..{SLOW[-1]} step 10 "
          f"({len(FAST) * len(SLOW)} points), {START} .. {END} of the bundled 5-minute bars; "
          f"best of {args.repeat}; load average {os.getloadavg()[0]:.2f}")
    rows = {}
    for name in ("figures", "study", "vbt"):
        proc = subprocess.run([pythons[name], __file__, "--part", name, "--repeat",
                               str(args.repeat)], env=env, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("@@")]
        if proc.returncode or not line:
            print(f"{name}: failed: {proc.stderr.strip()[-800:]}")
            continue
        rows[name] = json.loads(line[0][2:])
    labels = {
        "figures": "kernel, every point's figures (run_figures_many, blocks of 32)",
        "study": "kernel, optimize() in process (study, DSR/PBO, cerebro check)",
        "vbt": "vectorbt broadcast grid (MA, from_signals, final value, Sharpe)",
    }
    print("| row | s | ms / point | points / s | peak MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        label = labels[name] + (f" {r['version']}" if "version" in r else "")
        if "seconds_final" in r:
            t = r["seconds_final"]
            print(f"| vectorbt broadcast grid (MA, from_signals, final value) {r['version']} "
                  f"| {t:.2f} | {1000 * t / r['points']:.2f} | {r['points'] / t:,.0f} | |")
        print(f"| {label} | {r['seconds']:.2f} | {1000 * r['seconds'] / r['points']:.2f} "
              f"| {r['points'] / r['seconds']:,.0f} | {r['peak_mb']:.0f} |")
    if "vbt" in rows:
        v = rows["vbt"]
        print(f"check: on the kernel's exact signals, vectorbt's gross P&L equals the kernel's "
              f"to the cent on {v['agree']} of {v['sample']} sampled points")
    if "vbt" in rows and "figures" in rows:
        print(f"per point, kernel figures vs vectorbt: "
              f"{rows['vbt']['seconds_final'] / rows['figures']['seconds']:.2f}x faster than "
              f"its final values alone, "
              f"{rows['vbt']['seconds'] / rows['figures']['seconds']:.2f}x with its Sharpe")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
