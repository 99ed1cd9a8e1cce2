"""QueueFeed, ReplaySource, LiveLatency and the live command: parity with the backtest, bad bars,
idle handling, and clean stops. Every run is bounded: sources are daemon threads, the feed's
heartbeat is short, and each run has an ``idle_timeout`` so that a bug ends a test, not CI."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import backtrader as bt
import pandas as pd
import pytest
from conftest import make_bars, pandas_feed

from m2k_bt.errors import DataFeedError, ParameterError
from m2k_bt.feeds.live import (
    REJECT_REASONS,
    Bar,
    EndOfStream,
    LiveLatency,
    QueueFeed,
    ReplaySource,
    ThreadedSource,
    bars_from_frame,
)

HEARTBEAT = 0.02  # s: short, so idle paths run quickly
IDLE_TIMEOUT = 10.0  # s: a safety net only; no test should reach it


class SmaCross(bt.Strategy):
    """Tiny stand-in strategy: long/short 1 contract on a fast/slow SMA cross, market orders."""

    params = (("fast", 5), ("slow", 20))

    def __init__(self):
        cross = bt.ind.CrossOver(bt.ind.SMA(period=self.p.fast), bt.ind.SMA(period=self.p.slow))
        self.cross = cross
        self.fills = []

    def next(self):
        if self.cross[0] > 0:
            self.order_target_size(target=1)
        elif self.cross[0] < 0:
            self.order_target_size(target=-1)

    def notify_order(self, order):
        if order.status == order.Completed:
            self.fills.append((bt.num2date(order.executed.dt), order.executed.size,
                               order.executed.price))


class LimitReversion(bt.Strategy):
    """Places a limit order inside the current bar's range: a heartbeat must never fill it
    against the bar that created it (the broker guard)."""

    def __init__(self):
        self.fills = []
        self.order = None

    def next(self):
        if self.order is not None and self.order.alive():
            self.cancel(self.order)
        mid = round((self.data.high[0] + self.data.low[0]) / 2, 1)
        if self.position.size <= 0:
            self.order = self.buy(exectype=bt.Order.Limit, price=mid)
        else:
            self.order = self.sell(exectype=bt.Order.Limit, price=mid)

    def notify_order(self, order):
        if order.status == order.Completed:
            self.fills.append((bt.num2date(order.executed.dt), order.executed.size,
                               order.executed.price))


def _broker_setup(cerebro: bt.Cerebro) -> None:
    cerebro.broker.setcash(25_000.0)
    # M2K: $0.62 per side, $770 initial margin, $5 per point
    cerebro.broker.setcommission(commission=0.62, margin=770.0, mult=5.0,
                                 commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False)


def run_backtest(df, strategy=SmaCross, **kw):
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(df))
    _broker_setup(cerebro)
    cerebro.addstrategy(strategy, **kw)
    strat = cerebro.run()[0]
    return strat, cerebro.broker.getvalue()


def run_live(source, strategy=SmaCross, feed_kw=None, **kw):
    cerebro = bt.Cerebro(stdstats=False)
    feed = QueueFeed(source=source, **{"qcheck": HEARTBEAT, "idle_timeout": IDLE_TIMEOUT,
                                       **(feed_kw or {})})
    if hasattr(source, "feed"):
        source.feed = feed
    cerebro.adddata(feed)
    _broker_setup(cerebro)
    cerebro.addstrategy(strategy, **kw)
    cerebro.addanalyzer(LiveLatency, _name="latency")
    strat = cerebro.run()[0]
    return strat, cerebro.broker.getvalue(), feed


def test_live_replay_at_speed_0_matches_backtest():
    df = make_bars(600, seed=3)
    bstrat, bvalue = run_backtest(df)
    lstrat, lvalue, feed = run_live(ReplaySource(df, speed=0))
    assert len(bstrat.fills) > 4  # the comparison is about real trades
    assert lstrat.fills == bstrat.fills
    assert lvalue == pytest.approx(bvalue, abs=1e-9)
    assert feed.delivered == 600 and feed.rejections == {}
    assert feed.end_reason == "exhausted"


class LockstepSource(ThreadedSource):
    """Puts a bar only after the feed has had a heartbeat since the last one: every bar is
    followed by an idle wait, deterministically (a market quieter than the heartbeat)."""

    def __init__(self, df):
        super().__init__(name="lockstep")
        self.bars = bars_from_frame(df)
        self.feed = None  # set by run_live

    def produce(self):
        for bar in self.bars:
            seen = self.feed.heartbeats
            if not self.emit(bar):
                return "stopped"
            for _ in range(2000):  # bounded: at most ~10 s per bar
                if self.feed.heartbeats > seen or not self.wait(0.005):
                    break
        return None


def test_live_matches_backtest_with_limit_orders_and_slow_producer():
    # paced producer: the feed sees heartbeats between bars; limit orders must still fill only
    # on later bars, exactly as in the backtest
    df = make_bars(120, seed=5)
    bstrat, bvalue = run_backtest(df, strategy=LimitReversion)
    lstrat, lvalue, feed = run_live(LockstepSource(df), strategy=LimitReversion,
                                    feed_kw={"qcheck": 0.005})
    assert len(bstrat.fills) > 10
    assert feed.heartbeats >= 120  # an idle wait after every bar
    assert lstrat.fills == bstrat.fills
    assert lvalue == pytest.approx(bvalue, abs=1e-9)


def test_broker_guard_is_what_keeps_limit_fills_honest():
    # without the guard, backtrader's broker retries pending limits on heartbeats against the
    # bar that created them: fills the backtest never makes
    df = make_bars(60, seed=5)
    bstrat, _ = run_backtest(df, strategy=LimitReversion)
    lstrat, _, feed = run_live(LockstepSource(df), strategy=LimitReversion,
                               feed_kw={"guard_broker": False, "qcheck": 0.005})
    assert feed.heartbeats > 0
    assert lstrat.fills != bstrat.fills


def test_engine_parity_with_project_strategy_and_broker():
    engine = pytest.importorskip("m2k_bt.engine.cerebro")
    pytest.importorskip("m2k_bt.strategies.base")
    pytest.importorskip("m2k_bt.sizers.kelly")
    from m2k_bt.cli.live import live_cerebro

    df = make_bars(800, seed=11)
    config = engine.BacktestConfig(strategy="sma", params={"fast": 10, "slow": 40},
                                   sizer="fixed")
    result = engine.run_backtest(df, config)
    cerebro, feed = live_cerebro(ReplaySource(df, speed=0), config, qcheck=HEARTBEAT,
                                 idle_timeout=IDLE_TIMEOUT)
    strat = cerebro.run()[0]
    assert cerebro.broker.getvalue() == pytest.approx(result.final_value, abs=1e-9)
    live_trades = list(getattr(strat, "trade_log", []))
    assert len(result.trades) > 3

    def same(trade):  # times compared below: the backtest feed's clock is checked elsewhere
        return {k: v for k, v in trade.items() if k not in ("entry_dt", "exit_dt")}

    assert [same(t) for t in live_trades] == [same(t) for t in result.trades]
    first, last = df.index[0].tz_localize(None), df.index[-1].tz_localize(None)
    assert all(first <= t["entry_dt"] < t["exit_dt"] <= last for t in live_trades)


def test_replay_of_data_with_a_roll_rolls_like_the_backtest():
    engine = pytest.importorskip("m2k_bt.engine.cerebro")
    from m2k_bt.cli.live import run_live as cli_run_live

    df = make_bars(800, seed=11)
    df["roll"] = False
    df.iloc[500, df.columns.get_loc("roll")] = True  # a new contract from bar 500
    config = engine.BacktestConfig(strategy="sma", params={"fast": 10, "slow": 40},
                                   sizer="fixed")
    result = engine.run_backtest(df, config)
    live = cli_run_live(ReplaySource(df, speed=0), config, bars=df, fills=False,
                        qcheck=HEARTBEAT, idle_timeout=IDLE_TIMEOUT)
    # the crossover always holds a position after its first cross: the roll closes and reopens
    assert [t["exit_reason"] for t in result.trades].count("roll") == 1
    assert live.strategy.rolls == 1
    assert len(live.trades) == len(result.trades)
    assert live.final_value == pytest.approx(result.final_value, abs=1e-9)
    assert [t["exit_reason"] for t in live.trades] == [t["exit_reason"] for t in result.trades]
    assert [t["net_pnl"] for t in live.trades] == pytest.approx(
        [t["net_pnl"] for t in result.trades], abs=1e-9)


def test_bars_from_frame_carries_the_roll_column():
    df = make_bars(3, seed=1)
    df["roll"] = [False, True, False]
    assert [b.roll for b in bars_from_frame(df)] == [False, True, False]
    assert [b.roll for b in bars_from_frame(df.drop(columns="roll"))] == [False] * 3


# -- bad bars ------------------------------------------------------------------------------------

T0 = _dt.datetime(2024, 3, 4, 10, 0)


def _bar(minute: int, o=2000.0, h=2001.0, lo=1999.0, c=2000.5, v=10.0, dt=None) -> Bar:
    return Bar(dt if dt is not None else T0 + _dt.timedelta(minutes=minute), o, h, lo, c, v)


BAD_BARS = {
    "malformed": [
        _bar(10, c=math.nan),
        _bar(11, v=-1.0),
        _bar(12, o=2005.0),  # open above high
        Bar(None, 2000.0, 2001.0, 1999.0, 2000.5, 1.0),
        Bar(T0 + _dt.timedelta(minutes=13), "2000", 2001.0, 1999.0, 2000.5, 1.0),
        Bar(pd.NaT, 2000.0, 2001.0, 1999.0, 2000.5, 1.0),  # used to crash in date2num
    ],
    "dst_time": [
        _bar(0, dt=_dt.datetime(2024, 3, 10, 2, 30)),  # naive: 02:30 New York never happened
        # 06:30 UTC is 01:30 EST, the second 01:30 of 2024-11-03
        _bar(0, dt=_dt.datetime(2024, 11, 3, 6, 30, tzinfo=_dt.timezone.utc)),
    ],
    "duplicate": [_bar(9)],  # same time as the last good bar
    "out_of_order": [_bar(3)],
    "non_positive": [_bar(14, o=0.0, lo=0.0), _bar(15, o=-1.0, lo=-1.0, h=-0.5, c=-0.5)],
    "high_below_low": [_bar(16, h=1998.0, lo=1999.0, o=1998.5, c=1998.5)],
    "off_tick": [_bar(17, c=2000.55)],
    "far_off": [_bar(18, dt=_dt.datetime(2099, 1, 5, 10, 0))],  # a bad stamp, far in the future
}


def test_each_bad_bar_kind_is_rejected_counted_and_logged(caplog):
    good = [_bar(i) for i in range(10)]  # 10:00 ... 10:09
    bad = [b for kind in REJECT_REASONS for b in BAD_BARS[kind]]
    tail = [_bar(20 + i) for i in range(5)]
    stream = good + bad + [object()] + tail  # object(): not even a Bar
    with caplog.at_level(logging.WARNING, logger="m2k_bt.feeds.live"):
        strat, _, feed = run_live(ReplaySource(stream, speed=0), fast=2, slow=3)
    expected = {kind: len(BAD_BARS[kind]) for kind in REJECT_REASONS}
    expected["malformed"] += 1
    assert feed.rejections == expected
    assert len(feed.rejected) == sum(expected.values())
    assert [r for _, r in feed.rejected][:2] == ["malformed", "malformed"]
    assert feed.rejected[8] == (T0 + _dt.timedelta(minutes=9), "duplicate")
    assert feed.rejected[5] == (None, "malformed")  # the NaT bar
    assert feed.delivered == 15  # every good bar reached the strategy
    assert len(strat) == 15
    assert sum("rejected (off_tick)" in r.getMessage() for r in caplog.records) == 1
    summary = feed.summary()
    assert summary["rejected"] == len(feed.rejected) and summary["end_reason"] == "exhausted"


def test_aware_timestamps_are_new_york_and_session_breaks_noted():
    ny = "America/New_York"
    times = pd.DatetimeIndex(
        ["2024-03-04 16:58", "2024-03-04 16:59",  # last bars before the maintenance break
         "2024-03-04 18:00",  # Globex reopens: new trade date, a 61-minute gap
         "2024-03-04 18:01", "2024-03-04 18:30"],  # 29 minutes: no break
        tz=ny,
    ).tz_convert("UTC")  # the feed converts aware times to New York
    df = pd.DataFrame({"open": 2000.0, "high": 2000.5, "low": 1999.5, "close": 2000.0,
                       "volume": 1.0}, index=times)
    strat, _, feed = run_live(ReplaySource(df, speed=0), fast=2, slow=3)
    assert strat.data.datetime.datetime(0) == _dt.datetime(2024, 3, 4, 18, 30)
    assert [(b.prev.hour, b.dt.hour, b.kind) for b in feed.session_breaks] == [(16, 18, "gap")]
    assert feed.session_breaks[0].gap_minutes == pytest.approx(61.0)
    # a short hop over 18:00 is a new trade date even without a long gap
    df2 = pd.DataFrame({"open": 2000.0, "high": 2000.5, "low": 1999.5, "close": 2000.0,
                        "volume": 1.0},
                       index=pd.DatetimeIndex(["2024-03-04 17:59", "2024-03-04 18:01"], tz=ny))
    _, _, feed2 = run_live(ReplaySource(df2, speed=0), fast=2, slow=3)
    assert [b.kind for b in feed2.session_breaks] == ["trade_date"]


def test_utc_stream_through_the_repeated_autumn_hour_does_not_crash():
    from m2k_bt.cli.live import run_live as cli_run_live

    # 2024-11-03: 05:00-05:50 UTC is 01:00-01:50 EDT, 06:00-06:50 UTC is 01:00-01:50 EST again
    idx = pd.date_range("2024-11-03 04:00", "2024-11-03 06:50", freq="10min", tz="UTC")
    df = pd.DataFrame({"open": 2000.0, "high": 2000.5, "low": 1999.5, "close": 2000.0,
                       "volume": 1.0}, index=idx)
    result = cli_run_live(ReplaySource(df, speed=0), _config(), bars=df, fills=False,
                          qcheck=HEARTBEAT, idle_timeout=IDLE_TIMEOUT)
    stream = result.analysis["stream"]
    # 04:00-05:50 UTC (12 bars) delivered; 06:00-06:50 UTC (6 bars) would repeat 01:00-01:50
    assert stream["delivered"] == 12 and stream["rejections"] == {"dst_time": 6}
    assert result.last_dt == pd.Timestamp("2024-11-03 05:50", tz="UTC")
    assert "stream: 6 bar(s) rejected (dst_time)" in result.warnings


# -- idle and stop paths -------------------------------------------------------------------------


class GatedSource(ThreadedSource):
    """Puts ``first`` bars, waits for ``gate``, then (optionally) the rest; or dies mid-stream."""

    def __init__(self, bars, first, gate=None, die=False, sentinel=True):
        super().__init__(name="gated")
        self.bars, self.first, self.gate, self.die, self.sentinel = bars, first, gate, die, sentinel

    def produce(self):
        for bar in self.bars[: self.first]:
            self.emit(bar)
        if self.die:
            raise ConnectionError("vendor dropped the connection")
        while self.gate is not None and not self.gate.is_set():
            if not self.wait(0.01):
                return "stopped"
        for bar in self.bars[self.first:]:
            if not self.emit(bar):
                return "stopped"
        return None

    def _finish(self, sentinel):
        if self.sentinel:
            super()._finish(sentinel)


def test_source_that_dies_mid_stream_ends_the_run_cleanly(caplog):
    bars = bars_from_frame(make_bars(50, seed=1))
    with caplog.at_level(logging.WARNING, logger="m2k_bt.feeds.live"):
        strat, value, feed = run_live(GatedSource(bars, first=30, die=True), fast=3, slow=8)
    assert feed.delivered == 30 and len(strat) == 30
    assert feed.end_reason == "error: ConnectionError: vendor dropped the connection"
    assert math.isfinite(value)


def test_source_dead_without_sentinel_is_detected_on_heartbeat():
    bars = bars_from_frame(make_bars(20, seed=1))
    _, _, feed = run_live(GatedSource(bars, first=12, die=True, sentinel=False))
    assert feed.delivered == 12
    assert feed.end_reason == "source died"
    assert feed.heartbeats >= 1


def test_runstop_from_another_thread_stops_mid_stream_and_analyzers_finish():
    # the CLI's Ctrl-C handler calls cerebro.runstop(); here a timer thread plays the user
    bars = bars_from_frame(make_bars(40, seed=2))
    gate = threading.Event()  # never set: the source stalls after 25 bars, like a quiet market
    src = GatedSource(bars, first=25, gate=gate)
    cerebro = bt.Cerebro(stdstats=False)
    feed = QueueFeed(source=src, qcheck=HEARTBEAT, idle_timeout=IDLE_TIMEOUT)
    cerebro.adddata(feed)
    _broker_setup(cerebro)
    cerebro.addstrategy(SmaCross, fast=3, slow=8)
    cerebro.addanalyzer(LiveLatency, _name="latency")
    arrived = threading.Event()

    class Watch(bt.Analyzer):
        def next(self):
            if len(self.strategy) == 25:
                arrived.set()

    cerebro.addanalyzer(Watch)

    def interrupt():
        if arrived.wait(IDLE_TIMEOUT):
            cerebro.runstop()

    threading.Thread(target=interrupt, daemon=True).start()
    strat = cerebro.run()[0]
    assert len(strat) == 25
    assert feed.end_reason is None  # stopped by the user, not by the stream
    assert not src.is_alive()  # the feed's stop() stopped the producer
    assert src.end_reason == "stopped"
    lat = strat.analyzers.latency.get_analysis()
    assert lat["next"]["count"] == 25
    assert "submit" not in vars(cerebro.broker)  # the analyzer unwrapped the broker


def test_heartbeats_hand_control_back_without_a_bar():
    # _load returns None on an empty queue, so cerebro loops (and can be stopped) with no bars
    src = GatedSource([], first=0, gate=threading.Event())
    feed = QueueFeed(source=src, qcheck=HEARTBEAT)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed)
    feed.start()
    try:
        assert [feed._load() for _ in range(3)] == [None, None, None]
        assert feed.heartbeats == 3
    finally:
        feed.stop()


def test_idle_timeout_ends_a_silent_stream():
    src = GatedSource([], first=0, gate=threading.Event())
    _, _, feed = run_live(src, feed_kw={"idle_timeout": 0.1})
    assert feed.end_reason == "idle timeout" and feed.delivered == 0


# -- latency ---------------------------------------------------------------------------------------


def test_latency_is_recorded_per_bar_with_an_order():
    df = make_bars(300, seed=3)
    strat, _, feed = run_live(ReplaySource(df, speed=300 / 0.002))  # a bar every 2 ms
    lat = strat.analyzers.latency.get_analysis()
    order_bars = len({dt for dt, _, _ in strat.fills})  # one order per signal bar here
    assert lat["orders"] == order_bars > 0
    assert lat["count"] == order_bars
    assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]
    assert lat["next"]["count"] == 300
    assert set(lat) == {"count", "p50_us", "p99_us", "mean_us", "max_us", "next", "backlog",
                        "orders"}
    assert lat["backlog"]["count"] == 300


class StaleStamps(ThreadedSource):
    """Stamps every bar as put ``AGE_S`` seconds ago: a queue backlog we know."""

    AGE_S = 1000

    def __init__(self, bars):
        super().__init__(name="stale")
        self.bars = bars

    def produce(self):
        for bar in self.bars:
            self._queue.put((bar, _dt_ns() - self.AGE_S * 10**9))
        return None


def _dt_ns() -> int:
    import time

    return time.perf_counter_ns()


def test_latency_is_measured_from_the_queue_not_from_the_put():
    # at --speed 0 the producer runs ahead: the old figures were the queue wait (p50 0.63 s)
    strat, _, feed = run_live(StaleStamps(bars_from_frame(make_bars(200, seed=3))))
    lat = strat.analyzers.latency.get_analysis()
    assert lat["count"] > 0 and lat["next"]["count"] == 200
    # every bar waited >= 1000 s by its stamp: that is the backlog, reported apart...
    assert lat["backlog"]["count"] == 200
    assert lat["backlog"]["p50_us"] >= StaleStamps.AGE_S * 1e6
    # ...and not in our latency, which starts when the feed takes the bar off the queue
    assert lat["max_us"] < StaleStamps.AGE_S * 1e6
    assert lat["next"]["max_us"] < StaleStamps.AGE_S * 1e6


def test_bare_bars_on_the_queue_are_accepted_without_latency():
    class Bare(ThreadedSource):
        def produce(self):
            for bar in bars_from_frame(make_bars(30, seed=4)):
                self._queue.put(bar)  # no put stamp
            return None

    strat, _, feed = run_live(Bare(), fast=2, slow=5)
    assert feed.delivered == 30
    lat = strat.analyzers.latency.get_analysis()
    assert lat["next"]["count"] == 30  # timed from the queue
    assert lat["backlog"]["count"] == 0  # no put stamp: no queue wait known


# -- inputs checked at the door ----------------------------------------------------------------


@pytest.mark.parametrize("speed", [-1, math.nan, "fast", True])
def test_replay_speed_must_be_a_non_negative_number(speed):
    with pytest.raises(ParameterError, match="speed"):
        ReplaySource([], speed=speed)


def test_replay_rejects_frames_without_prices():
    df = make_bars(5).drop(columns=["close"])
    with pytest.raises(DataFeedError, match="close"):
        ReplaySource(df)


@pytest.mark.parametrize("kw, word", [({"source": None}, "source"),
                                      ({"qcheck": 0}, "qcheck"),
                                      ({"maxsize": -1}, "maxsize")])
def test_queue_feed_checks_its_params(kw, word):
    base = {"source": ReplaySource([])}
    base.update(kw)
    with pytest.raises(ParameterError, match=word):
        QueueFeed(**base)


def test_a_source_streams_once():
    src = ReplaySource([])
    q: queue.Queue = queue.Queue()
    src.start(q)
    assert isinstance(q.get(timeout=5), EndOfStream)
    with pytest.raises(ParameterError, match="streams once"):
        src.start(q)
    src.stop()


def test_replay_speed_paces_by_bar_time_and_stop_interrupts_the_wait():
    # 1-hour gaps at speed 1 would take hours: stop() must end the wait at once
    df = make_bars(3, freq="1h")
    src = ReplaySource(df, speed=1.0)
    q: queue.Queue = queue.Queue()
    src.start(q)
    bar, put_ns = q.get(timeout=5)
    assert isinstance(bar, Bar) and isinstance(put_ns, int)
    src.stop()
    assert isinstance(q.get(timeout=5), EndOfStream)
    assert src.end_reason == "stopped" and not src.is_alive()


# -- the live command: run_live and live_main ---------------------------------------------------


def _config(**kw):
    engine = pytest.importorskip("m2k_bt.engine.cerebro")
    pytest.importorskip("m2k_bt.strategies.base")
    return engine.BacktestConfig(strategy="sma", params={"fast": 5, "slow": 20}, sizer="fixed",
                                 **kw)


def test_run_live_stops_on_sigint_and_keeps_the_result(capsys):
    import os
    import signal

    from m2k_bt.cli.live import run_live

    config = _config()
    df = make_bars(60, seed=7)
    src = GatedSource(bars_from_frame(df), first=40, gate=threading.Event())  # stalls at 40
    feed_ref = {}

    def ctrl_c():
        for _ in range(1000):  # bounded: ~10 s
            feed = feed_ref.get("feed")
            if feed is not None and feed.delivered >= 40:
                os.kill(os.getpid(), signal.SIGINT)
                return
            threading.Event().wait(0.01)

    import m2k_bt.cli.live as cli_live

    real = cli_live.live_cerebro

    def spy(*a, **k):
        cerebro, feed = real(*a, **k)
        feed_ref["feed"] = feed
        return cerebro, feed

    cli_live.live_cerebro = spy
    try:
        threading.Thread(target=ctrl_c, daemon=True).start()
        result = run_live(src, config, bars=df, qcheck=HEARTBEAT, idle_timeout=IDLE_TIMEOUT)
    finally:
        cli_live.live_cerebro = real
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert result.bars == 40
    assert "stopped by Ctrl-C after 40 bars" in result.warnings
    assert result.analysis["latency"]["next"]["count"] == 40
    # the stop ended the stream (the feed's stop_event) and cerebro (runstop)
    assert result.analysis["stream"]["end_reason"] == "stopped"
    assert result.analysis["stream"]["interrupted_by"] == "SIGINT"
    assert not src.is_alive()
    out = capsys.readouterr()
    assert out.out.count("fill ") == result.analysis["fills"]["fills"] > 0


def test_fill_lines_show_the_position_after_each_fill():
    import io

    from m2k_bt.cli.live import run_live as cli_run_live

    df = make_bars(400, seed=7)
    printed = io.StringIO()
    result = cli_run_live(ReplaySource(df, speed=0), _config(), bars=df, fills=printed,
                          qcheck=HEARTBEAT, idle_timeout=IDLE_TIMEOUT)
    lines = printed.getvalue().splitlines()
    assert len(lines) == result.analysis["fills"]["fills"] > 2
    held = 0
    for line in lines:
        words = line.split()
        size = float(words[4]) * (1 if words[3] == "BUY" else -1)
        held += size
        assert float(line.rsplit("position ", 1)[1]) == held, line
    # a reversal is two fills on one bar: flat after the close, then the new side
    assert any(line.endswith("position +0") for line in lines)
    assert len(set(lines)) == len(lines)  # no two identical lines


def test_run_live_with_a_dying_source_reports_why():
    from m2k_bt.cli.live import run_live

    df = make_bars(80, seed=8)
    src = GatedSource(bars_from_frame(df), first=50, die=True)
    result = run_live(src, _config(), bars=df, fills=False, qcheck=HEARTBEAT,
                      idle_timeout=IDLE_TIMEOUT)
    assert result.bars == 50
    assert result.first_dt == df.index[0] and result.last_dt == df.index[49]
    assert any("stream ended early: error: ConnectionError" in w for w in result.warnings)


def test_live_main_replays_a_file_and_writes_the_report(tmp_path, capsys):
    pytest.importorskip("m2k_bt.report.summary")
    from m2k_bt.cli.backtest import main

    df = make_bars(300, seed=9, freq="1min")  # 09:30-14:29: inside one Globex session
    path = tmp_path / "M2KH4_1min.csv"
    out_df = df.copy()
    out_df.index = out_df.index.tz_localize(None)
    out_df.to_csv(path, index_label="datetime")
    out = tmp_path / "out"
    code = main(["live", "--replay", str(path), "--speed", "0", "--heartbeat", "0.02",
                 "--strategy", "sma", "--param", "fast=5", "--param", "slow=20",
                 "--sizer", "fixed", "--out", str(out), "--no-plot"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "fill " in printed and "latency off the queue->order" in printed
    assert "queue backlog (put->off the queue, not our latency)" in printed
    assert any(out.iterdir())


def test_live_main_rejects_a_negative_speed(tmp_path, capsys):
    from m2k_bt.cli.backtest import main

    code = main(["live", "--replay", str(tmp_path / "x.csv"), "--speed", "-1"])
    assert code == 2
    assert "--speed" in capsys.readouterr().err


def test_missing_replay_file_names_the_replay_flag(tmp_path, capsys):
    from m2k_bt.cli.backtest import main

    missing = tmp_path / "nope.csv"
    code = main(["live", "--replay", str(missing), "--speed", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"replay file not found: {missing} (check the --replay path)" in err
    assert "--data" not in err  # live's own flag, not the backtest's hint


# -- signals on the real command, in a subprocess ------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _start_live(tmp_path):
    """``run_backtest.py live`` on a quiet stream: 1-minute bars at real-time speed, so after the
    first bar it waits a minute for the next, flat (the SMA needs 20 bars)."""
    df = make_bars(300, seed=9, freq="1min")
    path = tmp_path / "M2KH4_1min.csv"
    frame = df.copy()
    frame.index = frame.index.tz_localize(None)
    frame.to_csv(path, index_label="datetime")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run_backtest.py"), "live", "--replay", str(path),
         "--speed", "1", "--heartbeat", "0.05", "--strategy", "sma", "--param", "fast=5",
         "--param", "slow=20", "--sizer", "fixed", "--out", str(out), "--no-plot"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    first = proc.stdout.readline()  # printed once the signal handlers are in place
    assert first.startswith("live: 300 bars"), first + proc.stderr.read()
    return proc, out


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=120)  # a safety net, not a speed check
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"live did not stop: {err}")
    return proc.returncode, out, err


@pytest.mark.parametrize("signals,status,how", [
    ([signal.SIGTERM], 143, "SIGTERM"),  # used to die at once: 143 and no report
    ([signal.SIGINT], 130, "Ctrl-C"),  # used to exit 0
    ([signal.SIGINT, signal.SIGINT], 130, "Ctrl-C"),  # the second used to crash in stop()
    ([signal.SIGINT, signal.SIGTERM, signal.SIGINT], 130, "Ctrl-C"),
])
def test_signals_end_live_like_one_ctrl_c_with_a_report(tmp_path, signals, status, how):
    proc, out = _start_live(tmp_path)
    for i, sig in enumerate(signals):
        if i:
            threading.Event().wait(0.02)  # within the heartbeat: the run is still stopping
        proc.send_signal(sig)
    code, printed, err = _finish(proc)
    assert code == status, err
    assert "Traceback" not in err
    report = json.loads((out / "report.json").read_text())
    assert f"stopped by {how} after" in " ".join(report["warnings"])
    assert report["analyzers"]["stream"]["interrupted_by"] == ("SIGTERM" if status == 143
                                                               else "SIGINT")
    assert (out / "trades.csv").exists() and (out / "equity.csv").exists()
    assert "outputs:" in printed


def test_a_signal_after_the_run_is_ignored_until_exit(tmp_path):
    # Ctrl-C, then Ctrl-C again while the outputs are written or the process is ending
    proc, out = _start_live(tmp_path)
    proc.send_signal(signal.SIGINT)
    for _ in range(200):
        if (out / "report.json").exists() or proc.poll() is not None:
            break
        threading.Event().wait(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    code, _, err = _finish(proc)
    assert code == 130 and "Traceback" not in err
    assert (out / "report.json").exists()


# -- issue 24 item 9: one bad stamp does not reject the rest of the stream ----------------------


def _minutes(start: _dt.datetime, n: int) -> list[Bar]:
    return [_bar(0, dt=start + _dt.timedelta(minutes=i)) for i in range(n)]


@pytest.mark.parametrize("where", [0, 1, 5, 29])
def test_a_bar_stamped_2099_is_rejected_and_the_real_bars_after_it_traded(where):
    good = _minutes(T0, 30)
    bad = _bar(0, dt=_dt.datetime(2099, 1, 5, 10, 0))
    stream = good[:where] + [bad] + good[where:]
    strat, _, feed = run_live(ReplaySource(stream, speed=0), fast=2, slow=3)
    assert feed.rejected == [(bad.dt, "far_off")]  # used to be accepted
    assert feed.delivered == 30 and len(strat) == 30  # none rejected as out_of_order


def test_a_bar_far_after_the_stream_is_rejected_unless_the_stream_moved_on():
    clock = _dt.datetime(2024, 12, 31)
    before = _minutes(T0, 10)
    stray = _bar(0, dt=T0 + _dt.timedelta(days=200))  # not in the future of the clock
    after = _minutes(T0 + _dt.timedelta(minutes=10), 10)
    _, _, feed = run_live(ReplaySource(before + [stray] + after, speed=0), fast=2, slow=3,
                          feed_kw={"clock": lambda: clock})
    assert feed.rejected == [(stray.dt, "far_off")] and feed.delivered == 20
    # an outage: the stream resumes 40 days later and stays there: one bar is held back
    # for the check, the rest are delivered
    later = _minutes(T0 + _dt.timedelta(days=40), 10)
    _, _, feed = run_live(ReplaySource(before + later, speed=0), fast=2, slow=3,
                          feed_kw={"clock": lambda: clock})
    assert feed.rejected == [(later[0].dt, "far_off")] and feed.delivered == 19
    _, _, feed = run_live(ReplaySource(before + later, speed=0), fast=2, slow=3,
                          feed_kw={"clock": lambda: clock, "max_gap": None})
    assert feed.rejected == [] and feed.delivered == 20


def test_the_clock_check_follows_the_given_clock():
    bars = _minutes(T0, 5)
    _, _, feed = run_live(ReplaySource(bars, speed=0), fast=2, slow=3,
                          feed_kw={"clock": lambda: T0 - _dt.timedelta(days=2)})
    assert [r for _, r in feed.rejected] == ["far_off"] * 5  # all after the clock + 1 day
    _, _, feed = run_live(ReplaySource(bars, speed=0), fast=2, slow=3,
                          feed_kw={"clock": lambda: T0 - _dt.timedelta(days=2),
                                   "max_ahead": None})
    assert feed.delivered == 5


@pytest.mark.parametrize("kw, word", [({"max_ahead": 0}, "max_ahead"),
                                      ({"max_gap": math.nan}, "max_gap"),
                                      ({"clock": "now"}, "clock"),
                                      ({"spec": "M2K"}, "spec")])
def test_queue_feed_checks_its_clock_params(kw, word):
    with pytest.raises(ParameterError, match=word):
        QueueFeed(source=ReplaySource(_minutes(T0, 2), speed=0), **kw)


def test_spec_none_streams_off_tick_prices():
    bars = [_bar(i, o=2000.03, h=2001.03, lo=1999.03, c=2000.53) for i in range(10)]
    _, _, feed = run_live(ReplaySource(bars, speed=0), fast=2, slow=3, feed_kw={"spec": None})
    assert feed.rejected == [] and feed.delivered == 10
    _, _, feed = run_live(ReplaySource(bars, speed=0), fast=2, slow=3)
    assert feed.rejections == {"off_tick": 10}


def test_live_contract_none_trades_off_tick_data_like_the_backtest(tmp_path, capsys):
    from conftest import rth_bars, write_bars_csv

    from m2k_bt.cli.backtest import main

    df = rth_bars(end="2024-03-08")
    df.iloc[:, :4] += 0.03  # every price off the 0.10 grid (like the RUT index)
    data = write_bars_csv(df, tmp_path / "rut_like_5min.csv")
    common = ["--contract", "none", "--sizer", "fixed", "--param", "fast=5", "--param",
              "slow=20", "--quiet", "--no-plot"]
    assert main(["--data", data, "--out", str(tmp_path / "bt"), *common]) == 0
    assert main(["live", "--replay", data, "--speed", "0", "--heartbeat", "0.05",
                 "--out", str(tmp_path / "live"), *common]) == 0
    bt_report = json.loads((tmp_path / "bt" / "report.json").read_text())
    live_report = json.loads((tmp_path / "live" / "report.json").read_text())
    assert live_report["analyzers"]["stream"]["rejected"] == 0  # used to reject every bar
    assert bt_report["results"]["trades"] > 10  # the comparison is about real trades
    assert live_report["results"]["trades"] == bt_report["results"]["trades"]
    assert live_report["results"]["final_value"] == pytest.approx(
        bt_report["results"]["final_value"], abs=0.005)
