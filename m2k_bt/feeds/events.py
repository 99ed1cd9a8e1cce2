"""Event calendar: FOMC, CPI, payrolls, the Russell reconstitution and M2K expiries.

An :class:`EventCalendar` holds timestamped events (New York time) of a few *kinds* and, per
kind, the date ranges it is complete for (its *coverage*):

- ``fomc``: FOMC statement releases (14:00 New York for scheduled meetings, the real time for
  the 2020 unscheduled ones);
- ``cpi``: BLS Consumer Price Index releases, 08:30 New York;
- ``nfp``: BLS Employment Situation ("non-farm payrolls") releases, 08:30 New York;
- ``russell_recon``: the Russell US indexes reconstitution, effective after the 16:00 close on
  the fourth Friday of June (semi-annual from 2026: see ``m2k_bt/data/events.csv``);
- ``expiry``: quarterly M2K expiries from :func:`m2k_bt.contracts.expiry_date`, 09:30 New York
  (final settlement is the index's opening quotation); a rule, so covered for every year;
- any kind of your own from a CSV (``time,kind,description``).

The shipped dates live in ``m2k_bt/data/events.csv`` (installed with the package) with a
``# coverage KIND START END source: ...`` line per verified range. :func:`load_calendar` gives
the shipped table plus the expiry rule; :func:`read_events_csv` reads your own file (the same
columns; times tz-aware, or naive New York; ``# coverage`` lines of your own extend coverage).

Strategies use the calendar through :class:`EventGate` (see ``avoid_events`` on
:class:`m2k_bt.strategies.base.M2KStrategy`): an order decided on a bar fills at the next bar's open
and the position is then held at least through that next bar, so a bar's entry is blocked when
that next bar overlaps ``[event - before, event + after)`` (on 5-minute bars: when the fill
is inside the window); with ``flat_before_event`` a held position is closed on the bar whose
next bar overlaps the window, so the account is flat when it starts (on daily bars: the day
before). Bars outside a kind's coverage are not treated as "no event": the run's warnings say
which dates were not checked.

>>> cal = load_calendar()
>>> [e.time.strftime("%Y-%m-%d %H:%M") for e in cal.between("2024-06-28", "2024-06-29")]
['2024-06-28 16:00']
>>> cal.kind_of("2024-06-28 16:00")
'russell_recon'
"""

from __future__ import annotations

import bisect
import csv
import datetime as _dt
import functools
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd

from ..errors import DataFeedError, ParameterError
from ..sessions import NY

__all__ = [
    "EVENT_KINDS",
    "SHIPPED_EVENTS",
    "Event",
    "EventCalendar",
    "EventGate",
    "EventActions",
    "event_actions",
    "EventMarks",
    "load_calendar",
    "read_events_csv",
    "parse_kinds",
    "resolve_calendar",
]

#: Kinds the package knows (any other kind may come from a user file).
EVENT_KINDS = ("fomc", "cpi", "nfp", "russell_recon", "expiry")
#: The shipped table (package data, installed with the package).
SHIPPED_EVENTS = Path(__file__).resolve().parents[1] / "data" / "events.csv"
EXPIRY_TIME = _dt.time(9, 30)  # M2K final settlement: the index's Special Opening Quotation
_EXPIRY_YEARS = (2019, 2060)  # M2K listed from May 2019
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_COVERAGE_RE = re.compile(
    r"^#\s*coverage\s+(\S+)\s+(\d{4}-\d{2}-\d{2})\s+(\d{4}-\d{2}-\d{2})(?:\s+source:\s*(.*))?$"
)


@dataclass(frozen=True, order=True)
class Event:
    """One event: ``time`` (tz-aware New York), ``kind``, ``description``, ``source`` (file)."""

    time: pd.Timestamp
    kind: str
    description: str = ""
    source: str = ""


@dataclass
class EventCalendar:
    """Events plus, per kind, the inclusive date ranges the table is complete for.

    ``coverage[kind]`` is a list of ``(start_date, end_date, source)``; a kind in ``rules``
    (``expiry``) is computed and covered everywhere; a kind with neither (a user kind without
    ``# coverage`` lines) is taken as complete wherever you use it.
    """

    events: list[Event] = field(default_factory=list)
    coverage: dict[str, list[tuple[_dt.date, _dt.date, str]]] = field(default_factory=dict)
    rules: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.events = sorted(self.events)

    @property
    def kinds(self) -> list[str]:
        return sorted({e.kind for e in self.events} | set(self.coverage) | self.rules)

    def merge(self, other: EventCalendar) -> EventCalendar:
        """Both calendars' events (duplicates of the same time and kind dropped) and coverage."""
        seen = {(e.time, e.kind) for e in self.events}
        events = list(self.events) + [e for e in other.events if (e.time, e.kind) not in seen]
        coverage = {k: list(v) for k, v in self.coverage.items()}
        for kind, ranges in other.coverage.items():
            coverage.setdefault(kind, []).extend(ranges)
        return EventCalendar(events, coverage, set(self.rules) | set(other.rules))

    def select(self, kinds) -> list[Event]:
        kinds = set(parse_kinds(kinds)) if kinds is not None else None
        return [e for e in self.events if kinds is None or e.kind in kinds]

    def between(self, start, end, kinds=None) -> list[Event]:
        """Events with ``start <= time < end`` (dates or times; naive = New York)."""
        lo, hi = _ts(start), _ts(end)
        return [e for e in self.select(kinds) if lo <= e.time < hi]

    def kind_of(self, when) -> str | None:
        """The kind of the event at exactly ``when`` (or ``None``)."""
        t = _ts(when)
        return next((e.kind for e in self.events if e.time == t), None)

    def uncovered(self, kind: str, first, last) -> list[tuple[_dt.date, _dt.date]]:
        """Date ranges inside ``[first, last]`` (dates) the table has no data for."""
        if kind in self.rules or kind not in self.coverage:
            return []
        first, last = _ts(first).date(), _ts(last).date()
        gaps, cursor = [], first
        for start, end, _src in sorted(self.coverage[kind]):
            if end < cursor:
                continue
            if start > last:
                break
            if start > cursor:
                gaps.append((cursor, start - _dt.timedelta(days=1)))
            cursor = max(cursor, end + _dt.timedelta(days=1))
            if cursor > last:
                break
        if cursor <= last:
            gaps.append((cursor, last))
        return gaps

    def coverage_warnings(self, kinds, first, last) -> list[str]:
        """One warning per avoided kind with dates in ``[first, last]`` the table lacks."""
        out = []
        for kind in parse_kinds(kinds):
            gaps = self.uncovered(kind, first, last)
            if not gaps:
                continue
            covered = ", ".join(f"{s}..{e}" for s, e, _ in sorted(self.coverage[kind]))
            dates = ", ".join(f"{s}..{e}" for s, e in gaps)
            out.append(
                f"events: no '{kind}' dates for {dates} (the table covers {covered}); entries "
                f"there were not checked against '{kind}' events, not 'no event': add them "
                f"with --events FILE (time,kind,description and a '# coverage' line)"
            )
        return out


# --------------------------------------------------------------------------- loading
def _ts(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize(NY) if ts.tzinfo is None else ts.tz_convert(NY)


def parse_kinds(kinds) -> tuple[str, ...]:
    """``"fomc, cpi"`` or ``["fomc", "cpi"]`` -> ``("fomc", "cpi")``; ``None``/``""`` -> ``()``.

    >>> parse_kinds("FOMC,cpi")
    ('fomc', 'cpi')
    """
    if kinds is None:
        return ()
    items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ParameterError(f"event kinds must be strings, got {item!r}")
        name = item.strip().lower()
        if not name:
            continue
        if not _KIND_RE.match(name):
            raise ParameterError(
                f"event kind {item!r} is not a name (lower-case letters, digits, '_'); "
                f"known kinds: {', '.join(EVENT_KINDS)}"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def read_events_csv(path: str | os.PathLike, default_tz: str = NY) -> EventCalendar:
    """Events from a CSV with columns ``time,kind,description`` (description optional).

    ``time``: ISO date-time, tz-aware (``2024-03-20T14:00-04:00``, ``...Z``) or naive in
    ``default_tz`` (New York); a date alone means 00:00. Lines starting with ``#`` are comments,
    except ``# coverage KIND YYYY-MM-DD YYYY-MM-DD source: text``, which declares the dates the
    file is complete for. Any malformed line raises :class:`~m2k_bt.errors.DataFeedError`
    naming the file, the line number and the value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFeedError(f"event file not found: {path} (give a CSV with columns "
                            f"time,kind,description)")
    events: list[Event] = []
    coverage: dict[str, list] = {}
    header = None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFeedError(f"{path}: not a text file ({exc.reason} at byte {exc.start}); give "
                            f"a UTF-8 CSV with columns time,kind,description") from None
    with io.StringIO(text, newline="") as fh:  # the lines a file opened with newline="" has
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                m = _COVERAGE_RE.match(line)
                if m:
                    kind = _kind_at(m.group(1), path, lineno)
                    start, end = (_date_at(m.group(i), path, lineno) for i in (2, 3))
                    if end < start:
                        raise DataFeedError(f"{path}:{lineno}: coverage of '{kind}' ends "
                                            f"{end} before it starts {start}")
                    coverage.setdefault(kind, []).append((start, end, m.group(4) or str(path)))
                elif re.match(r"^#\s*coverage\b", line):
                    raise DataFeedError(
                        f"{path}:{lineno}: coverage line {line!r} not understood; write "
                        f"'# coverage KIND YYYY-MM-DD YYYY-MM-DD source: where the dates come from'"
                    )
                continue
            row = next(csv.reader([line]))
            if header is None:
                header = [c.strip().lower() for c in row]
                if header[:2] != ["time", "kind"]:
                    raise DataFeedError(
                        f"{path}:{lineno}: header must start with 'time,kind' "
                        f"(then 'description'), got {line!r}"
                    )
                continue
            if len(row) < 2 or len(row) > len(header):
                raise DataFeedError(f"{path}:{lineno}: expected {len(header)} fields "
                                    f"({','.join(header)}), got {len(row)}: {line!r}")
            when = _time_at(row[0], path, lineno, default_tz)
            kind = _kind_at(row[1], path, lineno)
            desc = row[2].strip() if len(row) > 2 else ""
            events.append(Event(when, kind, desc, str(path)))
    if header is None:
        raise DataFeedError(f"{path}: no header line 'time,kind,description' found")
    dupes = _duplicates(events)
    if dupes:
        raise DataFeedError(f"{path}: event listed twice: {dupes[0].kind} at {dupes[0].time}")
    return EventCalendar(events, coverage)


def _duplicates(events: list[Event]) -> list[Event]:
    seen, out = set(), []
    for e in events:
        key = (e.time, e.kind)
        if key in seen:
            out.append(e)
        seen.add(key)
    return out


def _kind_at(text: str, path, lineno) -> str:
    name = text.strip().lower()
    if not _KIND_RE.match(name):
        raise DataFeedError(f"{path}:{lineno}: event kind {text!r} is not a name "
                            f"(lower-case letters, digits, '_'), e.g. fomc, cpi, my_event")
    return name


def _date_at(text: str, path, lineno) -> _dt.date:
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise DataFeedError(f"{path}:{lineno}: {text!r} is not a date (YYYY-MM-DD)") from None


def _time_at(text: str, path, lineno, default_tz: str) -> pd.Timestamp:
    value = text.strip()
    try:
        if not re.match(r"^\d{4}-\d{2}-\d{2}", value):
            raise ValueError
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataFeedError(
            f"{path}:{lineno}: time {text!r} is not an ISO date-time; write e.g. "
            f"'2024-03-20 14:00' (New York) or '2024-03-20T18:00Z'"
        ) from None
    if ts is pd.NaT:
        raise DataFeedError(f"{path}:{lineno}: time {text!r} is empty")
    return ts.tz_localize(default_tz) if ts.tzinfo is None else ts.tz_convert(NY)


@functools.lru_cache(maxsize=1)
def _expiry_events() -> tuple[Event, ...]:
    from ..contracts import M2K, contract_symbol, expiry_date

    out = []
    for year in range(*_EXPIRY_YEARS):
        for month in M2K.month_numbers:
            day = expiry_date(M2K, year, month)
            when = pd.Timestamp(_dt.datetime.combine(day, EXPIRY_TIME)).tz_localize(NY)
            out.append(Event(when, "expiry", f"{contract_symbol(M2K, year, month)} expiry "
                             f"(final settlement at the open)", "m2k_bt.contracts.expiry_date"))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime: float) -> EventCalendar:
    return read_events_csv(path)


def _read(path) -> EventCalendar:
    path = Path(path)
    if not path.is_file():
        raise DataFeedError(f"event file not found: {path} (give a CSV with columns "
                            f"time,kind,description)")
    cal = _read_cached(str(path.resolve()), path.stat().st_mtime)
    return EventCalendar(list(cal.events), {k: list(v) for k, v in cal.coverage.items()},
                         set(cal.rules))


def load_calendar(extra: str | os.PathLike | EventCalendar | None = None) -> EventCalendar:
    """The shipped table plus the expiry rule, plus ``extra`` (a CSV path or a calendar)."""
    cal = _read(SHIPPED_EVENTS).merge(EventCalendar(list(_expiry_events()), {}, {"expiry"}))
    if extra is None:
        return cal
    return cal.merge(extra if isinstance(extra, EventCalendar) else _read(extra))


def resolve_calendar(value) -> EventCalendar:
    """``None`` -> :func:`load_calendar`; a path -> shipped + that file; a calendar -> itself."""
    if isinstance(value, EventCalendar):
        return value
    if value is None or isinstance(value, (str, os.PathLike)):
        return load_calendar(value)
    raise ParameterError(f"event_calendar must be None, a CSV path or an EventCalendar, "
                         f"got {value!r}")


# --------------------------------------------------------------------------- the gate
class EventGate:
    """Fast per-bar look-ups of event windows in backtrader's float time (New York naive).

    - ``kinds``: the kinds to avoid; ``before``/``after``: minutes around each event.
    - :meth:`window_at` (``x``, ``length``: the bar the position would first be held in, from
      its open ``x``, as backtrader floats) returns the event whose window ``[time - before,
      time + after)`` overlaps it, else ``None``.
    """

    def __init__(self, calendar: EventCalendar, kinds, before: float, after: float) -> None:
        self.calendar = calendar
        self.kinds = parse_kinds(kinds)
        unknown = [k for k in self.kinds if k not in calendar.kinds]
        if unknown:
            from ..errors import did_you_mean

            raise ParameterError(
                f"unknown event kind '{unknown[0]}'{did_you_mean(unknown[0], calendar.kinds)}; "
                f"known: {', '.join(calendar.kinds)} (add your own with --events FILE)"
            )
        self.before, self.after = float(before), float(after)
        events = calendar.select(self.kinds)
        windows = []
        for e in events:
            local = e.time.tz_convert(NY).tz_localize(None).to_pydatetime()
            t = bt.date2num(local)
            windows.append((t - self.before / 1440.0, t + self.after / 1440.0, e))
        windows.sort(key=lambda w: w[0])
        self._starts = [w[0] for w in windows]
        self._events = [w[2] for w in windows]
        # running maximum of the window ends, and which event holds it
        self._reach: list[tuple[float, int]] = []
        best = (-math.inf, -1)
        for i, w in enumerate(windows):
            if w[1] > best[0]:
                best = (w[1], i)
            self._reach.append(best)

    def window_index(self, xs: np.ndarray, length: float) -> np.ndarray:
        """:meth:`window_at` for every ``x`` of ``xs`` at once (``length`` > 0): the index in
        :attr:`events` of the event found, -1 where none; the same comparisons, vectorised."""
        xs = np.asarray(xs, dtype="float64")
        if not self._starts:
            return np.full(len(xs), -1, dtype="int64")
        i = np.searchsorted(np.asarray(self._starts), xs + length - 1e-9, side="left") - 1
        ends = np.asarray([r[0] for r in self._reach])
        which = np.asarray([r[1] for r in self._reach], dtype="int64")
        safe = np.maximum(i, 0)
        hit = (i >= 0) & (xs < ends[safe] - 1e-9)
        return np.where(hit, which[safe], -1).astype("int64")

    @property
    def events(self) -> list:
        """The avoided events, in the order :meth:`window_index` numbers them."""
        return self._events

    def window_at(self, x: float, length: float = 0.0) -> Event | None:
        """The event whose window overlaps ``[x, x + length)`` (``length`` 0: the instant
        ``x``), backtrader float days; the one reaching furthest when several do."""
        hi = x + max(length, 0.0)
        i = bisect.bisect_left(self._starts, hi - 1e-9) - 1 if length > 0 else (
            bisect.bisect_right(self._starts, x + 1e-9) - 1)
        if i < 0:
            return None
        end, j = self._reach[i]
        return self._events[j] if x < end - 1e-9 else None


def bar_minutes(data) -> float:
    """Length of one bar of a backtrader feed in minutes, from its timeframe and compression."""
    tf = getattr(data, "_timeframe", bt.TimeFrame.Days)
    comp = float(getattr(data, "_compression", 1) or 1)
    unit = {bt.TimeFrame.Seconds: 1 / 60, bt.TimeFrame.Minutes: 1.0, bt.TimeFrame.Days: 1440.0,
            bt.TimeFrame.Weeks: 7 * 1440.0}.get(tf, 0.0)
    return unit * comp


# --------------------------------------------------------------------------- report and plot
class EventActions(bt.Analyzer):
    """What the event and external-series filters did, for ``report.json`` (``analyzers.events``).

    Keys: ``entries_blocked`` (entries refused inside an event window, one per event and
    direction), ``bars_blocked`` (bars on which an entry was refused), ``forced_exits``
    (positions closed before an event, trade exit reason 'event'), ``signal_blocked``
    (entries refused by ``signal_min``/``signal_max`` or an unknown external series value, one
    per run of refused bars), ``by_kind`` (``{kind: {"entries_blocked": n, "forced_exits": n}}``),
    ``log`` (every record: ``dt, action, kind, event_time, description, direction, bars``,
    ``value`` for external-series blocks), ``warnings`` (coverage gaps of the avoided kinds),
    ``settings`` (``avoid_events, event_before, event_after, flat_before_event, signal_min,
    signal_max``, ``coverage`` of the avoided kinds and the feed's ``signal`` source and
    ``max_age``).
    """

    def get_analysis(self) -> dict:
        strat = self.strategy
        return event_actions(strat.p, getattr(strat, "_gate", None),
                             list(getattr(strat, "event_log", [])),
                             list(getattr(strat, "event_warnings", [])),
                             getattr(getattr(self.data, "p", None), "signal", None))


def event_actions(p, gate, log: list, warnings: list, sig=None) -> dict:
    """:class:`EventActions`' analysis from the strategy's params ``p`` (attributes), its
    ``gate`` (an :class:`EventGate` or ``None``), ``event_log`` and ``event_warnings``, and the
    feed's external ``sig`` (a :class:`~m2k_bt.feeds.external.Signal` or ``None``); the kernel
    makes its own from the same parts."""
    settings = {
        "avoid_events": list(getattr(p, "avoid_events", None) or []),
        "event_before": getattr(p, "event_before", None),
        "event_after": getattr(p, "event_after", None),
        "flat_before_event": getattr(p, "flat_before_event", None),
        "signal_min": getattr(p, "signal_min", None),
        "signal_max": getattr(p, "signal_max", None),
        "coverage": {} if gate is None else {
            k: [f"{a}..{b} ({src})" for a, b, src in gate.calendar.coverage.get(k, [])]
            or ["rule" if k in gate.calendar.rules else "your file"] for k in gate.kinds},
    }
    if sig is not None and hasattr(sig, "source"):
        settings["signal"] = {"source": sig.source, "max_age": None if sig.max_age is None
                              else str(sig.max_age)}
    by_kind: dict[str, dict] = {}
    for rec in log:
        if rec["action"] in ("entry_blocked", "forced_exit"):
            slot = by_kind.setdefault(rec["kind"], {"entries_blocked": 0, "forced_exits": 0})
            slot["entries_blocked" if rec["action"] == "entry_blocked" else "forced_exits"] += 1
    return {
        "entries_blocked": sum(r["action"] == "entry_blocked" for r in log),
        "bars_blocked": sum(r.get("bars", 0) for r in log if r["action"] == "entry_blocked"),
        "forced_exits": sum(r["action"] == "forced_exit" for r in log),
        "signal_blocked": sum(r["action"] == "signal_blocked" for r in log),
        "by_kind": by_kind,
        "log": [{k: (str(v) if isinstance(v, (_dt.datetime, pd.Timestamp)) else v)
                 for k, v in rec.items()} for rec in log],
        "warnings": list(warnings),
        "settings": settings,
    }


class EventMarks(bt.Observer):
    """Plot marks on the price chart: a circle under the bar where an entry was blocked by an
    event or the external-series filter, a cross above the bar where a position was closed for an
    event."""

    lines = ("blocked", "event_exit")
    plotinfo = dict(plot=True, subplot=False, plotlinelabels=True)
    plotlines = dict(
        blocked=dict(marker="o", markersize=7.0, color="darkorange", fillstyle="none", ls=""),
        event_exit=dict(marker="X", markersize=9.0, color="purple", ls=""),
    )

    def next(self) -> None:
        blocked, forced = getattr(self._owner, "_event_mark", (False, False))
        data = self.data
        self.lines.blocked[0] = float(data.low[0]) * 0.999 if blocked else float("nan")
        self.lines.event_exit[0] = float(data.high[0]) * 1.001 if forced else float("nan")
