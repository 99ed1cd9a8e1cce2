"""Issue 24 (Hardening II), studies: an interrupted study keeps every finished point once, and
the resumed study runs exactly the points still missing.

Interrupts are sent at every point a user's Ctrl-C (or kill -9) could land: before and after
each write of the write-behind to ``study.db`` and each trial, in turn."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys

import optuna
import pytest
from conftest import rth_bars, write_bars_csv
from test_optimize import FakeConfig, fake_run, hourly_bars

import m2k_bt.optimize.results as results
import m2k_bt.optimize.study as study_module
import m2k_bt.optimize.writebehind as behind
import m2k_bt.outputs as outputs
from m2k_bt.cli.backtest import main
from m2k_bt.optimize import optimize, study_storage_url
from m2k_bt.optimize.storage import storage_for

SPACE = ["fast=10:20:10", "slow=100:150:50"]  # 2 x 2 = 4 grid points
GRID = sorted((f, s) for f in (10, 20) for s in (100, 150))
#: What the write-behind writes to study.db (each one SQLite transaction); its finished
#: trials go in one transaction a flush, ``writebehind.write_trials``.
WRITES = ("create_new_study", "set_study_user_attr", "create_new_trial")


@pytest.fixture
def quick_html(monkeypatch):
    """study.html (a quarter of a second of bokeh) is not what these tests are about."""
    import m2k_bt.optimize.study as study_module

    monkeypatch.setattr(results, "write_study_html", lambda result, path, text=None: path)
    monkeypatch.setattr(study_module, "study_html_text", lambda result: "")


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    """A study.db with Optuna's tables and no study: copied into a fresh --out, it saves
    each run the second or so SQLite takes to create the tables."""
    path = tmp_path_factory.mktemp("template") / "study.db"
    storage_for(f"sqlite:///{path}").engine.dispose()
    return path


def _fresh_out(path, empty_db):
    path.mkdir(parents=True)
    shutil.copyfile(empty_db, path / "study.db")
    return path


def _study(out, run=fake_run, name="m2k-fake"):
    return optimize(hourly_bars(5), FakeConfig(), SPACE, sampler="grid", workers=1, out=out,
                    run_backtest=run, quiet=True, overfitting=False, study_name=name)


def _complete_points(out, name="m2k-fake") -> list[tuple]:
    """The parameter sets of the COMPLETE trials of study ``name`` in ``out``'s study.db."""
    if not (out / "study.db").exists():
        return []
    storage = storage_for(study_storage_url(out))
    if name not in optuna.get_all_study_names(storage):
        return []
    study = optuna.load_study(study_name=name, storage=storage)
    return [(t.params["fast"], t.params["slow"]) for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE"]


class _Events:
    """Counts the study's events (each write to study.db, each trial) and runs ``action``
    before or after event number ``at``."""

    def __init__(self, monkeypatch, at: int | None, when: str = "before", action=None):
        self.n, self.at, self.when, self.action = 0, at, when, action
        rdb = optuna.storages.RDBStorage
        for name in WRITES:
            monkeypatch.setattr(rdb, name, self.wrap(getattr(rdb, name)))
        monkeypatch.setattr(behind, "write_trials", self.wrap(behind.write_trials))

    def wrap(self, fn):
        def inner(*args, **kwargs):
            self.n += 1
            hit = self.n == self.at
            if hit and self.when == "before":
                self.action()
            out = fn(*args, **kwargs)
            if hit and self.when == "after":
                self.action()
            return out
        return inner

    def run(self, bars, config):
        return self.wrap(fake_run)(bars, config)


def _interrupt():
    raise KeyboardInterrupt


def _events_of_a_whole_run(tmp_path, monkeypatch) -> int:
    with monkeypatch.context() as m:
        events = _Events(m, None)
        _study(tmp_path / "whole", events.run)
    return events.n


def _flush_every(monkeypatch, batches: int) -> None:
    """The write-behind writes after every ``batches`` trials (not by the clock)."""
    calls = [0]

    def maybe(self):
        calls[0] += 1
        if calls[0] % batches == 0:
            self.flush()

    monkeypatch.setattr(behind.WriteBehind, "maybe", maybe)


@pytest.mark.usefixtures("quick_html")
@pytest.mark.parametrize("when", ["before", "after"])
def test_ctrl_c_at_every_write_and_trial_keeps_each_point_once(tmp_path, monkeypatch, when):
    """Item 1: Ctrl-C before or after each write of the write-behind (two trials a write)
    and each trial: no parameter set is COMPLETE twice in study.db, and the resumed study
    completes exactly the grid."""
    _flush_every(monkeypatch, 2)
    n = _events_of_a_whole_run(tmp_path, monkeypatch)
    assert n > 2 * len(GRID)
    out = tmp_path / "o"
    for at in range(1, n + 1):
        name = f"s{at}"  # a study of its own in one study.db: one schema check, not n
        with monkeypatch.context() as m:
            events = _Events(m, at, when, _interrupt)
            with pytest.raises(KeyboardInterrupt):
                _study(out, events.run, name)
        kept = _complete_points(out, name)
        assert len(kept) == len(set(kept)), (at, kept)
        res = _study(out, name=name)
        done = _complete_points(out, name)
        assert sorted(done) == GRID, (at, done)
        assert res.n_complete == len(GRID)


def _killed_in_the_first_write(out, at: int) -> None:
    """In a forked child: run the study, whose only write-behind flush is the last one, and
    die as by kill -9 just before its write number ``at``."""
    mpatch = pytest.MonkeyPatch()
    mpatch.setattr(behind, "FLUSH_SECONDS", 3600.0)
    _Events(mpatch, at, "before", lambda: os._exit(9))
    _study(out)
    os._exit(0)


@pytest.mark.usefixtures("quick_html")
def test_kill_9_in_the_first_write_behind_flush_resumes_without_waiting(tmp_path, monkeypatch,
                                                                         empty_db):
    """Item 2: a study killed at any write of its first flush (created, settings, trials, the
    ready mark) resumes at once, not after a silent minute in set-up, and completes the grid."""
    real_sleep = __import__("time").sleep

    def no_wait_in_setup(seconds):
        if sys._getframe(1).f_code.co_name in ("set_up_study", "_wait_for_setup"):
            raise AssertionError("set-up waited for the ready mark of a dead process")
        real_sleep(seconds)

    ctx = mp.get_context("fork")
    for at in range(1, len(GRID) + 6):
        out = _fresh_out(tmp_path / f"k{at}", empty_db)
        child = ctx.Process(target=_killed_in_the_first_write, args=(out, at))
        child.start()
        child.join(60)
        assert child.exitcode in (0, 9), child.exitcode
        with monkeypatch.context() as m:
            m.setattr("time.sleep", no_wait_in_setup)
            res = _study(out)
        done = _complete_points(out)
        assert sorted(done) == GRID, (at, done)
        assert res.n_complete == len(GRID)


def _killed_in_set_up(url, at: int) -> None:
    """In a forked child: set up a study on a shared storage and die as by kill -9 just
    before its write number ``at`` (the study created, settings and grid half recorded)."""
    mpatch = pytest.MonkeyPatch()
    _Events(mpatch, at, "before", lambda: os._exit(9))
    optimize(hourly_bars(5), FakeConfig(), SPACE, sampler="grid", workers=1, storage=url,
             run_backtest=fake_run, quiet=True, overfitting=False)
    os._exit(0)


@pytest.mark.usefixtures("quick_html")
def test_a_joiner_does_not_wait_for_a_creator_of_this_host_that_is_gone(tmp_path, monkeypatch,
                                                                        empty_db):
    """Item 2 on a shared storage: the process that created the study was killed before it
    marked the study ready; the next one sees its creator is gone and sets it up at once."""
    real_sleep = __import__("time").sleep

    def no_wait_in_setup(seconds):
        if sys._getframe(1).f_code.co_name in ("set_up_study", "_wait_for_setup"):
            raise AssertionError("set-up waited for the ready mark of a dead process")
        real_sleep(seconds)

    ctx = mp.get_context("fork")
    # write 1 creates the study, write 2 marks who sets it up (killed between the two, a
    # joiner waits SETUP_START_WAIT for the mark: the creator may be alive and about to)
    for at in range(3, 40):
        url = study_storage_url(_fresh_out(tmp_path / f"k{at}", empty_db))
        child = ctx.Process(target=_killed_in_set_up, args=(url, at))
        child.start()
        child.join(60)
        if child.exitcode == 0:  # past the last write: every point was tried
            assert at > 5
            break
        assert child.exitcode == 9
        with monkeypatch.context() as m:
            m.setattr("time.sleep", no_wait_in_setup)
            res = optimize(hourly_bars(5), FakeConfig(), SPACE, sampler="grid", workers=1,
                           storage=url, run_backtest=fake_run, quiet=True, overfitting=False)
        assert res.n_complete == len(GRID)
        study = optuna.load_study(study_name="m2k-fake", storage=storage_for(url))
        done = [(t.params["fast"], t.params["slow"]) for t in study.trials
                if t.state.name == "COMPLETE"]
        assert sorted(done) == GRID


# ---------------------------------------------------------------- Ctrl-C in a compiled trial


def _interrupted_in_compiled_code(run, at: int):
    """``run``, whose call number ``at`` ends as a signal caught by numba's dispatcher does:
    ``SystemError: CPUDispatcher(...) returned a result with an exception set``, the
    handler's KeyboardInterrupt as its cause (CPython's ``_Py_CheckFunctionResult``)."""
    calls = [0]

    def inner(bars, config):
        calls[0] += 1
        if calls[0] == at:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:
                raise SystemError("CPUDispatcher(<function run_loop at 0x7f>) returned a "
                                  "result with an exception set") from exc
        return run(bars, config)
    return inner


@pytest.mark.usefixtures("quick_html")
def test_ctrl_c_inside_a_compiled_trial_is_an_interrupt_at_every_trial(tmp_path):
    """Item 3: at each trial in turn, the study stops as interrupted (KeyboardInterrupt, not
    SystemError), keeps the trials before it, and the resume completes the grid."""
    out = tmp_path / "o"
    for at in range(1, len(GRID) + 1):
        name = f"s{at}"
        with pytest.raises(KeyboardInterrupt):
            _study(out, _interrupted_in_compiled_code(fake_run, at), name)
        assert len(_complete_points(out, name)) == at - 1
        assert _study(out, name=name).n_complete == len(GRID)
        assert sorted(_complete_points(out, name)) == GRID


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "m2k_test_5min.csv"
    return write_bars_csv(rth_bars(), path)


def test_cli_ctrl_c_inside_the_kernel_exits_130_with_one_line(data_csv, tmp_path, monkeypatch,
                                                              capsys):
    """Item 3 on the command line, with the real kernel: exit 130, ``error: interrupted``,
    the study kept and resumable."""
    real = study_module.choose_engine
    for at in (1, 3):
        def choose(config, engine, run=None, at=at):
            fn, info = real(config, engine, run)
            return _interrupted_in_compiled_code(fn, at), info

        out = tmp_path / f"o{at}"
        argv = ["optimize", "--data", data_csv, "--space", *SPACE,
                "--sampler", "grid", "--out", str(out), "--quiet"]
        with monkeypatch.context() as m:
            m.setattr(study_module, "choose_engine", choose)
            assert main(argv) == 130
        assert capsys.readouterr().err == "error: interrupted\n"
        assert (out / "study.db").exists() and not (out / "optimize.json").exists()
        assert main(argv) == 0
        report = json.loads((out / "optimize.json").read_text())
        assert report["trials_complete"] + report["trials_infeasible"] == len(GRID)


# ---------------------------------------------------------------- Ctrl-C while writing outputs


@pytest.mark.parametrize("when", ["before", "after"])
def test_ctrl_c_while_writing_outputs_leaves_all_of_them_or_none(tmp_path, monkeypatch, when):
    """Item 6: Ctrl-C before or after each file of optimize's outputs is moved into place:
    the folder holds trials.csv, study.html and optimize.json together or none of them, and
    always study.db."""
    names = ("trials.csv", "study.html", "optimize.json")
    real = outputs._replace
    out = tmp_path / "o"
    for at in range(1, len(names) + 1):
        calls = [0]

        def replace(tmp, path, at=at, calls=calls):
            calls[0] += 1
            if calls[0] == at and when == "before":
                raise KeyboardInterrupt
            real(tmp, path)
            if calls[0] == at and when == "after":
                raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(outputs, "_replace", replace)
            with pytest.raises(KeyboardInterrupt):
                _study(out, name=f"s{at}")
        assert calls[0] == at
        assert [n for n in names if (out / n).exists()] == [], at
        assert (out / "study.db").exists()
        assert not list(out.glob("*.m2k-tmp")) and not list(out.glob(".*.m2k-tmp"))
    _study(out)
    assert all((out / n).exists() for n in names)


# ---------------------------------------------------------------- a real Ctrl-C, as a user


def test_real_ctrl_c_at_many_moments_exits_130_and_keeps_each_point_once(data_csv, tmp_path,
                                                                         empty_db):
    """Items 1, 3, 6 as a user meets them: ``run_backtest.py optimize`` (kernel trials, a
    grid of 400 points) gets SIGINT at one of several moments after it opened study.db;
    every run ends ``error: interrupted`` (one line, exit 130) or done (exit 0), study.db
    holds no parameter set COMPLETE twice, and trials.csv never stands without
    optimize.json."""
    import signal
    import subprocess
    import time

    from servers import ROOT, child_env

    delays = [0.0, 0.2, 0.7]  # after the run opened study.db (its -wal appears)
    procs = []
    for i, delay in enumerate(delays):
        out = _fresh_out(tmp_path / f"o{i}", empty_db)
        argv = [sys.executable, str(ROOT / "run_backtest.py"), "optimize", "--data", data_csv,
                "--space", "fast=10:49:1", "slow=100:190:10", "--sampler", "grid",
                "--out", str(out), "--quiet"]
        procs.append((subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True), out, delay))
    started, sent = time.monotonic(), set()
    while len(sent) < len(procs) and time.monotonic() - started < 120:
        for i, (proc, out, delay) in enumerate(procs):
            if i in sent or proc.poll() is not None:
                sent.add(i)
                continue
            if (out / "study.db-wal").exists() and not hasattr(proc, "seen"):
                proc.seen = time.monotonic()  # the study is being set up or running
            ready = hasattr(proc, "seen") and time.monotonic() - proc.seen >= delay
            if ready:
                proc.send_signal(signal.SIGINT)
                sent.add(i)
        time.sleep(0.01)
    for proc, out, delay in procs:
        _, err = proc.communicate(timeout=120)
        assert (proc.returncode, err) in ((130, "error: interrupted\n"), (0, "")), (delay, err)
        assert (out / "trials.csv").exists() == (out / "optimize.json").exists(), delay
        kept = _complete_points(out, "m2k-sma")
        assert len(kept) == len(set(kept)), (delay, len(kept), len(set(kept)))


def test_ctrl_c_to_the_group_of_a_two_worker_study_is_one_line_and_no_process_left(
        data_csv, tmp_path, empty_db):
    """Regression (found by hand): a terminal's Ctrl-C reaches the study and its backtester
    processes (one process group). Forked backtesters inherited the study's SIGTERM handler,
    so the study stopping them printed their tracebacks. Now: exit 130 and the one line
    ``error: interrupted`` (or a finished study, exit 0, nothing said), no backtester left
    running, no point COMPLETE twice."""
    import signal
    import subprocess
    import time

    from servers import ROOT, child_env

    interrupted = 0
    for i, delay in enumerate((0.0, 0.3)):  # after both backtesters run
        out = _fresh_out(tmp_path / f"o{i}", empty_db)
        argv = [sys.executable, str(ROOT / "run_backtest.py"), "optimize", "--data", data_csv,
                "--space", "fast=10:209:1", "slow=220:390:10", "--sampler", "grid",
                "--workers", "2", "--out", str(out), "--quiet"]  # 3,600 points
        proc = subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline, kids = time.monotonic() + 120, []
        while len(kids) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
            kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)],
                                  capture_output=True, text=True).stdout.split()
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole group
        _, err = proc.communicate(timeout=120)
        assert (proc.returncode, err) in ((130, "error: interrupted\n"), (0, "")), (delay, err)
        interrupted += proc.returncode == 130
        time.sleep(0.5)
        for pid in kids:  # every backtester ended with the study (a zombie is ended)
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    assert fh.read().rsplit(")", 1)[1].split()[0] == "Z", pid
            except FileNotFoundError:
                pass
        kept = _complete_points(out, "m2k-sma")
        assert len(kept) == len(set(kept)), delay
    assert interrupted  # the signal met a running study, not only finished ones


def _interrupted_in_a_c_callback(run, at: int):
    """``run``, whose call number ``at`` meets Ctrl-C inside a callback from C code, as
    numba compiling the kernel does (llvmlite's ``_raw_object_cache_notify``, a ctypes
    callback): Python can only report it as "Exception ignored" there and carries on."""
    import ctypes

    calls = [0]

    def interrupted():
        raise KeyboardInterrupt

    callback = ctypes.CFUNCTYPE(None)(interrupted)

    def inner(bars, config):
        calls[0] += 1
        if calls[0] == at:
            callback()
        return run(bars, config)
    return inner


@pytest.mark.usefixtures("quick_html")
def test_ctrl_c_inside_a_callback_from_c_is_not_lost_at_any_trial(tmp_path, capfd):
    """Ctrl-C while numba compiles (seen in the real-SIGINT test below): at each trial in
    turn the study stops as interrupted, silently (no "Exception ignored" on stderr), keeps
    the trials before it, and the resume completes the grid."""
    out = tmp_path / "o"
    for at in range(1, len(GRID) + 1):
        name = f"s{at}"
        with pytest.raises(KeyboardInterrupt):
            _study(out, _interrupted_in_a_c_callback(fake_run, at), name)
        assert "Exception ignored" not in capfd.readouterr().err
        assert len(_complete_points(out, name)) == at - 1
        assert _study(out, name=name).n_complete == len(GRID)
        assert sorted(_complete_points(out, name)) == GRID


@pytest.mark.usefixtures("quick_html")
def test_a_ctrl_c_inside_a_flush_lands_after_its_transaction(tmp_path, monkeypatch, empty_db):
    """Regression (found under load: a Ctrl-C to a two-worker study left study.db locked for
    60 s): a SIGINT that arrives while the write-behind is inside its SQLite transaction is
    held until the flush has committed, then raised as the interrupt; study.db then holds
    that flush's trials, the study's final flush writes the rest, and the resumed study
    completes the grid with each point once."""
    import signal

    from sqlalchemy import event

    _flush_every(monkeypatch, 2)
    real_write, seen = behind.write_trials, []

    def write_hit_by_ctrl_c(storage, study_id, trials):
        sent = []

        def ctrl_c(*_args):  # right after BEGIN IMMEDIATE: the write lock is held
            if not sent:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)

        if not seen:
            event.listen(storage.engine, "after_cursor_execute", ctrl_c)
        try:
            real_write(storage, study_id, trials)
        finally:
            if event.contains(storage.engine, "after_cursor_execute", ctrl_c):
                event.remove(storage.engine, "after_cursor_execute", ctrl_c)
        seen.append(len(trials))  # reached only when the transaction was not cut short

    monkeypatch.setattr(behind, "write_trials", write_hit_by_ctrl_c)
    out = _fresh_out(tmp_path / "o", empty_db)
    with pytest.raises(KeyboardInterrupt):
        _study(out)
    assert seen and seen[0] == 2, seen  # the interrupted flush committed its two trials
    kept = _complete_points(out)
    assert len(kept) == len(set(kept)) >= 2
    monkeypatch.setattr(behind, "write_trials", real_write)
    res = _study(out)
    assert res.n_complete == len(GRID)
    assert sorted(_complete_points(out)) == GRID
