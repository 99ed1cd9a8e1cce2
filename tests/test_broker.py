"""FuturesBroker: initial-margin rejection, maintenance margin calls, intraday margin, slippage."""

import backtrader as bt
import pytest
from conftest import pandas_feed
from scripted import Scripted, hand_bars

from m2k_bt.brokers.commission import M2KCommInfo
from m2k_bt.brokers.futures import FuturesBroker
from m2k_bt.errors import ParameterError

MODES = [(True, True), (False, True), (True, False), (False, False)]


def run(rows, plan, broker_kwargs=None, ci_kwargs=None, start="2024-03-04 10:00", freq="1min",
        runonce=True, preload=True):
    cerebro = bt.Cerebro(runonce=runonce, preload=preload, stdstats=False)
    cerebro.adddata(pandas_feed(hand_bars(rows, start=start, freq=freq)))
    cerebro.broker = FuturesBroker(**(broker_kwargs or {}))
    cerebro.broker.addcommissioninfo(M2KCommInfo(**(ci_kwargs or {})))
    cerebro.addstrategy(Scripted, plan=plan)
    strat = cerebro.run()[0]
    return cerebro, strat


FLAT = [(2000.0, 2000.5, 1999.5, 2000.0)] * 4


def test_order_needing_more_initial_margin_than_cash_is_rejected():
    # 2 contracts need 2 x $770 = $1,540 > $1,000 cash
    cerebro, strat = run(FLAT, {0: 2}, {"cash": 1000.0})
    assert [o.getstatusname() for o in strat.orders] == ["Margin"]
    assert cerebro.broker.getposition(cerebro.datas[0]).size == 0
    assert cerebro.broker.getvalue() == pytest.approx(1000.0)


@pytest.mark.parametrize("runonce,preload", MODES)
def test_margin_call_liquidates_at_next_open_and_records_event(runonce, preload):
    rows = [
        (2000.0, 2000.0, 2000.0, 2000.0),  # bar 0: buy 2
        (2000.0, 2000.0, 1990.0, 1990.0),  # bar 1: filled at 2000.0
        (1990.0, 1990.0, 1950.0, 1950.0),
        (1950.0, 1950.0, 1930.0, 1930.0),  # bar 3: equity below maintenance
        (1925.0, 1926.0, 1920.0, 1921.0),  # bar 4: liquidated at the open, 1925.0
        (1921.0, 1922.0, 1920.0, 1921.0),
    ]
    cerebro, strat = run(rows, {0: 2}, {"cash": 2000.0}, runonce=runonce, preload=preload)
    broker = cerebro.broker
    # equity at bar 3 = 2,000 - 2 x 0.62 + 2 x (1930 - 2000) x $5 = 1,998.76 - 700 = 1,298.76
    # requirement = 2 contracts x $700 maintenance = 1,400 > 1,298.76
    (event,) = [e for e in broker.margin_events if e.kind == "margin_call"]
    assert event.equity == pytest.approx(1298.76)
    assert event.requirement == pytest.approx(1400.0)
    assert event.contracts == 2
    assert event.dt.minute == 3  # bar 3 (10:03)
    # bar 2 equity = 1,998.76 - 500 = 1,498.76 >= 1,400: no call there
    liq = [o for o in strat.orders if o.info.get("margin_call")]
    assert len(liq) == 1 and liq[0].executed.price == pytest.approx(1925.0)
    assert broker.getposition(cerebro.datas[0]).size == 0
    # final = 2,000 - 2 x 75 pts x $5 - 4 x 0.62 = 2,000 - 750 - 2.48 = 1,247.52
    assert broker.getvalue() == pytest.approx(1247.52)
    assert broker.getcash() == pytest.approx(1247.52)


def test_liquidate_false_only_records():
    rows = [(2000.0, 2000.0, 2000.0, 2000.0), (2000.0, 2000.0, 1930.0, 1930.0),
            (1930.0, 1931.0, 1929.0, 1930.0)]
    cerebro, strat = run(rows, {0: 2}, {"cash": 2000.0, "liquidate": False})
    kinds = {e.kind for e in cerebro.broker.margin_events}
    assert "margin_call" in kinds
    assert cerebro.broker.getposition(cerebro.datas[0]).size == 2


def test_negative_equity_is_recorded():
    rows = [(2000.0, 2000.0, 2000.0, 2000.0), (2000.0, 2000.0, 1700.0, 1700.0),
            (1700.0, 1701.0, 1699.0, 1700.0)]
    # equity = 2,000 - 1.24 + 2 x (-300) x 5 = -1,001.24 < 0
    cerebro, _ = run(rows, {0: 2}, {"cash": 2000.0})
    neg = [e for e in cerebro.broker.margin_events if e.kind == "negative_equity"]
    assert len(neg) == 1 and neg[0].equity == pytest.approx(-1001.24)


def test_intraday_margin_accepts_inside_window_and_cuts_back_after():
    # 15:40 .. 15:49, one bar a minute; window 09:30-15:45
    rows = [(2000.0, 2000.0, 2000.0, 2000.0)] * 10
    cerebro, strat = run(
        rows, {0: 5}, {"cash": 1000.0}, {"intraday_margin": 100.0}, start="2024-03-04 15:40"
    )
    done = [o for o in strat.orders if o.status == o.Completed]
    # entry: 5 contracts x $100 intraday = $500 <= $1,000 cash: accepted, filled 15:41
    assert done[0].executed.size == 5
    # at 15:45 the window closes: equity 1,000 - 5 x 0.62 = 996.90 supports floor(996.90 / 770) = 1
    (event,) = [e for e in cerebro.broker.margin_events if e.kind == "intraday_cutback"]
    assert event.dt.hour == 15 and event.dt.minute == 45
    assert event.requirement == pytest.approx(5 * 770.0)
    assert done[1].executed.size == -4 and done[1].info.get("margin_call")
    assert cerebro.broker.getposition(cerebro.datas[0]).size == 1
    # flat prices: equity only pays fees, 9 sides x 0.62 = 5.58; value = 1,000 - 5.58
    assert cerebro.broker.getvalue() == pytest.approx(994.42)


def test_same_order_outside_window_is_rejected():
    rows = [(2000.0, 2000.0, 2000.0, 2000.0)] * 4
    cerebro, strat = run(
        rows, {0: 5}, {"cash": 1000.0}, {"intraday_margin": 100.0}, start="2024-03-04 16:00"
    )
    assert [o.getstatusname() for o in strat.orders] == ["Margin"]


def test_regime_switch_keeps_equity_unchanged():
    # hold 1 contract across the window end on flat prices: value changes only by fees
    rows = [(2000.0, 2000.0, 2000.0, 2000.0)] * 6
    cerebro, _ = run(rows, {0: 1}, {"cash": 5000.0}, {"intraday_margin": 100.0},
                     start="2024-03-04 15:42")
    assert cerebro.broker.getposition(cerebro.datas[0]).size == 1
    assert cerebro.broker.getvalue() == pytest.approx(5000.0 - 0.62)
    # margin held is the overnight $770 again: cash = value - 770
    assert cerebro.broker.getcash() == pytest.approx(5000.0 - 0.62 - 770.0)


def test_slippage_in_ticks_on_market_fills_at_open():
    rows = [(2000.0, 2001.0, 1999.0, 2000.0), (2000.0, 2003.0, 1999.0, 2002.0),
            (2002.0, 2003.0, 2001.0, 2002.0), (2002.0, 2004.0, 2001.0, 2003.0)]
    cerebro, strat = run(rows, {0: 1, 2: -1}, {"cash": 10_000.0, "slippage_ticks": 2})
    buy, sell = [o for o in strat.orders if o.status == o.Completed]
    # 2 ticks x 0.10 = 0.20 points against us on each side
    assert buy.executed.price == pytest.approx(2000.2)
    assert sell.executed.price == pytest.approx(2001.8)
    # net = 1 x (2001.8 - 2000.2) x $5 - 2 x 0.62 = 8.00 - 1.24 = 6.76
    assert strat.trades[0].pnlcomm == pytest.approx(6.76)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"slippage_ticks": -1}, "slippage_ticks"),
        ({"intraday_start": "16:00", "intraday_end": "09:30"}, "before"),
        ({"intraday_start": "nine"}, "time like"),
        ({"cash": -5}, "cash must be"),
        ({"slipage_ticks": 1}, "did you mean 'slippage_ticks'"),
    ],
)
def test_bad_broker_settings(kwargs, needle):
    with pytest.raises(ParameterError, match=needle):
        FuturesBroker(**kwargs)


def test_matches_plain_backbroker_without_margin_events(bars):
    # With ample cash FuturesBroker is BackBroker: same value to the cent.
    plan = {10: 2, 50: -4, 120: 2, 200: 1, 300: -1}

    def final(broker):
        cerebro = bt.Cerebro(stdstats=False)
        cerebro.adddata(pandas_feed(bars.iloc[:400]))
        cerebro.broker = broker
        cerebro.broker.addcommissioninfo(M2KCommInfo())
        cerebro.addstrategy(Scripted, plan=plan)
        cerebro.run()
        return cerebro.broker.getvalue(), cerebro.broker.getcash()

    plain = bt.brokers.BackBroker(cash=100_000.0)
    ours = FuturesBroker(cash=100_000.0)
    assert final(ours) == pytest.approx(final(plain))
