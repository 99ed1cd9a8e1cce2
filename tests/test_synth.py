"""The synthetic data generator: determinism, sessions, tick grid, contracts, CLI."""

from __future__ import annotations

import hashlib

import numpy as np

from m2k_bt.feeds import load_bars
from m2k_bt.feeds.synth import generate_continuous, main, session_index
from m2k_bt.sessions import in_globex_session


def test_session_index_skips_break_weekend_and_holiday():
    idx = session_index("2024-12-23", "2024-12-27", 60)
    assert in_globex_session(idx).all()
    assert not (idx.hour == 17).any()
    assert not any(t.date().isoformat() == "2024-12-25" and t.hour < 18 for t in idx)
    # 12-24 closes at 13:15 (12:15 CT) -> bars start 18:00 .. 13:00 = 20 hourly bars; full days
    # 23 bars
    per_day = idx.to_series().groupby((idx + np.timedelta64(6, "h")).date).size()
    assert per_day.tolist() == [23, 20, 23, 23]


def test_generate_continuous_is_deterministic_and_valid(tmp_path):
    cont, contracts = generate_continuous("2024-02-26", "2024-03-15", 15, seed=5)
    again, _ = generate_continuous("2024-02-26", "2024-03-15", 15, seed=5)
    assert cont.equals(again)
    assert set(contracts) >= {"M2KH4", "M2KM4"}
    assert cont["roll"].sum() == 1
    assert str(cont.index[cont["roll"]][0]) == "2024-03-06 18:00:00-05:00"
    assert (np.round(cont["close"] * 10) / 10 == cont["close"]).all()
    front = contracts["M2KH4"]
    # volume moves to the next contract around the roll
    assert contracts["M2KM4"]["volume"].iloc[-1] > front["volume"].iloc[-1]


def test_cli_same_bytes_and_strict_valid(tmp_path):
    out = tmp_path / "x.csv.gz"
    args = ["--seed", "2", "--start", "2024-03-04", "--end", "2024-03-08", "--freq", "5",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    first = hashlib.sha256(out.read_bytes()).hexdigest()
    assert main(args) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == first
    df = load_bars(out)
    assert len(df) == 5 * 276  # 5 sessions x 23 h x 12 bars
    assert df.attrs["report"] == []


def test_cli_user_error_exit_2(capsys):
    assert main(["--start", "2024-03-04"]) == 2
    assert "error:" in capsys.readouterr().err
