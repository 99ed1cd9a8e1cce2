"""Property-based fuzzing of every parser and validator (issue 11): whatever the input, the result
is a valid bar frame whose every dropped row is in the report, or one of our own errors; never
another exception.

Issue 24 adds properties with a known answer: a header's columns in any order, day/month dates in
either order with a day that settles it, and columns that mix UTC offsets load the same frame as
the plain ISO file (or, for a column mixing stamps with and without an offset, one one-line
DataFeedError, or with ``lenient`` exactly those rows dropped and listed).

Bounded for the suite (11 tests x 40 examples, derandomized so CI is stable). The longer run is
``python benchmarks/fuzz_parsers.py``, which runs these same tests with more, random examples
(environment variables ``M2K_FUZZ_EXAMPLES`` and ``M2K_FUZZ_SEED``).
"""

from __future__ import annotations

import gzip
import os
import warnings

import numpy as np
import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from m2k_bt.contracts import M2K, parse_symbol  # noqa: E402
from m2k_bt.errors import DataFeedError, M2KError  # noqa: E402
from m2k_bt.feeds.bars import resample_bars  # noqa: E402
from m2k_bt.feeds.loaders import PRICE_COLUMNS, load_bars, validate_bars  # noqa: E402

NY = "America/New_York"
_SEED = os.environ.get("M2K_FUZZ_SEED")
SUITE = settings(
    max_examples=int(os.environ.get("M2K_FUZZ_EXAMPLES", "40")),
    deadline=None,
    derandomize=_SEED is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)  # fmt: skip


def seeded(test):
    """Fixed seed for the long run (``M2K_FUZZ_SEED``); the suite is derandomized instead."""
    return hypothesis.seed(int(_SEED))(test) if _SEED is not None else test


# ------------------------------------------------------------------ strategies

# a few trade days only (each new date range costs a calendar lookup): a normal week, both DST
# days, a day of mourning, Christmas
DAYS = ["2025-03-07", "2025-03-09", "2025-03-10", "2025-11-02", "2025-11-03", "2025-01-09",
        "2025-12-25"]  # fmt: skip
TIMES = ["00:00:00", "01:30:00", "02:30:00", "09:30:00", "10:00:00", "16:59:00", "17:30:00",
         "18:00:00", "23:59:59"]  # fmt: skip
OFFSETS = ["", "", "-04:00", "-05:00", "+00:00", "Z", "+05", "+06", " UTC"]  # issue 24: +05, UTC

stamps = st.one_of(
    st.builds(lambda d, t, o: f"{d} {t}{o}", st.sampled_from(DAYS), st.sampled_from(TIMES),
              st.sampled_from(OFFSETS)),
    st.sampled_from(DAYS),
    st.builds(lambda d, t: d.replace("-", "") + " " + t.replace(":", ""), st.sampled_from(DAYS),
              st.sampled_from(TIMES)),
    st.builds(lambda d, t, s: f"{d[8:]}{s}{d[5:7]}{s}{d[:4]} {t}", st.sampled_from(DAYS),
              st.sampled_from(TIMES), st.sampled_from("/.-")),  # day first (issue 24)
    st.sampled_from(TIMES),  # a time without a date
    st.sampled_from(["1741615200000000000", "99999999999999999999", "0", "-1", "NaT", "",
                     "2025-02-30 10:00", "9999-12-31 23:59", "yesterday", "2025-13-01"]),
    st.text(max_size=12),
)  # fmt: skip
numbers = st.one_of(
    st.sampled_from(["2000.0", "2000.1", "2000.05", "2000.0015", "1408.699951171875", "0.03",
                     "0", "-1", "1e308", "1e400", "inf", "-inf", "nan", "NaN", "null", "",
                     "1,5", "٢٠٠٠", "2000.0000001", "50000.05", "2e9", " 2000.2 "]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-10, max_value=10**6).map(str),
    st.text(max_size=6),
)  # fmt: skip
HEADER_NAMES = ["datetime", "DateTime", "timestamp", "ts_event", "date", "time", "open", "Open",
                "o", "high", "low", "close", "last", "Close", "volume", "vol", "openinterest",
                "contract", "symbol", "roll", "schema", "Adj Close", "extra", "ünïcode", ""]
CANONICAL = ["datetime", "open", "high", "low", "close", "volume"]
DELIMS = [",", ",", ",", ";", "\t", "|"]


@st.composite
def csv_text(draw) -> tuple[str, str]:
    """CSV-ish text: a header (usually canonical, sometimes odd) and rows of mixed fields."""
    if draw(st.booleans()):
        header = CANONICAL[:]
    else:
        header = draw(st.lists(st.sampled_from(HEADER_NAMES), min_size=1, max_size=8))
    delim = draw(st.sampled_from(DELIMS))
    rows = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        fields = [draw(stamps)] + [draw(numbers) for _ in header[1:]]
        if draw(st.integers(min_value=0, max_value=9)) == 0:  # a ragged row
            fields = fields[: draw(st.integers(min_value=0, max_value=len(fields)))]
        rows.append(delim.join(fields))
    if rows and draw(st.booleans()):
        rows.insert(draw(st.integers(min_value=0, max_value=len(rows))), "")  # a blank line
    newline = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    return delim.join(header) + newline + newline.join(rows) + newline, delim


@st.composite
def bar_rows(draw) -> list[str]:
    """Mostly good 1-minute bars on the M2K grid, with injected faults: duplicate and unsorted
    stamps, DST stamps, NaN, inf, huge, zero, off-grid and inconsistent prices."""
    n = draw(st.integers(min_value=1, max_value=12))
    base = pd.Timestamp(draw(st.sampled_from(["2025-03-10 10:00", "2025-11-03 10:00"])), tz=NY)
    rows = []
    for i in range(n):
        ts = (base + pd.Timedelta(minutes=i)).isoformat(sep=" ")
        p = 2000.0 + draw(st.integers(min_value=-20, max_value=20)) / 10
        o, h, lo, c, v = p, p + 0.5, p - 0.5, p + 0.1, str(draw(st.integers(0, 500)))
        fault = draw(st.integers(min_value=0, max_value=12))
        vals = [f"{o:.1f}", f"{h:.1f}", f"{lo:.1f}", f"{c:.1f}", v]
        if fault == 1:
            vals[draw(st.integers(0, 3))] = draw(st.sampled_from(["nan", "inf", "1e308", "0",
                                                                  "-5", "0.03", "2000.05"]))
        elif fault == 2:
            ts = rows[-1].split(",")[0] if rows else ts  # duplicate stamp
        elif fault == 3:
            ts = draw(st.sampled_from(["2025-03-09 02:30:00", "2025-11-02 01:30:00",
                                       "2025-03-10 17:30:00-04:00", "garbage"]))
        elif fault == 4:
            vals[1] = f"{lo - 1:.1f}"  # high below low
        elif fault == 5:
            vals[4] = draw(st.sampled_from(["-1", "nan", ""]))
        rows.append(",".join([ts, *vals]))
    if draw(st.booleans()):
        rows = draw(st.permutations(rows))
    return rows


# ------------------------------------------------------------------ the property


def check_frame(df: pd.DataFrame, spec=M2K) -> None:
    """A valid bar frame: what every consumer of load_bars/validate_bars relies on."""
    assert isinstance(df.index, pd.DatetimeIndex) and str(df.index.tz) == NY
    assert not df.index.isna().any()
    assert (np.diff(df.index.asi8) > 0).all()
    for col in (*PRICE_COLUMNS, "volume"):
        assert df[col].dtype == "float64", col
    px = df[list(PRICE_COLUMNS)].to_numpy()
    assert np.isfinite(px).all() and (px > 0).all()
    assert (df["high"] >= df[["open", "close"]].max(axis=1)).all()
    assert (df["low"] <= df[["open", "close"]].min(axis=1)).all()
    vol = df["volume"].to_numpy()
    assert np.isfinite(vol).all() and (vol >= 0).all()
    if spec is not None:
        ticks = px / spec.tick_size
        assert np.allclose(ticks, np.round(ticks), atol=1e-6)
    assert len(df.attrs["lines"]) == len(df)


def check_load(path, data_lines=None, **kwargs):
    """``load_bars`` gives a valid frame or an M2KError; with ``data_lines`` (file lines that
    hold a row) every line not kept is in the report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            df = load_bars(path, **kwargs)
        except M2KError as exc:
            assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)  # one line
            return None
    check_frame(df, kwargs.get("spec", M2K))
    if data_lines is not None:
        kept = set(df.attrs["lines"].tolist())
        reported = {e["line"] for e in df.attrs["report"]}
        assert set(data_lines) - kept <= reported, (set(data_lines) - kept, reported)
    return df


# ------------------------------------------------------------------ load_bars


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@seeded
@SUITE
@given(data=st.binary(max_size=300), gz=st.booleans(), name=st.sampled_from(["a.csv", "b.txt"]))
def test_random_bytes_never_escape(folder, data, gz, name):
    path = folder / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz and data[:1] != b"\x00" else data)
    check_load(path)
    check_load(path, lenient=True, spec=None)


@seeded
@SUITE
@given(text=csv_text(), lenient=st.booleans(), spec=st.sampled_from([M2K, None]),
       fmt=st.sampled_from([None, None, "generic", "yahoo", "ninjatrader", "databento",
                            "backtrader"]), tz=st.sampled_from([None, None, "UTC"]))  # fmt: skip
def test_csv_like_text_in_every_format(folder, text, lenient, spec, fmt, tz):
    path = folder / "t.csv"
    path.write_text(text[0], encoding="utf-8")
    check_load(path, lenient=lenient, spec=spec, fmt=fmt, tz=tz)


@seeded
@SUITE
@given(rows=bar_rows(), spec=st.sampled_from([M2K, None]), snap=st.booleans())
def test_lenient_loading_reports_every_dropped_row(folder, rows, spec, snap):
    path = folder / "bars.csv"
    path.write_text("datetime,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    data_lines = range(2, 2 + len(rows))
    check_load(path, data_lines=data_lines, lenient=True, spec=spec)
    check_load(path, spec=spec, snap_to_tick=snap)  # strict: valid frame or our error


@seeded
@SUITE
@given(rows=bar_rows(), cut=st.floats(min_value=0.0, max_value=1.0), flips=st.integers(0, 3),
       where=st.integers(min_value=0, max_value=10**6))  # fmt: skip
def test_truncated_and_corrupt_gzip(folder, rows, cut, flips, where):
    data = bytearray(gzip.compress(("datetime,open,high,low,close,volume\n"
                                    + "\n".join(rows) + "\n").encode()))  # fmt: skip
    for k in range(flips):
        data[(where + 7 * k) % len(data)] ^= 0x5A
    data = data[: max(1, int(len(data) * cut))] if cut < 1.0 else data
    path = folder / "g.csv.gz"
    path.write_bytes(bytes(data))
    check_load(path)
    check_load(path, lenient=True)


# ------------------------------------------------------------------ known answers (issue 24)

# weekdays of March 2024 before Good Friday: no holiday, no early close
GOOD_DAYS = [d.date() for d in pd.bdate_range("2024-03-01", "2024-03-28")]
RTH_TIMES = ["09:35:00", "10:00:00", "12:15:00", "15:55:00"]
ISO_COLUMNS = ["open", "high", "low", "close", "volume", "openinterest"]


@st.composite
def good_bars(draw, days=GOOD_DAYS) -> list[tuple]:
    """Valid M2K bars ``(naive New York time, open, high, low, close, volume, oi)``, sorted."""
    chosen = draw(st.lists(st.sampled_from(days), min_size=1, max_size=4, unique=True))
    times = draw(st.lists(st.sampled_from(RTH_TIMES), min_size=1, max_size=3, unique=True))
    rows = []
    for ts in sorted(pd.Timestamp(f"{d} {t}") for d in chosen for t in times):
        o = 2000 + draw(st.integers(-50, 50)) / 10
        c = o + draw(st.integers(-5, 5)) / 10
        h, lo = max(o, c) + draw(st.integers(0, 5)) / 10, min(o, c) - draw(st.integers(0, 5)) / 10
        rows.append((ts, round(o, 1), round(h, 1), round(lo, 1), round(c, 1),
                     draw(st.integers(0, 900)), draw(st.integers(0, 50))))  # fmt: skip
    return rows


def iso_frame(folder, bars) -> pd.DataFrame:
    """The reference: the same bars as a plain ISO file with offsets."""
    lines = ["datetime," + ",".join(ISO_COLUMNS)]
    for ts, *vals in bars:
        lines.append(",".join([ts.tz_localize(NY).isoformat(sep=" "), *map(str, vals)]))
    path = folder / "iso.csv"
    path.write_text("\n".join(lines) + "\n")
    return load_bars(path)


def same_bars(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got[ISO_COLUMNS], ref[ISO_COLUMNS], check_freq=False)


@seeded
@SUITE
@given(bars=good_bars(), order=st.permutations([*ISO_COLUMNS, "vwap"]),
       where=st.integers(0, 7), split=st.booleans(),
       case=st.sampled_from([str.lower, str.capitalize, str.upper]))  # fmt: skip
def test_any_column_order_loads_the_same_frame(folder, bars, order, where, split, case):
    """Item 7: whatever the order of a header's columns (Date,Time first included, which looks
    like backtrader's layout), the columns are found by name."""
    stamp_cols = ["date", "time"] if split else ["datetime"]
    columns = [*order[:where], *stamp_cols, *order[where:]]
    lines = [",".join(case(c) for c in columns)]
    for ts, o, h, lo, c, v, oi in bars:
        vals = {"open": o, "high": h, "low": lo, "close": c, "volume": v, "openinterest": oi,
                "vwap": round((h + lo) / 2, 2), "datetime": ts.isoformat(sep=" "),
                "date": f"{ts:%Y-%m-%d}", "time": f"{ts:%H:%M:%S}"}  # fmt: skip
        lines.append(",".join(str(vals[col]) for col in columns))
    path = folder / "order.csv"
    path.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same_bars(load_bars(path), iso_frame(folder, bars))


def _dm_text(ts: pd.Timestamp, order: str, sep: str, short_year: bool) -> str:
    year = f"{ts:%y}" if short_year else f"{ts:%Y}"
    first, second = (ts.day, ts.month) if order == "dmy" else (ts.month, ts.day)
    return f"{first:02d}{sep}{second:02d}{sep}{year}"


@seeded
@SUITE
@given(bars=good_bars(), order=st.sampled_from(["dmy", "mdy"]),
       sep=st.sampled_from(["/", ".", "-"]), short_year=st.booleans(), split=st.booleans(),
       settle=st.booleans())  # fmt: skip
def test_day_month_dates_in_either_order(folder, bars, order, sep, short_year, split, settle):
    """Item 8: dates in day/month or month/day order load the same frame as ISO dates when a
    day above 12 settles the order (or ``date_format`` says it); when nothing settles it the
    load is one one-line error naming the column and --date-format, never a guess."""
    if settle and all(ts.day <= 12 for ts, *_ in bars):
        bars = sorted([*bars, (pd.Timestamp("2024-03-14 10:00"), *bars[0][1:])])
    elif not settle:
        bars = [b for b in bars if b[0].day <= 12] or [(pd.Timestamp("2024-03-05 10:00"),
                                                         *bars[0][1:])]  # fmt: skip
    header = "Date,Time," if split else "datetime,"
    lines = [header + ",".join(ISO_COLUMNS)]
    for ts, *vals in bars:
        date = _dm_text(ts, order, sep, short_year)
        stamp = f"{date},{ts:%H:%M:%S}" if split else f"{date} {ts:%H:%M:%S}"
        lines.append(",".join([stamp, *map(str, vals)]))
    path = folder / "dm.csv"
    path.write_text("\n".join(lines) + "\n")
    ref = iso_frame(folder, bars)
    same_bars(load_bars(path, date_format=order), ref)
    ambiguous = any(ts.day != ts.month for ts, *_ in bars)
    if settle or not ambiguous:
        same_bars(load_bars(path), ref)
        return
    for lenient in (False, True):
        with pytest.raises(DataFeedError) as err:
            load_bars(path, lenient=lenient)
        msg = str(err.value)
        assert "\n" not in msg and "dm.csv, line 2" in msg and "--date-format" in msg
        assert ("'Date'" if split else "'datetime'") in msg


#: Ways to write a timestamp's zone, and the offset each means (None: no offset, a naive time).
ZONES = {"+05": 5 * 60, "+06": 6 * 60, "-04:00": -4 * 60, "-0500": -5 * 60, "Z": 0, " UTC": 0,
         "+05:30": 5 * 60 + 30, "": None}  # fmt: skip


@seeded
@SUITE
@given(bars=good_bars(), zones=st.lists(st.sampled_from(list(ZONES)), min_size=1, max_size=4),
       lenient=st.booleans(), spec=st.sampled_from([M2K, None]))  # fmt: skip
def test_mixed_offsets_load_each_instant_or_fail_on_one_line(folder, bars, zones, lenient, spec):
    """Item 14: a column mixing offsets (+05, +06, -04:00, Z, UTC) is read row by row, each row
    its own instant, the same frame as the ISO file; rows without an offset among rows with one
    are one one-line DataFeedError naming the file and line, or (lenient) exactly those rows
    dropped and listed. Never another exception."""
    lines = ["datetime," + ",".join(ISO_COLUMNS)]
    naive_lines = []
    for i, (ts, *vals) in enumerate(bars):
        zone = zones[i % len(zones)]
        minutes = ZONES[zone]
        if minutes is None:
            stamp = ts.isoformat(sep=" ")
            naive_lines.append(i + 2)
        else:
            utc = ts.tz_localize(NY).tz_convert("UTC").tz_localize(None)
            stamp = (utc + pd.Timedelta(minutes=minutes)).isoformat(sep=" ") + zone
        lines.append(",".join([stamp, *map(str, vals)]))
    path = folder / "zones.csv"
    path.write_text("\n".join(lines) + "\n")
    ref = iso_frame(folder, bars)
    mixed = 0 < len(naive_lines) < len(bars)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            got = load_bars(path, lenient=lenient, spec=spec)
        except DataFeedError as exc:
            msg = str(exc)
            assert mixed and not lenient, msg
            assert "\n" not in msg and f"zones.csv, line {naive_lines[0]}:" in msg
            assert "without a UTC offset" in msg
            return
    if not mixed:
        same_bars(got, ref)
        return
    assert lenient
    assert {e["line"] for e in got.attrs["report"]} == set(naive_lines)
    kept = [i for i in range(len(bars)) if i + 2 not in naive_lines]
    same_bars(got, ref.iloc[kept])


# ------------------------------------------------------------------ validate_bars, resample_bars


@st.composite
def frames(draw) -> pd.DataFrame:
    n = draw(st.integers(min_value=0, max_value=8))
    naive = draw(st.booleans())
    texts = [f"{draw(st.sampled_from(DAYS))} {draw(st.sampled_from(TIMES))}" for _ in range(n)]
    idx = pd.DatetimeIndex(texts) if naive else pd.DatetimeIndex(texts).tz_localize(
        "UTC").tz_convert(NY)  # fmt: skip
    values = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([2000.0, 2000.1, 2000.05, 0.03, 1e308]))  # fmt: skip
    names = draw(st.sampled_from([CANONICAL[1:], ["Open", "High", "Low", "Close", "Volume"],
                                  ["open", "high", "low", "last", "volume", "close"],
                                  ["open", "high", "low", "close"]]))  # fmt: skip
    return pd.DataFrame({c: [draw(values) for _ in range(n)] for c in names}, index=idx)


@seeded
@SUITE
@given(df=frames(), lenient=st.booleans(), spec=st.sampled_from([M2K, None]),
       tz=st.sampled_from([None, "UTC", "Europe/Berlin"]))  # fmt: skip
def test_validate_bars_never_escapes(df, lenient, spec, tz):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            out = validate_bars(df, spec=spec, lenient=lenient, tz=tz)
        except M2KError:
            return
    check_frame(out, spec)
    dropped = set(range(1, len(df) + 1)) - set(out.attrs["lines"].tolist())
    assert dropped <= {e["line"] for e in out.attrs["report"]}


@seeded
@SUITE
@given(df=frames(), rule=st.one_of(st.sampled_from(["1min", "5min", "15min", "1h", "4h", "1d",
                                                    "2d", "0min", "25h", "1w", "h", "min"]),
                                   st.text(max_size=6)))  # fmt: skip
def test_resample_bars_input_checks(df, rule):
    try:
        clean = validate_bars(df, spec=None, lenient=True)
    except M2KError:
        clean = df
    try:
        out = resample_bars(clean, rule)
    except DataFeedError:
        return
    assert isinstance(out.index, pd.DatetimeIndex) and len(out) <= len(clean)


@seeded
@SUITE
@given(thing=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers())))
def test_resample_rejects_non_frames(thing):
    with pytest.raises(DataFeedError):
        resample_bars(thing, "1h")


@seeded
@SUITE
@given(symbol=st.one_of(st.text(max_size=8),
                        st.builds(lambda r, m, y: f"{r}{m}{y}",
                                  st.sampled_from(["M2K", "RTY", "MES", "ES", "m2k", "XYZ"]),
                                  st.sampled_from(list("FGHJKMNQUVXZA")),
                                  st.integers(min_value=-1, max_value=120))))  # fmt: skip
def test_parse_symbol_never_escapes(symbol):
    try:
        cm = parse_symbol(symbol, ref_year=2025)
    except M2KError:
        return
    assert 1 <= cm.month <= 12 and 2000 <= cm.year <= 2100
