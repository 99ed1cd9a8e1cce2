"""Event calendar: shipped dates, the entry gate, flat before an event, coverage warnings."""

from __future__ import annotations

import configparser
import datetime as dt
import fnmatch
import json
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from conftest import make_bars, rth_bars, write_bars_csv

from m2k_bt.cli.backtest import main
from m2k_bt.engine import BacktestConfig, run_backtest
from m2k_bt.errors import DataFeedError, ParameterError
from m2k_bt.feeds.bars import BarsFeed
from m2k_bt.feeds.events import (
    SHIPPED_EVENTS,
    EventCalendar,
    EventMarks,
    load_calendar,
    read_events_csv,
)
from m2k_bt.report.summary import build_report, validate_report
from m2k_bt.strategies.base import M2KStrategy

NY = "America/New_York"
MODES = [(True, True), (False, True), (False, False)]  # (runonce, preload)
FOMC = pd.Timestamp("2024-03-20 14:00", tz=NY)  # a real statement: shipped table


def week() -> pd.DataFrame:
    """5-minute bars 09:30-15:55 New York, Mon 2024-03-18 to Fri 2024-03-22 (FOMC Wed 14:00).

    Open = close = 2000 + 0.1 x bar number, so every fill price names its bar."""
    stamps = [t for d in pd.bdate_range("2024-03-18", "2024-03-22")
              for t in pd.date_range(f"{d.date()} 09:30", f"{d.date()} 15:55", freq="5min",
                                     tz=NY)]
    price = 2000.0 + 0.1 * np.arange(len(stamps))
    return pd.DataFrame({"open": price, "high": price + 0.5, "low": price - 0.5,
                         "close": price, "volume": 100.0},
                        index=pd.DatetimeIndex(stamps, name="datetime"))


class Flip(M2KStrategy):
    """Wants a position whenever flat, none whenever held: tries to enter every other bar."""

    def _direction(self):
        return 0 if self.position.size else 1


class Hold(M2KStrategy):
    """Always wants to be long."""

    def _direction(self):
        return 1


class FromTuesday(M2KStrategy):
    """Wants to be long from Tuesday 2024-03-19 on."""

    def _direction(self):
        return int(self.data.datetime.date(0) >= dt.date(2024, 3, 19))


def run(strategy, bars, runonce=True, preload=True, plot=False, **params):
    cerebro = bt.Cerebro(runonce=runonce, preload=preload, stdstats=False)
    cerebro.adddata(BarsFeed(dataname=bars))
    cerebro.addstrategy(strategy, **params)
    if plot:
        cerebro.addobserver(EventMarks)
    return cerebro.run()[0]


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# ------------------------------------------------------------------ shipped dates
def test_recon_day_2024_and_2025_named_correctly():
    cal = load_calendar()
    for year, day in ((2024, "2024-06-28"), (2025, "2025-06-27")):
        got = cal.between(f"{year}-01-01", f"{year + 1}-01-01", "russell_recon")
        assert [e.time for e in got] == [pd.Timestamp(f"{day} 16:00", tz=NY)]
        assert cal.kind_of(f"{day} 16:00") == "russell_recon"
        assert "reconstitution" in got[0].description


def test_every_shipped_recon_is_the_fourth_friday_of_june():
    # FTSE Russell's rule; e.g. June 2018: Fridays 1, 8, 15, 22, 29 -> the 22nd
    for e in load_calendar().select("russell_recon"):
        d = e.time.date()
        fridays = [x for x in range(1, 31) if dt.date(d.year, 6, x).weekday() == 4]
        assert d == dt.date(d.year, 6, fridays[3]) and e.time.hour == 16


def test_fomc_cpi_nfp_times_and_expiry_rule():
    cal = load_calendar()
    assert cal.kind_of("2024-03-20 14:00") == "fomc"
    assert cal.kind_of("2024-11-07 14:00") == "fomc"  # election week: a Thursday
    assert cal.kind_of("2020-03-15 17:00") == "fomc"  # unscheduled Sunday statement
    assert cal.kind_of("2015-09-17 14:00") == "fomc"  # a Thursday
    assert len(cal.between("2015-01-01", "2019-01-01", "fomc")) == 4 * 8
    assert cal.kind_of("2023-03-14 08:30") == "cpi"
    assert cal.kind_of("2025-11-20 08:30") == "nfp"  # September 2025 report, after the lapse
    # expiry: M2K's calendar, 09:30 (final settlement at the opening quotation)
    assert cal.kind_of("2025-12-19 09:30") == "expiry"
    assert cal.kind_of("2026-06-18 09:30") == "expiry"  # Juneteenth moves it to Thursday
    assert all(e.time.hour == 14 for e in cal.select("fomc") if e.time.year != 2020)


def test_shipped_table_is_package_data():
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    patterns = cfg["options.package_data"]["m2k_bt"].split()
    assert any(fnmatch.fnmatch("data/events.csv", p) for p in patterns)
    assert SHIPPED_EVENTS.is_file() and SHIPPED_EVENTS.parent.name == "data"
    text = SHIPPED_EVENTS.read_text()
    for kind in ("fomc", "cpi", "nfp", "russell_recon"):
        assert f"# coverage {kind} " in text and "source:" in text


def test_uncovered_ranges_by_hand():
    cal = load_calendar()
    # cpi covers 2019-02-01..2019-12-31 and 2021-01-01..2025-10-31
    assert cal.uncovered("cpi", "2019-01-15", "2025-12-10") == [
        (dt.date(2019, 1, 15), dt.date(2019, 1, 31)),
        (dt.date(2020, 1, 1), dt.date(2020, 12, 31)),
        (dt.date(2025, 11, 1), dt.date(2025, 12, 10)),
    ]
    assert cal.uncovered("fomc", "2023-01-01", "2024-12-31") == []
    assert cal.uncovered("expiry", "1990-01-01", "2050-01-01") == []  # a rule
    [warning] = cal.coverage_warnings("fomc,nfp", "2026-03-01", "2026-03-31")
    assert "'nfp'" in warning and "2026-03-01..2026-03-31" in warning and "--events" in warning


# ------------------------------------------------------------------ the gate
@pytest.mark.parametrize("runonce,preload", MODES)
def test_fomc_blocks_entries_from_1330_to_1500(runonce, preload):
    strat = run(Flip, week(), runonce, preload, avoid_events="fomc", event_before=30,
                event_after=60)
    entries = [tr["entry_dt"] for tr in strat.trade_log if tr["entry_dt"].date() == FOMC.date()]
    window = (t("2024-03-20 13:30"), t("2024-03-20 15:00"))
    assert not [e for e in entries if window[0] <= e < window[1]]
    # the last fill before the window is 13:25, the first after it exactly 15:00
    assert max(e for e in entries if e < window[0]) == t("2024-03-20 13:25")
    assert min(e for e in entries if e >= window[1]) == t("2024-03-20 15:00")
    # Tuesday, no event: the 13:35 entry goes through
    assert t("2024-03-19 13:35") in [tr["entry_dt"] for tr in strat.trade_log]
    # one blocked entry, logged with its event: decisions on bars 13:30..14:50 (fills
    # 13:35..14:55) were refused: (14:50 - 13:30) / 5 + 1 = 17 bars
    [rec] = strat.event_log
    assert rec["action"] == "entry_blocked" and rec["kind"] == "fomc"
    assert rec["event_time"] == t("2024-03-20 14:00") and rec["bars"] == 17
    assert rec["dt"] == t("2024-03-20 13:30") and rec["direction"] == "long"
    assert strat.event_warnings == []  # 2024 is inside the fomc table


@pytest.mark.parametrize("runonce,preload", MODES)
def test_flat_before_event_closes_on_the_last_bar_before_1330(runonce, preload):
    bars = week()
    strat = run(Hold, bars, runonce, preload, avoid_events="fomc", flat_before_event=True)
    first, second = strat.trade_log
    # decided on the 13:25 bar (its next open is 13:30, the window's start), filled at 13:30
    assert first["exit_reason"] == "event"
    assert first["exit_dt"] == t("2024-03-20 13:30")
    # the 13:30 bar is number 2 x 78 + (13:30 - 09:30) / 5 = 204: open 2000 + 20.4
    assert first["exit_price"] == pytest.approx(2020.4)
    assert second["entry_dt"] == t("2024-03-20 15:00")  # back in once the window is over
    forced, blocked = strat.event_log
    assert forced["action"] == "forced_exit" and forced["dt"] == t("2024-03-20 13:25")
    assert blocked["action"] == "entry_blocked" and blocked["bars"] == 17


@pytest.mark.parametrize("runonce,preload", MODES)
def test_daily_bars_are_flat_through_the_event_day(runonce, preload):
    from m2k_bt.feeds.bars import resample_bars

    days = resample_bars(week(), "1d")  # one bar per trade date, stamped at midnight
    strat = run(Hold, days, runonce, preload, avoid_events="fomc", flat_before_event=True)
    first, second = strat.trade_log
    # decided on Tuesday's bar, filled at Wednesday's open: flat through the FOMC day
    assert first["exit_reason"] == "event" and first["exit_dt"] == t("2024-03-20 00:00")
    assert second["entry_dt"] == t("2024-03-21 00:00")  # decided on Wednesday's bar
    late = run(FromTuesday, days, runonce, preload, avoid_events="fomc")
    # wanted from Tuesday's bar: its fill (Wednesday) is refused, Wednesday's (Thursday) taken
    assert [tr["entry_dt"] for tr in late.trade_log] == [t("2024-03-21 00:00")]
    [rec] = late.event_log
    assert rec["dt"] == t("2024-03-19 00:00") and rec["bars"] == 1


def test_windows_of_user_events_tz_aware_and_zero_after(tmp_path):
    path = tmp_path / "mine.csv"
    # 2024-03-19 16:00Z is 12:00 New York (EDT, UTC-4)
    path.write_text("time,kind,description\n2024-03-19T16:00:00Z,earnings,big print\n")
    strat = run(Flip, week(), avoid_events="earnings", event_before=10, event_after=0,
                event_calendar=str(path))
    [rec] = strat.event_log
    assert rec["event_time"] == t("2024-03-19 12:00") and rec["kind"] == "earnings"
    # window [11:50, 12:00): fills at 11:50 and 11:55 refused, 12:00 allowed
    entries = {tr["entry_dt"] for tr in strat.trade_log}
    assert t("2024-03-19 12:00") in entries
    assert not {t("2024-03-19 11:50"), t("2024-03-19 11:55")} & entries


def test_unknown_kind_and_bad_params_are_errors():
    with pytest.raises(ParameterError, match="did you mean 'fomc'"):
        run(Flip, week(), avoid_events="fmoc")
    with pytest.raises(ParameterError, match="event_before"):
        Flip.validate_params({"avoid_events": "fomc", "event_before": -5})
    with pytest.raises(ParameterError, match="needs avoid_events"):
        Flip.validate_params({"flat_before_event": True})
    assert Flip.validate_params({"avoid_events": " FOMC, cpi"})["avoid_events"] == (
        "fomc", "cpi")


def test_plot_marks_blocked_bars_and_the_forced_exit():
    strat = run(Hold, week(), plot=True, avoid_events="fomc", flat_before_event=True)
    marks = strat.observers[0]
    blocked = np.asarray(marks.lines.blocked.array)
    forced = np.asarray(marks.lines.event_exit.array)
    assert np.isfinite(blocked).sum() == 17 and np.isfinite(forced).sum() == 1


# ------------------------------------------------------------------ malformed files
@pytest.mark.parametrize("body,message", [
    ("time,kind,description\n2024-13-45 14:00,fomc,x\n", r"mine.csv:2: time '2024-13-45 14:00'"),
    ("time,kind,description\nyesterday,fomc,x\n", r"mine.csv:2: time 'yesterday'"),
    ("time,kind,description\n2024-03-20 14:00,FOMC day!,x\n",
     r"mine.csv:2: event kind 'FOMC day!'"),
    ("time,kind,description\n2024-03-20 14:00,fomc,a,b\n", r"mine.csv:2: expected 3 fields"),
    ("when,what\n2024-03-20 14:00,fomc\n", r"mine.csv:1: header must start with 'time,kind'"),
    ("# coverage fomc 2024-13-01 2024-12-31\ntime,kind\n", r"mine.csv:1: '2024-13-01' is not"),
    ("# coverage fomc from 2024\ntime,kind\n", r"mine.csv:1: coverage line"),
    ("time,kind\n2024-03-20 14:00,fomc\n2024-03-20 14:00,fomc\n", r"event listed twice"),
    ("# only a comment\n", r"no header line"),
])
def test_malformed_event_files_name_file_line_and_value(tmp_path, body, message):
    path = tmp_path / "mine.csv"
    path.write_text(body)
    with pytest.raises(DataFeedError, match=message):
        read_events_csv(path)


def test_user_file_merges_and_declares_coverage(tmp_path):
    path = tmp_path / "cpi2024.csv"
    path.write_text("# coverage cpi 2024-01-01 2024-12-31 source: my notes\n"
                    "time,kind,description\n2024-03-12 08:30,cpi,February CPI\n")
    cal = load_calendar(path)
    assert cal.kind_of("2024-03-12 08:30") == "cpi" and cal.kind_of("2024-03-20 14:00") == "fomc"
    assert cal.uncovered("cpi", "2024-02-01", "2024-02-28") == []
    assert isinstance(read_events_csv(path), EventCalendar)
    with pytest.raises(DataFeedError, match="event file not found"):
        load_calendar(tmp_path / "nope.csv")


# ------------------------------------------------------------------ engine, report, CLI
def test_report_counts_blocked_entries_and_forced_exits():
    bars = rth_bars("2024-03-11", "2024-03-28")
    cfg = BacktestConfig(strategy=Hold, sizer="fixed", avoid_events="fomc,cpi",
                         flat_before_event=True)
    res = run_backtest(bars, cfg)
    events = res.analysis["events"]
    assert events["forced_exits"] == 1 and events["by_kind"]["fomc"]["forced_exits"] == 1
    assert events["entries_blocked"] == 1 and events["bars_blocked"] == 17
    assert [tr["exit_reason"] for tr in res.trades].count("event") == 1
    assert not [w for w in res.warnings if w.startswith("events:")]  # fomc and cpi: covered
    report = build_report(res)
    assert report["analyzers"]["events"]["forced_exits"] == 1


def test_report_says_so_past_the_end_of_a_table():
    # the shipped nfp table ends 2025-12-31: a 2026 run avoiding nfp is warned, not silent
    bars = rth_bars("2026-01-05", "2026-01-09")
    res = run_backtest(bars, BacktestConfig(strategy=Hold, sizer="fixed",
                                            avoid_events="fomc,nfp"))
    [warning] = [w for w in res.warnings if w.startswith("events:")]
    assert "'nfp'" in warning and "2026-01-05..2026-01-09" in warning
    assert warning in build_report(res)["warnings"]
    assert res.analysis["events"]["warnings"] == [warning]


def test_config_event_settings_reach_walk_forward_runs():
    pytest.importorskip("optuna")
    from m2k_bt.optimize.walkforward import walk_forward

    seen = []

    def recording(bars, config):
        result = run_backtest(bars, config)
        seen.append((config.avoid_events, "events" in result.analysis,
                     result.strategy._gate is not None))
        return result

    bars = make_bars(1200, seed=5, start="2024-03-18 09:30")  # continuous 5-minute bars
    cfg = BacktestConfig(strategy="sma", sizer="fixed", avoid_events="fomc", event_after=90)
    walk_forward(bars, cfg, ["fast=5", "slow=20"], in_sample="600b", out_of_sample="300b",
                 sampler="grid", workers=1, run_backtest=recording, quiet=True)
    assert seen and all(s == ("fomc", True, True) for s in seen)


def test_cli_avoid_events_window_and_user_events(tmp_path):
    data = write_bars_csv(rth_bars(), tmp_path / "bars.csv")
    mine = tmp_path / "mine.csv"
    mine.write_text("time,kind,description\n2024-03-06 11:00,speech,Fed chair testimony\n")
    out = tmp_path / "run"
    code = main(["--data", data, "--out", str(out), "--quiet", "--no-plot", "--sizer", "fixed",
                 "--param", "fast=5", "--param", "slow=20", "--avoid-events", "fomc,speech",
                 "--event-window", "30,60", "--flat-before-event", "--events", str(mine)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    events = report["analyzers"]["events"]
    assert set(events["by_kind"]) <= {"fomc", "speech"} and events["log"]
    settings = events["settings"]
    assert settings["avoid_events"] == ["fomc", "speech"] and settings["event_after"] == 60.0
    assert settings["flat_before_event"] is True and settings["coverage"]["speech"] == ["your file"]
    assert not [w for w in report["warnings"] if w.startswith("events:")]


@pytest.mark.parametrize("argv,message", [
    (["--avoid-events", "fomc", "--event-window", "30"], "--event-window takes BEFORE,AFTER"),
    (["--avoid-events", "fomc", "--events", "nope.csv"], "--events file not found"),
    (["--avoid-events", "fmoc"], "did you mean 'fomc'"),
    (["--flat-before-event"], "need avoid_events"),
])
def test_cli_event_mistakes_exit_2_with_one_line(tmp_path, capsys, argv, message):
    data = write_bars_csv(rth_bars("2024-03-18", "2024-03-22"), tmp_path / "bars.csv")
    code = main(["--data", data, "--out", str(tmp_path / "o"), "--quiet", "--no-plot", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and "\n" not in err
