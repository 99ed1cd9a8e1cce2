"""The kernel's bar times (issue 23: simulate end to end on 1M bars): a bar on a whole minute
reuses the answer of an earlier bar on that minute of the day, and the trade dates are
counted without a division per bar; both give what the per-bar formulas give, exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from m2k_bt.kernel.data import _REOPEN_US, _WINDOW, _bar_time, _bar_times, _date_runs
from m2k_bt.sessions import date2num, num2datetime64, trade_dates64

_NS_MIN = 60_000_000_000
_DAY_US = 86_400_000_000


def _times_frame(draw_minutes, jitter):
    base = pd.Timestamp("2023-12-29").value
    return np.array([base + m * _NS_MIN + j for m, j in zip(draw_minutes, jitter)],
                    dtype=np.int64)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(minutes=st.lists(st.integers(0, 400 * 1440), min_size=1, max_size=300),
       jitter=st.lists(st.sampled_from([0, 0, 0, 1, 999, 5_000, 59_999_999_999]),
                       min_size=300, max_size=300))
def test_memoised_bar_times_equal_the_per_bar_formula(minutes, jitter):
    wall = np.sort(_times_frame(minutes, jitter))
    wall = np.concatenate([wall, wall[::-1]])  # each minute again, in any order
    got, inwin = _bar_times(wall, *_WINDOW)
    for i, ns in enumerate(wall.tolist()):
        t, inside = _bar_time(np.int64(ns), *_WINDOW)
        assert got[i] == t and inwin[i] == inside
    # and that is backtrader's own float round trip
    want = num2datetime64(date2num(pd.DatetimeIndex(wall.view("datetime64[ns]"))))
    assert np.array_equal(got, want.view("int64"))


def _date_runs_reference(times_us):
    dates = trade_dates64(times_us.view("datetime64[us]")).astype("int64")
    if len(dates) and np.any(np.diff(dates) < 0):
        return None
    _, counts = np.unique(dates, return_counts=True)
    return counts


@settings(max_examples=60, derandomize=True, deadline=None)
@given(steps=st.lists(st.sampled_from([60, 300, 3600, 23 * 3600, 86_400, 7 * 86_400]),
                      min_size=0, max_size=200),
       backwards=st.booleans())
def test_trade_date_runs_equal_counting_each_bars_date(steps, backwards):
    t0 = pd.Timestamp("2024-03-08 16:58").value // 1000  # around a reopen and a weekend
    times = t0 + np.cumsum([0, *steps], dtype=np.int64) * 1_000_000
    if backwards and len(times) > 2:
        times[len(times) // 2] -= 3 * _DAY_US  # a bar whose date goes back: not in order
    got = _date_runs(times, _REOPEN_US)
    want = _date_runs_reference(times)
    if want is None:
        assert got is None
    else:
        assert got is not None and got.tolist() == want.tolist() and got.sum() == len(times)
