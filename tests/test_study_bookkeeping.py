"""Issue 23, studies at the speed of the loop: a study's bookkeeping per trial does not grow
with the study. Claims read only the trials added since the last claim, progress is not
counted per trial (not at all when quiet), the write-behind writes a batch of trials in a
few statements and no deep copies, and the trial loop runs numpy's BLAS on one thread.

Counted, never timed (speed is measured in ``benchmarks/bench_optimize.py``)."""

from __future__ import annotations

import copy

import numpy as np
import optuna
import pandas as pd
import pytest
from sqlalchemy import event
from test_optimize import FakeConfig, fake_run, hourly_bars

import m2k_bt.optimize.claims as claims
import m2k_bt.optimize.drivers as drivers
import m2k_bt.optimize.writebehind as behind
from m2k_bt.optimize import optimize, study_storage_url
from m2k_bt.optimize.claims import StudyPlan, claim, is_discarded
from m2k_bt.optimize.space import parse_space
from m2k_bt.optimize.storage import storage_for
from m2k_bt.optimize.threads import blas_threads
from m2k_bt.optimize.trialindex import TrialIndex

SMALL = ["fast=10:40:10", "slow=100:200:50"]  # 4 x 3 = 12 points
LARGE = ["fast=10:100:10", "slow=125:225:25"]  # 10 x 5 = 50 points


class _Reads:
    """Counts ``get_all_trials`` calls (every trial of the study) and the trial rows an RDB
    storage reads (``RDBStorage._get_trials``)."""

    def __init__(self, monkeypatch):
        self.calls, self.rows = 0, 0
        for cls in (optuna.storages.InMemoryStorage, optuna.storages._CachedStorage):
            monkeypatch.setattr(cls, "get_all_trials", self._count(cls.get_all_trials))
        rdb = optuna.storages.RDBStorage
        real = rdb._get_trials

        def rows(storage, *args, **kwargs):
            out = real(storage, *args, **kwargs)
            self.rows += len(out)
            return out

        monkeypatch.setattr(rdb, "_get_trials", rows)

    def _count(self, fn):
        def inner(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)
        return inner


def _grid(space, **kwargs):
    return optimize(hourly_bars(5), FakeConfig(), space, sampler="grid", workers=1,
                    run_backtest=fake_run, quiet=True, overfitting=False, **kwargs)


def test_claiming_grid_points_in_memory_does_not_read_every_trial_per_trial(monkeypatch):
    """In memory (no --out): reading the whole study happens a fixed number of times (set-up,
    the end, the result), whatever the number of trials: no claim reads it."""
    counts = []
    for space in (SMALL, LARGE):
        with monkeypatch.context() as m:
            reads = _Reads(m)
            res = _grid(space)
        counts.append(reads.calls)
        assert res.n_complete == len(res.trials)
    assert counts[0] == counts[1], counts


def test_claiming_grid_points_on_sqlite_reads_each_trial_a_few_times(tmp_path, monkeypatch):
    """On a shared storage (--storage): the calls that read the whole study do not grow
    with it, and the trial rows read grow linearly (each claim reads only new trials; before,
    every claim re-read the queued grid: rows grew with the square of the grid)."""
    calls, rows = [], []
    for i, space in enumerate((SMALL, LARGE)):
        url = f"sqlite:///{tmp_path / f's{i}.db'}"
        with monkeypatch.context() as m:
            reads = _Reads(m)
            res = _grid(space, storage=url)
        calls.append(reads.calls)
        rows.append(reads.rows)
        assert res.n_complete == len(res.trials)
    assert calls[0] == calls[1], calls
    assert rows[1] < 8 * 50, rows  # a handful of reads per trial, not one per trial per claim


def test_a_queued_point_held_by_a_lower_trial_is_discarded_from_the_index():
    """Two queued trials with one parameter set (two processes queued it): the lower number
    runs, the other is discarded when claimed; the index reads the other holder's state back
    only for that set."""
    space = parse_space(["fast=10:20:10", "slow=100"])
    plan = StudyPlan(url=None, name="dup", space=space, sampler="grid", target=3, seed=None)
    study = optuna.create_study(direction="maximize")
    for point in ({"fast": 10, "slow": 100}, {"fast": 20, "slow": 100},
                  {"fast": 10, "slow": 100}):
        study.enqueue_trial(point)
    index = TrialIndex(study, plan.names)
    rng = np.random.default_rng(0)
    got = [claim(study, plan, rng, index) for _ in range(3)]
    assert [g[1] for g in got[:2]] == [{"fast": 10, "slow": 100}, {"fast": 20, "slow": 100}]
    assert got[2] is None
    trials = study.get_trials(deepcopy=False)
    assert [is_discarded(t) for t in trials] == [False, False, True]
    # each trial read once; then trial 2's state when trial 0 is claimed and trial 0's when
    # trial 2 is (the two holders of one set); trial 1's set has one holder: nothing read
    assert index.reads == 3 + 2


def test_write_behind_writes_a_batch_in_a_few_statements_without_deep_copies(tmp_path,
                                                                             monkeypatch):
    """The private study.db of --out gets its finished trials in one transaction a flush:
    the same handful of statements for 12 trials or 50, and no deep copy of any trial."""
    monkeypatch.setattr(behind, "FLUSH_SECONDS", 3600.0)  # one flush, at the end
    statements, copies = [], [0]
    real_write, real_deepcopy = behind.write_trials, copy.deepcopy

    def counting_write(storage, study_id, trials):
        n = [0]

        def count(*_args):
            n[0] += 1

        event.listen(storage.engine, "before_cursor_execute", count)
        copies[0] = 0

        def counting_deepcopy(*args, **kwargs):
            copies[0] += 1
            return real_deepcopy(*args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(copy, "deepcopy", counting_deepcopy)
            try:
                real_write(storage, study_id, trials)
            finally:
                event.remove(storage.engine, "before_cursor_execute", count)
        statements.append((len(trials), n[0], copies[0]))

    monkeypatch.setattr(behind, "write_trials", counting_write)
    for i, space in enumerate((SMALL, LARGE)):
        res = _grid(space, out=tmp_path / f"o{i}")
        assert res.n_complete == len(res.trials)
    (small, n_small, c_small), (large, n_large, c_large) = statements
    assert (small, large) == (12, 50)
    # trials, their ids, values, params, user attributes, system attributes
    assert n_small == n_large <= 8, statements
    assert c_small == c_large == 0
    disk = optuna.load_study(study_name="m2k-fake",
                             storage=storage_for(study_storage_url(tmp_path / "o1")))
    mem = {r.number: ({"fast": r.param_fast, "slow": r.param_slow},
                      None if pd.isna(r.value) else r.value, r.state)
           for r in res.trials.itertuples()}
    for t in disk.get_trials(deepcopy=False):
        assert (t.params, t.value, t.state.name) == mem[t.number], t.number
        assert t.user_attrs["backtest"]["returns"]
        assert "fixed_params" in t.system_attrs


def test_quiet_study_never_counts_its_trials_and_progress_is_not_per_trial(monkeypatch):
    """quiet: no progress reports and no counting of the study's trials for them; else a
    report every PROGRESS_SECONDS (none within an hour here) and one when the trials are
    done, not a count of all trials after each trial."""
    calls, seen = [0], []
    real = claims.counts

    def counting(study):
        calls[0] += 1
        return real(study)

    monkeypatch.setattr(drivers, "counts", counting)
    _grid(LARGE, progress=lambda done, total: seen.append((done, total)))  # quiet=True
    assert calls[0] == 0 and seen == []
    monkeypatch.setattr(drivers, "PROGRESS_SECONDS", 3600.0)
    optimize(hourly_bars(5), FakeConfig(), LARGE, sampler="grid", workers=1,
             run_backtest=fake_run, overfitting=False,
             progress=lambda done, total: seen.append((done, total)))
    assert calls[0] == 1 and seen == [(50, 50)]


def test_the_trial_loop_runs_blas_on_one_thread(monkeypatch):
    """Inside the study's trial loop numpy's BLAS has one thread; after it, what it had."""
    before = blas_threads()
    if not before:
        pytest.skip("no OpenBLAS found in this process")
    inside = []

    def run(bars, config):
        inside.append(blas_threads())
        return fake_run(bars, config)

    optimize(hourly_bars(5), FakeConfig(), SMALL, sampler="grid", workers=1,
             run_backtest=run, quiet=True, overfitting=False)
    assert inside and all(set(n) == {1} for n in inside)
    assert blas_threads() == before


def dies_once_run(bars, config):
    """fake_run, but the backtester process running ``fast=20, slow=150`` first dies as by
    kill -9 (once: a marker file at ``$M2K_TEST_DIE_ONCE`` says it did; never the study's own
    process, which runs trials too while its backtesters start)."""
    import multiprocessing
    import os
    from pathlib import Path

    marker = Path(os.environ["M2K_TEST_DIE_ONCE"])
    if (config.params == {"fast": 20, "slow": 150} and not marker.exists()
            and multiprocessing.parent_process() is not None):
        marker.write_text("died")
        os._exit(9)
    return fake_run(bars, config)


def test_two_backtester_processes_one_killed_every_point_once(tmp_path, monkeypatch):
    """A fresh study in --out with two workers: this process claims and records in memory,
    two backtester processes run the batches. One is killed holding a batch: its trials are
    failed and re-queued once, the grid completes with every point once, the note says so,
    and study.db holds what the result holds."""
    monkeypatch.setenv("M2K_TEST_DIE_ONCE", str(tmp_path / "died"))
    # this process runs no trial of its own while the backtesters start (it would run all 12
    # of these quick ones before they are up): the backtesters get every batch
    monkeypatch.setattr(drivers, "STARTING_BATCH", 0)
    res = optimize(hourly_bars(5), FakeConfig(), SMALL, sampler="grid", workers=2, batch=2,
                   out=tmp_path / "o", run_backtest=dies_once_run, quiet=True,
                   overfitting=False)
    assert (tmp_path / "died").exists()  # batch 3 of 2 trials: the second backtester's
    assert res.n_complete == 12
    assert any("died" in n and "re-run" in n for n in res.notes), res.notes
    done = sorted((r.param_fast, r.param_slow) for r in res.trials.itertuples()
                  if r.state == "COMPLETE")
    assert done == sorted((f, s) for f in (10, 20, 30, 40) for s in (100, 150, 200))
    disk = optuna.load_study(study_name="m2k-fake",
                             storage=storage_for(study_storage_url(tmp_path / "o")))
    kept = [t for t in disk.get_trials(deepcopy=False) if not is_discarded(t)]
    assert sorted((t.params["fast"], t.params["slow"]) for t in kept
                  if t.state.name == "COMPLETE") == done
    assert sum(t.state.name == "FAIL" for t in kept) >= 1  # the killed batch's trials


def pid_run(bars, config):
    """fake_run, writing which process ran which point into ``$M2K_TEST_PIDS``."""
    import os
    from pathlib import Path

    p = config.params
    (Path(os.environ["M2K_TEST_PIDS"]) / f"{p['fast']}-{p['slow']}").write_text(
        str(os.getpid()))
    return fake_run(bars, config)


def test_the_study_runs_trials_while_its_backtesters_start(tmp_path, monkeypatch):
    """Starting a backtester blocks until it has imported the program and read the bars (a
    second or so): the starts run in a thread, and this process runs trials meanwhile, so a
    small study is done before they are up; every point once all the same."""
    import os

    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("M2K_TEST_PIDS", str(pids))
    res = optimize(hourly_bars(5), FakeConfig(), SMALL, sampler="grid", workers=2,
                   out=tmp_path / "o", run_backtest=pid_run, quiet=True, overfitting=False)
    assert res.n_complete == 12
    ran = {f.name: f.read_text() for f in pids.iterdir()}
    assert sorted(ran) == sorted(f"{f}-{s}" for f in (10, 20, 30, 40) for s in (100, 150, 200))
    assert str(os.getpid()) in ran.values()  # this process ran some of them itself


def slow_run(bars, config):
    """fake_run taking 20 ms, so that this process waits for its backtesters."""
    import time

    time.sleep(0.02)
    return fake_run(bars, config)


def test_encoded_attributes_are_a_dict_with_their_json_kept_through_a_pipe():
    """A backtester encodes a trial's attributes (``EncodedAttrs``); the writer takes that
    text instead of encoding them again, and a plain dict is encoded as before."""
    import json
    import pickle

    attrs = {"metrics": {"sharpe": 0.5, "trades": 3}, "returns": {"2024-01-02": 0.01}}
    enc = pickle.loads(pickle.dumps(behind.EncodedAttrs(attrs)))  # as sent by a Pipe
    assert enc == attrs and isinstance(enc, dict)
    assert enc.json == json.dumps(attrs)
    assert behind._json(enc) is enc.json
    assert behind._json(attrs) == json.dumps(attrs)


def test_two_backtesters_trials_are_written_while_they_run(tmp_path, monkeypatch):
    """With backtester processes, this process writes finished trials to study.db whenever
    it would otherwise wait for them (IDLE_FLUSH_TRIALS at least), not all at the end; the
    trials the backtesters ran arrive with their attributes encoded, and study.db holds
    what the result holds."""
    monkeypatch.setattr(behind, "FLUSH_SECONDS", 3600.0)  # no timed flush
    monkeypatch.setattr(behind, "IDLE_FLUSH_TRIALS", 4)
    monkeypatch.setattr(drivers, "STARTING_BATCH", 0)
    writes = []
    real_write = behind.write_trials

    def recording_write(storage, study_id, trials):
        writes.append([type(t.user_attrs.get("backtest")) for t in trials])
        return real_write(storage, study_id, trials)

    monkeypatch.setattr(behind, "write_trials", recording_write)
    res = optimize(hourly_bars(5), FakeConfig(), LARGE, sampler="grid", workers=2, batch=2,
                   out=tmp_path / "o", run_backtest=slow_run, quiet=True, overfitting=False)
    assert res.n_complete == 50
    assert len(writes) >= 3, writes  # written as they finished, then the rest at the end
    kinds = [k for w in writes for k in w]
    assert kinds.count(behind.EncodedAttrs) >= 40, kinds  # all but the first batch's
    disk = optuna.load_study(study_name="m2k-fake",
                             storage=storage_for(study_storage_url(tmp_path / "o")))
    mem = {r.number: ({"fast": r.param_fast, "slow": r.param_slow}, r.value, r.state,
                      r.net_profit, r.trades, r.elapsed_s) for r in res.trials.itertuples()}
    kept = [t for t in disk.get_trials(deepcopy=False) if not is_discarded(t)]
    assert len(kept) == 50
    for t in kept:  # the stored JSON reads back as the attributes the result was made from
        attrs = t.user_attrs["backtest"]
        assert (t.params, t.value, t.state.name, attrs["metrics"]["net_profit"],
                attrs["metrics"]["trades"], attrs["elapsed"]) == mem[t.number], t.number
        assert attrs["returns"]
