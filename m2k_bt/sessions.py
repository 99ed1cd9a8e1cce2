"""The CME Globex calendar of equity index futures (M2K, RTY, MES, ...).

Globex trades Sunday 18:00 to Friday 17:00 New York time, with a daily maintenance break
17:00-18:00, a 16:15-16:30 halt until trade date 2021-06-28, CME holidays and early closes. The
calendar comes from ``pandas_market_calendars`` ("CME_Equity"), which maintains the holidays,
early closes and the old halt, corrected where CME's own notices say otherwise (checked for
2017-2026):

- on the cash market's half days (NYSE closes at 13:00: July 3, the day after Thanksgiving,
  Christmas Eve) equity futures close at 12:15 CT = **13:15** New York, not 13:00;
- :data:`SPECIAL_SESSIONS`: days CME announced one by one (the national days of mourning
  2018-12-05 and 2025-01-09 were shortened sessions to 09:30 New York, not closures; Good Friday
  2025 was closed).

The days still in doubt are listed with :data:`SPECIAL_SESSIONS`.

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
import warnings
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from .errors import DataFeedError

__all__ = [
    "NY",
    "CALENDAR_NAME",
    "RTH_START",
    "RTH_END",
    "GLOBEX_REOPEN",
    "NY_ZONE",
    "EPOCH_ORDINAL",
    "date2num",
    "num2datetime64",
    "trade_dates64",
    "globex_schedule",
    "is_globex_open",
    "in_globex_session",
    "is_rth",
    "rth_mask",
    "trade_dates",
    "is_trading_day",
    "SPECIAL_SESSIONS",
    "HALF_DAY_CLOSE",
]

#: Time zone every timestamp in the package is expressed in.
NY = "America/New_York"

#: pandas_market_calendars calendar for CME equity index futures.
CALENDAR_NAME = "CME_Equity"

#: Regular trading hours of the cash equity market, New York time.
RTH_START = _dt.time(9, 30)
RTH_END = _dt.time(16, 0)

#: CME Globex reopens for equity futures at 18:00 New York time; from then on a bar belongs to the
#: next trade date.
GLOBEX_REOPEN = _dt.time(18, 0)

#: :data:`NY` as a ``zoneinfo.ZoneInfo``.
NY_ZONE = ZoneInfo(NY)

_NS_PER_DAY = 86_400 * 10**9

#: New York close of CME equity futures on the cash market's half days (NYSE closes at 13:00):
#: 12:15 CT. Sources: CME holiday notices as relayed by DTN for 2024-07-03 ("Equities: early
#: close at 12:15 p.m." CT), daytradetowin.com for 2017-07-03 ("CME equities halt trading at 1:15
#: p.m. US/Eastern"); pandas_market_calendars' own "CME Globex Equities" calendar lists 12:15 CT
#: for July 3, Black Friday and Christmas Eve, its "CME_Equity" calendar 12:00 CT.
HALF_DAY_CLOSE = _dt.time(13, 15)

#: Trade dates on which CME's own announcements differ from pandas_market_calendars 5.5
#: "CME_Equity": trade date -> (New York close, or None when closed; source). A shortened day
#: opens at 18:00 New York the evening before, like any session.
SPECIAL_SESSIONS: dict[str, tuple[_dt.time | None, str]] = {
    "2018-12-05": (
        _dt.time(9, 30),
        "CME press release 2018-12-02: national day of mourning (President G. H. W. Bush); "
        "equity products 'closing after overnight trading at 8:30 a.m. Central Time'",
    ),
    "2025-01-09": (
        _dt.time(9, 30),
        "CME press release 2024-12-30: national day of mourning (President Carter); 'U.S. "
        "equity markets will be open until 8:30 a.m. CT on January 9'",
    ),
    "2025-04-18": (
        None,
        "Good Friday 2025 (no jobs report): CME Globex closed (Barron's, 2025-04-18); "
        "pandas_market_calendars 5.5 gives every Good Friday from 2023 an 8:15 CT session",
    ),
}

# Known doubts, kept as pandas_market_calendars has them (see tests/test_sessions.py):
# - 2024-03-29 (Good Friday, no jobs report): secondary sources (forexlive 2024-03-28) say CME
#   equity futures were closed; the calendar has a session to 09:15 New York. Kept because the
#   bundled synthetic data (datafeeds/m2k_5min.csv.gz) was generated with that session; a real
#   file has no bars that day, so the difference cannot reject real data.
# - 2026-04-03 (Good Friday, jobs report day): session to 09:15 New York as in 2021 and 2023
#   (pandas_market_calendars PR #456); CME's notice not seen.
# - 2021-12-24, 2022-12-26, 2023-01-02, 2017-01-02 (observed Christmas / New Year): closed, as
#   the calendar has them; not independently confirmed.


@functools.lru_cache(maxsize=1)
def _calendar():
    import pandas_market_calendars as mcal

    return mcal.get_calendar(CALENDAR_NAME)


@functools.lru_cache(maxsize=1)
def _nyse():
    import pandas_market_calendars as mcal

    return mcal.get_calendar("NYSE")


def _at(day: pd.Timestamp, when: _dt.time) -> pd.Timestamp:
    return pd.Timestamp.combine(day.date(), when).tz_localize(NY)


def _apply_corrections(sched: pd.DataFrame, start: _dt.date, end: _dt.date) -> pd.DataFrame:
    """CME's own hours where pandas_market_calendars differs (module docstring)."""
    nyse = _nyse()
    with warnings.catch_warnings():  # the NYSE calendar uses pandas APIs pandas 4 drops
        warnings.simplefilter("ignore", DeprecationWarning)
        cash = nyse.schedule(start_date=start, end_date=end)
        half = nyse.early_closes(cash).index if len(cash) else []
    for day in pd.DatetimeIndex(half).tz_localize(None).normalize():
        if day in sched.index and sched.at[day, "market_close"] == _at(day, _dt.time(13)):
            close = _at(day, HALF_DAY_CLOSE)
            sched.loc[day, "market_close"] = close
            sched.loc[day, ["break_start", "break_end"]] = [
                min(sched.at[day, "break_start"], close), min(sched.at[day, "break_end"], close)
            ]
    for text, (close_time, _source) in SPECIAL_SESSIONS.items():
        day = pd.Timestamp(text)
        if not start <= day.date() <= end:
            continue
        if close_time is None:
            sched = sched.drop(index=day, errors="ignore")
            continue
        close = _at(day, close_time)
        sched.loc[day] = [_at(day - pd.Timedelta(days=1), _dt.time(18)), close, close, close]
    sched = sched.sort_index()
    for col in sched.columns:  # an added row leaves object columns behind
        sched[col] = pd.to_datetime(sched[col], utc=True).dt.tz_convert(NY)
    return sched


@functools.lru_cache(maxsize=64)
def _schedule_cached(start: _dt.date, end: _dt.date) -> pd.DataFrame:
    sched = _calendar().schedule(start_date=start, end_date=end)
    sched = sched.tz_localize(None) if sched.index.tz is not None else sched
    for col in sched.columns:
        sched[col] = pd.to_datetime(sched[col], utc=True).dt.tz_convert(NY)
    sched = _apply_corrections(sched[["market_open", "break_start", "break_end", "market_close"]],
                               start, end)  # fmt: skip
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
    >>> str(s.loc["2024-12-24", "market_close"].time())  # early close, 12:15 CT
    '13:15:00'
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


# ------------------------------------------------------------ backtrader's day numbers

#: ``datetime.date(1970, 1, 1).toordinal()``: backtrader's day 1 is 0001-01-01.
EPOCH_ORDINAL = 719163


def date2num(index: pd.DatetimeIndex) -> np.ndarray:
    """Vectorised ``backtrader.date2num`` of naive wall-clock times, bit for bit."""
    ns = pd.DatetimeIndex(index).as_unit("ns").asi8
    days = ns // (86_400 * 10**9)
    rem = ns - days * 86_400 * 10**9
    hour = rem // 3_600_000_000_000
    minute = (rem // 60_000_000_000) % 60
    second = (rem // 1_000_000_000) % 60
    micro = (rem // 1000) % 1_000_000
    base = (days + EPOCH_ORDINAL).astype("float64")
    # same operation order as backtrader.utils.dateintern.date2num
    frac = hour / 24.0 + minute / 1440.0 + second / 86400.0 + micro / 86400000000.0
    return base + frac


def num2datetime64(times: np.ndarray) -> np.ndarray:
    """backtrader float times as ``datetime64[us]``, exactly as ``bt.num2date(t)`` (no tz).

    The same float steps as ``num2date``: whole days, then hours, minutes and seconds by
    ``divmod(x, 1)`` (floor and remainder, both exact), then microseconds truncated, those
    below 10 dropped and those above 999,990 rounded up to the next second.
    """
    t = np.asarray(times, dtype="float64")
    days = np.floor(t)
    part = t - days  # fraction of the day; then hours, minutes, seconds (in place, same steps)
    part *= 24.0
    h = np.floor(part)
    part -= h
    part *= 60.0
    m = np.floor(part)
    part -= m
    part *= 60.0
    sec = np.floor(part)
    part -= sec
    part *= 1e6
    us = part.astype("int64")  # truncated, as int()
    del part
    us[us < 10] = 0
    us[us > 999_990] = 1_000_000
    whole = days.astype("int64")
    whole -= EPOCH_ORDINAL
    for unit, count in ((h, 24), (m, 60), (sec, 60)):
        whole *= count
        whole += unit.astype("int64")
    whole *= 1_000_000
    whole += us
    return whole.view("datetime64[us]")


def trade_dates64(when: np.ndarray) -> np.ndarray:
    """CME trade dates (``datetime64[D]``) of naive New York ``datetime64`` moments, as
    :func:`m2k_bt.contracts.trade_date`: from 18:00 on, the next day's."""
    day = when.astype("datetime64[D]")
    evening = (when - day) >= np.timedelta64(GLOBEX_REOPEN.hour, "h")
    return day + evening.astype("int64")
