"""``python run_backtest.py live --replay FILE --speed N [common args]``: paper trading on a stream.

The bars of ``FILE`` are streamed by a :class:`~m2k_bt.feeds.live.ReplaySource` into a
:class:`~m2k_bt.feeds.live.QueueFeed`; the strategy, sizer, ``FuturesBroker`` and
``M2KCommInfo`` are the ones a backtest of the same arguments uses (``engine.build_cerebro``),
so what was backtested is what runs. Fills are printed as they happen; at the end (the stream
is over, or Ctrl-C) the same report as a backtest is written, with two more analysis keys:

- ``latency``: :class:`~m2k_bt.feeds.live.LiveLatency` (bar taken off the queue -> order submitted,
  microseconds; the queue wait apart as ``backlog``);
- ``stream``: :meth:`~m2k_bt.feeds.live.QueueFeed.summary` (bars delivered, rejections, session
  breaks, heartbeats, why the stream ended).

Ctrl-C (SIGINT) or SIGTERM asks cerebro to stop (``cerebro.runstop()``) at the next bar or
heartbeat: strategies and analyzers finish normally, the producer is stopped, and the report is
written. Further signals only say that the stop is under way, so that a second Ctrl-C ends the run
exactly as one does; a signal that comes while the outputs are written waits for them. The
exit status is then 130 (SIGINT) or 143 (SIGTERM), never 0. ``analysis["stream"]
["interrupted_by"]`` names the signal (``None`` when the stream ran to its end).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd

from ..errors import ConfigError, DataFeedError
from ..feeds.live import LiveLatency, QueueFeed, ReplaySource

__all__ = ["FillPrinter", "SignalStop", "build_parser", "live_cerebro", "run_live", "live_main"]


class FillPrinter(bt.Analyzer):
    """Prints each fill as the strategy is notified of it, with the position after that fill
    (a reversal's close and open are notified together, after both filled: the position is
    counted fill by fill, not read from the broker).

    - ``stream`` (def: ``None``): file to write to; ``None`` is ``sys.stdout``.
    """

    params = (("stream", None),)

    def start(self) -> None:
        self.fills = 0
        self._held: dict = {}

    def notify_order(self, order) -> None:
        if order.status != order.Completed:
            return
        self.fills += 1
        ex = order.executed
        side = "BUY " if order.isbuy() else "SELL"
        dt = bt.num2date(ex.dt)
        pos = self._held.get(order.data, 0.0) + ex.size
        self._held[order.data] = pos
        out = self.p.stream or sys.stdout
        print(f"fill {dt:%Y-%m-%d %H:%M:%S} {side} {abs(ex.size):g} {order.data._name or ''} "
              f"@ {ex.price:.2f}  commission ${ex.comm:.2f}  position {pos:+g}", file=out,
              flush=True)

    def get_analysis(self) -> dict:
        return {"fills": self.fills}


def _bar_size(bars: pd.DataFrame) -> tuple[int, int]:
    """(timeframe, compression) from the median bar spacing."""
    if len(bars) < 2:
        return bt.TimeFrame.Minutes, 1
    minutes = float(np.median(np.diff(bars.index.as_unit("ns").asi8))) / 60e9
    if minutes >= 24 * 60:
        return bt.TimeFrame.Days, 1
    return bt.TimeFrame.Minutes, max(1, int(round(minutes)))


def live_cerebro(source, config, bars: pd.DataFrame | None = None, **feed_kw):
    """A cerebro configured as ``engine.build_cerebro(bars, config)`` builds it for a backtest
    (broker, commission, strategy, sizer, analyzers), but fed by ``QueueFeed(source=source,
    **feed_kw)``, plus :class:`~m2k_bt.feeds.live.LiveLatency` as analyzer ``latency``. ``bars``
    (the replayed frame, if any) sets the feed's bar size. Returns ``(cerebro, feed)``.
    """
    from ..engine import build_cerebro

    if bars is not None and len(bars) and not {"timeframe", "compression"} & set(feed_kw):
        feed_kw["timeframe"], feed_kw["compression"] = _bar_size(bars)
    feed_kw.setdefault("spec", config.spec)
    feed = QueueFeed(source=source, **feed_kw)
    # the backtest's cerebro, the stream in place of the backtest feed
    cerebro, feed = build_cerebro(bars, config, feed=feed)
    cerebro.addanalyzer(LiveLatency, _name="latency")
    return cerebro, feed


def _ny(dt):
    # the feed delivers only the first (daylight-time) pass of the repeated autumn hour
    return None if dt is None else pd.Timestamp(dt).tz_localize("America/New_York",
                                                                ambiguous=True)


class SignalStop:
    """SIGINT and SIGTERM stop a live run cleanly, as a context manager (main thread only;
    elsewhere it installs nothing).

    The first signal sets ``event`` (give it to :class:`~m2k_bt.feeds.live.QueueFeed` as
    ``stop_event``: the stream ends at the next bar or heartbeat, even when the signal came
    before the run began) and asks the attached cerebro to stop; later signals only say that
    the stop is under way. So a second Ctrl-C ends the run as one does, with its report.
    ``signum`` is the first signal (``None`` without one), ``exit_status`` 128 + ``signum``
    (130 for SIGINT, 143 for SIGTERM) or 0. The previous handlers are put back on exit; with
    ``ignore_after=True`` (the command line) a process that was signalled ignores further
    signals instead, so that it exits with ``exit_status``, not with a traceback.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

    def __init__(self, ignore_after: bool = False) -> None:
        self.ignore_after = ignore_after
        self.signum: int | None = None
        self.count = 0
        self.event = threading.Event()
        self._cerebro = None
        self._previous: dict = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, previous in self._previous.items():
            if self.ignore_after and self.signum is not None:
                previous = signal.SIG_IGN  # the process is ending: nothing is left to stop
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
        return False

    @property
    def name(self) -> str | None:
        return None if self.signum is None else self.NAMES.get(self.signum, str(self.signum))

    @property
    def exit_status(self) -> int:
        return 0 if self.signum is None else 128 + int(self.signum)

    def attach(self, cerebro) -> None:
        """Also ask ``cerebro`` to stop on a signal."""
        self._cerebro = cerebro

    def detach(self) -> None:
        self._cerebro = None

    @staticmethod
    def _say(text: str) -> None:
        # os.write, not print: a handler may run in the middle of another write to stderr
        try:
            os.write(sys.stderr.fileno(), (text + "\n").encode())
        except (OSError, ValueError, AttributeError):
            pass

    def _handle(self, signum, frame) -> None:
        self.count += 1
        name = self.NAMES.get(signum, str(signum))
        if self.signum is not None:
            self._say(f"{name}: already stopping; the report is being written")
            return
        self.signum = signum
        self.event.set()
        self._say(f"interrupted ({name}): stopping at the next bar or heartbeat; the report "
                  f"will be written")
        if self._cerebro is not None:
            self._cerebro.runstop()


def _rewind_interrupted(datas) -> None:
    """A KeyboardInterrupt inside a feed's ``_load`` leaves the slot backtrader made for the
    bar (all NaN) on the line buffers: drop it, so ``stop()`` methods read the last real bar."""
    for data in datas:
        try:
            if len(data) and math.isnan(data.datetime[0]):
                data.backwards(force=True)
        except (IndexError, TypeError):
            continue


def run_live(source, config, bars: pd.DataFrame | None = None, fills=None,
             stopper: SignalStop | None = None, **feed_kw):
    """Run ``config``'s strategy on ``source`` and return an ``engine.BacktestResult``.

    ``fills``: stream to print fills on (``None``: stdout; ``False``: do not print). Ctrl-C or
    SIGTERM (in the main thread) stops the run cleanly; the result then lists ``"stopped by
    Ctrl-C"`` (or ``"stopped by SIGTERM"``) in its warnings and ``analysis["stream"]
    ["interrupted_by"]`` names the signal. ``stopper``: a :class:`SignalStop` already entered
    by the caller (``live_main`` keeps one over the writing of the outputs too); ``None``
    makes one for the run. ``feed_kw`` go to :class:`~m2k_bt.feeds.live.QueueFeed`.
    """
    from ..engine import collect_analysis, make_result

    own = stopper is None
    if own:
        stopper = SignalStop().__enter__()
    feed_kw.setdefault("stop_event", stopper.event)
    try:
        cerebro, feed = live_cerebro(source, config, bars=bars, **feed_kw)
    except BaseException:
        if own:
            stopper.__exit__(None, None, None)
        raise
    if fills is not False:
        cerebro.addanalyzer(FillPrinter, _name="fills", stream=fills)
    stopper.attach(cerebro)
    keyboard = False
    t0 = time.perf_counter()
    try:
        strategy = cerebro.run()[0]
    except KeyboardInterrupt:
        # a Ctrl-C that came outside our handler (another handler, or not the main thread):
        # finish what backtrader did not, so the report is still written
        keyboard = True
        strats = getattr(cerebro, "runningstrats", None) or []
        if not strats:
            raise
        strategy = strats[0]
        _rewind_interrupted(cerebro.datas)
        strategy._stop()
        cerebro.broker.stop()
        for data in cerebro.datas:
            data.stop()
    finally:
        stopper.detach()
        if own:
            stopper.__exit__(None, None, None)
        source.stop()
    elapsed = time.perf_counter() - t0
    interrupted_by = stopper.name or ("SIGINT" if keyboard else None)

    analysis = collect_analysis(strategy)
    analysis["stream"] = feed.summary()
    analysis["stream"]["interrupted_by"] = interrupted_by
    broker = cerebro.broker
    data_report = list(getattr(bars, "attrs", {}).get("report", []) or []) if bars is not None \
        else []
    processed = len(strategy)  # a stop can come between a bar's arrival and the strategy's next
    last_dt = strategy.datetime.datetime(0) if processed else None
    stream = []  # what only the stream knows, after the backtest's warnings
    if feed.delivered > processed:
        stream.append(f"{feed.delivered - processed} bar(s) received after the stop, "
                      f"not traded")
    if interrupted_by:
        how = "Ctrl-C" if interrupted_by == "SIGINT" else interrupted_by
        stream.append(f"stopped by {how} after {processed} bars")
    elif feed.end_reason not in (None, "exhausted"):
        stream.append(f"stream ended early: {feed.end_reason} after {feed.delivered} bars")
    for reason, count in sorted(feed.rejections.items()):
        stream.append(f"stream: {count} bar(s) rejected ({reason})")
    return make_result(
        config,
        final_value=broker.getvalue(),
        bars=processed,
        first_dt=_ny(feed.first_dt if processed else None),
        last_dt=_ny(last_dt),
        analysis=analysis,
        trades=getattr(strategy, "trade_log", []),
        margin_events=getattr(broker, "margin_events", []),
        order_rejections=getattr(strategy, "order_rejections", {}),
        event_warnings=getattr(strategy, "event_warnings", None),
        more_warnings=stream,
        data_report=data_report,
        elapsed=elapsed,
        cerebro=cerebro,
        strategy=strategy,
    )


def build_parser() -> argparse.ArgumentParser:
    from .common import ArgParser, add_common_args

    p = ArgParser(
        prog="run_backtest.py live",
        description="Paper-trade a strategy on a replayed stream of bars with the paper broker "
        "(FuturesBroker + M2KCommInfo); prints fills as they happen and writes the backtest "
        "report. Ctrl-C stops cleanly and still writes the report.",
    )
    g = p.add_argument_group("stream")
    g.add_argument("--replay", required=True, metavar="FILE", help="bar file to stream")
    g.add_argument("--speed", type=float, default=1.0,
                   help="replay speed: 1 = real time (default), 60 = a minute per second, "
                   "0 = as fast as possible")
    g.add_argument("--max-wait", type=float, metavar="SECONDS",
                   help="cap on any one pause of the replay (nights, weekends); default: none")
    g.add_argument("--heartbeat", type=float, default=0.5, metavar="SECONDS",
                   help="feed heartbeat: wait on an empty queue before handing back control (0.5)")
    g.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="end the run after this long without a bar (default: wait for ever)")
    add_common_args(p)
    return p


def _line(stats: dict) -> str:
    if not stats.get("count"):
        return "no samples"
    return (f"p50 {stats['p50_us']:,.0f} us  p99 {stats['p99_us']:,.0f} us  "
            f"({stats['count']} bars)")


def live_main(argv: list[str]) -> int:
    """Entry point of ``run_backtest.py live``; returns the exit status."""
    from ..engine import select_bars
    from ..outputs import OutputFolder
    from ..report.summary import write_outputs
    from .common import config_from_args, default_out, no_contract
    from .ib import ib_main, wants_ib

    if wants_ib(argv):  # trading through Interactive Brokers: m2k_bt.cli.ib
        return ib_main(argv, live_cerebro, SignalStop)
    args = build_parser().parse_args(argv)
    if args.data and args.data != [args.replay]:
        raise ConfigError("live streams --replay FILE; leave out --data (or give the same file)")
    if args.speed is None or not np.isfinite(args.speed) or args.speed < 0:
        raise ConfigError(f"--speed must be >= 0 (1 = real time, 0 = as fast as possible), "
                          f"got {args.speed}")
    if not args.heartbeat > 0:
        raise ConfigError(f"--heartbeat must be seconds > 0, got {args.heartbeat}")
    if not Path(args.replay).is_file():
        # checked here so that the hint names live's flag, not the backtest's --data
        raise DataFeedError(f"replay file not found: {args.replay} (check the --replay path)")
    args.data = [args.replay]
    out = Path(args.out) if args.out else default_out(args.strategy, "live-")
    # the folder is checked and locked before the data is loaded and stays locked while the
    # run streams, as a backtest's: no other run can write into it meanwhile
    with OutputFolder(out):
        bars, config = config_from_args(args)
        selected = select_bars(bars, config)
        selected.attrs = dict(bars.attrs)
        source = ReplaySource(selected, speed=args.speed, max_wait=args.max_wait)
        # from here a signal stops the run, waits for the outputs, and sets the exit status
        with SignalStop(ignore_after=True) as stopper:
            if not args.quiet:
                print(f"live: {len(selected)} bars from {args.replay} at speed {args.speed:g} "
                      f"({config.strategy_name}, {config.spec.root}); Ctrl-C stops and writes "
                      f"the report", flush=True)
            result = run_live(source, config, bars=selected,
                              fills=False if args.quiet else None, stopper=stopper,
                              qcheck=args.heartbeat, idle_timeout=args.idle_timeout,
                              # --contract none: no tick grid, as in the backtest's loader
                              **({"spec": None} if no_contract(args) else {}))
            paths = write_outputs(result, out, plot=not args.no_plot)
    if not args.quiet:  # the outputs are complete: what is printed cannot differ from them
        _print_summary(result, out, paths)
    return stopper.exit_status


def _print_summary(result, out, paths) -> None:
    from ..report.summary import build_report, format_summary

    print(format_summary(build_report(result)))
    lat = result.analysis["latency"]
    stream = result.analysis["stream"]
    print(f"latency off the queue->order: {_line(lat)}; ->end of next: {_line(lat['next'])}; "
          f"queue backlog (put->off the queue, not our latency): {_line(lat['backlog'])}")
    print(f"stream: {stream['delivered']} bars, {stream['rejected']} rejected, "
          f"{len(stream['session_breaks'])} session breaks, ended: "
          f"{stream['end_reason'] or 'stopped'}")
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"outputs: {out} ({', '.join(sorted(Path(p).name for p in paths.values()))})")
