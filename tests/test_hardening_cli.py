"""Issue 24 (Hardening II): a user's mistake on the command line is one line and exit status 2,
never a traceback, and never accepted silently with a wrong meaning."""

import json

import pytest
from conftest import one_line_exit_2

from m2k_bt.cli.backtest import main


@pytest.fixture(scope="module")
def data_csv(rth_csv):
    return rth_csv


@pytest.mark.parametrize("cash", ["1e308", "inf", "nan"])
def test_impossible_cash_is_one_line_and_exit_2(cash, data_csv, tmp_path, capsys):
    argv = ["--data", data_csv, "--cash", cash, "--out", str(tmp_path / "x"), "--quiet",
            "--no-plot"]
    one_line_exit_2(argv, capsys, "--cash")
    assert not (tmp_path / "x" / "report.json").exists()


def test_a_report_json_that_is_not_a_report_in_out_is_one_line(data_csv, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("[1]")
    one_line_exit_2(["--data", data_csv, "--out", str(out), "--quiet", "--no-plot"], capsys,
                     "report.json")
    assert (out / "report.json").read_text() == "[1]"  # not ours: left as it was


@pytest.mark.parametrize("flag", ["--events", "--signal"])
def test_a_binary_events_or_signal_file_is_one_line(flag, data_csv, tmp_path, capsys):
    blob = tmp_path / "blob.csv"
    blob.write_bytes(bytes(range(256)) * 8)
    args = ["--data", data_csv, flag, str(blob), "--out", str(tmp_path / "x"), "--quiet",
            "--no-plot"]
    if flag == "--events":
        args += ["--avoid-events", "fomc"]
    one_line_exit_2(args, capsys, "blob.csv")


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r["inputs"]["data"].__setitem__("files", ["a", "b"]),
        lambda r: r["inputs"]["strategy"].__setitem__("params", [1, 2]),
        lambda r: r["inputs"].__setitem__("data", "x"),
    ],
)
def test_rerun_of_a_mangled_report_is_one_line(edit, data_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--data", data_csv, "--out", str(out), "--quiet", "--no-plot", "--sizer",
                 "fixed", "--param", "fast=10", "--param", "slow=30"]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    edit(report)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report))
    one_line_exit_2(["--rerun", str(bad), "--out", str(tmp_path / "again"), "--quiet"], capsys,
                     "bad.json")
