"""A driver process for the scale-out tests: ``python tests/scaleout_driver.py --storage URL ...``.

It calls :func:`m2k_bt.optimize.study.optimize` the way ``run_backtest.py optimize`` does (a
project error is one line on stderr and exit status 2) but with :func:`slow_run`, a
deterministic backtest stand-in that takes ``M2K_TEST_DELAY`` seconds (def 0.3), so that a
test can kill a process while it holds a trial. Spawned local workers and Dask workers import
this module by name (``tests/`` is on their ``PYTHONPATH``).

``--pause-at TEXT [--pause-after N]``: the first SQL statement holding TEXT (repeatable: every
TEXT) once N backtests of this process are done (def 0: from the start) is held back: the
driver prints ``paused`` and waits until its stdin is closed, so that a test can stop the
server at exactly that moment (``--pause-at "FROM trials" --pause-at "trials.study_id ="``:
in the middle of a read of the study's trials, after Optuna looked the study up).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import backtrader as bt
import numpy as np
import pandas as pd


class DriverStrategy(bt.Strategy):
    params = (("fast", 10), ("slow", 100))


@dataclass
class DriverConfig:
    strategy: object = DriverStrategy
    params: dict = field(default_factory=dict)
    cash: float = 25_000.0
    analyzers: bool = True
    start: str | None = None
    end: str | None = None
    resample: str | None = None
    seed: int | None = None
    strategy_name: str = "driver"


@dataclass
class DriverResult:
    start_value: float
    final_value: float
    first_dt: object
    last_dt: object
    metrics: dict
    equity: pd.DataFrame


def score(fast: int, slow: int) -> float:
    """Peak at fast=20, slow=150."""
    return 2.0 - ((fast - 20) / 10) ** 2 - ((slow - 150) / 50) ** 2


def slow_run(bars: pd.DataFrame, config) -> DriverResult:
    p = {"fast": 10, "slow": 100, **config.params}
    delay = float(os.environ.get("M2K_TEST_DELAY", "0.3"))
    slow, _, seconds = os.environ.get("M2K_TEST_SLOW", "").partition(":")
    if slow and slow == f"{p['fast']},{p['slow']}":  # one trial that surely is running when
        delay = float(seconds)  # a test kills its process
    time.sleep(delay)
    s = score(p["fast"], p["slow"])
    value = config.cash + 5.0 * (bars["close"] - bars["close"].iloc[0]) + s * np.arange(len(bars))
    equity = pd.DataFrame({"value": value.to_numpy()}, index=bars.index)
    metrics = {"sharpe": s, "net_profit": float(value.iloc[-1] - config.cash), "trades": 5,
               "pid": os.getpid()}  # which process ran it: a Dask batch runs in one
    return DriverResult(
        config.cash, float(value.iloc[-1]), bars.index[0], bars.index[-1], metrics, equity
    )


def bars() -> pd.DataFrame:
    from conftest import make_bars

    return make_bars(24 * 10, seed=4, freq="1h")


def pause_at(texts: list[str], after: int):
    """A backtest function (:func:`slow_run`, counted) that arms the pause of ``--pause-at``
    once ``after`` backtests are done (see the module docstring); the pause comes once."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    armed, done = threading.Event(), threading.Event()
    if after <= 0:
        armed.set()

    def before(conn, cursor, statement, parameters, context, executemany):
        if armed.is_set() and not done.is_set() and all(t in statement for t in texts):
            done.set()
            print("paused", flush=True)
            sys.stdin.read()  # until the test closes our stdin

    event.listen(Engine, "before_cursor_execute", before)

    finished = [0]

    def counting_run(bars, config):  # armed by the backtests done in this process (a quiet
        result = slow_run(bars, config)  # study calls no progress callback)
        finished[0] += 1
        if finished[0] >= after:
            armed.set()
        return result

    return counting_run


def main(argv: list[str] | None = None) -> int:
    from m2k_bt.errors import M2KError
    from m2k_bt.optimize import optimize

    p = argparse.ArgumentParser()
    p.add_argument("--storage")
    p.add_argument("--study-name", default="scale")
    p.add_argument("--space", nargs="+", default=["fast=10:40:10", "slow=100:200:50"])
    p.add_argument("--trials", type=int)
    p.add_argument("--sampler", default="grid")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int)
    p.add_argument("--dask")
    p.add_argument("--batch", type=int)
    p.add_argument("--out")
    p.add_argument("--heartbeat", type=int, default=1)
    p.add_argument("--reconnect", type=float, default=5.0)
    p.add_argument("--pause-at", action="append", metavar="TEXT")
    p.add_argument("--pause-after", type=int, default=0, metavar="N")
    a = p.parse_args(argv)
    run = pause_at(a.pause_at, a.pause_after) if a.pause_at else slow_run
    try:
        res = optimize(
            bars(), DriverConfig(), a.space, trials=a.trials, sampler=a.sampler,
            workers=a.workers, storage=a.storage, dask=a.dask, seed=a.seed,
            study_name=a.study_name, out=a.out, run_backtest=run, quiet=True,
            overfitting=False, heartbeat=a.heartbeat, reconnect=a.reconnect, batch=a.batch,
        )  # fmt: skip
    except M2KError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in res.notes:
        print(f"note: {note}")
    print(f"done {res.n_complete} complete, {res.n_infeasible} infeasible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
