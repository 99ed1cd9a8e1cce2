"""report.json, trades.csv, equity.csv and the text summary: consistent, valid, atomic."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest
from conftest import make_bars, pandas_feed
from test_analyzers import CASH, PLAN, hand_bars, m2k_cerebro

from m2k_bt.analyzers import add_analyzers, equity_frame, metrics_from
from m2k_bt.contracts import M2K
from m2k_bt.engine import BacktestResult
from m2k_bt.report.summary import (
    REPORT_JSON_SCHEMA,
    REPORT_SCHEMA_VERSION,
    TRADE_COLUMNS,
    atomic_path,
    build_report,
    format_summary,
    validate_report,
    write_outputs,
)


@dataclass
class FakeConfig:
    strategy: Any = "Scripted"
    params: dict = field(default_factory=lambda: {"plan": "hand"})
    sizer: Any = None
    sizer_params: dict = field(default_factory=dict)
    spec: Any = M2K
    cash: float = CASH
    commission: float | None = None  # None: the spec's value is in force
    margin: float | None = 770.0
    maintenance_margin: float | None = 700.0
    intraday_margin: float | None = None
    slippage_ticks: float = 1.0
    start: str | None = None
    end: str | None = None
    resample: str | None = None
    rth_only: bool = False
    seed: int | None = 7
    data_path: str | None = "bars.csv"
    data_rows: int = 17


def result_of(cerebro: bt.Cerebro, warnings=(), **cfg) -> BacktestResult:
    names = add_analyzers(cerebro)
    strat = cerebro.run()[0]
    analysis = {n: strat.analyzers.getbyname(n).get_analysis() for n in names}
    eq = equity_frame(analysis["equity"])
    return BacktestResult(
        config=FakeConfig(**cfg),
        start_value=CASH,
        final_value=cerebro.broker.getvalue(),
        bars=len(strat),
        first_dt=eq.index[0].to_pydatetime(),
        last_dt=eq.index[-1].to_pydatetime(),
        analysis=analysis,
        metrics=metrics_from(analysis),
        trades=list(getattr(strat, "trade_log", []) or []),
        equity=eq,
        margin_events=[],
        warnings=list(warnings),
        cerebro=cerebro,
        strategy=strat,
    )


@pytest.fixture(scope="module")
def hand_result() -> BacktestResult:
    # slippage 1 tick: see test_analyzers.test_costs_measure_slippage_exactly for the numbers
    return result_of(m2k_cerebro(hand_bars(), PLAN, slip_points=0.1), warnings=["2 rows repaired"])


def test_report_known_numbers_and_schema(hand_result):
    report = build_report(hand_result)
    assert validate_report(report) == []
    assert report["schema"] == "m2k_bt/report"
    assert report["schema_version"] == REPORT_SCHEMA_VERSION
    res = report["results"]
    # 4 trades: 102.52 - 16.24 - 6.24 + 56.28 = 136.32 at zero slippage, minus $5.50 slippage
    assert res["net_profit"] == pytest.approx(130.82)
    assert res["final_value"] == pytest.approx(CASH + 130.82)
    assert res["trades"] == 4 and res["win_rate"] == pytest.approx(0.5)
    assert res["commission"] == pytest.approx(8.68)  # 14 contract sides x 0.62
    assert res["slippage"] == pytest.approx(5.50)
    assert res["margin_calls"] == 0
    inp = report["inputs"]
    assert inp["contract"] == {
        "root": "M2K",
        "description": M2K.description,
        "multiplier": 5.0,
        "tick_size": 0.1,
        "tick_value": 0.5,
        "exchange": "CME",
        "currency": "USD",
    }
    assert inp["costs"] == {"commission": 0.62, "slippage_ticks": 1.0}  # spec value in force
    assert inp["margins"] == {"initial": 770.0, "maintenance": 700.0, "intraday": None}
    assert inp["data"]["first_dt"] == "2024-03-04T10:00:00-05:00"  # ISO 8601, NY offset
    assert inp["data"]["bars"] == 17 and inp["data"]["rows"] == 17
    # every effective parameter of the strategy instance, with its type
    assert inp["strategy"]["name"] == "Scripted" and inp["strategy"]["class"] == "Scripted"
    assert set(inp["strategy"]["params"]) == {"plan"}
    assert inp["strategy"]["param_types"] == {"plan": "dict"}
    assert set(report["versions"]) >= {"m2k_bt", "backtrader", "pandas", "numpy"}
    assert report["versions"]["backtrader"] == bt.__version__
    assert inp["seed"] == 7
    assert set(report["analyzers"]) == {"trades", "costs", "margin", "kelly", "returns"}
    # the engine's warnings first, then the report's own: 17 one-minute bars are 1 trade date
    assert report["warnings"] == [
        "2 rows repaired",
        "the run covers 1.0 trade dates: annualised figures (CAGR, Sharpe, Sortino, Calmar) "
        "extrapolate it to a year",
    ]
    # plain JSON, no NaN
    json.dumps(report, allow_nan=False)


def test_schema_agrees_with_jsonschema(hand_result):
    jsonschema = pytest.importorskip("jsonschema")
    report = build_report(hand_result)
    jsonschema.validate(report, REPORT_JSON_SCHEMA)
    broken = json.loads(json.dumps(report))
    del broken["results"]["sharpe"]
    broken["warnings"].append(3)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, REPORT_JSON_SCHEMA)
    problems = validate_report(broken)
    assert "report.results: missing key 'sharpe'" in problems
    last = len(broken["warnings"]) - 1
    assert f"report.warnings[{last}]: expected string, got int" in problems


def _summary_values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines()[2:]:
        m = re.match(r"^(\S.*?)\s{2,}(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _money(s: str) -> float:
    s = s.split()[0]
    neg = s.startswith("-")
    return (-1 if neg else 1) * float(s.lstrip("-$").replace(",", ""))


def test_outputs_consistent_between_summary_report_and_csvs(hand_result, tmp_path):
    files = write_outputs(hand_result, tmp_path / "run", plot=False)
    assert set(files) == {"report", "trades", "equity"}
    report = json.loads(files["report"].read_text())
    assert validate_report(report) == []
    assert report["files"] == {"trades.csv": "trades", "equity.csv": "equity"}
    res = report["results"]

    with open(files["trades"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[: len(TRADE_COLUMNS)] == list(TRADE_COLUMNS)
    assert len(rows) == res["trades"] == 4
    # the run ends flat: trades' net P&L sums to final minus starting equity
    net = sum(float(r["net_pnl"]) for r in rows)
    assert net == pytest.approx(res["final_value"] - res["start_value"])
    assert net == pytest.approx(res["net_profit"])
    assert sum(float(r["commission"]) for r in rows) == pytest.approx(res["commission"])
    assert rows[0]["entry_dt"] == "2024-03-04T10:01:00-05:00"
    assert all(re.fullmatch(r"\d+", r["contracts"]) for r in rows)  # integers, not 2.0
    assert float(rows[0]["entry_price"]) == pytest.approx(2000.1)  # 2000.0 + 1 tick slippage

    with open(files["equity"], newline="") as fh:
        eq = list(csv.DictReader(fh))
    assert list(eq[0]) == ["datetime", "value", "cash", "position", "close", "drawdown",
                           "drawdown_pct"]  # fmt: skip
    assert len(eq) == 17
    assert eq[0]["datetime"] == "2024-03-04T10:00:00-05:00"  # same format as trades.csv
    assert float(eq[-1]["value"]) == pytest.approx(res["final_value"])
    assert max(float(r["drawdown"]) for r in eq) == pytest.approx(res["max_drawdown"])

    text = format_summary(report)
    vals = _summary_values(text)
    assert _money(vals["Final equity"]) == pytest.approx(res["final_value"], abs=0.005)
    assert _money(vals["Net profit"]) == pytest.approx(res["net_profit"], abs=0.005)
    assert _money(vals["Max drawdown"]) == pytest.approx(res["max_drawdown"], abs=0.005)
    assert _money(vals["Expectancy"]) == pytest.approx(res["expectancy"], abs=0.005)
    assert _money(vals["Commission"]) == pytest.approx(8.68)
    assert int(vals["Trades"]) == 4
    assert vals["Win rate"] == "50.00 %"
    assert float(vals["Profit factor"]) == pytest.approx(res["profit_factor"], abs=0.005)
    sharpe = res["sharpe"]
    assert float(vals["Sharpe"]) == pytest.approx(sharpe, abs=0.005)
    assert "2 rows repaired" in text
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "equity.csv",
        "report.json",
        "trades.csv",
    ]


def test_summary_prints_none_as_na():
    report = {
        "results": {"start_value": 10000.0, "final_value": 10000.0, "sharpe": None,
                    "trades": 0, "net_profit": 0.0, "expectancy": None},
        "inputs": {"data": {"bars": 5}},
        "warnings": [],
    }  # fmt: skip
    vals = _summary_values(format_summary(report))
    assert vals["Sharpe"] == "n/a" and vals["Profit factor"] == "n/a"
    assert vals["Expectancy"] == "n/a per trade"


def test_summary_caps_warnings_report_keeps_all():
    from m2k_bt.report.summary import SUMMARY_WARNINGS

    report = {
        "results": {"start_value": 10000.0, "final_value": 10000.0, "trades": 0},
        "inputs": {"data": {"bars": 5}},
        "warnings": [f"data: line {i} repaired" for i in range(SUMMARY_WARNINGS + 5)],
    }
    text = format_summary(report)
    assert f"Warnings ({SUMMARY_WARNINGS + 5}):" in text
    assert f"line {SUMMARY_WARNINGS - 1} repaired" in text
    assert f"line {SUMMARY_WARNINGS} repaired" not in text
    assert "and 5 more: every one is in report.json" in text


def test_strategy_trade_log_is_preferred_and_extra_columns_kept(hand_result, tmp_path):
    log = [
        {
            "entry_dt": "2024-03-04T10:01:00",
            "exit_dt": "2024-03-04T10:03:00",
            "direction": "long",
            "contracts": 2,
            "entry_price": 2000.0,
            "exit_price": 2010.5,
            "gross_pnl": 105.0,
            "commission": 2.48,
            "net_pnl": 102.52,
            "ticks": 105.0,
            "bars_held": 2,
            "exit_reason": "target",
            "kelly_p": 0.55,
            "kelly_b": 1.8,
            "kelly_f": 0.1,
            "mae_ticks": 4.0,
        }
    ]
    fake = dataclasses.replace(hand_result, trades=log)
    files = write_outputs(fake, tmp_path, plot=False)
    with open(files["trades"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    assert rows[0]["exit_reason"] == "target" and rows[0]["kelly_p"] == "0.55"
    assert rows[0]["mae_ticks"] == "4.0"


def test_report_warns_about_open_trades_and_nan_becomes_null():
    # buy on bar 0 and never sell: the trade is open at the end
    result = result_of(m2k_cerebro(hand_bars(), {0: 1}))
    result.metrics["sharpe"] = math.nan
    report = build_report(result)
    assert report["results"]["sharpe"] is None
    assert any("still open" in w for w in report["warnings"])
    assert report["results"]["trades"] == 0
    assert validate_report(report) == []


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_outputs_with_plots_on_a_real_run(tmp_path):
    cerebro = bt.Cerebro()
    cerebro.adddata(
        pandas_feed(make_bars(400, seed=5), timeframe=bt.TimeFrame.Minutes, compression=5),
        name="M2K",
    )
    cerebro.broker.setcash(CASH)
    cerebro.broker.setcommission(
        commission=0.62, margin=770, mult=5, commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False
    )
    cerebro.addstrategy(_Alternate)
    result = result_of(cerebro)
    files = write_outputs(result, tmp_path)
    assert set(files) == {"report", "trades", "equity", "html", "plot", "equity_plot"}
    for path in files.values():
        assert Path(path).stat().st_size > 0
    report = json.loads(files["report"].read_text())
    assert report["files"]["plot.png"] == "plot" and report["files"]["report.html"] == "html"
    assert not any("not written" in w for w in report["warnings"])
    assert Path(files["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Alternate(bt.Strategy):
    def next(self):
        if len(self) % 25 == 1:
            self.buy(size=1) if not self.position else self.close()


def test_one_timestamp_format_everywhere_across_dst(tmp_path):
    # 1-minute bars every 6 hours from Saturday 2024-03-09 18:00 to Monday: the clocks change
    # on Sunday 2024-03-10 at 02:00 New York (-05:00 before, -04:00 after)
    from m2k_bt.outputs import ny_index_iso, ny_iso

    idx = pd.DatetimeIndex(["2024-03-09 18:00", "2024-03-10 12:00", "2024-11-03 01:30",
                            "2024-11-03 01:30", "2024-11-03 03:00"])
    assert ny_index_iso(idx) == [
        "2024-03-09T18:00:00-05:00", "2024-03-10T12:00:00-04:00",
        "2024-11-03T01:30:00-04:00", "2024-11-03T01:30:00-05:00",  # the repeated hour, inferred
        "2024-11-03T03:00:00-05:00",
    ]
    assert ny_iso(pd.Timestamp("2024-03-10 12:00")) == "2024-03-10T12:00:00-04:00"
    assert ny_iso(pd.Timestamp("2024-03-10 17:00", tz="UTC")) == "2024-03-10T13:00:00-04:00"


def test_money_rounded_to_the_cent_ratios_to_four_decimals(hand_result):
    noisy = dataclasses.replace(hand_result, final_value=CASH + 130.81999999999,
                                metrics=dict(hand_result.metrics, sharpe=1.234567891,
                                             cagr=0.123456789123))
    res = build_report(noisy)["results"]
    assert res["final_value"] == round(CASH + 130.82, 2)  # the cent
    assert res["sharpe"] == 1.2346  # a ratio: 4 decimals
    assert res["cagr"] == 0.1234567891  # a fraction: 10 significant digits
    assert res["max_drawdown_pct"] == round(res["max_drawdown_pct"], 4)


def test_rerun_reproduces_the_run_exactly(tmp_path):
    from conftest import rth_bars, write_bars_csv

    from m2k_bt.cli.backtest import main

    data = write_bars_csv(rth_bars(), tmp_path / "m2k_5min.csv")
    first = tmp_path / "first"
    assert main(["--data", data, "--out", str(first), "--param", "fast=12", "--param",
                 "slow=40", "--param", "stop_atr=2.5", "--sizer-param", "kelly_scale=0.3",
                 "--slippage-ticks", "1", "--cash", "30000", "--avoid-events", "fomc,cpi",
                 "--event-window", "15,30", "--no-plot", "--quiet"]) == 0
    report = json.loads((first / "report.json").read_text())
    assert report["inputs"]["events"]["event_before"] == 15.0
    strat = report["inputs"]["strategy"]
    assert strat["params"]["fast"] == 12 and strat["param_types"]["fast"] == "int"
    assert strat["params"]["stop_atr"] == 2.5 and strat["param_types"]["stop_atr"] == "float"
    assert strat["params"]["target_ticks"] is None  # a default, recorded too
    assert strat["param_types"]["target_ticks"] == "int|None"
    assert report["inputs"]["sizer"]["params"]["kelly_scale"] == 0.3
    (f,) = report["inputs"]["data"]["files"]
    import hashlib

    assert f["sha256"] == hashlib.sha256(Path(data).read_bytes()).hexdigest()
    assert report["inputs"]["data"]["roll"] == "calendar"
    assert report["inputs"]["data"]["adjust"] == "add"

    again = tmp_path / "again"
    assert main(["--rerun", str(first / "report.json"), "--out", str(again), "--no-plot",
                 "--quiet"]) == 0
    assert (again / "trades.csv").read_bytes() == (first / "trades.csv").read_bytes()
    assert (again / "equity.csv").read_bytes() == (first / "equity.csv").read_bytes()
    rerun = json.loads((again / "report.json").read_text())
    assert rerun["inputs"] == report["inputs"] and rerun["results"] == report["results"]


def test_rerun_refuses_a_changed_data_file(tmp_path, capsys):
    from conftest import rth_bars, write_bars_csv

    from m2k_bt.cli.backtest import main

    data = write_bars_csv(rth_bars(end="2024-02-23"), tmp_path / "m2k_5min.csv")
    assert main(["--data", data, "--out", str(tmp_path / "a"), "--no-plot", "--quiet"]) == 0
    with open(data, "a") as fh:
        fh.write("\n")
    assert main(["--rerun", str(tmp_path / "a" / "report.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "changed since the report" in err and err.count("\n") == 1
    assert main(["--rerun", str(tmp_path / "missing.json")]) == 2


# -------------------------------------------------------------------------------------------
# overview: the figures a trader reads first (m2k_bt.report.overview)
# -------------------------------------------------------------------------------------------


def _kelly_report(decisions, **inputs):
    return {
        "results": {"start_value": 25_000.0, "final_value": 25_000.0, "trades": 0,
                    "net_profit": 0.0},
        "inputs": {"data": {"bars": 5}, **inputs},
        "analyzers": {"kelly": {"sizer": "KellySizer", "decisions": decisions}},
        "warnings": [],
    }


def test_run_that_does_not_trade_says_why():
    from m2k_bt.report.overview import build_overview

    # RTY at $25,000 with the default Kelly sizer: 84 entries, every one sized to 0
    decisions = ([{"binding": "max_exposure", "contracts": 0}] * 24
                 + [{"binding": "zero", "contracts": 0}] * 26
                 + [{"binding": "no_edge", "contracts": 0}] * 34)
    report = _kelly_report(decisions, contract={"multiplier": 50.0},
                           sizer={"params": {"max_exposure": 2.0}},
                           margins={"initial": 7700.0})
    equity = pd.DataFrame({"value": [25_000.0] * 3, "close": [1990.0, 2000.0, 2010.0]},
                          index=pd.date_range("2024-01-02 10:00", periods=3, freq="5min"))
    report["overview"] = build_overview(report, equity)
    declined = report["overview"]["entries_declined"]
    assert declined["entries"] == 84 and declined["declined"] == 84
    assert declined["by_binding"] == {"no_edge": 34, "zero": 26, "max_exposure": 24}
    assert "notional" in declined["reasons"]["max_exposure"]
    # max_exposure declined 24 of 84 (>= 1/5): the account is too small. Median close 2,000 x
    # $50 = $100,000 of notional per contract; max_exposure 2 x equity needs $50,000 of equity
    assert declined["hint"] == (
        "each entry needs about $100,000 of notional per contract, above max_exposure 2 x "
        "equity: raise --cash to at least $50,000 or use --sizer fixed")
    text = format_summary(report)
    assert ("Entries declined  84 of 84 sized to 0 (no_edge 34, zero 26, max_exposure 24)"
            in text)
    assert "Why: each entry needs about $100,000" in text
    # a run where every entry was sized: no line of why
    report["overview"]["entries_declined"] = {"entries": 3, "declined": 0, "by_binding": {},
                                              "hint": None}
    text = format_summary(report)
    assert "Entries declined  none of 3" in text and "Why:" not in text


def test_default_like_run_shows_its_no_edge_declines():
    from m2k_bt.report.overview import build_overview

    # 602 no_edge + 19 zero of 956 decisions: zero is 19 / 621 = 3 % of the declines (< 1/5),
    # so the hint is about the missing edge
    decisions = ([{"binding": "no_edge", "contracts": 0}] * 602
                 + [{"binding": "zero", "contracts": 0}] * 19
                 + [{"binding": "kelly", "contracts": 2}] * 335)
    ov = build_overview(_kelly_report(decisions))
    assert ov["entries_declined"]["declined"] == 621
    assert ov["entries_declined"]["hint"].startswith("the strategy's recent trades")
    assert ov["entries_declined"]["hint"].endswith("--sizer fixed takes every signal")


def test_synthetic_data_is_labelled_and_a_users_file_is_not(tmp_path, monkeypatch):
    from m2k_bt.report import overview as ov

    bundled = ov.bundled_data_files()
    assert [p.name for p in bundled[:2]] == ["m2k_5min.csv.gz", "m2k_1min.csv.gz"]
    assert all(p.parent.name in ("datafeeds", "contracts") for p in bundled)
    # at its bundled path: synthetic, whatever the digest
    assert ov.is_bundled_synthetic([{"path": str(bundled[0]), "sha256": None}])
    # a copy elsewhere with the same bytes is synthetic; a user's file of the same name is not
    fake = tmp_path / "bundle" / "m2k_5min.csv.gz"
    fake.parent.mkdir()
    fake.write_bytes(b"synthetic bars")
    monkeypatch.setattr(ov, "bundled_data_files", lambda: [fake])
    import hashlib

    same = hashlib.sha256(b"synthetic bars").hexdigest()
    copy = {"path": str(tmp_path / "m2k_5min.csv.gz"), "sha256": same}
    mine = {"path": str(tmp_path / "m2k_5min.csv.gz"), "sha256": "0" * 64}
    assert ov.is_bundled_synthetic([copy])
    assert not ov.is_bundled_synthetic([mine])
    assert not ov.is_bundled_synthetic([copy, {"path": "/data/mine.csv", "sha256": "1"}])
    report = _kelly_report([], data={"bars": 5, "files": [copy]})
    report["overview"] = ov.build_overview(report)
    assert report["overview"]["synthetic_data"] is True
    assert "SYNTHETIC DATA" in format_summary(report).splitlines()[2]
    report = _kelly_report([], data={"bars": 5, "files": [mine]})
    report["overview"] = ov.build_overview(report)
    assert report["overview"]["synthetic_data"] is False
    assert report["overview"]["data_notice"] is None
    assert "SYNTHETIC" not in format_summary(report)


def test_hand_run_is_not_synthetic_and_overview_is_in_the_schema(hand_result):
    report = build_report(hand_result)
    assert validate_report(report) == []
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, REPORT_JSON_SCHEMA)
    ov = report["overview"]
    assert ov["synthetic_data"] is False  # bars.csv, a user's file
    # costs: gross = net 130.82 + commission 8.68 + slippage 5.50 = 145.00; no roll
    assert ov["costs"]["gross_pnl"] == pytest.approx(145.00)
    assert ov["costs"]["net_pnl"] == pytest.approx(130.82)
    assert ov["costs"]["rolls"] == 0.0
    assert ov["costs"]["slippage_ticks_assumed"] == 1.0
    assert ov["costs"]["slippage_note"] == (
        "1 ticks of slippage per fill assumed ($0.50 per contract per side)")
    # 4 trades in the hand plan, split by direction; the net P&L of both sides adds up
    d = ov["directions"]
    assert d["long"]["trades"] + d["short"]["trades"] == 4
    assert d["long"]["net_pnl"] + d["short"]["net_pnl"] == pytest.approx(130.82)
    # buy and hold: (last close - first close) x $5
    closes = hand_result.equity["close"]
    assert ov["buy_and_hold"]["net_profit"] == pytest.approx(
        (closes.iloc[-1] - closes.iloc[0]) * 5.0)
    assert ov["changed_params"]["strategy"] == {"plan": {"0": 2, "2": -2, "4": -1, "6": 1,
                                                         "8": 1, "10": -1, "12": 3, "14": -3}}
