"""Globex calendar edge cases: Sunday open, maintenance break, holidays, the old halt, RTH."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from m2k_bt.sessions import (
    globex_schedule,
    in_globex_session,
    is_globex_open,
    is_rth,
    is_trading_day,
    rth_mask,
    trade_dates,
)

NY = "America/New_York"


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2025-03-09 17:59", False),  # Sunday before the open
        ("2025-03-09 18:00", True),  # Sunday open (first day of DST)
        ("2025-03-10 16:59", True),
        ("2025-03-10 17:00", True),  # the session's last instant (bar-end stamp)
        ("2025-03-10 17:01", False),  # maintenance break
        ("2025-03-10 17:59", False),
        ("2025-03-10 18:00", True),
        ("2025-03-14 17:30", False),  # Friday after the close
        ("2025-03-15 12:00", False),  # Saturday
        ("2025-12-25 12:00", False),  # Christmas, full closure
        ("2025-12-24 13:30", False),  # Christmas Eve, after the 13:00 early close
        ("2025-12-24 12:30", True),
        ("2021-06-25 16:20", False),  # old 16:15-16:30 halt
        ("2021-06-25 16:15", True),  # halt edges: bar-end / bar-start stamps
        ("2021-06-25 16:30", True),
        ("2021-06-28 16:20", True),  # halt abolished from trade date 2021-06-28
    ],
)
def test_is_globex_open(stamp, expected):
    assert is_globex_open(pd.Timestamp(stamp)) is expected


def test_vectorised_matches_scalar_and_tz_aware_input():
    idx = pd.date_range("2021-06-24", "2021-06-29", freq="7min", tz=NY)
    vec = in_globex_session(idx)
    sample = idx[::97]
    assert in_globex_session(sample).tolist() == [is_globex_open(t) for t in sample]
    # UTC input means the same instants
    assert (in_globex_session(idx.tz_convert("UTC")) == vec).all()


def test_nat_is_outside():
    idx = pd.DatetimeIndex([pd.NaT, "2025-03-10 10:00"])
    assert in_globex_session(idx).tolist() == [False, True]


def test_trade_dates_cross_midnight_and_weekend():
    idx = pd.DatetimeIndex(["2025-03-07 16:59", "2025-03-09 18:00", "2025-03-10 00:30"], tz=NY)
    assert [d.strftime("%Y-%m-%d") for d in trade_dates(idx)] == [
        "2025-03-07",
        "2025-03-10",  # Sunday evening belongs to Monday
        "2025-03-10",
    ]


def test_schedule_holidays_and_early_close():
    s = globex_schedule("2024-11-25", "2024-11-29")
    # Thanksgiving (11-28) and the day after both close early at 13:00 New York
    assert str(s.loc["2024-11-28", "market_close"].time()) == "13:00:00"
    assert str(s.loc["2024-11-25", "market_close"].time()) == "17:00:00"
    assert str(s.loc["2024-11-25", "market_open"]) == "2024-11-24 18:00:00-05:00"
    assert not is_trading_day(pd.DatetimeIndex(["2025-01-01"]))[0]  # New Year
    assert is_trading_day(pd.DatetimeIndex(["2025-01-20"]))[0]  # MLK: early close, not closed


def test_rth():
    assert is_rth("2025-03-10 09:30") and is_rth("2025-03-10 15:59")
    assert not is_rth("2025-03-10 16:00") and not is_rth("2025-03-10 09:29")
    assert not is_rth("2025-03-08 10:00")  # Saturday
    assert not is_rth("2024-11-29 13:30")  # after the early close
    idx = pd.date_range("2025-03-10 00:00", periods=24 * 60, freq="1min", tz=NY)
    # 09:30 .. 15:59 = 6.5 h x 60 = 390 minutes
    assert rth_mask(idx).sum() == 390


def test_full_week_of_minutes_count():
    # Sunday 18:00 .. Friday 17:00, 5 sessions of 23 h = 1380 one-minute bar starts each,
    # plus the closing instant of each session (bar-end stamps are accepted): 5 x 1381.
    idx = pd.date_range("2025-03-09", "2025-03-15", freq="1min", tz=NY, inclusive="left")
    assert int(np.sum(in_globex_session(idx))) == 5 * 1381


# ------------------------------------------------------------------ issue 11, item 20: calendar
# CME's own notices for 2017-2026 against the calendar. Closes are New York time; 12:00 CT =
# 13:00 New York (holiday halts), 12:15 CT = 13:15 (the cash market's half days), 8:30 CT =
# 09:30 (national days of mourning), 8:15 CT = 09:15 (Good Friday with a jobs report).
KNOWN_DAYS = [
    # (trade date, close or None for closed, source)
    ("2018-12-05", "09:30", "CME 2018-12-02: mourning G. H. W. Bush, equities to 8:30 CT"),
    ("2025-01-09", "09:30", "CME 2024-12-30: mourning Carter, 'open until 8:30 a.m. CT'"),
    ("2017-07-03", "13:15", "daytradetowin: July 3 2017 equities halt 1:15 p.m. ET"),
    ("2024-07-03", "13:15", "DTN 2024: CME equities early close at 12:15 p.m. CT"),
    ("2018-12-24", "13:15", "Christmas Eve: NYSE half day, equities 12:15 CT"),
    ("2024-11-29", "13:15", "day after Thanksgiving: NYSE half day, equities 12:15 CT"),
    ("2024-12-24", "13:15", "Christmas Eve"),
    ("2025-11-28", "13:15", "day after Thanksgiving"),
    ("2025-01-20", "13:00", "forexlive 2025-01-19: MLK, equities 12:00 CT halt"),
    ("2024-01-15", "13:00", "forexlive 2024-01-12: MLK, 12:00 CT halt"),
    ("2024-06-19", "13:00", "forexlive 2024-06-17: Juneteenth, 12:00 CT halt"),
    ("2024-07-04", "13:00", "DTN 2024: Independence Day, noon halt"),
    ("2024-11-28", "13:00", "Thanksgiving, 12:00 CT halt"),
    ("2020-07-03", "13:00", "Independence Day observed (Friday)"),
    ("2021-04-02", "09:15", "MarketWatch 2021-04-02: futures open until 9:15 a.m. ET (jobs)"),
    ("2023-04-07", "09:15", "MarketWatch 2023-04-07: futures closed at 9:15 a.m. ET (jobs)"),
    ("2018-03-30", None, "Good Friday 2018: CME equity closed"),
    ("2025-04-18", None, "Good Friday 2025: CME Globex closed (Barron's)"),
    ("2024-12-25", None, "Christmas"),
    ("2025-01-01", None, "New Year's Day"),
    ("2021-12-24", None, "Christmas observed (calendar; not independently confirmed)"),
    # documented doubts, kept as the calendar has them (m2k_bt/sessions.py): CME's notice not seen
    ("2024-03-29", "09:15", "KEPT: secondary sources say closed; bundled sample has bars"),
    ("2026-04-03", "09:15", "KEPT: jobs report day, pandas_market_calendars PR #456"),
]


@pytest.mark.parametrize(("day", "close", "source"), KNOWN_DAYS)
def test_known_special_days_match_cme_notices(day, close, source):
    sched = globex_schedule(day, day)
    if close is None:
        assert sched.empty, source
        assert not is_trading_day(pd.DatetimeIndex([day]))[0]
        return
    row = sched.loc[day]
    assert row["market_close"].strftime("%H:%M") == close, source
    # every session opens at 18:00 New York the evening before
    assert row["market_open"] == pd.Timestamp(f"{day} 18:00", tz=NY) - pd.Timedelta(days=1)
    assert is_trading_day(pd.DatetimeIndex([day]))[0]


def test_national_day_of_mourning_is_a_short_session_not_a_closure():
    # 2025-01-09: Globex open from 01-08 18:00 to 01-09 09:30 New York, no RTH (NYSE closed)
    idx = pd.DatetimeIndex(["2025-01-08 18:00", "2025-01-09 09:00", "2025-01-09 09:30",
                            "2025-01-09 10:00", "2025-01-09 18:00"], tz=NY)  # fmt: skip
    assert in_globex_session(idx).tolist() == [True, True, True, False, True]
    assert not rth_mask(idx).any()
    assert [str(d.date()) for d in trade_dates(idx)] == ["2025-01-09"] * 4 + ["2025-01-10"]


def test_daily_bar_on_a_day_of_mourning_loads(tmp_path):
    # rty-daily-yahoo.csv style: a daily bar for 2025-01-09 was dropped as "not a CME Globex
    # trade date"
    from m2k_bt.feeds import load_bars

    path = tmp_path / "rty.csv"
    path.write_text("Date,Close,High,Low,Open,Volume\n"
                    "2025-01-08,2246.0,2256.0,2240.8,2250.0,90000\n"
                    "2025-01-09,2254.5,2256.0,2240.8,2246.2,13615\n"
                    "2025-01-10,2200.0,2256.0,2190.0,2254.0,95000\n")  # fmt: skip
    df = load_bars(path)
    assert [str(d.date()) for d in df.index] == ["2025-01-08", "2025-01-09", "2025-01-10"]
    assert df.attrs["report"] == []
