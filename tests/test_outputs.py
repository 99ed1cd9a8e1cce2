"""m2k_bt.outputs: atomic files that never follow a symlink, a checked and locked output folder."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from m2k_bt import outputs
from m2k_bt.errors import ConfigError, M2KError, OutputError
from m2k_bt.outputs import (
    LOCK_NAME,
    OutputFolder,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    lock_output_dir,
)

ROOT = Path(__file__).resolve().parent.parent


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_output_error_is_a_config_error():
    assert issubclass(OutputError, ConfigError) and issubclass(OutputError, M2KError)


def test_atomic_writes_land_whole_and_leave_no_temp(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "héllo\n") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with atomic_open(tmp_path / "c.csv", "w", newline="") as fh:
        fh.write("x\r\n")
    assert (tmp_path / "c.csv").read_bytes() == b"x\r\n"
    assert _names(tmp_path) == {"a.txt", "b.bin", "c.csv"}
    assert oct((tmp_path / "a.txt").stat().st_mode & 0o777) == "0o644"


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("new, half")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _names(tmp_path) == {"report.json"}


def test_atomic_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("trades.csv", "report.json", "plot.png"):
        (out / name).symlink_to(victim)
    atomic_write_text(out / "trades.csv", "a,b\n")
    atomic_write_bytes(out / "plot.png", b"png")
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text("{}")
    assert victim.read_text() == "precious"
    for name in ("trades.csv", "report.json", "plot.png"):
        assert not (out / name).is_symlink()
    assert (out / "trades.csv").read_text() == "a,b\n"


def test_write_failure_enospc_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", full)
    with pytest.raises(OutputError) as exc:
        atomic_write_text(tmp_path / "trades.csv", "x" * 1000)
    msg = str(exc.value)
    assert str(tmp_path / "trades.csv") in msg and "no space left" in msg
    assert "storage" not in msg
    assert _names(tmp_path) == set()


@pytest.mark.parametrize("kind", ["file", "readonly", "proc"])
def test_check_writable_refuses_bad_folders(tmp_path, kind, monkeypatch):
    if kind == "file":
        bad = tmp_path / "afile"
        bad.write_text("x")
        needle = "is a file"
    elif kind == "readonly":
        if os.geteuid() == 0:  # root writes anywhere: fake the refusal the kernel would give
            def refuse(*args, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        bad = ro / "out"
        needle = "permission denied"
    else:
        if not Path("/proc/self").exists():
            pytest.skip("no /proc")
        bad = Path("/proc/self/m2k_out")
        needle = "cannot create /proc/self/m2k_out"
    with pytest.raises(OutputError) as exc:
        check_writable(bad)
    assert str(bad) in str(exc.value) and needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_check_writable_creates_the_folder_and_leaves_it_empty(tmp_path):
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert _names(tmp_path / "a" / "b") == set()


def test_lock_refuses_a_second_holder_with_one_line(tmp_path):
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from m2k_bt.outputs import OutputFolder
        with OutputFolder({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError) as exc:
            with OutputFolder(out):
                pass
        assert str(exc.value) == (f"{out} is in use by another run (pid {child.pid}); "
                                  f"wait for it or choose another --out")
    finally:
        child.communicate("\n", timeout=30)
    assert child.returncode == 0
    # released: a new run takes it, and leaves no lock file behind
    with lock_output_dir(out) as folder:
        assert (out / LOCK_NAME).exists() and folder.path == out
    assert not out.exists()  # created by the child, left empty: removed on release


def test_lock_is_shared_by_nested_use_in_one_process(tmp_path):
    (tmp_path / "keep").write_text("x")
    with OutputFolder(tmp_path) as outer:
        with OutputFolder(tmp_path) as inner:
            assert inner.path == outer.path
        assert (tmp_path / LOCK_NAME).exists()  # the outer still holds it
    assert _names(tmp_path) == {"keep"}


def test_a_killed_holder_does_not_leave_the_folder_locked(tmp_path):
    out = tmp_path / "run"
    code = f"""
import os, signal
from m2k_bt.outputs import OutputFolder
with OutputFolder({str(out)!r}):
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == -9
    assert (out / LOCK_NAME).exists()  # the stale file stays, but the kernel freed its lock
    with OutputFolder(out):
        pass


def test_clear_removes_marker_listed_files_and_leftovers_only(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"files": {"trades.csv": "trades", "extra.png": "x",'
                                     ' "../victim.txt": "evil"}}')
    (out / "trades.csv").write_text("old")
    (out / "extra.png").write_text("old")
    (out / "equity.csv").symlink_to(victim)
    (out / ".plot.png.abc123.m2k-tmp").write_text("half")
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    with OutputFolder(out) as folder:
        removed = folder.clear(["equity.csv", "sub"])
    assert removed[0] == "report.json"
    assert set(removed) == {"report.json", "trades.csv", "extra.png", "equity.csv",
                            ".plot.png.abc123.m2k-tmp"}
    assert _names(out) == {"notes.txt", "sub"}
    assert victim.read_text() == "precious"


# -------------------------------------------------------------------------------------------
# jsonable: the one JSON clean-up
# -------------------------------------------------------------------------------------------


def test_jsonable_gives_plain_json_types_with_new_york_times():
    import dataclasses
    import datetime as dt
    import json
    import math

    import numpy as np
    import pandas as pd

    from m2k_bt.outputs import jsonable

    @dataclasses.dataclass
    class Event:
        dt: object
        equity: float

    value = {
        "naive": dt.datetime(2024, 7, 1, 9, 30),  # New York wall time: -04:00 in July
        "aware": pd.Timestamp("2024-01-02 14:30", tz="UTC"),  # 09:30 New York, -05:00
        "day": dt.date(2024, 1, 2),
        "clock": dt.time(9, 30),
        "nan": math.nan,
        "inf": -math.inf,
        "np_int": np.int64(7),
        "np_nan": np.float32("nan"),
        "event": Event(dt.datetime(2024, 1, 2, 18, 0), 1.5),
        "tuple": (1, "a"),
        "set": {3},
        "cls": dict,
        "path": Path("/tmp/x.csv"),
        4: None,
    }
    assert jsonable(value) == {
        "naive": "2024-07-01T09:30:00-04:00",
        "aware": "2024-01-02T09:30:00-05:00",
        "day": "2024-01-02",
        "clock": "09:30:00",
        "nan": None,
        "inf": None,
        "np_int": 7,
        "np_nan": None,
        "event": {"dt": "2024-01-02T18:00:00-05:00", "equity": 1.5},
        "tuple": [1, "a"],
        "set": [3],
        "cls": "dict",
        "path": "/tmp/x.csv",
        "4": None,
    }
    json.dumps(jsonable(value), allow_nan=False)  # no NaN, nothing json cannot write


def test_jsonable_times_and_containers_only_variants():
    import datetime as dt
    import json
    import math

    import numpy as np
    import pandas as pd

    from m2k_bt.outputs import jsonable

    # times=str: what json.dumps(default=str) writes for a time (the optimiser's JSON files)
    fold = {"oos_start": pd.Timestamp("2024-03-01"), "sharpe": np.float64(1.25),
            "pbo": float("nan"), "trials": np.int64(20)}
    assert json.dumps(jsonable(fold, times=str)) == json.dumps(
        {"oos_start": "2024-03-01 00:00:00", "sharpe": 1.25, "pbo": None, "trials": 20})
    # containers_only: dicts and lists rebuilt, every other value kept as it is
    column = np.array([1.0, 2.0])
    when = dt.datetime(2024, 1, 2, 9, 30)
    analysis = {"equity": {"value": column}, "trades": {"trade_list": ({"entry_dt": when},)},
                1: [math.nan, 2]}
    out = jsonable(analysis, containers_only=True)
    assert out["equity"]["value"] is column  # a numpy column is not copied
    assert out["trades"] == {"trade_list": [{"entry_dt": when}]}
    assert math.isnan(out["1"][0]) and out["1"][1] == 2
