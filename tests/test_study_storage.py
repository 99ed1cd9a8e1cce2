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
