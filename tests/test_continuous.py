"""build_continuous: roll dates, back-adjustment arithmetic, rolloverdata helpers."""

from __future__ import annotations

import datetime as dt

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from m2k_bt.errors import ConfigError, DataFeedError
from m2k_bt.feeds.bars import BarsFeed
from m2k_bt.feeds.continuous import (
    always_checkcondition,
    build_continuous,
    calendar_checkdate,
    volume_checkcondition,
)
from m2k_bt.feeds.loaders import validate_bars
from m2k_bt.feeds.synth import session_index

NY = "America/New_York"


def flat(idx, price, volume=100.0):
    n = len(idx)
    return pd.DataFrame({"open": np.full(n, price), "high": np.full(n, price + 1.0),
                         "low": np.full(n, price - 1.0), "close": np.full(n, price),
                         "volume": np.full(n, volume)}, index=idx)  # fmt: skip


@pytest.fixture
def two_contracts():
    # hourly bars, trade dates 2025-03-03 .. 2025-03-14; M2KH5 rolls on 2025-03-13
    # (expiry Fri 03-21 minus 8 days), i.e. from 18:00 on 03-12.
    idx = session_index("2025-03-03", "2025-03-14", 60)
    return {"M2KH5": flat(idx, 2000.0, 500.0), "M2KM5": flat(idx, 2010.5, 50.0)}


def test_calendar_roll_and_add_adjustment(two_contracts):
    df = build_continuous(two_contracts, adjust="add")
    first_m5 = df.index[df["contract"] == "M2KM5"][0]
    assert str(first_m5) == "2025-03-12 18:00:00-04:00"
    assert df["roll"].sum() == 1 and df.loc[first_m5, "roll"]
    (r,) = df.attrs["rolls"]
    assert (r["date"], r["from"], r["to"]) == (dt.date(2025, 3, 13), "M2KH5", "M2KM5")
    # gap = new close - old close on the old contract's last bar = 2010.5 - 2000.0 = 10.5
    assert r["gap"] == pytest.approx(10.5)
    old = df[df["contract"] == "M2KH5"]
    # add: 2000.0 + 10.5 = 2010.5 close, high 2001.0 + 10.5 = 2011.5
    assert old["close"].unique().tolist() == [2010.5]
    assert old["high"].unique().tolist() == [2011.5]
    assert df[df["contract"] == "M2KM5"]["close"].unique().tolist() == [2010.5]
    validate_bars(df)  # strict: on tick, in session


def test_ratio_and_none(two_contracts):
    df = build_continuous(two_contracts, adjust="ratio")
    r = df.attrs["rolls"][0]
    # ratio = 2010.5 / 2000.0 = 1.00525; old low 1999.0 x 1.00525 = 2009.49 -> 2009.5 on tick
    assert r["ratio"] == pytest.approx(1.00525)
    assert df[df["contract"] == "M2KH5"]["low"].iloc[0] == pytest.approx(2009.5)
    raw = build_continuous(two_contracts, adjust="none")
    assert raw[raw["contract"] == "M2KH5"]["close"].iloc[0] == 2000.0


def test_volume_roll_waits_for_the_day_after(two_contracts):
    frames = dict(two_contracts)
    m5 = frames["M2KM5"].copy()
    td = pd.DatetimeIndex(m5.index.tz_localize(None))
    # M5 out-trades H5 on trade date 2025-03-06 (from 18:00 on 03-05) -> roll at 03-07's session
    busy = td >= pd.Timestamp("2025-03-05 18:00")
    m5.loc[busy, "volume"] = 900.0
    frames["M2KM5"] = m5
    df = build_continuous(frames, roll="volume")
    assert df.attrs["rolls"][0]["date"] == dt.date(2025, 3, 7)
    assert str(df.index[df["roll"]][0]) == "2025-03-06 18:00:00-05:00"


def test_volume_roll_falls_back_to_calendar(two_contracts):
    df = build_continuous(two_contracts, roll="volume")  # M5 never out-trades H5
    assert df.attrs["rolls"][0]["date"] == dt.date(2025, 3, 13)


def test_bad_arguments(two_contracts):
    with pytest.raises(ConfigError, match=r"adjust='ad' .*did you mean 'add'"):
        build_continuous(two_contracts, adjust="ad")
    with pytest.raises(ConfigError, match="roll="):
        build_continuous(two_contracts, roll="oi")
    with pytest.raises(DataFeedError, match="frames_by_symbol key 'ESH5'"):
        build_continuous({"ESH5": two_contracts["M2KH5"]})
    with pytest.raises(DataFeedError, match="empty"):
        build_continuous({})


def test_rolloverdata_helpers(two_contracts):
    class Named:
        _name = "M2KH5"

    check = calendar_checkdate()
    assert not check(dt.datetime(2025, 3, 12, 16, 59), Named())
    assert check(dt.datetime(2025, 3, 12, 18, 0), Named())
    assert always_checkcondition(None, None)

    closes = []

    class Rec(bt.Strategy):
        def next(self):
            closes.append((self.data.datetime.datetime(0), self.data.close[0]))

    cerebro = bt.Cerebro(stdstats=False)
    feeds = [BarsFeed(dataname=df, name=sym) for sym, df in two_contracts.items()]
    cerebro.rolloverdata(*feeds, name="M2K", checkdate=check,
                         checkcondition=always_checkcondition)  # fmt: skip
    cerebro.addstrategy(Rec)
    cerebro.run()
    before = [c for t, c in closes if t < dt.datetime(2025, 3, 12, 18, 0)]
    after = [c for t, c in closes if t >= dt.datetime(2025, 3, 12, 18, 0)]
    assert set(before) == {2000.0} and set(after) == {2010.5}


def test_volume_checkcondition():
    class D:
        def __init__(self, v):
            self.volume = [v]

    assert volume_checkcondition(D(10.0), D(11.0)) and not volume_checkcondition(D(10.0), D(9.0))
