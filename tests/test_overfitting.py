"""Deflated Sharpe Ratio and PBO against the papers' numbers and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kurtosis, norm, skew

from m2k_bt.errors import ConfigError
from m2k_bt.optimize.overfitting import (
    EULER_GAMMA,
    daily_returns,
    deflated_sharpe_from_returns,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)

# ---------------------------------------------------------------- Deflated Sharpe Ratio


def test_dsr_paper_worked_example():
    # Bailey & Lopez de Prado (2014), numerical example: N = 100 trials, T = 1250 daily returns
    # (5 years x 250 days), best annualised SR = 2.5, annualised V[SR_n] = 0.5, skew -3, kurt 10.
    # Per day: SR = 2.5 / sqrt(250) = 0.158114; V = 0.5 / 250 = 0.002.
    # SR* = sqrt(0.002) * ((1 - 0.5772) * Phi^-1(0.99) + 0.5772 * Phi^-1(1 - 1/(100 e)))
    #     = 0.044721 * (0.4228 * 2.326348 + 0.5772 * 2.679345) = 0.113172
    # z = (0.158114 - 0.113172) * sqrt(1249) / sqrt(1 + 3 * 0.158114 + 9/4 * 0.158114^2)
    #   = 0.044942 * 35.341 / 1.23717 = 1.28382 -> DSR = Phi(1.28382) = 0.9004 (paper: 0.9004)
    sr = 2.5 / math.sqrt(250)
    assert expected_max_sharpe(100, 0.5 / 250) == pytest.approx(0.113172, abs=1e-6)
    dsr = deflated_sharpe_ratio(sr, 1250, 100, 0.5 / 250, skew=-3, kurtosis=10)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_formula_written_out():
    # N = 10, V = 1: (1 - g) * Phi^-1(0.9) + g * Phi^-1(1 - 1/(10 e))
    n, g = 10, EULER_GAMMA
    direct = (1 - g) * norm.ppf(1 - 1 / n) + g * norm.ppf(1 - 1 / (n * math.e))
    assert expected_max_sharpe(10, 1.0) == pytest.approx(direct, rel=1e-12)
    # scales with the standard deviation of the trials' Sharpe ratios
    assert expected_max_sharpe(10, 0.04) == pytest.approx(0.2 * direct, rel=1e-12)


def test_expected_max_sharpe_close_to_simulated_maximum():
    # Independent check: the mean maximum of N = 100 standard normals, simulated, is ~2.508;
    # the paper's closed form is an approximation within about 1%.
    rng = np.random.default_rng(7)
    simulated = rng.standard_normal((20_000, 100)).max(axis=1).mean()
    assert expected_max_sharpe(100, 1.0) == pytest.approx(simulated, rel=0.02)


def test_one_trial_reduces_to_psr_against_zero():
    # N = 1: no selection bias, SR* = 0; DSR = PSR(0) = Phi(SR sqrt(T-1) / sqrt(1 - g3 SR + ...))
    sr, t, g3, g4 = 0.08, 500, -0.5, 6.0
    direct = norm.cdf(sr * math.sqrt(t - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))
    assert deflated_sharpe_ratio(sr, t, 1, 0.3, g3, g4) == pytest.approx(direct, rel=1e-12)
    assert probabilistic_sharpe_ratio(sr, 0.0, t, g3, g4) == pytest.approx(direct, rel=1e-12)


def test_psr_normal_returns_by_hand():
    # Normal returns (skew 0, kurt 3): z = 0.1 * sqrt(100) / sqrt(1 + 0.5 * 0.01) = 0.997509
    assert probabilistic_sharpe_ratio(0.1, 0.0, 101) == pytest.approx(norm.cdf(0.997509), abs=1e-6)
    # SR equal to the benchmark: exactly one half
    assert probabilistic_sharpe_ratio(0.05, 0.05, 300, -1.0, 8.0) == pytest.approx(0.5)


def test_dsr_from_returns_matches_direct_scipy_computation():
    rng = np.random.default_rng(3)
    returns = pd.DataFrame(
        rng.normal(0.0005, 0.01, (400, 12)), columns=[f"t{i}" for i in range(12)]
    )
    returns["t5"] += 0.002  # one trial with an edge
    got = deflated_sharpe_from_returns(returns)

    srs = returns.mean() / returns.std(ddof=1)
    best = srs.idxmax()
    r = returns[best].to_numpy()
    g3, g4 = skew(r), kurtosis(r, fisher=False)
    v = srs.var(ddof=1)
    g = EULER_GAMMA
    sr_star = math.sqrt(v) * ((1 - g) * norm.ppf(1 - 1 / 12) + g * norm.ppf(1 - 1 / (12 * math.e)))
    z = (
        (srs[best] - sr_star)
        * math.sqrt(399)
        / math.sqrt(1 - g3 * srs[best] + (g4 - 1) / 4 * srs[best] ** 2)
    )
    assert got.best == "t5" == best
    assert got.sr == pytest.approx(srs[best])
    assert got.sr_star == pytest.approx(sr_star)
    assert got.dsr == pytest.approx(norm.cdf(z))
    assert got.dsr < got.psr  # deflation for 12 trials lowers the probability
    # declaring more trials than columns deflates further
    assert deflated_sharpe_from_returns(returns, n_trials=500).dsr < got.dsr


def test_sharpe_ratio_edges():
    assert sharpe_ratio([0.01, 0.03]) == pytest.approx(0.02 / math.sqrt(2e-4))
    assert math.isnan(sharpe_ratio([0.01]))
    assert sharpe_ratio([0.0, 0.0, 0.0]) == 0.0
    assert sharpe_ratio([0.01, 0.01]) == math.inf


def test_dsr_input_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="n_trials"):
        expected_max_sharpe(0, 1.0)
    with pytest.raises(ConfigError, match="n_obs"):
        probabilistic_sharpe_ratio(0.1, 0.0, 1)
    with pytest.raises(ConfigError, match="annualised"):
        probabilistic_sharpe_ratio(3.0, 0.0, 100, skew=2.0, kurtosis=3.0)


# ---------------------------------------------------------------- PBO (CSCV)


def test_pbo_hand_computed_s4():
    # T = 4 periods, S = 4 blocks of one row, N = 3 trials, metric = total return.
    m = np.array([[3.0, 4, 2], [0, 3, 4], [3, 6, 2], [4, 6, 7]])
    # IS rows  IS totals   n*  OOS rows  OOS totals   OOS rank of n*  w=rank/4  lambda
    # (0,1)    3  7  6     1   (2,3)     7 12  9      3              0.75      ln 3
    # (0,2)    6 10  4     1   (1,3)     4  9 11      2              0.50      0
    # (0,3)    7 10  9     1   (1,2)     3  9  6      3              0.75      ln 3
    # (1,2)    3  9  6     1   (0,3)     7 10  9      3              0.75      ln 3
    # (1,3)    4  9 11     2   (0,2)     6 10  4      1              0.25      -ln 3
    # (2,3)    7 12  9     1   (0,1)     3  7  6      3              0.75      ln 3
    # PBO = #(lambda <= 0) / 6 = 2 / 6
    r = probability_of_backtest_overfitting(m, n_splits=4, metric="total")
    ln3 = math.log(3)
    assert r.n_combinations == 6
    assert r.is_best == [1, 1, 1, 1, 2, 1]
    assert r.logits == pytest.approx([ln3, 0.0, ln3, ln3, -ln3, ln3])
    assert r.oos_performance == pytest.approx([12, 9, 9, 10, 4, 7])
    assert r.pbo == pytest.approx(2 / 6)


def test_pbo_hand_computed_s2_with_oos_tie():
    # S = 2 (rows 0-1 | rows 2-3), N = 3, metric = mean.
    m = np.array([[0.02, 0.01, 0.00], [0.02, 0.01, 0.00], [0.00, 0.01, 0.01], [0.00, 0.01, 0.01]])
    # split 1: IS = rows 0-1, means (0.02, 0.01, 0) -> n* = 0; OOS means (0, 0.01, 0.01):
    #          rank of trial 0 = 1 -> w = 1/4, lambda = -ln 3
    # split 2: IS = rows 2-3, means (0, 0.01, 0.01) -> n* = 1 (first of the tie);
    #          OOS means (0.02, 0.01, 0): rank 2 -> w = 1/2, lambda = 0
    # PBO = 2 / 2 = 1
    r = probability_of_backtest_overfitting(m, n_splits=2, metric="mean")
    assert r.is_best == [0, 1]
    assert r.logits == pytest.approx([-math.log(3), 0.0])
    assert r.pbo == 1.0


def test_pbo_dominant_strategy_is_zero():
    # Trial 0 earns more than every other trial in every period, whatever the noise.
    rng = np.random.default_rng(11)
    base = rng.normal(0, 0.01, (240, 8))
    base[:, 0] = base[:, 1:].max(axis=1) + 0.001
    r = probability_of_backtest_overfitting(base, n_splits=8, metric="mean")
    assert r.n_combinations == 70  # C(8, 4)
    assert r.pbo == 0.0
    assert all(b == 0 for b in r.is_best)


def test_pbo_pure_noise_near_one_half():
    rng = np.random.default_rng(2024)
    noise = rng.normal(0, 0.01, (800, 40))
    r = probability_of_backtest_overfitting(noise, n_splits=10)
    assert r.n_combinations == 252  # C(10, 5)
    assert 0.3 <= r.pbo <= 0.7


def test_pbo_keeps_every_row_when_t_not_multiple_of_s():
    rng = np.random.default_rng(5)
    r = probability_of_backtest_overfitting(rng.normal(0, 1, (103, 4)), n_splits=4)
    assert r.n_periods == 103 and r.n_combinations == 6


def test_pbo_input_errors():
    m = np.zeros((10, 3))
    with pytest.raises(ConfigError, match="even"):
        probability_of_backtest_overfitting(m, n_splits=3)
    with pytest.raises(ConfigError, match="n_splits=16"):
        probability_of_backtest_overfitting(m, n_splits=16)
    with pytest.raises(ConfigError, match="N >= 2"):
        probability_of_backtest_overfitting(np.zeros((10, 1)), n_splits=2)
    with pytest.raises(ConfigError, match="metric"):
        probability_of_backtest_overfitting(m, n_splits=2, metric="sortino")


# ---------------------------------------------------------------- daily returns


def test_daily_returns_use_cme_trade_dates():
    idx = pd.DatetimeIndex(
        ["2024-03-04 17:55", "2024-03-04 18:00", "2024-03-05 10:00", "2024-03-05 18:05"],
        tz="America/New_York",
    )
    eq = pd.Series([25_000.0, 25_500.0, 25_250.0, 26_000.0], index=idx)
    r = daily_returns(eq, start_value=25_000.0)
    # 03-04: 25000 / 25000 - 1 = 0; 03-05 (18:00 bar onwards): 25250 / 25000 - 1 = 0.01;
    # 03-06 (the 18:05 bar): 26000 / 25250 - 1 = 0.029703
    assert [d.strftime("%m-%d") for d in r.index] == ["03-04", "03-05", "03-06"]
    assert r.tolist() == pytest.approx([0.0, 0.01, 750 / 25_250])


def test_pbo_ranks_equal_scipy_average_ranks_with_ties_and_flat_trials():
    """The out-of-sample rank of the in-sample winner is counted (below + ties averaged)
    instead of ranking all N trials per split: the same logits as scipy's rankdata, here on
    returns with exact ties (duplicate trials) and flat trials (infinite Sharpe, NaN)."""
    from itertools import combinations

    from scipy.stats import rankdata

    from m2k_bt.optimize.overfitting import _sharpe_columns

    rng = np.random.default_rng(5)
    r = np.round(rng.normal(0, 0.01, (64, 6)), 3)
    r[:, 3] = r[:, 1]  # a duplicate trial: ties everywhere
    r[:, 4] = 0.0  # flat: Sharpe 0
    r[:, 5] = 0.002  # flat positive: Sharpe +inf
    res = probability_of_backtest_overfitting(r, n_splits=8)
    blocks = np.array_split(np.arange(64), 8)
    want = []
    for chosen in combinations(range(8), 4):
        is_rows = np.concatenate([blocks[i] for i in chosen])
        oos_rows = np.concatenate([blocks[i] for i in range(8) if i not in chosen])
        sr = [np.nan_to_num(_sharpe_columns(r[rows]), nan=-np.inf)
              for rows in (is_rows, oos_rows)]
        k = int(np.argmax(sr[0]))
        w = float(rankdata(sr[1], method="average")[k]) / 7
        want.append(math.log(w / (1 - w)))
    assert res.logits == want


# ---------------------------------------------------------------- issue 23: vectorised, same result


def _study_like_returns(seed: int, t: int = 130, n: int = 60) -> np.ndarray:
    """Daily returns as a study holds them: noise with exact ties (a duplicate trial), a
    flat trial (no trade: Sharpe 0), a constant one (Sharpe +inf) and one flat half the time."""
    rng = np.random.default_rng(seed)
    r = np.round(rng.normal(0.0002, 0.01, (t, n)), 4)
    r[:, 3] = r[:, 1]
    r[:, 4] = 0.0
    r[:, 5] = 0.002
    r[: t // 2, 2] = 0.0
    r[rng.random((t, n)) < 0.01] = np.nan  # a missing day here and there: 0 for PBO
    return r


@pytest.mark.parametrize(("t", "n", "s"), [(64, 6, 8), (96, 12, 12), (101, 7, 4), (40, 6, 2)])
def test_pbo_from_block_sums_equals_the_split_by_split_computation(t, n, s):
    """The Sharpe metric computed from per-block sums for all splits at once gives the very
    PBO, logits and in-sample winners of the split-by-split computation (the callable path,
    which gathers each split's rows and calls sharpe_ratio per trial, as PBO did before)."""
    r = _study_like_returns(t + n + s, t, n)
    fast = probability_of_backtest_overfitting(r, n_splits=s)
    by_rows = probability_of_backtest_overfitting(r, n_splits=s, metric=sharpe_ratio)
    assert fast.pbo == by_rows.pbo
    assert fast.logits == by_rows.logits
    assert fast.is_best == by_rows.is_best
    assert fast.n_combinations == by_rows.n_combinations == math.comb(s, s // 2)
    big = 1e300  # +inf Sharpe: nan_to_num's largest float on both paths
    for a, b in ((fast.is_performance, by_rows.is_performance),
                 (fast.oos_performance, by_rows.oos_performance)):
        a, b = np.array(a), np.array(b)
        assert ((a > big) == (b > big)).all()
        assert a[a < big] == pytest.approx(b[b < big], rel=1e-9, abs=1e-12)
    # sums of returns rounded to 0.0001 tie between trials, and which of two equal sums
    # comes out a hair larger depends on the order of the additions: unrounded returns here
    noise = np.random.default_rng(s).normal(0.0002, 0.01, (t, n))
    for metric, column in (("mean", np.mean), ("total", np.sum)):
        fast = probability_of_backtest_overfitting(noise, n_splits=s, metric=metric)
        by_rows = probability_of_backtest_overfitting(noise, n_splits=s, metric=column)
        assert fast.is_best == by_rows.is_best and fast.pbo == by_rows.pbo


@pytest.mark.parametrize("metric", ["sharpe", "mean", "total"])
@pytest.mark.parametrize(("t", "n", "s"), [(130, 60, 16), (64, 700, 8), (40, 6, 2)])
def test_pbo_compiled_splits_equal_the_numpy_splits(monkeypatch, metric, t, n, s):
    """The compiled CSCV (large studies) gives the very numbers of the numpy one: the same
    element-by-element operations, ties and flat trials included."""
    import m2k_bt.optimize.overfitting as of

    r = _study_like_returns(t + n + s, t, n)
    monkeypatch.setattr(of, "_COMPILED_FROM", 0)
    compiled = probability_of_backtest_overfitting(r, n_splits=s, metric=metric)
    monkeypatch.setattr(of, "_COMPILED_FROM", 1 << 62)
    arrays = probability_of_backtest_overfitting(r, n_splits=s, metric=metric)
    assert compiled.logits == arrays.logits and compiled.is_best == arrays.is_best
    assert compiled.is_performance == arrays.is_performance
    assert compiled.oos_performance == arrays.oos_performance
    assert compiled.pbo == arrays.pbo


def test_dsr_from_returns_equals_the_column_by_column_computation():
    """All columns' Sharpe ratios at once (NaNs ignored per column) and numpy's moments give
    what sharpe_ratio per column and scipy's skew/kurtosis gave."""
    r = pd.DataFrame(_study_like_returns(7, 200, 30))
    got = deflated_sharpe_from_returns(r, n_trials=45)
    srs = {c: sharpe_ratio(r[c].to_numpy()) for c in r.columns}
    finite = {c: v for c, v in srs.items() if math.isfinite(v)}
    best = max(finite, key=finite.get)
    col = r[best].dropna().to_numpy()
    assert got.best == best and got.sr == pytest.approx(finite[best], rel=1e-12)
    assert got.sr_variance == pytest.approx(np.var(list(finite.values()), ddof=1), rel=1e-12)
    assert got.skew == pytest.approx(skew(col), rel=1e-10)
    assert got.kurtosis == pytest.approx(kurtosis(col, fisher=False), rel=1e-10)
    g = EULER_GAMMA
    v = got.sr_variance
    sr_star = math.sqrt(v) * ((1 - g) * norm.ppf(1 - 1 / 45) + g * norm.ppf(1 - 1 / (45 * math.e)))
    assert got.sr_star == pytest.approx(sr_star, rel=1e-12)


def _groupby_daily_returns(equity: pd.Series, start_value: float) -> pd.Series:
    """The reference: pandas' groupby by CME trade date (what daily_returns computed before)."""
    idx = equity.index
    if idx.tz is not None:
        idx = idx.tz_convert("America/New_York").tz_localize(None)
    day = (idx + pd.Timedelta(hours=6)).normalize()
    last = pd.Series(equity.to_numpy(dtype=float), index=day).groupby(level=0).last()
    prev = last.shift(1)
    prev.iloc[0] = start_value
    out = last / prev - 1.0
    out.index = pd.DatetimeIndex(out.index.date)
    return out


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", None])
def test_daily_returns_equal_pandas_groupby_across_dst_and_session_breaks(tz):
    """Per-trial daily returns from remembered trade-day boundaries equal the groupby
    computation, across the March 2024 DST change and every 18:00 session start, for the
    same index object, an equal copy, and a different index of the same length."""
    idx = pd.date_range("2024-03-07 15:00", "2024-03-13 20:00", freq="5min", tz="UTC")
    if tz != "UTC":
        idx = idx.tz_convert("America/New_York")
        if tz is None:
            idx = idx.tz_localize(None)
    rng = np.random.default_rng(1)
    for i in range(3):
        values = 25_000 + np.cumsum(rng.normal(0, 5, len(idx)))  # $5 a point
        equity = pd.Series(values, index=idx if i < 2 else idx + pd.Timedelta(hours=3))
        if i == 1:
            equity.index = pd.DatetimeIndex(list(idx))  # equal, not the same object
        got = daily_returns(equity, start_value=25_000.0)
        want = _groupby_daily_returns(equity, 25_000.0)
        assert list(got.index) == list(want.index)
        assert got.tolist() == want.tolist()  # the same arithmetic: equal, not close
    gaps = pd.Series(values, index=idx)
    gaps.iloc[5] = np.nan  # a missing value: groupby's last skips it
    assert daily_returns(gaps, 25_000.0).tolist() == pytest.approx(
        _groupby_daily_returns(gaps, 25_000.0).tolist())


def test_returns_matrix_aligns_dates_and_fills_gaps_with_zero():
    """The study's returns matrix (one array for all trials): dates sorted, a trial without
    a return on a date (or a NaN return) gets 0, a repeated parameter set is one column."""
    from types import SimpleNamespace

    import optuna

    from m2k_bt.optimize.results import returns_matrix

    def trial(number, params, returns):
        return SimpleNamespace(number=number, params=params, state=optuna.trial.TrialState
                               .COMPLETE, user_attrs={"backtest": {"returns": returns}})

    trials = [trial(0, {"fast": 1}, {"2024-01-03": 0.01, "2024-01-02": -0.02}),
              trial(1, {"fast": 2}, {"2024-01-02": 0.03, "2024-01-04": float("nan")}),
              trial(2, {"fast": 1}, {"2024-01-02": 9.0}),  # fast=1 again: not a column
              trial(3, {"fast": 3}, {})]  # no returns recorded: not a column
    study = SimpleNamespace(get_trials=lambda deepcopy=False, states=None: trials)
    m = returns_matrix(study)
    assert list(m.columns) == [0, 1]
    assert [d.strftime("%Y-%m-%d") for d in m.index] == ["2024-01-02", "2024-01-03",
                                                          "2024-01-04"]
    assert m[0].tolist() == [-0.02, 0.01, 0.0]  # no 01-04 return: 0
    assert m[1].tolist() == [0.03, 0.0, 0.0]  # no 01-03 return, NaN on 01-04: 0
