"""load_bars formats and validation, BarsFeed parity with PandasData, resample_bars."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from conftest import make_bars, pandas_feed

from m2k_bt.errors import DataFeedError, ParameterError
from m2k_bt.feeds import (
    BarsFeed,
    LineNumbers,
    detect_format,
    load_bars,
    resample_bars,
    validate_bars,
)

NY = "America/New_York"
GOOD = [  # Monday 2025-03-10, RTH
    "2025-03-10 10:00:00-04:00,2000.0,2000.5,1999.8,2000.3,120",
    "2025-03-10 10:01:00-04:00,2000.3,2000.6,2000.1,2000.2,80",
    "2025-03-10 10:02:00-04:00,2000.2,2000.4,1999.9,2000.0,95",
]
HEADER = "datetime,open,high,low,close,volume"


def write(tmp_path, name, lines, gz=False):
    path = tmp_path / name
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


# ------------------------------------------------------------------ formats


def test_generic_any_order_case_and_gz(tmp_path):
    lines = ["Volume,Close,Low,High,Open,DateTime"]
    for row in GOOD:
        ts, o, h, lo, c, v = row.split(",")
        lines.append(",".join([v, c, lo, h, o, ts]))
    df = load_bars(write(tmp_path, "a.csv.gz", lines, gz=True))
    assert df.attrs["format"] == "generic"
    assert list(df.columns) == ["open", "high", "low", "close", "volume"]
    assert df.index.name == "datetime" and str(df.index.tz) == NY
    assert df["close"].tolist() == [2000.3, 2000.2, 2000.0]
    assert df.dtypes.eq("float64").all()
    assert df.attrs["report"] == []


def test_generic_separate_date_and_time_naive_tz(tmp_path):
    lines = ["date,time,open,high,low,close,volume",
             "2025-03-10,14:00:00,2000.0,2000.5,1999.8,2000.3,120"]  # fmt: skip
    df = load_bars(write(tmp_path, "b.csv", lines), tz="UTC")  # 14:00 UTC = 10:00 EDT
    assert str(df.index[0]) == "2025-03-10 10:00:00-04:00"


def test_yahoo_nulls_adj_close(tmp_path):
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume",
             "2025-03-10,2000.0,2010.0,1990.0,2005.0,2005.0,1000",
             "2025-03-11,null,null,null,null,null,null",
             "2025-03-12,2005.0,2012.0,2001.0,2010.0,2010.0,900"]  # fmt: skip
    path = write(tmp_path, "y.csv", lines)
    with pytest.raises(DataFeedError, match=r"y\.csv, line 3: missing price"):
        load_bars(path)
    df = load_bars(path, lenient=True)
    assert df.attrs["format"] == "yahoo" and len(df) == 2
    assert df.attrs["ignored_columns"] == ["adjclose"]
    (entry,) = df.attrs["report"]
    assert entry["line"] == 3 and entry["action"] == "drop"
    assert str(entry["timestamp"].date()) == "2025-03-11"
    # a date-only bar is that trade date's session, not "outside the Globex session"
    assert str(df.index[0]) == "2025-03-10 00:00:00-04:00"


def test_yahoo_weekend_bar_flagged(tmp_path):
    lines = ["Date,Close,High,Low,Open,Volume", "2025-07-13,2000.0,2001.0,1999.0,2000.0,5"]
    with pytest.raises(DataFeedError, match=r"line 2: date is not a CME Globex trade date"):
        load_bars(write(tmp_path, "sun.csv", lines))


def test_ninjatrader(tmp_path):
    lines = ["20250310 140000;2000.0;2000.5;1999.8;2000.3;120",
             "20250310 140100;2000.3;2000.6;2000.1;2000.2;80"]  # fmt: skip
    df = load_bars(write(tmp_path, "nt.csv", lines), tz="UTC")
    assert df.attrs["format"] == "ninjatrader"
    assert str(df.index[1]) == "2025-03-10 10:01:00-04:00"
    assert df["volume"].tolist() == [120.0, 80.0]


def test_databento_nanoseconds_and_iso(tmp_path):
    ns = pd.Timestamp("2025-03-10 14:00", tz="UTC").value
    lines = ["ts_event,rtype,publisher_id,instrument_id,open,high,low,close,volume,symbol",
             f"{ns},33,1,42,2000.0,2000.5,1999.8,2000.3,120,M2KM5"]  # fmt: skip
    df = load_bars(write(tmp_path, "db.csv", lines))
    assert df.attrs["format"] == "databento"
    assert str(df.index[0]) == "2025-03-10 10:00:00-04:00"
    assert df["contract"].tolist() == ["M2KM5"]
    lines = ["ts_event,open,high,low,close,volume,symbol",
             "2025-03-10T14:00:00.000000000Z,2000.0,2000.5,1999.8,2000.3,120,M2KM5"]  # fmt: skip
    assert str(load_bars(write(tmp_path, "db2.csv", lines)).index[0]) == "2025-03-10 10:00:00-04:00"


def test_databento_fixed_point_prices(tmp_path):
    ns = pd.Timestamp("2025-03-10 14:00", tz="UTC").value
    lines = ["ts_event,open,high,low,close,volume,symbol",
             f"{ns},2000000000000,2000500000000,1999800000000,2000300000000,120,M2KM5"]  # fmt: skip
    assert load_bars(write(tmp_path, "db.csv", lines))["high"].iloc[0] == pytest.approx(2000.5)


def test_databento_mixed_schemas(tmp_path):
    lines = ["schema,ts_event_utc,symbol,open,high,low,close,volume",
             "ohlcv-1m,2025-03-10 14:00:00+00:00,M2KM5,2000.0,2000.5,1999.8,2000.3,120",
             "ohlcv-1h,2025-03-10 14:00:00+00:00,M2KM5,2000.0,2004.5,1999.8,2003.3,50"]  # fmt: skip
    path = write(tmp_path, "mix.csv", lines)
    with pytest.raises(DataFeedError, match=r"line 3: file mixes schemas"):
        load_bars(path)
    df = load_bars(path, lenient=True)
    assert len(df) == 1 and df.attrs["report"][0]["line"] == 3


def test_backtrader_format_header_one_short(tmp_path):
    lines = ["Date,Open,High,Low,Close,Volume,OpenInterest",
             "2025-03-10,10:00:00,2000.0,2000.5,1999.8,2000.3,120,7"]  # fmt: skip
    df = load_bars(write(tmp_path, "bt.txt", lines))
    assert df.attrs["format"] == "backtrader"
    assert df["openinterest"].tolist() == [7.0]
    assert str(df.index[0]) == "2025-03-10 10:00:00-04:00"


def test_detect_format_generic():
    assert detect_format(HEADER + "\n" + GOOD[0]) == "generic"


def test_unknown_fmt_and_missing_file(tmp_path):
    with pytest.raises(DataFeedError, match=r"unknown fmt 'yahooo' \(did you mean 'yahoo'\?\)"):
        load_bars(write(tmp_path, "a.csv", [HEADER, *GOOD]), fmt="yahooo")
    with pytest.raises(DataFeedError, match=r"nope\.csv: no such file"):
        load_bars(tmp_path / "nope.csv")


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("row", "message", "action"),
    [
        ("2025-03-10 10:03:00-04:00,2000.0,2000.5,1999.8,nan,5", "missing price", "drop"),
        ("not-a-time,2000.0,2000.5,1999.8,2000.3,5", "unparseable timestamp", "drop"),
        ("2025-03-10 10:03:00-04:00,2000.0,1999.9,1999.8,2000.3,5", "inconsistent OHLC",
         "widen high/low to cover open and close in"),
        ("2025-03-10 10:03:00-04:00,-1.0,2000.5,-1.0,2000.3,5", "non-positive price", "drop"),
        ("2025-03-10 10:02:00-04:00,2000.0,2000.5,1999.8,2000.3,5", "duplicate timestamp",
         "drop (keeping the first)"),
        ("2025-03-10 10:03:00-04:00,2000.05,2000.5,1999.8,2000.3,5", "off the 0.1 tick grid",
         "round to the nearest tick"),
        ("2025-03-10 17:30:00-04:00,2000.0,2000.5,1999.8,2000.3,5", "outside the CME Globex",
         "drop"),
        ("2025-03-10 10:03:00-04:00,2000.0,2000.5,1999.8,2000.3,", "missing or non-numeric "
         "volume", "set to 0 in"),
    ],
)  # fmt: skip
def test_each_problem_strict_and_lenient(tmp_path, row, message, action):
    path = write(tmp_path, "bad.csv", [HEADER, *GOOD, row])
    with pytest.raises(DataFeedError) as err:
        load_bars(path)
    text = str(err.value)
    assert "bad.csv, line 5" in text and message in text and "lenient=True" in text
    df = load_bars(path, lenient=True)
    (entry,) = df.attrs["report"]
    assert entry["line"] == 5 and message in entry["problem"] and entry["action"] == action
    assert df.index.is_monotonic_increasing and not df.index.duplicated().any()


def test_lenient_repairs_values(tmp_path):
    rows = [HEADER, *GOOD,
            "2025-03-10 10:03:00-04:00,2000.0,1999.9,1999.8,2000.3,5",
            "2025-03-10 10:04:00-04:00,2000.04,2000.5,1999.8,2000.3,5"]  # fmt: skip
    df = load_bars(write(tmp_path, "fix.csv", rows), lenient=True)
    assert df["high"].iloc[3] == 2000.3  # widened to the close
    assert df["open"].iloc[4] == 2000.0  # 2000.04 rounded to the tick
    assert [e["line"] for e in df.attrs["report"]] == [6, 5]


def test_float_noise_is_snapped_not_flagged(tmp_path):
    rows = [HEADER, "2025-03-10 10:00:00-04:00,1408.699951171875,1419.300048828125,"
            "1403.699951171875,1416.4000244140625,10"]  # fmt: skip
    df = load_bars(write(tmp_path, "noise.csv", rows))
    assert df.iloc[0].tolist()[:4] == [1408.7, 1419.3, 1403.7, 1416.4]


def test_unsorted_warns_and_reports(tmp_path):
    path = write(tmp_path, "u.csv", [HEADER, GOOD[2], GOOD[0], GOOD[1]])
    with pytest.warns(UserWarning, match="not in ascending order"):
        df = load_bars(path)
    assert df.index.is_monotonic_increasing
    assert df.attrs["report"][0]["action"] == "sorted"
    assert df.attrs["lines"].tolist() == [3, 4, 2]


def test_spec_none_skips_contract_checks(tmp_path):
    row = "2025-03-10 17:30:00-04:00,126.35,126.39,126.35,126.39,5"  # SPY, in the break
    df = load_bars(write(tmp_path, "spy.csv", [HEADER, row]), spec=None)
    assert df["open"].iloc[0] == 126.35


def test_missing_column(tmp_path):
    path = write(tmp_path, "m.csv", ["datetime,open,high,low,close", GOOD[0][:-4]])
    with pytest.raises(DataFeedError, match="missing column.*volume"):
        load_bars(path)


def test_validate_bars_in_memory():
    df = make_bars(5, freq="1min", start="2025-03-10 10:00")
    df.iloc[2, df.columns.get_loc("low")] = 1e9
    with pytest.raises(DataFeedError, match=r"<frame>, line 3: inconsistent OHLC"):
        validate_bars(df)
    assert validate_bars(df, lenient=True).attrs["report"][0]["line"] == 3


def test_bundled_format_round_trip(tmp_path):
    from m2k_bt.synth import write_bars

    df = make_bars(300, freq="1min", start="2025-03-10 09:30")
    df["contract"] = "M2KM5"
    df["roll"] = False
    df.iloc[100, df.columns.get_loc("roll")] = True
    path = str(tmp_path / "rt.csv.gz")
    write_bars(df, path)
    back = load_bars(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False, check_freq=False)


# ------------------------------------------------------------------ BarsFeed


class Cross(bt.Strategy):
    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=5), bt.ind.SMA(period=20))
        self.trades = []

    def next(self):
        if self.cross[0] > 0:
            self.order_target_size(target=1)
        elif self.cross[0] < 0:
            self.order_target_size(target=-1)

    def notify_trade(self, trade):
        if trade.isclosed:
            self.trades.append((trade.dtopen, trade.dtclose, round(trade.pnl, 6)))


def run(feed, **kwargs):
    cerebro = bt.Cerebro(stdstats=False, **kwargs)
    cerebro.adddata(feed)
    cerebro.addstrategy(Cross)
    cerebro.broker.setcash(10_000)
    cerebro.broker.setcommission(commission=0.62, mult=5.0, margin=700.0)
    strat = cerebro.run()[0]
    return strat.trades, cerebro.broker.getvalue()


@pytest.mark.parametrize("mode", [{}, {"preload": False}, {"runonce": False},
                                  {"preload": False, "runonce": False}])  # fmt: skip
def test_parity_with_pandasdata(mode):
    df = make_bars(1500, seed=3, freq="1min")
    ours = run(BarsFeed(dataname=df), **mode)
    theirs = run(pandas_feed(df), **mode)
    assert len(ours[0]) > 10
    assert ours[0] == theirs[0]
    assert ours[1] == pytest.approx(theirs[1], abs=1e-9)


@pytest.mark.parametrize("preload", [True, False])
def test_parity_fromdate_todate(preload):
    df = make_bars(1500, seed=4, freq="1min")
    window = {"fromdate": dt.datetime(2024, 1, 2, 11, 0), "todate": dt.datetime(2024, 1, 2, 20, 0)}
    ours = run(BarsFeed(dataname=df, **window), preload=preload)
    theirs = run(pandas_feed(df, **window), preload=preload)
    assert ours == theirs and len(ours[0]) > 0


def test_feed_presents_new_york_wall_clock_and_roll_line():
    df = make_bars(30, freq="1min", start="2025-03-10 09:30")
    df["contract"] = ["M2KH5"] * 10 + ["M2KM5"] * 20
    df["roll"] = [False] * 10 + [True] + [False] * 19
    seen = []

    class Probe(bt.Strategy):
        def next(self):
            d = self.data
            seen.append((d.datetime.datetime(0), d.roll[0], d.contract_at()))

    cerebro = bt.Cerebro(stdstats=False)
    feed = BarsFeed(dataname=df)
    cerebro.adddata(feed)
    cerebro.addstrategy(Probe)
    cerebro.run()
    assert seen[0] == (dt.datetime(2025, 3, 10, 9, 30), 0.0, "M2KH5")
    assert seen[10] == (dt.datetime(2025, 3, 10, 9, 40), 1.0, "M2KM5")
    assert sum(r for _, r, _ in seen) == 1.0
    assert feed.contracts[10] == "M2KM5"
    assert feed.contract_at(pd.Timestamp("2025-03-10 09:45", tz=NY)) == "M2KM5"
    assert feed._timeframe == bt.TimeFrame.Minutes and feed._compression == 1


def test_feed_rejects_unknown_kwargs():
    with pytest.raises(ParameterError, match=r"unknown BarsFeed parameter 'fromdat' \(did you"):
        BarsFeed(dataname=make_bars(5), fromdat=dt.datetime(2024, 1, 1))
    with pytest.raises(ParameterError, match="DataFrame"):
        BarsFeed(dataname="file.csv")


# ------------------------------------------------------------------ resample


def test_resample_never_spans_break_and_daily_is_trade_date():
    idx = pd.date_range("2025-03-10 16:00", "2025-03-11 10:00", freq="1min", tz=NY)
    idx = idx[(idx.hour != 17)]  # the maintenance break
    n = len(idx)
    df = pd.DataFrame({"open": np.arange(n, dtype=float) + 1, "high": np.arange(n) + 2.0,
                       "low": np.arange(n, dtype=float) + 0.5, "close": np.arange(n) + 1.5,
                       "volume": np.ones(n)}, index=idx)  # fmt: skip
    h4 = resample_bars(df, "4h")
    # bins count from the 18:00 open: 14:00-18:00 holds 16:00-16:59 only (60 bars)
    assert str(h4.index[0]) == "2025-03-10 14:00:00-04:00"
    assert h4["volume"].iloc[0] == 60.0
    assert str(h4.index[1]) == "2025-03-10 18:00:00-04:00"
    day = resample_bars(df, "1d")
    # trade date 03-10: 16:00-16:59 (60 bars); trade date 03-11: 18:00 .. 10:00 (16 h x 60 + 1)
    assert [str(d.date()) for d in day.index] == ["2025-03-10", "2025-03-11"]
    assert day["volume"].tolist() == [60.0, 961.0]
    assert day["open"].iloc[1] == 61.0 and day["close"].iloc[1] == n + 0.5
    m5 = resample_bars(df, "5min")
    assert m5["volume"].sum() == n and (m5["high"] >= m5["low"]).all()


def test_resample_bad_rule():
    with pytest.raises(DataFeedError, match="'Nmin'"):
        resample_bars(make_bars(10), "5 parsecs")


def test_bars_feed_runs_again_after_releasing_its_arrays():
    # a bulk preload hands the arrays to the line buffers and drops them; a second run of the
    # same feed (e.g. cerebro.run() again) rebuilds them from the frame: same bars, same result
    from m2k_bt.commission import M2KCommInfo
    from m2k_bt.strategies import SmaCrossover

    feed = BarsFeed(dataname=make_bars(600, seed=9))
    finals = []
    for _ in range(2):
        cerebro = bt.Cerebro(stdstats=False)
        cerebro.adddata(feed)
        cerebro.broker.addcommissioninfo(M2KCommInfo())
        cerebro.broker.setcash(25_000.0)
        cerebro.addstrategy(SmaCrossover, fast=10, slow=30)
        cerebro.run()
        assert feed._cols is None  # released after the bulk preload
        finals.append(cerebro.broker.getvalue())
    assert finals[0] == finals[1] != 25_000.0


# ------------------------------------------------------------------ issue 11, item 1: attrs


@pytest.fixture(scope="module")
def loaded_5min(tmp_path_factory):
    from conftest import rth_bars, write_bars_csv

    path = write_bars_csv(rth_bars(), tmp_path_factory.mktemp("rs") / "M2KH4_5min.csv")
    return path, load_bars(path)


@pytest.mark.parametrize("rule", ["15min", "1h", "4h", "1d"])
def test_resample_works_on_frames_from_load_bars(loaded_5min, rule):
    # pandas 3 compares attrs with == inside groupby/concat: a numpy array there raised
    # "truth value of an array ... is ambiguous" for every rule
    _, df = loaded_5min
    out = resample_bars(df, rule)
    assert len(out) > 0 and out["volume"].sum() == df["volume"].sum()
    assert "lines" not in out.attrs  # rows no longer match file lines
    assert out.attrs["source"] == df.attrs["source"] and out.attrs["report"] == []


def test_loaded_frames_concat_and_keep_line_numbers(loaded_5min):
    _, df = loaded_5min
    both = pd.concat([df.iloc[:10], df.iloc[10:20]])
    assert both.attrs["lines"] == df.attrs["lines"]  # one bool, not an array
    assert isinstance(df.attrs["lines"], LineNumbers)
    assert np.asarray(df.attrs["lines"])[:3].tolist() == [2, 3, 4]
    assert not [k for k, v in df.attrs.items() if isinstance(v, np.ndarray)]
    framed = validate_bars(df)
    assert not [k for k, v in framed.attrs.items() if isinstance(v, np.ndarray)]
    assert len(resample_bars(framed, "1h")) > 0


def test_cli_backtest_with_resample_1h(loaded_5min, tmp_path, capsys):
    from m2k_bt.cli import main

    path, _ = loaded_5min
    out = tmp_path / "out"
    code = main(["--data", path, "--resample", "1h", "--param", "fast=3", "--param", "slow=8",
                 "--out", str(out), "--no-plot", "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    data = report["inputs"]["data"]
    # 28 weekdays of 5-min bars 09:35-16:00; hourly bins start 09:00, 10:00, ..., 16:00 (the
    # 16:00 bar alone): 8 bins a day x 28 days = 224 bars
    assert data["resample"] == "1h" and data["bars"] == 8 * 28


def test_live_replay_with_resample(loaded_5min, tmp_path, capsys):
    from m2k_bt.cli import main

    path, _ = loaded_5min
    out = tmp_path / "live"
    code = main(["live", "--replay", path, "--resample", "1h", "--speed", "0",
                 "--heartbeat", "0.02", "--param", "fast=3", "--param", "slow=8",
                 "--sizer", "fixed", "--out", str(out), "--no-plot", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "report.json").exists()
