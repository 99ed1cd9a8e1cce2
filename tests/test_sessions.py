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
