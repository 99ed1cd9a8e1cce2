#!/usr/bin/env python
"""Peak memory of a study against its number of trials (GitHub issue #12).

::

    .venv/bin/python benchmarks/bench_study_memory.py                       # 100, 300, 1,000
    .venv/bin/python benchmarks/bench_study_memory.py --trials 50,100 --probe 100
    .venv/bin/python benchmarks/bench_study_memory.py --probe 0             # rows only

**Rows.** Each row is the real command line, in its own child process, one after another::

    run_backtest.py optimize --sampler grid --space fast=10:109:1 slow=150:240:10 \\
        --trials N --sizer fixed --workers 1 --start 2024-01-01 --end 2024-06-30 \\
        --min-trades 0 --quiet --out TMP

on the bundled ``datafeeds/m2k_5min.csv.gz``, kernel engine (the default), overfitting
statistics on (the default: the Deflated Sharpe Ratio and the PBO need every trial's daily
returns). A grid runs its first N points, so the rows do nested sets of backtests. Per row:
wall seconds from launch to exit, trials/min, the child's peak RSS (``ru_maxrss`` from
``os.wait4`` on that child, so it is that row's alone), the growth of the peak per extra trial
relative to the smallest row, and the size of ``study.db``. A 2-trial run first (not shown)
makes sure numba's compiled kernel is cached, so no row pays for compiling it.

The peak of a row can come from its fixed phases (numba compiling the kernel, the winner's
re-run in cerebro, DSR/PBO, the HTML report) rather than the trial loop, and then hides a
growth of the loop. **The probe** therefore runs the largest study once more, in one child
process through the same ``m2k_bt.cli.backtest.main``, with five functions of
``m2k_bt.optimize`` wrapped, where the study looks them up, in that process only (nothing in
the package is changed):

- ``evaluate_params`` (called once per trial, by ``drivers.work``): the process's RSS every
  N/20 trials, and ``tracemalloc`` on for a window of trials from the middle one
  (``--window``, 50; traced trials run about 40x slower, so not all of them), so that what is
  still allocated when the window ends is what those trials left behind, by allocation site;
  RSS figures have tracemalloc's own bookkeeping subtracted;
- ``collect_result`` (called once after the loop): a census of what the kernel's indicator memo
  holds (``KernelData``'s arrays by kind), and, after the run (so that counting costs no phase
  any RSS), of what the study's cached trials hold: each trial's ``backtest['returns']`` (what
  DSR/PBO need), its other attributes, the ``FrozenTrial`` objects;
- ``collect_result``, ``_verify_in_cerebro``, ``add_overfitting``, ``write_study_outputs`` (all
  looked up in ``study``): the peak RSS of each phase after the loop (a thread samples RSS
  every 10 ms).

Prints tables; nothing is asserted (speed and memory are measured, not asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPACE = ["fast=10:109:1", "slow=150:240:10"]  # 100 x 10 = 1,000 grid points


def cli_args(trials: int, out: Path, args) -> list[str]:
    return ["optimize", "--sizer", "fixed", "--space", *args.space, "--sampler", "grid",
            "--trials", str(trials), "--workers", "1", "--start", args.start, "--end",
            args.end, "--min-trades", "0", "--quiet", "--out", str(out)]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_child(cmd: list[str]) -> tuple[float, int, str]:
    """(wall s, peak RSS KB, stdout) of one child; its own rusage via ``os.wait4``."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=child_env(), stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # not proc.wait(): that discards the rusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): "
                             f"{err.read().strip()[-2000:]}")
        return wall, usage.ru_maxrss, out.read()


def complete_trials(out: Path) -> tuple[int, int | None]:
    """(COMPLETE rows of trials.csv, trials PBO was computed on)."""
    import csv

    with open(out / "trials.csv", newline="") as fh:
        n = sum(1 for r in csv.DictReader(fh) if r["state"] == "COMPLETE")
    pbo = json.loads((out / "optimize.json").read_text()).get("pbo") or {}
    return n, pbo.get("n_trials")


def rows(args) -> list[dict]:
    table = []
    for n in args.trials:
        with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
            out = Path(tmp) / "opt"
            cmd = [sys.executable, str(ROOT / "run_backtest.py"), *cli_args(n, out, args)]
            wall, rss_kb, _ = run_child(cmd)
            done, pbo_n = complete_trials(out)
            table.append({"trials": n, "complete": done, "pbo_trials": pbo_n, "wall": wall,
                          "rss_kb": rss_kb, "db_bytes": (out / "study.db").stat().st_size})
        print(f"  {n} trials: {wall:.1f} s, peak RSS {rss_kb / 1024:.1f} MB", flush=True)
    return table


def print_rows(table: list[dict]) -> None:
    base = min(table, key=lambda r: r["trials"])
    print("| trials | complete (PBO on) | wall s | trials/min | peak RSS MB "
          "| KB/extra trial | study.db MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        extra = r["trials"] - base["trials"]
        growth = f"{(r['rss_kb'] - base['rss_kb']) / extra:.1f}" if extra else "-"
        print(f"| {r['trials']:,} | {r['complete']:,} ({r['pbo_trials']}) | {r['wall']:.1f} "
              f"| {r['trials'] / r['wall'] * 60:.0f} | {r['rss_kb'] / 1024:.1f} | {growth} "
              f"| {r['db_bytes'] / 2**20:.1f} |")


# ---------------------------------------------------------------- the probe (child process)


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _deep_size(o, seen: set) -> int:
    if id(o) in seen:
        return 0
    seen.add(id(o))
    size = sys.getsizeof(o)
    if isinstance(o, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in o.items())
    elif isinstance(o, (list, tuple, set, frozenset)):
        size += sum(_deep_size(v, seen) for v in o)
    elif hasattr(o, "__dict__"):
        size += _deep_size(vars(o), seen)
    return size


def _site(tb) -> tuple[str, str]:
    """(innermost frame in m2k_bt or optuna, innermost frame) of a tracemalloc traceback."""
    def name(fr) -> str:
        path = fr.filename.replace(os.sep, "/")
        if "/m2k_bt/" in path:
            path = "m2k_bt/" + path.rsplit("/m2k_bt/", 1)[1]
        elif "/site-packages/" in path:
            path = path.rsplit("/site-packages/", 1)[1]
        elif "/lib/python" in path:
            path = path.rsplit("/lib/python", 1)[1].split("/", 1)[-1]
        return f"{path}:{fr.lineno}"

    frames = list(reversed(tb))  # tracemalloc keeps the oldest frame first
    keep = next((fr for fr in frames if "/m2k_bt/" in fr.filename.replace(os.sep, "/")
                 or "/optuna/" in fr.filename.replace(os.sep, "/")), frames[0])
    return name(keep), name(frames[0])


class _PhasePeaks:
    """Highest RSS (KB) of each phase after the loop, sampled every 10 ms by a thread."""

    def __init__(self) -> None:
        import threading

        self.phase, self.peaks, self.stop = None, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.01):
            if self.phase is not None:
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), _rss_kb())

    def wrap(self, label: str, fn):
        def wrapped(*a, **k):
            self.phase = label
            self.peaks[label] = _rss_kb()
            try:
                return fn(*a, **k)
            finally:
                self.peaks[label] = max(self.peaks[label], _rss_kb())
                self.phase = None
        return wrapped


def probe_child(n: int, out: str, args) -> None:
    import tracemalloc

    import m2k_bt.cli.backtest as cli
    import m2k_bt.optimize.drivers as drivers
    import m2k_bt.optimize.study as opt
    import m2k_bt.optimize.writebehind as writebehind

    window = max(1, min(args.window, n // 4))
    state = {"n": 0, "start": n // 2, "done": False}
    every = max(1, n // 20)
    report: dict = {"trials": n, "trace_from": n // 2, "window": window, "rss": []}
    evaluate, collect = drivers.evaluate_params, opt.collect_result
    phases = _PhasePeaks()
    t0 = time.perf_counter()

    def evaluate_params(*a, **k):
        result = evaluate(*a, **k)
        if state["done"]:
            return result  # the winner's re-runs after the loop
        state["n"] += 1
        i = state["n"]
        if i == state["start"]:
            tracemalloc.start(args.frames)
        if i == 1 or i % every == 0 or i == n:
            over = tracemalloc.get_tracemalloc_memory() // 1024 if tracemalloc.is_tracing() \
                else 0
            report["rss"].append((i, _rss_kb() - over, round(time.perf_counter() - t0, 1)))
        if i == state["start"] + window:
            snapshot(report, window)
        return result

    collect = phases.wrap("trials.csv table (collect_result)", collect)

    def collect_result(study, *a, **k):
        state["done"] = True
        report["loop_end_kb"] = _rss_kb()
        report["memo"] = memo_census()
        state["study"] = study  # its trials are counted after the run (their census costs RSS)
        return collect(study, *a, **k)

    drivers.evaluate_params, opt.collect_result = evaluate_params, collect_result
    behind = writebehind.WriteBehind  # a private study.db runs in memory (14e2230)
    init = behind.__init__

    def __init__(self, *a, **k):
        init(self, *a, **k)
        state["behind"] = self
    behind.__init__ = __init__
    opt._verify_in_cerebro = phases.wrap("winner re-run in cerebro", opt._verify_in_cerebro)
    opt.add_overfitting = phases.wrap("DSR and PBO (add_overfitting)", opt.add_overfitting)
    opt.write_study_outputs = phases.wrap(
        "trials.csv, study.html, optimize.json (write_study_outputs)", opt.write_study_outputs)
    status = cli.main(cli_args(n, Path(out), args))
    phases.stop.set()
    report["wall"] = time.perf_counter() - t0
    report["status"] = status
    report["phases"] = phases.peaks
    report["peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    disk = getattr(state.get("behind"), "disk", None)
    report["census"] = trial_census(state["study"], disk)
    print("PROBE " + json.dumps(report))


def snapshot(report: dict, window: int) -> None:
    """What the traced window's trials left allocated, by site; stops tracing."""
    import tracemalloc

    snap = tracemalloc.take_snapshot()
    report["traced_kb"] = tracemalloc.get_traced_memory()[0] / 1024
    tracemalloc.stop()
    sites: dict = {}
    for stat in snap.statistics("traceback"):
        s = sites.setdefault(_site(stat.traceback), [0, 0])
        s[0] += stat.size
        s[1] += stat.count
    report["sites"] = sorted(([k[0], k[1], v[0], v[1]] for k, v in sites.items()),
                             key=lambda r: -r[2])[:12]


def memo_census() -> dict:
    """Bytes of the kernel's per-bars arrays: ``KernelData._memo`` by kind, and ``"-"`` for
    the fixed price and time columns."""
    import numpy as np

    from m2k_bt.kernel import simulation as kernel

    memo: dict = {}
    for data in list(kernel._DATA_CACHE["data"].values()):  # one bars object at a time
        for key, value in [*data._memo.items(), *data._signals.items(), *data._sums.items()]:
            arrays = value if isinstance(value, tuple) else (value,)
            m = memo.setdefault(key[0] if isinstance(key, tuple) else str(key), [0, 0])
            m[0] += 1
            m[1] += sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
        memo["-"] = [1, sum(
            v.nbytes for v in vars(data).values() if isinstance(v, np.ndarray))]
    return memo


def trial_census(study, disk=None) -> dict:
    """Bytes the study's cached trials hold: returns, the other user attributes, the rest;
    and, for a study run in memory and written behind to SQLite (``disk``), what that
    storage's cache of the same trials holds beyond objects already counted. Measured on the
    live objects only (ids of freed temporaries would be reused)."""
    trials = study.get_trials(deepcopy=False)
    seen: set = set()
    returns = attrs = rest = n_ret = 0
    for t in trials:
        r = t.user_attrs.get("backtest", {}).get("returns")
        if r is not None:
            returns += _deep_size(r, seen)
            n_ret += len(r)
    for t in trials:
        attrs += _deep_size(t.user_attrs, seen)  # returns already seen: the other attributes
    for t in trials:
        rest += _deep_size(t, seen)  # the FrozenTrial itself, params, system attrs
    out = {"trials": len(trials), "returns_bytes": returns, "returns_values": n_ret,
           "other_attrs_bytes": attrs, "trial_rest_bytes": rest}
    if disk is not None:
        cached = [t for info in disk._storage._studies.values() for t in info.trials.values()]
        d_ret = sum(_deep_size(t.user_attrs.get("backtest", {}).get("returns"), seen)
                    for t in cached)
        d_all = sum(_deep_size(t, seen) for t in cached)
        out["disk"] = {"trials": len(cached), "returns_bytes": d_ret, "all_bytes": d_ret + d_all}
    return out


def probe(n: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-mem-probe-") as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--probe-child", str(n),
               str(Path(tmp) / "opt"), "--start", args.start, "--end", args.end,
               "--space", *args.space, "--frames", str(args.frames),
               "--window", str(args.window)]
        wall, rss_kb, out = run_child(cmd)
    line = next(x for x in out.splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


def print_probe(p: dict) -> None:
    n, k0, w = p["trials"], p["trace_from"], p["window"]
    pts = p["rss"]
    print(f"\nProbe: {n:,}-trial study in one process, {p['wall']:.1f} s (tracemalloc on for "
          f"trials {k0 + 1:,}..{k0 + w:,} only); peak RSS {p['peak_kb'] / 1024:.1f} MB")
    print("\nRSS during the trial loop (tracemalloc's own memory subtracted):\n")
    print("| after trial | s since start | RSS MB |\n| ---: | ---: | ---: |")
    for i, rss, sec in pts:
        print(f"| {i:,} | {sec:.1f} | {rss / 1024:.1f} |")
    def slope(lo: int, hi: int) -> str:
        inside = [x for x in pts if lo <= x[0] <= hi]
        if len(inside) < 2 or inside[-1][0] == inside[0][0]:
            return "-"
        a, b = inside[0], inside[-1]
        return f"trials {a[0]:,}..{b[0]:,}: {(b[1] - a[1]) / (b[0] - a[0]):.1f} KB/trial"

    print(f"\nRSS growth, untraced stretches: {slope(n // 10, k0)}; "
          f"{slope(k0 + w + n // 20, n)}")
    print(f"\nWhat trials {k0 + 1:,}..{k0 + w:,} left allocated: {p['traced_kb'] / 1024:.2f} MB "
          f"= {p['traced_kb'] / w:.1f} KB/trial. By site (tracemalloc, top 12):\n")
    print("| innermost m2k_bt/optuna frame | innermost frame | MB | KB/trial | blocks |")
    print("| --- | --- | ---: | ---: | ---: |")
    for keep, alloc, size, count in p["sites"]:
        print(f"| {keep} | {alloc} | {size / 2**20:.2f} | {size / 1024 / w:.2f} "
              f"| {count:,} |")
    print("\nAfter the loop (peak RSS of each phase, sampled every 10 ms):\n")
    print(f"| phase | peak RSS MB |\n| --- | ---: |\n| end of the trial loop | "
          f"{p['loop_end_kb'] / 1024:.1f} |")
    for label, kb in p["phases"].items():
        print(f"| {label} | {kb / 1024:.1f} |")
    c = p["census"]
    t = max(1, c["trials"])
    print(f"\nCensus: the study's {c['trials']:,} cached trials (counted after the run) and the "
          f"kernel's arrays (at the end of the loop):\n")
    print("| held | items | MB | KB/trial |\n| --- | ---: | ---: | ---: |")
    rb = c["returns_bytes"]
    print(f"| trials' `backtest['returns']` (DSR/PBO need these) | {c['returns_values']:,} "
          f"daily returns | {rb / 2**20:.2f} | {rb / 1024 / t:.2f} |")
    print(f"| trials' other attributes (metrics, times, ...) | {c['trials']:,} | "
          f"{c['other_attrs_bytes'] / 2**20:.2f} | {c['other_attrs_bytes'] / 1024 / t:.2f} |")
    print(f"| the FrozenTrial objects themselves (params, system attrs) | {c['trials']:,} | "
          f"{c['trial_rest_bytes'] / 2**20:.2f} | {c['trial_rest_bytes'] / 1024 / t:.2f} |")
    if "disk" in c:
        d = c["disk"]
        print(f"| the same trials in the write-behind SQLite study's cache, beyond shared objects"
              f" (of which returns {d['returns_bytes'] / 2**20:.2f} MB) | {d['trials']:,} | "
              f"{d['all_bytes'] / 2**20:.2f} | {d['all_bytes'] / 1024 / t:.2f} |")
    for kind, (count, nbytes) in sorted(p["memo"].items(), key=lambda kv: -kv[1][1]):
        what = f"kernel `KernelData._memo` `{kind!r}` arrays" if kind != "-" else \
            "kernel `KernelData` price and time columns (fixed)"
        per = f"{nbytes / 1024 / t:.2f}" if kind != "-" else "-"
        print(f"| {what} | {count:,} | {nbytes / 2**20:.2f} | {per} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", default="100,300,1000",
                   type=lambda s: sorted(int(x.replace("_", "")) for x in s.split(",")))
    p.add_argument("--start", default="2024-01-01")
    p.add_argument("--end", default="2024-06-30")
    p.add_argument("--space", nargs="+", default=SPACE)
    p.add_argument("--probe", type=int, default=None,
                   help="trials of the in-process probe (default: the largest row; 0: none)")
    p.add_argument("--window", type=int, default=50,
                   help="trials traced by tracemalloc, from the probe's middle trial (50)")
    p.add_argument("--frames", type=int, default=8, help="tracemalloc frames kept (8)")
    p.add_argument("--probe-child", nargs=2, metavar=("N", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe_child:
        probe_child(int(args.probe_child[0]), args.probe_child[1], args)
        return
    probe_n = max(args.trials) if args.probe is None else args.probe
    t0 = time.perf_counter()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; grid "
          f"{' '.join(args.space)}, {args.start}..{args.end}, trials {args.trials}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-mem-warm-") as tmp:  # numba's cache
        run_child([sys.executable, str(ROOT / "run_backtest.py"),
                   *cli_args(2, Path(tmp) / "opt", args)])
    table = rows(args)
    pr = probe(probe_n, args) if probe_n else None
    print(f"\nStudies of the real command (kernel engine, --sampler grid, --workers 1, "
          f"--sizer fixed, DSR and PBO on), {args.start}..{args.end} of the bundled 5-minute "
          f"bars:\n")
    print_rows(table)
    if pr:
        print_probe(pr)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
