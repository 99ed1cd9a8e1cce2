"""Issue 24 (Hardening II), studies: a user's mistake on the command line is one line and exit
status 2, never a traceback, and never accepted silently with a wrong meaning."""

import pytest
from conftest import one_line_exit_2


@pytest.fixture(scope="module")
def data_csv(rth_csv):
    return rth_csv


@pytest.mark.parametrize(
    "args, needle",
    [
        (["optimize", "--dask", "nonsense"], "--dask"),
        (["optimize", "--seed", "-1"], "--seed"),
        (["optimize", "--seed", str(2**70)], "--seed"),
        (["optimize", "--strategy", "bollinger", "--space", "exit=middle,nowhere"], "nowhere"),
        (["optimize", "--reconnect", "-1"], "--reconnect"),
        (["optimize", "--reconnect", "nan"], "--reconnect"),
        (["optimize", "--study-name", ""], "--study-name"),
        (["walkforward", "--seed", "-1", "--folds", "2"], "--seed"),
    ],
)
def test_bad_study_values_are_one_line_and_exit_2(args, needle, data_csv, tmp_path, capsys):
    argv = [args[0], "--data", data_csv, *args[1:], "--out", str(tmp_path / "x"), "--quiet",
            "--trials", "2"]
    one_line_exit_2(argv, capsys, needle)
    assert not (tmp_path / "x" / "optimize.json").exists()
