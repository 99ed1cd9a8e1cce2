"""The compiled kernel (m2k_bt.kernel) against cerebro, and the exact comparisons both share."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from m2k_bt.engine import BacktestConfig, run_backtest
from m2k_bt.indicators import band_side, rolling_bands, sma_above, tick_counts

NY = "America/New_York"


def flat_bars(closes, start="2024-01-02 09:30", freq="5min") -> pd.DataFrame:
    """Bars whose open, high, low and close are all the given closes."""
    closes = np.asarray(closes, dtype="float64")
    idx = pd.date_range(start, periods=len(closes), freq=freq, tz=NY, name="datetime")
    return pd.DataFrame({"open": closes, "high": closes, "low": closes, "close": closes,
                         "volume": 100.0}, index=idx)


# ------------------------------------------------------------------ exact comparisons
def test_fsum_average_of_a_flat_stretch_is_not_a_tie_but_ticks_are():
    # 1900.4 repeated: fsum(3 x)/3 > fsum(7 x)/7 in floats, but both averages are 1900.4
    x = 1900.4
    assert math.fsum([x] * 3) / 3 > math.fsum([x] * 7) / 7  # the float noise the rule removes
    t = int(tick_counts(np.array([x]), 0.1)[0])
    assert t == 19004
    assert not sma_above(3 * t, 3, 7 * t, 7)  # equal averages are not "above"
    assert sma_above(3 * t + 1, 3, 7 * t, 7)  # one tick more in the fast window is


def test_sma_tie_goes_short_in_cerebro():
    # a flat stretch at 1900.4: fast SMA(3) == slow SMA(7) exactly, so the signal is -1
    bars = flat_bars([1900.4] * 12)
    res = run_backtest(bars, BacktestConfig(strategy="sma", params={"fast": 3, "slow": 7},
                                            sizer="fixed"))
    assert [t["direction"] for t in res.trades] == ["short"]
    res = run_backtest(bars, BacktestConfig(strategy="sma", sizer="fixed",
                                            params={"fast": 3, "slow": 7, "long_only": True}))
    assert res.trades == []  # long-only: a tie is flat


def test_close_exactly_on_a_band_is_inside():
    # window 1999.4 x4, 2000.3 (ticks 19994 x4, 20003): mean 19995.8, population sd 3.6,
    # upper band 19995.8 + 2 x 3.6 = 20003.0 = the close: on the band, not above it
    w = np.array([1999.4] * 4 + [2000.3])
    mid, top, bot = rolling_bands(w[None, :], 2.0, 0)
    assert w[-1] > top[0]  # float noise puts it 3e-13 above the band
    t = tick_counts(w, 0.1)
    s, q = int(t.sum()), int((t * t).sum())
    assert band_side(int(t[-1]), s, q, 5, 2.0, 0) == 0
    assert band_side(int(t[-1]) + 1, s, q, 5, 2.0, 0) == 1  # a tick higher is above
    bars = flat_bars(list(w) + [2000.3] * 4)
    res = run_backtest(bars, BacktestConfig(
        strategy="bollinger", sizer="fixed",
        params={"period": 5, "ddof": 0, "exit": "signal"}))
    assert res.trades == []  # before the rule: a short at 2000.3
