"""run_backtest.py end to end: outputs, consistency, and one-line errors with exit status 2."""

import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import rth_bars, write_bars_csv

from m2k_bt.cli.backtest import main
from m2k_bt.report.summary import validate_report

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
    from m2k_bt.cli.backtest import ProgressBar

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


# -- item 5: a closed stdout (| head -1) ends quietly ---------------------------------------


@pytest.mark.parametrize("args", [["--list-strategies"], ["--help"], ["optimize", "--help"],
                                  ["live", "--help"]])
def test_closed_stdout_pipe_exits_quietly(args, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before we print: every write meets EPIPE
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "run_backtest.py"), *args],
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 0


# -- item 2 (CLI side): too few bars is one line, exit 2 -------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--start", "2024-02-21", "--end", "2024-02-21", "--param", "slow=400"],
         "need at least 400 bars for slow=400, the selection has 78"),
        (["--start", "2024-02-21", "--end", "2024-02-21", "--strategy", "bollinger",
          "--param", "period=400"], "need at least 400 bars for period=400, the selection has 78"),
    ],
)
def test_too_few_bars_is_one_line_exit_2(args, needle, data_csv, tmp_path, capsys):
    code = main(["--data", data_csv, *args, "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "x").exists()  # the folder this run made is gone again


def test_four_bar_file_is_one_line_exit_2(tmp_path):
    path = tmp_path / "four.csv"
    write_bars_csv(rth_bars(end="2024-02-20").iloc[:4], path)
    proc = subprocess.run([sys.executable, str(ROOT / "run_backtest.py"), "--data", str(path),
                           "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(
        "error: need at least 200 bars for slow=200, the selection has 4 ")


# -- items 8, 9: one complete run per folder; locked while running; no symlink followed ------

BASE = ["--param", "fast=10", "--param", "slow=30", "--sizer", "fixed", "--quiet"]


def _one_complete_run(out: Path) -> dict:
    """The folder holds report.json and exactly the files it lists (and nothing else of ours)."""
    report = json.loads((out / "report.json").read_text())
    names = {p.name for p in out.iterdir()}
    assert names == set(report["files"]) | {"report.json"}
    return report


def _child(code: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def _held_run(argv: list[str]) -> str:
    """A child that runs main(argv) but waits on stdin just before the backtest."""
    return textwrap.dedent(f"""
        import sys
        import m2k_bt.engine.cerebro as engine
        from m2k_bt.cli.backtest import main
        real = engine.run_backtest
        def held(*args, **kwargs):
            print("running", flush=True)
            sys.stdin.readline()
            return real(*args, **kwargs)
        engine.run_backtest = held
        sys.exit(main({argv!r}))
    """)


def test_second_run_into_a_busy_folder_is_refused(data_csv, tmp_path):
    out = tmp_path / "out"
    first = _child(_held_run(["--data", data_csv, "--out", str(out), *BASE]))
    try:
        assert first.stdout.readline().strip() == "running"  # holds the folder's lock now
        second = subprocess.run([sys.executable, str(ROOT / "run_backtest.py"), "--data",
                                 data_csv, "--out", str(out), *BASE, "--no-plot"],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert second.returncode == 2
        assert second.stderr == (f"error: {out} is in use by another run (pid {first.pid}); "
                                 f"wait for it or choose another --out\n")
    finally:
        _, err = first.communicate("\n", timeout=300)
    assert first.returncode == 0, err
    report = _one_complete_run(out)
    assert "plot.png" in report["files"]  # the first run's, not a mix with the --no-plot one


def test_rerun_removes_the_earlier_runs_outputs(data_csv, tmp_path):
    out = tmp_path / "out"
    assert main(["--data", data_csv, "--out", str(out), *BASE]) == 0
    assert "plot.png" in _one_complete_run(out)["files"]
    (out / ".trades.csv.x1y2z3.m2k-tmp").write_text("left by a killed run")
    (out / "notes.txt").write_text("the user's own file")
    assert main(["--data", data_csv, "--out", str(out), *BASE, "--no-plot"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"report.json", "trades.csv", "equity.csv", "notes.txt"}


@pytest.mark.parametrize("kill_before", ["plot.png", "report.json"])
def test_run_killed_while_writing_leaves_no_report_beside_new_files(kill_before, data_csv,
                                                                    tmp_path):
    out = tmp_path / "out"
    assert main(["--data", data_csv, "--out", str(out), *BASE, "--param", "fast=5"]) == 0
    old_trades = (out / "trades.csv").read_text()
    argv = ["--data", data_csv, "--out", str(out), *BASE]
    proc = subprocess.run([sys.executable, str(ROOT / "run_backtest.py"), *argv],
                          env={**os.environ, "M2K_BT_TEST_KILL_BEFORE": kill_before},
                          capture_output=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == -9  # SIGKILL just before the file was moved into place
    assert (out / "trades.csv").read_text() != old_trades  # the new run had begun writing
    assert not (out / "report.json").exists()  # ... so no report claims the folder is whole
    # the next run starts clean: no leftovers, one complete run
    assert main(argv) == 0
    _one_complete_run(out)


def test_run_killed_before_writing_keeps_the_old_complete_run(data_csv, tmp_path):
    out = tmp_path / "out"
    assert main(["--data", data_csv, "--out", str(out), *BASE]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = textwrap.dedent(f"""
        import os, signal, sys
        import m2k_bt.engine.cerebro as engine
        from m2k_bt.cli.backtest import main
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        engine.run_backtest = killed
        sys.exit(main({["--data", data_csv, "--out", str(out), *BASE, "--no-plot"]!r}))
    """)
    proc = _child(code)
    proc.communicate(timeout=300)
    assert proc.returncode == -9
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".m2k_bt.lock"}
    assert after == before  # the old run, whole (the dead run's lock file aside: no lock held)
    assert main(["--data", data_csv, "--out", str(out), *BASE, "--no-plot"]) == 0  # not stuck


def test_symlink_planted_in_out_is_not_followed(data_csv, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("trades.csv", "equity.csv", "report.json", "plot.png", ".m2k_bt.lock"):
        (out / name).symlink_to(victim)
    # a symlink planted as the lock file is refused, not followed
    assert main(["--data", data_csv, "--out", str(out), *BASE]) == 2
    assert f"cannot write {out / '.m2k_bt.lock'}" in capsys.readouterr().err
    assert victim.read_text() == "precious"
    (out / ".m2k_bt.lock").unlink()
    assert main(["--data", data_csv, "--out", str(out), *BASE]) == 0
    assert victim.read_text() == "precious"
    for name in ("trades.csv", "equity.csv", "report.json", "plot.png"):
        assert not (out / name).is_symlink()
    _one_complete_run(out)


# -- item 10: a bad --out is found before the data is loaded; a full disk is one line ---------


def _bad_out(kind: str, tmp_path: Path, monkeypatch) -> tuple[Path, str]:
    if kind == "file":
        bad = tmp_path / "afile"
        bad.write_text("x")
        return bad, f"cannot write {bad}: it is a file, not a folder; choose another --out"
    if kind == "readonly":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        if os.geteuid() == 0:  # root writes anywhere: give the refusal the kernel would
            from m2k_bt import outputs

            def refuse(*args, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
        return ro / "out", f"cannot write {ro / 'out'}: permission denied"
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    return Path("/proc/self/m2k_out"), "cannot create /proc/self/m2k_out"


@pytest.mark.parametrize("sub", ["", "optimize", "walkforward", "live"])
@pytest.mark.parametrize("kind", ["file", "readonly", "proc"])
def test_bad_out_is_reported_before_loading_data(sub, kind, tmp_path, monkeypatch, capsys):
    bad, needle = _bad_out(kind, tmp_path, monkeypatch)
    missing = str(tmp_path / "missing.csv")  # never read: the --out check comes first
    data = ["--replay", missing] if sub == "live" else ["--data", missing]
    argv = [sub] if sub else []
    code = main([*argv, *data, "--out", str(bad), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err
    assert "missing.csv" not in err and "storage" not in err


def test_disk_full_while_writing_is_one_line_and_leaves_no_file(data_csv, tmp_path,
                                                               monkeypatch, capsys):
    from m2k_bt import outputs

    real = os.replace

    def full(src, dst):
        if Path(dst).name == "equity.csv":  # trades.csv landed; the disk fills on the next
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", full)
    out = tmp_path / "out"
    code = main(["--data", data_csv, "--out", str(out), *BASE])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"error: cannot write {out / 'equity.csv'}: no space left on the device; "
                   f"free some space or choose another --out\n")
    assert not out.exists() or not list(out.iterdir())  # not even the trades.csv it wrote


# -- items 18, 19: the command line's own words ------------------------------------------------


@pytest.fixture(scope="module")
def off_tick_csv(tmp_path_factory):
    df = rth_bars(end="2024-03-08")
    df.iloc[3:6, :4] += 0.03  # three bars 0.03 points off the 0.10 grid (like the RUT index)
    return write_bars_csv(df, tmp_path_factory.mktemp("offtick") / "rut_like_5min.csv")


def test_off_tick_error_names_the_cli_flags_not_python(off_tick_csv, tmp_path, capsys):
    code = main(["--data", off_tick_csv, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    for flag in ("--contract none", "--snap-to-tick", "--lenient"):
        assert flag in err
    for python in ("spec=None", "lenient=True", "snap_to_tick", "tz=", "fmt="):
        assert python not in err


def test_contract_none_backtests_off_tick_data(off_tick_csv, tmp_path):
    out = tmp_path / "o"
    assert main(["--data", off_tick_csv, "--out", str(out), *BASE, "--no-plot",
                 "--contract", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["contract"]["root"] == "M2K"  # traded as M2K
    assert any("--contract none" in w for w in report["warnings"])
    assert report["inputs"]["data"]["bars"] == len(rth_bars(end="2024-03-08"))


def test_snap_to_tick_repairs_and_reports_each_price(off_tick_csv, tmp_path):
    out = tmp_path / "o"
    assert main(["--data", off_tick_csv, "--out", str(out), *BASE, "--no-plot",
                 "--snap-to-tick"]) == 0
    report = json.loads((out / "report.json").read_text())
    data_lines = [w for w in report["warnings"] if w.startswith("data:")]
    assert len(data_lines) >= 3  # one line (at least) per repaired bar
    assert all("tick" in w for w in data_lines)


@pytest.mark.parametrize(
    "args,needle,banned",
    [
        (["--sizer", "fixed", "--sizer-param", "contracts=two"],
         "must be a whole number, got 'two'", "must be int"),
        (["--data", "{missing}"], "check the --data path", "omit --data"),
        (["live", "--replay", "{missing}"], "--replay", "omit --data"),
        (["--data", "{header}"], "header_only.csv", "the data is empty"),
    ],
)
def test_cli_wordings(args, needle, banned, data_csv, tmp_path, capsys):
    header = tmp_path / "header_only.csv"
    header.write_text("datetime,open,high,low,close,volume\n")
    argv = [a.format(missing=tmp_path / "missing.csv", header=header) for a in args]
    if "--data" not in argv and "live" not in argv:
        argv = ["--data", data_csv, *argv]
    code = main([*argv, "--out", str(tmp_path / "o"), "--quiet", "--no-plot"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert needle in err and banned not in err


# -- exit statuses of an interrupted run (README "Guarantees") --------------------------------


@pytest.mark.parametrize("sig,status,line", [(signal.SIGINT, 130, "error: interrupted"),
                                             (signal.SIGTERM, 143, "error: terminated (SIGTERM)")])
def test_interrupted_run_exits_130_or_143_and_leaves_nothing(sig, status, line, data_csv,
                                                              tmp_path):
    out = tmp_path / "out"
    run = _child(_held_run(["--data", data_csv, "--out", str(out), *BASE]))
    assert run.stdout.readline().strip() == "running"
    run.send_signal(sig)
    _, err = run.communicate("\n", timeout=120)
    assert run.returncode == status
    assert err.strip() == line  # one line, no traceback
    assert not out.exists()  # made by this run, left empty, unlocked: removed


def test_ctrl_c_while_writing_removes_what_the_run_wrote(data_csv, tmp_path, monkeypatch,
                                                         capsys):
    import m2k_bt.report.summary as report_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    assert main(["--data", data_csv, "--out", str(out), *BASE]) == 0  # an earlier run
    monkeypatch.setattr(report_mod, "plot_backtrader", interrupted, raising=False)
    monkeypatch.setattr("m2k_bt.report.plot.plot_backtrader", interrupted)
    assert main(["--data", data_csv, "--out", str(out), *BASE]) == 130
    assert capsys.readouterr().err.strip().endswith("error: interrupted")
    assert not [p.name for p in out.iterdir()]  # old run cleared first, new files removed


@pytest.mark.parametrize(
    "args, needle",
    [
        (["optimize", "--batch", "0"], "--batch must be a whole number >= 1"),
        (["walkforward", "--verify", "sometimes"], "invalid choice: 'sometimes'"),
        (["optimize", "--engine", "numba"], "invalid choice: 'numba'"),
    ],
)
def test_research_flags_refuse_bad_values_with_one_line(args, needle, data_csv, tmp_path,
                                                        capsys):
    """Issue 12's flags: a bad --batch, --verify or --engine is one line and exit 2."""
    code = main([*args, "--data", data_csv, "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "x" / "optimize.json").exists()
