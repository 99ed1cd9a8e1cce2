"""FuturesBroker against backtrader's BackBroker: with no margin event they are the same broker.

A seeded strategy submits random market, limit, stop, stop-limit, close, trailing-stop and
bracket orders (and random cancels and expiries); each run is made twice, once with each broker,
and everything the strategy can observe is compared bar by bar: value, cash, position, and every
order, trade and cash/value notification. Commission schemes: backtrader's default (stock-like,
``margin=None``), a stock-like percentage scheme, backtrader's futures scheme and
``M2KCommInfo``, the futures ones with enough cash that no margin call can happen (the test
checks that none did). Broker settings: ``coc``, ``slip_perc``, ``slip_fixed`` with and without
``slip_open``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import random

import backtrader as bt
import pytest
from conftest import make_bars, pandas_feed
from scripted import Scripted

from m2k_bt.brokers.commission import M2KCommInfo
from m2k_bt.brokers.futures import FuturesBroker

TICK = 0.10
SEEDS = range(32)  # x 2 runs of 120 bars each: a few seconds


def _num(x):
    """Floats made comparable (NaN equals NaN; -0.0 equals 0.0)."""
    if isinstance(x, float):
        return "nan" if math.isnan(x) else x + 0.0
    return x


class RandomOrders(bt.Strategy):
    """Random orders from ``seed``; ``log`` records everything the strategy is told."""

    params = (("seed", 0),)

    def __init__(self):
        self.rng = random.Random(self.p.seed)
        self.log: list[tuple] = []
        self._ids: dict[int, int] = {}
        self._alive: list = []

    def _order_no(self, order) -> int:
        # order refs are a process-wide counter: number the orders in the order they appear
        return self._ids.setdefault(order.ref, len(self._ids))

    def _price(self, ticks: int) -> float:
        return round(round(self.data.close[0] / TICK + ticks) * TICK, 2)

    def next(self):
        pos = self.position
        self.log.append(("bar", len(self), self.broker.getvalue(), self.broker.getcash(),
                         pos.size, pos.price))
        rng = self.rng
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            self._random_order(rng)
        self._alive = [o for o in self._alive if o.alive()]
        if self._alive and rng.random() < 0.15:
            self.cancel(rng.choice(self._alive))

    def _random_order(self, rng) -> None:
        side = self.buy if rng.random() < 0.5 else self.sell
        sign = 1 if side == self.buy else -1
        size = rng.randint(1, 3)
        kind = rng.choice(("market", "market", "limit", "stop", "stoplimit", "close",
                           "atclose", "trail", "trailpct", "traillimit", "bracket"))
        valid = None
        if rng.random() < 0.3:
            valid = self.data.datetime.datetime(0) + _dt.timedelta(minutes=5 * rng.randint(1, 6))
        off = rng.randint(0, 40)
        if kind == "market":
            orders = [side(size=size)]
        elif kind == "limit":
            orders = [side(size=size, exectype=bt.Order.Limit, price=self._price(-sign * off),
                           valid=valid)]
        elif kind == "stop":
            orders = [side(size=size, exectype=bt.Order.Stop, price=self._price(sign * off),
                           valid=valid)]
        elif kind == "stoplimit":
            stop = self._price(sign * off)
            orders = [side(size=size, exectype=bt.Order.StopLimit, price=stop,
                           plimit=round(stop + sign * TICK * rng.randint(-5, 10), 2),
                           valid=valid)]
        elif kind == "close":
            orders = [self.close()] if self.position.size else []
        elif kind == "atclose":
            orders = [side(size=size, exectype=bt.Order.Close)]
        elif kind == "trail":
            orders = [side(size=size, exectype=bt.Order.StopTrail,
                           trailamount=TICK * rng.randint(5, 60))]
        elif kind == "trailpct":
            orders = [side(size=size, exectype=bt.Order.StopTrail,
                           trailpercent=rng.choice((0.001, 0.002, 0.005)))]
        elif kind == "traillimit":
            orders = [side(size=size, exectype=bt.Order.StopTrailLimit,
                           trailamount=TICK * rng.randint(5, 60), plimit=self._price(sign * off))]
        else:
            bracket = self.buy_bracket if sign > 0 else self.sell_bracket
            orders = bracket(size=size, price=self._price(-sign * (off // 4)),
                             stopprice=self._price(-sign * (off + 5)),
                             limitprice=self._price(sign * (off + 5)), valid=valid)
        self._alive.extend(o for o in orders if o is not None)

    def notify_order(self, order):
        ex = order.executed
        self.log.append(("order", self._order_no(order), order.getstatusname(), order.isbuy(),
                         order.exectype, order.created.size, order.created.price,
                         order.created.pricelimit, ex.size, ex.price, ex.value, ex.comm,
                         ex.pnl, ex.psize, ex.pprice, ex.dt))

    def notify_trade(self, trade):
        self.log.append(("trade", trade.status, trade.size, trade.price, trade.value,
                         trade.pnl, trade.pnlcomm, trade.commission, trade.barlen))

    def notify_cashvalue(self, cash, value):
        self.log.append(("cashvalue", cash, value))

    def notify_fund(self, cash, value, fundvalue, shares):
        self.log.append(("fund", cash, value, fundvalue, shares))


COMMISSIONS = {
    # backtrader's default: stock-like, margin=None (FuturesBroker raised float(None) here)
    "default": None,
    "stock_perc": dict(commission=0.001, stocklike=True, commtype=bt.CommInfoBase.COMM_PERC),
    "bt_futures": dict(commission=0.85, margin=800.0, mult=5.0),
    "m2k": "m2k",
}
BROKER_SETTINGS = [
    {},
    {"coc": True},
    {"slip_perc": 0.0005},
    {"slip_fixed": 0.2},
    {"slip_fixed": 0.3, "slip_open": True},
    {"slip_perc": 0.001, "slip_open": True, "coc": True},
]


def _case(seed: int) -> tuple[str, dict]:
    names = list(COMMISSIONS)
    return names[seed % len(names)], BROKER_SETTINGS[(seed // len(names)) % len(BROKER_SETTINGS)]


@functools.cache
def _run(broker_cls, seed: int):
    """(broker, log) of the seed's case run with ``broker_cls``."""
    comm, settings = _case(seed)
    bars = make_bars(120, seed=seed, vol=0.003)
    cerebro = bt.Cerebro(stdstats=False, runonce=seed % 3 != 0, preload=seed % 5 != 0)
    cerebro.adddata(pandas_feed(bars))
    cerebro.broker = broker_cls(cash=10_000_000.0, **settings)
    spec = COMMISSIONS[comm]
    if spec == "m2k":
        cerebro.broker.addcommissioninfo(M2KCommInfo())
    elif spec is not None:
        cerebro.broker.setcommission(**spec)
    cerebro.addstrategy(RandomOrders, seed=seed)
    strat = cerebro.run()[0]
    log = [tuple(_num(x) for x in row) for row in strat.log]
    return cerebro.broker, log


@pytest.mark.parametrize("seed", SEEDS)
def test_futures_broker_matches_backbroker_order_by_order(seed):
    comm, settings = _case(seed)
    plain, expected = _run(bt.brokers.BackBroker, seed)
    ours, got = _run(FuturesBroker, seed)
    assert ours.margin_events == []  # the premise: no margin event happened
    orders = [row for row in expected if row[0] == "order"]
    assert any(row[2] == "Completed" for row in orders)  # the run did trade
    for i, (want, have) in enumerate(zip(expected, got)):
        assert have == want, f"seed {seed} ({comm}, {settings}): entry {i} differs"
    assert len(got) == len(expected)
    assert ours.getvalue() == plain.getvalue() and ours.getcash() == plain.getcash()


def test_random_orders_cover_every_order_type_and_outcome():
    # the seeds above are not all market orders that fill: every kind appears and every outcome
    kinds, statuses = set(), set()
    for seed in SEEDS:
        _, log = _run(bt.brokers.BackBroker, seed)
        for row in log:
            if row[0] == "order":
                kinds.add(row[4])
                statuses.add(row[2])
    assert kinds >= {bt.Order.Market, bt.Order.Close, bt.Order.Limit, bt.Order.Stop,
                     bt.Order.StopLimit, bt.Order.StopTrail, bt.Order.StopTrailLimit}
    assert statuses >= {"Submitted", "Accepted", "Completed", "Canceled", "Expired"}


def test_stock_like_commission_with_a_position_runs():
    # backtrader's default scheme has margin=None: FuturesBroker used to raise float(None) on
    # the first bar with a position. 1 share bought at the open of bar 3, sold at bar 11's.
    bars = make_bars(20, seed=3)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(bars))
    cerebro.broker = FuturesBroker(cash=100_000.0)
    cerebro.addstrategy(Scripted, plan={2: 1, 10: -1})
    strat = cerebro.run()[0]
    # no commission, multiplier 1: value = 100,000 + (open[11] - open[3]) x 1 share
    pnl = bars["open"].iloc[11] - bars["open"].iloc[3]
    assert [o.getstatusname() for o in strat.orders] == ["Completed", "Completed"]
    assert cerebro.broker.getvalue() == pytest.approx(100_000.0 + pnl)
    assert cerebro.broker.margin_events == []


@pytest.mark.parametrize("how", ["cash=0", "setcash(0)"])
def test_zero_account_is_accepted_and_cannot_trade(how):
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(make_bars(20, seed=4)))
    if how == "cash=0":
        cerebro.broker = FuturesBroker(cash=0)
    else:
        cerebro.broker = FuturesBroker(cash=25_000.0)
        cerebro.broker.setcash(0)  # used to divide by zero in the fund value
    cerebro.broker.addcommissioninfo(M2KCommInfo())
    cerebro.addstrategy(Scripted, plan={2: 1, 5: -1})
    strat = cerebro.run()[0]
    # 1 contract needs $770 of initial margin; the account has $0: both orders refused
    assert [o.getstatusname() for o in strat.orders] == ["Margin", "Margin"]
    assert cerebro.broker.getvalue() == 0.0
    assert cerebro.broker.getcash() == 0.0
    assert cerebro.broker.fundvalue == 100.0  # backtrader's fund start value, unchanged
