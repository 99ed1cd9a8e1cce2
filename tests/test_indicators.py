"""Indicators against pandas references, in both of backtrader's engine modes."""

from __future__ import annotations

import backtrader as bt
import numpy as np
import pytest
from conftest import make_bars, pandas_feed

from m2k_bt.indicators.bands import (
    AdaptiveBollingerBands,
    BollingerBandsDdof,
    FibonacciLevels,
    fibonacci_levels,
)

MODES = [(True, True), (False, False), (False, True)]


def run_indicators(df, runonce, preload):
    class Probe(bt.Strategy):
        def __init__(self):
            self.bb1 = BollingerBandsDdof(self.data.close)
            self.bb0 = BollingerBandsDdof(self.data.close, ddof=0)
            self.bt_bb = bt.ind.BollingerBands(self.data.close)
            self.ab = AdaptiveBollingerBands(self.data.close, vol_threshold=0.0015)
            self.fib = FibonacciLevels(self.data, lookback=30)

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(df))
    cerebro.addstrategy(Probe)
    return cerebro.run(runonce=runonce, preload=preload)[0]


def values(line, n):
    return np.array(line.array[:n]) if len(line.array) >= n else np.array(line.get(size=n))


@pytest.mark.parametrize("runonce,preload", MODES)
def test_bands_match_pandas_and_backtrader(runonce, preload):
    df = make_bars(1500, seed=8)
    s = run_indicators(df, runonce, preload)
    n, close = len(df), df["close"]
    mid = close.rolling(20).mean()
    for ddof, ind in ((1, s.bb1), (0, s.bb0)):
        std = close.rolling(20).std(ddof=ddof)
        np.testing.assert_allclose(values(ind.top, n)[19:], (mid + 2 * std)[19:], rtol=1e-12)
        np.testing.assert_allclose(values(ind.bot, n)[19:], (mid - 2 * std)[19:], rtol=1e-12)
    # ddof=0 is backtrader's own population bands
    np.testing.assert_allclose(values(s.bb0.top, n)[19:], values(s.bt_bb.top, n)[19:],
                               rtol=1e-10)


@pytest.mark.parametrize("runonce,preload", MODES)
def test_adaptive_bands_match_pandas_rule(runonce, preload):
    df = make_bars(1500, seed=8)
    s = run_indicators(df, runonce, preload)
    n, close = len(df), df["close"]
    vol = close.pct_change().rolling(100).std()
    window = np.where(vol > 0.0015, 20, 14)
    upper = {w: close.rolling(w).mean() + 2 * close.rolling(w).std() for w in (20, 14)}
    expected = np.where(window == 20, upper[20], upper[14])
    np.testing.assert_allclose(values(s.ab.vol, n)[100:], vol[100:], rtol=1e-9)
    np.testing.assert_array_equal(values(s.ab.window, n)[100:], window[100:])
    np.testing.assert_allclose(values(s.ab.top, n)[100:], expected[100:], rtol=1e-12)
    assert 0 < (window[100:] == 20).mean() < 1  # both windows occur


def test_flat_window_has_zero_width():
    df = make_bars(160, seed=1)
    df.loc[df.index[110:140], ["open", "high", "low", "close"]] = 2000.1
    s = run_indicators(df.iloc[:140], True, True)
    assert s.bb1.top.array[139] == s.bb1.bot.array[139] == 2000.1


@pytest.mark.parametrize("runonce,preload", MODES)
def test_fibonacci_levels(runonce, preload):
    df = make_bars(300, seed=3)
    s = run_indicators(df, runonce, preload)
    hi = df["high"].rolling(30).max().to_numpy()
    lo = df["low"].rolling(30).min().to_numpy()
    n = len(df)
    # 61.8 % retracement = high - 0.618 x (high - low)
    np.testing.assert_allclose(values(s.fib.level_618, n)[29:], (hi - 0.618 * (hi - lo))[29:])
    np.testing.assert_allclose(values(s.fib.swing_low, n)[29:], lo[29:])


def test_fibonacci_known_answer():
    # swing 2000 -> 2100: 38.2 % = 2100 - 38.2 = 2061.8; 78.6 % = 2100 - 78.6 = 2021.4
    levels = fibonacci_levels(2100.0, 2000.0)
    assert levels[0.382] == pytest.approx(2061.8)
    assert levels[0.786] == pytest.approx(2021.4)
