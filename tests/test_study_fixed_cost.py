"""A study's fixed cost (issue 23): the winner's check in cerebro runs in a forked process
while DSR, PBO and study.html are made, and the command line skips the interpreter's teardown
once everything is written, leaving the study's SQLite file whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import make_bars

from m2k_bt.engine import BacktestConfig
from m2k_bt.optimize.cerebro_check import CerebroCheck

ROOT = Path(__file__).resolve().parent.parent
fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _args():
    bars = make_bars(900, seed=21)
    return bars, BacktestConfig(strategy="sma"), {"fast": 5, "slow": 30}, "sharpe", 1


def _in_a_process_of_one_thread(body: str) -> None:
    """Run ``body`` (with :func:`_args` and the check's imports) in a fresh Python:
    a check forks only from a process of one thread, and the test run has threads of its
    own (servers, gateways of other tests). It must print ``ok``."""
    code = ("import os, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            "import m2k_bt.optimize.cerebro_check as cc\n"
            "from m2k_bt.errors import M2KError\n"
            "from m2k_bt.optimize.cerebro_check import CerebroCheck\n"
            "from m2k_bt.optimize.trial import evaluate_params\n"
            "from test_study_fixed_cost import _args\n" + body + "\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@fork_only
def test_the_check_runs_behind_and_is_evaluate_params_in_cerebro():
    _in_a_process_of_one_thread("""
args = _args()
want = evaluate_params(*args)
with CerebroCheck(*args) as check:
    assert check.behind and check.proc.pid != os.getpid()
    got = check.outcome()
assert got["attrs"].pop("elapsed") >= 0 and want["attrs"].pop("elapsed") >= 0
assert got == want, (got, want)
""")


@fork_only
def test_a_lost_check_process_is_run_here_and_an_error_is_raised_here():
    _in_a_process_of_one_thread("""
args = _args()
with CerebroCheck(*args) as check:
    assert check.behind
    check.proc.kill()  # lost (kill -9): the check runs here instead
    got = check.outcome()
assert got["value"] == evaluate_params(*args)["value"]

def broken(*a, **k):
    raise M2KError("no such bars")

cc.evaluate_params = broken  # the fork inherits the patch; its error is raised here
try:
    with CerebroCheck(*args) as check:
        assert check.behind
        check.outcome()
except M2KError as exc:
    assert "no such bars" in str(exc)
else:
    raise AssertionError("the check's error was not raised")
""")


def test_no_fork_while_a_thread_of_ours_runs():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with CerebroCheck(*_args()) as check:
            assert not check.behind  # a fork would copy the thread mid-work: run here
            assert check.outcome()["value"] is not None
    finally:
        stop.set()
        t.join()


def test_cli_study_exits_fast_with_its_sqlite_file_whole(tmp_path, rth_csv):
    """``run_backtest.py optimize`` ends without the interpreter's teardown (exit_now): exit
    status 0, its outputs complete, the summary printed, and study.db closed properly (no
    write-ahead log or shared-memory file left beside it: it holds every trial)."""
    import optuna

    csv = rth_csv
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_backtest.py"), "optimize", "--data", csv,
         "--space", "fast=5:15:5", "slow=30:40:10", "--sampler", "grid", "--min-trades", "0",
         "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "study m2k-sma: 6 complete" in proc.stdout  # the summary reached the pipe
    assert proc.stdout.rstrip().splitlines()[-1].startswith(f"outputs: {out}")  # its last
    # line too: the streams are flushed before the process ends
    assert sorted(p.name for p in out.iterdir()) == [
        "optimize.json", "study.db", "study.html", "trials.csv"]
    settings = json.loads((out / "optimize.json").read_text())["settings"]
    assert settings["engine"]["engines_agree"] is True
    study = optuna.load_study(study_name="m2k-sma",
                              storage=f"sqlite:///{out / 'study.db'}")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 6
