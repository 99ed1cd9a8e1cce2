"""Issue 24 (Hardening II), loaders: a header is read by name whatever the column order, an
ambiguous day/month date is an error unless the file settles it, and a timestamp column that
mixes UTC offsets is one clear error."""

import pandas as pd
import pytest
from conftest import rth_bars

from m2k_bt import DataFeedError, load_bars

COLUMNS = ("open", "high", "low", "close", "volume")


@pytest.fixture(scope="module")
def bars():
    return rth_bars(start="2024-03-04", end="2024-03-15")


def _date_time_file(df, path, order, date_fmt="%Y-%m-%d"):
    """``Date,Time,<order>`` with a header, as a vendor or backtrader export writes it."""
    naive = df.index.tz_localize(None)
    lines = [",".join(["Date", "Time", *[c.capitalize() for c in order]])]
    for stamp, row in zip(naive, df.itertuples(index=False)):
        values = dict(zip(COLUMNS, row))
        lines.append(",".join([stamp.strftime(date_fmt), stamp.strftime("%H:%M:%S"),
                               *[repr(float(values[c])) for c in order]]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "order",
    [
        ("close", "high", "low", "open", "volume"),
        ("volume", "open", "high", "low", "close"),
        ("open", "low", "high", "close", "volume"),
    ],
)
def test_a_date_time_file_is_read_by_its_header_in_any_column_order(order, bars, tmp_path):
    got = load_bars(_date_time_file(bars, tmp_path / "bars.csv", order))
    pd.testing.assert_frame_equal(got[list(COLUMNS)], bars[list(COLUMNS)], check_freq=False,
                                  check_names=False)


def test_an_extra_column_is_not_taken_for_volume(bars, tmp_path):
    path = tmp_path / "vwap.csv"
    naive = bars.index.tz_localize(None)
    lines = ["Date,Time,Open,High,Low,Close,VWAP,Volume"]
    for stamp, r in zip(naive, bars.itertuples(index=False)):
        lines.append(f"{stamp:%Y-%m-%d},{stamp:%H:%M:%S},{r.open},{r.high},{r.low},{r.close},"
                     f"{r.close},{r.volume}")
    path.write_text("\n".join(lines) + "\n")
    got = load_bars(path)
    assert got["volume"].tolist() == bars["volume"].tolist()


def test_day_first_dates_are_settled_by_a_day_above_12(bars, tmp_path):
    # 04/03/2024 .. 15/03/2024: 13, 14 and 15 can only be days, so every date is day/month
    path = _date_time_file(bars, tmp_path / "dmy.csv", COLUMNS, date_fmt="%d/%m/%Y")
    got = load_bars(path)
    assert got.index[0] == bars.index[0]  # 4 March, not 3 April
    pd.testing.assert_index_equal(got.index, bars.index, check_names=False)


def test_ambiguous_day_month_dates_are_an_error_naming_the_column(tmp_path):
    few = rth_bars(start="2024-03-04", end="2024-03-08")  # days 04..08: all <= 12
    path = _date_time_file(few, tmp_path / "ambiguous.csv", COLUMNS, date_fmt="%d/%m/%Y")
    with pytest.raises(DataFeedError) as err:
        load_bars(path)
    msg = str(err.value)
    assert "ambiguous.csv" in msg and "date" in msg.lower() and "date-format" in msg
    assert "\n" not in msg


def test_a_time_only_column_is_refused(bars, tmp_path):
    path = tmp_path / "times.csv"
    lines = ["time,open,high,low,close,volume"]
    for stamp, r in zip(bars.index, bars.itertuples(index=False)):
        lines.append(f"{stamp:%H:%M},{r.open},{r.high},{r.low},{r.close},{r.volume}")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFeedError, match="date"):
        load_bars(path, spec=None, lenient=True)


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize(
    "stamps",
    [
        ("2024-03-04 10:00:00+05", "2024-03-04 10:05:00+06"),
        ("2024-03-04T10:00:00+05:00", "2024-03-04T10:05:00+06:00"),
        ("2024-03-04 15:00:00", "2024-03-04 15:05:00 UTC"),
    ],
)
def test_mixed_offsets_in_one_column_are_one_clear_error(stamps, lenient, tmp_path):
    path = tmp_path / "mixed.csv"
    rows = [f"{s},2000.0,2000.5,1999.5,2000.0,100" for s in stamps * 3]
    path.write_text("datetime,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    try:
        load_bars(path, spec=None, lenient=lenient)
    except DataFeedError as exc:
        assert "mixed.csv" in str(exc) and "\n" not in str(exc)
    # lenient may instead drop the rows it cannot place, but never raise anything else


# ------------------------------------------------------------------ the command line's words


def _run(argv, tmp_path, capsys):
    import warnings

    from m2k_bt.cli.backtest import main

    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main([*argv, "--out", str(out), "--quiet", "--no-plot", "--param", "fast=5",
                     "--param", "slow=20", "--sizer", "fixed"])  # fmt: skip
    return code, capsys.readouterr().err.strip(), out, caught


def test_a_sorted_file_is_in_the_runs_warnings_not_a_python_warning(tmp_path, capsys):
    # issue 24 item 16: no raw UserWarning echoing a source line; the sort is a report line
    few = rth_bars(start="2024-03-04", end="2024-03-08")
    lines = _date_time_file(few, tmp_path / "unsorted.csv", COLUMNS).read_text().splitlines()
    lines[3], lines[4] = lines[4], lines[3]
    (tmp_path / "unsorted.csv").write_text("\n".join(lines) + "\n")
    code, err, out, caught = _run(["--data", str(tmp_path / "unsorted.csv")], tmp_path, capsys)
    assert code == 0, err
    assert "UserWarning" not in err and not [w for w in caught if "ascending" in str(w.message)]
    import json

    warnings_ = json.loads((out / "report.json").read_text())["warnings"]
    assert any("not in ascending order" in w and "sorted" in w for w in warnings_)


def test_date_format_flag(tmp_path, capsys):
    few = rth_bars(start="2024-03-04", end="2024-03-08")  # days 04..08: ambiguous
    path = _date_time_file(few, tmp_path / "dmy.csv", COLUMNS, date_fmt="%d/%m/%Y")
    code, err, _, _ = _run(["--data", str(path)], tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "--date-format dmy" in err
    assert "date_format=" not in err  # the command line's words only
    code, err, out, _ = _run(["--data", str(path), "--date-format", "dmy"], tmp_path, capsys)
    assert code == 0, err


def test_mixed_offsets_on_the_command_line_are_one_line(tmp_path, capsys):
    path = tmp_path / "mixed.csv"
    rows = [f"2024-03-04 1{i}:00:00{' UTC' if i % 2 else ''},2000.0,2000.5,1999.5,2000.0,100"
            for i in range(4)]
    path.write_text("datetime,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    code, err, _, _ = _run(["--data", str(path)], tmp_path, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "mixed.csv, line 2" in err and "without a UTC offset" in err
