"""run_backtest.py end to end: outputs, consistency, and one-line errors with exit status 2."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import rth_bars, write_bars_csv

from m2k_bt.cli import main
from m2k_bt.report import validate_report

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "m2k_test_5min.csv"
    return write_bars_csv(rth_bars(), path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_csv):
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["--data", data_csv, "--out", str(out), "--param", "fast=10",
                 "--param", "slow=30", "--sizer", "fixed", "--sizer-param", "contracts=2",
                 "--slippage-ticks", "1", "--quiet"])
    assert code == 0
    return out


def test_outputs_present_and_schema_valid(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"report.json", "trades.csv", "equity.csv", "plot.png", "equity.png"} <= names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    report = json.loads((run_dir / "report.json").read_text())
    validate_report(report)
    assert report["schema_version"]
    for png in ("plot.png", "equity.png"):
        assert (run_dir / png).stat().st_size > 10_000


def test_numbers_agree_between_report_trades_and_equity(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    with open(run_dir / "trades.csv") as fh:
        trades = list(csv.DictReader(fh))
    with open(run_dir / "equity.csv") as fh:
        equity = list(csv.DictReader(fh))
    start, final = report["results"]["start_value"], report["results"]["final_value"]
    # every trade's net P&L, the open one marked at the last close included, adds up to the
    # change in equity
    assert sum(float(t["net_pnl"]) for t in trades) == pytest.approx(final - start, abs=1e-6)
    assert float(equity[-1]["value"]) == pytest.approx(final)
    assert all(int(float(t["contracts"])) == 2 for t in trades)
    # commission: 2 contracts x $0.62 per side, two sides for each closed trade
    closed = [t for t in trades if t["exit_reason"] != "end"]
    for t in closed:
        assert float(t["commission"]) == pytest.approx(2 * 2 * 0.62)
    assert report["inputs"]["costs"]["slippage_ticks"] == 1


def test_summary_printed_matches_report(tmp_path, data_csv, capsys):
    out = tmp_path / "o"
    assert main(["--data", data_csv, "--out", str(out), "--param", "fast=10",
                 "--param", "slow=30", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    final = report["results"]["final_value"]
    assert f"${final:,.2f}" in printed
    assert "plot.png" not in {p.name for p in out.iterdir()}


def test_list_strategies(capsys):
    assert main(["--list-strategies"]) == 0
    text = capsys.readouterr().out
    for name in ("sma", "bollinger", "adaptive", "fast = 50", "devfactor = 2.0"):
        assert name in text


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--data", "no/such/file.csv"], "not found"),
        (["--strategy", "smaa"], "did you mean 'sma'"),
        (["--param", "fsat=10"], "did you mean 'fast'"),
        (["--param", "fast=200", "--param", "slow=50"], "fast"),
        (["--param", "fast"], "KEY=VALUE"),
        (["--param", "fast=ten"], "fast"),
        (["--cash", "-5"], "cash"),
        (["--contract", "M2J"], "did you mean 'M2K'"),
        (["--sizer", "kely"], "did you mean 'kelly'"),
        (["--sizer-param", "kelly_scal=0.3"], "did you mean 'kelly_scale'"),
        (["--format", "yahooo"], "yahoo"),
        (["--start", "2024-03-20", "--end", "2024-03-01"], "after"),
        (["--start", "2030-01-01"], "no bars"),
        (["--commission", "-1"], "commission"),
        (["--resample", "7parsecs"], "7parsecs"),
        (["--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, needle, data_csv, tmp_path, capsys):
    argv = args if "--data" in args else ["--data", data_csv, *args]
    code = main([*argv, "--out", str(tmp_path / "x"), "--quiet", "--no-plot"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert needle in err
    assert not (tmp_path / "x" / "report.json").exists()


def test_malformed_row_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    write_bars_csv(rth_bars(end="2024-02-21"), path)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",2000.0,oops,1999.0,2000.0,10"
    path.write_text("\n".join(lines) + "\n")
    code = main(["--data", str(path), "--quiet", "--no-plot", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.csv" in err and "line" in err


def test_script_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_backtest.py"), "--data", str(tmp_path / "missing.csv")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: data file not found")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_tqdm_on_a_terminal_and_silent_elsewhere():
    from m2k_bt.cli import ProgressBar

    piped = io.StringIO()
    bar = ProgressBar("bars", stream=piped)
    bar(5, 10)
    bar(10, 10)
    assert piped.getvalue() == "" and not bar.enabled
    tty = _Tty()
    bar = ProgressBar("bars", stream=tty)
    bar(5, 10)
    bar(10, 10)
    assert "100%" in tty.getvalue() and "10/10" in tty.getvalue()  # tqdm's own format
    assert ProgressBar("bars", enabled=False, stream=_Tty()).enabled is False
