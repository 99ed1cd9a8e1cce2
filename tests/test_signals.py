"""External signals: as-of alignment, max age, the feed line, the entry filter, no look-ahead."""

from __future__ import annotations

import json

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from conftest import make_bars, rth_bars, write_bars_csv

from m2k_bt.cli.backtest import main
from m2k_bt.engine import BacktestConfig, run_backtest
from m2k_bt.errors import DataFeedError, ParameterError
from m2k_bt.feeds.external import (
    Signal,
    SignalFeed,
    align_signal,
    load_signal,
    parse_signal_spec,
    signal_feed,
)
from m2k_bt.strategies.base import M2KStrategy

NY = "America/New_York"
MODES = [(True, True), (False, True), (False, False)]  # (runonce, preload)


def ny(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=NY)


def series(pairs) -> Signal:
    idx = pd.DatetimeIndex([ny(t) for t, _ in pairs])
    return Signal(pd.Series([v for _, v in pairs], index=idx))


class Flip(M2KStrategy):
    """Wants a position whenever flat and none whenever held (tries to enter every other bar)."""

    def _direction(self):
        return 0 if self.position.size else 1


class Reader(bt.Strategy):
    """A plain backtrader strategy reading the feed's extra line."""

    def __init__(self):
        self.seen = []

    def next(self):
        self.seen.append(float(self.data.lines.signal[0]))


def run_feed(strategy, bars, signal, runonce=True, preload=True, **params):
    cerebro = bt.Cerebro(runonce=runonce, preload=preload, stdstats=False)
    cerebro.adddata(SignalFeed(dataname=bars, signal=signal))
    cerebro.addstrategy(strategy, **params)
    return cerebro.run()[0]


# ------------------------------------------------------------------ alignment
def test_value_stamped_mid_bar_is_seen_from_the_next_bar():
    bars = pd.date_range("2024-03-05 10:00", periods=4, freq="5min", tz=NY)
    sig = series([("2024-03-05 10:02", 1.0), ("2024-03-05 10:10", 2.0)])
    # 10:00 bar: nothing known at its start; 10:02 first usable in the 10:05 bar;
    # 10:10 stamped exactly at a bar start: usable in that bar
    assert align_signal(sig, bars).tolist() == pytest.approx([np.nan, 1.0, 2.0, 2.0],
                                                             nan_ok=True)


def test_daily_value_is_used_from_the_next_session(tmp_path):
    path = tmp_path / "vix.csv"
    path.write_text("date,close\n2024-03-04,14.0\n2024-03-05,15.5\n")
    sig = load_signal(path)
    # a date-only stamp D becomes D 18:00 New York: the Globex reopen that starts trade date D+1
    assert list(sig.values.index) == [ny("2024-03-04 18:00"), ny("2024-03-05 18:00")]
    bars = pd.DatetimeIndex([ny(x) for x in ("2024-03-05 09:30", "2024-03-05 15:55",
                                             "2024-03-05 18:00", "2024-03-06 09:30")])
    # on March 5th's own session the 5th's close is not known yet: the 4th's is used
    assert align_signal(sig, bars).tolist() == [14.0, 14.0, 15.5, 15.5]
    late = load_signal(path, daily_at="24:00")
    assert align_signal(late, bars).tolist() == [14.0, 14.0, 14.0, 15.5]


def test_daily_bars_start_at_1800_the_evening_before():
    # resample_bars stamps a trade date's bar at midnight; it starts 18:00 the day before
    days = pd.DatetimeIndex([ny("2024-03-05"), ny("2024-03-06"), ny("2024-03-07")])
    sig = series([("2024-03-05 17:00", 1.0), ("2024-03-05 20:00", 2.0)])
    # the 20:00 value falls inside the bar of trade date 03-06 (started 03-05 18:00): next bar
    assert align_signal(sig, days).tolist() == pytest.approx([np.nan, 1.0, 2.0], nan_ok=True)


def test_values_carry_forward_until_max_age_then_unknown():
    bars = pd.date_range("2024-03-05 10:00", periods=6, freq="1h", tz=NY)
    sig = Signal(series([("2024-03-05 10:00", 5.0)]).values, max_age="2h")
    # ages 0, 1h, 2h (still usable), 3h, 4h, 5h (unknown)
    assert align_signal(sig, bars).tolist() == pytest.approx(
        [5.0, 5.0, 5.0, np.nan, np.nan, np.nan], nan_ok=True)
    forever = series([("2024-03-05 10:00", 5.0)])
    assert np.isfinite(align_signal(forever, bars)).all()


# ------------------------------------------------------------------ the feed line
@pytest.mark.parametrize("runonce,preload", MODES)
def test_signal_line_in_any_backtrader_strategy(runonce, preload):
    bars = make_bars(60, start="2024-03-05 09:30")
    sig = series([("2024-03-05 09:47", 1.5), ("2024-03-05 11:00", -2.0)])
    strat = run_feed(Reader, bars, sig, runonce, preload)
    assert strat.seen == pytest.approx(align_signal(sig, bars.index).tolist(), nan_ok=True)
    # 09:47 first seen in the 09:50 bar (number 4)
    assert np.isnan(strat.seen[3]) and strat.seen[4] == 1.5 and strat.seen[18] == -2.0


def test_named_signal_lines():
    bars = make_bars(10, start="2024-03-05 09:30")
    feed = signal_feed(bars, vix=series([("2024-03-05 09:30", 20.0)]),
                       pcr=series([("2024-03-05 09:40", 0.8)]))
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed)

    class Both(bt.Strategy):
        def __init__(self):
            self.rows = []

        def next(self):
            self.rows.append((self.data.lines.vix[0], self.data.lines.pcr[0]))

    cerebro.addstrategy(Both)
    rows = cerebro.run()[0].rows
    assert rows[0][0] == 20.0 and np.isnan(rows[0][1]) and rows[2] == (20.0, 0.8)
    with pytest.raises(ParameterError, match="not usable"):
        signal_feed(bars, close=series([("2024-03-05 09:30", 1.0)]))


# ------------------------------------------------------------------ the entry filter
@pytest.mark.parametrize("runonce,preload", MODES)
def test_entries_only_while_signal_in_range(runonce, preload):
    bars = make_bars(40, start="2024-03-05 09:30")
    sig = series([("2024-03-05 09:40", 0.5),  # in range from bar 2 (09:40)
                  ("2024-03-05 10:00", 3.0),  # too high from bar 6
                  ("2024-03-05 10:30", 1.0)])  # back in range from bar 12
    strat = run_feed(Flip, bars, sig, runonce, preload, signal_min=0.0, signal_max=2.0)
    decided = {tr["entry_dt"] - pd.Timedelta(minutes=5) for tr in strat.trade_log}
    stamps = [t.tz_localize(None) for t in bars.index]
    for i, when in enumerate(stamps):
        if when in decided:  # an entry decided on this bar: the signal was within range
            assert 2 <= i < 6 or i >= 12, when
    assert stamps[2] in decided and stamps[12] in decided
    unknown, high = strat.event_log
    assert unknown["action"] == "signal_blocked" and unknown["value"] is None
    assert unknown["bars"] == 2 and unknown["description"] == "signal unknown"  # bars 0, 1
    assert high["value"] == 3.0 and high["dt"] == stamps[6]


def test_signal_filter_needs_a_signal_line():
    bars = make_bars(10, start="2024-03-05 09:30")
    cerebro = bt.Cerebro(stdstats=False)
    from m2k_bt.feeds.bars import BarsFeed

    cerebro.adddata(BarsFeed(dataname=bars))
    cerebro.addstrategy(Flip, signal_min=1.0)
    with pytest.raises(ParameterError, match="'signal' line"):
        cerebro.run()
    with pytest.raises(ParameterError, match="signal_min"):
        Flip.validate_params({"signal_min": 3, "signal_max": 1})


@pytest.mark.parametrize("runonce,preload", MODES)
def test_no_look_ahead_shifting_a_value_one_bar_later(runonce, preload):
    """Delaying any one value by a bar never changes a decision made before that bar."""
    bars = make_bars(120, seed=2, start="2024-03-05 09:30")
    rng = np.random.default_rng(7)
    stamps = bars.index[::3] + pd.Timedelta(minutes=2)  # mid-bar stamps, every third bar
    values = rng.normal(0.0, 1.0, len(stamps))
    base = Signal(pd.Series(values, index=stamps))
    ref = run_feed(Flip, bars, base, runonce, preload, signal_min=-0.5, signal_max=0.8)
    for k in (3, 10, 25, 36):
        moved = stamps.tolist()
        moved[k] = moved[k] + pd.Timedelta(minutes=5)
        alt = run_feed(Flip, bars, Signal(pd.Series(values, index=pd.DatetimeIndex(moved))),
                       runonce, preload, signal_min=-0.5, signal_max=0.8)
        # the value first counts in bar b (the first bar starting at or after its stamp)
        b = bars.index[bars.index >= stamps[k]][0].tz_localize(None)

        def before(log, b=b):
            return [(r["dt"], r.get("description")) for r in log if r["dt"] < b]

        assert before(alt.event_log) == before(ref.event_log)
        fills = [tr["entry_dt"] for tr in ref.trade_log if tr["entry_dt"] <= b]
        assert [tr["entry_dt"] for tr in alt.trade_log if tr["entry_dt"] <= b] == fills
        aligned = align_signal(base, bars.index)
        shifted = align_signal(Signal(pd.Series(values, index=pd.DatetimeIndex(moved))),
                               bars.index)
        cut = int(np.searchsorted(bars.index.tz_localize(None), b))
        assert np.array_equal(aligned[:cut], shifted[:cut], equal_nan=True)


# ------------------------------------------------------------------ files and errors
def test_load_named_columns_and_spec(tmp_path):
    path = tmp_path / "sent.csv"
    path.write_text("timestamp,score,volume\n2024-03-05T14:30:00Z,0.4,10\n"
                    "2024-03-05 10:45,,11\n2024-03-05 11:00,-0.2,12\n")
    sig = load_signal(path, column="score")
    # 14:30Z = 09:30 New York; the empty score is skipped (the previous value carries on)
    assert list(sig.values.index) == [ny("2024-03-05 09:30"), ny("2024-03-05 11:00")]
    assert sig.values.tolist() == [0.4, -0.2] and sig.source.endswith("sent.csv:score")
    assert parse_signal_spec(f"{path}:score") == (str(path), "score")
    assert parse_signal_spec(str(path)) == (str(path), None)


@pytest.mark.parametrize("body,column,message", [
    ("time,value\n2024-03-05 10:00,1.0\n2024-03-05 10:05,abc\n", None,
     r"sig.csv:3: value 'abc' in column 'value' is not a number"),
    ("time,value\nmonday,1.0\n", None, r"sig.csv:2: time 'monday' is not an ISO"),
    ("time,value\n2024-03-05 10:00,1.0,9\n", None, r"sig.csv:2: expected 2 fields"),
    ("time,value\n2024-03-05 10:00,1\n2024-03-05 10:00,2\n", None, r"appears twice"),
    ("time,close\n2024-03-05,1\n", "clsoe", r"no column 'clsoe' \(did you mean 'close'\?\)"),
    ("time,a,b\n2024-03-05,1,2\n", None, r"several value columns"),
    ("time,value\n2024-03-05,inf\n", None, r"sig.csv:2: value 'inf'"),
    ("", None, r"empty signal file"),
])
def test_malformed_signal_files_name_file_line_and_value(tmp_path, body, column, message):
    path = tmp_path / "sig.csv"
    path.write_text(body)
    with pytest.raises(DataFeedError, match=message):
        load_signal(path, column=column)


def test_bad_max_age_and_daily_at():
    with pytest.raises(ParameterError, match="max_age"):
        Signal(series([("2024-03-05 10:00", 1.0)]).values, max_age="soon")
    with pytest.raises(ParameterError, match="daily_at"):
        load_signal(__file__, daily_at="25:00")


# ------------------------------------------------------------------ engine and CLI
def test_config_signal_through_the_engine(tmp_path):
    bars = rth_bars("2024-03-04", "2024-03-08")
    path = tmp_path / "vix.csv"
    path.write_text("date,close\n2024-03-01,13\n2024-03-04,25\n2024-03-05,14\n")
    cfg = BacktestConfig(strategy=Flip, sizer="fixed", signal=f"{path}:close", signal_max=20.0,
                         signal_max_age="3D")
    res = run_backtest(bars, cfg)
    events = res.analysis["events"]
    assert events["signal_blocked"] >= 1
    assert events["settings"]["signal"] == {"source": f"{path}:close",
                                            "max_age": "3 days 00:00:00"}
    # 03-04's close (25) is used on 03-05 (blocked), 03-05's (14) from 03-06 on
    days = {tr["entry_dt"].date().isoformat() for tr in res.trades}
    assert "2024-03-05" not in days and {"2024-03-04", "2024-03-06"} <= days


def test_cli_signal_flags(tmp_path, capsys):
    data = write_bars_csv(rth_bars("2024-03-04", "2024-03-08"), tmp_path / "bars.csv")
    sig = tmp_path / "sent.csv"
    sig.write_text("time,value\n2024-03-04 09:00,0.2\n2024-03-06 09:00,-0.7\n")
    out = tmp_path / "run"
    code = main(["--data", data, "--out", str(out), "--quiet", "--no-plot", "--sizer", "fixed",
                 "--param", "fast=5", "--param", "slow=20", "--signal", str(sig),
                 "--signal-min", "0", "--signal-max-age", "2D"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["analyzers"]["events"]["signal_blocked"] >= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("time,value\n2024-03-04 09:00,x\n")
    code = main(["--data", data, "--out", str(tmp_path / "o"), "--quiet", "--no-plot",
                 "--signal", str(bad), "--signal-min", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bad.csv:2: value 'x'" in err and "\n" not in err
