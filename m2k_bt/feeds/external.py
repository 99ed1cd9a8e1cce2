"""External signals: any timestamped series, aligned to the bars *as of* (no look-ahead).

An external series (public name :class:`Signal`, ``--signal`` on the command line; "signal"
here never means a trade direction) is a series of values, each stamped with the time it became
known: a news sentiment score, a VIX close, a put/call ratio, a fundamental indicator.
:func:`align_signal` gives, for every bar, the value usable during that bar:

- a value stamped at ``t`` is usable from the first bar that **starts** at or after ``t``
  (bars are stamped at their start; a value stamped mid-bar is first seen on the next bar);
- a **date-only** stamp ``D`` (a daily close) means "known by the end of D's cash session" and
  becomes usable at ``D daily_at`` New York, by default 18:00, the Globex reopen that starts
  the next CME session: a daily close is used from the next session, never the same day. For a
  series published later (a midnight sentiment aggregate), stamp real times or pass
  ``daily_at="24:00"`` (the next midnight);
- daily bars (one per CME trade date, stamped at midnight by ``resample_bars``) start at 18:00
  the evening before, and that is the start used;
- the last value carries forward until ``max_age`` has passed since its stamp; after that, and
  before the first value, the series is *unknown* (``NaN``).

:class:`SignalFeed` is a :class:`~m2k_bt.feeds.bars.BarsFeed` with an extra line ``signal`` (or
lines named after your series, :func:`signal_feed`), usable by any backtrader strategy as
``self.data.lines.signal[0]``. Our strategies filter entries with ``signal_min`` /
``signal_max`` (an unknown value blocks entries).

>>> import pandas as pd
>>> sig = Signal(pd.Series([20.0], index=pd.DatetimeIndex(["2024-03-05 10:02"])), name="vix")
>>> bars = pd.DatetimeIndex(["2024-03-05 10:00", "2024-03-05 10:05"], tz="America/New_York")
>>> align_signal(sig, bars).tolist()  # stamped mid-bar: not visible in the 10:00 bar
[nan, 20.0]
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataFeedError, ParameterError
from ..sessions import GLOBEX_REOPEN, NY
from .bars import BarsFeed

__all__ = ["Signal", "SignalFeed", "align_signal", "load_signal", "parse_signal_spec",
           "signal_feed"]

#: Time of day a daily value becomes usable: the Globex reopen (New York), the first bar of the
#: next CME session.
DEFAULT_DAILY_AT = f"{GLOBEX_REOPEN:%H:%M}"
_TIME_COLUMNS = ("time", "datetime", "timestamp", "date")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class Signal:
    """Values (``values``: a float Series on a tz-aware New York index of availability times),
    ``name``, ``max_age`` (a ``pd.Timedelta`` or ``None`` for no limit), ``source``."""

    values: pd.Series
    name: str = "signal"
    max_age: pd.Timedelta | None = None
    source: str = ""

    def __post_init__(self) -> None:
        s = self.values
        if not isinstance(s, pd.Series) or not isinstance(s.index, pd.DatetimeIndex):
            raise ParameterError("Signal values must be a pandas Series with a DatetimeIndex")
        idx = s.index.tz_localize(NY) if s.index.tz is None else s.index.tz_convert(NY)
        s = pd.Series(s.to_numpy(dtype="float64"), index=idx).sort_index()
        if s.index.has_duplicates:
            raise ParameterError(f"Signal '{self.name}' has two values at "
                                 f"{s.index[s.index.duplicated()][0]}")
        self.values = s
        self.max_age = _age(self.max_age)


def _age(value) -> pd.Timedelta | None:
    """``None``, a Timedelta, minutes (number) or text like ``"3D"``, ``"90min"``, ``"2h"``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            age = pd.Timedelta(minutes=float(value))
        else:
            age = pd.Timedelta(value)
    except (ValueError, TypeError):
        raise ParameterError(f"signal max_age {value!r} is not a duration; use e.g. '3D', "
                             f"'90min', '2h' or minutes as a number") from None
    if age <= pd.Timedelta(0):
        raise ParameterError(f"signal max_age must be > 0, got {value!r}")
    return age


def _daily_offset(daily_at: str) -> pd.Timedelta:
    text = str(daily_at).strip()
    m = re.match(r"^(\d{1,2}):(\d{2})$", text)
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59 or (
            int(m.group(1)) == 24 and int(m.group(2))):
        raise ParameterError(f"daily_at must be 'HH:MM' New York (00:00-24:00), got {daily_at!r}")
    return pd.Timedelta(hours=int(m.group(1)), minutes=int(m.group(2)))


def parse_signal_spec(spec: str) -> tuple[str, str | None]:
    """``"vix.csv:close"`` -> ``("vix.csv", "close")``; ``"vix.csv"`` -> ``("vix.csv", None)``.

    >>> parse_signal_spec("data/vix.csv:close")
    ('data/vix.csv', 'close')
    """
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    path, _, column = spec.rpartition(":")
    if not path or not column or "/" in column or "\\" in column:
        return spec, None
    return path, column.strip()


def load_signal(path: str | os.PathLike, column: str | None = None, max_age=None,
                daily_at: str = DEFAULT_DAILY_AT, name: str | None = None) -> Signal:
    """Read a signal from a CSV: a time column (``time``, ``datetime``, ``timestamp``,
    ``date``, or the first column) and a value column (``column``; else ``value``; else the only
    other column).

    Times: tz-aware ISO, or naive New York; a date alone becomes ``D daily_at`` (see the module
    doc). Empty values are skipped (the previous value carries forward); a value that is not a
    number, a bad time, or a time given twice raises :class:`~m2k_bt.errors.DataFeedError`
    naming the file, line and value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFeedError(f"signal file not found: {path} (give a CSV with a time column and "
                            f"a value column, e.g. 'time,value')")
    offset = _daily_offset(daily_at)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFeedError(f"{path}: not a text file ({exc.reason} at byte {exc.start}); give "
                            f"a UTF-8 CSV with a time column and a value column, e.g. "
                            f"'time,value'") from None
    with io.StringIO(text, newline="") as fh:  # the lines a file opened with newline="" has
        rows = [(n, r) for n, r in enumerate(csv.reader(fh), start=1)
                if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise DataFeedError(f"{path}: empty signal file; expected a header like 'time,value'")
    header_line, header = rows[0]
    header = [h.strip() for h in header]
    lower = [h.lower() for h in header]
    t_col = next((lower.index(c) for c in _TIME_COLUMNS if c in lower), 0)
    if column is not None:
        if column not in header:
            from ..errors import did_you_mean

            raise DataFeedError(f"{path}:{header_line}: no column '{column}'"
                                f"{did_you_mean(column, header)}; columns: {', '.join(header)}")
        v_col = header.index(column)
    elif "value" in lower:
        v_col = lower.index("value")
    else:
        others = [i for i in range(len(header)) if i != t_col]
        if len(others) != 1:
            raise DataFeedError(f"{path}:{header_line}: several value columns "
                                f"({', '.join(header[i] for i in others)}); name one with "
                                f"FILE:COLUMN (--signal) or column=...")
        v_col = others[0]
    times, values = [], []
    for lineno, row in rows[1:]:
        if len(row) != len(header):
            raise DataFeedError(f"{path}:{lineno}: expected {len(header)} fields "
                                f"({','.join(header)}), got {len(row)}: {','.join(row)!r}")
        raw_t, raw_v = row[t_col].strip(), row[v_col].strip()
        if raw_v == "" or raw_v.lower() in ("nan", "na", "null"):
            continue  # missing: the previous value carries forward (subject to max_age)
        try:
            value = float(raw_v)
            if not math.isfinite(value):
                raise ValueError
        except ValueError:
            raise DataFeedError(f"{path}:{lineno}: value {raw_v!r} in column "
                                f"'{header[v_col]}' is not a number") from None
        times.append(_stamp(raw_t, path, lineno, offset))
        values.append(value)
    if not values:
        raise DataFeedError(f"{path}: no values in column '{header[v_col]}'")
    idx = pd.DatetimeIndex(times)
    if idx.has_duplicates:
        dup = idx[idx.duplicated()][0]
        raise DataFeedError(f"{path}: time {dup} appears twice; one value per time")
    return Signal(pd.Series(values, index=idx), name=name or "signal", max_age=max_age,
                  source=f"{path}:{header[v_col]}")


def _stamp(text: str, path, lineno, offset: pd.Timedelta) -> pd.Timestamp:
    try:
        if not re.match(r"^\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        ts = pd.Timestamp(text)
        if ts is pd.NaT:
            raise ValueError
    except (ValueError, TypeError):
        raise DataFeedError(f"{path}:{lineno}: time {text!r} is not an ISO date or date-time "
                            f"(e.g. 2024-03-05 or 2024-03-05 16:15)") from None
    if _DATE_ONLY.match(text):
        return (ts + offset).tz_localize(NY)
    return ts.tz_localize(NY) if ts.tzinfo is None else ts.tz_convert(NY)


def _bar_starts(index: pd.DatetimeIndex) -> np.ndarray:
    """Bar start times (ns, New York naive); daily bars start 18:00 the evening before."""
    idx = index.tz_localize(NY) if index.tz is None else index.tz_convert(NY)
    local = idx.tz_localize(None).as_unit("ns")
    starts = local.asi8.copy()
    if len(local) > 1 and np.median(np.diff(starts)) >= 20 * 3600 * 10**9:
        midnight = local.normalize().asi8 == starts
        starts[midnight] -= 6 * 3600 * 10**9
    return starts


def align_signal(signal: Signal, bars_index: pd.DatetimeIndex) -> np.ndarray:
    """The value usable in each bar of ``bars_index`` (float array, ``NaN`` = unknown)."""
    if not isinstance(bars_index, pd.DatetimeIndex):
        raise ParameterError("align_signal needs the bars' DatetimeIndex")
    starts = _bar_starts(bars_index)
    stamps = signal.values.index.tz_convert(NY).tz_localize(None).as_unit("ns").asi8
    vals = signal.values.to_numpy(dtype="float64")
    pos = np.searchsorted(stamps, starts, side="right") - 1  # last stamp <= bar start
    out = np.full(len(starts), np.nan)
    ok = pos >= 0
    out[ok] = vals[pos[ok]]
    if signal.max_age is not None:
        age = np.where(ok, starts - stamps[np.maximum(pos, 0)], 0)
        out[ok & (age > signal.max_age.value)] = np.nan
    return out


class _ExternalLines(BarsFeed):
    """BarsFeed plus the lines named in ``_external_lines``, filled from aligned external
    series."""

    params = (("signal", None),)
    _external_lines: tuple[str, ...] = ()

    def _columns(self) -> None:
        super()._columns()
        given = self.p.signal
        if isinstance(given, Signal):
            given = {self._external_lines[0]: given}
        if not isinstance(given, dict) or set(given) != set(self._external_lines) or not all(
                isinstance(s, Signal) for s in given.values()):
            raise ParameterError(
                f"{type(self).__name__} needs signal=Signal (or a dict of Signals for the lines "
                f"{', '.join(self._external_lines)}), got {self.p.signal!r}"
            )
        index = self.p.dataname.index
        self.signal_values = {name: align_signal(sig, index) for name, sig in given.items()}
        self._series = [(name, self.signal_values[name]) for name in self._external_lines]

    def preload(self) -> None:
        lo = hi = None
        if self._dtlist is not None:
            import bisect

            lo = bisect.bisect_left(self._dtlist, self.fromdate)
            hi = bisect.bisect_right(self._dtlist, self.todate)
        series = self._series
        super().preload()
        n_dt = len(self.lines.datetime.array)
        for name, values in series:
            line = getattr(self.lines, name)
            if len(line.array) < n_dt and lo is not None:  # BarsFeed's bulk path: fill ours
                line.array.extend(values[lo:hi].tolist())

    def _load(self) -> bool:
        if not super()._load():
            return False
        i = self._i
        for name, values in self._series:
            getattr(self.lines, name)[0] = float(values[i])
        return True


class SignalFeed(_ExternalLines):
    """:class:`~m2k_bt.feeds.bars.BarsFeed` plus the line ``signal``, aligned with
    :func:`align_signal` (``NaN`` where unknown).

    Params (besides BarsFeed's):

    - ``signal`` (def: ``None``): a :class:`Signal` (or a dict ``{line name: Signal}`` on a
      class made by :func:`signal_feed`).

    >>> import pandas as pd
    >>> idx = pd.date_range("2024-03-05 10:00", periods=2, freq="5min", tz="America/New_York")
    >>> bars = pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
    ...                      "volume": 1.0}, index=idx)
    >>> feed = SignalFeed(dataname=bars, signal=Signal(pd.Series([3.0], index=idx[:1])))
    >>> feed.signal_values["signal"].tolist()
    [3.0, 3.0]
    """

    lines = ("signal",)
    _external_lines = ("signal",)


def signal_feed(bars: pd.DataFrame, **signals: Signal) -> BarsFeed:
    """A :class:`SignalFeed` with one line per keyword: ``signal_feed(bars, vix=s1, pcr=s2)``
    gives ``data.lines.vix`` and ``data.lines.pcr``."""
    if not signals:
        raise ParameterError("signal_feed needs at least one name=Signal")
    names = tuple(signals)
    for name in names:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) or name in (
                "open", "high", "low", "close", "volume", "openinterest", "datetime", "roll"):
            raise ParameterError(f"signal line name {name!r} is not usable; pick another")
    cls = type(f"SignalFeed_{'_'.join(names)}", (_ExternalLines,),
               {"lines": names, "_external_lines": names})
    return cls(dataname=bars, signal=dict(signals))


# --------------------------------------------------------------------------- run settings
@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float, column, max_age, daily_at: str) -> Signal:
    return load_signal(path, column=column, max_age=max_age, daily_at=daily_at)


def config_signal(config) -> Signal | None:
    """The :class:`Signal` of a ``BacktestConfig`` (``signal``: ``"FILE[:column]"``, a path or a
    Signal; ``signal_max_age`` applies to a file), or ``None``."""
    given = getattr(config, "signal", None)
    if given is None:
        return None
    age = getattr(config, "signal_max_age", None)
    if isinstance(given, Signal):
        if age is not None:
            return Signal(given.values, given.name, age, given.source)
        return given
    if not isinstance(given, (str, os.PathLike)):
        raise ParameterError(f"signal must be 'FILE[:column]' or a Signal, got {given!r}")
    path, column = parse_signal_spec(str(given))
    if not Path(path).is_file():
        raise DataFeedError(f"signal file not found: {path} (--signal FILE[:column])")
    age_key = str(_age(age).value) if age is not None else None
    sig = _load_cached(str(Path(path).resolve()), Path(path).stat().st_mtime, column, age_key,
                       DEFAULT_DAILY_AT)
    return Signal(sig.values, sig.name, _age(age), sig.source)
