"""Scale-out against real servers: several processes share one study, each trial runs once.

PostgreSQL is a throwaway cluster started for the session (tests/servers.py); Dask is a real
``dask scheduler`` with two ``dask worker`` processes. The processes are real too: the driver
``tests/scaleout_driver.py`` (``optimize`` with a backtest stand-in that takes 0.3 s, so that
a kill lands inside a trial) or ``run_backtest.py optimize`` itself where its output is what
is tested. Heartbeats are 1 s here (a silent trial is dead after 3 s).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from servers import PASSWORD, TESTS, DaskCluster, PostgresServer, child_env, pg_bin

optuna = pytest.importorskip("optuna")

GRID = [(f, s) for f in (10, 20, 30, 40) for s in (100, 150, 200)]  # the driver's 12 points


@pytest.fixture(scope="module")
def pg():
    if not (pg_bin("initdb") and pg_bin("pg_ctl")):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    server = PostgresServer()
    yield server
    server.close()


SLOW = {"M2K_TEST_SLOW": "20,150:3"}  # the trial a kill lands in takes 3 s


def driver(*args: str, delay: float = 0.3, stdin=None, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TESTS / "scaleout_driver.py"), *args],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(M2K_TEST_DELAY=delay, **env),
    )  # fmt: skip


def finish(procs, timeout: float = 120) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


_STORAGES: dict = {}  # one engine (connection pool) per database for the whole module


def trials_of(url: str, name: str = "scale", keep_discarded: bool = False):
    from m2k_bt.optimize.claims import is_discarded
    from m2k_bt.optimize.storage import storage_for

    if url not in _STORAGES:
        _STORAGES[url] = storage_for(url)
    study = optuna.load_study(study_name=name, storage=_STORAGES[url])
    return [t for t in study.get_trials(deepcopy=False) if keep_discarded or not is_discarded(t)]


def wait_complete(url: str, n: int, name: str = "scale", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sum(t.state.name == "COMPLETE" for t in trials_of(url, name)) >= n:
                return
        except (KeyError, Exception):  # noqa: BLE001 - study not created yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"{n} complete trials never appeared")


def wait_slow_trial(url: str, name: str = "scale", timeout: float = 60) -> int:
    """Until the slow trial (fast=20, slow=150) runs; returns the pid that holds it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = trials_of(url, name)
        except Exception:  # noqa: BLE001 - study not created yet
            trials = []
        for t in trials:
            if t.state.name == "RUNNING" and t.params == {"fast": 20, "slow": 150}:
                return int(t.system_attrs["m2k_owner"].rpartition(":")[2])
        time.sleep(0.05)
    raise AssertionError("the slow trial never ran")


def assert_every_point_once(trials, points=GRID) -> None:
    states = Counter(t.state.name for t in trials)
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    done = [(t.params["fast"], t.params["slow"]) for t in trials if t.state.name == "COMPLETE"]
    assert sorted(done) == sorted(points)  # each point exactly once, none missing


def owners(trials) -> Counter:
    return Counter(t.system_attrs.get("m2k_owner") for t in trials if t.state.name == "COMPLETE")


# ---------------------------------------------------------------- PostgreSQL


def test_three_processes_share_one_grid_study_each_trial_once(pg):
    url = pg.fresh_db()
    # started in the same instant on a fresh database: one creates the study, two join
    procs = [driver("--storage", url, "--sampler", "grid") for _ in range(3)]
    results = finish(procs)
    assert [r[0] for r in results] == [0, 0, 0], [r[2] for r in results]
    trials = trials_of(url)
    assert_every_point_once(trials)
    assert len(trials) == 12  # no trial queued twice, none failed
    discarded = [t for t in trials_of(url, keep_discarded=True) if t not in trials]
    assert discarded == []  # the grid was queued once: nothing to discard
    assert len(owners(trials)) == 3  # every process ran some of the 12


def kill_the_slow_trials_process(url: str, procs) -> tuple[list, list]:
    """Kill -9 the process running the slow trial and let the others finish (exit 0, every
    point once); returns the trials it held RUNNING when killed and the study's trials."""
    victim = next(p for p in procs if p.pid == wait_slow_trial(url))
    held = [t for t in trials_of(url) if t.state.name == "RUNNING"
            and t.system_attrs.get("m2k_owner", "").endswith(f":{victim.pid}")]
    victim.send_signal(signal.SIGKILL)  # dies holding what it claimed
    victim.wait()
    (rc, out, err), = finish([p for p in procs if p is not victim])
    assert rc == 0, err
    trials = trials_of(url)
    assert_every_point_once(trials)
    return held, trials


def failed_and_each_retried_once(trials) -> list:
    """The FAIL trials, each re-queued once with its parameters (a trial a kill caught while
    it was being claimed has them only as queued) and run; returns them."""
    from m2k_bt.optimize.claims import full_params

    failed = [t for t in trials if t.state.name == "FAIL"]
    for t in failed:
        retry = [x for x in trials if x.user_attrs.get("retry_of") == t.number]
        assert len(retry) == 1 and retry[0].params == full_params(t, ["fast", "slow"])
        assert retry[0].state.name == "COMPLETE"
    return failed


def test_sigkill_one_process_others_finish_every_point_once(pg):
    url = pg.fresh_db()
    procs = [driver("--storage", url, "--sampler", "grid", **SLOW) for _ in range(2)]
    _, trials = kill_the_slow_trials_process(url, procs)
    failed = failed_and_each_retried_once(trials)
    assert len(failed) == 1  # the killed trial, re-queued once with both its parameters
    assert failed[0].params == {"fast": 20, "slow": 150}


def test_blocks_two_processes_one_killed_holding_a_block_every_point_once(pg):
    """Issue 23: each process claims a block of trials (``--batch 4``), runs the block and
    records it. One is killed outright holding a block (its slow trial running, the rest of
    the block run or waiting, none recorded): every trial of the block is failed and
    re-queued once by the survivor, and the grid ends with every point once."""
    url = pg.fresh_db()
    procs = [driver("--storage", url, "--sampler", "grid", "--batch", "4", **SLOW)
             for _ in range(2)]
    held, trials = kill_the_slow_trials_process(url, procs)
    failed = failed_and_each_retried_once(trials)
    assert 1 <= len(failed) <= 4 and len(held) >= 1
    assert {t.number for t in held} <= {t.number for t in failed}  # its whole block


def test_tpe_across_two_processes_shares_the_trials_cap_and_repeats_no_set(pg):
    url = pg.fresh_db()
    args = ["--storage", url, "--sampler", "tpe", "--trials", "10", "--seed", "3",
            "--space", "fast=10:40:10", "slow=100:200:50"]  # 12 points: repeats are likely
    procs = [driver(*args, delay=0.1) for _ in range(2)]
    assert [r[0] for r in finish(procs)] == [0, 0]
    trials = trials_of(url)
    assert all(t.state.name == "COMPLETE" for t in trials)
    keys = [(t.params["fast"], t.params["slow"]) for t in trials]
    # --trials 10 is the study's: 2 processes together ran 10 (not 2 x 10), all distinct
    # although both were given --seed 3
    assert len(keys) == len(set(keys)) == 10
    assert len(owners(trials)) == 2


def test_wrong_password_is_one_masked_line_exit_2(pg, tmp_path, capsys):
    from m2k_bt.cli.backtest import main

    url = pg.url(password="not-the-password", db="postgres")
    assert main(["optimize", "--storage", url, "--out", str(tmp_path / "o"), "--trials", "2",
                 "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "not-the-password" not in err and "m2k:***@127.0.0.1" in err
    assert "password authentication failed" in err


def test_server_stopped_mid_study_one_line_exit_2_then_resume_completes(pg, monkeypatch):
    url = pg.fresh_db()
    args = ["--storage", url, "--sampler", "grid", "--reconnect", "2"]
    proc = driver(*args)
    wait_complete(url, 2)
    pg.stop("immediate")
    try:
        rc, out, err = finish([proc])[0]
    finally:
        pg.start()
    assert rc == 2
    line = err.strip()
    assert line.count("\n") == 0 and "lost the connection" in line, line
    assert PASSWORD not in line and "run the same command again" in line
    # resume (here, in this process): the trial the lost connection left RUNNING is re-run
    import scaleout_driver as d

    from m2k_bt.optimize import optimize

    monkeypatch.setenv("M2K_TEST_DELAY", "0")
    optimize(d.bars(), d.DriverConfig(), ["fast=10:40:10", "slow=100:200:50"], sampler="grid",
             storage=url, study_name="scale", workers=1, run_backtest=d.slow_run, quiet=True,
             overfitting=False, heartbeat=1)  # fmt: skip
    assert_every_point_once(trials_of(url))


@pytest.mark.parametrize("pause", [
    # Optuna takes a failed query of the study's trials for SQLite's limit on query variables
    # and logged a warning with the whole statement and its parameters (KB of [SQL: ...])
    ["--pause-at", "FROM trials", "--pause-at", "trials.study_id =", "--pause-after", "2"],
    # creating the study was not retried: Optuna's StorageInternalError, a 100-line traceback
    ["--pause-at", "INSERT INTO studies"],
], ids=["reading-trials", "creating-the-study"])
def test_server_stopped_at_an_exact_moment_one_line_exit_2_then_resume_completes(pg, pause,
                                                                                 monkeypatch):
    """Issue 24 item 16: the server stopped at a chosen SQL statement: the lost connection is
    one line and exit status 2, nothing else on stderr; the same command again completes."""
    url = pg.fresh_db()
    args = ["--storage", url, "--sampler", "grid", "--reconnect", "1"]
    proc = driver(*args, *pause, delay=0, stdin=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "paused"
        pg.stop("immediate")
        rc, out, err = finish([proc])[0]  # closes its stdin: the paused statement goes on
    finally:
        pg.start()
    assert rc == 2, err
    line = err.strip()
    assert line.count("\n") == 0 and "lost the connection" in line, err[:2000]
    assert "run the same command again" in line and PASSWORD not in err
    # resume (here, in this process, as the test above does: a second interpreter is slow)
    import scaleout_driver as d

    from m2k_bt.optimize import optimize

    monkeypatch.setenv("M2K_TEST_DELAY", "0")
    optimize(d.bars(), d.DriverConfig(), ["fast=10:40:10", "slow=100:200:50"], sampler="grid",
             storage=url, study_name="scale", workers=1, run_backtest=d.slow_run, quiet=True,
             overfitting=False, heartbeat=1)  # fmt: skip
    assert_every_point_once(trials_of(url))


def test_postgresql_url_works_as_written(pg, tmp_path, capsys):
    """``postgresql://`` (no +driver) through the command line, then --status."""
    from conftest import make_bars

    from m2k_bt.cli.backtest import main

    bars = make_bars(600, seed=2)
    bars.index = bars.index.tz_localize(None)
    data = tmp_path / "bars.csv"
    bars.to_csv(data)
    url = pg.fresh_db()
    assert url.startswith("postgresql://m2k:")
    assert main(["optimize", "--data", str(data), "--lenient", "--sizer", "fixed",
                 "--space", "fast=5:10:5", "slow=20:30:10", "--sampler", "grid",
                 "--min-trades", "0", "--workers", "1", "--storage", url, "--study-name", "cli",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["optimize", "--status", "--storage", url]) == 0
    printed = capsys.readouterr().out
    assert "study cli: 4/4 finished (4 complete, 0 infeasible; 4 distinct)" in printed
    assert "0 running, 0 queued, 0 failed" in printed and "best sharpe" in printed


def test_password_in_the_query_works_and_is_masked_in_optimize_json(pg, tmp_path, capsys):
    """Issue 24 item 12: ``?password=`` is a password too: never printed, never written."""
    import json

    from conftest import make_bars

    from m2k_bt.cli.backtest import main

    bars = make_bars(600, seed=2)
    bars.index = bars.index.tz_localize(None)
    data = tmp_path / "bars.csv"
    bars.to_csv(data)
    url = pg.fresh_db().replace(f":{PASSWORD}@", "@") + f"?password={PASSWORD}"
    out = tmp_path / "o"
    assert main(["optimize", "--data", str(data), "--lenient", "--sizer", "fixed",
                 "--space", "fast=5:10:5", "slow=20:30:10", "--sampler", "grid",
                 "--min-trades", "0", "--storage", url, "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr()
    assert PASSWORD not in printed.out + printed.err
    report = json.loads((out / "optimize.json").read_text())
    assert report["storage"].endswith("?password=***")
    assert all(PASSWORD not in p.read_text(errors="replace") for p in out.iterdir()
               if p.is_file() and p.suffix != ".db")
    wrong = url.replace(PASSWORD, "not-the-password")
    assert main(["optimize", "--storage", wrong, "--out", str(tmp_path / "w"), "--trials", "2",
                 "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "not-the-password" not in err and "password=***" in err, err


# ---------------------------------------------------------------- SQLite and Dask


def test_sqlite_pool_of_two_workers_one_killed_every_point_once(tmp_path):
    psutil = pytest.importorskip("psutil")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = driver("--storage", url, "--sampler", "grid", "--workers", "2", **SLOW)
    victim = psutil.Process(wait_slow_trial(url))
    assert victim.ppid() == proc.pid  # one of the driver's 2 worker processes
    victim.send_signal(signal.SIGKILL)
    rc, out, err = finish([proc])[0]
    assert rc == 0, err
    assert "died" in out  # the driver says a worker died and its trial was re-run
    trials = trials_of(url)
    assert_every_point_once(trials)
    assert sum(t.state.name == "FAIL" for t in trials) == 1


def test_dask_scheduler_and_two_workers_one_killed_mid_study(tmp_path):
    pytest.importorskip("distributed")
    cluster = DaskCluster(2, env={"M2K_TEST_DELAY": "0.3", **SLOW})
    try:
        url = f"sqlite:///{tmp_path / 'study.db'}"
        proc = driver("--storage", url, "--sampler", "grid", "--dask", cluster.address)
        wait_slow_trial(url)  # the driver holds it; a worker runs it
        cluster.kill_worker(0)  # whatever it ran is run again by the other worker
        rc, out, err = finish([proc])[0]
        assert rc == 0, err
        trials = trials_of(url)
        assert_every_point_once(trials)
        assert len(trials) == 12  # Dask re-ran the task; the study saw each trial once
    finally:
        cluster.close()


def test_dask_runs_a_batch_of_trials_per_task(tmp_path):
    """--batch 4 on 12 grid points: three tasks of four trials. Trials are claimed in grid
    order, so trials 0-3, 4-7 and 8-11 are one task each: each group ran in one worker
    process (with one trial per task the two workers would share a group of four)."""
    pytest.importorskip("distributed")
    cluster = DaskCluster(2, env={"M2K_TEST_DELAY": "0.05"})
    try:
        url = f"sqlite:///{tmp_path / 'study.db'}"
        proc = driver("--storage", url, "--sampler", "grid", "--dask", cluster.address,
                      "--batch", "4", delay=0.05)
        rc, out, err = finish([proc])[0]
        assert rc == 0, err
        trials = sorted(trials_of(url), key=lambda t: t.number)
        assert_every_point_once(trials)
        pids = [t.user_attrs["backtest"]["metrics"]["pid"] for t in trials]
        groups = [set(pids[i:i + 4]) for i in range(0, 12, 4)]
        assert all(len(g) == 1 for g in groups), pids
    finally:
        cluster.close()


def test_dask_on_the_runs_own_study_db_writes_it_behind(tmp_path):
    """With --out and no --storage the driver is the study's only user (Dask workers only run
    backtests): the study runs in memory and study.db gets every point once, written behind."""
    pytest.importorskip("distributed")
    from m2k_bt.optimize import study_storage_url

    cluster = DaskCluster(2, env={"M2K_TEST_DELAY": "0.05"})
    try:
        out = tmp_path / "o"
        proc = driver("--out", str(out), "--sampler", "grid", "--dask", cluster.address,
                      "--batch", "3", delay=0.05)
        rc, _, err = finish([proc])[0]
        assert rc == 0, err
        trials = trials_of(study_storage_url(out))
        assert_every_point_once(trials)
        assert len(trials) == 12
    finally:
        cluster.close()


def test_a_silent_trial_of_another_host_is_retried_after_its_heartbeat_stops(tmp_path,
                                                                             monkeypatch):
    """The heartbeat path (a process on another machine died): a RUNNING trial whose owner is
    elsewhere and whose heartbeat stopped is failed after 3 heartbeats and re-run here."""
    import scaleout_driver as d

    from m2k_bt.optimize import optimize
    from m2k_bt.optimize.storage import storage_for

    monkeypatch.setenv("M2K_TEST_DELAY", "0")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    kw = dict(storage=url, study_name="scale", sampler="grid", workers=1, heartbeat=1,
              run_backtest=d.slow_run, quiet=True, overfitting=False)
    optimize(d.bars(), d.DriverConfig(), ["fast=10:40:10", "slow=100:200:50"], trials=3, **kw)
    study = optuna.load_study(study_name="scale", storage=storage_for(url, heartbeat=1))
    study.enqueue_trial({"fast": 40, "slow": 200})
    t = study.ask()  # as a process on machine "far-away" would: RUNNING, one heartbeat
    study._storage.set_trial_system_attr(t._trial_id, "m2k_owner", "far-away:1")
    study._storage.record_heartbeat(t._trial_id)
    res = optimize(
        d.bars(), d.DriverConfig(), ["fast=10:40:10", "slow=100:200:50"], trials=4, **kw
    )
    assert res.n_complete == 4 and res.n_failed == 1
    assert_every_point_once(trials_of(url), GRID[:3] + [(40, 200)])
