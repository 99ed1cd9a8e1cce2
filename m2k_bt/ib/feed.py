"""Bars from IB for backtrader: history to warm the indicators up, then IB's 5-second real-time
bars aggregated to the strategy's bar size, as a :class:`~m2k_bt.feeds.live.BarSource` for the
live :class:`~m2k_bt.feeds.live.QueueFeed` (which checks every bar at the door and drops a
duplicate or out-of-order one, so no bar reaches the strategy twice).

- :class:`BarAggregator`: 5-second bars -> ``minutes``-minute bars on the clock grid (New York
  wall-clock boundaries: the CME session opens and closes on the hour). A bar is handed on once,
  when it is complete: when the 5-second bar that ends it arrives, or else when the first of the
  next bar arrives. A gap (bars missing while Globex was open) is logged and listed in ``gaps``.
- :class:`IBBarSource`: the history (``history``, an IB duration such as ``"2 D"``), then the
  real-time subscription. ``history_end`` is the time of the last history bar: the broker
  sends no order decided on a bar up to it.
- **After a reconnect** the source asks IB for the bars it missed (history from the last bar
  handed on to now), hands on each complete one that is later than the last handed on (so
  none twice, and the strategy acts on each once), journals the gap as ``gap`` with
  ``backfilled``, and then subscribes again. Bars IB cannot give stay a logged gap.
- **Partial bars**: a bar that may lack 5-second bars from before a subscription (it began in
  the bar's middle, at start or after a reconnect; or the bar was being built across an outage)
  is replaced by IB's history bar, the bars after it held back meanwhile so they stay in
  order; when IB's history has not got it, it is handed on as built and journalled
  (``partial_bar``).
- **The roll** (given ``month``): when the old month's last session before its roll moment
  (:func:`~m2k_bt.ib.contract.roll_moment`, 18:00 New York on the eve of the roll date) ends
  (a 5-second bar ending in the hour before it, or a timer at the hour's start),
  the source resolves the next month (checked against our facts as at start), moves the
  subscription there, and marks the first bar of the new month ``roll``, as the backtests'
  continuous series marks it: the strategy then closes and reopens as it does in a backtest.
  :meth:`IBBarSource.contract_for` tells the broker which month a bar belongs to.

Bars are labelled with their start time (IB's convention and our bar files').
"""

from __future__ import annotations

import datetime as _dt
import logging
import queue
import threading

from ..contracts import DEFAULT_ROLL_DAYS, ContractMonth, ContractSpec
from ..errors import ParameterError
from ..feeds.live import Bar, BarSource, EndOfStream
from ..sessions import NY_ZONE, is_globex_open

__all__ = ["BarAggregator", "IBBarSource", "bar_size_setting"]

logger = logging.getLogger(__name__)

#: IB's real-time bars are 5 seconds long (the only size it offers).
RT_SECONDS = 5
#: How long before a roll moment a 5-second bar may end and still start the switch to the next
#: month: the hour of CME's maintenance break, so the old month's session runs to its end.
ROLL_LEAD = _dt.timedelta(hours=1)
#: Times a partial bar's history bar is asked for, a second apart, before it is handed on
#: as built.
HISTORY_TRIES = 3
_UTC = _dt.timezone.utc


def bar_size_setting(minutes: int) -> str:
    """IB's ``barSizeSetting`` for a bar of ``minutes``.

    >>> bar_size_setting(1), bar_size_setting(5), bar_size_setting(60)
    ('1 min', '5 mins', '1 hour')
    """
    if minutes == 60:
        return "1 hour"
    return "1 min" if minutes == 1 else f"{minutes} mins"


def _check_minutes(minutes: int) -> int:
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1 \
            or 60 % minutes:
        raise ParameterError(f"bar minutes must divide an hour (1, 2, 3, 5, 10, 15, 20, 30, 60),"
                             f" got {minutes!r}")
    return minutes


class BarAggregator:
    """Aggregate 5-second bars (aware start times) into ``minutes``-minute bars.

    :meth:`add` returns the bars completed by one 5-second bar, each
    ``(start, open, high, low, close, volume)`` with an aware UTC start.

    >>> agg = BarAggregator(1)
    >>> t0 = _dt.datetime(2025, 10, 1, 14, 30, tzinfo=_dt.timezone.utc)
    >>> out = [agg.add(t0 + _dt.timedelta(seconds=5 * i), 2000 + i, 2001 + i, 1999 + i, 2000.5 + i)
    ...        for i in range(12)]
    >>> [len(o) for o in out]    # complete when the 5-second bar ending the minute arrives
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    >>> out[-1][0][1:5]           # open of the first, max high, min low, close of the last
    (2000, 2012, 1999, 2011.5)
    """

    def __init__(self, minutes: int) -> None:
        self.minutes = _check_minutes(minutes)
        self.span = _dt.timedelta(minutes=minutes)
        self._cur: list | None = None
        self.last_start: _dt.datetime | None = None  # start of the last bar handed on
        self.stale = 0  # 5-second bars older than the bar being built (e.g. after a reconnect)
        self.gaps: list[tuple[_dt.datetime, _dt.datetime, int]] = []
        # starts of bars handed on that may lack 5-second bars from before a subscription
        # (one that began in their middle, or an outage in their middle)
        self.partial: set[_dt.datetime] = set()
        self._whole = False
        self._fresh = False

    def _bucket(self, t: _dt.datetime) -> _dt.datetime:
        t = t.astimezone(_UTC)
        minute = (t.minute // self.minutes) * self.minutes
        return t.replace(minute=minute, second=0, microsecond=0)

    def add(self, t: _dt.datetime, o: float, h: float, lo: float, c: float,
            v: float = 0.0) -> list[tuple]:
        t = t.astimezone(_UTC)
        start = self._bucket(t)
        out = []
        if self.last_start is not None and start <= self.last_start:
            self.stale += 1
            return out
        cur = self._cur
        if cur is not None and start != cur[0]:
            if start < cur[0]:
                self.stale += 1
                return out
            out.append(self._emit())  # the next bar began: this one is as complete as it gets
            cur = None
        if cur is None:
            self._cur = [start, o, h, lo, c, v]
            self._whole = not self._fresh or t == start
        else:
            cur[2], cur[3], cur[4], cur[5] = max(cur[2], h), min(cur[3], lo), c, cur[5] + v
        self._fresh = False
        if t + _dt.timedelta(seconds=RT_SECONDS) >= start + self.span:
            out.append(self._emit())
        return out

    def subscribed(self) -> None:
        """A (new) subscription begins: the first bar it builds may lack the 5-second bars
        before it, and so does a bar being built across an outage; both are marked
        ``partial`` when handed on."""
        self._fresh = True
        if self._cur is not None:
            self._whole = False

    def drop_partial(self) -> None:
        """Forget the bar being built (its contract ended: a roll)."""
        self._cur = None

    def _emit(self) -> tuple:
        bar = tuple(self._cur)
        self._cur = None
        if not self._whole:
            self.partial.add(bar[0])
        self.note(bar[0])
        return bar

    def note(self, start: _dt.datetime) -> None:
        """Record ``start`` as handed on (history bars too), logging a gap before it; a bar
        being built that starts no later is dropped (the history's bar replaces it)."""
        prev = self.last_start
        self.last_start = start
        if self._cur is not None and self._cur[0] <= start:
            self._cur = None
        if prev is None:
            return
        missing, t = 0, prev + self.span
        while t < start and missing < 10_000:
            if is_globex_open(t.astimezone(NY_ZONE)):
                missing += 1
            t += self.span
        if missing:
            self.gaps.append((prev, start, missing))
            logger.warning("gap: %d bar(s) of %d min missing between %s and %s (Globex open)",
                           missing, self.minutes, prev, start)


class IBBarSource(BarSource):
    """History, then real-time bars of ``contract`` from a connected
    :class:`~m2k_bt.ib.store.IBStore`, put on the :class:`~m2k_bt.feeds.live.QueueFeed`'s queue.

    - ``minutes`` (def: ``5``): the strategy's bar size (must divide an hour).
    - ``history`` (def: ``"2 D"``): IB duration of the warm-up history.
    - ``what`` (def: ``"TRADES"``): IB's ``whatToShow``. ``use_rth`` (def: ``False``).
    - ``on_event`` (def: ``None``): ``fn(kind, **fields)`` for gaps and subscriptions (the
      journal's ``write``).
    - ``month`` (def: ``None``): the :class:`~m2k_bt.contracts.ContractMonth` of
      ``contract``; given, the source rolls to the next month on our calendar (module doc);
      ``days_before`` (def: 8) is the calendar's roll rule. ``None``: no roll.
    - ``clock`` (def: ``None``): function returning the time now (aware); ``None``: the wall
      clock. It times the roll (a timer starts the switch :data:`ROLL_LEAD` before the roll
      moment, should the old month send no bar then) and tells complete history bars.
    """

    def __init__(self, store, contract, spec: ContractSpec, minutes: int = 5,
                 history: str = "2 D", what: str = "TRADES", use_rth: bool = False,
                 on_event=None, month: ContractMonth | None = None,
                 days_before: int = DEFAULT_ROLL_DAYS, clock=None) -> None:
        self.store, self.contract, self.spec = store, contract, spec
        self.month, self.days_before = month, days_before
        # (from when, naive New York or None, month, contract): the contract of each bar
        self.contracts: list[tuple] = [(None, month, contract)]
        self._moment = self._roll_at(month)
        self._rolling = False
        self._roll_mark = False
        self._clock = clock
        self._timer = None
        self._rt_session = 0  # the store's reconnect count when subscribed
        self.rolls = 0
        self.minutes = _check_minutes(minutes)
        self.history, self.what, self.use_rth = history, what, use_rth
        self.on_event = on_event
        self.agg = BarAggregator(minutes)
        self.history_end: _dt.datetime | None = None  # naive New York
        self._q: queue.Queue | None = None
        self._stopped = threading.Event()
        self._rt = None
        self.subscriptions = 0
        self.history_bars = 0
        self.live_bars = 0
        self.backfilled = 0
        self.patched = 0  # partial bars replaced by IB's history bar
        self.partial_kept = 0  # partial bars handed on as built (IB's history had none)
        self.history_tries = HISTORY_TRIES
        self._hold: list[tuple] = []  # bars waiting behind a partial one
        self._flushing = False

    # -- BarSource ---------------------------------------------------------------------------
    def start(self, q: queue.Queue) -> None:
        self._q = q
        self._load_history()
        self.store.run(self._subscribe)
        self.store.run(self._arm_roll_timer)
        self.store.on_reconnect(self._resume)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._timer is not None and self.store.loop is not None:
            self.store.call_soon(self._timer.cancel)
        rt = self._rt
        if rt is not None and self.store.loop is not None and self.store.connected.is_set():
            self.store.call_soon(self.store.ib.cancelRealTimeBars, rt)
        if self._q is not None:
            try:
                self._q.put_nowait(EndOfStream("stopped"))
            except queue.Full:
                pass

    def is_alive(self) -> bool:
        return not self._stopped.is_set()

    # -- internals ---------------------------------------------------------------------------
    def _put(self, start: _dt.datetime, o, h, lo, c, v, roll: bool = False) -> None:
        import time

        self._q.put((Bar(start.astimezone(_UTC), float(o), float(h), float(lo), float(c),
                         float(v), roll), time.perf_counter_ns()))

    # -- the roll ----------------------------------------------------------------------------
    def _roll_at(self, month) -> _dt.datetime | None:
        if month is None:
            return None
        from .contract import roll_moment

        return roll_moment(month, self.days_before).replace(tzinfo=NY_ZONE)

    def contract_for(self, bar_dt: _dt.datetime):
        """The contract the bar starting at ``bar_dt`` (naive New York) belongs to: the month
        our calendar trades then, among those this source has subscribed to."""
        out = self.contracts[0][2]
        for since, _, contract in self.contracts:
            if since is None or bar_dt >= since:
                out = contract
        return out

    def _now(self) -> _dt.datetime:
        now = self._clock() if self._clock is not None else _dt.datetime.now(_UTC)
        return now.astimezone(_UTC)

    def _arm_roll_timer(self) -> None:
        """(IB thread) Start the switch to the next month :data:`ROLL_LEAD` before the roll
        moment by the clock, in case the old month sends no bar in that hour (a roll after a
        weekend or a holiday); at once when that hour has begun."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        moment = self._moment
        if moment is None or self._stopped.is_set():
            return
        now = self._now()
        delay = (moment - ROLL_LEAD - now).total_seconds()
        if delay > 0:
            self._timer = self.store.loop.call_later(delay, self._start_roll)
        elif now < moment:
            self._start_roll()

    def mark_roll(self) -> None:
        """Mark the next live bar ``roll`` (a position found at start in an older month: the
        strategy rolls it there, as the broker's ``roll_held`` asks)."""
        self._roll_mark = True

    def _start_roll(self) -> None:
        """(IB thread) Begin the switch to the next month, once."""
        if self._rolling or self._stopped.is_set():
            return
        self._rolling = True
        self.store.loop.create_task(self._roll())

    async def _roll(self) -> None:
        """(IB thread) Resolve the next month, move the subscription, mark its first bar."""
        from .contract import month_details

        old, new = self.month, self.month.next()
        try:
            details = await month_details(self.store.ib, self.spec, new)
        except Exception as exc:  # noqa: BLE001 - said, and tried again on the next bar
            logger.error("roll %s -> %s failed: %s", old, new, exc)
            if self.on_event:
                self.on_event("error", code=None, message=f"roll {old} -> {new} failed: {exc}",
                              ref=None)
            self._rolling = False
            return
        if self._stopped.is_set():
            return
        moment = self._moment
        since = moment.replace(tzinfo=None)
        if self._rt is not None and self.store.connected.is_set():
            self.store.ib.cancelRealTimeBars(self._rt)
        self._rt = None
        self.agg.drop_partial()
        self.contracts.append((since, new, details.contract))
        self.contract, self.month = details.contract, new
        self._moment = self._roll_at(new)
        self._roll_mark = True
        self.rolls += 1
        self._rolling = False
        self._arm_roll_timer()
        if self.on_event:
            self.on_event("state", state="roll", detail=f"{old} -> {new} from {since} "
                          f"(conId {details.contract.conId})")
        if self._now() > moment:  # a late switch: the new month's bars since the roll moment
            await self._backfill(moment, why="roll")
        self._subscribe()

    def _load_history(self) -> None:
        ib = self.store.ib
        bars = self.store.run(lambda: ib.reqHistoricalDataAsync(
            self.contract, endDateTime="", durationStr=self.history,
            barSizeSetting=bar_size_setting(self.minutes), whatToShow=self.what,
            useRTH=self.use_rth, formatDate=2), timeout=max(self.store.timeout, 30.0))
        now = self._now()
        for b in bars or []:
            start = self._start_of(b)
            if start + self.agg.span > now:
                continue  # still forming: it will come from the real-time bars
            self.agg.note(start)
            self._put(start, b.open, b.high, b.low, b.close, b.volume)
            self.history_bars += 1
            self.history_end = start.astimezone(NY_ZONE).replace(tzinfo=None)
        if self.on_event:
            self.on_event("state", state="history", detail=f"{self.history_bars} bars, last "
                          f"{self.history_end}")

    async def _resume(self) -> None:
        """(IB thread) After a reconnect: backfill the bars missed, then subscribe again."""
        if self._stopped.is_set():
            return
        last, moment = self.agg.last_start, self._moment
        roll_due = moment is not None and self._now() >= moment - ROLL_LEAD
        if last is not None:
            await self._backfill(last, until=moment if roll_due else None)
        self._subscribe()
        if roll_due:  # the roll came while we were away: the old month's bars are in
            self._start_roll()

    async def _backfill(self, since: _dt.datetime, until: _dt.datetime | None = None,
                        why: str = "reconnected") -> int:
        """(IB thread) Hand on the complete bars of IB's history from ``since`` (and before
        ``until``) that are later than the last handed on; journal the gap. Returns how
        many; a failure is logged and journalled (the gap stays)."""
        last = self.agg.last_start
        try:
            bars = await self._history_since(since)
        except Exception as exc:  # noqa: BLE001 - the gap stays logged, trading goes on
            logger.error("backfill after %s failed: %s", last, exc)
            if self.on_event:
                self.on_event("error", code=None, message=f"backfill after {last} failed: "
                              f"{exc}", ref=None)
            return 0
        gaps, n = len(self.agg.gaps), 0
        for b in bars:
            start = self._start_of(b)
            if start < since or (last is not None and start <= self.agg.last_start) or (
                    until is not None and start >= until):
                continue  # handed on already, or not this month's
            self.agg.note(start)
            self._put(start, b.open, b.high, b.low, b.close, b.volume, self._roll_mark)
            self._roll_mark = False
            self.backfilled += 1
            n += 1
        unfilled = self.agg.gaps[gaps:]
        if n or why == "reconnected":
            logger.warning("%s: %d bar(s) after %s backfilled from IB's history", why, n, last)
            if self.on_event:
                self.on_event("gap", after=str(last), before=str(self.agg.last_start),
                              missing=sum(g[2] for g in unfilled), backfilled=n)
        return n

    def _start_of(self, b) -> _dt.datetime:
        start = b.date if isinstance(b.date, _dt.datetime) else \
            _dt.datetime.combine(b.date, _dt.time(), NY_ZONE)
        return start.astimezone(_UTC)

    def _subscribe(self) -> None:
        """(IB thread) Subscribe to 5-second bars; again after a reconnect."""
        if self._stopped.is_set():
            return
        ib = self.store.ib
        if self._rt is not None and self._rt_session == self.store.reconnects and \
                ib.isConnected():  # the link came back on the same socket: the old one goes
            ib.cancelRealTimeBars(self._rt)
        self.agg.subscribed()
        self._rt_session = self.store.reconnects
        self._rt = ib.reqRealTimeBars(self.contract, RT_SECONDS, self.what, self.use_rth)
        self._rt.updateEvent += self._on_bar
        self.subscriptions += 1
        if self.on_event:
            self.on_event("state", state="subscribed", detail=f"real-time bars, "
                          f"subscription {self.subscriptions}")

    def _on_bar(self, bars, has_new: bool) -> None:
        """(IB thread) One 5-second bar arrived."""
        if not has_new or not bars or self._stopped.is_set() or bars is not self._rt:
            return  # nothing new, or a subscription left behind (a roll)
        b = bars[-1]
        moment = self._moment
        if moment is not None and b.time >= moment:
            self._start_roll()  # the old month after its roll moment: not ours any more
            return
        gaps = len(self.agg.gaps)
        for bar in self.agg.add(b.time, b.open_, b.high, b.low, b.close, b.volume):
            partial = bar[0] in self.agg.partial
            self.agg.partial.discard(bar[0])
            if partial or self._hold:  # it, and the bars after it, wait for IB's history
                self._hold.append((bar, self._roll_mark, partial))
                if not self._flushing:
                    self._flushing = True
                    self.store.loop.create_task(self._flush_held())
            else:
                self._put(*bar, self._roll_mark)
                self.live_bars += 1
            self._roll_mark = False
        if moment is not None and \
                b.time + _dt.timedelta(seconds=RT_SECONDS) >= moment - ROLL_LEAD:
            self._start_roll()  # the old month's last session before the roll has ended
        if self.on_event:
            for prev, start, missing in self.agg.gaps[gaps:]:
                self.on_event("gap", after=str(prev), before=str(start), missing=missing,
                              backfilled=0)

    async def _flush_held(self) -> None:
        """(IB thread) Hand on the held bars in order, each partial one replaced by IB's
        history bar when IB has it (else handed on as built, and logged)."""
        try:
            while self._hold and not self._stopped.is_set():
                bar, roll, partial = self._hold[0]
                if partial:
                    bar = await self._whole_bar(bar)
                self._hold.pop(0)
                self._put(*bar, roll)
                self.live_bars += 1
        finally:
            self._flushing = False

    async def _whole_bar(self, bar: tuple) -> tuple:
        """(IB thread) IB's history bar starting at ``bar[0]``, asked up to ``history_tries``
        (def: :data:`HISTORY_TRIES`) times a second apart (IB's history lags the market by
        moments); ``bar`` itself if IB has none."""
        import asyncio

        start = bar[0]
        for attempt in range(self.history_tries):
            if attempt:
                await asyncio.sleep(1.0)
            try:
                found = await self._history_since(start)
            except Exception as exc:  # noqa: BLE001 - the bar as built is handed on
                logger.warning("history for the partial bar %s failed: %s", start, exc)
                break
            for b in found:
                if self._start_of(b) == start:
                    self.patched += 1
                    return (start, b.open, b.high, b.low, b.close, b.volume)
        self.partial_kept += 1
        logger.warning("bar %s handed on as built from part of its 5-second bars (IB's "
                       "history has not got it)", start)
        if self.on_event:
            self.on_event("state", state="partial_bar", detail=f"{start} built from part of "
                          f"its 5-second bars")
        return bar

    async def _history_since(self, since: _dt.datetime) -> list:
        """(IB thread) IB's bars of our size from ``since`` (or before) to now."""
        import math

        now = self._now()
        seconds = (now - since).total_seconds() + self.agg.span.total_seconds()
        duration = f"{math.ceil(seconds)} S" if seconds <= 86_400 else \
            f"{math.ceil(seconds / 86_400)} D"
        bars = await self.store.ib.reqHistoricalDataAsync(
            self.contract, endDateTime="", durationStr=duration,
            barSizeSetting=bar_size_setting(self.minutes), whatToShow=self.what,
            useRTH=self.use_rth, formatDate=2)
        return [b for b in bars or [] if self._start_of(b) + self.agg.span <= now]

    def summary(self) -> dict:
        """``history_bars``, ``live_bars``, ``backfilled`` (bars from IB's history after a
        reconnect), ``patched`` (partial bars replaced by IB's history bar), ``partial_kept``
        (handed on as built), ``subscriptions``, ``stale`` 5-second bars dropped,
        ``rolls`` made and the ``month`` traded now, ``gaps`` (``[after, before, bars
        missing]``)."""
        return {"history_bars": self.history_bars, "live_bars": self.live_bars,
                "backfilled": self.backfilled, "patched": self.patched,
                "partial_kept": self.partial_kept,
                "subscriptions": self.subscriptions, "stale": self.agg.stale,
                "rolls": self.rolls, "month": str(self.month) if self.month else None,
                "gaps": [[str(a), str(b), n] for a, b, n in self.agg.gaps]}
