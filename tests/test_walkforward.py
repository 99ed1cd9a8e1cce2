"""Walk-forward folds (no overlap, no look-ahead) and the driver (equity carried forward)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import make_bars
from test_optimize import FakeConfig, fake_run

from m2k_bt.errors import ConfigError
from m2k_bt.optimize.walkforward import (
    annualised_return,
    parameter_stability,
    parse_window,
    split_folds,
    walk_forward,
)

pytest.importorskip("optuna")


def daily_index(start: str = "2023-01-01", end: str = "2024-12-31") -> pd.DatetimeIndex:
    return pd.date_range(start, end, freq="D", tz="America/New_York")


def assert_no_overlap_no_lookahead(index: pd.DatetimeIndex, folds) -> None:
    for f in folds:
        is_ts = index[f.is_slice]
        oos_ts = index[f.oos_slice]
        assert len(is_ts) and len(oos_ts)
        assert f.is_end == f.oos_start
        assert is_ts[-1] < f.oos_start <= oos_ts[0]  # every in-sample bar before any OOS bar
        assert oos_ts[-1] < f.oos_end
        assert f.is_slice.stop == f.oos_slice.start  # no bar in both, none skipped between
        assert not set(is_ts) & set(oos_ts)


def test_calendar_rolling_12m_3m_3m():
    idx = daily_index()
    folds = split_folds(idx, "12M", "3M", "3M")
    # OOS windows start 2024-01-01, 04-01, 07-01, 10-01; the last runs to 2025-01-01, past the
    # data by one day, so it is partial but holds over half its length
    assert [str(f.oos_start.date()) for f in folds] == [
        "2024-01-01",
        "2024-04-01",
        "2024-07-01",
        "2024-10-01",
    ]
    assert [f.partial for f in folds] == [False, False, False, True]
    assert folds[0].is_bars == 365  # 2023 has 365 days
    assert folds[0].oos_bars == 31 + 29 + 31  # Jan-Mar 2024, a leap year
    assert str(folds[1].is_start.date()) == "2023-04-01"  # rolling: the start moves 3 months
    assert_no_overlap_no_lookahead(idx, folds)
    # with step == oos, OOS windows tile the data: each starts where the previous ended
    for a, b in zip(folds, folds[1:]):
        assert a.oos_end == b.oos_start and a.oos_slice.stop == b.oos_slice.start


def test_anchored_folds_grow_from_the_first_bar():
    idx = daily_index()
    folds = split_folds(idx, "12M", "3M", anchored=True)
    assert all(f.is_slice.start == 0 for f in folds)
    assert [f.is_bars for f in folds] == [365, 365 + 91, 365 + 182, 365 + 274]
    assert_no_overlap_no_lookahead(idx, folds)


def test_bar_count_folds_with_a_step_shorter_than_oos():
    idx = pd.date_range("2024-01-02 09:30", periods=20, freq="5min", tz="America/New_York")
    folds = split_folds(idx, "8b", "4b", "2b")
    # IS [0,8) OOS [8,12); IS [2,10) OOS [10,14); ... ; IS [10,18) OOS [18,20) is 2 of 4 bars:
    # half the nominal length, kept as partial
    assert [(f.is_slice.start, f.is_slice.stop, f.oos_slice.stop) for f in folds] == [
        (0, 8, 12),
        (2, 10, 14),
        (4, 12, 16),
        (6, 14, 18),
        (8, 16, 20),
        (10, 18, 20),
    ]
    assert folds[-1].partial and not folds[-2].partial
    assert_no_overlap_no_lookahead(idx, folds)


def test_folds_option_keeps_the_most_recent():
    idx = daily_index()
    last_two = split_folds(idx, "12M", "3M", folds=2)
    assert [f.index for f in last_two] == [0, 1]
    assert str(last_two[0].oos_start.date()) == "2024-07-01"
    with pytest.raises(ConfigError, match="only 4 fold"):
        split_folds(idx, "12M", "3M", folds=5)


def test_window_errors_say_how_to_fix():
    idx = daily_index()
    with pytest.raises(ConfigError, match="12M"):
        parse_window("twelve months")
    with pytest.raises(ConfigError, match="must all be calendar lengths or all bar counts"):
        split_folds(idx, "12M", "500b")
    with pytest.raises(ConfigError, match="shorten the windows"):
        split_folds(idx, "3Y", "3M")


def test_annualised_return_and_stability_by_hand():
    # +21% over two years: 1.21 ** (1/2) - 1 = 10% a year
    assert annualised_return(100.0, 121.0, 2 * 365.25) == pytest.approx(0.10)
    assert annualised_return(100.0, 121.0, 0) is None
    s = parameter_stability([{"fast": 10, "exit": "a"}, {"fast": 30, "exit": "a"}])
    # mean 20, population std 10 -> CV 0.5; 'exit' is the same in both folds
    assert s["fast"]["cv"] == pytest.approx(0.5)
    assert s["exit"]["mode"] == "a" and s["exit"]["mode_share"] == 1.0
    assert s["exit"]["cv"] is None


class Recorder:
    """Wraps fake_run and records the window of every backtest."""

    def __init__(self):
        self.calls = []

    def __call__(self, bars, config):
        self.calls.append((bars.index[0], bars.index[-1], dict(config.params), config.cash))
        return fake_run(bars, config)


def test_driver_optimises_in_sample_only_and_carries_equity(tmp_path):
    bars = make_bars(24 * 60, seed=4, freq="1h")  # 60 days of hourly bars
    rec = Recorder()
    res = walk_forward(
        bars,
        FakeConfig(),
        ["fast=10:50:10", "slow=80:160:40"],
        in_sample="480b",
        out_of_sample="240b",
        sampler="grid",
        workers=1,
        run_backtest=rec,
        out=tmp_path,
    )
    folds = split_folds(bars.index, "480b", "240b")
    assert len(res.folds) == len(folds) == 4
    per_fold = 15 + 1  # 5 x 3 grid points minus none infeasible, plus the OOS run
    assert len(rec.calls) == 4 * per_fold
    cash = 25_000.0
    for k, f in enumerate(folds):
        calls = rec.calls[k * per_fold : (k + 1) * per_fold]
        for first, last, _, _ in calls[:-1]:  # optimisation: in-sample bars only
            assert bars.index[f.is_slice][0] <= first and last < f.oos_start
        first, last, params, start_cash = calls[-1]  # out of sample with the best params
        assert first == f.oos_start and last == bars.index[f.oos_slice][-1]
        assert params == {"fast": 30, "slow": 120} == res.folds[k]["best_params"]
        assert start_cash == pytest.approx(cash)  # equity carried from the previous fold
        cash = res.folds[k]["oos_final_value"]
    assert res.final_value == pytest.approx(cash)
    # stitched curve: every OOS bar once, in order
    assert len(res.oos_equity) == sum(f.oos_bars for f in folds)
    assert res.oos_equity.index.is_monotonic_increasing
    assert res.stability["fast"]["mode_share"] == 1.0 and res.stability["fast"]["cv"] == 0.0
    for name in ("walkforward.json", "folds.csv", "oos_equity.csv", "oos_equity.png", "study.db"):
        assert (tmp_path / name).exists(), name
    data = json.loads((tmp_path / "walkforward.json").read_text())
    assert len(data["folds"]) == 4
    table = pd.read_csv(tmp_path / "folds.csv")
    assert table["param_fast"].tolist() == [30, 30, 30, 30]
    assert "stitched OOS" in res.summary()


def test_efficiency_is_oos_over_is_annualised():
    bars = make_bars(24 * 60, seed=4, freq="1h")
    res = walk_forward(
        bars,
        FakeConfig(),
        ["fast=30", "slow=120"],
        in_sample="480b",
        out_of_sample="240b",
        sampler="grid",
        workers=1,
        run_backtest=fake_run,
        quiet=True,
    )
    for f in res.folds:
        if f["is_return_annualised"] and f["is_return_annualised"] > 0:
            assert f["efficiency"] == pytest.approx(
                f["oos_return_annualised"] / f["is_return_annualised"]
            )
    assert res.efficiency == pytest.approx(
        res.oos_return_annualised / res.is_return_annualised_mean
    )


def test_real_engine_walk_forward_small(tmp_path):
    from m2k_bt.engine import BacktestConfig

    bars = make_bars(1800, seed=9)
    cfg = BacktestConfig(strategy="sma", sizer="fixed")
    res = walk_forward(
        bars,
        cfg,
        ["fast=5:10:5", "slow=20:30:10"],
        in_sample="900b",
        out_of_sample="300b",
        sampler="grid",
        workers=1,
        min_trades=0,
        out=tmp_path,
        plot=False,
    )
    assert len(res.folds) == 3
    for a, b in zip(res.folds, res.folds[1:]):
        assert b["oos_start_value"] == pytest.approx(a["oos_final_value"])
    assert res.oos_equity["value"].iloc[-1] == pytest.approx(res.final_value)


def test_fold_without_a_feasible_trial_stays_flat_and_says_so():
    bars = make_bars(24 * 30, seed=1, freq="1h")
    res = walk_forward(
        bars,
        FakeConfig(),
        ["fast=10", "slow=120"],
        in_sample="480b",
        out_of_sample="240b",
        sampler="grid",
        workers=1,
        min_trades=99,
        run_backtest=fake_run,
    )
    assert len(res.folds) == 1 and res.folds[0]["best_params"] == {}
    assert res.final_value == res.start_value == 25_000.0
    assert (res.oos_equity["value"] == 25_000.0).all()
    assert res.skipped == ["fold 0: no feasible in-sample trial, flat out of sample"]


def test_cli_walkforward_by_fold_count_writes_every_output(tmp_path, capsys):
    from m2k_bt.cli.backtest import main

    bars = make_bars(1500, seed=6)
    bars.index = bars.index.tz_localize(None)
    bars.to_csv(tmp_path / "bars.csv")
    out = tmp_path / "wf"
    argv = [
        "walkforward",
        "--data",
        str(tmp_path / "bars.csv"),
        "--lenient",
        "--sizer",
        "fixed",
        "--space",
        "fast=5:10:5",
        "slow=20",
        "--sampler",
        "grid",
        "--workers",
        "1",
        "--min-trades",
        "0",
        "--folds",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "walk-forward efficiency" in capsys.readouterr().out
    for name in ("study.db", "walkforward.json", "folds.csv", "oos_equity.csv", "oos_equity.png"):
        assert (out / name).exists(), name
    data = json.loads((out / "walkforward.json").read_text())
    assert len(data["folds"]) == 2
    # rolling folds by count: in-sample 4x out-of-sample, OOS windows back to back
    f0, f1 = data["folds"]
    assert f0["is_bars"] == 4 * f0["oos_bars"] and f0["oos_end"] == f1["oos_start"]


def test_outputs_are_atomic_and_a_planted_symlink_is_not_followed(tmp_path):
    """Issue 11 item 8: walk-forward files replace a symlink in --out instead of writing
    through it; no temporary file is left behind."""
    out = tmp_path / "wf"
    out.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    names = ("walkforward.json", "folds.csv", "oos_equity.csv", "oos_equity.png")
    for name in names:
        (out / name).symlink_to(victim)
    walk_forward(make_bars(24 * 30, seed=4, freq="1h"), FakeConfig(),
                 ["fast=10:30:10", "slow=80:120:40"], in_sample="240b", out_of_sample="120b",
                 sampler="grid", workers=1, run_backtest=fake_run, out=out)  # fmt: skip
    assert victim.read_text() == "keep me"
    for name in names:
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert not list(out.glob(".*m2k-tmp"))
    assert json.loads((out / "walkforward.json").read_text())["folds"]


def test_kernel_walk_forward_verifies_each_fold_out_of_sample_in_cerebro(tmp_path):
    """Issue 12: trials in the kernel; each fold's choice is run out of sample in the kernel
    (reported) and in cerebro (a background process): both agree to the cent, per fold."""
    from m2k_bt.engine import BacktestConfig, run_backtest

    bars = make_bars(1800, seed=9)
    cfg = BacktestConfig(strategy="sma", sizer="fixed")
    kw = dict(in_sample="900b", out_of_sample="300b", sampler="grid", min_trades=0, plot=False)
    res = walk_forward(bars, cfg, ["fast=5:10:5", "slow=20:30:10"], out=tmp_path, **kw)
    assert "out of sample: engines agree" in res.settings["verify"]
    equity = cfg.cash
    for row, fold in zip(res.folds, split_folds(bars.index, "900b", "300b")):
        assert row["oos_engine"] == "kernel" and row["engines_agree"] is True
        assert row["oos_final_value"] == pytest.approx(row["oos_final_value_cerebro"], abs=0.005)
        # and that is cerebro's own answer for the fold, computed here independently
        oos = bars.iloc[fold.oos_slice]
        mine = run_backtest(oos, cfg.replace(params=row["best_params"], cash=equity))
        assert mine.final_value == pytest.approx(row["oos_final_value_cerebro"], abs=1e-6)
        equity = mine.final_value
    folds_csv = pd.read_csv(tmp_path / "folds.csv")
    assert "oos_final_value_cerebro" in folds_csv.columns
    # the same walk-forward all in cerebro reports the same folds
    slow = walk_forward(bars, cfg, ["fast=5:10:5", "slow=20:30:10"], engine="cerebro", **kw)
    assert [r["best_params"] for r in slow.folds] == [r["best_params"] for r in res.folds]
    assert slow.final_value == pytest.approx(res.final_value, abs=0.005)
    assert "oos_final_value_cerebro" not in slow.folds[0]


def test_kernel_walk_forward_fails_loudly_when_the_engines_disagree(monkeypatch):
    import os

    from conftest import kernel_off_by_a_dollar

    from m2k_bt.engine import BacktestConfig
    from m2k_bt.errors import M2KError

    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # cerebro's check inline, in-process
    kernel_off_by_a_dollar(monkeypatch)
    bars = make_bars(1800, seed=9)
    with pytest.raises(M2KError, match=r"disagree on fold 0's out-of-sample run .* final "
                                       r"equity kernel .* vs cerebro"):
        walk_forward(bars, BacktestConfig(strategy="sma", sizer="fixed"),
                     ["fast=5:10:5", "slow=20:30:10"], in_sample="900b", out_of_sample="300b",
                     sampler="grid", min_trades=0, plot=False)
    with pytest.raises(ConfigError, match="--verify must be 'oos' or 'all'"):
        walk_forward(bars, BacktestConfig(strategy="sma"), None, in_sample="900b",
                     out_of_sample="300b", verify="everything")


def test_verify_all_also_checks_each_fold_in_sample():
    from m2k_bt.engine import BacktestConfig

    bars = make_bars(1800, seed=9)
    res = walk_forward(bars, BacktestConfig(strategy="sma", sizer="fixed"),
                       ["fast=5:10:5", "slow=20:30:10"], in_sample="900b",
                       out_of_sample="300b", sampler="grid", min_trades=0, plot=False,
                       verify="all")
    assert "in and out of sample" in res.settings["verify"]
    assert all(r["engines_agree"] and r["is_verified_in_cerebro"] for r in res.folds)
    default = walk_forward(bars, BacktestConfig(strategy="sma", sizer="fixed"),
                           ["fast=5:10:5", "slow=20:30:10"], in_sample="900b",
                           out_of_sample="300b", sampler="grid", min_trades=0, plot=False)
    assert not any(r["is_verified_in_cerebro"] for r in default.folds)
