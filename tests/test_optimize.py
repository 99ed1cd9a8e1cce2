"""Optuna search: space parsing, constraints, determinism, resume, worker pool and Dask."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from dataclasses import dataclass, field

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from conftest import make_bars

from m2k_bt.errors import ConfigError, ParameterError
from m2k_bt.optimize import (
    ParamRange,
    evaluate_params,
    optimize,
    parse_space,
    study_storage_url,
)
from m2k_bt.optimize.claims import is_discarded

optuna = pytest.importorskip("optuna")


# ---------------------------------------------------------------- a fake engine
# A deterministic stand-in for m2k_bt.engine.cerebro.run_backtest, so search logic is tested exactly
# and fast. Module-level so that spawned workers can unpickle it by reference.


class FakeStrategy(bt.Strategy):
    params = (("fast", 50), ("slow", 200), ("exit", "signal"))

    @classmethod
    def validate_params(cls, params: dict) -> dict:
        if params.get("fast", 50) >= params.get("slow", 200):
            raise ParameterError(f"fast ({params.get('fast')}) must be below slow")
        return params


@dataclass
class FakeConfig:
    strategy: object = FakeStrategy
    params: dict = field(default_factory=dict)
    cash: float = 25_000.0
    analyzers: bool = True
    start: str | None = None
    end: str | None = None
    resample: str | None = None
    seed: int | None = None
    strategy_name: str = "fake"


@dataclass
class FakeResult:
    start_value: float
    final_value: float
    first_dt: object
    last_dt: object
    metrics: dict
    equity: pd.DataFrame
    strategy: object = None


def fake_score(fast: int, slow: int) -> float:
    """Peak at fast=30, slow=120."""
    return 2.0 - ((fast - 30) / 10) ** 2 - ((slow - 120) / 40) ** 2


def fake_run(bars: pd.DataFrame, config) -> FakeResult:
    p = {"fast": 50, "slow": 200, **config.params}
    score = fake_score(p["fast"], p["slow"])
    # $5 per point on a position whose direction and size depend on the parameters
    w = 1 + (p["fast"] % 3) - (p["slow"] % 2)
    pnl = 5.0 * w * (bars["close"] - bars["close"].iloc[0])
    value = config.cash + pnl + score * np.arange(len(bars))
    equity = pd.DataFrame({"value": value.to_numpy()}, index=bars.index)
    metrics = {
        "sharpe": score,
        "net_profit": float(value.iloc[-1] - config.cash),
        "trades": 1 + p["fast"] // 10,
    }
    return FakeResult(
        config.cash, float(value.iloc[-1]), bars.index[0], bars.index[-1], metrics, equity
    )


def hourly_bars(days: int = 40, seed: int = 0) -> pd.DataFrame:
    return make_bars(24 * days, seed=seed, freq="1h")


# ---------------------------------------------------------------- search space


def test_parse_space_kinds():
    s = parse_space(["fast=10:100:5", "devfactor=1.5:3.0:0.25", "exit=middle,signal", "x=2"])
    assert s["fast"] == ParamRange("fast", "int", 10, 100, 5)
    assert len(s["fast"].grid()) == 19  # (100 - 10) / 5 + 1
    assert s["devfactor"].kind == "float" and list(s["devfactor"].grid()) == [
        1.5,
        1.75,
        2.0,
        2.25,
        2.5,
        2.75,
        3.0,
    ]
    assert s["exit"].grid() == ["middle", "signal"]
    assert s["x"].grid() == [2]
    assert str(s["devfactor"]) == "devfactor=1.5:3.0:0.25"


def test_parse_space_errors():
    with pytest.raises(ConfigError, match="name=lo:hi:step or name=a,b,c"):
        parse_space(["fast"])
    with pytest.raises(ConfigError, match="above high"):
        parse_space(["fast=100:10"])
    with pytest.raises(ConfigError, match="step must be > 0"):
        parse_space(["fast=10:100:0"])
    with pytest.raises(ConfigError, match="needs a step"):
        parse_space(["devfactor=1.5:3.0"])["devfactor"].grid()
    with pytest.raises(ParameterError, match="did you mean 'fast'"):
        parse_space(["fsat=10:20"], FakeStrategy)


def test_default_space_for_real_strategies():
    assert sorted(parse_space(None, "sma")) == ["fast", "slow"]
    assert sorted(parse_space(None, "bollinger")) == ["devfactor", "period"]


# ---------------------------------------------------------------- one trial


def test_constraint_makes_trial_infeasible_without_a_backtest():
    def must_not_run(bars, config):
        raise AssertionError("a trial that breaks fast < slow must not be backtested")

    out = evaluate_params(
        hourly_bars(3), FakeConfig(), {"fast": 50, "slow": 40}, "sharpe", 1, must_not_run
    )
    assert out["value"] is None and out["infeasible"].startswith("constraint")


def test_min_trades_makes_trial_infeasible():
    # fast=10 -> 1 + 10 // 10 = 2 trades
    bars = hourly_bars(3)
    ok = evaluate_params(bars, FakeConfig(), {"fast": 10, "slow": 120}, "sharpe", 2, fake_run)
    low = evaluate_params(bars, FakeConfig(), {"fast": 10, "slow": 120}, "sharpe", 3, fake_run)
    assert ok["infeasible"] is None and ok["value"] == pytest.approx(fake_score(10, 120))
    assert low["infeasible"] == "min_trades: 2 trades < 3"
    assert len(ok["attrs"]["returns"]) == 4  # 3 days of hourly bars from 09:30 -> 4 trade dates


# ---------------------------------------------------------------- studies


def test_tpe_same_seed_same_trials_and_best():
    bars = hourly_bars(5)
    kw = dict(space=["fast=10:60:5", "slow=80:200:10"], trials=12, seed=7, workers=1)
    a = optimize(bars, FakeConfig(), run_backtest=fake_run, quiet=True, **kw)
    b = optimize(bars, FakeConfig(), run_backtest=fake_run, quiet=True, **kw)
    assert a.best_params == b.best_params
    assert a.trials["param_fast"].tolist() == b.trials["param_fast"].tolist()
    assert a.n_complete + a.n_infeasible == 12


def test_grid_finds_known_best_and_records_overfitting_stats(tmp_path):
    bars = hourly_bars(30)
    res = optimize(
        bars,
        FakeConfig(),
        ["fast=10:50:10", "slow=40:160:40"],
        sampler="grid",
        workers=1,
        out=tmp_path,
        run_backtest=fake_run,
        quiet=True,
    )
    # 5 x 4 = 20 points; fast >= slow is infeasible for (40, 40), (50, 40): 18 complete
    assert (res.n_complete, res.n_infeasible) == (18, 2)
    assert res.best_params == {"fast": 30, "slow": 120}
    assert res.best_value == pytest.approx(2.0)
    data = json.loads((tmp_path / "optimize.json").read_text())
    assert data["best_params"] == {"fast": 30, "slow": 120}
    assert 0.0 <= data["deflated_sharpe"]["dsr"] <= 1.0
    assert data["deflated_sharpe"]["n_trials"] == 18
    assert 0.0 <= data["pbo"]["pbo"] <= 1.0
    assert (tmp_path / "study.db").exists()
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert len(trials) == 20 and (trials["state"] == "PRUNED").sum() == 2


def _killed_study(url: str, kill_at: int) -> None:
    """Run in a child process: backtest number ``kill_at`` hard-kills the process, leaving its
    trial RUNNING in the storage, as a power cut or kill -9 would."""
    import os

    calls = [0]

    def dying_run(bars, config):
        calls[0] += 1
        if calls[0] == kill_at:
            os._exit(1)
        return fake_run(bars, config)

    optimize(
        hourly_bars(5),
        FakeConfig(),
        ["fast=10:40:10", "slow=100:140:20"],
        trials=12,
        sampler="grid",
        storage=url,
        study_name="resume",
        workers=1,
        run_backtest=dying_run,
        quiet=True,
        overfitting=False,
    )


@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_study_resumes_after_a_kill_without_losing_or_repeating(tmp_path, sampler):
    url = study_storage_url(tmp_path)
    space = ["fast=10:40:10", "slow=100:140:20"]  # 4 x 3 = 12 grid points
    if sampler == "grid":
        proc = mp.get_context("spawn").Process(target=_killed_study, args=(url, 4))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 1
        study = optuna.load_study(study_name="resume", storage=url)
        states = [t.state.name for t in study.trials]
        assert states.count("COMPLETE") == 3 and states.count("RUNNING") == 1
    else:
        # an interruption inside the process (Ctrl-C) leaves the trial FAIL
        calls = [0]

        def interrupted(bars, config):
            calls[0] += 1
            if calls[0] == 3:
                raise KeyboardInterrupt
            return fake_run(bars, config)

        with pytest.raises(KeyboardInterrupt):
            optimize(
                hourly_bars(5),
                FakeConfig(),
                space,
                trials=12,
                storage=url,
                seed=1,
                study_name="resume",
                workers=1,
                run_backtest=interrupted,
                quiet=True,
            )

    res = optimize(
        hourly_bars(5),
        FakeConfig(),
        space,
        trials=12,
        sampler=sampler,
        seed=1,
        storage=url,
        study_name="resume",
        workers=1,
        run_backtest=fake_run,
        quiet=True,
        overfitting=False,
    )
    study = optuna.load_study(study_name="resume", storage=url)
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 12 == res.n_complete + res.n_infeasible
    # discarded proposals (a TPE draw equal to a finished set) are FAIL with a mark
    failed = [t for t in study.trials if t.state.name == "FAIL" and not is_discarded(t)]
    assert len(failed) == 1 == res.n_failed  # the interrupted one
    assert failed[0].params in [t.params for t in done]  # re-queued, not lost
    keys = [(t.params["fast"], t.params["slow"]) for t in done]
    assert len(set(keys)) == 12  # every point exactly once, TPE included
    # resuming a finished study runs nothing more
    again = optimize(
        hourly_bars(5),
        FakeConfig(),
        space,
        trials=12,
        sampler=sampler,
        storage=url,
        study_name="resume",
        workers=1,
        run_backtest=fake_run,
        quiet=True,
        overfitting=False,
    )
    assert again.n_complete + again.n_infeasible == 12


def test_resume_refuses_a_different_space(tmp_path):
    url = study_storage_url(tmp_path)
    kw = dict(trials=2, storage=url, workers=1, run_backtest=fake_run, quiet=True)
    optimize(hourly_bars(3), FakeConfig(), ["fast=10:40:10", "slow=100:140:20"], **kw)
    with pytest.raises(ConfigError, match="already exists with space"):
        optimize(hourly_bars(3), FakeConfig(), ["fast=10:50:10", "slow=100:140:20"], **kw)


def test_local_pool_of_two_workers_runs_the_same_grid(tmp_path):
    bars = hourly_bars(10)
    space = ["fast=10:50:10", "slow=80:160:40"]
    one = optimize(
        bars, FakeConfig(), space, sampler="grid", workers=1, run_backtest=fake_run, quiet=True
    )
    two = optimize(
        bars,
        FakeConfig(),
        space,
        sampler="grid",
        workers=2,
        out=tmp_path,
        run_backtest=fake_run,
        quiet=True,
    )
    assert two.best_params == one.best_params == {"fast": 30, "slow": 120}
    assert two.n_complete == one.n_complete == 15
    study = optuna.load_study(study_name="m2k-fake", storage=study_storage_url(tmp_path))
    keys = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(keys) == len(set(keys)) == 15


def test_dask_local_cluster_with_two_worker_processes_on_the_real_engine(tmp_path):
    pytest.importorskip("distributed")
    from m2k_bt.engine import BacktestConfig, run_backtest

    bars = make_bars(1500, seed=3)
    cfg = BacktestConfig(strategy="sma", sizer="fixed")
    space = ["fast=5:15:5", "slow=20:40:20"]  # 3 x 2 = 6 points
    res = optimize(
        bars, cfg, space, sampler="grid", dask="local", out=tmp_path, quiet=True, min_trades=0
    )
    assert res.n_complete + res.n_infeasible == 6
    # the same backtests run here in this process give the same best value
    direct = {
        (f, s): run_backtest(bars, cfg.replace(params={"fast": f, "slow": s}, analyzers=False))
        for f in (5, 10, 15)
        for s in (20, 40)
    }
    best = max(
        (r.metrics["sharpe"], k) for k, r in direct.items() if r.metrics["sharpe"] is not None
    )
    assert res.best_value == pytest.approx(best[0])
    assert (res.best_params["fast"], res.best_params["slow"]) == best[1]


def test_bad_settings_raise_config_errors():
    bars = hourly_bars(3)
    with pytest.raises(ConfigError, match="did you mean 'sharpe'"):
        optimize(bars, FakeConfig(), ["fast=10:20"], objective="sharpee", run_backtest=fake_run)
    with pytest.raises(ConfigError, match="--workers"):
        optimize(bars, FakeConfig(), ["fast=10:20"], workers=0, run_backtest=fake_run)
    with pytest.raises(ConfigError, match="no feasible trial"):
        optimize(
            bars,
            FakeConfig(),
            ["fast=10:20:10"],
            sampler="grid",
            min_trades=99,
            workers=1,
            run_backtest=fake_run,
            quiet=True,
        )
    assert math.isfinite(fake_score(1, 1))


# ---------------------------------------------------------------- command line


def _csv(tmp_path, n: int = 1500, seed: int = 5):
    bars = make_bars(n, seed=seed)
    bars.index = bars.index.tz_localize(None)
    path = tmp_path / "bars.csv"
    bars.to_csv(path)
    return str(path)


def test_cli_optimize_writes_outputs_and_resumes(tmp_path, capsys):
    from m2k_bt.cli.backtest import main

    out = tmp_path / "opt"
    argv = ["optimize", "--data", _csv(tmp_path), "--lenient", "--sizer", "fixed",
            "--space", "fast=5:10:5", "slow=20", "--sampler", "grid", "--workers", "1",
            "--min-trades", "0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best sharpe" in printed and "deflated Sharpe ratio" in printed
    for name in ("study.db", "trials.csv", "optimize.json"):
        assert (out / name).exists(), name
    first = json.loads((out / "optimize.json").read_text())
    assert first["trials_complete"] == 2
    # the same command again finds the finished study and runs nothing new
    assert main(argv + ["--quiet"]) == 0
    again = json.loads((out / "optimize.json").read_text())
    assert again["trials_complete"] == 2 and again["best_params"] == first["best_params"]


def test_cli_user_mistakes_exit_2_with_one_line(tmp_path, capsys):
    from m2k_bt.cli.backtest import main

    data = _csv(tmp_path, n=300)
    assert main(["optimize", "--data", data, "--lenient", "--objective", "sharp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'sharpe'" in err
    assert main(["optimize", "--data", data, "--lenient", "--space", "fast"]) == 2
    assert main(["optimize", "--data", data, "--lenient", "--trials", "0"]) == 2
    assert main(["walkforward", "--data", data, "--lenient", "--is", "12M", "--oos", "3M"]) == 2
    assert "no walk-forward fold fits" in capsys.readouterr().err


def test_real_engine_tpe_same_seed_same_best():
    from m2k_bt.engine import BacktestConfig

    bars = make_bars(1200, seed=8)
    cfg = BacktestConfig(strategy="sma", sizer="fixed")
    kw = dict(space=["fast=5:20:5", "slow=25:60:5"], trials=4, seed=11, workers=1, quiet=True)
    a = optimize(bars, cfg, min_trades=0, overfitting=False, **kw)
    b = optimize(bars, cfg, min_trades=0, overfitting=False, **kw)
    assert a.best_params == b.best_params and a.best_value == b.best_value
    assert a.trials["param_fast"].tolist() == b.trials["param_fast"].tolist()


# ---------------------------------------------------------------- issue 11 regressions


@dataclass(frozen=True)
class DyingRange(ParamRange):
    """A range whose ``suggest`` kills the process at the ``kill_at``-th draw of ``slow``:
    the trial dies between its two parameter suggestions (after ``fast``, before ``slow``)."""

    kill_at: int = 0

    def suggest(self, trial):
        if self.name == "slow":
            _DRAWS[0] += 1
            if _DRAWS[0] == self.kill_at:
                import os

                os._exit(1)
        return ParamRange(self.name, self.kind, self.low, self.high, self.step).suggest(trial)


_DRAWS = [0]


def _space_dying_at(kill_at: int) -> dict:
    s = parse_space(["fast=10:40:10", "slow=100:140:20"])
    return {"fast": s["fast"], "slow": DyingRange("slow", "int", 100, 140, 20, kill_at=kill_at)}


def _die_between_suggestions(url: str) -> None:
    optimize(hourly_bars(5), FakeConfig(), _space_dying_at(4), trials=12, sampler="grid",
             storage=url, study_name="s", workers=1, run_backtest=fake_run, quiet=True,
             overfitting=False)  # fmt: skip


def test_requeued_trial_carries_all_its_parameters(tmp_path):
    """Item 11: a grid trial killed between its two suggestions is re-queued with both
    parameters; every grid point runs exactly once (before: (20,150) twice, (20,190) never)."""
    url = study_storage_url(tmp_path)
    proc = mp.get_context("spawn").Process(target=_die_between_suggestions, args=(url,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 1
    study = optuna.load_study(study_name="s", storage=url)
    dead = next(t for t in study.trials if t.state.name == "RUNNING")
    assert list(dead.params) == ["fast"]  # died holding one of its two parameters
    optimize(hourly_bars(5), FakeConfig(), ["fast=10:40:10", "slow=100:140:20"], trials=12,
             sampler="grid", storage=url, study_name="s", workers=1, run_backtest=fake_run,
             quiet=True, overfitting=False)  # fmt: skip
    study = optuna.load_study(study_name="s", storage=url)
    done = [(t.params["fast"], t.params["slow"]) for t in study.trials
            if t.state.name == "COMPLETE"]  # fmt: skip
    grid = [(f, s) for f in (10, 20, 30, 40) for s in (100, 120, 140)]
    assert sorted(done) == grid
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == dead.number)
    assert retry.params == {**dead.params, **retry.params} and len(retry.params) == 2
    assert retry.params == {"fast": dead.params["fast"],
                            "slow": dead.system_attrs["fixed_params"]["slow"]}  # fmt: skip


def test_resumed_tpe_study_with_a_seed_repeats_no_parameter_set(tmp_path):
    """Item 12: three interruptions and resumes with --seed 3 (before: 20 trials held 14
    distinct sets, the early random proposals replayed); the DSR counts distinct sets."""
    url = study_storage_url(tmp_path)
    space = ["fast=10:60:5", "slow=100:300:10"]  # 11 x 21 = 231 points
    for trials in (5, 10, 15, 20):  # the first run and three resumes
        res = optimize(hourly_bars(5), FakeConfig(), space, trials=trials, seed=3, storage=url,
                       study_name="r", workers=1, run_backtest=fake_run, quiet=True)  # fmt: skip
    study = optuna.load_study(study_name="r", storage=url)
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    keys = {(t.params["fast"], t.params["slow"]) for t in done}
    assert len(done) == 20 == len(keys)
    assert res.dsr["n_trials"] == 20


def test_deflated_sharpe_counts_distinct_parameter_sets(tmp_path):
    """Item 12: a parameter set that ran twice is one trial of the search in the DSR."""
    url = study_storage_url(tmp_path)
    kw = dict(sampler="grid", storage=url, study_name="d", workers=1, run_backtest=fake_run,
              quiet=True)  # fmt: skip
    space = ["fast=10:30:10", "slow=100:140:20"]  # 3 x 3 = 9 points
    first = optimize(hourly_bars(5), FakeConfig(), space, **kw)
    assert first.dsr["n_trials"] == 9
    study = optuna.load_study(study_name="d", storage=url)
    twin = study.trials[0]  # as an earlier version would: the same point run once more
    study.add_trial(optuna.trial.create_trial(
        params=twin.params, distributions=twin.distributions, value=twin.value,
        user_attrs=twin.user_attrs))  # fmt: skip
    again = optimize(hourly_bars(5), FakeConfig(), space, trials=10, **kw)
    assert again.n_complete == 10 and again.dsr["n_trials"] == 9


def test_huge_integer_range_is_sampled_without_building_it():
    """Item 14: fast=1:1000000000 with 5 trials (before: MemoryError building the grid)."""
    space = ["fast=1:1000000000", "slow=2000000000:2000000010"]
    r = parse_space(space)["fast"]
    assert len(r.grid()) == 1_000_000_000 and r.grid()[-1] == 1_000_000_000
    kw = dict(trials=5, workers=1, run_backtest=fake_run, quiet=True, overfitting=False,
              min_trades=0)  # fmt: skip
    tpe = optimize(hourly_bars(3), FakeConfig(), space, seed=1, **kw)
    assert tpe.n_complete + tpe.n_infeasible == 5
    grid = optimize(hourly_bars(3), FakeConfig(), space, sampler="grid", **kw)
    # a grid walks the points in order: fast = 1, then slow = 2e9 .. 2e9 + 4
    assert grid.trials["param_fast"].tolist() == [1] * 5
    assert grid.trials["param_slow"].tolist() == [2_000_000_000 + i for i in range(5)]


def test_cli_range_typo_states_the_space_syntax(tmp_path, capsys):
    """Item 14: --space fast=10-100 (before: "no feasible trial")."""
    from m2k_bt.cli.backtest import main

    data = _csv(tmp_path, n=300)
    assert main(["optimize", "--data", data, "--lenient", "--space", "fast=10-100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "name=lo:hi:step or name=a,b,c" in err and "fast=10-100" in err


def _cli_argv(tmp_path, out) -> list[str]:
    return ["optimize", "--data", _csv(tmp_path), "--lenient", "--sizer", "fixed",
            "--space", "fast=5:10:5", "slow=20", "--sampler", "grid", "--workers", "1",
            "--min-trades", "0", "--out", str(out), "--quiet"]  # fmt: skip


def test_killed_while_writing_trials_csv_leaves_no_partial_file(tmp_path):
    """Item 8: a kill while trials.csv is written (before: a 0-byte trials.csv beside the
    previous optimize.json). Now: no partial file, and no optimize.json claims the run."""
    import signal
    import subprocess
    import sys

    from servers import ROOT, child_env

    from m2k_bt.cli.backtest import main

    out = tmp_path / "opt"
    argv = _cli_argv(tmp_path, out)
    assert main(argv) == 0  # a complete earlier run
    cmd = [sys.executable, str(ROOT / "run_backtest.py"), *argv]
    r = subprocess.run(cmd, env=child_env(M2K_BT_TEST_KILL_BEFORE="trials.csv"), timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert not (out / "trials.csv").exists() and not (out / "optimize.json").exists()
    left = {p.name for p in out.iterdir() if not p.name.startswith(".")}  # hidden: the temp
    assert left <= {"study.db", "study.db-wal", "study.db-shm"}  # the study, resumable
    assert main(argv) == 0  # resumes
    assert len(pd.read_csv(out / "trials.csv")) == 2


def test_symlink_planted_in_out_is_not_followed(tmp_path):
    """Item 8: trials.csv and optimize.json as symlinks to a file outside --out."""
    from m2k_bt.cli.backtest import main

    out = tmp_path / "opt"
    out.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    for name in ("trials.csv", "optimize.json"):
        (out / name).symlink_to(victim)
    assert main(_cli_argv(tmp_path, out)) == 0
    assert victim.read_text() == "keep me"
    for name in ("trials.csv", "optimize.json"):
        assert (out / name).is_file() and not (out / name).is_symlink()


def test_second_optimize_into_a_locked_out_refuses_in_one_line(tmp_path, capsys):
    """Item 9: two optimize runs on one --out (before: they failed each other's trials)."""
    import subprocess
    import sys

    from servers import child_env

    from m2k_bt.cli.backtest import main

    out = tmp_path / "opt"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from m2k_bt.outputs import OutputFolder\n"
         f"with OutputFolder({str(out)!r}):\n print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(_cli_argv(tmp_path, out)) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "in use by another run" in err
        assert not (out / "study.db").exists()  # refused before touching the study
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- issue 12: batches, writes


def test_a_new_trial_waits_for_a_lower_numbered_one_still_drawing(tmp_path):
    """Regression (seen in CI as a flaky two-process TPE test): process A creates trial 0,
    process B creates trial 1 and draws the same point before A has written its parameters;
    B's duplicate check saw nothing and both ran the point. B now waits for A's draw, sees
    the point taken by the lower number and gives up its trial."""
    import threading

    from m2k_bt.optimize.claims import StudyPlan, claim, open_study
    from m2k_bt.optimize.storage import storage_for

    url = f"sqlite:///{tmp_path / 's.db'}"
    space = parse_space(["fast=10", "slow=100"])  # one point: B can only draw A's
    plan = StudyPlan(url=url, name="race", space=space, sampler="tpe", target=5, seed=1,
                 parallel=True, identity="b")
    study, _ = open_study(plan, "maximize", None)
    a = study._storage.create_new_trial(study._study_id)  # A: RUNNING, no parameters yet

    def a_draws():  # A's parameters arrive (as a queued trial's: its fixed_params)
        storage_for(url).set_trial_system_attr(a, "fixed_params", {"fast": 10, "slow": 100})

    timer = threading.Timer(0.3, a_draws)
    timer.start()
    got = claim(study, plan, np.random.default_rng(0))
    timer.join()
    # B's trial (and every redraw) was the duplicate of A's: nothing left for B to run
    assert got is None
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials if not is_discarded(t)] == ["RUNNING"]  # A's only


def test_batch_claims_several_trials_and_runs_each_once():
    bars = hourly_bars(5)
    space = ["fast=10:40:10", "slow=100:200:50"]
    res = optimize(bars, FakeConfig(), space, sampler="grid", workers=1, batch=5,
                   run_backtest=fake_run, quiet=True, overfitting=False)
    assert res.n_complete == 12 and res.settings["batch"] == 5
    keys = sorted(zip(res.trials["param_fast"], res.trials["param_slow"]))
    assert keys == [(f, s) for f in (10, 20, 30, 40) for s in (100, 150, 200)]
    with pytest.raises(ConfigError, match="--batch must be a whole number >= 1"):
        optimize(bars, FakeConfig(), space, batch=0, run_backtest=fake_run)


def test_evaluate_batch_is_evaluate_params_for_each():
    from m2k_bt.optimize import evaluate_batch

    bars = hourly_bars(3)
    points = [{"fast": 10, "slow": 100}, {"fast": 30, "slow": 120}, {"fast": 50, "slow": 40}]
    got = evaluate_batch(bars, FakeConfig(), points, "sharpe", 1, fake_run)
    want = [evaluate_params(bars, FakeConfig(), p, "sharpe", 1, fake_run) for p in points]
    for g, w in zip(got, want):
        g["attrs"].pop("elapsed", None)
        w["attrs"].pop("elapsed", None)
    assert got == want and got[2]["infeasible"].startswith("constraint")


def test_kernel_engine_defaults_to_one_worker_in_process():
    from m2k_bt.engine import BacktestConfig

    bars = make_bars(1500, seed=2)
    res = optimize(bars, BacktestConfig(strategy="sma", sizer="fixed"),
                   ["fast=5:10:5", "slow=20"], sampler="grid", min_trades=0, quiet=True,
                   overfitting=False)
    assert res.settings["workers"] == 1 and res.settings["engine"]["engine"] == "kernel"
    fake = optimize(bars, FakeConfig(), ["fast=10", "slow=100"], sampler="grid",
                    run_backtest=fake_run, quiet=True, overfitting=False)
    import os

    assert fake.settings["workers"] == (os.cpu_count() or 1)  # a trial of its own: per core


def _disk_trials(out):
    from m2k_bt.optimize.storage import storage_for

    names = optuna.get_all_study_names(storage_for(study_storage_url(out)))
    if not names:
        return []  # the file exists (its tables), the study is not written yet
    study = optuna.load_study(study_name=names[0], storage=storage_for(study_storage_url(out)))
    return study.get_trials(deepcopy=False)


def test_a_private_study_runs_in_memory_and_is_written_in_batches(tmp_path, monkeypatch):
    """The default study.db of --out is this process's alone: trials run on an in-memory
    study and reach the file every FLUSH_SECONDS and at the end, in one batch each."""
    import m2k_bt.optimize.writebehind as behind

    seen, where = [], [tmp_path / "o"]

    def watching_run(bars, config):
        out = where[0]
        seen.append(sum(t.state.is_finished() for t in _disk_trials(out))
                    if (out / "study.db").exists() else 0)
        return fake_run(bars, config)

    monkeypatch.setattr(behind, "FLUSH_SECONDS", 3600.0)  # only the final write
    res = optimize(hourly_bars(5), FakeConfig(), ["fast=10:40:10", "slow=100:200:50"],
                   sampler="grid", workers=1, out=tmp_path / "o", run_backtest=watching_run,
                   quiet=True, overfitting=False)
    assert seen == [0] * 12  # nothing written while the study ran
    disk = [t for t in _disk_trials(tmp_path / "o") if not is_discarded(t)]
    assert [t.number for t in disk] == list(res.trials["number"])
    assert [t.value for t in disk] == list(res.trials["value"])
    assert [t.params for t in disk] == [
        {"fast": f, "slow": s} for f, s in zip(res.trials["param_fast"], res.trials["param_slow"])
    ]
    assert disk[0].user_attrs["backtest"]["returns"]  # DSR/PBO inputs are kept on disk too

    seen.clear()
    where[0] = tmp_path / "o2"
    monkeypatch.setattr(behind, "FLUSH_SECONDS", 0.0)  # a write after every batch
    optimize(hourly_bars(5), FakeConfig(), ["fast=10:40:10", "slow=100:200:50"],
             sampler="grid", workers=1, out=tmp_path / "o2", run_backtest=watching_run,
             quiet=True, overfitting=False)
    # the first write creates study.db; from then on trial k sees the k finished before it
    assert seen[1:] == list(range(1, 12))


def test_an_interrupted_private_study_keeps_what_finished_and_resumes(tmp_path):
    calls = []

    def interrupted_run(bars, config):
        calls.append(config.params)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return fake_run(bars, config)

    space = ["fast=10:40:10", "slow=100:200:50"]
    with pytest.raises(KeyboardInterrupt):
        optimize(hourly_bars(5), FakeConfig(), space, sampler="grid", workers=1,
                 out=tmp_path / "o", run_backtest=interrupted_run, quiet=True,
                 overfitting=False)
    disk = _disk_trials(tmp_path / "o")
    assert [t.state.name for t in disk] == ["COMPLETE"] * 4 + ["FAIL"]
    # resumed from the file (in place: the study exists): the 8 left and the failed one
    res = optimize(hourly_bars(5), FakeConfig(), space, sampler="grid", workers=1,
                   out=tmp_path / "o", run_backtest=fake_run, quiet=True, overfitting=False)
    assert res.n_complete == 12
    done = sorted(zip(res.trials["param_fast"], res.trials["param_slow"], res.trials["state"]))
    assert [(f, s) for f, s, st in done if st == "COMPLETE"] == [
        (f, s) for f in (10, 20, 30, 40) for s in (100, 150, 200)]


def test_a_sqlite_storage_is_made_once_per_file_and_again_when_it_is_replaced(tmp_path):
    from m2k_bt.optimize.storage import storage_for

    url = f"sqlite:///{tmp_path / 's.db'}"
    first = storage_for(url)
    assert storage_for(url) is first  # walk-forward's 18 opens pay one schema check
    (tmp_path / "s.db").unlink()
    (tmp_path / "s.db-wal").unlink(missing_ok=True)
    (tmp_path / "s.db-shm").unlink(missing_ok=True)
    again = storage_for(url)
    assert again is not first
    assert optuna.get_all_study_names(again) == []  # a working storage on the new file


def test_any_trial_of_a_study_is_rebuilt_in_full_and_proven_the_same(rth_csv, tmp_path,
                                                                     capsys):
    """A study keeps only each trial's figures; --from-study DIR --trial N runs trial N as a
    full backtest with every output, and the run must end where the trial did."""
    from conftest import one_line_exit_2

    from m2k_bt.cli.backtest import main

    study = tmp_path / "study"
    assert main(["optimize", "--data", rth_csv, "--sampler", "grid", "--space", "fast=5:15:5",
                 "slow=30:60:30", "--sizer", "fixed", "--min-trades", "0", "--workers", "1",
                 "--out", str(study), "--quiet"]) == 0
    trials = pd.read_csv(study / "trials.csv").set_index("number")
    for number in (0, 4):
        out = tmp_path / f"trial{number}"
        assert main(["--data", rth_csv, "--sizer", "fixed", "--from-study", str(study),
                     "--trial", str(number), "--out", str(out), "--quiet", "--no-plot"]) == 0
        report = json.loads((out / "report.json").read_text())
        params = report["inputs"]["strategy"]["params"]
        assert (params["fast"], params["slow"]) == (trials.loc[number, "param_fast"],
                                                    trials.loc[number, "param_slow"])
        net = report["results"]["net_profit"]
        assert net == pytest.approx(trials.loc[number, "net_profit"], abs=0.005)
        assert len(pd.read_csv(out / "trades.csv")) >= trials.loc[number, "trades"]
    capsys.readouterr()
    base = ["--data", rth_csv, "--from-study", str(study), "--out", str(tmp_path / "x"),
            "--quiet", "--no-plot"]
    # other settings than the study's: not the trial, said with both numbers
    one_line_exit_2([*base, "--trial", "4", "--sizer", "fixed", "--cash", "30000"], capsys,
                    "in the study but at")
    one_line_exit_2([*base, "--trial", "99"], capsys, "the study has trials 0 to 5")
    one_line_exit_2([*base, "--trial", "4", "--param", "fast=3"], capsys,
                    "--param fast is set by --trial 4")
    one_line_exit_2(["--data", rth_csv, "--from-study", str(tmp_path), "--trial", "1"],
                    capsys, "no study.db there")
    one_line_exit_2(["--data", rth_csv, "--trial", "1"], capsys,
                    "--from-study DIR and --trial N go together")
