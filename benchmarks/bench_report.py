"""Size of report.html and time to write it, for the default run and for 1,000,000 bars.

    .venv/bin/python benchmarks/bench_report.py            # default run + 1M bars (~3 min)
    .venv/bin/python benchmarks/bench_report.py --bars 0   # default run only

The default run is ``run_backtest.py`` with no flags (the bundled 141,870 five-minute bars, SMA
50/200, Kelly sizer). The large run is a seeded random walk of one-minute bars on the 0.10 tick
grid (continuous minutes, no sessions; only the bar count matters here) with the same strategy
and a fixed one-contract sizer. The timed section is :func:`m2k_bt.report.html.write_report_html`
alone (the layout, Bokeh's serialisation and the atomic write); the backtest and report.json are
outside it. Prints one table (wall and CPU seconds; on a shared machine CPU is the steadier
figure); nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from m2k_bt.engine import BacktestConfig, run_backtest  # noqa: E402
from m2k_bt.report.html import write_report_html  # noqa: E402
from m2k_bt.report.summary import build_report  # noqa: E402


def random_walk(n: int, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = np.round(2000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.0004, n))) / 0.1) * 0.1
    open_ = np.concatenate([[2000.0], close[:-1]])
    span = np.round(np.abs(rng.normal(0.0, 0.0004, n)) * close / 0.1) * 0.1
    idx = pd.date_range("2020-01-05 18:00", periods=n, freq="1min")  # naive: New York wall time
    return pd.DataFrame({
        "open": open_, "high": np.maximum(open_, close) + span,
        "low": np.minimum(open_, close) - span, "close": close,
        "volume": rng.integers(1, 500, n).astype(float),
    }, index=idx)


def measure(label: str, bars: pd.DataFrame, config: BacktestConfig, out: Path) -> dict:
    result = run_backtest(bars, config)
    report = build_report(result)
    path = out / f"{label.replace(' ', '_')}.html"
    t0, c0 = time.perf_counter(), time.process_time()
    write_report_html(result, path, report)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"run": label, "bars": result.bars, "trades": len(result.trades),
            "seconds": seconds, "cpu": cpu, "mb": path.stat().st_size / 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bars", type=int, default=1_000_000, help="bars of the large run (0: skip)")
    args = p.parse_args(argv)
    from m2k_bt.cli.common import DEFAULT_DATA
    from m2k_bt.feeds import load_bars

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows.append(measure("default run", load_bars(str(DEFAULT_DATA)), BacktestConfig(), out))
        if args.bars:
            rows.append(measure(f"{args.bars:,} bars", random_walk(args.bars),
                                BacktestConfig(params={"fast": 50, "slow": 200}, sizer="fixed"),
                                out))
    print(f"{'run':<18} {'bars':>10} {'trades':>7} {'wall s':>7} {'CPU s':>6} "
          f"{'report.html MB':>15}")
    for r in rows:
        print(f"{r['run']:<18} {r['bars']:>10,} {r['trades']:>7,} {r['seconds']:>7.2f} "
              f"{r['cpu']:>6.2f} {r['mb']:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
