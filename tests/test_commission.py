"""Known answers for M2KCommInfo: P&L, fees, cash and value under backtrader's futures rules."""

import backtrader as bt
import pytest
from conftest import pandas_feed
from scripted import Scripted, hand_bars

from m2k_bt.brokers.commission import M2KCommInfo, slippage_points
from m2k_bt.contracts import M2K, RTY
from m2k_bt.errors import ContractSpecError

MODES = [(True, True), (False, True), (True, False), (False, False)]

# bar 0: signal; bar 1 opens 2000.0 (entry fill); bar 3: exit signal; bar 4 opens 2010.5 (exit fill)
ROWS = [
    (1999.0, 2000.5, 1998.5, 2000.0),
    (2000.0, 2003.0, 1999.0, 2002.0),
    (2002.0, 2006.0, 2001.0, 2005.0),
    (2005.0, 2011.0, 2004.0, 2010.0),
    (2010.5, 2012.0, 2009.0, 2011.0),
    (2011.0, 2012.0, 2010.0, 2011.5),
]


def run(plan, comminfo, cash=25_000.0, runonce=True, preload=True, rows=ROWS):
    cerebro = bt.Cerebro(runonce=runonce, preload=preload, stdstats=False)
    cerebro.adddata(pandas_feed(hand_bars(rows)))
    cerebro.broker.setcash(cash)
    cerebro.broker.addcommissioninfo(comminfo)
    cerebro.addstrategy(Scripted, plan=plan)
    strat = cerebro.run()[0]
    return cerebro, strat


@pytest.mark.parametrize("runonce,preload", MODES)
def test_long_two_contracts_known_answer(runonce, preload):
    cerebro, strat = run({0: 2, 3: -2}, M2KCommInfo(), runonce=runonce, preload=preload)
    (trade,) = strat.trades
    # gross 2 contracts x 10.5 pts x $5 = 105.00
    assert trade.pnl == pytest.approx(105.00)
    # fees 4 sides x $0.62 = 2.48; net 105.00 - 2.48 = 102.52
    assert trade.commission == pytest.approx(2.48)
    assert trade.pnlcomm == pytest.approx(102.52)
    # flat after the exit: value = cash = 25,000 + 102.52
    assert cerebro.broker.getvalue() == pytest.approx(25_102.52)
    assert cerebro.broker.getcash() == pytest.approx(25_102.52)


def test_short_losing_trade():
    # short 3 at 2000.0, cover at 2010.5:
    # gross -3 x 10.5 x $5 = -157.50; fees 6 sides x 0.62 = 3.72; net -161.22
    cerebro, strat = run({0: -3, 3: 3}, M2KCommInfo())
    (trade,) = strat.trades
    assert trade.pnl == pytest.approx(-157.50)
    assert trade.pnlcomm == pytest.approx(-161.22)
    assert cerebro.broker.getvalue() == pytest.approx(25_000 - 161.22)


def test_rty_from_spec_is_ten_times_the_dollars():
    # RTY: 2 x 10.5 pts x $50 = 1050.00 gross; 4 sides x $2.25 = 9.00 fees; net 1041.00
    cerebro, strat = run({0: 2, 3: -2}, M2KCommInfo.from_spec(RTY), cash=50_000)
    (trade,) = strat.trades
    assert trade.pnl == pytest.approx(10 * 105.00)
    assert trade.pnlcomm == pytest.approx(1041.00)
    assert cerebro.broker.getvalue() == pytest.approx(51_041.00)


def test_cash_is_marked_to_market_every_bar_and_value_is_cash_plus_margin():
    # after bar 1 (entry at 2000.0, close 2002.0): cash = 25,000 - 2 x $770 margin - 2 x $0.62
    # + 2 x 2.0 pts x $5 = 25,000 - 1,540 - 1.24 + 20 = 23,478.76; value = cash + 1,540 = 25,018.76
    seen = []

    class Watch(Scripted):
        def next(self):
            seen.append((len(self), self.broker.getcash(), self.broker.getvalue()))
            super().next()

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(hand_bars(ROWS)))
    cerebro.broker.setcash(25_000.0)
    cerebro.broker.addcommissioninfo(M2KCommInfo())
    cerebro.addstrategy(Watch, plan={0: 2, 3: -2})
    cerebro.run()
    _, cash, value = seen[1]
    assert cash == pytest.approx(23_478.76)
    assert value == pytest.approx(25_018.76)


def test_from_spec_overrides_and_defaults_match_spec():
    ci = M2KCommInfo.from_spec(M2K, commission=0.85)
    assert (ci.p.mult, ci.p.margin, ci.p.maintenance_margin) == (5.0, 770.0, 700.0)
    assert ci.p.commission == 0.85
    assert ci.tick_value == pytest.approx(0.50)  # 0.10 pts x $5


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"margin": None}, "stock-like"),
        ({"margin": -5}, "margin must be"),
        ({"commission": -0.1}, "commission must be"),
        ({"maintenance_margin": 900}, "initial must be >= maintenance"),
        ({"intraday_margin": 1000}, "intraday_margin"),
        ({"stocklike": True}, "futures scheme"),
        ({"marign": 100}, "did you mean 'margin'"),
    ],
)
def test_impossible_settings_raise(kwargs, needle):
    with pytest.raises(ContractSpecError, match=needle):
        M2KCommInfo(**kwargs)


def test_from_spec_rejects_unknown_override():
    with pytest.raises(ContractSpecError, match="did you mean 'commission'"):
        M2KCommInfo.from_spec(M2K, comission=1.0)


def test_tick_helpers():
    ci = M2KCommInfo()
    assert ci.round_price(2000.06) == 2000.1
    assert ci.round_price(2000.06, "down") == 2000.0
    assert slippage_points(2) == pytest.approx(0.2)  # 2 ticks x 0.10
