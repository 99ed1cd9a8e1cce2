"""Feed benchmarks: load speed of a year of 1-minute bars, BarsFeed vs PandasData.

    .venv/bin/python benchmarks/bench_feeds.py [--bars N]

Prints a table. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import backtrader as bt

from m2k_bt.feeds.bars import BarsFeed
from m2k_bt.feeds.loaders import load_bars
from m2k_bt.feeds.synth import generate_continuous, write_bars

NY = "America/New_York"


class Flip(bt.Strategy):
    """A light strategy (no indicators) so that feed cost is visible: long after an up bar,
    short after a down bar, every 30th bar."""

    def next(self):
        if len(self) % 30 == 0:
            self.order_target_size(target=1 if self.data.close[0] > self.data.close[-1] else -1)


def run(feed, **kwargs) -> tuple[float, float]:
    cerebro = bt.Cerebro(stdstats=False, **kwargs)
    cerebro.adddata(feed)
    cerebro.addstrategy(Flip)
    cerebro.broker.setcash(100_000)
    cerebro.broker.setcommission(commission=0.62, mult=5.0, margin=700.0)
    t0 = time.perf_counter()
    cerebro.run()
    return time.perf_counter() - t0, cerebro.broker.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bars", type=int, default=100_000, help="bars for the feed race")
    args = parser.parse_args()

    year, _ = generate_continuous("2024-01-02", "2024-12-31", 1, seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "year_1min.csv.gz")
        write_bars(year, path)
        t0 = time.perf_counter()
        df = load_bars(path)
        load_s = time.perf_counter() - t0
    print(f"load_bars: {len(df):,} 1-minute rows (a year, gzip) in {load_s:.2f} s "
          f"= {len(df) / load_s:,.0f} rows/s (strict validation)")

    bars = df.iloc[: args.bars]
    naive = bars.copy()
    naive.index = naive.index.tz_localize(None)
    print(f"\nfeed race on {len(bars):,} 1-minute bars")
    print(f"{'mode':<28}{'BarsFeed bars/s':>17}{'PandasData bars/s':>19}{'ratio':>8}  same value")
    for label, mode in [("preload+runonce (default)", {}), ("preload, no runonce",
                        {"runonce": False}), ("no preload", {"preload": False})]:  # fmt: skip
        t_ours, v_ours = run(BarsFeed(dataname=bars), **mode)
        t_pd, v_pd = run(bt.feeds.PandasData(dataname=naive, openinterest=None), **mode)
        print(f"{label:<28}{len(bars) / t_ours:>17,.0f}{len(bars) / t_pd:>19,.0f}"
              f"{t_pd / t_ours:>8.2f}  {v_ours == v_pd} ({v_ours:,.2f})")


if __name__ == "__main__":
    main()
