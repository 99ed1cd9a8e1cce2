#!/usr/bin/env python
"""End-to-end timings a user feels (GitHub issue #8): the runner and the CSV loader.

::

    .venv/bin/python benchmarks/bench_runner.py                 # both parts, 3 runs each
    .venv/bin/python benchmarks/bench_runner.py --part runner   # run_backtest.py only
    .venv/bin/python benchmarks/bench_runner.py --part load     # a year of 1-minute bars

- ``runner``: wall time and peak RSS of ``python run_backtest.py --quiet --no-plot`` (the
  default run on the bundled data) and of the same with plots, each in a fresh process (so
  interpreter start-up and imports are included, as a user sees them). Outputs go to a
  temporary directory (``--out``), never to ``results/``.
- ``load``: ``m2k_bt.load_bars`` on a year (2024) of synthetic one-minute M2K bars in
  a generic CSV (Globex hours only, holidays removed with ``m2k_bt.sessions``, so the strict
  loader accepts every row), in a fresh process each run; rows/s, plus ``pandas.read_csv`` of
  the same file as the floor any loader pays. If ``benchmarks/bench_feeds.py`` (the data
  helper's loader benchmark) exists, this part defers to it instead of measuring twice
  (``--own-load`` measures here anyway).

Results are merged into ``benchmarks/results.json`` under ``"runner"`` and ``"load"`` (the
table of ``bench_compare.py`` stays as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
sys.path.insert(0, str(HERE))

from bench_compare import NY, globex_minutes, machine_info, make_bars  # noqa: E402

YEAR = 2024
CSV_VERSION = 1


def _timed_rss(cmd: list[str], cwd: Path) -> dict:
    """Run ``cmd``: wall seconds, exit status, output and the peak RSS (MB) of that child
    alone (``os.wait4``, so earlier children do not count)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fo, stderr=fe, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return {"seconds": seconds, "status": proc.returncode, "stdout": out, "stderr": err,
            "peak_rss_mb": usage.ru_maxrss * scale / 2**20}  # fmt: skip


def _median_block(recs: list[dict]) -> dict:
    ok = [r for r in recs if r["status"] == 0]
    if not ok:
        last = recs[-1]
        tail = (last["stderr"].strip().splitlines() or [f"exit status {last['status']}"])[-1]
        return {"status": f"not available: {tail[:300]}", "runs": len(recs)}
    return {
        "status": "ok",
        "runs": len(ok),
        "seconds": statistics.median(r["seconds"] for r in ok),
        "seconds_all": [round(r["seconds"], 3) for r in ok],
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
    }


# --------------------------------------------------------------------------- runner


def bench_runner(repeat: int, extra: list[str]) -> dict:
    out = {}
    cases = {
        "default --quiet --no-plot": ["--quiet", "--no-plot"],
        "default --quiet (with plots)": ["--quiet"],
    }
    for label, flags in cases.items():
        recs = []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory(prefix="m2k_bench_") as tmp:
                cmd = [sys.executable, "run_backtest.py", *flags, "--out", tmp, *extra]
                recs.append(_timed_rss(cmd, ROOT))
        block = _median_block(recs)
        block["command"] = " ".join(["python", "run_backtest.py", *flags, "--out", "<tmp>", *extra])
        out[label] = block
        shown = (f"{block['seconds']:.2f}s (runs {block['seconds_all']}), "
                 f"peak RSS {block['peak_rss_mb']:.0f} MB" if block["status"] == "ok"
                 else block["status"])  # fmt: skip
        print(f"runner {label}: {shown}", flush=True)
    return out


# --------------------------------------------------------------------------- loading


def year_csv(year: int = YEAR) -> Path:
    """A generic CSV of one year of one-minute bars in Globex hours, cached."""
    path = CACHE / f"m2k_1min_{year}_v{CSV_VERSION}.csv"
    if path.exists():
        return path
    from m2k_bt.sessions import in_globex_session

    # candidate minutes from the Sunday before the year to its end, then the exchange calendar
    first = pd.Timestamp(f"{year - 1}-12-31 18:00")
    while first.day_of_week != 6:
        first -= pd.Timedelta(days=1)
    cand = globex_minutes(60 * 24 * 380, start=str(first))
    lo, hi = pd.Timestamp(f"{year}-01-01"), pd.Timestamp(f"{year + 1}-01-01")
    cand = cand[(cand >= lo) & (cand < hi)]
    local = cand.tz_localize(NY, ambiguous="NaT", nonexistent="NaT")
    keep = in_globex_session(local)
    # a bar stamped at its start must also end inside the session (no bar at the close minute)
    keep &= in_globex_session(local + pd.Timedelta(minutes=1))
    idx = cand[keep]
    bars = make_bars(len(idx), seed=YEAR)
    frame = pd.DataFrame(bars.to_numpy(), columns=bars.columns, index=idx)
    frame.index.name = "datetime"
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, date_format="%Y-%m-%d %H:%M:%S")
    os.replace(tmp, path)
    return path


_LOAD_CHILD = """
import sys, time, json
t0 = time.perf_counter()
kind, path = sys.argv[1], sys.argv[2]
if kind == "load_bars":
    from m2k_bt.feeds import load_bars
    t1 = time.perf_counter()
    df = load_bars(path)
else:
    import pandas as pd
    t1 = time.perf_counter()
    df = pd.read_csv(path)
t2 = time.perf_counter()
print(json.dumps({"rows": len(df), "load_seconds": t2 - t1, "import_seconds": t1 - t0}))
"""


def bench_load(repeat: int, own: bool = False) -> dict:
    feeds_bench = HERE / "bench_feeds.py"
    if feeds_bench.exists() and not own:
        print(f"load: {feeds_bench.name} exists; running it instead of measuring twice", flush=True)
        proc = subprocess.run([sys.executable, str(feeds_bench)], cwd=ROOT, text=True,
                              capture_output=True)  # fmt: skip
        print(proc.stdout)
        return {"status": "delegated to bench_feeds.py", "exit": proc.returncode,
                "output": proc.stdout[-4000:]}  # fmt: skip
    path = year_csv()
    size_mb = path.stat().st_size / 2**20
    out = {"file": str(path.relative_to(ROOT)), "file_mb": round(size_mb, 1)}
    for kind in ("load_bars", "read_csv"):
        recs = []
        for _ in range(repeat):
            rec = _timed_rss([sys.executable, "-c", _LOAD_CHILD, kind, str(path)], ROOT)
            if rec["status"] == 0:
                rec.update(json.loads(rec["stdout"].strip().splitlines()[-1]))
            recs.append(rec)
        block = _median_block(recs)
        if block["status"] == "ok":
            ok = [r for r in recs if r["status"] == 0]
            block["rows"] = ok[-1]["rows"]
            block["load_seconds"] = statistics.median(r["load_seconds"] for r in ok)
            block["rows_per_s"] = block["rows"] / block["load_seconds"]
        out[kind] = block
        shown = (f"{block['rows']:,} rows in {block['load_seconds']:.2f}s = "
                 f"{block['rows_per_s']:,.0f} rows/s, process {block['seconds']:.2f}s, "
                 f"peak RSS {block['peak_rss_mb']:.0f} MB" if block["status"] == "ok"
                 else block["status"])  # fmt: skip
        print(f"load {kind} ({size_mb:.0f} MB CSV): {shown}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["runner", "load", "all"], default="all")
    p.add_argument("--repeat", type=int, default=3, help="runs of each case (median shown)")
    p.add_argument("--json", default=str(HERE / "results.json"),
                   help="results file to merge into (default benchmarks/results.json)")
    p.add_argument("--no-json", action="store_true")
    p.add_argument("--own-load", action="store_true",
                   help="measure loading on this script's own CSV even if bench_feeds.py exists")
    p.add_argument("runner_args", nargs="*",
                   help="extra arguments for run_backtest.py, after --, e.g. -- --data f.csv")
    args = p.parse_args(argv)
    info = machine_info()
    print(f"machine: {info['nproc']} cpu ({info['cpu']}), Python {info['python']}, load "
          f"average {info['loadavg_at_start']}; median of {args.repeat} run(s)", flush=True)
    results = {"machine": info, "repeat": args.repeat,
               "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}  # fmt: skip
    if args.part in ("runner", "all"):
        results["runner"] = bench_runner(args.repeat, args.runner_args)
    if args.part in ("load", "all"):
        results["load"] = bench_load(args.repeat, own=args.own_load)
    if not args.no_json:
        path = Path(args.json)
        payload = json.loads(path.read_text()) if path.exists() else {}
        payload.setdefault("end_to_end", {}).update(results)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
