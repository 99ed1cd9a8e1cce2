#!/usr/bin/env python
"""Scale-out (GitHub issue #15): one study of the same size run four ways.

::

    .venv/bin/python benchmarks/bench_scaleout.py                 # 24-point grid, one quarter
    .venv/bin/python benchmarks/bench_scaleout.py --repeat 3 --start 2024-01-01 --end 2024-03-31

1. ``--workers 1``: one process runs every trial;
2. ``--workers 2``: two local worker processes on the study's SQLite file;
3. two ``run_backtest.py optimize --workers 1 --storage postgresql://...`` processes started
   at once on a throwaway PostgreSQL cluster (as on two machines; ``tests/servers.py``);
4. ``--dask tcp://...``: a ``dask scheduler`` with two single-threaded ``dask worker``
   processes started beforehand (a standing cluster: its start-up is not counted).

Every row is the real command line (``run_backtest.py optimize``), timed from launch to the
last process's exit, so it includes Python start-up, loading the data, Optuna's bookkeeping
and the storage round-trips a user pays. The grid (SmaCrossover ``fast`` x ``slow``) makes all
four do exactly the same backtests; each row checks the study holds every point exactly once.
Prints a table; nothing is asserted. Speed is measured, not asserted; on a shared machine the
CPU check first says how much parallel capacity two processes get at that moment.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SPACE = ["fast=10:60:10", "slow=100:250:50"]  # 6 x 4 = 24 points


def cpu_check() -> float:
    """Speed-up two busy processes get over one right now (2.0 = two free cores)."""
    code = "import time\nt=time.perf_counter()\nx=0\nfor i in range(6_000_000): x+=i\n" \
           "print(time.perf_counter()-t)"
    one = float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                               text=True).stdout)
    t0 = time.perf_counter()
    ps = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
          for _ in range(2)]
    for p in ps:
        p.wait()
    return 2 * one / (time.perf_counter() - t0)


def cli(args, out: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(ROOT / "run_backtest.py"), "optimize", "--sizer", "fixed",
           "--space", *SPACE, "--sampler", "grid", "--min-trades", "0", "--quiet",
           "--out", str(out), *extra]
    if args.start:
        cmd += ["--start", args.start]
    if args.end:
        cmd += ["--end", args.end]
    return cmd


def timed(cmds: list[list[str]], env) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{' '.join(p.args[:4])}... failed: {err.strip()}")
    return time.perf_counter() - t0


def check(url: str, name: str) -> int:
    import optuna

    from m2k_bt.optimize.claims import is_discarded
    from m2k_bt.optimize.storage import storage_for

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage_for(url))
    done = [t for t in study.get_trials(deepcopy=False)
            if not is_discarded(t) and t.state.name in ("COMPLETE", "PRUNED")]
    keys = {tuple(sorted(t.params.items())) for t in done}
    assert len(keys) == len(done), "a point ran twice"
    return len(done)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", default="2024-01-01")
    p.add_argument("--end", default="2024-03-31")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    from servers import DaskCluster, PostgresServer, child_env

    env = child_env()
    print(f"CPU check: two processes get {cpu_check():.2f}x one process's throughput")
    pg = PostgresServer()
    dask = DaskCluster(2)
    rows: dict[str, list[float]] = {}
    try:
        for rep in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
                tmp = Path(tmp)
                runs = {
                    "1 local worker": [cli(args, tmp / f"w1-{rep}", ["--workers", "1"])],
                    "2 local workers": [cli(args, tmp / f"w2-{rep}", ["--workers", "2"])],
                }
                url = pg.fresh_db()
                runs["2 processes on PostgreSQL"] = [
                    cli(args, tmp / f"pg{i}-{rep}", ["--workers", "1", "--storage", url,
                                                     "--study-name", "bench"])
                    for i in range(2)
                ]
                runs["2 Dask workers"] = [cli(args, tmp / f"dask-{rep}",
                                              ["--dask", dask.address])]
                for label, cmds in runs.items():
                    wall = timed(cmds, env)
                    if "PostgreSQL" in label:
                        n = check(url, "bench")
                    else:
                        out = Path(cmds[0][cmds[0].index("--out") + 1])
                        n = check(f"sqlite:///{out / 'study.db'}", "m2k-sma")
                    assert n == 24, f"{label}: {n} trials"
                    rows.setdefault(label, []).append(wall)
    finally:
        dask.close()
        pg.close()
    base = statistics.median(rows["1 local worker"])
    print(f"\n24-trial grid, SmaCrossover, {args.start}..{args.end} of the bundled 5-minute "
          f"bars, median of {args.repeat}")
    print("| run | wall s | trials/min | speed-up |\n| --- | ---: | ---: | ---: |")
    for label, walls in rows.items():
        w = statistics.median(walls)
        print(f"| {label} | {w:.1f} | {24 / w * 60:.0f} | {base / w:.2f}x |")


if __name__ == "__main__":
    main()
