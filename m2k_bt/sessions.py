"""The CME Globex calendar of equity index futures (M2K, RTY, MES, ...).

Globex trades Sunday 18:00 to Friday 17:00 New York time, with a daily maintenance break
17:00-18:00, a 16:15-16:30 halt until trade date 2021-06-28, CME holidays and early closes. The
calendar comes from ``pandas_market_calendars`` ("CME_Equity"), which maintains the holidays,
early closes and the old halt; nothing here is a hand-written holiday list.

Conventions used throughout the package:

- A bar is stamped with its **start** time (as Databento and most vendors do). A bar stamped
  ``t`` is inside the session when ``open <= t <= close`` and not strictly inside a halt, so a
  file stamped at bar ends (``close`` itself) passes too.
- The **trade date** of a moment is the next day's from 18:00 New York time on.
- **RTH** (regular trading hours) is 09:30 <= t < 16:00 New York time on a Globex trade date,
  cut short by an early close.

>>> import pandas as pd
>>> is_globex_open(pd.Timestamp("2025-03-09 18:00", tz="America/New_York"))  # Sunday open
True
>>> is_globex_open(pd.Timestamp("2025-03-10 17:30", tz="America/New_York"))  # daily break
False
"""

from __future__ import annotations

import datetime as _dt
import functools

import numpy as np
import pandas as pd

from .errors import DataFeedError

__all__ = [
    "NY",
    "CALENDAR_NAME",
    "RTH_START",
    "RTH_END",
    "globex_schedule",
    "is_globex_open",
    "in_globex_session",
    "is_rth",
    "rth_mask",
    "trade_dates",
    "is_trading_day",
]

#: Time zone every timestamp in the package is expressed in.
NY = "America/New_York"

#: pandas_market_calendars calendar for CME equity index futures.
CALENDAR_NAME = "CME_Equity"

#: Regular trading hours of the cash equity market, New York time.
RTH_START = _dt.time(9, 30)
RTH_END = _dt.time(16, 0)

_NS_PER_DAY = 86_400 * 10**9


@functools.lru_cache(maxsize=1)
def _calendar():
    import pandas_market_calendars as mcal

    return mcal.get_calendar(CALENDAR_NAME)


@functools.lru_cache(maxsize=64)
def _schedule_cached(start: _dt.date, end: _dt.date) -> pd.DataFrame:
    sched = _calendar().schedule(start_date=start, end_date=end)
    sched = sched.tz_localize(None) if sched.index.tz is not None else sched
    for col in sched.columns:
        sched[col] = pd.to_datetime(sched[col], utc=True).dt.tz_convert(NY)
    sched.index.name = "trade_date"
    return sched


def _as_date(value, name: str) -> _dt.date:
    try:
        return pd.Timestamp(value).date()
    except (ValueError, TypeError) as exc:
        raise DataFeedError(f"{name} must be a date like '2025-01-02', got {value!r}") from exc


def globex_schedule(start, end) -> pd.DataFrame:
    """Globex sessions whose trade date falls in [start, end], one row per trade date.

    Columns ``market_open``, ``break_start``, ``break_end``, ``market_close`` are tz-aware New
    York times; ``break_start == break_end`` when there is no halt (from 2021-06-28 on). The
    index (``trade_date``) holds naive dates. Holidays have no row.

    >>> s = globex_schedule("2024-12-23", "2024-12-27")
    >>> [d.strftime("%m-%d") for d in s.index]  # Christmas Day is closed
    ['12-23', '12-24', '12-26', '12-27']
    >>> str(s.loc["2024-12-24", "market_close"].time())  # early close
    '13:00:00'
    """
    return _schedule_cached(_as_date(start, "start"), _as_date(end, "end")).copy()


def _to_ny_index(index) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(index)
    if idx.tz is None:
        return idx.tz_localize(NY, ambiguous="NaT", nonexistent="NaT")
    return idx.tz_convert(NY)


def _session_arrays(idx: pd.DatetimeIndex):
    """Schedule covering ``idx`` as int64 ns UTC arrays (open, break_start, break_end, close)."""
    valid = idx[~idx.isna()]
    if len(valid) == 0:
        return None
    lo = (valid.min() - pd.Timedelta(days=7)).date()
    hi = (valid.max() + pd.Timedelta(days=7)).date()
    sched = _schedule_cached(lo, hi)

    def ns(col: str) -> np.ndarray:
        return sched[col].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]").view(
            "int64"
        )

    return ns("market_open"), ns("break_start"), ns("break_end"), ns("market_close")


def _utc_ns(idx: pd.DatetimeIndex) -> np.ndarray:
    return idx.tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]").view("int64")


def in_globex_session(index) -> np.ndarray:
    """Boolean array: is each timestamp inside a Globex session (vectorised)?

    Naive timestamps are New York time. Inside means ``open <= t <= close`` and not strictly
    between a halt's start and end (the 16:15-16:30 halt before 2021-06-28). NaT is False.

    >>> idx = pd.DatetimeIndex(["2021-06-25 16:20", "2021-06-28 16:20", "2025-12-25 12:00"])
    >>> in_globex_session(idx).tolist()  # old halt, no halt any more, Christmas
    [False, True, False]
    """
    idx = _to_ny_index(index)
    out = np.zeros(len(idx), dtype=bool)
    arrays = _session_arrays(idx)
    if arrays is None:
        return out
    opens, bstart, bend, closes = arrays
    nat = np.asarray(idx.isna())
    t = _utc_ns(idx)
    pos = np.searchsorted(opens, t, side="right") - 1
    ok = (pos >= 0) & ~nat
    p = np.clip(pos, 0, len(opens) - 1)
    ok &= t <= closes[p]
    ok &= ~((t > bstart[p]) & (t < bend[p]))
    out[:] = ok
    return out


def is_globex_open(ts) -> bool:
    """Whether Globex is open at ``ts`` (naive = New York time); see :func:`in_globex_session`."""
    return bool(in_globex_session(pd.DatetimeIndex([pd.Timestamp(ts)]))[0])


def trade_dates(index) -> pd.DatetimeIndex:
    """CME trade date of each timestamp (vectorised): from 18:00 New York on, the next day.

    Returns naive midnight dates named ``trade_date``. Naive input is New York time.

    >>> idx = pd.DatetimeIndex(["2025-12-10 17:59", "2025-12-10 18:00"])
    >>> [d.strftime("%Y-%m-%d") for d in trade_dates(idx)]
    ['2025-12-10', '2025-12-11']
    """
    idx = _to_ny_index(index).tz_localize(None)
    days = idx.normalize()
    after_open = np.asarray(idx.hour >= 18)
    out = days + pd.to_timedelta(after_open.astype("int64"), unit="D")
    return pd.DatetimeIndex(out, name="trade_date")


def is_trading_day(dates) -> np.ndarray:
    """Boolean array: is each date a Globex trade date (not a weekend or full CME holiday)?

    >>> is_trading_day(pd.DatetimeIndex(["2025-07-13", "2025-07-14", "2025-12-25"])).tolist()
    [False, True, False]
    """
    days = pd.DatetimeIndex(dates)
    if days.tz is not None:
        days = days.tz_convert(NY).tz_localize(None)
    days = days.normalize()
    if len(days) == 0 or days.isna().all():
        return np.zeros(len(days), dtype=bool)
    sched = _schedule_cached(days.min().date(), days.max().date())
    return np.asarray(days.isin(sched.index)) & ~np.asarray(days.isna())


def rth_mask(index) -> np.ndarray:
    """Boolean array: is each timestamp within regular trading hours (vectorised)?

    RTH is 09:30 <= t < 16:00 New York time, inside a Globex session (so holidays and the time
    after an early close are excluded).

    >>> idx = pd.DatetimeIndex(["2025-03-10 09:29", "2025-03-10 09:30", "2025-03-10 16:00"])
    >>> rth_mask(idx).tolist()
    [False, True, False]
    """
    idx = _to_ny_index(index)
    minutes = np.asarray(idx.hour * 60 + idx.minute)
    lo = RTH_START.hour * 60 + RTH_START.minute
    hi = RTH_END.hour * 60 + RTH_END.minute
    in_hours = (minutes >= lo) & (minutes < hi)
    close_ok = in_globex_session(idx)
    arrays = _session_arrays(idx)
    if arrays is not None:
        # a bar stamped exactly at an early close is the session's end, not a trading minute
        opens, _, _, closes = arrays
        t = _utc_ns(idx)
        p = np.clip(np.searchsorted(opens, t, side="right") - 1, 0, len(opens) - 1)
        close_ok &= t < closes[p]
    return in_hours & close_ok


def is_rth(ts) -> bool:
    """Whether ``ts`` (naive = New York time) is within regular trading hours."""
    return bool(rth_mask(pd.DatetimeIndex([pd.Timestamp(ts)]))[0])
