"""The rulebook (m2k_bt.rules), one rule at a time: known answers with the arithmetic written out.

M2K throughout: $5 per point, 0.10-point tick, $0.62 per contract per side, $770 initial and
$700 maintenance margin. The same functions run inside the compiled loop and behind the
backtrader classes; the parity tests (test_kernel, test_broker_parity) guard that wiring.
"""

from __future__ import annotations

import datetime as dt
import math

import backtrader as bt
import numpy as np
import pytest

from m2k_bt.contracts import M2K, round_to_tick
from m2k_bt.rules import fees, kelly, margin, money, pnl, prices
from m2k_bt.sizers.kelly import BINDINGS

MULT = M2K.multiplier  # $5 per point
TICK = M2K.tick_size  # 0.10 points
COMM = M2K.commission  # $0.62 per contract per side
INITIAL = M2K.initial_margin  # $770
MAINT = M2K.maintenance_margin  # $700
NAN = math.nan
PP = MULT * 100  # cents of an M2K contract's value per point: 500 (a tick is 50 cents)


# ------------------------------------------------------------------ prices
def test_tick_price_is_round_to_tick_for_whole_ticks():
    # 20,005 ticks x 0.1 = 2000.5, rounded to 3 decimals (p10 = 10 ** 3)
    assert prices.tick_price(20005, TICK, 1000.0) == 2000.5
    for n in range(0, 40_000, 37):  # the double the strategies' round_to_tick gives
        assert prices.tick_price(n, TICK, 1000.0) == round_to_tick(n * TICK, TICK)


def test_prices_as_cents_of_contract_value():
    # 1824.1 pts x $5 x 100 = 912,050 cents; read back as the double nearest 1824.1
    assert prices.to_units(1824.1000000000001, PP) == 912_050
    assert prices.from_units(912_050, PP) == 1824.1
    # 2 ticks x 0.1 pt x 500 c/pt = 100 cents; 1.5 ticks = 75 cents; none = 0
    assert prices.slip_cents(2, TICK, PP) == 100
    assert prices.slip_cents(1.5, TICK, PP) == 75
    assert prices.slip_cents(0, TICK, PP) == 0


def test_slippage_moves_against_the_trader_within_the_bar():
    # buy at 2000.0, 2 ticks (100 c): 2000.0 + 0.2 = 2000.2, under the high 2000.5; exact
    assert prices.slip_up(2000.0, 2000.5, 100, PP) == 2000.2
    # the high 2000.1 caps it
    assert prices.slip_up(2000.0, 2000.1, 100, PP) == 2000.1
    # sell at 2000.0: 2000.0 - 0.2 = 1999.8, above the low 1999.0; the low 1999.9 caps it
    assert prices.slip_down(2000.0, 1999.0, 100, PP) == 1999.8
    assert prices.slip_down(2000.0, 1999.9, 100, PP) == 1999.9
    # 1824.2 less one tick is 1824.1 exactly, not 1824.1000000000001
    assert prices.slip_down(1824.2, 1800.0, 50, PP) == 1824.1
    # half a tick (25 c): 2000.0 + 0.05 = 2000.05
    assert prices.slip_up(2000.0, 2000.5, 25, PP) == 2000.05
    # no slippage: the price itself
    assert prices.slip_up(2000.0, 2000.5, 0, PP) == 2000.0


# bar: open 2000.0, high 2002.0, low 1998.0; one tick (0.1 pt = 50 cents) of slippage
BAR = (2000.0, 2002.0, 1998.0)
SLIP = (50, PP)


def test_market_fills_at_the_open_slipped():
    assert prices.fill_market(True, *BAR, *SLIP) == 2000.1  # 2000.0 + 0.1
    assert prices.fill_market(False, *BAR, *SLIP) == 1999.9  # 2000.0 - 0.1


@pytest.mark.parametrize("buy,stop,expected", [
    (True, 1999.0, 2000.1),  # open 2000.0 already above the buy stop: the open + 0.1
    (True, 2001.0, 2001.1),  # the high reaches it: the stop + 0.1
    (True, 2003.0, NAN),  # the high 2002.0 never reaches it
    (False, 2001.0, 1999.9),  # open below the sell stop: the open - 0.1
    (False, 1999.0, 1998.9),  # the low reaches it: the stop - 0.1
    (False, 1997.0, NAN),
])
def test_stop_fills(buy, stop, expected):
    got = prices.fill_stop(buy, stop, *BAR, *SLIP)
    assert got == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("buy,limit,expected", [
    (True, 2001.0, 2000.0),  # the open is already better than the buy limit: the open
    (True, 1999.0, 1999.0),  # the low reaches it: the limit, never slipped
    (True, 1997.0, NAN),
    (False, 1999.0, 2000.0),
    (False, 2001.5, 2001.5),
    (False, 2003.0, NAN),
])
def test_limit_fills(buy, limit, expected):
    assert prices.fill_limit(buy, limit, *BAR) == pytest.approx(expected, nan_ok=True)
    got = prices.fill_price(prices.LIMIT, buy, limit, *BAR, *SLIP)
    assert got == pytest.approx(expected, nan_ok=True)


def test_fill_price_dispatches_on_the_order_type():
    assert prices.fill_price(prices.MARKET, True, NAN, *BAR, *SLIP) == 2000.1
    assert prices.fill_price(prices.STOP, True, 2001.0, *BAR, *SLIP) == 2001.1


def test_reference_price_is_the_unslipped_fill():
    assert prices.reference_price(prices.MARKET, True, NAN, 2000.0) == 2000.0
    assert prices.reference_price(prices.STOP, True, 2001.0, 2000.0) == 2001.0  # max(open, stop)
    assert prices.reference_price(prices.STOP, False, 2001.0, 2000.0) == 2000.0  # min
    assert prices.reference_price(prices.LIMIT, True, 1999.0, 2000.0) == 1999.0  # min(open, lim)
    assert prices.reference_price(prices.LIMIT, False, 1999.0, 2000.0) == 2000.0  # max


# ------------------------------------------------------------------ fees and P&L
def test_commission_per_contract_per_side():
    assert fees.commission(2, COMM) == pytest.approx(1.24)  # 2 x $0.62
    assert fees.commission(-3, COMM) == pytest.approx(1.86)  # 3 x $0.62, a sell


def test_round_trip_known_answer():
    # 2 contracts x 10.5 pts x $5 - 4 sides x $0.62 = 105.00 - 2.48 = 102.52
    net = pnl.pnl(2, 2000.0, 2010.5, MULT) - 2 * fees.commission(2, COMM)
    assert net == pytest.approx(102.52)


def test_pnl_of_a_short():
    # short 1 from 2000.0 to 1990.0: -1 x (1990.0 - 2000.0) x $5 = +$50
    assert pnl.pnl(-1, 2000.0, 1990.0, MULT) == pytest.approx(50.0)


@pytest.mark.parametrize("position,size,expected", [
    (0, 2, (2, 0)),  # flat, buy 2: opens 2
    (2, 1, (1, 0)),  # adds 1
    (3, -2, (0, -2)),  # closes 2 of 3
    (3, -3, (0, -3)),  # closes all
    (3, -5, (-2, -3)),  # reverses: closes 3, opens 2 short
    (-2, 5, (3, 2)),
    (-2, -1, (-1, 0)),
    (-2, 1, (0, 1)),
])
def test_open_close_split(position, size, expected):
    assert pnl.open_close(position, size) == expected


def test_average_price():
    # long 2 @ 2000.0, buy 1 @ 2003.0: (2 x 2000.0 + 1 x 2003.0) / 3 = 6003 / 3 = 2001.0
    assert pnl.average_price(2, 2000.0, 1, 2003.0) == pytest.approx(2001.0)
    assert pnl.average_price(2, 2000.0, -1, 2003.0) == 2000.0  # shrinking keeps it
    assert pnl.average_price(2, 2000.0, -2, 2003.0) == 0.0  # flat
    assert pnl.average_price(2, 2000.0, -3, 2003.0) == 2003.0  # reversed: the fill
    assert pnl.average_price(0, 0.0, 1, 2003.0) == 2003.0  # opened: the fill


def test_paper_trade_net():
    # long 1 from 2000.0 to 2010.0, 1 tick ($0.50) slippage a side, in cents:
    # 10 pts x 500 c - 2 x 62 c - 2 x 50 c = 5,000 - 124 - 100 = 4,776 ($47.76)
    net = pnl.paper_trade_net(2000.0, 2010.0, 1, PP, 62, 50)
    assert net == 4776


def test_trade_gross_is_exit_value_less_entry_value():
    # long 2 at 2000.0 (1,000,000 c each), 1 out at 2010.5 and 1 at 2001.0:
    # (1,005,250 + 1,000,500) - 2 x 1,000,000 = 5,750 c = 1 x 10.5 x $5 + 1 x 1.0 x $5 = $57.50
    assert pnl.trade_gross_cents(1, 2 * 1_000_000, 1_005_250 + 1_000_500) == 5750
    # the same short: the sign flips
    assert pnl.trade_gross_cents(-1, 2 * 1_000_000, 1_005_250 + 1_000_500) == -5750
    assert pnl.average_fill(1_005_250 + 1_000_500, 2, PP) == 2005.75


def test_money_in_cents():
    assert money.to_cents(-323.9999999999) == -32400
    assert money.dollars(-32400) == -324.0
    # per contract in 1/100 cent, half to even: 100 c / 3 = 3,333.3 -> 3,333;
    # 1 c / 2 = 50 exactly; 3 c / 200 = 1.5 -> 2 (even); 5 c / 200 = 2.5 -> 2 (even)
    assert [money.per_contract(c, n) for c, n in ((100, 3), (1, 2), (3, 200), (5, 200))] == \
        [3333, 50, 2, 2]
    assert money.per_contract(-100, 3) == -3333


# ------------------------------------------------------------------ margin
def test_regime_margin():
    assert margin.regime_margin(True, INITIAL, 385.0) == 385.0  # inside the window
    assert margin.regime_margin(False, INITIAL, 385.0) == INITIAL
    assert margin.regime_margin(True, INITIAL, NAN) == INITIAL  # no intraday margin


def test_margin_held_and_requirement():
    assert margin.margin_held(-3, INITIAL) == pytest.approx(2310.0)  # 3 x $770
    assert margin.requirement(3, MAINT) == pytest.approx(2100.0)  # 3 x $700
    assert margin.requirement(0, MAINT) == 0.0


@pytest.mark.parametrize("equity,req,ok,call", [
    (2100.0, 2100.0, True, False),  # exactly met
    (2099.99, 2100.0, False, True),  # a cent short: margin call
    (-5.0, 0.0, False, False),  # flat and negative: nothing to call
    (500.0, 0.0, True, False),
])
def test_margin_ok_and_margin_call(equity, req, ok, call):
    assert margin.margin_ok(equity, req) is ok
    assert margin.margin_call(equity, req) is call


def test_intraday_cutback():
    # $2,000 supports floor(2000 / 770) = 2 contracts overnight: long or short 3 cut 1
    assert margin.supported_contracts(2000.0, INITIAL) == 2
    assert margin.cutback_contracts(3, 2000.0, INITIAL) == 1
    assert margin.cutback_contracts(-3, 2000.0, INITIAL) == 1
    assert margin.cutback_contracts(2, 2000.0, INITIAL) == 0
    # negative equity supports nothing: cut all 5
    assert margin.supported_contracts(-100.0, INITIAL) == 0
    assert margin.cutback_contracts(5, -100.0, INITIAL) == 5


def test_rebase_cash_keeps_equity():
    # 2 contracts go from $770 to $385 held: cash 10,000 + (1,540 - 770) = 10,770
    cash = margin.rebase_cash(10_000.0, 2, INITIAL, 385.0)
    assert cash == pytest.approx(10_770.0)
    assert cash + 2 * 385.0 == pytest.approx(10_000.0 + 2 * INITIAL)  # equity unchanged


def test_free_cash_for_an_entry():
    # a short entry against long 2 first closes them: 3,000 + 2 x $770 = 4,540
    assert margin.free_cash(3000.0, 2, False, INITIAL) == pytest.approx(4540.0)
    assert margin.free_cash(3000.0, 2, True, INITIAL) == 3000.0  # adding: nothing released
    assert margin.free_cash(3000.0, 0, False, INITIAL) == 3000.0


def test_intraday_window():
    # 09:30 is 34,200 s of 86,400 s = 0.395833... of the day
    assert margin.day_fraction(dt.time(9, 30)) == pytest.approx(34_200 / 86_400)
    lo, hi = margin.day_fraction(dt.time(9, 30)), margin.day_fraction(dt.time(15, 45))

    def num(hh, mm):  # backtrader's float time
        return bt.date2num(dt.datetime(2024, 3, 4, hh, mm))

    assert margin.in_window(num(9, 30), lo, hi)  # the start is inside
    assert margin.in_window(num(15, 44), lo, hi)
    assert not margin.in_window(num(15, 45), lo, hi)  # the end is not
    assert not margin.in_window(num(9, 29), lo, hi)


# ------------------------------------------------------------------ Kelly
def test_kelly_fraction():
    # (1.5 x 0.55 - 0.45) / 1.5 = (0.825 - 0.45) / 1.5 = 0.25
    assert kelly.kelly_fraction(0.55, 1.5) == pytest.approx(0.25)


def test_binding_names_are_the_sizers():
    assert kelly.BINDINGS is BINDINGS
    assert BINDINGS[kelly.MAX_CONTRACTS] == "max_contracts"


D = 10_000  # Kelly samples per dollar (1/100 cent)


def test_tally_reads_the_ring_buffer_in_order():
    # ring of 4 (1/100 cents), the 3 results from index 3: $40, -$10, $25
    ring = np.array([-10 * D, 25 * D, 0, 40 * D], np.int64)
    # wins 40 + 25 = $65; losses $10; the break-even 0 is neither
    assert kelly.tally(ring, 3, 3) == (2, 65 * D, 1, 10 * D)
    assert kelly.tally(ring, 0, 4) == (2, 65 * D, 1, 10 * D)
    assert kelly.tally(np.zeros(0, np.int64), 0, 0) == (0, 0, 0, 0)


def test_estimate():
    # 11 wins of $150, 9 losses of $100 in 20 trades: p = 11 / 20 = 0.55,
    # b = (1650 / 11) / (900 / 9) = 150 / 100 = 1.5, f* = 0.25 (edge +1)
    got = kelly.estimate(20, 11, 1650 * D, 9, 900 * D)
    assert got[:3] == pytest.approx((0.55, 1.5, 0.25)) and got[3] == 1
    p, b, f, edge = kelly.estimate(20, 20, 3000 * D, 0, 0)  # no loser: f* = p = 1
    assert (p, f, math.isnan(b), edge) == (1.0, 1.0, True, 1)
    p, b, f, edge = kelly.estimate(20, 0, 0, 20, 2000 * D)  # no winner: no b, no f*
    assert (p, math.isnan(b), math.isnan(f), edge) == (0.0, True, True, -1)
    # 10 wins of $100, 10 losses of $100: p 0.5, b 1, f* = 0 exactly (edge 0), never -5e-16
    assert kelly.estimate(20, 10, 1000 * D, 10, 1000 * D)[2:] == (0.0, 0)
    # with a break-even trade: 1 win of $300, 2 losses of $100, 1 at 0 (n 4): p 1/4, b 3,
    # q 3/4: f* = (3 x 1/4 - 3/4) / 3 = 0 exactly; integers: W l - (n - w) L = 600 - 600 = 0
    assert kelly.estimate(4, 1, 300 * D, 2, 200 * D)[2:] == (0.0, 0)


def test_stop_risk():
    assert kelly.stop_risk(20.0, MULT) == pytest.approx(100.0)  # 20 pts x $5
    assert math.isnan(kelly.stop_risk(NAN, MULT))


C = 100  # cents per dollar
VALUE = 1_000_000  # one contract at 2000.0: 2000 x $5 = $10,000 = 1,000,000 cents


def test_caps_in_order():
    # notional cap floor(1/1 x 10,000 / (2000 x $5)) = 1 < 12: max_exposure
    assert kelly.apply_caps(12, kelly.KELLY, 10_000 * C, 10_000 * C, VALUE, 770 * C, 1, 1,
                            50) == (1, kelly.MAX_EXPOSURE)
    # exactly on the cap: 23/10 x $100,000 / $10,000 = 23 (in floats 2.3 x 100000 / 10000 is
    # 22.999999999999996, which floors to 22)
    assert 2.3 * 100_000 / 10_000 < 23
    assert kelly.apply_caps(50, kelly.KELLY, 100_000 * C, 100_000 * C, VALUE, 770 * C, 23, 10,
                            60) == (23, kelly.MAX_EXPOSURE)
    # free cash 3,000 / 770 = 3.9 -> 3 < 12: margin
    assert kelly.apply_caps(12, kelly.KELLY, 10_000 * C, 3000 * C, VALUE, 770 * C, 100, 1,
                            50) == (3, kelly.MARGIN)
    # a margin of 0 (not a futures scheme) caps nothing; 4 contracts at most
    assert kelly.apply_caps(12, kelly.KELLY, 10_000 * C, 0, VALUE, 0, 100, 1,
                            4) == (4, kelly.MAX_CONTRACTS)


def _decide(n=20, wins=11, won=1650 * D, losses=9, lost=900 * D, risk=100.0, equity=10_000.0,
            free=10_000.0, scale=0.5, max_fraction=0.2, max_exposure=100, max_contracts=50,
            min_trades=20, warmup=1):
    """11 wins of $150 and 9 losses of $100 per contract (p 0.55, b 1.5, f* 0.25), a 20-point
    stop ($100 a contract), $10,000 equity, M2K at 2000.0 (money in cents)."""
    return kelly.decide(n, min_trades, warmup, wins, won, losses, lost, risk,
                        round(equity * C), round(free * C), VALUE, 770 * C, scale,
                        max_fraction, max_exposure, 1, max_contracts)


def test_decide_kelly():
    # half Kelly 0.5 x 0.25 = 0.125; floor(0.125 x 10,000 / 100) = 12
    c, b, p, bb, f_star, f_used, risk = _decide()
    assert (c, BINDINGS[b], risk) == (12, "kelly", 100.0)
    assert (p, bb, f_star, f_used) == pytest.approx((0.55, 1.5, 0.25, 0.125))


@pytest.mark.parametrize("kwargs,contracts,binding", [
    (dict(n=19, warmup=2), 2, "warmup"),  # 19 < 20 trades
    (dict(wins=10, won=1000 * D, losses=10, lost=1000 * D), 0, "no_edge"),  # p 0.5, b 1: f* 0
    (dict(wins=0, won=0, losses=20, lost=2000 * D), 0, "no_edge"),  # no winner
    # full Kelly 0.25 capped at 0.1: floor(0.1 x 10,000 / 100) = 10
    (dict(scale=1.0, max_fraction=0.1), 10, "max_fraction"),
    (dict(equity=500.0), 0, "zero"),  # floor(0.125 x 500 / 100) = floor(0.625) = 0
    (dict(max_exposure=1), 1, "max_exposure"),  # floor(1 x 10,000 / 10,000) = 1
    (dict(free=3000.0), 3, "margin"),  # floor(3,000 / 770) = 3
    (dict(max_contracts=4), 4, "max_contracts"),
])
def test_decide_each_binding(kwargs, contracts, binding):
    c, b, *_ = _decide(**kwargs)
    assert (c, BINDINGS[b]) == (contracts, binding)


def test_decide_without_a_stop_risks_the_average_loss():
    # no stop: risk = 900 / 9 = $100 a contract, the same 12 contracts
    c, b, *_, risk = _decide(risk=NAN)
    assert (c, BINDINGS[b], risk) == (12, "kelly", 100.0)
    # no stop and no loss measured: the warm-up size, capped like any other
    c, b, *_, risk = _decide(risk=NAN, wins=20, won=3000 * D, losses=0, lost=0, warmup=3)
    assert (c, BINDINGS[b], math.isnan(risk)) == (3, "warmup", True)
