"""Data: vendor CSV loaders, the array feed, continuous contracts, external series, events, live.

- :mod:`.loaders`: :func:`load_bars`, :func:`validate_bars`, :func:`detect_format` (vendor files).
- :mod:`.bars`: :class:`BarsFeed` (the array feed), :func:`resample_bars`.
- :mod:`.continuous`, :mod:`.events`, :mod:`.live`, :mod:`.synth`.
- :mod:`.external`: an external series (VIX, a put/call ratio, a model's score) as extra lines of
  the feed; its public names keep the 0.1 word "signal" (:class:`Signal`, ``--signal``).
"""

from .bars import BarsFeed, resample_bars
from .continuous import (
    ADJUST_METHODS,
    ROLL_RULES,
    always_checkcondition,
    build_continuous,
    calendar_checkdate,
    volume_checkcondition,
)
from .events import (
    EVENT_KINDS,
    SHIPPED_EVENTS,
    Event,
    EventActions,
    EventCalendar,
    EventGate,
    EventMarks,
    load_calendar,
    parse_kinds,
    read_events_csv,
    resolve_calendar,
)
from .external import (
    Signal,
    SignalFeed,
    align_signal,
    load_signal,
    parse_signal_spec,
    signal_feed,
)
from .live import (
    REJECT_REASONS,
    Bar,
    BarSource,
    EndOfStream,
    LiveLatency,
    QueueFeed,
    ReplaySource,
    SessionBreak,
    ThreadedSource,
    bars_from_frame,
)
from .loaders import (
    FORMATS,
    HINTS,
    MAX_PRICE,
    PRICE_COLUMNS,
    TICK_ABS_TOLERANCE,
    LineNumbers,
    detect_format,
    load_bars,
    validate_bars,
)

__all__ = [
    "FORMATS",
    "PRICE_COLUMNS",
    "load_bars",
    "validate_bars",
    "detect_format",
    "BarsFeed",
    "resample_bars",
    "LineNumbers",
    "HINTS",
    "MAX_PRICE",
    "TICK_ABS_TOLERANCE",
    "ROLL_RULES",
    "ADJUST_METHODS",
    "build_continuous",
    "calendar_checkdate",
    "volume_checkcondition",
    "always_checkcondition",
    "EVENT_KINDS",
    "SHIPPED_EVENTS",
    "Event",
    "EventCalendar",
    "EventGate",
    "EventActions",
    "EventMarks",
    "load_calendar",
    "read_events_csv",
    "parse_kinds",
    "resolve_calendar",
    "Signal",
    "SignalFeed",
    "align_signal",
    "load_signal",
    "parse_signal_spec",
    "signal_feed",
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
