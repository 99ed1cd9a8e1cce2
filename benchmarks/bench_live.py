"""Latency of the live path: bar taken off the queue -> strategy order submitted (and -> end of
``next``), and the queue wait (producer put -> taken off the queue) apart.

Run: ``.venv/bin/python benchmarks/bench_live.py [--bars 3000] [--interval-ms 1.0]``

A :class:`~m2k_bt.feeds.live.ReplaySource` streams synthetic 5-minute M2K bars into a
:class:`~m2k_bt.feeds.live.QueueFeed`; an SMA crossover (fast 5, slow 20, market orders, 1 contract)
trades them on backtrader's broker with M2K costs;
:class:`~m2k_bt.feeds.live.LiveLatency` times each
bar. Rows: the replay paced at one bar every ``--interval-ms`` and the replay at speed 0 (the
producer runs ahead). The latency rows are the processing latency (feed checks + indicators +
strategy + broker.submit) in both; the backlog row is the time bars waited in the queue, which at
speed 0 grows with the queue and is not our latency. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import platform
import time

import backtrader as bt
import numpy as np
import pandas as pd

from m2k_bt.feeds.live import LiveLatency, QueueFeed, ReplaySource

NY = "America/New_York"


def make_bars(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = np.round(2000.0 * np.exp(np.cumsum(rng.normal(0, 0.0015, n))) / 0.1) * 0.1
    open_ = np.concatenate([[2000.0], close[:-1]])
    span = np.round(np.abs(rng.normal(0, 0.0015, n)) * close / 0.1) * 0.1
    idx = pd.date_range("2024-01-02 09:30", periods=n, freq="5min", tz=NY)
    return pd.DataFrame({"open": np.round(open_, 2),
                         "high": np.round(np.maximum(open_, close) + span, 2),
                         "low": np.round(np.minimum(open_, close) - span, 2),
                         "close": np.round(close, 2), "volume": 100.0}, index=idx)


class SmaCross(bt.Strategy):
    params = (("fast", 5), ("slow", 20))

    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast),
                                      bt.ind.SMA(period=self.p.slow))

    def next(self):
        if self.cross[0] > 0:
            self.order_target_size(target=1)
        elif self.cross[0] < 0:
            self.order_target_size(target=-1)


def run(df: pd.DataFrame, speed: float) -> tuple[dict, float]:
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(QueueFeed(source=ReplaySource(df, speed=speed), qcheck=0.5,
                              idle_timeout=30.0, compression=5))
    cerebro.broker.setcash(25_000.0)
    cerebro.broker.setcommission(commission=0.62, margin=770.0, mult=5.0,
                                 commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False)
    cerebro.addstrategy(SmaCross)
    cerebro.addanalyzer(LiveLatency, _name="latency")
    t0 = time.perf_counter()
    strat = cerebro.run()[0]
    return strat.analyzers.latency.get_analysis(), time.perf_counter() - t0


def fmt(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=3000)
    ap.add_argument("--interval-ms", type=float, default=1.0)
    args = ap.parse_args()
    df = make_bars(args.bars)
    paced = 300.0 / (args.interval_ms / 1000.0)  # 5-minute bars every interval-ms
    print(f"python {platform.python_version()}, backtrader {bt.__version__}, "
          f"{platform.machine()}; {args.bars} bars")
    head = (f"{'replay':<22} {'what':<16} {'n':>6} {'p50 us':>9} {'p99 us':>9} "
            f"{'max us':>9} {'run s':>7}")
    print(head)
    print("-" * len(head))
    for label, speed in ((f"paced {args.interval_ms:g} ms/bar", paced), ("speed 0", 0.0)):
        lat, secs = run(df, speed)
        for what, st in (("off queue->order", lat), ("off queue->next", lat["next"]),
                         ("backlog", lat["backlog"])):
            print(f"{label:<22} {what:<16} {st['count']:>6} {fmt(st['p50_us']):>9} "
                  f"{fmt(st['p99_us']):>9} {fmt(st['max_us']):>9} {secs:>7.2f}")


if __name__ == "__main__":
    main()
