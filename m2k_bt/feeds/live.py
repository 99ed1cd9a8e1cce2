"""Run unchanged strategies on a stream of bars: a live feed fed by a producer thread.

The article's real-time flow, done the way backtrader expects: a producer thread puts bars on a
thread-safe queue, and :class:`QueueFeed`, a live backtrader feed (``islive()`` is true, so cerebro
runs bar by bar with ``preload`` and ``runonce`` off), takes them off on cerebro's thread. What was
backtested is what runs: the strategy, sizer, broker and commission objects are the same ones.

- :class:`Bar`: one OHLCV bar as a producer puts it on the queue, with its put time
  (``time.perf_counter_ns()``) beside it: items are ``(bar, put_ns)`` tuples, and an
  :class:`EndOfStream` sentinel closes the stream.
- :class:`BarSource`: the producer interface, ``start(queue)`` and ``stop()``. Plug a broker or
  vendor stream in by subclassing :class:`ThreadedSource` and writing its ``produce()``.
- :class:`ReplaySource`: streams a bar file or DataFrame at a speed factor (1 = real time,
  0 = as fast as possible), for paper trading and tests.
- :class:`QueueFeed`: checks every bar at the door (malformed, non-positive, high below low,
  off the contract's tick grid, duplicate or out-of-order timestamp). A bad bar is logged,
  counted in ``feed.rejections`` and listed in ``feed.rejected``, never passed on and never fatal.
  While the queue is empty the feed waits ``qcheck`` seconds (a heartbeat, no busy waiting) and
  returns ``None`` so cerebro keeps control. Session breaks (a gap of ``session_gap`` minutes or
  more, or a new CME trade date, i.e. the 17:00-18:00 maintenance break) are noted.
- :class:`LiveLatency`: an analyzer measuring, per bar, our latency: the time from the moment the
  feed takes the bar off the queue to the strategy's order submission (and to the end of the
  strategy's ``next``), in microseconds; the time the bar waited in the queue (put -> taken off)
  is reported apart, as ``backlog``.

Two lines in a cerebro script::

    cerebro.adddata(QueueFeed(source=ReplaySource(df, speed=0), compression=5))
    cerebro.addanalyzer(LiveLatency, _name="latency")

Bars are presented to strategies in naive New York wall-clock time, as our backtest feeds do.

A note on backtrader's live loop: while a live feed has no bar, cerebro still calls the broker's
``next()`` on every heartbeat, and backtrader's ``BackBroker`` then tries pending limit and stop
orders again against the bar they were created on, a fill that the backtest would never make.
``QueueFeed`` (``guard_broker=True``) therefore lets the broker's ``next()`` run only when a bar
has arrived, so live fills are the backtest's fills.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import backtrader as bt
import numpy as np
import pandas as pd

from ..contracts import M2K, ContractSpec, is_on_tick, trade_date
from ..errors import DataFeedError, ParameterError
from ..sessions import NY_ZONE

__all__ = [
    "Bar",
    "EndOfStream",
    "SessionBreak",
    "BarSource",
    "ThreadedSource",
    "ReplaySource",
    "QueueFeed",
    "LiveLatency",
    "REJECT_REASONS",
    "bars_from_frame",
]

logger = logging.getLogger(__name__)

#: Every reason a bar can be rejected for, in the order they are checked.
REJECT_REASONS = (
    "malformed",  # not a Bar, no datetime (None, NaT), a price or volume that is not a finite
    # number, negative volume, open or close outside [low, high]
    "dst_time",  # a naive time that does not exist in New York (the spring DST gap), or an aware
    # time in the second pass of the repeated autumn hour (New York time would run backwards)
    "duplicate",  # same timestamp as the last accepted bar
    "out_of_order",  # earlier than the last accepted bar
    "non_positive",  # a price <= 0
    "high_below_low",  # high < low
    "off_tick",  # a price off the contract's tick grid
    "far_off",  # later than the clock by more than max_ahead, or than the last accepted bar by
    # more than max_gap: a bad stamp (2099) that would otherwise make every real bar after it
    # out_of_order
)


@dataclass(frozen=True)
class Bar:
    """One OHLCV bar as a producer puts it on the queue.

    - ``dt``: bar time, a ``datetime`` (or ``pandas.Timestamp``); tz-aware, or naive New York.
    - ``open``, ``high``, ``low``, ``close``: index points.
    - ``volume``: contracts.
    - ``roll``: true on the first bar of a new contract of a continuous series (the feed's
      ``roll`` line, as :class:`m2k_bt.feeds.bars.BarsFeed` has it), so that strategies roll a held
      position live as they do in a backtest.

    A ``Bar`` is a plain container: it is checked by :class:`QueueFeed`, so that a bad bar from a
    producer is rejected with a reason instead of failing in the producer's thread.
    """

    dt: _dt.datetime
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    roll: bool = False


@dataclass(frozen=True)
class EndOfStream:
    """Sentinel a producer puts on the queue last; ``reason`` says why the stream ended
    (``"exhausted"``, ``"stopped"`` or ``"error: ..."``)."""

    reason: str = "exhausted"


@dataclass(frozen=True)
class SessionBreak:
    """A break between two accepted bars: ``prev`` and ``dt`` are naive New York times,
    ``gap_minutes`` the gap, ``kind`` is ``"gap"`` (>= ``session_gap`` minutes) or
    ``"trade_date"`` (a new CME trade date began: the 17:00-18:00 maintenance break was crossed)."""

    prev: _dt.datetime
    dt: _dt.datetime
    gap_minutes: float
    kind: str


def _stamp() -> int:
    return time.perf_counter_ns()


class BarSource(ABC):
    """The producer interface: anything that can put bars on a queue from its own thread.

    ``start(q)`` must return at once and then put ``(bar, put_ns)`` tuples on ``q``, where
    ``put_ns`` is ``time.perf_counter_ns()`` taken just before the put, and finally one
    :class:`EndOfStream`. ``stop()`` asks it to finish soon; it may be called more than once, and
    from any thread. ``is_alive()`` tells whether it may still put bars (the feed ends the run
    when a source is dead and its queue empty, even if it never sent an :class:`EndOfStream`).
    :class:`ThreadedSource` does the thread, stamping and sentinel work for you.
    """

    @abstractmethod
    def start(self, q: queue.Queue) -> None:
        """Begin putting bars on ``q``; return at once."""

    @abstractmethod
    def stop(self) -> None:
        """Ask the producer to stop; safe to call twice or before ``start``."""

    def is_alive(self) -> bool:
        """Whether the producer may still put bars (default: always)."""
        return True


class ThreadedSource(BarSource):
    """A :class:`BarSource` that runs :meth:`produce` on a daemon thread.

    Subclasses write :meth:`produce`, calling :meth:`emit` for each bar and :meth:`wait` to
    pause; both return ``False`` once a stop was asked for, and ``produce`` should then return.
    ``produce`` may return a reason string for the :class:`EndOfStream` (default
    ``"exhausted"``); ``"stopped"`` is used when a stop was asked for, and ``"error: ..."``
    when ``produce`` raised (the error is logged, the run ends cleanly).
    """

    #: seconds a blocked put waits before checking for a stop request again
    PUT_POLL = 0.1

    def __init__(self, name: str = "bar-source") -> None:
        self.name = name
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self.emitted = 0
        self.end_reason: str | None = None

    def start(self, q: queue.Queue) -> None:
        if self._thread is not None:
            raise ParameterError(f"{self.name}: a source streams once; make a new one to rerun")
        self._queue = q
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_event.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self._stop_event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` without busy waiting; ``False`` if a stop was asked for."""
        if seconds > 0:
            return not self._stop_event.wait(seconds)
        return not self._stop_event.is_set()

    def emit(self, bar: Bar) -> bool:
        """Stamp ``bar`` with ``perf_counter_ns()`` and put it on the queue; ``False`` when a
        stop was asked for (the bar is then not put)."""
        q = self._queue
        while not self._stop_event.is_set():
            try:
                q.put((bar, _stamp()), timeout=self.PUT_POLL)
            except queue.Full:
                continue
            self.emitted += 1
            return True
        return False

    @abstractmethod
    def produce(self) -> str | None:
        """Put the stream's bars with :meth:`emit`; return an end reason or ``None``."""

    def _run(self) -> None:
        reason = "exhausted"
        try:
            reason = self.produce() or "exhausted"
        except Exception as exc:  # a producer bug ends the stream, it does not hang the run
            logger.exception("%s: producer failed", self.name)
            reason = f"error: {type(exc).__name__}: {exc}"
        if self._stop_event.is_set() and not reason.startswith("error"):
            reason = "stopped"
        self.end_reason = reason
        self._finish(EndOfStream(reason))

    def _finish(self, sentinel: EndOfStream) -> None:
        q = self._queue
        while True:
            try:
                q.put(sentinel, timeout=self.PUT_POLL)
                return
            except queue.Full:
                if self._stop_event.is_set():  # the consumer stopped us: nobody is reading
                    return


def bars_from_frame(df: pd.DataFrame) -> list[Bar]:
    """:class:`Bar` objects from an OHLCV DataFrame with a DatetimeIndex (tz-aware or naive
    New York), e.g. one from ``m2k_bt.feeds.loaders.load_bars``. Rows are kept as they are, bad ones
    included: checking is the feed's job. Aware times are given in UTC.

    >>> idx = pd.DatetimeIndex(["2024-01-02 09:30"], tz="America/New_York")
    >>> df = pd.DataFrame({"open": [2000.0], "high": [2001.0], "low": [1999.5],
    ...                    "close": [2000.5], "volume": [10.0]}, index=idx)
    >>> bars_from_frame(df)[0].close
    2000.5
    """
    if not isinstance(df, pd.DataFrame):
        raise DataFeedError(f"bars must be a DataFrame, got {type(df).__name__}")
    missing = [c for c in ("open", "high", "low", "close") if c not in df.columns]
    if missing:
        raise DataFeedError(
            f"bars DataFrame lacks column(s) {', '.join(missing)}; "
            f"need open, high, low, close (volume optional), has {list(df.columns)}"
        )
    if not isinstance(df.index, pd.DatetimeIndex):
        raise DataFeedError(
            f"bars DataFrame needs a DatetimeIndex of bar times, got {type(df.index).__name__}"
        )
    # aware times stay aware (in UTC, which is unambiguous): the feed converts them to New York
    # and can then tell the two passes of the repeated autumn hour apart
    idx = df.index
    dts = (idx.tz_convert("UTC") if idx.tz is not None else idx).to_pydatetime()
    cols = [df[c].to_numpy(dtype=float) for c in ("open", "high", "low", "close")]
    n = len(df)
    vol = df["volume"].to_numpy(dtype=float) if "volume" in df.columns else np.zeros(n)
    roll = (df["roll"].fillna(False).to_numpy(dtype=bool) if "roll" in df.columns
            else np.zeros(n, dtype=bool))
    return [
        Bar(dt, float(o), float(h), float(lo), float(c), float(v), bool(r))
        for dt, o, h, lo, c, v, r in zip(dts, *cols, vol, roll)
    ]


def _load_file(path: str | os.PathLike) -> pd.DataFrame:
    try:
        from .loaders import load_bars
    except ImportError:  # pragma: no cover - feeds.py ships with the package
        load_bars = None
    if load_bars is not None:
        return load_bars(path)
    if not os.path.exists(path):
        raise DataFeedError(f"bar file {os.fspath(path)!r} does not exist")
    df = pd.read_csv(path, index_col=0, parse_dates=True)
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df


class ReplaySource(ThreadedSource):
    """Stream recorded bars into the queue at ``speed`` times real time.

    - ``bars``: a file path (read with ``m2k_bt.feeds.loaders.load_bars``), a DataFrame such as
      ``load_bars`` returns, or an iterable of :class:`Bar`.
    - ``speed`` (def: ``0.0``): 1 = real time (a 5-minute bar every 5 minutes), 60 = a minute of
      market time per second, 0 = as fast as the queue takes them.
    - ``max_wait`` (def: ``None``): cap in seconds on any one pause, so that nights and weekends
      do not stall a paper-trading replay; ``None`` keeps the recorded gaps.

    Bars are replayed as recorded, bad ones included, so the feed's checks see them.
    """

    def __init__(
        self,
        bars: str | os.PathLike | pd.DataFrame | Iterable[Bar],
        speed: float = 0.0,
        max_wait: float | None = None,
        name: str = "replay",
    ) -> None:
        super().__init__(name=name)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not (
            math.isfinite(speed) and speed >= 0
        ):
            raise ParameterError(
                f"speed must be a number >= 0 (1 = real time, 0 = as fast as possible), "
                f"got {speed!r}"
            )
        if max_wait is not None and not (
            isinstance(max_wait, (int, float)) and math.isfinite(max_wait) and max_wait >= 0
        ):
            raise ParameterError(f"max_wait must be seconds >= 0 or None, got {max_wait!r}")
        self.speed = float(speed)
        self.max_wait = None if max_wait is None else float(max_wait)
        if isinstance(bars, (str, os.PathLike)):
            bars = _load_file(bars)
        if isinstance(bars, pd.DataFrame):
            self.bars = bars_from_frame(bars)
        else:
            try:
                self.bars = list(bars)
            except TypeError as exc:
                raise DataFeedError(
                    f"bars must be a file path, a DataFrame or an iterable of Bar, "
                    f"got {type(bars).__name__}"
                ) from exc

    def _pause(self, prev, cur) -> float:
        try:
            seconds = (cur.dt - prev.dt).total_seconds() / self.speed
        except (AttributeError, TypeError):  # a malformed bar: no pause, the feed rejects it
            return 0.0
        seconds = max(0.0, seconds)
        return seconds if self.max_wait is None else min(seconds, self.max_wait)

    def produce(self) -> str | None:
        prev = None
        for bar in self.bars:
            if prev is not None and self.speed > 0 and not self.wait(self._pause(prev, bar)):
                return "stopped"
            if not self.emit(bar):
                return "stopped"
            prev = bar
        return "exhausted"


def _naive_ny(dt) -> tuple[_dt.datetime, str | None]:
    """``(naive New York time, DST problem or None)``; raises TypeError for a non-time."""
    if dt is pd.NaT or isinstance(dt, type(pd.NaT)):  # NaT is a datetime subclass, not a Timestamp
        raise TypeError("dt is NaT (not a time)")
    if isinstance(dt, pd.Timestamp):
        dt = dt.to_pydatetime()
    if not isinstance(dt, _dt.datetime):
        raise TypeError(f"dt must be a datetime, got {type(dt).__name__}")
    if dt.tzinfo is not None:
        local = dt.astimezone(NY_ZONE)
        if local.fold:  # zoneinfo marks the second pass of the repeated hour
            return local.replace(tzinfo=None, fold=0), (
                f"{dt.isoformat()} is {local.replace(tzinfo=None):%Y-%m-%d %H:%M} New York "
                f"standard time, the second pass of the repeated autumn hour: New York "
                f"wall-clock time would run backwards (CME Globex is closed then)"
            )
        return local.replace(tzinfo=None), None
    there_and_back = dt.replace(tzinfo=NY_ZONE).astimezone(_dt.timezone.utc).astimezone(NY_ZONE)
    if there_and_back.replace(tzinfo=None) != dt:
        return dt, (f"{dt:%Y-%m-%d %H:%M} does not exist in America/New_York (the spring DST "
                    f"gap); give the bar its UTC offset")
    return dt, None


def _bar_problem(
    bar, last_dt: _dt.datetime | None, tick: float | None, now: _dt.datetime | None = None,
    max_ahead: _dt.timedelta | None = None, max_gap: _dt.timedelta | None = None,
    jumped: _dt.datetime | None = None,
) -> tuple[_dt.datetime | None, str | None, str]:
    """``(naive NY dt or None, reason or None, detail)`` for one queue item's bar.

    ``tick`` ``None`` skips the tick-grid check; ``now`` (naive New York) with ``max_ahead``
    and ``last_dt`` with ``max_gap`` bound how far ahead a bar may be (``far_off``); a bar
    after ``jumped`` (the last bar rejected for the gap) and within ``max_gap`` of it is
    accepted: the stream itself moved on (an outage), so it is not rejected for ever."""
    if not isinstance(bar, Bar):
        return None, "malformed", f"expected a Bar, got {type(bar).__name__}"
    try:
        dt, dst_problem = _naive_ny(bar.dt)
    except (TypeError, ValueError, OverflowError) as exc:
        return None, "malformed", f"bad dt {bar.dt!r}: {exc}"
    prices = {}
    for name in ("open", "high", "low", "close", "volume"):
        value = getattr(bar, name)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            return dt, "malformed", f"{name} is {value!r}, not a number"
        value = float(value)
        if not math.isfinite(value):
            return dt, "malformed", f"{name} is {value}"
        prices[name] = value
    if prices["volume"] < 0:
        return dt, "malformed", f"volume {prices['volume']} is negative"
    if dst_problem:
        return dt, "dst_time", dst_problem
    if last_dt is not None:
        if dt == last_dt:
            return dt, "duplicate", f"same time as the last accepted bar {last_dt}"
        if dt < last_dt:
            return dt, "out_of_order", f"earlier than the last accepted bar {last_dt}"
    for name in ("open", "high", "low", "close"):
        if prices[name] <= 0:
            return dt, "non_positive", f"{name} {prices[name]} <= 0"
    if prices["high"] < prices["low"]:
        return dt, "high_below_low", f"high {prices['high']} < low {prices['low']}"
    for name in ("open", "close"):
        if not prices["low"] <= prices[name] <= prices["high"]:
            return dt, "malformed", (
                f"{name} {prices[name]} outside [low {prices['low']}, high {prices['high']}]"
            )
    for name in ("open", "high", "low", "close"):
        if tick is not None and not is_on_tick(prices[name], tick):
            return dt, "off_tick", f"{name} {prices[name]} is not a multiple of tick {tick}"
    if now is not None and max_ahead is not None and dt - now > max_ahead:
        return dt, "far_off", (f"{dt} is more than {max_ahead} after the clock "
                               f"({now:%Y-%m-%d %H:%M})")
    if last_dt is not None and max_gap is not None and dt - last_dt > max_gap:
        moved_on = jumped is not None and jumped < dt <= jumped + max_gap
        if not moved_on:
            return dt, "far_off", (f"{dt} is more than {max_gap} after the last accepted bar "
                                   f"{last_dt}")
    return dt, None, ""


def _install_idle_guard(cerebro) -> bool:
    """Let ``cerebro.broker.next()`` run only when some data has a new bar (see module doc)."""
    broker = cerebro.broker
    if broker is None or "next" in vars(broker):  # no broker yet, or already guarded/patched
        return False
    original = broker.next
    datas = cerebro.datas
    last = [tuple(0 for _ in datas)]

    def next_on_new_bar():
        stamp = tuple(len(d) for d in datas)
        if stamp == last[0]:
            return  # a heartbeat: no bar arrived, nothing can fill
        last[0] = stamp
        original()

    broker.next = next_on_new_bar
    broker._m2k_idle_guard = True
    return True


def _remove_idle_guard(cerebro) -> None:
    broker = getattr(cerebro, "broker", None)
    if broker is not None and vars(broker).pop("_m2k_idle_guard", False):
        vars(broker).pop("next", None)


class QueueFeed(bt.feed.DataBase):
    """A live feed that takes bars from a thread-safe queue filled by a :class:`BarSource`.

    Lines: the standard ones plus ``roll`` (1.0 on a bar whose :attr:`Bar.roll` is true, the
    first bar of a new contract; else 0.0), as :class:`m2k_bt.feeds.bars.BarsFeed` has it.

    Params:

    - ``source`` (def: ``None``): the :class:`BarSource`; started when cerebro starts the feed,
      stopped when it stops it.
    - ``spec`` (def: ``M2K``): the :class:`~m2k_bt.contracts.ContractSpec` whose tick grid
      bars must sit on; ``None`` checks no tick grid (data that is not a futures contract's,
      ``--contract none``).
    - ``clock`` (def: ``None``): a callable returning the time now (a ``datetime``, aware, or
      naive New York); ``None`` is the wall clock.
    - ``max_ahead`` (def: ``1440``): minutes a bar may be stamped after the clock; a later one
      is rejected as ``far_off``. ``None`` turns the check off (a replay of future-dated data).
    - ``max_gap`` (def: ``43200``, 30 days): minutes a bar may follow the last accepted bar
      by; a later one is rejected as ``far_off``, unless the next bar confirms it (two bars in
      a row that far ahead, within ``max_gap`` of each other: the stream moved on). ``None``
      turns the check off.
    - ``qcheck`` (def: ``0.5``): heartbeat, seconds to wait on an empty queue before handing
      control back to cerebro (``_load`` returns ``None``); must be > 0.
    - ``maxsize`` (def: ``1000``): queue capacity in bars; a full queue makes the producer wait.
      ``0`` is unbounded.
    - ``session_gap`` (def: ``60``): minutes between two bars noted as a session break.
    - ``idle_timeout`` (def: ``None``): seconds without any queue item after which the feed
      ends the run (``end_reason`` ``"idle timeout"``); ``None`` waits for ever.
    - ``guard_broker`` (def: ``True``): run the broker's ``next()`` only when a bar has arrived
      (see the module doc: without it, pending limit and stop orders can fill on heartbeats
      against the bar that created them).
    - ``timeframe`` (def: ``Minutes``), ``compression`` (def: ``1``): the bar size, for
      analyzers; set ``compression=5`` for 5-minute bars.
    - ``stop_event`` (def: ``None``): a ``threading.Event``; once it is set the feed ends the
      stream at its next call (``end_reason`` ``"stopped"``), even if it was set before the run
      began (a stop that ``cerebro.runstop()`` alone would lose: ``run()`` clears it).

    After (or during) a run:

    - ``rejections``: ``{reason: count}`` over :data:`REJECT_REASONS` that occurred.
    - ``rejected``: ``[(dt, reason), ...]`` in arrival order (``dt`` naive New York or ``None``).
    - ``session_breaks``: list of :class:`SessionBreak`.
    - ``delivered``: bars passed to the strategy; ``heartbeats``: empty waits of ``qcheck``.
    - ``end_reason``: why the stream ended (``None`` while running, or when cerebro stopped
      first): the source's :class:`EndOfStream` reason, ``"source died"`` or ``"idle timeout"``.
    - ``first_dt``, ``last_dt``: first and last delivered bar times (naive New York).
    - ``put_ns``: the producer's put stamp of the current bar (``None`` if it had none).
    - ``get_ns``: ``time.perf_counter_ns()`` when the current bar was taken off the queue.
    """

    lines = ("roll",)

    params = (
        ("source", None),
        ("spec", M2K),
        ("clock", None),
        ("max_ahead", 1440.0),
        ("max_gap", 43200.0),
        ("qcheck", 0.5),
        ("maxsize", 1000),
        ("session_gap", 60.0),
        ("idle_timeout", None),
        ("guard_broker", True),
        ("timeframe", bt.TimeFrame.Minutes),
        ("compression", 1),
        ("stop_event", None),
    )

    def __init__(self) -> None:
        src = self.p.source
        if not (callable(getattr(src, "start", None)) and callable(getattr(src, "stop", None))):
            raise ParameterError(
                f"QueueFeed source must be a BarSource (with start(queue) and stop()), "
                f"e.g. ReplaySource(df); got {src!r}"
            )
        if self.p.spec is not None and not isinstance(self.p.spec, ContractSpec):
            raise ParameterError(f"QueueFeed spec must be a ContractSpec or None, got "
                                 f"{self.p.spec!r}")
        for name in ("max_ahead", "max_gap"):
            v = getattr(self.p, name)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and math.isfinite(v) and v > 0):
                raise ParameterError(f"QueueFeed {name} must be minutes > 0 or None, got {v!r}")
        if self.p.clock is not None and not callable(self.p.clock):
            raise ParameterError(f"QueueFeed clock must be a callable returning a datetime, "
                                 f"got {self.p.clock!r}")
        q = self.p.qcheck
        if not (isinstance(q, (int, float)) and math.isfinite(q) and q > 0):
            raise ParameterError(f"QueueFeed qcheck must be seconds > 0, got {q!r}")
        if not (isinstance(self.p.maxsize, int) and self.p.maxsize >= 0):
            raise ParameterError(f"QueueFeed maxsize must be an int >= 0, got {self.p.maxsize!r}")
        if not (isinstance(self.p.session_gap, (int, float)) and self.p.session_gap > 0):
            raise ParameterError(
                f"QueueFeed session_gap must be minutes > 0, got {self.p.session_gap!r}"
            )
        it = self.p.idle_timeout
        if it is not None and not (isinstance(it, (int, float)) and it > 0):
            raise ParameterError(f"QueueFeed idle_timeout must be seconds > 0 or None, got {it!r}")
        ev = self.p.stop_event
        if ev is not None and not callable(getattr(ev, "is_set", None)):
            raise ParameterError(f"QueueFeed stop_event must be a threading.Event, got {ev!r}")
        self._reset_state()

    def _reset_state(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=self.p.maxsize)
        self.rejections: dict[str, int] = {}
        self.rejected: list[tuple[_dt.datetime | None, str]] = []
        self.session_breaks: list[SessionBreak] = []
        self.delivered = 0
        self.heartbeats = 0
        self.end_reason: str | None = None
        self.put_ns: int | None = None
        self.get_ns: int | None = None
        self._last_dt: _dt.datetime | None = None
        self._jumped: _dt.datetime | None = None
        self.first_dt: _dt.datetime | None = None
        self._ended = False
        self._idle_since: float | None = None
        self._guarded = False

    # -- backtrader hooks ---------------------------------------------------------------------
    def islive(self) -> bool:
        return True

    def haslivedata(self) -> bool:
        return not self.queue.empty()

    def start(self) -> None:
        super().start()
        self._reset_state()
        env = getattr(self, "_env", None)
        if self.p.guard_broker and env is not None:
            self._guarded = _install_idle_guard(env)
        self.put_notification(self.CONNECTED)
        self.p.source.start(self.queue)

    def stop(self) -> None:
        self.p.source.stop()
        if self._guarded:
            _remove_idle_guard(self._env)
            self._guarded = False
        super().stop()

    def _stop_asked(self) -> bool:
        ev = self.p.stop_event
        return ev is not None and ev.is_set()

    def _load(self):
        if self._ended:
            return False
        if self._stop_asked():
            return self._end("stopped")
        while True:
            wait = self._qcheck
            try:
                item = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
            except queue.Empty:
                return self._end("stopped") if self._stop_asked() else self._on_idle()
            got = _stamp()
            self._idle_since = None
            if isinstance(item, EndOfStream):
                return self._end(item.reason)
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], int):
                bar, put_ns = item
            else:
                bar, put_ns = item, None
            if self._accept(bar):
                self.put_ns = put_ns
                self.get_ns = got
                self.delivered += 1
                if self.delivered == 1:
                    self.put_notification(self.LIVE)
                return True

    # -- internals -----------------------------------------------------------------------------
    def _on_idle(self):
        self.heartbeats += 1
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        if self.queue.empty() and not self.p.source.is_alive():
            return self._end("source died")
        it = self.p.idle_timeout
        if it is not None and now - self._idle_since >= it:
            return self._end("idle timeout")
        return None

    def _end(self, reason: str) -> bool:
        self._ended = True
        self.end_reason = reason
        log = logger.warning if reason.startswith(("error", "source died", "idle")) else logger.info
        log("%s: stream ended (%s) after %d bars", self._feedname(), reason, self.delivered)
        self.put_notification(self.DISCONNECTED)
        return False

    def _feedname(self) -> str:
        return self._name or "QueueFeed"

    def _reject(self, dt, reason: str, detail: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        self.rejected.append((dt, reason))
        logger.warning("%s: bar %s rejected (%s): %s", self._feedname(), dt, reason, detail)

    def _accept(self, bar) -> bool:
        p = self.p
        try:
            dt, reason, detail = _bar_problem(
                bar, self._last_dt, None if p.spec is None else p.spec.tick_size,
                now=self._now() if p.max_ahead is not None else None,
                max_ahead=None if p.max_ahead is None else _dt.timedelta(minutes=p.max_ahead),
                max_gap=None if p.max_gap is None else _dt.timedelta(minutes=p.max_gap),
                jumped=self._jumped)
        except Exception as exc:  # never let a strange object crash the strategy
            dt, reason, detail = None, "malformed", f"{type(exc).__name__}: {exc}"
        if reason is not None:
            if reason == "far_off":  # the next bar may confirm that the stream moved on
                self._jumped = dt
            self._reject(dt, reason, detail)
            return False
        self._jumped = None
        if self._last_dt is not None:
            self._note_break(self._last_dt, dt)
        self._last_dt = dt
        if self.first_dt is None:
            self.first_dt = dt
        lines = self.lines
        lines.datetime[0] = bt.date2num(dt)
        lines.open[0] = float(bar.open)
        lines.high[0] = float(bar.high)
        lines.low[0] = float(bar.low)
        lines.close[0] = float(bar.close)
        lines.volume[0] = float(bar.volume)
        lines.openinterest[0] = 0.0
        lines.roll[0] = 1.0 if bar.roll else 0.0
        return True

    def _now(self) -> _dt.datetime:
        """The clock's time, naive New York."""
        now = self.p.clock() if self.p.clock is not None else _dt.datetime.now(NY_ZONE)
        if isinstance(now, pd.Timestamp):
            now = now.to_pydatetime()
        return now.astimezone(NY_ZONE).replace(tzinfo=None) if now.tzinfo is not None else now

    @property
    def last_dt(self) -> _dt.datetime | None:
        """Time of the last bar delivered (naive New York), ``None`` before the first."""
        return self._last_dt

    def _note_break(self, prev: _dt.datetime, dt: _dt.datetime) -> None:
        gap = (dt - prev).total_seconds() / 60.0
        if gap >= self.p.session_gap:
            kind = "gap"
        elif trade_date(dt) != trade_date(prev):
            kind = "trade_date"
        else:
            return
        self.session_breaks.append(SessionBreak(prev, dt, gap, kind))
        logger.info("%s: session break %s -> %s (%.0f min, %s)", self._feedname(), prev, dt,
                    gap, kind)

    def summary(self) -> dict:
        """JSON-ready account of the stream, for reports."""
        return {
            "delivered": self.delivered,
            "rejected": len(self.rejected),
            "rejections": dict(self.rejections),
            "rejected_bars": [
                [dt.isoformat() if dt is not None else None, reason] for dt, reason in self.rejected
            ],
            "session_breaks": [
                {"prev": b.prev.isoformat(), "dt": b.dt.isoformat(),
                 "gap_minutes": round(b.gap_minutes, 3), "kind": b.kind}
                for b in self.session_breaks
            ],
            "heartbeats": self.heartbeats,
            "end_reason": self.end_reason,
        }


def _stats_us(samples_ns: list[int]) -> dict:
    if not samples_ns:
        return {"count": 0, "p50_us": None, "p99_us": None, "mean_us": None, "max_us": None}
    a = np.asarray(samples_ns, dtype=float) / 1000.0
    return {
        "count": int(a.size),
        "p50_us": float(np.percentile(a, 50)),
        "p99_us": float(np.percentile(a, 99)),
        "mean_us": float(a.mean()),
        "max_us": float(a.max()),
    }


class LiveLatency(bt.Analyzer):
    """Our latency per bar: from the moment the feed takes a bar off the queue to the strategy
    acting on it; and, apart, how long the bar waited in the queue.

    Works with unchanged strategies and any broker: at start it wraps the broker instance's
    ``submit`` (removed again at stop) to stamp ``time.perf_counter_ns()`` when the strategy's
    order has been submitted, and reads the stamps of the bar being processed from the order's
    data (a :class:`QueueFeed`: ``get_ns``, taken off the queue, and ``put_ns``, the producer's
    put; orders on other feeds are not timed). A bar that made several orders counts once, at
    its first order. Percentiles are numpy's linear ones.

    ``get_ns`` is taken when ``queue.get`` returns, so the figures are the processing latency
    (feed checks, indicators, strategy, broker submit) whatever the producer's pace. The wait in
    the queue is ``backlog``: with a replay at speed 0 the producer runs ahead and the backlog
    grows with the queue, which says nothing about our latency.

    ``get_analysis()`` keys (times in microseconds, ``None`` without samples):

    - ``count``, ``p50_us``, ``p99_us``, ``mean_us``, ``max_us``: taken off the queue -> order
      submitted, over bars on which the strategy submitted an order.
    - ``next``: the same statistics for taken off the queue -> end of the strategy's ``next()``,
      over every bar delivered (the processing latency when no order is made).
    - ``backlog``: the same statistics for producer's put -> taken off the queue, over bars
      with a put stamp (the queue wait, not our latency).
    - ``orders``: orders submitted by the strategy.
    """

    def start(self) -> None:
        self._lat_submit: list[int] = []
        self._lat_next: list[int] = []
        self._lat_backlog: list[int] = []
        self._lat_orders = 0
        self._lat_bars: set = set()
        broker = self.strategy.broker
        self._lat_broker = broker
        self._lat_wrapped = "submit" not in vars(broker)
        if not self._lat_wrapped:
            logger.warning("LiveLatency: broker.submit is already wrapped; order latency not timed")
            return
        original = broker.submit
        me = self

        def submit(order, *args, **kwargs):
            ret = original(order, *args, **kwargs)
            now = time.perf_counter_ns()
            if order.owner is me.strategy:
                me._lat_on_submit(order, now)
            return ret

        broker.submit = submit

    def _lat_on_submit(self, order, now: int) -> None:
        self._lat_orders += 1
        data = order.data
        get_ns = getattr(data, "get_ns", None)
        if get_ns is None:
            return
        key = (id(data), len(data))
        if key in self._lat_bars:
            return
        self._lat_bars.add(key)
        self._lat_submit.append(now - get_ns)

    def next(self) -> None:
        now = time.perf_counter_ns()
        data = self.strategy.data
        get_ns = getattr(data, "get_ns", None)
        if get_ns is None:
            return
        self._lat_next.append(now - get_ns)
        put_ns = getattr(data, "put_ns", None)
        if put_ns is not None:
            self._lat_backlog.append(get_ns - put_ns)

    def stop(self) -> None:
        if self._lat_wrapped:
            vars(self._lat_broker).pop("submit", None)
            self._lat_wrapped = False

    def get_analysis(self) -> dict:
        out = _stats_us(self._lat_submit)
        out["next"] = _stats_us(self._lat_next)
        out["backlog"] = _stats_us(self._lat_backlog)
        out["orders"] = self._lat_orders
        return out
