#!/usr/bin/env python
"""Optimisation throughput: the per-trial cost of a study (issue #23) and trials per minute
with 1 and 2 local workers (issue #6).

::

    .venv/bin/python benchmarks/bench_optimize.py                  # slope: 200 and 2,000 points
    .venv/bin/python benchmarks/bench_optimize.py --no-cerebro --no-big   # the slope alone
    .venv/bin/python benchmarks/bench_optimize.py --slope-workers 1 --repeat 3
    .venv/bin/python benchmarks/bench_optimize.py --table          # 12 points, 1 and 2 workers
    .venv/bin/python benchmarks/bench_optimize.py --table --dask   # and a Dask LocalCluster

**Slope** (the default, issue #23). The real command line, each run in its own child process,
one after another::

    run_backtest.py optimize --start 2024-01-01 --end 2024-03-31 --sampler grid \\
        --engine kernel --workers W --min-trades 0 --quiet --out TMP \\
        --space fast=10:29:1 slow=250:340:10        # 200 points (20 x 10)
        --space fast=10:209:1 slow=250:340:10       # 2,000 points (200 x 10)

(bundled ``datafeeds/m2k_5min.csv.gz``; DSR, PBO and the winner's check in cerebro on, the
defaults; every point has ``fast < slow``, so each is a backtest). Wall time is from launch to
exit; CPU seconds are the run's and its worker processes' (user + system, from
``getrusage(RUSAGE_CHILDREN)``), which a busy machine inflates far less than wall time. The
per-trial slope is ``(wall(2,000) - wall(200)) / 1,800``; the fixed cost is what a study of no
trials would cost on that line, ``wall(200) - 200 x slope`` (start-up, loading
the CSV, DSR/PBO, the cerebro check, the outputs). A study whose bookkeeping grows with the
number of trials shows it as a slope well above a trial's own cost. A 2-point run first (not
shown) makes sure numba's compiled kernel is cached. With ``--repeat`` the median wall of
each row is used.

Cerebro's per-trial slope is measured the same way (``--engine cerebro --workers 1``) on
grids of 6 and 30 points (``fast=10:15:1`` / ``fast=10:39:1``, ``slow=250``), and each
kernel row says how many times below it the kernel's slope is. Then the 10,000-point grid
(``fast=10:209:1 slow=150:395:5``; 390 of its points break ``fast < slow`` and run no
backtest) with ``--workers 2``: wall from launch to exit and the main process's peak RSS.

**Table** (``--table``, issue #6). Every run searches the same grid (SmaCrossover ``fast`` x
``slow``, 12 points by default) on the same bars (the bundled ``datafeeds/m2k_5min.csv.gz``, one
quarter by default), so each run does exactly the same backtests whatever the worker count: the
grid is deterministic, TPE with several workers is not. Each run gets a fresh SQLite study in a
temporary folder. Wall time includes starting the worker processes (spawn), sending them the
bars and Optuna's storage bookkeeping, as a user of ``run_backtest.py optimize --workers N``
pays it. ``backtest s`` is the median time of one backtest inside a trial.

Prints a table; nothing is asserted (speed is measured, not asserted). A CPU check first
measures how much parallel capacity two processes really get at that moment (the machine may
be shared), so the speed-up can be read against it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

#: The slope's two grids: the same slow values, 20 or 200 fast ones (all below slow).
SLOPE_SPACES = {
    200: ["fast=10:29:1", "slow=250:340:10"],
    2000: ["fast=10:209:1", "slow=250:340:10"],
}


#: Cerebro's slope: the same command with ``--engine cerebro`` on two small grids (a
#: cerebro trial costs about a second: 2,000 of them would take half an hour).
CEREBRO_SPACES = {
    6: ["fast=10:15:1", "slow=250"],
    30: ["fast=10:39:1", "slow=250"],
}
#: The 10,000-point grid of issue #23 (every point a backtest or a constraint violation).
BIG_SPACE = ["fast=10:209:1", "slow=150:395:5"]


def slope_cmd(space: list[str], workers: int, out: Path, args,
              engine: str = "kernel") -> list[str]:
    return [sys.executable, str(ROOT / "run_backtest.py"), "optimize", "--start", args.start,
            "--end", args.end, "--space", *space, "--sampler", "grid", "--engine", engine,
            "--workers", str(workers), "--min-trades", "0", "--quiet", "--out", str(out)]


def run_cli_rss(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds of one command-line run and the peak RSS (MB) of its main process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{shlex.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def cerebro_slope(args) -> float:
    """Cerebro's per-trial slope (s), measured as the kernel's, on :data:`CEREBRO_SPACES`."""
    walls = {}
    for n, space in CEREBRO_SPACES.items():
        with tempfile.TemporaryDirectory(prefix="bench-opt-") as tmp:
            walls[n] = run_cli(slope_cmd(space, 1, Path(tmp) / "opt", args, "cerebro"))[0]
        print(f"  cerebro, workers 1, {n} points: {walls[n]:.1f} s", flush=True)
    a, b = sorted(walls)
    return (walls[b] - walls[a]) / (b - a)


def run_cli(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds of one command-line run, launch to exit, and the CPU seconds (user +
    system) of its process and every process it waited for (its workers); outputs checked."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def trials_in(out: Path) -> int:
    import json

    d = json.loads((out / "optimize.json").read_text())
    return d["trials_complete"] + d["trials_infeasible"]


def slope(args) -> None:
    """The per-trial slope and the fixed cost, per worker count (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-opt-") as tmp:
        run_cli(slope_cmd(["fast=10:11:1", "slow=250"], 1, Path(tmp) / "warm", args))
    print(f"CPU check: 2 processes of pure Python get {cpu_capacity():.2f} cores' worth of work")
    print("commands (TMP a fresh folder each run):")
    for n, space in SLOPE_SPACES.items():
        print(f"  {n:>5} points: {shlex.join(slope_cmd(space, 1, Path('TMP'), args)[1:])}")
    rows = []
    for w in args.slope_workers:
        walls, cpus = {}, {}
        for n, space in SLOPE_SPACES.items():
            runs = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory(prefix="bench-opt-") as tmp:
                    out = Path(tmp) / "opt"
                    runs.append(run_cli(slope_cmd(space, w, out, args)))
                    done = trials_in(out)
                    if done != n:
                        raise SystemExit(f"{n}-point grid ran {done} trials")
            walls[n] = statistics.median(r[0] for r in runs)
            cpus[n] = statistics.median(r[1] for r in runs)
            print(f"  workers {w}, {n} points: "
                  f"{', '.join(f'{x:.1f} s ({c:.1f} CPU s)' for x, c in runs)}", flush=True)
        per = (walls[2000] - walls[200]) / 1800
        cpu_per = (cpus[2000] - cpus[200]) / 1800
        rows.append((w, walls[200], walls[2000], per, walls[200] - 200 * per, cpus[200],
                     cpus[2000], cpu_per, cpus[200] - 200 * cpu_per))
    slow = cerebro_slope(args) if args.cerebro else None
    big = []
    for w in (args.big_workers if args.big else []):
        with tempfile.TemporaryDirectory(prefix="bench-opt-") as tmp:
            wall, rss = run_cli_rss(slope_cmd(BIG_SPACE, w, Path(tmp) / "opt", args))
            done = trials_in(Path(tmp) / "opt")
        big.append((w, wall, rss, done))
        print(f"  workers {w}, 10,000 points: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)
    load = os.getloadavg()
    print("| workers | 200 points s | 2,000 points s | per extra trial ms | trials/s (slope) "
          "| x cerebro's slope | fixed s | CPU s 200 / 2,000 | CPU ms per extra trial "
          "| fixed CPU s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w, a, b, per, fixed, ca, cb, cper, cfixed in rows:
        times = f"{slow / per:,.0f}" if slow else "-"
        print(f"| {w} | {a:.1f} | {b:.1f} | {per * 1000:.2f} | {1 / per:.0f} | {times} "
              f"| {fixed:.1f} | {ca:.1f} / {cb:.1f} | {cper * 1000:.2f} | {cfixed:.1f} |")
    if slow:
        print(f"cerebro's per-trial slope ({' and '.join(str(n) for n in CEREBRO_SPACES)} "
              f"points, --engine cerebro --workers 1): {slow * 1000:.0f} ms")
    if len(rows) >= 2:
        print(f"--workers {rows[1][0]} vs {rows[0][0]}: per-trial slope "
              f"{rows[0][3] / rows[1][3]:.2f}x better")
    for w, wall, rss, done in big:
        print(f"10,000-point grid ({' '.join(BIG_SPACE)}; {done:,} trials), --workers {w}: "
              f"{wall:.1f} s launch to exit, main process peak RSS {rss:.0f} MB")
    print(f"load average after the runs: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min) on "
          f"{os.cpu_count()} cores (our own runs included)")


def run_once(bars, config, space, workers: int | None, dask: str | None) -> dict:
    from m2k_bt.optimize import optimize

    with tempfile.TemporaryDirectory(prefix="bench-opt-") as tmp:
        t0 = time.perf_counter()
        res = optimize(
            bars,
            config,
            space,
            sampler="grid",
            workers=workers or 1,
            dask=dask,
            out=tmp,
            quiet=True,
            min_trades=0,
            overfitting=False,
        )
        wall = time.perf_counter() - t0
    n = res.n_complete + res.n_infeasible
    per_trial = [v for v in res.trials["elapsed_s"].tolist() if v == v and v is not None]
    return {
        "trials": n,
        "wall_s": wall,
        "trials_per_min": 60.0 * n / wall,
        "backtest_s": statistics.median(per_trial) if per_trial else float("nan"),
        "best": res.best_params,
    }


def _burn(n: int = 20_000_000) -> float:
    t0 = time.perf_counter()
    s = 0
    for i in range(n):
        s += i
    return time.perf_counter() - t0


def cpu_capacity() -> float:
    """How many cores' worth of pure-Python work two processes get right now (2.0 on an idle
    2-core machine; ~1 when another process or SMT sibling takes the second core)."""
    import multiprocessing as mp

    one = _burn()
    with mp.get_context("spawn").Pool(2) as pool:
        two = pool.map(_burn, [20_000_000, 20_000_000])
    return 2 * one / max(two)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--data", default=str(ROOT / "datafeeds" / "m2k_5min.csv.gz"))
    p.add_argument("--start", default="2024-01-01")
    p.add_argument("--end", default="2024-03-31")
    p.add_argument("--table", action="store_true",
                   help="issue #6's table (12 points, in process) instead of the slope")
    p.add_argument("--slope-workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeat", type=int, default=1, help="slope runs per row (median)")
    p.add_argument("--cerebro", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure cerebro's per-trial slope (6 and 30 points)")
    p.add_argument("--big", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the 10,000-point grid")
    p.add_argument("--big-workers", nargs="+", type=int, default=[2])
    p.add_argument("--space", nargs="+", default=["fast=10:40:10", "slow=100:200:50"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--dask", action="store_true", help="also run on a 2-process LocalCluster")
    args = p.parse_args(argv)
    if not args.table:
        print(f"data: datafeeds/m2k_5min.csv.gz {args.start} .. {args.end}; cores "
              f"{os.cpu_count()}; load average {os.getloadavg()[0]:.2f} at the start")
        slope(args)
        return 0

    from m2k_bt.engine import BacktestConfig
    from m2k_bt.feeds import load_bars
    from m2k_bt.optimize.study import preselect

    bars = load_bars(args.data)
    config = BacktestConfig(strategy="sma", start=args.start, end=args.end)
    bars, config = preselect(bars, config)
    print(
        f"data: {Path(args.data).name}, {len(bars):,} bars {bars.index[0]} .. {bars.index[-1]}; "
        f"space {' '.join(args.space)}; cores {os.cpu_count()}"
    )
    capacity = cpu_capacity()
    print(f"CPU check: 2 processes of pure Python get {capacity:.2f} cores' worth of work")
    rows = []
    for w in args.workers:
        rows.append(
            (
                f"local, {w} worker{'s' if w > 1 else ''}",
                run_once(bars, config, args.space, w, None),
            )
        )
    if args.dask:
        rows.append(
            ("dask LocalCluster, 2 procs", run_once(bars, config, args.space, None, "local"))
        )
    load = os.getloadavg()
    base = rows[0][1]["trials_per_min"]
    print(
        f"{'runner':<28} {'trials':>6} {'wall s':>8} {'trials/min':>10} {'speed-up':>8} "
        f"{'backtest s':>10}  best"
    )
    for name, r in rows:
        print(
            f"{name:<28} {r['trials']:>6} {r['wall_s']:>8.1f} {r['trials_per_min']:>10.1f} "
            f"{r['trials_per_min'] / base:>7.2f}x {r['backtest_s']:>10.2f}  {r['best']}"
        )
    print(
        f"load average after the runs: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min) on "
        f"{os.cpu_count()} cores (our own workers included); the speed-up can at best reach "
        f"the CPU check's figure"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
