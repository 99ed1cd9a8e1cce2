"""Issue 21, "exact to the last bit": both engines refuse the same bars, never answer from
stale data, book money in integer cents, model a cut-back that meets the strategy's own close,
and write the same files. Each test here failed before the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_bars

from m2k_bt.engine import BacktestConfig, run_backtest
from m2k_bt.errors import ParameterError
from m2k_bt.kernel.simulation import run_backtest_fast, simulate

SMA = BacktestConfig(strategy="sma", sizer="fixed", params={"fast": 5, "slow": 20})


# ------------------------------------------------------------------ 2. one validation
def _duplicate(bars):
    return pd.concat([bars.iloc[:200], bars.iloc[199:200], bars.iloc[200:]])


@pytest.mark.parametrize("spoil", [
    _duplicate,                                     # a duplicate timestamp
    lambda b: b.iloc[::-1],                         # a reversed index
    lambda b: b.drop(columns="volume"),             # no volume column
], ids=["duplicate", "reversed", "no-volume"])
def test_the_kernel_refuses_the_bars_cerebro_refuses(spoil):
    bad = spoil(make_bars(600, seed=3))
    with pytest.raises(ParameterError) as ref:
        run_backtest(bad, SMA)
    with pytest.raises(ParameterError) as got:
        simulate(bad, SMA)
    assert str(got.value) == str(ref.value)
    with pytest.raises(ParameterError):
        run_backtest_fast(bad, SMA)


# ------------------------------------------------------------------ 3. no stale cache
def test_run_backtest_fast_sees_bars_edited_in_place():
    bars = make_bars(1500, seed=8)
    first = run_backtest_fast(bars, SMA)
    assert first.final_value == simulate(bars, SMA).final_value
    # the same frame, its prices moved in place: the cached indicators are no longer valid
    for col in ("open", "high", "low", "close"):
        bars[col] = np.round(bars[col].to_numpy()[::-1].copy(), 1)
    bars["high"] = bars[["open", "high", "low", "close"]].max(axis=1)
    bars["low"] = bars[["open", "high", "low", "close"]].min(axis=1)
    again = run_backtest_fast(bars, SMA)
    ref = run_backtest(bars, SMA)
    assert len(again.trades) == len(ref.trades)
    assert abs(again.final_value - ref.final_value) < 0.005
    assert again.final_value != first.final_value
