#!/usr/bin/env python
"""Side-by-side speed and peak memory: stock backtrader vs m2k_bt (GitHub issue #8).

One invocation runs every requested row, one after another, each in its own child process so
that the peak resident memory (``ru_maxrss`` of the child) belongs to that row alone::

    .venv/bin/python benchmarks/bench_compare.py                  # 300,000 bars, rows 1,2,3
    .venv/bin/python benchmarks/bench_compare.py --quick          # 20,000 bars
    .venv/bin/python benchmarks/bench_compare.py --rows 1,2 --repeat 3
    .venv/bin/python benchmarks/bench_compare.py --profile 3      # cProfile of row 3, in process

Rows (see benchmarks/README.md):

1. stock backtrader: ``bt.feeds.PandasData``, ``broker.setcommission(commission=0.62,
   margin=770, mult=5)``, :class:`SmaCross` (SMA 50/200 with ``bt.ind.CrossOver``, fixed size 1,
   long/short reversal), ``stdstats=False``, no analyzers.
2. the same :class:`SmaCross` with ``m2k_bt.feeds.bars.BarsFeed`` and ``M2KCommInfo()``.
3. the full stack: ``m2k_bt.engine.run_backtest(bars, BacktestConfig(strategy="sma",
   sizer="kelly"))`` (M2KCommInfo, FuturesBroker, SmaCrossover, KellySizer, all analyzers).

Extra rows that isolate one lever each (not run by default; ask with ``--rows``):

4. row 3 with ``analyzers=False`` (only the two analyzers an optimisation trial keeps).
5. row 2 plus ``FuturesBroker`` (the broker's per-bar margin checks).
6. row 3 without any analyzer at all (``add_analyzers`` replaced by a no-op).
7. row 1 with ``exactbars=1`` (backtrader's low-memory mode: no preload, no runonce).
8. row 2 with a ``BarsFeed`` whose ``advance`` skips backtrader's ``tick_*`` bookkeeping
   (only replay and live feeds need it; the broker falls back to the bar's own prices).
9. row 3 with ``KellySizer`` answering a repeated "no edge" from a cache and not logging the
   repeat (the sizer is otherwise asked, and logs a decision, on every flat bar).
10. row 3 always in the market: ``run_backtest(bars, BacktestConfig(strategy="sma",
    sizer="fixed"))``, ``FixedContracts(1)`` long/short, all analyzers. Row 3's KellySizer is
    flat whenever it sees no edge, so it places few orders; this row trades like row 1 (one
    contract, reversed on every crossover) and is the fair full-stack counterpart of row 1.

Rows 8 and 9 patch m2k_bt classes inside their own process only, to measure a proposed fix
before it is made; their final value must equal that of row 2 and row 3 respectively.

The bars are a deterministic synthetic series of one-minute M2K bars (seeded random walk on
the 0.10 tick grid, Globex hours Sunday 18:00 to Friday 17:00 New York with the daily
17:00-18:00 break; exchange holidays are not removed), generated once and cached under
``benchmarks/.cache/``. Rows 1 and 2 must end with the same final value, to the cent and
beyond: the script says so, or says they differ.

Timing: ``seconds`` is the wall time of building cerebro (feed included) plus ``run()`` plus
reading the final value (for row 3, the whole ``run_backtest`` call); loading the cached bars
is outside it and identical for every row. ``CPU s`` is the user + system CPU time of the same
section (``getrusage``); on a shared machine it is steadier than wall time, so the table gives
the ratio to row 1 on both. The results table also goes to
``benchmarks/results.json`` (override with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
NY = "America/New_York"

DEFAULT_BARS = 300_000
QUICK_BARS = 20_000
DEFAULT_SEED = 8  # the issue number; any fixed seed will do
CASH = 25_000.0  # $, the runner's default starting equity
START = "2024-01-07 18:00"  # a Sunday evening: the first Globex session of 2024
# bump when the generator or the cache format changes, so stale caches are not reused; v2: v1
# stored pandas 3's microsecond stamps as nanoseconds, so cached bars came back in 1970
GEN_VERSION = 2

ROWS = {
    1: "stock backtrader: PandasData + setcommission + SmaCross",
    2: "SmaCross + m2k BarsFeed + M2KCommInfo",
    3: "full m2k_bt stack: run_backtest(sma, kelly, all analyzers)",
    4: "row 3 with analyzers=False (minimal analyzers)",
    5: "row 2 + FuturesBroker",
    6: "row 3 with no analyzers at all",
    7: "row 1 with exactbars=1",
    8: "row 2 with a tick-free BarsFeed.advance (proposed fix)",
    9: "row 3 with KellySizer 'no edge' cached, not re-logged (proposed fix)",
    10: "full m2k_bt stack, always in market: run_backtest(sma, fixed 1, all analyzers)",
}
DEFAULT_ROWS = (1, 2, 3)


# --------------------------------------------------------------------------- data


def globex_minutes(n: int, start: str = START) -> pd.DatetimeIndex:
    """The first ``n`` one-minute bar times (naive New York) of Globex hours from ``start``:
    Sunday 18:00 to Friday 16:59, no bars 17:00-17:59 (holidays are not removed)."""
    out = []
    got = 0
    t0 = pd.Timestamp(start)
    chunk = 7 * 24 * 60  # a week of candidate minutes at a time
    while got < n:
        cand = pd.date_range(t0, periods=chunk, freq="min")
        dow = cand.day_of_week.to_numpy()  # Monday 0 ... Sunday 6
        hour = cand.hour.to_numpy()
        sunday, mon_thu, friday = dow == 6, dow <= 3, dow == 4
        keep = (sunday & (hour >= 18)) | (mon_thu & (hour != 17)) | (friday & (hour < 17))
        sel = cand[keep]
        out.append(sel)
        got += len(sel)
        t0 = cand[-1] + pd.Timedelta(minutes=1)
    idx = out[0].append(out[1:]) if len(out) > 1 else out[0]
    return idx[:n]


def make_bars(n: int, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """``n`` deterministic synthetic one-minute M2K bars: a tz-aware New York index named
    ``datetime`` and float ``open high low close volume``, every price on the 0.10 grid."""
    rng = np.random.default_rng(seed)
    idx = globex_minutes(n)
    # prices in integer ticks (0.10 pt): a random walk with a little drift reversal so the
    # level stays near 2,000 (M2K's range in 2024) over any length
    steps = np.rint(rng.normal(0.0, 3.0, n)).astype(np.int64)
    close_t = np.empty(n, dtype=np.int64)
    level = 20_000
    anchor = 20_000
    pull = np.rint(rng.normal(0.0, 1.0, n)).astype(np.int64)
    for i in range(n):  # generated once and cached; clarity over speed here
        level += steps[i]
        if (level - anchor) > 3_000 and pull[i] > 0 or (anchor - level) > 3_000 and pull[i] < 0:
            level -= 2 * pull[i]
        close_t[i] = level
    open_t = np.empty(n, dtype=np.int64)
    open_t[0] = close_t[0]
    gap = np.rint(rng.normal(0.0, 0.6, n - 1)).astype(np.int64)
    open_t[1:] = close_t[:-1] + gap
    wick_hi = np.abs(np.rint(rng.normal(0.0, 1.5, n))).astype(np.int64)
    wick_lo = np.abs(np.rint(rng.normal(0.0, 1.5, n))).astype(np.int64)
    high_t = np.maximum(open_t, close_t) + wick_hi
    low_t = np.minimum(open_t, close_t) - wick_lo
    volume = rng.integers(1, 400, n).astype("float64")
    df = pd.DataFrame(
        {
            # ticks / 10 is the double nearest the decimal price, as a CSV reader would give
            "open": open_t / 10.0,
            "high": high_t / 10.0,
            "low": low_t / 10.0,
            "close": close_t / 10.0,
            "volume": volume,
        },
        index=idx.tz_localize(NY),
    )
    df.index.name = "datetime"
    return df


def cached_bars(n: int, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """:func:`make_bars` through a cache file in ``benchmarks/.cache/``; always the frame as
    read back from the file (nanosecond index), also on the call that writes it."""
    path = CACHE / f"m2k_1min_{n}_seed{seed}_v{GEN_VERSION}.npz"
    if not path.exists():
        df = make_bars(n, seed)
        CACHE.mkdir(parents=True, exist_ok=True)
        # as_unit: pandas 3 builds the index in microseconds, and asi8 is in the index's own unit
        ns = df.index.tz_convert("UTC").tz_localize(None).as_unit("ns").asi8
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, ns=ns, **{c: df[c].to_numpy() for c in df.columns})
        os.replace(tmp, path)
    z = np.load(path)
    idx = pd.DatetimeIndex(z["ns"].astype("datetime64[ns]")).tz_localize("UTC").tz_convert(NY)
    df = pd.DataFrame({c: z[c] for c in ("open", "high", "low", "close", "volume")}, index=idx)
    df.index.name = "datetime"
    return df


# --------------------------------------------------------------------------- rows


def _strategy_class():
    import backtrader as bt

    class SmaCross(bt.Strategy):
        """SMA fast/slow crossover, always in the market with ``size`` contracts: long after
        the fast average crosses above the slow one, short after it crosses below."""

        params = (("fast", 50), ("slow", 200), ("size", 1))

        def __init__(self):
            fast = bt.ind.SMA(self.data.close, period=self.p.fast)
            slow = bt.ind.SMA(self.data.close, period=self.p.slow)
            self.cross = bt.ind.CrossOver(fast, slow)

        def next(self):
            if self.cross[0] > 0:
                self.order_target_size(target=self.p.size)
            elif self.cross[0] < 0:
                self.order_target_size(target=-self.p.size)

    return SmaCross


def _run_stock(bars: pd.DataFrame, exactbars: int = 0) -> dict:
    import backtrader as bt

    cerebro = bt.Cerebro(stdstats=False, exactbars=exactbars)
    # naive New York times, as BarsFeed presents them (PandasData would turn aware times to UTC)
    frame = bars.tz_convert(NY).tz_localize(None) if bars.index.tz is not None else bars
    cerebro.adddata(bt.feeds.PandasData(dataname=frame, timeframe=bt.TimeFrame.Minutes))
    cerebro.broker.setcash(CASH)
    cerebro.broker.setcommission(commission=0.62, margin=770, mult=5)
    cerebro.addstrategy(_strategy_class())
    t0 = time.perf_counter()
    cerebro.run()
    return {"run_seconds": time.perf_counter() - t0, "final_value": cerebro.broker.getvalue()}


def _tickless_feed_class():
    """``BarsFeed`` without backtrader's per-bar ``tick_*`` reset and fill (feed.py
    ``advance``): with ``tick_open`` & co. left unset, ``BackBroker._try_exec`` reads the
    bar's own open/high/low/close, so fills are the same."""
    from m2k_bt.feeds.bars import BarsFeed

    class TicklessBarsFeed(BarsFeed):
        def advance(self, size=1, datamaster=None, ticks=True):
            super().advance(size, datamaster, ticks=False)

    return TicklessBarsFeed


def _patch_kelly_no_edge() -> None:
    """Make ``KellySizer`` remember a "no edge" answer until its trade window changes, and log
    it once instead of on every bar (a proposed fix, measured before it is made)."""
    from m2k_bt import sizers

    cls = sizers.KellySizer
    plain = cls._getsizing

    def _getsizing(self, comminfo, cash, data, isbuy):
        log = getattr(self.strategy, "trade_log", None)
        key = (len(log) if log is not None else len(self._extra), bool(isbuy))
        if getattr(self, "_no_edge_key", None) == key:
            return 0
        size = plain(self, comminfo, cash, data, isbuy)
        last = self.decisions[-1] if self.decisions else None
        self._no_edge_key = key if last is not None and last.binding == "no_edge" else None
        return size

    cls._getsizing = _getsizing


def _run_m2k_feed(bars: pd.DataFrame, futures_broker: bool = False, tickless=False) -> dict:
    import backtrader as bt

    from m2k_bt.brokers.commission import M2KCommInfo
    from m2k_bt.feeds.bars import BarsFeed

    cerebro = bt.Cerebro(stdstats=False)
    feed_cls = _tickless_feed_class() if tickless else BarsFeed
    cerebro.adddata(feed_cls(dataname=bars))
    if futures_broker:
        from m2k_bt.brokers.futures import FuturesBroker

        cerebro.broker = FuturesBroker(cash=CASH)
    else:
        cerebro.broker.setcash(CASH)
    cerebro.broker.addcommissioninfo(M2KCommInfo())
    cerebro.addstrategy(_strategy_class())
    t0 = time.perf_counter()
    cerebro.run()
    return {"run_seconds": time.perf_counter() - t0, "final_value": cerebro.broker.getvalue()}


def _run_full(bars: pd.DataFrame, analyzers: bool | None = True, sizer: str = "kelly") -> dict:
    from m2k_bt import engine
    from m2k_bt.engine import BacktestConfig, run_backtest

    # sizer "fixed" is FixedContracts(contracts=1); SmaCrossover is long/short by default
    config = BacktestConfig(strategy="sma", sizer=sizer, cash=CASH)
    if analyzers is False:
        config = config.replace(analyzers=False)
    if analyzers is None:  # no analyzer at all: patch the engine's hook for this process only
        import m2k_bt.analyzers as an

        an.add_analyzers = lambda cerebro, minimal=False, **kw: []
    result = run_backtest(bars, config)
    out = {"run_seconds": result.elapsed, "final_value": result.final_value}
    trades = (result.analysis.get("trades") or {}).get("trades")
    if trades is not None:
        out["trades"] = trades
    del engine
    return out


def run_row(row: int, bars: pd.DataFrame) -> dict:
    """Run one row in this process; returns its measurements (no memory figure)."""
    runners = {
        1: lambda: _run_stock(bars),
        2: lambda: _run_m2k_feed(bars),
        3: lambda: _run_full(bars),
        4: lambda: _run_full(bars, analyzers=False),
        5: lambda: _run_m2k_feed(bars, futures_broker=True),
        6: lambda: _run_full(bars, analyzers=None),
        7: lambda: _run_stock(bars, exactbars=1),
        8: lambda: _run_m2k_feed(bars, tickless=True),
        9: lambda: (_patch_kelly_no_edge(), _run_full(bars))[1],
        10: lambda: _run_full(bars, sizer="fixed"),
    }
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = runners[row]()
    out["seconds"] = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_seconds"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return out


def _maxrss_mb(usage) -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return usage.ru_maxrss * scale / 2**20


def code_hash() -> str:
    """Short hash of the m2k_bt sources, so a table can tell when the code changed between
    rows (the package is edited while benchmarks run)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((HERE.parent / "m2k_bt").glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def child_main(row: int, n: int, seed: int) -> int:
    """Entry point of a row's own process: prints one JSON line."""
    bars = cached_bars(n, seed)
    base_rss = _maxrss_mb(resource.getrusage(resource.RUSAGE_SELF))
    rec = {"row": row, "bars": len(bars), "base_rss_mb": base_rss, "code": code_hash()}
    try:
        rec.update(run_row(row, bars))
        rec["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a row that cannot run is reported, not fatal
        kind = type(exc).__name__
        rec["status"] = f"not available: {kind}: {exc}".splitlines()[0][:300]
    rec["peak_rss_mb"] = _maxrss_mb(resource.getrusage(resource.RUSAGE_SELF))
    print("RESULT " + json.dumps(rec))
    return 0


# --------------------------------------------------------------------------- driver


def machine_info() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or "?"
    versions = {}
    for pkg in ("backtrader", "pandas", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        **versions,
    }


def _spawn(row: int, n: int, seed: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(row), "--bars", str(n),
           "--seed", str(seed)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"row": row, "bars": n, "status": f"not available: child failed: {tail[:300]}"}


def summarise(runs: dict[int, list[dict]]) -> list[dict]:
    """Median of each row's repeats, with ratios to row 1."""
    table = []
    for row, recs in runs.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        entry = {"row": row, "what": ROWS[row], "bars": recs[0]["bars"], "repeats": len(ok)}
        if not ok:
            entry["status"] = recs[-1].get("status")
            table.append(entry)
            continue
        secs = [r["seconds"] for r in ok]
        entry.update(
            status="ok",
            seconds=statistics.median(secs),
            seconds_all=secs,
            run_seconds=statistics.median(r["run_seconds"] for r in ok),
            cpu_seconds=statistics.median(r["cpu_seconds"] for r in ok),
            bars_per_s=entry["bars"] / statistics.median(secs),
            bars_per_cpu_s=entry["bars"] / statistics.median(r["cpu_seconds"] for r in ok),
            peak_rss_mb=statistics.median(r["peak_rss_mb"] for r in ok),
            base_rss_mb=statistics.median(r["base_rss_mb"] for r in ok),
            final_value=ok[-1]["final_value"],
            final_values_agree=len({r["final_value"] for r in ok}) == 1,
        )
        if "trades" in ok[-1]:
            entry["trades"] = ok[-1]["trades"]
        table.append(entry)
    ref = next((e for e in table if e["row"] == 1 and e.get("status") == "ok"), None)
    for e in table:
        if ref and e.get("status") == "ok":
            e["speed_ratio"] = e["bars_per_s"] / ref["bars_per_s"]
            e["cpu_speed_ratio"] = e["bars_per_cpu_s"] / ref["bars_per_cpu_s"]
            e["rss_ratio"] = e["peak_rss_mb"] / ref["peak_rss_mb"]
    return table


def format_table(table: list[dict]) -> str:
    head = (f"{'row':>3}  {'bars':>8}  {'seconds':>8}  {'CPU s':>7}  {'bars/s':>8}  "
            f"{'x row1':>6}  {'CPU x row1':>10}  "
            f"{'peak RSS MB':>11}  {'RSS x row1':>10}  {'final value':>14}  what")  # fmt: skip
    lines = [head, "-" * len(head)]
    for e in table:
        if e.get("status") != "ok":
            lines.append(f"{e['row']:>3}  {e['bars']:>8,}  {e.get('status')}")
            continue
        lines.append(
            f"{e['row']:>3}  {e['bars']:>8,}  {e['seconds']:>8.2f}  {e['cpu_seconds']:>7.2f}  "
            f"{e['bars_per_s']:>8,.0f}  {e.get('speed_ratio', float('nan')):>6.2f}  "
            f"{e.get('cpu_speed_ratio', float('nan')):>10.2f}  {e['peak_rss_mb']:>11.1f}  "
            f"{e.get('rss_ratio', float('nan')):>10.2f}  {e['final_value']:>14,.2f}  {e['what']}"
        )
    return "\n".join(lines)


def checks(table: list[dict]) -> list[str]:
    by = {e["row"]: e for e in table if e.get("status") == "ok"}
    out = []
    if 1 in by and 2 in by:
        a, b = by[1]["final_value"], by[2]["final_value"]
        same = a == b
        out.append(f"rows 1 and 2 final value: {'identical' if same else 'DIFFER'} "
                   f"({a!r} vs {b!r})")  # fmt: skip
    if 1 in by and 3 in by:
        s, c, m = by[3]["speed_ratio"], by[3]["cpu_speed_ratio"], by[3]["rss_ratio"]
        out.append(f"target row 3 throughput >= 2.00x row 1: {s:.2f}x wall ({c:.2f}x CPU) -> "
                   f"{'met' if min(s, c) >= 2 else 'NOT met'}")  # fmt: skip
        out.append(f"target row 3 peak RSS <= row 1: {m:.2f}x -> {'met' if m <= 1 else 'NOT met'}")
    if 1 in by and 10 in by:
        s, c, m = by[10]["speed_ratio"], by[10]["cpu_speed_ratio"], by[10]["rss_ratio"]
        out.append(
            f"row 10 (always in market, fixed 1) vs row 1: {s:.2f}x wall ({c:.2f}x CPU) "
            f"throughput, {m:.2f}x peak RSS; {by[10].get('trades', '?')} trades"
        )
    for e in table:
        if e.get("status") == "ok" and not e["final_values_agree"]:
            out.append(f"row {e['row']}: final value differs between repeats")
    return out


def code_changes(runs: dict[int, list[dict]]) -> str | None:
    """A warning when the m2k_bt sources changed while the rows ran."""
    seen = {r.get("code") for recs in runs.values() for r in recs if r.get("code")}
    if len(seen) > 1:
        return (f"WARNING: m2k_bt changed during this run ({len(seen)} versions of the sources "
                f"seen); rows may not be comparable, run again")  # fmt: skip
    return None


def profile_row(row: int, n: int, seed: int, limit: int = 35) -> None:
    import cProfile
    import pstats

    bars = cached_bars(n, seed)
    prof = cProfile.Profile()
    prof.enable()
    out = run_row(row, bars)
    prof.disable()
    CACHE.mkdir(parents=True, exist_ok=True)
    dump = CACHE / f"profile_row{row}_{n}.prof"
    prof.dump_stats(dump)
    print(f"row {row}, {n:,} bars: {out}  (profile saved to {dump})")
    for key in ("tottime", "cumulative"):
        print(f"\n===== sorted by {key} =====")
        pstats.Stats(prof).sort_stats(key).print_stats(limit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bars", type=int, default=None, help=f"bars (default {DEFAULT_BARS:,})")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_BARS:,} bars")
    p.add_argument("--rows", default=",".join(map(str, DEFAULT_ROWS)),
                   help=f"comma-separated rows to run, of {sorted(ROWS)} (default 1,2,3)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per row (rows interleaved); the table shows medians")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--json", default=str(HERE / "results.json"), help="where to write results")
    p.add_argument("--no-json", action="store_true", help="do not write the results file")
    p.add_argument("--profile", type=int, metavar="ROW", help="cProfile one row in this process")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    n = args.bars or (QUICK_BARS if args.quick else DEFAULT_BARS)
    if args.child is not None:
        return child_main(args.child, n, args.seed)
    if args.profile is not None:
        profile_row(args.profile, n, args.seed)
        return 0
    rows = [int(r) for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; known: {sorted(ROWS)}")
    info = machine_info()
    t0 = time.perf_counter()
    cached_bars(n, args.seed)  # generate (or check) the cache once, outside any row
    print(f"{n:,} bars ready in {time.perf_counter() - t0:.1f}s (cache: {CACHE})", flush=True)
    runs: dict[int, list[dict]] = {r: [] for r in rows}
    for rep in range(args.repeat):
        for r in rows:
            rec = _spawn(r, n, args.seed)
            runs[r].append(rec)
            shown = (f"{rec['seconds']:.2f}s ({rec['cpu_seconds']:.2f} CPU s), "
                     f"{rec['peak_rss_mb']:.0f} MB, "
                     f"final {rec['final_value']:,.2f}" if rec.get("status") == "ok"
                     else rec.get("status"))  # fmt: skip
            print(f"  run {rep + 1}/{args.repeat} row {r}: {shown}", flush=True)
    table = summarise(runs)
    print()
    print(
        f"machine: {info['nproc']} cpu ({info['cpu']}), Python {info['python']}, backtrader "
        f"{info['backtrader']}, pandas {info['pandas']}, numpy {info['numpy']}; "
        f"load average at start {info['loadavg_at_start']}"
    )
    print(f"median of {args.repeat} run(s) per row; ratios are to row 1 of this run\n")
    print(format_table(table))
    notes = checks(table)
    changed = code_changes(runs)
    if changed:
        notes.append(changed)
    if notes:
        print()
        print("\n".join(notes))
    if not args.no_json:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": info,
            "bars": n,
            "seed": args.seed,
            "repeat": args.repeat,
            "rows": table,
            "runs": {str(k): v for k, v in runs.items()},
            "checks": notes,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
