"""Issue 24 (Hardening II): the library refuses what it cannot run before any work, naming the
parameter (cash) or the file (a report.json in --out that is not a run's, a binary events or
signal file)."""

import math

import pytest
from conftest import make_bars

from m2k_bt.engine import BacktestConfig, run_backtest
from m2k_bt.engine.config import MAX_CASH
from m2k_bt.errors import ConfigError, DataFeedError, OutputError
from m2k_bt.feeds.events import read_events_csv
from m2k_bt.feeds.external import load_signal
from m2k_bt.outputs import OutputFolder


@pytest.mark.parametrize("cash", [1e308, math.inf, math.nan, MAX_CASH * 2])
def test_cash_out_of_range_is_refused_by_the_library_naming_cash(cash):
    with pytest.raises(ConfigError, match=r"^cash must be a number > 0 and at most 1e\+12"):
        run_backtest(make_bars(50), BacktestConfig(sizer="fixed", cash=cash))


def test_the_largest_cash_still_runs():
    res = run_backtest(make_bars(200), BacktestConfig(cash=MAX_CASH, analyzers=False))
    assert res.final_value == pytest.approx(MAX_CASH, rel=1e-3)


@pytest.mark.parametrize("text", ["[1]", "not json", "", "\"report\""])
def test_a_marker_that_is_not_a_json_object_is_refused_and_kept(text, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(text)
    with pytest.raises(OutputError, match="report.json is not the report.json of a run"):
        with OutputFolder(out):
            pass
    assert (out / "report.json").read_text() == text
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]  # lock released


def test_a_run_marker_is_accepted(tmp_path):
    (tmp_path / "report.json").write_text('{"files": {}}')
    with OutputFolder(tmp_path) as folder:
        assert folder.clear() == ["report.json"]


@pytest.mark.parametrize("read", [read_events_csv, load_signal])
def test_a_binary_events_or_signal_file_names_the_file(read, tmp_path):
    blob = tmp_path / "blob.csv"
    blob.write_bytes(b"time,value\n" + bytes(range(128, 256)))
    with pytest.raises(DataFeedError, match=r"blob\.csv: not a text file"):
        read(blob)


@pytest.mark.parametrize("sub", ["optimize", "walkforward"])
def test_a_dask_scheduler_lost_mid_study_is_one_line(sub, tmp_path, monkeypatch, capsys):
    from conftest import rth_bars, write_bars_csv
    from distributed.comm.core import CommClosedError

    import m2k_bt.optimize.study as study_mod
    from m2k_bt.cli.backtest import main

    class Client:
        def close(self):
            pass

    def lost(*args, **kwargs):  # what run_dask raises once the scheduler is killed
        raise CommClosedError("in <TCP (closed) ConnectionPool.gather local=tcp://127.0.0.1:1 "
                              "remote=tcp://127.0.0.1:8786>: Stream is closed")

    monkeypatch.setattr(study_mod, "dask_client", lambda address: (Client(), None))
    monkeypatch.setattr(study_mod, "run_dask", lost)
    data = write_bars_csv(rth_bars(), tmp_path / "m2k_test_5min.csv")
    args = [sub, "--data", data, "--dask", "tcp://127.0.0.1:8786", "--space", "fast=5:15:5",
            "slow=20:40:10", "--sampler", "grid", "--out", str(tmp_path / "o"), "--quiet",
            "--no-plot"]
    if sub == "walkforward":
        args += ["--folds", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: lost the Dask scheduler tcp://127.0.0.1:8786") and \
        "Stream is closed" in err, err
