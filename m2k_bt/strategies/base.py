"""The base of the pack's strategies, with the risk control a trader needs.

:class:`M2KStrategy` turns a per-bar *direction* (+1 long, -1 short, 0 flat; a subclass's
:meth:`~M2KStrategy.direction`) into market orders (filled at the next bar's open, so the
position held during bar t+1 is the direction of bar t), and adds: stop-loss and take-profit
bracket orders on the tick grid, a regular-hours entry filter, going flat before the close,
paying for rolls of a held position, entry filters on events and on an external series,
rejected-order handling and a per-trade log. The built-in rules are in :mod:`.sma` and
:mod:`.bands`, their names in :mod:`.registry`.

Use them in any cerebro script, with any backtrader feed and sizer::

    cerebro.addstrategy(SmaCrossover, fast=20, slow=100, stop_ticks=40)
"""

from __future__ import annotations

import math

import backtrader as bt

from ..contracts import M2K, round_to_tick
from ..errors import ParameterError, check_known
from ..rules import money, pnl, prices
from ..sessions import GLOBEX_REOPEN, RTH_END, RTH_START
from .params import coerce_param, parse_hhmm, strategy_params
from .trades import OpenTrade

__all__ = ["M2KStrategy", "EXIT_REASONS", "strategy_params"]

#: Values of ``exit_reason`` in :attr:`M2KStrategy.trade_log` ('signal': the direction changed).
EXIT_REASONS = ("signal", "stop", "target", "session_close", "event", "margin_call", "roll",
                "end")

def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


class _M2KStrategyMeta(type(bt.Strategy)):
    """Checks and coerces keyword arguments before backtrader sets the params.

    backtrader's ``MetaParams`` pops the known params from the keyword arguments and passes the
    rest to ``__init__``, which accepts anything when a class defines no ``__init__`` of its
    own and raises a bare ``TypeError`` otherwise. Here every keyword argument goes through
    :meth:`M2KStrategy.validate_params` first, so a misspelt or impossible value raises
    :class:`~m2k_bt.errors.ParameterError` with a did-you-mean, whatever the subclass.
    """

    def donew(cls, *args, **kwargs):
        kwargs = cls.validate_params(kwargs)
        return super().donew(*args, **kwargs)


class M2KStrategy(bt.Strategy, metaclass=_M2KStrategyMeta):
    """Base of the pack's strategies: target-direction trading with risk control and a log.

    Subclasses implement :meth:`direction` (the wanted direction on this bar, or ``None``
    while undefined) and may override :meth:`_confirm_entry` (filters on new entries) and
    :meth:`_check_params` (value checks). The base trades ``self.data`` (the first feed).

    **Orders.** Each bar the target direction is compared with the position: a different one
    closes it (exit reason 'signal'), and a non-zero one opens a new position of the size the
    sizer gives (``cerebro.addsizer``; backtrader's default is 1). A reversal is a close plus an
    open, both filled at the next bar's open, in that order (so the margin the close frees is
    available).

    **Stops and targets** are bracket orders around the entry: ``stop_ticks``/``target_ticks``
    ticks, or ``stop_atr``/``target_atr`` times the ATR(``atr_period``), measured from the
    deciding bar's close snapped to the tick grid. Distances are rounded to whole ticks *towards
    the entry* (floor), never less than one tick, so a stop never risks more than asked and a
    target never asks more than asked. After a stop or target exit the strategy does not re-enter
    in the same direction until the wanted direction has changed (otherwise a trend rule that
    still says "long" would buy straight back after the stop).

    **Session** (times are the bar's timestamps as the feed gives them, New York local time):
    ``rth_only`` enters only on bars stamped 09:30 <= t < 16:00; ``flat_before_close`` ("HH:MM")
    closes any position on the first bar stamped at or after that time (filled at the next
    bar's open, reason 'session_close') and opens nothing until 18:00, the Globex reopen.

    **Rolls.** When the feed has a ``roll`` line (e.g. :class:`m2k_bt.feeds.bars.BarsFeed`) and
    it is 1.0 on a bar while a position is held and kept, the position is closed and reopened
    (commission and slippage paid on both sides through the broker), the closed part is logged
    with reason 'roll', bracket orders are carried over at the same prices, and ``rolls`` counts.
    The legs of a rolled position are one trade: they share a ``trade_id`` in the log,
    and :class:`~m2k_bt.sizers.kelly.KellySizer` counts them as one sample.

    **Rejections.** Margin, Rejected, Expired and broker-initiated Canceled orders are counted in
    ``order_rejections`` by status name and described in ``events``; the strategy carries on.
    After a rejected entry it does not retry that direction until the wanted direction changes.
    A liquidation submitted by :class:`m2k_bt.brokers.futures.FuturesBroker`
    (``order.info['margin_call']``) is logged with reason 'margin_call', and the strategy does not
    re-enter that direction until its wanted direction changes.

    **Trade log.** ``trade_log`` holds one dict per closed trade: ``entry_dt, exit_dt,
    direction, contracts, entry_price, exit_price`` (volume-weighted fills), ``gross_pnl,
    commission, net_pnl`` (dollars), ``ticks`` (exit - entry in ticks, signed in the trade's
    favour), ``bars_held, exit_reason`` (see :data:`EXIT_REASONS`), ``kelly_p, kelly_b,
    kelly_f`` (the :class:`~m2k_bt.sizers.kelly.KellySizer` decision of the entry: p, b and f*;
    ``None`` otherwise), ``trade_id`` (1, 2, ... per trade: a roll's legs share it). A
    position still open when the data ends is logged with reason 'end' at the last close, with
    no exit commission, which is how the broker values it: so the sum of ``net_pnl`` always
    equals final minus starting equity.

    Params:

    - ``long_only`` (def: ``False``): never go short (a wanted short means flat).
    - ``stop_ticks`` (def: ``None``): stop-loss distance in ticks; ``None`` = no stop.
    - ``target_ticks`` (def: ``None``): take-profit distance in ticks; ``None`` = no target.
    - ``stop_atr`` (def: ``None``): stop-loss distance in ATRs (instead of ``stop_ticks``).
    - ``target_atr`` (def: ``None``): take-profit distance in ATRs (instead of ``target_ticks``).
    - ``atr_period`` (def: ``14``): ATR period for ``stop_atr``/``target_atr``.
    - ``rth_only`` (def: ``False``): enter only during regular hours, 09:30-16:00 New York.
    - ``flat_before_close`` (def: ``None``): "HH:MM" New York time to go flat, e.g. "15:55".
    - ``avoid_events`` (def: ``None``): event kinds to stay out of, e.g. ``"fomc,cpi"`` or
      ``("fomc", "nfp")``; see :mod:`m2k_bt.feeds.events` (fomc, cpi, nfp, russell_recon, expiry and
      kinds of your own). No new entry whose first bar held (the next bar: the fill is at its
      open) overlaps ``[event - event_before, event + event_after)``; each blocked entry is in
      ``event_log``. Dates outside the table's coverage give a warning (``event_warnings``).
    - ``event_before`` (def: ``30.0``) / ``event_after`` (def: ``60.0``): minutes.
    - ``flat_before_event`` (def: ``False``): also close a held position on the bar whose next
      bar overlaps a window (so the account is flat when it starts; reason 'event').
    - ``event_calendar`` (def: ``None``): the shipped table; a CSV path of your own events
      (added to it); or an :class:`m2k_bt.feeds.events.EventCalendar`.
    - ``signal_min`` / ``signal_max`` (def: ``None``): new entries only while the external
      series in the feed's ``signal`` line (:class:`m2k_bt.feeds.external.SignalFeed`) is within
      range; unknown (NaN) blocks entries.
    """

    params = (
        ("long_only", False),
        ("stop_ticks", None),
        ("target_ticks", None),
        ("stop_atr", None),
        ("target_atr", None),
        ("atr_period", 14),
        ("rth_only", False),
        ("flat_before_close", None),
        ("avoid_events", None),
        ("event_before", 30.0),
        ("event_after", 60.0),
        ("flat_before_event", False),
        ("event_calendar", None),
        ("signal_min", None),
        ("signal_max", None),
    )
    #: Types of the params whose default is ``None`` (others take their default's type).
    _optional_types: dict[str, type] = {
        "stop_ticks": int,
        "target_ticks": int,
        "stop_atr": float,
        "target_atr": float,
        "flat_before_close": str,
        "avoid_events": object,  # str or sequence: checked in _check_params
        "event_calendar": object,  # path or EventCalendar: checked in _check_params
        "signal_min": float,
        "signal_max": float,
    }

    # ----------------------------------------------------------------- parameter checks
    @classmethod
    def validate_params(cls, params: dict) -> dict:
        """Check and coerce ``params`` for this class; return every param with its value.

        Unknown names raise :class:`~m2k_bt.errors.ParameterError` with a did-you-mean; strings
        (from a command line) are converted to the default's type (``"50"`` -> 50,
        ``"true"`` -> True, ``"none"`` -> None for optional params); impossible values raise
        naming the parameter, the value and the fix.

        >>> from m2k_bt.strategies import SmaCrossover
        >>> SmaCrossover.validate_params({"fast": "20", "long_only": "true"})["fast"]
        20
        >>> SmaCrossover.validate_params({"fsat": 20})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        m2k_bt.errors.ParameterError: unknown SmaCrossover parameter 'fsat' (did you mean 'fast'?...
        """
        defaults = strategy_params(cls)
        check_known(params, defaults, f"{cls.__name__} parameter")
        types = {}
        for klass in reversed(cls.__mro__):
            types.update(klass.__dict__.get("_optional_types", {}))
        values = dict(defaults)
        for name, value in params.items():
            values[name] = coerce_param(f"{cls.__name__} parameter '{name}'", value,
                                        defaults[name], types.get(name))
        cls._check_params(values)
        return values

    @classmethod
    def _check_params(cls, v: dict) -> None:
        """Raise :class:`ParameterError` for impossible values (``v`` holds every param)."""
        name = cls.__name__
        for key in ("stop_ticks", "target_ticks", "stop_atr", "target_atr"):
            if v[key] is not None and not v[key] > 0:
                raise ParameterError(
                    f"{name} parameter '{key}' must be > 0 (or None for off), got {v[key]!r}"
                )
        for kind in ("stop", "target"):
            if v[f"{kind}_ticks"] is not None and v[f"{kind}_atr"] is not None:
                raise ParameterError(
                    f"{name}: give {kind}_ticks ({v[f'{kind}_ticks']!r}) or {kind}_atr "
                    f"({v[f'{kind}_atr']!r}), not both; set one to None"
                )
        cls._check_period(v, "atr_period")
        flat = v["flat_before_close"]
        if flat is not None:
            try:
                when = parse_hhmm(flat)
            except ValueError:
                raise ParameterError(
                    f"{name} parameter 'flat_before_close' must be 'HH:MM' New York time "
                    f"(e.g. '15:55') or None, got {flat!r}"
                ) from None
            if when >= GLOBEX_REOPEN:
                raise ParameterError(
                    f"{name} parameter 'flat_before_close' must be before 18:00 (the Globex "
                    f"reopen), got {flat!r}"
                )

        cls._check_event_params(v)

    @classmethod
    def _check_event_params(cls, v: dict) -> None:
        from ..feeds.events import parse_kinds

        name = cls.__name__
        v["avoid_events"] = parse_kinds(v["avoid_events"]) or None
        for key in ("event_before", "event_after"):
            if not (math.isfinite(v[key]) and v[key] >= 0):
                raise ParameterError(f"{name} parameter '{key}' must be minutes >= 0, got "
                                     f"{v[key]!r}")
        if v["flat_before_event"] and not v["avoid_events"]:
            raise ParameterError(f"{name}: flat_before_event needs avoid_events (which kinds, "
                                 f"e.g. 'fomc,cpi')")
        low, high = v["signal_min"], v["signal_max"]
        if low is not None and high is not None and low > high:
            raise ParameterError(f"{name}: signal_min ({low}) is above signal_max ({high})")

    @classmethod
    def _check_period(cls, v: dict, key: str, low: int = 2) -> None:
        if v[key] < low:
            raise ParameterError(
                f"{cls.__name__} parameter '{key}' must be an integer >= {low}, got {v[key]!r}"
            )

    # ----------------------------------------------------------------- set-up
    def __init__(self) -> None:
        self.trade_log: list[dict] = []
        self.order_rejections: dict[str, int] = {}
        self.events: list[str] = []
        self.rolls = 0
        p = self.p
        self._atr = (bt.ind.ATR(self.data, period=p.atr_period)
                     if p.stop_atr is not None or p.target_atr is not None else None)
        self._flat_time = parse_hhmm(p.flat_before_close) if p.flat_before_close else None
        self._live: set[int] = set()  # refs of market orders not yet final
        self._bracket: list = []  # live stop/target children protecting the position
        self._bracket_prices: tuple[float | None, float | None] = (None, None)
        self._cancelling: set[int] = set()  # refs we cancelled ourselves
        self._children: set[int] = set()  # refs of every stop/target child ever placed
        self._reasons: dict[int, str] = {}
        self._kelly_by_ref: dict[int, tuple] = {}
        self._seen: dict[int, tuple[float, float, float]] = {}
        self._open = None  # OpenTrade of the current position
        self._trade_ids = 0  # trades numbered so far (trade_log's trade_id; a roll's legs are one)
        self._leg_of: dict[int, int] = {}  # ref of a roll's reopening order -> its trade_id
        self._blocked = 0  # direction not to re-enter until the wanted direction changes
        self.shadow_log: list[dict] = []  # entries the sizer declined, traded on paper
        self._shadow: dict | None = None  # the paper trade open now
        self._shadow_next = 0  # paper entry direction to fill at the next bar's open
        self._shadow_exit = False  # paper exit to fill at the next bar's open
        self.event_log: list[dict] = []  # blocked entries and forced exits (m2k_bt.feeds.events)
        self.event_warnings: list[str] = []
        self._event_mark = (False, False)
        self._gate = self._event_cur = None
        if p.avoid_events:
            from ..feeds.events import EventGate, resolve_calendar

            self._gate = EventGate(resolve_calendar(p.event_calendar), p.avoid_events,
                                   p.event_before, p.event_after)
        self._gate_seen: list[float] = []  # first and last bar time checked against it
        self._gate_keys: dict[tuple, dict] = {}
        self._external_run: dict | None = None  # the external-series block going on
        self._decided = False  # direction() has given a first opinion

    def start(self) -> None:
        comminfo = self.broker.getcommissioninfo(self.data)
        self._tick = self._data_tick()
        self._roll_line = getattr(self.data.lines, "roll", None)
        self._mult = float(getattr(comminfo.p, "mult", None) or 1.0)
        self._per_point = self._mult * 100.0  # cents of contract value per point
        self._external_line = getattr(self.data.lines, "signal", None)  # an external series
        if (self.p.signal_min is not None or self.p.signal_max is not None) and (
                self._external_line is None):
            raise ParameterError(
                f"{type(self).__name__}: signal_min/signal_max need a feed with a 'signal' line "
                f"(m2k_bt.feeds.external.SignalFeed, or --signal FILE on the command line)"
            )
        if self._gate is not None:
            from ..feeds.events import bar_minutes

            self._bar_days = bar_minutes(self.data) / 1440.0

    # ----------------------------------------------------------------- the bar
    def next(self) -> None:
        self._fill_shadow()
        if self._gate is not None or self._event_mark != (False, False):
            self._event_mark = (False, False)
            if self._gate is not None and self._event_bar():
                return
        if self._live:
            return  # a market order is still working: decide when it is done
        if self._flat_time is not None and self._in_flat_window():
            self._go_flat("session_close")
            self._check_shadow(0)
            return
        wanted = self._wanted()
        if wanted is None:
            return
        target = self._target(wanted)
        if not self._shadow_next and (self._roll_line is None or self._roll_line[0] != 1.0):
            held = self._held()
            shadow = self._shadow
            if (held == target and shadow is None) or (
                not held and shadow is not None and shadow["direction"] == target
            ):
                return  # the usual bar: holding (really or on paper) the wanted direction
        self._check_shadow(target)
        self._check_exit(target)
        self._check_roll(target)
        self._check_entry(target)

    def direction(self) -> int | None:
        """The direction wanted on this bar: +1 long, -1 short, 0 flat, or ``None`` for no
        opinion (before the first value: nothing is traded yet; after it: keep what is held).

        The hook of a per-bar strategy: build indicators in ``__init__`` as in any backtrader
        strategy and read them here. The pack turns the direction into orders (filled at the
        next bar's open), with the sizer, brackets, sessions, rolls and filters."""
        raise NotImplementedError(f"{type(self).__name__} must define direction(self)")

    def _wanted(self) -> int | None:
        """:meth:`direction`, with ``None`` after the first opinion read as the direction
        held; ``None`` only before it."""
        wanted = self.direction()
        if wanted is None:
            return self._held() if self._decided else None
        self._decided = True
        return wanted

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # earlier subclasses named the hook _signal (0.1) or _direction (0.2): still honoured
        for legacy in ("_direction", "_signal"):
            hook = cls.__dict__.get(legacy)
            if hook is not None and "direction" not in cls.__dict__:
                cls.direction = hook
                break

    def _held(self) -> int:
        """The direction held now: +1 long, -1 short, 0 flat."""
        return _sign(self.position.size)

    def _data_tick(self) -> float:
        """The tick size of the traded data: its commission info's, else M2K's."""
        comminfo = self.broker.getcommissioninfo(self.data)
        return float(getattr(comminfo.p, "tick_size", None) or M2K.tick_size)

    def _confirm_entry(self, direction: int) -> bool:
        """Extra filters a subclass puts on new entries (not on exits)."""
        return True

    def _target(self, wanted: int) -> int:
        """The wanted direction after ``long_only``; clears the re-entry block once it changes."""
        target = max(wanted, 0) if self.p.long_only else wanted
        if self._blocked and target != self._blocked:
            self._blocked = 0
        return target

    def _check_exit(self, target: int) -> None:
        held = self._held()
        if held and held != target:
            self._close("signal")

    def _check_roll(self, target: int) -> None:
        roll = self._roll_line
        held = self._held()
        if roll is None or not held or held != target or roll[0] != 1.0:
            return
        stop, limit = self._bracket_prices
        kelly = self._open.kelly if self._open else (None, None, None)
        self._close("roll")
        reopen = self._submit_entry(held, abs(self.position.size), stop, limit, kelly)
        if reopen is not None and self._open is not None:
            self._leg_of[reopen.ref] = self._open.trade_id  # the new leg continues the trade
        self.rolls += 1

    def _check_entry(self, target: int) -> None:
        held = self._held()
        if not target or held == target or not self._entry_allowed(target):
            return
        if target in (self._shadow_next, (self._shadow or {}).get("direction")):
            return  # this direction is already being traded on paper
        size, kelly = self._size_for(target)
        if size <= 0:
            self._shadow_next = target  # declined: follow it on paper
            return
        stop, limit = self._bracket_for(target)
        self._submit_entry(target, size, stop, limit, kelly)

    def _entry_allowed(self, direction: int) -> bool:
        if direction == self._blocked:
            return False
        if self.p.rth_only and not RTH_START <= self.data.datetime.time(0) < RTH_END:
            return False
        if self._gate is not None and self._event_blocks(direction):
            return False
        if self._external_line is not None and not self._external_ok(direction):
            return False
        return self._confirm_entry(direction)

    # ----------------------------------------------------------------- events, external series
    def _event_bar(self) -> bool:
        """Find the avoided event whose window overlaps the next bar (an order decided now fills
        at its open and holds through it); with ``flat_before_event`` close for it. True when
        the bar is done."""
        x = float(self.data.datetime[0])
        seen = self._gate_seen
        if seen:
            seen[1] = x
        else:
            seen.extend((x, x))
        event = self._event_cur = self._gate.window_at(x + self._bar_days, self._bar_days)
        if event is None or not self.p.flat_before_event:
            return False
        if self._live:
            return True
        held = self._held()
        if held:
            self._log_event("forced_exit", event, held)
            self._event_mark = (False, True)
            self._close("event")
        self._check_shadow(0)
        wanted = self._wanted()
        target = self._target(wanted) if wanted is not None else 0
        if target and target not in (held, self._blocked):
            self._event_blocks(target, event)  # an entry the window refuses
        return True

    def _event_blocks(self, direction: int, event=None) -> bool:
        event = event or self._event_cur
        if event is None:
            return False
        key = (event.time, event.kind, direction)
        rec = self._gate_keys.get(key)
        if rec is None:
            rec = self._gate_keys[key] = self._log_event("entry_blocked", event, direction)
        rec["bars"] += 1
        self._event_mark = (True, self._event_mark[1])
        return True

    def _log_event(self, action: str, event, direction: int) -> dict:
        rec = {"dt": self.data.datetime.datetime(0), "action": action, "kind": event.kind,
               "event_time": event.time.tz_localize(None).to_pydatetime(),
               "description": event.description,
               "direction": "long" if direction > 0 else "short", "bars": 0}
        self.event_log.append(rec)
        return rec

    def _external_ok(self, direction: int) -> bool:
        """Whether the external series allows an entry now; logs each block of refused bars."""
        low, high = self.p.signal_min, self.p.signal_max
        if low is None and high is None:
            return True
        value = float(self._external_line[0])
        ok = not math.isnan(value) and (low is None or value >= low) and (
            high is None or value <= high)
        now = len(self.data)
        run = self._external_run
        if ok:
            return True
        if run is None or run["_bar"] != now - 1 or run["direction"] != (
                "long" if direction > 0 else "short"):
            run = {"dt": self.data.datetime.datetime(0), "action": "signal_blocked",
                   "kind": "signal", "event_time": None,
                   "description": "signal unknown" if math.isnan(value) else
                   f"signal {value:g} outside [{low}, {high}]",
                   "direction": "long" if direction > 0 else "short", "bars": 0,
                   "value": None if math.isnan(value) else value}
            self.event_log.append(run)
            self._external_run = run
        run["bars"] += 1
        run["_bar"] = now
        self._event_mark = (True, self._event_mark[1])
        return False

    def _in_flat_window(self) -> bool:
        if self._flat_time is None:
            return False
        return self._flat_time <= self.data.datetime.time(0) < GLOBEX_REOPEN

    # ----------------------------------------------------------------- orders
    def _size_for(self, direction: int) -> tuple[int, tuple]:
        sizer = self.getsizer()
        before = len(getattr(sizer, "decisions", ()))
        size = abs(int(self.getsizing(self.data, isbuy=direction > 0) or 0))
        decisions = getattr(sizer, "decisions", ())
        if len(decisions) > before:
            d = decisions[-1]
            return size, (d.p, d.b, d.f_star)
        return size, (None, None, None)

    def _submit_entry(self, direction: int, size: int, stop, limit, kelly):
        """Submit an entry (with its bracket); returns the entry order."""
        if stop is None and limit is None:
            order = (self.buy if direction > 0 else self.sell)(size=size)
            self._track(order, "signal", kelly)
            return order
        bracket = (self.buy_bracket if direction > 0 else self.sell_bracket)(
            size=size,
            exectype=bt.Order.Market,
            stopprice=stop,
            stopexec=bt.Order.Stop if stop is not None else None,
            limitprice=limit,
            limitexec=bt.Order.Limit if limit is not None else None,
        )
        parent, children = bracket[0], [o for o in bracket[1:] if o is not None]
        self._track(parent, "signal", kelly)
        for child in children:
            self._children.add(child.ref)
            self._reasons[child.ref] = "stop" if child.exectype == bt.Order.Stop else "target"
        self._bracket = children
        self._bracket_prices = (stop, limit)
        return parent

    def _track(self, order, reason: str, kelly=(None, None, None)) -> None:
        if order is None:
            return
        self._live.add(order.ref)
        self._reasons[order.ref] = reason
        self._kelly_by_ref[order.ref] = kelly

    def _close(self, reason: str) -> None:
        self._cancel_bracket()
        self._track(self.close(), reason)

    def _go_flat(self, reason: str) -> None:
        if self.position.size:
            self._close(reason)

    def _cancel_bracket(self) -> None:
        for child in self._bracket:
            if child.alive():
                self._cancelling.add(child.ref)
                self.cancel(child)
        self._bracket = []
        self._bracket_prices = (None, None)

    def _bracket_for(self, direction: int) -> tuple[float | None, float | None]:
        """Stop and target prices for an entry now, on the tick grid (see the class doc)."""
        stop_pts = self._distance("stop")
        target_pts = self._distance("target")
        if stop_pts is None and target_pts is None:
            return None, None
        tick = self._tick
        ref = round_to_tick(float(self.data.close[0]), tick)
        stop = (round_to_tick(ref - direction * stop_pts, tick)
                if stop_pts is not None else None)
        limit = (round_to_tick(ref + direction * target_pts, tick)
                 if target_pts is not None else None)
        return stop, limit

    def _distance(self, kind: str) -> float | None:
        """A stop or target distance in points, as a whole number (>= 1) of ticks."""
        ticks = getattr(self.p, f"{kind}_ticks")
        atrs = getattr(self.p, f"{kind}_atr")
        if ticks is not None:
            points = ticks * self._tick
        elif atrs is not None and self._atr is not None:
            points = atrs * float(self._atr[0])
        else:
            return None
        n = max(1, math.floor(points / self._tick + 1e-9))
        return round_to_tick(n * self._tick, self._tick)

    # ----------------------------------------------------------------- paper trades
    # When the sizer declines an entry (Kelly sees no edge, or the size rounds to zero), the
    # direction is still followed on paper: one contract, filled at the next bar's open, closed
    # at the next bar's open after the wanted direction changes (stops and targets are not
    # simulated), net of commission and slippage for both sides. ``shadow_log`` keeps these
    # trades so that KellySizer can keep estimating the edge instead of freezing on the last
    # window of real trades. They never touch the broker, the equity or ``trade_log``.
    def _check_shadow(self, target: int) -> None:
        if self._shadow_next and self._shadow_next != target:
            self._shadow_next = 0
        if self._shadow is not None and self._shadow["direction"] != target:
            self._shadow_exit = True

    def _fill_shadow(self) -> None:
        if not (self._shadow_exit or self._shadow_next):
            return
        price = float(self.data.open[0])
        when = self.data.datetime.datetime(0)
        if self._shadow_exit and self._shadow is not None:
            self._log_shadow(self._shadow, price, when)
            self._shadow = None
        self._shadow_exit = False
        if self._shadow_next:
            self._shadow = {"direction": self._shadow_next, "entry_price": price,
                            "entry_dt": when, "entry_bar": len(self.data)}
            self._shadow_next = 0

    def _log_shadow(self, shadow: dict, price: float, when) -> None:
        comminfo = self.broker.getcommissioninfo(self.data)
        slip = prices.slip_cents(float(getattr(self.broker.p, "slippage_ticks", 0) or 0),
                                 self._tick, self._per_point)
        per_side = money.to_cents(comminfo.getcommission(1, shadow["entry_price"]))
        net = pnl.paper_trade_net(shadow["entry_price"], price, shadow["direction"],
                                  self._per_point, per_side, slip)
        self.shadow_log.append({
            "entry_dt": shadow["entry_dt"],
            "exit_dt": when,
            "direction": "long" if shadow["direction"] > 0 else "short",
            "contracts": 1,
            "entry_price": shadow["entry_price"],
            "exit_price": price,
            "gross_pnl": money.dollars(net + 2 * per_side + 2 * slip),
            "commission": money.dollars(2 * per_side),
            "net_pnl": money.dollars(net),
            "bars_held": len(self.data) - shadow["entry_bar"],
            "exit_reason": "shadow",
        })

    @property
    def open_trade_id(self) -> int | None:
        """``trade_id`` of the position held now (or about to be reopened by a roll), or
        ``None``: a trade whose last logged leg is a roll is complete once this differs."""
        if self._open is not None:
            return self._open.trade_id
        return next(iter(self._leg_of.values()), None)

    def stop_distance(self, data=None) -> float | None:
        """Points between an entry made now and its stop, or ``None`` without a stop.

        :class:`~m2k_bt.sizers.kelly.KellySizer` uses it as the risk per contract.
        """
        return self._distance("stop")

    # ----------------------------------------------------------------- notifications
    def notify_order(self, order) -> None:
        status = order.status
        if status in (order.Submitted, order.Accepted):
            return
        if order.info.get("margin_call") and order.ref not in self._reasons:
            self._reasons[order.ref] = "margin_call"
        if status in (order.Partial, order.Completed):
            self._record_fill(order)
        if not order.alive():
            self._live.discard(order.ref)
            self._leg_of.pop(order.ref, None)
            self._finish(order)

    def _finish(self, order) -> None:
        status, name = order.status, order.getstatusname()
        reason = self._reasons.get(order.ref, "signal")
        if status == order.Completed:
            if reason == "margin_call":
                self._after_liquidation(order)
            elif order.ref in self._children:
                self._bracket = []
                self._bracket_prices = (None, None)
                if reason in ("stop", "target"):
                    self._blocked = -_sign(order.executed.size)
            return
        if status == order.Canceled and (order.ref in self._cancelling
                                         or order.ref in self._children):
            return  # we cancelled it, or a bracket child went with its parent or sibling
        self.order_rejections[name] = self.order_rejections.get(name, 0) + 1
        side = "buy" if order.isbuy() else "sell"
        entry = reason == "signal" and _sign(order.created.size) != -self._held()
        if entry and status in (order.Margin, order.Rejected):
            # retrying every bar would only repeat the rejection: wait for a new direction
            self._blocked = _sign(order.created.size)
        self.events.append(
            f"{self._now()}: {name} {side} order of {abs(order.created.size):g} "
            f"{self.data._name or 'data'} ({reason}); "
            + ("no new entry that way until the signal changes" if entry
               else "the strategy carries on")
        )

    def _after_liquidation(self, order) -> None:
        liquidated = -_sign(order.executed.size)
        self._blocked = liquidated
        self.events.append(
            f"{self._now()}: margin call liquidated {abs(order.executed.size):g} contract(s) "
            f"at {order.executed.price:g}; no new {'long' if liquidated > 0 else 'short'} "
            f"entry until the signal changes"
        )
        stop, limit = self._bracket_prices
        self._cancel_bracket()
        remaining = self.position.size
        if remaining:  # re-protect what is left, at the same prices
            size = abs(remaining)
            close = self.sell if remaining > 0 else self.buy
            children = []
            if stop is not None:
                children.append(close(size=size, exectype=bt.Order.Stop, price=stop))
                self._reasons[children[-1].ref] = "stop"
            if limit is not None:
                oco = children[0] if children else None
                children.append(close(size=size, exectype=bt.Order.Limit, price=limit, oco=oco))
                self._reasons[children[-1].ref] = "target"
            self._children.update(c.ref for c in children)
            self._bracket = children
            self._bracket_prices = (stop, limit)

    def _now(self) -> str:
        return self.data.datetime.datetime(0).isoformat(sep=" ") if len(self.data) else "start"

    # ----------------------------------------------------------------- trade log
    def _record_fill(self, order) -> None:
        ex = order.executed
        seen_size, seen_value, seen_comm = self._seen.get(order.ref, (0.0, 0.0, 0.0))
        size, value, comm = ex.size, ex.price * ex.size, ex.comm
        self._seen[order.ref] = (size, value, comm)
        dsize = size - seen_size
        if not dsize:
            return
        price = (value - seen_value) / dsize
        dcomm = comm - seen_comm
        when = self.data.num2date(ex.dt) if ex.dt else self.data.datetime.datetime(0)
        reason = self._reasons.get(order.ref, "signal")
        kelly = self._kelly_by_ref.get(order.ref, (None, None, None))
        self._apply_fill(dsize, price, dcomm, when, reason, kelly, self._leg_of.get(order.ref))

    def _apply_fill(self, dsize, price, comm, when, reason, kelly, trade_id=None) -> None:
        """Book a fill of ``dsize`` contracts at ``price`` with ``comm`` dollars of commission,
        in integers (:class:`~m2k_bt.strategies.trades.OpenTrade`)."""
        qty = abs(dsize)
        units = prices.to_units(price, self._per_point)
        comm = money.to_cents(comm)
        trade = self._open
        if trade is not None and _sign(dsize) != trade.direction:
            closing = min(qty, trade.size)
            share = comm * closing // qty
            trade.close_part(closing, units, share)
            qty, comm = qty - closing, comm - share
            if trade.size == 0:
                self._log(trade, when, reason)
                self._open = None
        if qty:
            if self._open is None:
                if trade_id is None:
                    self._trade_ids += 1
                    trade_id = self._trade_ids
                self._open = OpenTrade(direction=_sign(dsize), entry_dt=when,
                                        entry_bar=len(self.data), kelly=kelly,
                                        trade_id=trade_id)
            self._open.add(qty, units, comm)

    def _log(self, trade: OpenTrade, when, reason: str, exit_comm_free: bool = False) -> None:
        money_ = trade.row(self._per_point)
        entry, exit_ = money_["entry_price"], money_["exit_price"]
        self.trade_log.append({
            "entry_dt": trade.entry_dt,
            "exit_dt": when,
            "direction": "long" if trade.direction > 0 else "short",
            "contracts": trade.entry_contracts,
            **money_,
            "ticks": round((exit_ - entry) * trade.direction / self._tick, 6) + 0.0,  # not -0.0
            "bars_held": len(self.data) - trade.entry_bar,
            "exit_reason": reason,
            "kelly_p": trade.kelly[0],
            "kelly_b": trade.kelly[1],
            "kelly_f": trade.kelly[2],
            "trade_id": trade.trade_id,
        })

    def stop(self) -> None:
        for rec in self.event_log:
            rec.pop("_bar", None)
        if self._gate is not None and self._gate_seen:
            first, last = (bt.num2date(x) for x in self._gate_seen)
            self.event_warnings = self._gate.calendar.coverage_warnings(
                self._gate.kinds, first, last)
        trade = self._open
        if trade is not None and trade.size:
            try:
                price, when = float(self.data.close[0]), self.data.datetime.datetime(0)
            except IndexError:  # exactbars=1 has released the buffers: the broker's last mark
                pos = self.broker.getposition(self.data)
                price, when = float(pos.adjbase), pos.datetime
            trade.close_part(trade.size, prices.to_units(price, self._per_point), 0)
            self._log(trade, when, "end")
            self._open = None
