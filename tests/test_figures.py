"""A study trial's figures computed from the kernel loop's arrays (m2k_bt.kernel.figures, issue
#23) equal the analyzers' values on the full result, and a study made from them is the study
made from full results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_bars
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kernel import configs, stressed_bars

from m2k_bt.analyzers import metrics_from
from m2k_bt.engine import BacktestConfig
from m2k_bt.kernel import run_backtest_fast, run_figures_fast, simulate
from m2k_bt.kernel.figures import (
    M_DOWNSIDE,
    M_END,
    M_MAX_DD,
    M_MAX_DD_PCT,
    M_MAX_RUN,
    M_MEAN,
    M_NONPOS,
    M_SD,
    equity_moments,
)
from m2k_bt.optimize.overfitting import daily_returns


def test_equity_moments_known_answer():
    # start 100, values 110, 99, 108.9: the peak 110 then a fall of 11 ($) = 10 % of 110,
    # two bars below the peak; returns +0.1, -0.1, +0.1
    m = equity_moments(100.0, np.array([110.0, 99.0, 108.9]), 0.0, 1)
    assert m[M_END] == 108.9
    assert m[M_MAX_DD] == 11.0
    assert m[M_MAX_DD_PCT] == pytest.approx(11.0 * 100.0 / 110.0, rel=1e-15)
    assert m[M_MAX_RUN] == 2 and m[M_NONPOS] == 0.0
    mean = (0.1 - 0.1 + 0.1) / 3  # 0.0333...
    ss = 2 * (0.1 - mean) ** 2 + (-0.1 - mean) ** 2  # squares about the mean
    assert m[M_MEAN] == pytest.approx(mean, rel=1e-12)
    assert m[M_SD] == pytest.approx(math.sqrt(ss / 2), rel=1e-12)  # ddof 1: n - 1 = 2
    assert m[M_DOWNSIDE] == pytest.approx(math.sqrt(0.1 ** 2 / 3), rel=1e-12)  # one loss of 3
    # a value at or below zero: returns are undefined, the drawdown still counts
    m = equity_moments(100.0, np.array([50.0, -10.0, 20.0]), 0.0, 1)
    assert m[M_NONPOS] == 1.0 and m[M_MAX_DD] == 110.0 and m[M_SD] == 0.0


def _same_number(a, b, key: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, (key, a, b)
    else:
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12), (key, a, b)


def assert_figures_equal_result(bars, config) -> None:
    full = simulate(bars, config.replace(analyzers=False))
    figs = run_figures_fast(bars, config.replace(analyzers=False))
    want = metrics_from(full.analysis)
    assert set(figs["metrics"]) == set(want)
    for key, value in want.items():
        _same_number(figs["metrics"][key], value, key)
    assert figs["final_value"] == full.final_value
    assert figs["start_value"] == full.start_value
    assert figs["first_dt"] == str(full.first_dt) and figs["last_dt"] == str(full.last_dt)
    rets = daily_returns(full.equity["value"], full.start_value)
    assert list(figs["returns"]) == rets.index.strftime("%Y-%m-%d").tolist()
    assert list(figs["returns"].values()) == rets.tolist()


@settings(max_examples=30, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(config=configs(), seed=st.integers(0, 10_000),
       vol=st.sampled_from([0.001, 0.002, 0.004]))
def test_figures_equal_the_analyzers_on_random_runs(config, seed, vol):
    # cash down to 1,500 and slippage make margin calls and equity at or below zero
    assert_figures_equal_result(stressed_bars(900, seed=seed, vol=vol, gaps=2, rolls=2), config)


def test_figures_on_a_run_without_trades_and_on_daily_bars():
    bars = make_bars(300, seed=3)
    assert_figures_equal_result(bars, BacktestConfig(strategy="sma", params={"fast": 100,
                                                                             "slow": 299}))
    daily = make_bars(400, seed=4, freq="1D")
    assert_figures_equal_result(daily, BacktestConfig(strategy="bollinger"))


def test_a_study_from_figures_is_the_study_from_full_results():
    from m2k_bt.optimize.study import optimize

    bars = make_bars(2500, seed=12)
    config = BacktestConfig(strategy="sma", sizer="kelly")
    space = ["fast=5:20:5", "slow=30:60:10"]
    fast = optimize(bars, config, space, sampler="grid", workers=1, quiet=True,
                    verify=False)

    def full_results(b, c, progress=None):  # not the kernel's own trial function: no figures
        return run_backtest_fast(b, c, progress)

    slow = optimize(bars, config, space, sampler="grid", workers=1, quiet=True,
                    verify=False, run_backtest=full_results)
    a = fast.trials.sort_values("number").reset_index(drop=True)
    b = slow.trials.sort_values("number").reset_index(drop=True)
    assert len(a) == 16 and a["state"].tolist() == b["state"].tolist()
    for col in ("value", "net_profit", "sharpe", "sqn", "profit_factor", "win_rate", "trades",
                "max_drawdown_pct"):
        assert a[col].tolist() == pytest.approx(b[col].tolist(), rel=1e-12, nan_ok=True), col
    assert fast.best_params == slow.best_params
    assert fast.dsr is not None and fast.pbo is not None
    for key in ("sr", "dsr", "psr", "n_trials"):
        assert fast.dsr[key] == pytest.approx(slow.dsr[key], rel=1e-12), key
    assert fast.pbo["pbo"] == pytest.approx(slow.pbo["pbo"], rel=1e-12)
