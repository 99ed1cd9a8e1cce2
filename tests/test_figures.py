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


# ---------------------------------------------------------------- issue 23: one call, many runs
def _figures_alone(bars, config) -> dict:
    """A run's figures the long way: its own loop call (``_run``, what ``simulate`` runs),
    then :func:`trial_figures` on the loop's arrays."""
    import m2k_bt.kernel.simulation as kernel
    from m2k_bt.kernel.figures import trial_figures

    run = kernel._run(bars, config)
    start = float(run.plan.config.cash)
    return trial_figures(run.data, start, run.out[0], run.out[3])


@settings(max_examples=12, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(block=st.lists(configs(), min_size=2, max_size=5), seed=st.integers(0, 10_000))
def test_a_block_in_one_compiled_call_equals_each_run_alone(block, seed):
    """run_figures_many runs a block's loops in one compiled call (the distinct input arrays
    stacked once): every run's figures equal those of its own loop call, to the last bit,
    whatever the mix of strategies, stops, sizers and margin calls."""
    from m2k_bt.kernel import run_figures_many

    bars = stressed_bars(700, seed=seed, vol=0.003, gaps=1, rolls=1)
    block = [c.replace(analyzers=False) for c in block]
    got = run_figures_many(bars, [*block, block[0]])  # a repeated run shares its arrays
    assert len(got) == len(block) + 1
    for config, figs in zip([*block, block[0]], got):
        want = _figures_alone(bars, config)
        assert figs["elapsed"] >= 0
        assert {k: figs[k] for k in want} == want
        assert figs["start_value"] == float(config.cash)


def test_a_block_says_none_for_what_the_kernel_does_not_model():
    import backtrader as bt

    from m2k_bt.kernel import run_figures_many

    class PerBar(bt.Strategy):  # a per-bar strategy of one's own: cerebro only
        pass

    bars = make_bars(600, seed=5)
    sma = BacktestConfig(strategy="sma", params={"fast": 5, "slow": 30})
    got = run_figures_many(bars, [sma, BacktestConfig(strategy=PerBar), sma])
    assert got[1] is None
    assert got[0]["final_value"] == got[2]["final_value"] == _figures_alone(
        bars, sma)["final_value"]


def test_a_batched_grid_is_the_study_of_one_trial_at_a_time():
    """A kernel grid's trials are claimed and run in blocks (KERNEL_BATCH by default, one
    compiled call each): every point's values and figures are those of trial-by-trial
    evaluation (batch 1), infeasible points (fast >= slow, too few trades) included."""
    from m2k_bt.optimize.study import optimize

    bars = make_bars(2500, seed=12)
    config = BacktestConfig(strategy="sma", sizer="kelly")
    # 8 x 4 = 32 points; fast >= slow on 4 of them: (30, 35, 40) x 30 and 40 x 40
    space = ["fast=5:40:5", "slow=30:60:10"]
    runs = {b: optimize(bars, config, space, sampler="grid", workers=1, quiet=True,
                        verify=False, batch=b, min_trades=3, overfitting=False)
            for b in (1, 7, None)}
    assert runs[None].settings["batch"] == "auto"
    one = runs[1].trials.sort_values("number").reset_index(drop=True)
    assert len(one) == 32 and (one["state"] == "PRUNED").sum() >= 4
    for b in (7, None):
        got = runs[b].trials.sort_values("number").reset_index(drop=True)
        cols = [c for c in one.columns if c != "elapsed_s"]
        assert cols and got[cols].equals(one[cols]), b
        assert runs[b].best_params == runs[1].best_params
