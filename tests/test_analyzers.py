"""Known-answer and cross-check tests for m2k_bt.analyzers."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from conftest import NY, make_bars, pandas_feed
from hypothesis import given, settings
from hypothesis import strategies as st

from m2k_bt.analyzers import (
    ANALYZER_NAMES,
    METRIC_KEYS,
    add_analyzers,
    equity_frame,
    metrics_from,
    periods_per_year,
    returns_statistics,
    trade_statistics,
)

MODES = [
    pytest.param(dict(runonce=True, preload=True), id="runonce"),
    pytest.param(dict(runonce=False, preload=True), id="next-preload"),
    pytest.param(dict(runonce=False, preload=False), id="next-nopreload"),
]

# (open, high, low, close) per 1-minute bar; market orders placed on bar i fill at bar i+1's open
ROWS = [
    (2000.0, 2000.5, 1999.5, 2000.0),  # 0  buy 2
    (2000.0, 2001.0, 1999.8, 2000.8),  # 1  long 2 @ 2000.0
    (2000.8, 2003.0, 2000.5, 2002.5),  # 2  sell 2
    (2010.5, 2011.0, 2009.0, 2010.0),  # 3  exit @ 2010.5
    (2010.0, 2010.5, 2009.5, 2010.0),  # 4  sell 1
    (2009.0, 2009.5, 2008.0, 2008.5),  # 5  short 1 @ 2009.0
    (2008.5, 2012.0, 2008.0, 2011.0),  # 6  buy 1
    (2012.0, 2012.5, 2011.5, 2012.0),  # 7  exit @ 2012.0
    (2012.0, 2012.5, 2011.5, 2012.0),  # 8  buy 1
    (2012.0, 2013.0, 2011.5, 2012.5),  # 9  long 1 @ 2012.0
    (2012.5, 2012.8, 2011.0, 2011.2),  # 10 sell 1
    (2011.0, 2011.5, 2010.5, 2011.0),  # 11 exit @ 2011.0
    (2011.0, 2011.5, 2010.5, 2011.0),  # 12 buy 3
    (2011.0, 2011.0, 2010.0, 2010.5),  # 13 long 3 @ 2011.0 (open == high: slippage capped)
    (2010.5, 2014.0, 2010.5, 2013.5),  # 14 sell 3
    (2015.0, 2015.5, 2014.5, 2015.0),  # 15 exit @ 2015.0
    (2015.0, 2015.5, 2014.5, 2015.0),  # 16
]
PLAN = {0: 2, 2: -2, 4: -1, 6: 1, 8: 1, 10: -1, 12: 3, 14: -3}
CASH = 10_000.0


def hand_bars() -> pd.DataFrame:
    idx = pd.date_range("2024-03-04 10:00", periods=len(ROWS), freq="1min", tz=NY)
    df = pd.DataFrame(ROWS, columns=["open", "high", "low", "close"], index=idx)
    df["volume"] = 100.0
    return df


class Scripted(bt.Strategy):
    """Market orders from ``plan`` {bar index: signed contracts}."""

    params = (("plan", None),)

    def next(self):
        size = (self.p.plan or {}).get(len(self) - 1)
        if size:
            (self.buy if size > 0 else self.sell)(size=abs(size))


def m2k_cerebro(df, plan, mode=None, slip_points=None, cash=CASH, **strat_kw) -> bt.Cerebro:
    cerebro = bt.Cerebro(stdstats=False, **(mode or {}))
    cerebro.adddata(pandas_feed(df, timeframe=bt.TimeFrame.Minutes, compression=1), name="M2K")
    cerebro.broker.setcash(cash)
    cerebro.broker.setcommission(
        commission=0.62, margin=770, mult=5, commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False
    )
    if slip_points:
        cerebro.broker.set_slippage_fixed(slip_points, slip_open=True)
    cerebro.addstrategy(Scripted, plan=plan, **strat_kw)
    return cerebro


def run(cerebro, extra=()):
    names = add_analyzers(cerebro)
    for name, cls, kw in extra:
        cerebro.addanalyzer(cls, _name=name, **kw)
    strat = cerebro.run()[0]
    analysis = {n: strat.analyzers.getbyname(n).get_analysis() for n in names}
    # the equity curve's columns are numpy arrays; as Python lists they compare with ==
    analysis["equity"] = {k: v.tolist() for k, v in analysis["equity"].items()}
    ext = {n: strat.analyzers.getbyname(n).get_analysis() for n, _, _ in extra}
    return strat, analysis, ext


@pytest.mark.parametrize("mode", MODES)
def test_trade_stats_known_answers(mode):
    strat, an, bt_an = run(
        m2k_cerebro(hand_bars(), PLAN, mode),
        extra=[
            ("ta", bt.analyzers.TradeAnalyzer, {}),
            ("sqn", bt.analyzers.SQN, {}),
        ],
    )
    t = an["trades"]
    # trade 1: long 2, 2000.0 -> 2010.5: 2 x 10.5 x $5 = 105 - 4 sides x 0.62 = 102.52
    # trade 2: short 1, 2009.0 -> 2012.0: 1 x -3.0 x $5 = -15 - 2 x 0.62 = -16.24
    # trade 3: long 1, 2012.0 -> 2011.0: 1 x -1.0 x $5 = -5 - 1.24 = -6.24
    # trade 4: long 3, 2011.0 -> 2015.0: 3 x 4.0 x $5 = 60 - 6 x 0.62 = 56.28
    nets = [102.52, -16.24, -6.24, 56.28]
    assert [x["net_pnl"] for x in t["trade_list"]] == pytest.approx(nets)
    assert [x["gross_pnl"] for x in t["trade_list"]] == pytest.approx([105, -15, -5, 60])
    assert [x["contracts"] for x in t["trade_list"]] == [2, 1, 1, 3]
    assert [x["direction"] for x in t["trade_list"]] == ["long", "short", "long", "long"]
    assert [x["exit_price"] for x in t["trade_list"]] == pytest.approx(
        [2010.5, 2012.0, 2011.0, 2015.0]
    )
    assert t["trade_list"][0]["entry_dt"] == dt.datetime(2024, 3, 4, 10, 1)
    assert t["trade_list"][0]["exit_dt"] == dt.datetime(2024, 3, 4, 10, 3)
    assert t["trades"] == 4 and t["open_trades"] == 0
    assert (t["winners"], t["losers"], t["breakeven"]) == (2, 2, 0)
    assert t["win_rate"] == pytest.approx(0.5)
    # 102.52 + 56.28 = 158.80 ; -16.24 - 6.24 = -22.48
    assert t["gross_profit"] == pytest.approx(158.80)
    assert t["gross_loss"] == pytest.approx(-22.48)
    assert t["profit_factor"] == pytest.approx(158.80 / 22.48)  # 7.0641
    assert t["avg_win"] == pytest.approx(79.40)  # 158.80 / 2
    assert t["avg_loss"] == pytest.approx(-11.24)  # -22.48 / 2
    assert t["payoff_ratio"] == pytest.approx(79.40 / 11.24)
    assert t["expectancy"] == pytest.approx(34.08)  # (158.80 - 22.48) / 4
    assert t["largest_win"] == pytest.approx(102.52)
    assert t["largest_loss"] == pytest.approx(-16.24)
    assert t["longest_losing_streak"] == 2  # trades 2 and 3
    assert t["longest_winning_streak"] == 1
    # gross ticks per contract: 10.5 / 0.1 = 105, -30, -10, 40 -> mean 26.25
    assert [x["ticks"] for x in t["trade_list"]] == pytest.approx([105, -30, -10, 40])
    assert t["avg_ticks"] == pytest.approx(26.25)
    # net ticks per contract = net $ / contracts / $0.50: 102.52, -32.48, -12.48, 37.52
    assert t["avg_win_ticks"] == pytest.approx((102.52 + 37.52) / 2)  # 70.02
    assert t["avg_loss_ticks"] == pytest.approx((-32.48 - 12.48) / 2)  # -22.48
    assert t["expectancy_ticks"] == pytest.approx(95.08 / 4)  # 23.77
    assert t["avg_bars_held"] == pytest.approx(2.0)  # every trade: fill bar i+1 -> exit bar i+3
    assert t["avg_holding_minutes"] == pytest.approx(2.0)
    # SQN = sqrt(4) x 34.08 / pstdev(nets); deviations 68.44, -50.32, -40.32, 22.20
    # pstdev = sqrt((4684.0336 + 2532.1024 + 1625.7024 + 492.84) / 4) = 48.30804
    assert t["sqn"] == pytest.approx(2 * 34.08 / math.sqrt(9334.6784 / 4))
    # backtrader's own analyzers agree
    ta, sqn = bt_an["ta"], bt_an["sqn"]
    assert t["sqn"] == pytest.approx(sqn["sqn"])
    assert t["trades"] == ta["total"]["closed"]
    assert t["winners"] == ta["won"]["total"]  # no breakeven trade here
    assert t["net_pnl"] == pytest.approx(ta["pnl"]["net"]["total"])
    assert t["gross_pnl"] == pytest.approx(ta["pnl"]["gross"]["total"])
    assert t["largest_win"] == pytest.approx(ta["won"]["pnl"]["max"])
    assert t["largest_loss"] == pytest.approx(ta["lost"]["pnl"]["max"])
    assert t["longest_losing_streak"] == ta["streak"]["lost"]["longest"]
    assert t["avg_bars_held"] == pytest.approx(ta["len"]["average"])
    # flat at the end: the trades' net P&L is the equity change, 10,000 + 136.32
    assert sum(nets) == pytest.approx(strat.broker.getvalue() - CASH)
    assert an["returns"]["net_profit"] == pytest.approx(136.32)


@pytest.mark.parametrize("mode", MODES)
def test_costs_measure_slippage_exactly(mode):
    # 1 tick (0.10 pt) of slippage on every fill, capped at the bar's high/low by backtrader
    _, an, _ = run(m2k_cerebro(hand_bars(), PLAN, mode, slip_points=0.1))
    c = an["costs"]
    assert c["fills"] == 8
    assert c["contracts_traded"] == 14  # 2+2 + 1+1 + 1+1 + 3+3
    assert c["commission"] == pytest.approx(8.68)  # 14 x 0.62
    assert c["commission_per_contract"] == pytest.approx(0.62)
    # every fill pays 0.1 pt x $5 = $0.50 per contract, except the 3-lot buy on bar 13 whose
    # open is the high (fill capped at 2011.0): 11 contracts x 0.50 = 5.50
    assert c["slippage"] == pytest.approx(5.50)
    assert c["slippage_per_contract"] == pytest.approx(5.50 / 14)
    assert c["slippage_ticks_per_contract"] == pytest.approx(11 / 14)
    assert c["total_costs"] == pytest.approx(14.18)
    # frictionless P&L: 105 - 15 - 5 + 60 = 145; equity change = 145 - 14.18 = 130.82
    assert an["returns"]["net_profit"] == pytest.approx(130.82)
    assert c["gross_profit"] == pytest.approx(145.0)
    assert c["costs_pct_of_gross"] == pytest.approx(100 * 14.18 / 145)  # 9.779 %
    assert c["commission_pct_of_gross"] == pytest.approx(100 * 8.68 / 145)
    assert c["slippage_pct_of_gross"] == pytest.approx(100 * 5.50 / 145)
    assert c["unpriced_fills"] == 0
    # the trade list shows the slipped fills: trade 1 long 2000.0 + 0.1 -> 2010.5 - 0.1
    first = an["trades"]["trade_list"][0]
    assert (first["entry_price"], first["exit_price"]) == pytest.approx((2000.1, 2010.4))


def test_costs_with_no_fills_are_none():
    _, an, _ = run(m2k_cerebro(hand_bars(), {}))
    c = an["costs"]
    assert c["fills"] == 0 and c["commission"] == 0
    for key in ("commission_per_contract", "slippage_per_contract", "costs_pct_of_gross"):
        assert c[key] is None
    t = an["trades"]
    assert t["trades"] == 0
    for key in ("win_rate", "profit_factor", "expectancy", "sqn", "avg_win", "payoff_ratio"):
        assert t[key] is None
    m = an["margin"]
    assert m["peak_initial_margin"] is None and m["peak_leverage"] is None
    assert m["lowest_excess_equity"] == pytest.approx(CASH)
    r = an["returns"]
    assert r["sharpe"] is None and r["sortino"] is None and r["calmar"] is None
    assert r["max_drawdown"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_margin_exposure_known_answers(mode):
    strat, an, _ = run(m2k_cerebro(hand_bars(), PLAN, mode))
    m = an["margin"]
    assert m["peak_contracts"] == 3
    assert m["peak_initial_margin"] == pytest.approx(2310.0)  # 3 x $770
    assert m["peak_initial_margin_dt"] == dt.datetime(2024, 3, 4, 10, 13)
    # 3 contracts x 2013.5 (bar 14 close) x $5 = 30,202.50
    assert m["peak_notional"] == pytest.approx(30202.5)
    eq = equity_frame(an["equity"])
    # bar 14 equity: 10,000 + 102.52 - 16.24 - 6.24 - 3 x 0.62 + 3 x 2.5 x $5 = 10,115.68
    assert eq["value"].iloc[14] == pytest.approx(10115.68)
    # leverage peaks on bar 13, where equity is lower: 3 x 2010.5 x $5 = 30,157.50 over
    # 10,000 + 102.52 - 16.24 - 6.24 - 3 x 0.62 - 3 x 0.5 x $5 = 10,070.68 -> 2.9946x
    assert eq["value"].iloc[13] == pytest.approx(10070.68)
    assert m["peak_leverage"] == pytest.approx(30157.5 / 10070.68)
    assert m["peak_margin_pct_of_equity"] == pytest.approx(100 * 2310 / eq["value"].iloc[13])
    # in the market at the close of bars 1-2, 5-6, 9-10, 13-14: 8 of 17 bars
    assert (m["bars"], m["bars_in_market"]) == (17, 8)
    assert m["time_in_market_pct"] == pytest.approx(800 / 17)
    # maintenance = initial here (backtrader's scheme has one margin): excess = value - margin
    expected = (eq["value"] - eq["position"].abs() * 770).min()
    assert m["lowest_excess_equity"] == pytest.approx(expected)
    assert m["margin_calls"] == 0 and m["margin_events"] == []


@dataclass
class FakeEvent:
    dt: dt.datetime
    kind: str
    equity: float
    requirement: float
    contracts: int
    data_name: str


def test_margin_events_are_read_from_the_broker():
    cerebro = m2k_cerebro(hand_bars(), PLAN)
    when = dt.datetime(2024, 3, 4, 10, 5)
    cerebro.broker.margin_events = [
        FakeEvent(when, "margin_call", 650.0, 700.0, 1, "M2K"),
        FakeEvent(when, "margin_call", 640.0, 700.0, 1, "M2K"),
        FakeEvent(when, "negative_equity", -5.0, 700.0, 1, "M2K"),
    ]
    _, an, _ = run(cerebro)
    m = an["margin"]
    assert (m["margin_calls"], m["negative_equity_events"], m["intraday_cutbacks"]) == (2, 1, 0)
    assert m["margin_events"][0] == {
        "dt": when,
        "kind": "margin_call",
        "equity": 650.0,
        "requirement": 700.0,
        "contracts": 1,
        "data_name": "M2K",
    }


@dataclass
class Decision:
    dt: dt.datetime
    p: float
    b: float
    f_star: float
    f_used: float
    equity: float
    risk_per_contract: float
    contracts: int
    binding: str
    trades_used: int


class LoggingSizer(bt.Sizer):
    """A fixed 1-lot sizer that logs decisions the way KellySizer does."""

    def __init__(self):
        self.decisions = []

    def _getsizing(self, comminfo, cash, data, isbuy):
        n = len(self.decisions)
        f = 0.1 * (n + 1)
        self.decisions.append(
            Decision(data.datetime.datetime(0), 0.5, 1.5, 0.1667, f, cash, 50.0, n % 2, "kelly", n)
        )
        return 1


def test_kelly_log_reads_sizer_decisions():
    class OneLots(bt.Strategy):
        def next(self):
            if len(self) in (2, 4, 6):
                self.buy()

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(hand_bars()), name="M2K")
    cerebro.addstrategy(OneLots)
    cerebro.addsizer(LoggingSizer)
    _, an, _ = run(cerebro)
    k = an["kelly"]
    assert k["available"] and k["sizer"] == "LoggingSizer"
    assert k["count"] == 3
    assert [d["f_used"] for d in k["decisions"]] == pytest.approx([0.1, 0.2, 0.3])
    assert k["mean_f_used"] == pytest.approx(0.2)  # (0.1 + 0.2 + 0.3) / 3
    assert k["last_f_used"] == pytest.approx(0.3)
    assert k["zero_size"] == 2  # contracts logged 0, 1, 0
    assert k["max_contracts"] == 1
    assert k["binding"] == {"kelly": 3}


def test_kelly_log_without_kelly_sizer():
    _, an, _ = run(m2k_cerebro(hand_bars(), PLAN))
    k = an["kelly"]
    assert k["available"] is False and k["count"] == 0
    assert k["mean_f_used"] is None and k["max_contracts"] is None


class Random(bt.Strategy):
    """Deterministic pseudo-random entries and exits; flat on the last bar."""

    params = (("every", 7), ("n", 0))

    def next(self):
        i = len(self)
        if i >= self.p.n - 2:  # a close placed on bar n-2 fills at bar n-1's open
            if self.position:
                self.close()
            return
        if i % self.p.every == 0:
            if self.position:
                self.close()
            else:
                (self.buy if (i // self.p.every) % 3 else self.sell)(size=1 + i % 3)


@pytest.mark.parametrize("mode", MODES)
def test_returns_risk_cross_checked_with_backtrader(mode):
    df = make_bars(600, seed=3, freq="5min")
    cerebro = bt.Cerebro(stdstats=False, **mode)
    cerebro.adddata(pandas_feed(df, timeframe=bt.TimeFrame.Minutes, compression=5), name="M2K")
    cerebro.broker.setcash(CASH)
    cerebro.broker.setcommission(
        commission=0.62, margin=770, mult=5, commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False
    )
    cerebro.addstrategy(Random, n=600)
    # 600 five-minute bars from 09:30 on 2024-01-02, 24 h a day: trade dates (18:00 start)
    # hold 102 (09:30-17:55), 288 and 210 bars; median 210 -> 210 x 252 = 52,920 per year
    ppy = 210 * 252
    strat, an, ext = run(
        cerebro,
        extra=[
            ("dd", bt.analyzers.DrawDown, {}),
            (
                "sharpe",
                bt.analyzers.SharpeRatio,
                dict(
                    timeframe=bt.TimeFrame.Minutes,
                    compression=5,
                    factor=ppy,
                    riskfreerate=0.0,
                    annualize=True,
                    stddev_sample=True,
                ),
            ),
            ("sqn", bt.analyzers.SQN, {}),
            ("ta", bt.analyzers.TradeAnalyzer, {}),
        ],
    )
    r, t = an["returns"], an["trades"]
    assert r["periods_per_year"] == ppy
    assert r["bars"] == 600
    assert r["max_drawdown"] == pytest.approx(ext["dd"]["max"]["moneydown"])
    assert r["max_drawdown_pct"] == pytest.approx(ext["dd"]["max"]["drawdown"])
    assert r["max_drawdown_bars"] == ext["dd"]["max"]["len"]
    assert r["sharpe"] == pytest.approx(ext["sharpe"]["sharperatio"], rel=1e-9)
    assert t["sqn"] == pytest.approx(ext["sqn"]["sqn"])
    assert t["trades"] == ext["ta"]["total"]["closed"] > 10
    assert t["net_pnl"] == pytest.approx(ext["ta"]["pnl"]["net"]["total"])
    # ends flat: trades' net P&L = final - starting equity
    assert strat.position.size == 0
    assert t["net_pnl"] == pytest.approx(strat.broker.getvalue() - CASH)
    assert r["net_profit"] == pytest.approx(t["net_pnl"])
    # equity curve agrees with the returns analyzer
    eq = equity_frame(an["equity"])
    assert len(eq) == 600
    assert eq["value"].iloc[-1] == pytest.approx(r["end_value"])
    assert eq["drawdown"].max() == pytest.approx(r["max_drawdown"])
    m = metrics_from(an)
    assert set(m) == set(METRIC_KEYS)
    assert m["sharpe"] == r["sharpe"] and m["sqn"] == t["sqn"]


def test_periods_per_year_rules():
    # daily bars: 252 per year whatever the count; weekly: 52
    days = [dt.datetime(2024, 1, d, 16, 0) for d in (2, 3, 4, 5, 8)]
    assert periods_per_year(bt.TimeFrame.Days, 1, days) == 252
    assert periods_per_year(bt.TimeFrame.Weeks, 1, days[:2]) == 52
    assert periods_per_year(bt.TimeFrame.Days, 2) == 126
    # Globex 1-minute bars 18:00-17:00 = 23 h = 1380 bars per trade date -> x 252 = 347,760
    start = dt.datetime(2024, 1, 2, 18, 0)
    globex = [start + dt.timedelta(minutes=i) for i in range(1380)]
    globex += [start + dt.timedelta(days=1, minutes=i) for i in range(1380)]
    assert periods_per_year(bt.TimeFrame.Minutes, 1, globex) == 1380 * 252
    # no bars and an intraday feed: nominal 23 h session of 5-minute bars = 276 x 252
    assert periods_per_year(bt.TimeFrame.Minutes, 5) == 276 * 252


def test_returns_statistics_known_answers():
    # equity 100 -> 110 -> 99 -> 108.9 over 3 daily bars (P = 252)
    s = returns_statistics(100.0, [110.0, 99.0, 108.9], periods=252)
    # returns +10 %, -10 %, +10 %: mean 0.0333..., sample sd = 0.11547 (= 0.2 / sqrt(3))
    rets = [0.10, -0.10, 0.10]
    mean = sum(rets) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in rets) / 2)
    assert s["sharpe"] == pytest.approx(mean / sd * math.sqrt(252))
    # downside deviation = sqrt((0 + 0.01 + 0) / 3) = 0.057735
    assert s["sortino"] == pytest.approx(mean / math.sqrt(0.01 / 3) * math.sqrt(252))
    assert s["max_drawdown"] == pytest.approx(11.0)  # 110 -> 99
    assert s["max_drawdown_pct"] == pytest.approx(10.0)
    assert s["max_drawdown_bars"] == 2  # 99 and 108.9 are both below 110
    # CAGR over 3/252 years: 1.089 ** 84 - 1
    assert s["years"] == pytest.approx(3 / 252)
    assert s["cagr"] == pytest.approx(1.089**84 - 1)
    assert s["calmar"] == pytest.approx(s["cagr"] / 0.10)
    assert s["return_pct"] == pytest.approx(8.9)


def test_returns_statistics_undefined_cases():
    flat = returns_statistics(100.0, [100.0, 100.0, 100.0], periods=252)
    assert flat["sharpe"] is None and flat["sortino"] is None and flat["calmar"] is None
    assert flat["cagr"] == 0.0 and flat["max_drawdown"] == 0
    bust = returns_statistics(100.0, [50.0, -10.0], periods=252)
    assert bust["cagr"] is None and bust["sharpe"] is None
    assert bust["max_drawdown"] == pytest.approx(110.0)
    assert bust["max_drawdown_pct"] == pytest.approx(110.0)


def test_trade_statistics_breakeven_is_neither_win_nor_loss():
    t0 = dt.datetime(2024, 3, 4, 10, 0)

    def trade(net):
        return {
            "net_pnl": net,
            "gross_pnl": net + 1.24,
            "commission": 1.24,
            "ticks": (net + 1.24) / 0.5,
            "net_ticks": net / 0.5,
            "bars_held": 3,
            "entry_dt": t0,
            "exit_dt": t0 + dt.timedelta(minutes=3),
        }

    s = trade_statistics([trade(-10.0), trade(0.0), trade(-5.0), trade(20.0)])
    assert (s["winners"], s["losers"], s["breakeven"]) == (1, 2, 1)
    assert s["win_rate"] == pytest.approx(0.25)
    assert s["longest_losing_streak"] == 1  # the breakeven trade breaks the streak
    assert s["profit_factor"] == pytest.approx(20 / 15)
    only_wins = trade_statistics([trade(10.0), trade(5.0)])
    assert only_wins["profit_factor"] is None and only_wins["payoff_ratio"] is None


def test_add_analyzers_names():
    cerebro = bt.Cerebro()
    assert add_analyzers(cerebro) == list(ANALYZER_NAMES)
    assert add_analyzers(bt.Cerebro(), minimal=True) == ["returns", "trades", "equity"]


@pytest.mark.parametrize("mode", MODES)
def test_with_futures_broker(mode):
    from m2k_bt.brokers.commission import M2KCommInfo
    from m2k_bt.brokers.futures import FuturesBroker

    cerebro = bt.Cerebro(stdstats=False, **mode)
    cerebro.broker = FuturesBroker(cash=CASH, slippage_ticks=1)
    cerebro.broker.addcommissioninfo(M2KCommInfo())
    cerebro.adddata(pandas_feed(hand_bars(), timeframe=bt.TimeFrame.Minutes), name="M2K")
    cerebro.addstrategy(Scripted, plan=PLAN)
    _, an, _ = run(cerebro)
    c, m = an["costs"], an["margin"]
    # same fills as backtrader's slip_fixed: 11 slipped contracts x $0.50, 14 sides x $0.62
    assert c["slippage"] == pytest.approx(5.50)
    assert c["commission"] == pytest.approx(8.68)
    assert an["returns"]["net_profit"] == pytest.approx(130.82)
    # excess equity uses the $700 maintenance margin: lowest on bar 13, long 3 from 2011.0
    # (unslipped, capped at the high). Closed trades with slippage: 100.52 - 17.24 - 7.24 = 76.04
    # equity = 10,000 + 76.04 - 3 x 0.62 + 3 x (2010.5 - 2011.0) x $5 = 10,066.68
    # excess = 10,066.68 - 3 x $700 = 7,966.68
    eq = equity_frame(an["equity"])
    assert eq["value"].iloc[13] == pytest.approx(10066.68)
    assert m["lowest_excess_equity"] == pytest.approx(7966.68)
    assert m["lowest_excess_equity_dt"] == dt.datetime(2024, 3, 4, 10, 13)
    assert m["peak_initial_margin"] == pytest.approx(3 * 770)


# -------------------------------------------------------------------------------------------
# engine modes: the recorder reads times and closes from backtrader's line buffers when they
# hold every bar, and records them per bar when they may not (exactbars, replay, 2 feeds)
# -------------------------------------------------------------------------------------------


class Watched(Random):
    """Random trades, plus what backtrader itself says at every bar, for the cross-check."""

    def start(self):
        self.seen = []

    def next(self):
        super().next()
        self.seen.append(
            (
                self.datetime.datetime(0),
                self.broker.getvalue(),
                self.position.size,
                self.data.close[0],
            )
        )

    prenext = next


class FixedOffset(dt.tzinfo):
    """A fixed UTC-6 zone that backtrader can localize with (no pytz here)."""

    def utcoffset(self, when):
        return dt.timedelta(hours=-6)

    def dst(self, when):
        return dt.timedelta(0)

    def tzname(self, when):
        return "UTC-6"


ENGINE_MODES = [
    pytest.param(dict(runonce=True, preload=True), id="runonce"),
    pytest.param(dict(runonce=False, preload=True), id="next-preload"),
    pytest.param(dict(runonce=False, preload=False), id="next-nopreload"),
    pytest.param(dict(exactbars=1), id="exactbars"),
    pytest.param(dict(exactbars=-1), id="exactbars-neg"),
]


def watched_run(mode, n=400, feeds=1, tz=None):
    df = make_bars(n, seed=11, freq="5min")
    cerebro = bt.Cerebro(stdstats=False, tz=tz, **mode)
    for i in range(feeds):
        feed = pandas_feed(df.iloc[:: i + 1], timeframe=bt.TimeFrame.Minutes, compression=5)
        cerebro.adddata(feed, name=f"M2K{i}")
    cerebro.broker.setcash(CASH)
    cerebro.broker.setcommission(
        commission=0.62, margin=770, mult=5, commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False
    )
    cerebro.addstrategy(Watched, n=n, every=5)
    return run(cerebro)


@pytest.mark.parametrize("mode", ENGINE_MODES)
def test_same_results_in_every_engine_mode(mode):
    _, reference, _ = watched_run(dict(runonce=True, preload=True))
    _, an, _ = watched_run(mode)
    assert an["trades"]["trades"] > 10 and an["margin"]["bars_in_market"] > 0
    for a in (an, reference):
        for trade in a["trades"]["trade_list"]:
            del trade["ref"]  # backtrader numbers trades across runs
    for name in ANALYZER_NAMES:
        assert an[name] == reference[name], name


@pytest.mark.parametrize("mode", ENGINE_MODES)
@pytest.mark.parametrize(
    "feeds, tz", [(1, None), (2, None), (1, FixedOffset())], ids=["1feed", "2feeds", "tz"]
)
def test_equity_curve_is_what_backtrader_saw_at_each_bar(mode, feeds, tz):
    if feeds == 2 and mode.get("exactbars", 0) > 0:
        pytest.skip("backtrader's broker cannot value two feeds of unequal length with exactbars=1")
    strat, an, _ = watched_run(mode, feeds=feeds, tz=tz)
    eq = an["equity"]
    times, values, sizes, closes = (list(col) for col in zip(*strat.seen))
    assert eq["datetime"] == times  # bt.num2date bar by bar, with the strategy's tz
    assert eq["value"] == values and eq["position"] == sizes and eq["close"] == closes
    assert all(type(x) is int for x in eq["position"])  # contracts stay ints in equity.csv
    lowest = min(
        range(len(values)), key=lambda i: (values[i] - abs(sizes[i]) * 770 * (feeds == 1), i)
    )
    if feeds == 1:  # excess = equity - 770 per contract; the first bar where it is lowest
        assert an["margin"]["lowest_excess_equity_dt"] == times[lowest]
    assert an["returns"]["bars"] == len(times) == an["margin"]["bars"]


def test_replayed_feed_records_every_call():
    # replay: backtrader calls next on every 5-minute tick of the 30-minute bar being built
    df = make_bars(240, seed=2, freq="5min")
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.replaydata(
        pandas_feed(df, timeframe=bt.TimeFrame.Minutes, compression=5),
        timeframe=bt.TimeFrame.Minutes,
        compression=30,
    )
    cerebro.broker.setcash(CASH)
    cerebro.addstrategy(Watched, n=10_000, every=7)
    strat, an, _ = run(cerebro)
    assert an["returns"]["bars"] == len(strat.seen) == 240 > len(strat)
    assert an["equity"]["datetime"] == [s[0] for s in strat.seen]
    assert an["equity"]["close"] == [s[3] for s in strat.seen]


def test_vectorised_times_match_num2date():
    from m2k_bt.sessions import num2datetime64

    rng = pytest.importorskip("numpy").random.default_rng(4)
    start = bt.date2num(dt.datetime(2024, 1, 7, 18, 0))
    minutes = start + rng.integers(0, 500_000, 2000) / 1440.0  # minute bars, float noise
    stamps = start + rng.random(2000) * 800.0  # any time, microseconds included
    edges = [start, start + 0.25, start + 1 - 1e-12, start + 1e-12, 1.0, 719163.0]
    for t in [*minutes, *stamps, *edges]:
        got = num2datetime64([t]).tolist()[0]
        assert got == bt.num2date(t), t


def test_subclass_hooks_still_run():
    from m2k_bt.analyzers import EquityCurve

    class Counting(EquityCurve):
        def start(self):
            super().start()
            self.calls = self.funds = 0

        def next(self):
            self.calls += 1

        def notify_fund(self, cash, value, fundvalue, shares):
            self.funds += 1

    cerebro = m2k_cerebro(hand_bars(), PLAN)
    cerebro.addanalyzer(Counting, _name="counting")
    strat = cerebro.run()[0]
    counting = strat.analyzers.counting
    assert counting.calls == counting.funds == len(ROWS)
    assert len(counting.get_analysis()["value"]) == len(ROWS)


def test_every_analyzer_documents_every_key_it_returns():
    # backtrader's analyzer.py habit: each key of get_analysis() is named in the class docstring
    import m2k_bt.analyzers as analyzers

    _, analysis, _ = run(m2k_cerebro(hand_bars(), PLAN))
    undocumented = {
        name: [k for k in analysis[name] if f"``{k}``" not in getattr(analyzers, cls).__doc__]
        for name, cls in ANALYZER_NAMES.items()
    }
    assert {k: v for k, v in undocumented.items() if v} == {}


def test_declined_entries_count_zero_sizes_by_binding():
    from m2k_bt.analyzers.kelly import DECLINE_REASONS, declined_entries

    decisions = (
        [{"binding": "max_exposure", "contracts": 0}] * 24
        + [{"binding": "zero", "contracts": 0}] * 26
        + [{"binding": "no_edge", "contracts": 0}] * 34
        + [{"binding": "max_exposure", "contracts": 3}] * 5  # capped but traded: not declined
        + [{"binding": "kelly", "contracts": 2}] * 7
    )
    out = declined_entries(decisions)
    # 24 + 26 + 34 = 84 of 24 + 26 + 34 + 5 + 7 = 96 entries sized to 0; largest count first
    assert out == {"entries": 96, "declined": 84,
                   "by_binding": {"no_edge": 34, "zero": 26, "max_exposure": 24}}
    assert list(out["by_binding"]) == ["no_edge", "zero", "max_exposure"]
    assert declined_entries([]) == {"entries": 0, "declined": 0, "by_binding": {}}
    assert {"no_edge", "zero", "max_exposure", "margin"} <= set(DECLINE_REASONS)


@given(st.lists(st.booleans(), max_size=60))
@settings(max_examples=300, deadline=None)
def test_longest_streak_is_the_longest_run_counted_one_trade_at_a_time(flags):
    """``_streak`` (numpy run edges) is the longest run of True counted flag by flag, as
    the trade statistics defined it: a False (a loss, or a breakeven trade) ends a run."""
    from m2k_bt.analyzers.trades import _streak

    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    assert _streak(np.array(flags, dtype=bool)) == best
    assert _streak(flags) == best
