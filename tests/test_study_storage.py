"""Issue 24 (Hardening II), a study's storage: secrets in its URL are never shown, a planted
symlink is never followed, a full disk is said at once."""

from __future__ import annotations

import pytest

from m2k_bt.cli.backtest import main
from m2k_bt.optimize.storage import mask_url, one_line

SECRET = "pw-Secret-42"


# ---------------------------------------------------------------- item 12: every form masked


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql://m2k:pw-Secret-42@h/optuna", "postgresql://m2k:***@h/optuna"),
        ("postgresql://m2k@h/optuna?password=pw-Secret-42",
         "postgresql://m2k@h/optuna?password=***"),
        ("postgresql://m2k@h:5432/optuna?sslmode=require&password=pw-Secret-42&x=1",
         "postgresql://m2k@h:5432/optuna?sslmode=require&password=***&x=1"),
        ("postgresql://m2k@h/optuna?sslpassword=pw-Secret-42", "postgresql://m2k@h/optuna?"
         "sslpassword=***"),
        ("postgresql://m2k:pw@Secret-42@h/optuna", "postgresql://m2k:***@h/optuna"),
        ("postgresql://m2k:pw%40Secret-42@h/optuna", "postgresql://m2k:***@h/optuna"),
        ("postgresql+psycopg://:pw-Secret-42@h/optuna", "postgresql+psycopg://:***@h/optuna"),
        ("sqlite:////tmp/o/study.db", "sqlite:////tmp/o/study.db"),
    ],
)
def test_mask_url_masks_every_form_of_a_password(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url, message",
    [
        # a driver splitting at the first "@" takes "Secret-42@h" for the host
        ("postgresql://m2k:pw@Secret-42@h/optuna",
         'could not translate host name "Secret-42@h" to address'),
        ("postgresql://m2k@h/optuna?password=pw-Secret-42",
         'invalid connection option: password=pw-Secret-42'),
        ("postgresql://m2k:pw%40Secret-42@h/optuna", "auth failed for pw@Secret-42"),
        (None, "cannot parse postgresql://m2k:pw-Secret-42@h/db?password=pw-Secret-42"),
    ],
)
def test_one_line_leaves_no_piece_of_a_password(url, message):
    line = one_line(Exception(message), url)
    assert "Secret" not in line, line


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://m2k@127.0.0.1:1/optuna?password={SECRET}",
        f"postgresql://m2k:{SECRET}@127.0.0.1:1/optuna",
        "postgresql://m2k:pw@Secret-42@127.0.0.1:1/optuna",
        "postgresql://m2k:pw%40Secret-42@127.0.0.1:1/optuna",
    ],
)
def test_cli_storage_error_shows_no_secret(url, tmp_path, capsys):
    """Nothing listens on port 1: one line, exit 2, no piece of the password."""
    pytest.importorskip("psycopg")
    code = main(["optimize", "--storage", url, "--out", str(tmp_path / "o"), "--trials", "2",
                 "--quiet", "--reconnect", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 0, err
    assert "Secret" not in err, err


# ---------------------------------------------------------------- item 11: no symlink followed


def _fake_study(out, days=5, **kw):
    from test_optimize import FakeConfig, fake_run, hourly_bars

    from m2k_bt.optimize import optimize

    return optimize(hourly_bars(days), FakeConfig(), ["fast=10:30:10", "slow=100:150:50"],
                    sampler="grid", workers=1, out=out, run_backtest=fake_run, quiet=True,
                    overfitting=False, **kw)


@pytest.mark.parametrize("name", ["study.db", "study.db-wal", "study.db-shm",
                                  "study.db-journal"])
@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_planted_at_study_db_is_refused(tmp_path, name, dangling):
    """optimize and walk-forward refuse to open study.db (or its SQLite companions) through
    a symlink: SQLite would write into the target (or create it, for a dangling one)."""
    from m2k_bt.errors import OutputError

    victim = tmp_path / "precious.db"
    if not dangling:
        victim.write_bytes(b"keep me")
    for run in ("optimize", "walkforward"):
        out = tmp_path / run
        out.mkdir()
        (out / name).symlink_to(victim)
        with pytest.raises(OutputError, match=f"{name}: a symlink stands there"):
            if run == "optimize":
                _fake_study(out)
            else:
                from conftest import make_bars
                from test_optimize import FakeConfig, fake_run

                from m2k_bt.optimize import walk_forward

                walk_forward(make_bars(24 * 30, seed=4, freq="1h"), FakeConfig(),
                             ["fast=10:30:10", "slow=80:120:40"], in_sample="240b",
                             out_of_sample="120b", sampler="grid", workers=1,
                             run_backtest=fake_run, out=out, plot=False)
        assert victim.read_bytes() == b"keep me" if not dangling else not victim.exists()
        assert (out / name).is_symlink()


def test_cli_symlinked_study_db_is_one_line_exit_2(tmp_path, capsys):
    from conftest import rth_bars, write_bars_csv

    data = write_bars_csv(rth_bars(), tmp_path / "m2k_test_5min.csv")
    out = tmp_path / "o"
    out.mkdir()
    (out / "study.db").symlink_to(tmp_path / "elsewhere.db")
    assert main(["optimize", "--data", data, "--out", str(out), "--trials", "2",
                 "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "study.db: a symlink stands there" in err, err
    assert not (tmp_path / "elsewhere.db").exists()


# ---------------------------------------------------------------- item 13: a full disk


def test_a_full_disk_under_study_db_is_said_at_once(tmp_path, monkeypatch):
    """SQLite's own "database or disk is full" (its page limit reached, as a full disk
    does): one StorageError saying so, without retrying for --reconnect seconds."""
    from sqlalchemy import event

    import m2k_bt.optimize.storage as storage
    import m2k_bt.optimize.writebehind as behind
    from m2k_bt.optimize import StorageError

    real_fast = storage._fast_sqlite

    def full_at_its_size(engine):
        real_fast(engine)

        @event.listens_for(engine, "connect")
        def cap(dbapi_conn, _record):  # the file cannot grow: as on a full disk
            dbapi_conn.execute("PRAGMA max_page_count=1")

    class NoRetry:
        monotonic = staticmethod(__import__("time").monotonic)

        @staticmethod
        def sleep(seconds):
            raise AssertionError("a full disk was retried as a lost connection")

    monkeypatch.setattr(storage, "_fast_sqlite", full_at_its_size)
    monkeypatch.setattr(storage, "time", NoRetry)
    monkeypatch.setattr(behind, "FLUSH_SECONDS", 0.0)
    with pytest.raises(StorageError, match="no space left on the device") as info:
        _fake_study(tmp_path / "o", days=30, reconnect=600.0)  # 30 daily returns a trial
    message = str(info.value)
    assert "study.db" in message and "database or disk is full" in message
    assert "run the same command again" in message
