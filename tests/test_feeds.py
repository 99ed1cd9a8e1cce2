"""load_bars formats and validation, BarsFeed parity with PandasData, resample_bars."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import warnings

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from conftest import make_bars, pandas_feed

from m2k_bt.contracts import M2K
from m2k_bt.errors import DataFeedError, ParameterError
from m2k_bt.feeds.bars import BarsFeed, resample_bars
from m2k_bt.feeds.loaders import LineNumbers, detect_format, load_bars, validate_bars

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
    with pytest.raises(DataFeedError, match=r"y\.csv, line 3: missing or non-finite price"):
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
    with pytest.raises(DataFeedError, match=r"line 3: row of another schema \(the file mixes"):
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
        ("2025-03-10 10:03:00-04:00,2000.0,2000.5,1999.8,nan,5", "missing or non-finite price",
         "drop"),
        ("not-a-time,2000.0,2000.5,1999.8,2000.3,5", "unparseable timestamp", "drop"),
        ("2025-03-10 10:03:00-04:00,2000.0,1999.9,1999.8,2000.3,5", "inconsistent OHLC",
         "widen high/low to cover open and close"),
        ("2025-03-10 10:03:00-04:00,-1.0,2000.5,-1.0,2000.3,5", "non-positive price", "drop"),
        ("2025-03-10 10:02:00-04:00,2000.0,2000.5,1999.8,2000.3,5", "duplicate timestamp",
         "drop (keeping the first)"),
        ("2025-03-10 10:03:00-04:00,2000.05,2000.5,1999.8,2000.3,5", "off the 0.1 tick grid",
         "round to 2000.0"),  # 2000.05 / 0.1 = 20000.4999..., nearest tick 20000
        ("2025-03-10 17:30:00-04:00,2000.0,2000.5,1999.8,2000.3,5", "outside the CME Globex",
         "drop"),
        ("2025-03-10 10:03:00-04:00,2000.0,2000.5,1999.8,2000.3,", "missing or non-numeric "
         "volume", "set to 0"),
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


def test_unsorted_is_reported_not_warned(tmp_path):
    # issue 24 item 16: the sort is in the report (the run's warnings), not a raw UserWarning
    # that echoes a source line on the command line
    path = write(tmp_path, "u.csv", [HEADER, GOOD[2], GOOD[0], GOOD[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = load_bars(path)
    assert df.index.is_monotonic_increasing
    (entry,) = df.attrs["report"]
    assert entry["action"] == "sorted" and entry["line"] == 3  # the first bar out of order
    assert "not in ascending order" in entry["problem"] and "\n" not in entry["problem"]
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
    from m2k_bt.feeds.synth import write_bars

    df = make_bars(300, freq="1min", start="2025-03-10 09:30")
    df["contract"] = "M2KM5"
    df["roll"] = False
    df.iloc[100, df.columns.get_loc("roll")] = True
    path = str(tmp_path / "rt.csv.gz")
    write_bars(df, path)
    back = load_bars(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False, check_freq=False)


def test_roll_column_words(tmp_path):
    # the roll column reads m2k_bt.errors.TRUE_WORDS (and 1.0, a float column written out);
    # anything else is no roll
    words = ["yes", "1.0", "on", "T", "0", "no", "", "0.0"]
    stamps = pd.date_range("2025-03-10 10:00", periods=len(words), freq="1min", tz=NY)
    lines = [f"{t.isoformat()},2000.0,2000.5,1999.8,2000.3,10,{w}" for t, w in zip(stamps, words)]
    df = load_bars(write(tmp_path, "roll.csv", [f"{HEADER},roll", *lines]))
    assert df["roll"].tolist() == [True] * 4 + [False] * 4


def test_loader_names_still_import_from_the_0_1_path_m2k_bt_feeds():
    # m2k_bt.feeds was one module in 0.1: its names stay importable from the package
    import m2k_bt
    import m2k_bt.feeds as feeds
    from m2k_bt.feeds import loaders

    for name in loaders.__all__:
        assert getattr(loaders, name) is getattr(feeds, name)
    assert m2k_bt.load_bars is loaders.load_bars and feeds.HINTS is loaders.HINTS


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
    from m2k_bt.brokers.commission import M2KCommInfo
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
    from m2k_bt.cli.backtest import main

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
    from m2k_bt.cli.backtest import main

    path, _ = loaded_5min
    out = tmp_path / "live"
    code = main(["live", "--replay", path, "--resample", "1h", "--speed", "0",
                 "--heartbeat", "0.02", "--param", "fast=3", "--param", "slow=8",
                 "--sizer", "fixed", "--out", str(out), "--no-plot", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "report.json").exists()


# ------------------------------------------------------------------ issue 11, item 4: no escapes


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("datetime,open,high,low,last,close,volume", "columns 'last' and 'close' both give"),
        ("datetime,Open,open,high,low,close,volume", "columns 'Open' and 'open' both give"),
        ("datetime,open,open,high,low,close,volume", "column 'open' appears twice"),
    ],
)
def test_duplicate_canonical_columns_are_a_data_feed_error(tmp_path, header, message):
    row = "2025-03-10 10:00:00-04:00,2000.0,2000.0,2000.5,1999.8,2000.3,120"
    with pytest.raises(DataFeedError, match=rf"dup\.csv, line 1: {message}") as err:
        load_bars(write(tmp_path, "dup.csv", [header, row]))
    assert "keep one of them" in str(err.value)


def test_validate_bars_duplicate_canonical_columns():
    df = make_bars(3, freq="1min", start="2025-03-10 10:00")
    df["Close"] = df["close"]
    with pytest.raises(DataFeedError, match=r"columns 'close' and 'Close' both give 'close'"):
        validate_bars(df)


def _gz_rows(n):
    rows = [HEADER] + [
        f"{t.isoformat()},2000.0,2000.5,1999.8,2000.3,{i}"
        for i, t in enumerate(pd.date_range("2025-03-10 09:30", periods=n, freq="1min", tz=NY))
    ]
    return gzip.compress(("\n".join(rows) + "\n").encode())


def test_corrupt_gzip_is_a_data_feed_error_naming_the_line(tmp_path):
    data = bytearray(_gz_rows(300))
    mid = len(data) // 2
    data[mid : mid + 40] = bytes(b ^ 0xFF for b in data[mid : mid + 40])  # zlib.error before
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataFeedError, match=r"bad\.csv\.gz: corrupt gzip data after line \d+ \("):
        load_bars(path)
    path.write_bytes(_gz_rows(300)[:-30])  # truncated
    with pytest.raises(DataFeedError, match=r"gzip data ends early, after line \d+"):
        load_bars(path, lenient=True)
    path.write_bytes(b"datetime,open\n")  # named .gz but plain text
    with pytest.raises(DataFeedError, match=r"not gzip data"):
        load_bars(path)


def test_databento_ts_event_out_of_range_is_a_data_feed_error(tmp_path):
    header = "ts_event,rtype,open,high,low,close,volume,symbol"
    lines = [header,
             "1741615200000000000,33,2000.0,2000.5,1999.8,2000.3,120,M2KM5",
             "99999999999999999999,33,2000.0,2000.5,1999.8,2000.3,120,M2KM5"]  # fmt: skip
    path = write(tmp_path, "db.csv", lines)
    with pytest.raises(DataFeedError, match=r"db\.csv, line 3: unparseable timestamp: 9{20}"):
        load_bars(path)
    df = load_bars(path, lenient=True)
    # 1741615200 s = 2025-03-10 14:00 UTC = 10:00 EDT
    assert [str(t) for t in df.index] == ["2025-03-10 10:00:00-04:00"]
    assert df.attrs["report"][0]["line"] == 3


@pytest.mark.parametrize(
    ("stamp", "message"),
    [
        ("2025-03-09 02:30", "this time does not exist in America/New_York"),
        ("2025-11-02 01:30", "this time is ambiguous in America/New_York"),
    ],
)
def test_naive_dst_gap_and_repeat_are_named(tmp_path, stamp, message):
    idx = pd.DatetimeIndex(["2025-03-07 10:00", stamp])
    df = pd.DataFrame({"open": [2000.0] * 2, "high": [2000.0] * 2, "low": [2000.0] * 2,
                       "close": [2000.0] * 2, "volume": [1.0] * 2}, index=idx)  # fmt: skip
    with pytest.raises(DataFeedError, match=rf"line 2: {message}.*: {stamp}") as err:
        validate_bars(df, spec=None)
    assert "add UTC offsets" in str(err.value) and "--tz" in str(err.value)
    out = validate_bars(df, spec=None, lenient=True)
    assert len(out) == 1 and out.attrs["report"][0]["line"] == 2
    # the same naive time read from a file (was "unparseable timestamp")
    path = write(tmp_path, "dst.csv", [HEADER, f"{stamp}:00,2000.0,2000.0,2000.0,2000.0,1"])
    with pytest.raises(DataFeedError, match=rf"dst\.csv, line 2: {message}"):
        load_bars(path, spec=None)
    # with a zone that has no such gap the time is fine: 02:30 UTC = 21:30 or 22:30 NY
    assert len(validate_bars(df, spec=None, tz="UTC")) == 2


def test_unknown_time_zone_is_a_data_feed_error(tmp_path):
    path = write(tmp_path, "a.csv", [HEADER, *GOOD])
    with pytest.raises(DataFeedError, match=r"tz='Mars/Olympus' is not a time zone.*--tz"):
        load_bars(path, tz="Mars/Olympus")


def test_binary_and_non_utf8_files_name_the_line(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes((HEADER + "\n" + GOOD[0] + "\n").encode() + b"\xff\xfe\x00garbage\n")
    with pytest.raises(DataFeedError, match=r"bin\.csv, line 3: not UTF-8 text"):
        load_bars(path)
    path.write_bytes((HEADER + "\n" + GOOD[0] + "\n\x00\x00\n").encode())
    with pytest.raises(DataFeedError, match=r"bin\.csv, line 3: a NUL byte"):
        load_bars(path)


def test_blank_lines_keep_line_numbers_true(tmp_path):
    bad = "2025-03-10 10:03:00-04:00,2000.0,2000.5,1999.8,nan,5"
    path = write(tmp_path, "blank.csv", [HEADER, GOOD[0], "", GOOD[1], "", bad])
    with pytest.raises(DataFeedError, match=r"blank\.csv, line 6: missing"):  # was line 4
        load_bars(path)


# ------------------------------------------------------------------ issue 11, item 13: prices


@pytest.mark.parametrize("value", ["1e308", "1e400", "inf", "-inf"])
@pytest.mark.parametrize("spec", [M2K, None])
def test_huge_and_infinite_prices_are_errors_or_dropped(tmp_path, value, spec):
    row = f"2025-03-10 10:03:00-04:00,2000.0,{value},1999.8,2000.3,5"
    path = write(tmp_path, "huge.csv", [HEADER, *GOOD, row])
    with pytest.raises(DataFeedError, match=r"line 5: (missing or non-finite|impossible)"):
        load_bars(path, spec=spec)
    df = load_bars(path, spec=spec, lenient=True)
    assert len(df) == 3 and np.isfinite(df[["open", "high", "low", "close"]].to_numpy()).all()
    assert [e["line"] for e in df.attrs["report"]] == [5]


def test_lenient_rounding_never_makes_a_zero_price(tmp_path):
    # 0.03 on the 0.10 grid rounds to 0.0, an impossible price: dropped with a report line
    row = "2025-03-10 10:03:00-04:00,0.03,0.1,0.03,0.1,5"
    df = load_bars(write(tmp_path, "z.csv", [HEADER, *GOOD, row]), lenient=True)
    assert len(df) == 3 and (df[["open", "high", "low", "close"]] > 0).all().all()
    lines = [(e["line"], e["action"]) for e in df.attrs["report"]]
    assert (5, "drop") in lines and any("rounds to 0" in e["problem"] for e in df.attrs["report"])


@pytest.mark.parametrize("price", ["2000.0015", "50000.05", "123456.05", "2000.0002"])
def test_tick_check_uses_an_absolute_tolerance(tmp_path, price):
    # relative tolerance (1e-6 x ticks) let 2000.0015 snap silently (0.015 ticks off) and above
    # 50,000 points (500,000 ticks: 0.5 ticks of tolerance) never caught an off-grid price
    row = f"2025-03-10 10:03:00-04:00,{price},{price},{price},{price},5"
    with pytest.raises(DataFeedError, match=rf"line 5: price off the 0.1 tick grid of M2K: "
                                            rf"open={price}, high={price}"):  # fmt: skip
        load_bars(write(tmp_path, "t.csv", [HEADER, *GOOD, row]))


def test_float64_and_float32_noise_still_snap_silently(tmp_path):
    rows = [HEADER,
            "2025-03-10 10:00:00-04:00,2000.1000000001,2000.2999999999,2000.0,2000.1,5",
            "2025-03-10 10:01:00-04:00,1416.400024,1419.300049,1403.699951,1408.699951,5"]
    df = load_bars(write(tmp_path, "n.csv", rows))  # fmt: skip
    assert df.iloc[0].tolist()[:4] == [2000.1, 2000.3, 2000.0, 2000.1]
    assert df.iloc[1].tolist()[:4] == [1416.4, 1419.3, 1403.7, 1408.7]
    assert df.attrs["report"] == []


# ------------------------------------------------------------------ issue 11, item 18


def test_off_tick_error_names_only_the_offending_columns(tmp_path):
    row = "2025-03-10 10:03:00-04:00,2000.0,2000.5,1999.8,2000.05,5"
    with pytest.raises(DataFeedError) as err:
        load_bars(write(tmp_path, "o.csv", [HEADER, *GOOD, row]))
    text = str(err.value)
    assert "grid of M2K: close=2000.05;" in text
    assert "open=" not in text and "volume=" not in text


def test_snap_to_tick_repairs_each_price_with_a_report_line(tmp_path):
    row = "2025-03-10 10:03:00-04:00,2000.04,2000.5,1999.8,2000.26,5"
    path = write(tmp_path, "s.csv", [HEADER, *GOOD, row])
    df = load_bars(path, snap_to_tick=True)
    assert df.iloc[3].tolist()[:4] == [2000.0, 2000.5, 1999.8, 2000.3]
    assert [(e["line"], e["problem"].split(": ")[1], e["action"]) for e in df.attrs["report"]] == [
        (5, "open=2000.04", "round to 2000.0"), (5, "close=2000.26", "round to 2000.3")]
    # every other check stays strict
    bad = write(tmp_path, "s2.csv", [HEADER, *GOOD, row, row])
    with pytest.raises(DataFeedError, match="duplicate timestamp"):
        load_bars(bad, snap_to_tick=True)
    out = validate_bars(load_bars(path, spec=None), snap_to_tick=True)
    assert out["close"].iloc[3] == 2000.3 and len(out.attrs["report"]) == 2


def test_spec_none_loads_cash_index_levels(tmp_path):
    # RUT cash index (Yahoo): float32 index levels to the cent, off any futures grid; volume in
    # the hundreds of millions; days the futures calendar may not know
    lines = ["Date,Close,High,Low,Open,Volume",
             "1987-09-10,168.97000122070312,168.97999572753906,167.44000244140625,"
             "167.44000244140625,179800000",
             "1987-09-11,170.5399932861328,170.5399932861328,168.75,168.97000122070312,178000000"]
    path = write(tmp_path, "rut.csv", lines)  # fmt: skip
    with pytest.raises(DataFeedError, match=r"--contract none / spec=None"):
        load_bars(path)
    df = load_bars(path, spec=None)
    assert df["close"].tolist() == [168.97000122070312, 170.5399932861328]
    assert df.attrs["report"] == [] and len(resample_bars(df, "1d")) == 2


@pytest.mark.parametrize(
    ("row", "hint"),
    [
        ("2025-03-10 10:03:00-04:00,2000.05,2000.5,1999.8,2000.3,5", "--snap-to-tick"),
        ("2025-03-10 17:30:00-04:00,2000.0,2000.5,1999.8,2000.3,5", "--tz"),
        ("2025-03-10 10:03:00-04:00,-1.0,2000.5,-1.0,2000.3,5", "--adjust ratio"),
        ("not-a-time,2000.0,2000.5,1999.8,2000.3,5", "--lenient"),
    ],
)
def test_hints_name_the_cli_flag_not_only_python(tmp_path, row, hint):
    with pytest.raises(DataFeedError) as err:
        load_bars(write(tmp_path, "h.csv", [HEADER, *GOOD, row]))
    text = str(err.value)
    assert hint in text and "--lenient / lenient=True" in text
    assert "pass spec=None" not in text and "pass tz=" not in text
    assert "load with lenient=True" not in text


# ------------------------------------------------------------------ issue 11, item 19: wording


def test_mixed_schema_message_reads_as_a_sentence(tmp_path):
    lines = ["schema,ts_event_utc,symbol,open,high,low,close,volume",
             "ohlcv-1m,2025-03-10 14:00:00+00:00,M2KM5,2000.0,2000.5,1999.8,2000.3,120",
             "ohlcv-1m,2025-03-10 14:01:00+00:00,M2KM5,2000.0,2000.5,1999.8,2000.3,120",
             "ohlcv-1h,2025-03-10 14:00:00+00:00,M2KM5,2000.0,2004.5,1999.8,2003.3,50"]  # fmt: skip
    with pytest.raises(DataFeedError) as err:
        load_bars(write(tmp_path, "mix.csv", lines))
    text = str(err.value)
    assert "drop (keeping schema ohlcv-1m) in" not in text
    assert text.endswith("to keep the ohlcv-1m rows (the most common) and drop the others")


def test_header_only_csv_names_the_file(tmp_path):
    with pytest.raises(DataFeedError, match=r"hdr\.csv: no bars, only the header line"):
        load_bars(write(tmp_path, "hdr.csv", [HEADER]))
    with pytest.raises(DataFeedError, match=r"hdr\.csv: no bars, only the header line"):
        load_bars(write(tmp_path, "hdr.csv", [HEADER, "", ""]))


def test_all_rows_dropped_names_the_file_and_first_problem(tmp_path):
    path = write(tmp_path, "all.csv", [HEADER, "x,1,1,1,1,1", "y,1,1,1,1,1"])
    expected = r"all\.csv: no bars left: every one of the 2 rows was dropped \(first: line 2: unp"
    with pytest.raises(DataFeedError, match=expected):
        load_bars(path, lenient=True)


def test_resample_naive_dst_or_nat_index_is_a_data_feed_error():
    # found by benchmarks/fuzz_parsers.py (seed 1): a naive index with a DST-gap time raised
    # pandas' ValueError inside resample_bars
    for stamp in ("2025-03-09 02:30", "2025-11-02 01:30", None, "2250-01-01"):
        idx = pd.DatetimeIndex(["2025-03-07 10:00", stamp])
        df = pd.DataFrame({"open": [1.0, 1.0], "high": [1.0, 1.0], "low": [1.0, 1.0],
                           "close": [1.0, 1.0], "volume": [1.0, 1.0]}, index=idx)  # fmt: skip
        with pytest.raises(DataFeedError, match=r"resample_bars: row 2 .*validate_bars"):
            resample_bars(df, "1min")


@pytest.mark.parametrize("stamp", ["-1", "0001-01-01 10:00", "1850-03-10 10:00", "9999-12-31"])
def test_timestamps_outside_the_calendar_range_are_reported(tmp_path, stamp):
    # found by the fuzz suite: '-1' parsed as year -1 and crashed the session check
    naive = [row.replace("-04:00", "") for row in GOOD]  # naive stamps like the bad one
    path = write(tmp_path, "old.csv", [HEADER, *naive, f"{stamp},2000.0,2000.5,1999.8,2000.3,5"])
    with pytest.raises(DataFeedError, match=r"old\.csv, line 5: timestamp out of range"):
        load_bars(path)
    df = load_bars(path, lenient=True)
    assert len(df) == 3 and df.attrs["report"][0]["line"] == 5


def test_out_of_range_and_unparseable_stamps_in_one_file(tmp_path):
    # found by the fuzz suite: dropping the out-of-range row first shifted the raw texts
    rows = ["datetime,open,high,low,close,volume",
            "-1,2000.0,2000.0,2000.0,2000.0,5", "nope,2000.0,2000.0,2000.0,2000.0,5",
            "2025-03-10 10:00:00,2000.0,2000.0,2000.0,2000.0,5"]  # fmt: skip
    df = load_bars(write(tmp_path, "two.csv", rows), lenient=True)
    assert [(e["line"], e["problem"]) for e in df.attrs["report"]] == [
        (2, "timestamp out of range (years 1900-2199): -1"),
        (3, "unparseable timestamp: nope")]


def test_databento_fixed_point_without_a_price_column_is_our_error(tmp_path):
    # found by the fuzz (seed 5): the 1e-9 scaling read every price column, KeyError 'high'
    path = tmp_path / "db.csv"
    path.write_text("ts_event,open,close,volume\n2025-03-10T14:00:00Z,2e12,2e12,5\n")
    with pytest.raises(DataFeedError, match="missing column"):
        load_bars(path, fmt="databento")
