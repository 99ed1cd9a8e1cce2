"""Sizers: Kelly known answers, every cap binding in turn, no look-ahead, no-edge cases."""

from __future__ import annotations

import types

import backtrader as bt
import pytest
from conftest import make_bars, pandas_feed

from m2k_bt.errors import ParameterError
from m2k_bt.sizers.kelly import FixedContracts, KellySizer, kelly_fraction
from m2k_bt.strategies import BollingerReversion, SmaCrossover


# ------------------------------------------------------------------ kelly_fraction
def test_kelly_known_answer():
    # (1.5 x 0.55 - 0.45) / 1.5 = (0.825 - 0.45) / 1.5 = 0.25
    assert kelly_fraction(0.55, 1.5) == pytest.approx(0.25)


@pytest.mark.parametrize("p,b", [(0.55, 1.5), (0.4, 2.0), (0.6, 0.5), (0.3, 1.0), (1.0, 3.0)])
def test_kelly_equals_win_rate_form(p, b):
    # f* = (b p - q) / b = p - (1 - p) / b
    assert kelly_fraction(p, b) == pytest.approx(p - (1 - p) / b)


@pytest.mark.parametrize("p,b", [(-0.1, 1.0), (1.1, 1.0), (0.5, 0.0), (0.5, -1.0),
                                 (0.5, float("inf")), (True, 1.0)])
def test_kelly_rejects(p, b):
    with pytest.raises(ParameterError):
        kelly_fraction(p, b)


def test_zero_and_negative_edge():
    assert kelly_fraction(0.5, 1.0) == pytest.approx(0.0)  # (1 x 0.5 - 0.5) / 1 = 0
    assert kelly_fraction(0.4, 1.0) == pytest.approx(-0.2)  # (0.4 - 0.6) / 1


# ------------------------------------------------------------------ KellySizer.decide
# The decision's arithmetic (each binding in turn) is tested once, in test_rules.py; these check
# what the sizer feeds it: the window of trades, per-contract results, stop, cash and position.
def _trades(wins: int, losses: int, win=150.0, loss=-100.0, contracts=1):
    return [{"net_pnl": win * contracts, "contracts": contracts, "exit_reason": "signal"}] * wins \
        + [{"net_pnl": loss * contracts, "contracts": contracts, "exit_reason": "signal"}] * losses


class _Bar:
    """The one bar a sizer looks at: ``close[0]`` and ``datetime.datetime(0)``."""

    def __init__(self, price: float) -> None:
        self.close = [price]
        self.datetime = types.SimpleNamespace(datetime=lambda ago: None)

    def __len__(self) -> int:
        return 1


def _sizer(trades, equity=100_000.0, cash=None, stop_points=None, price=2000.0, position=0,
           **params):
    sizer = KellySizer(**params)
    strategy = types.SimpleNamespace(
        trade_log=trades,
        stop_distance=lambda data: stop_points,
        getposition=lambda data: types.SimpleNamespace(size=position),
    )
    broker = types.SimpleNamespace(getvalue=lambda: equity,
                                   getcash=lambda: equity if cash is None else cash)
    sizer.set(strategy, broker)
    comminfo = types.SimpleNamespace(p=types.SimpleNamespace(mult=5.0),
                                     get_margin=lambda price: 770.0)
    return sizer, comminfo, _Bar(price)


def decide(trades, isbuy=True, **kw):
    sizer, comminfo, data = _sizer(trades, **kw)
    return sizer.decide(comminfo, data, isbuy)


def test_warmup_until_min_trades():
    d = decide(_trades(11, 8), min_trades=20, warmup_contracts=2)
    assert (d.binding, d.contracts, d.p, d.trades_used) == ("warmup", 2, None, 19)


def test_undefined_figures_are_none():
    # no winner in 20 trades: p = 0 / 20 = 0.0, no b, no f*, nothing used; no stop: no risk
    d = decide(_trades(0, 20), equity=10_000.0)
    assert (d.contracts, d.binding, d.p, d.b, d.f_star, d.f_used, d.risk_per_contract) == (
        0, "no_edge", 0.0, None, None, None, None)


def test_kelly_binding_known_answer():
    # 11 wins of $150, 9 losses of $100: p = 0.55, b = 1.5, f* = 0.25, half Kelly 0.125;
    # risk = 20-point stop x $5 = $100; contracts = floor(0.125 x 10,000 / 100) = 12
    d = decide(_trades(11, 9), equity=10_000.0, stop_points=20.0, max_exposure=100.0)
    assert (d.p, d.b, d.f_star, d.f_used) == pytest.approx((0.55, 1.5, 0.25, 0.125))
    assert (d.risk_per_contract, d.contracts, d.binding) == (100.0, 12, "kelly")


def test_average_loss_is_the_risk_without_a_stop():
    # no stop: risk = average losing trade per contract = $100 -> same 12 contracts
    d = decide(_trades(11, 9, contracts=2), equity=10_000.0, max_exposure=100.0)
    assert (d.risk_per_contract, d.contracts, d.binding) == (100.0, 12, "kelly")


def test_margin_binds_and_reversal_frees_margin():
    # Kelly 12, exposure cap floor(100 x 10,000 / 10,000) = 100, free cash $3,000 / $770 = 3
    d = decide(_trades(11, 9), equity=10_000.0, cash=3_000.0, max_exposure=100.0)
    assert (d.contracts, d.binding) == (3, "margin")
    # reversing from 2 long: the close frees 2 x $770, (3,000 + 1,540) / 770 = 5.9 -> 5
    d = decide(_trades(11, 9), isbuy=False, equity=10_000.0, cash=3_000.0, position=2,
               max_exposure=100.0)
    assert (d.contracts, d.binding) == (5, "margin")


def test_lookback_window_uses_latest_trades():
    # 30 old losers then 11 wins / 9 losses: lookback 20 sees only the latest 20
    d = decide(_trades(0, 30) + _trades(11, 9), lookback=20, equity=10_000.0, stop_points=20.0,
               max_exposure=100.0)
    assert (d.trades_used, d.p) == (20, pytest.approx(0.55))


@pytest.mark.parametrize("params", [dict(lookback=0), dict(kelly_scale=1.5),
                                    dict(min_trades=60), dict(max_exposure=-1)])
def test_sizer_params_checked(params):
    with pytest.raises(ParameterError):
        KellySizer(**params)


def test_fixed_contracts_rejects_zero():
    with pytest.raises(ParameterError, match="contracts"):
        FixedContracts(contracts=0)


# ------------------------------------------------------------------ in a real run
@pytest.mark.parametrize("runonce,preload", [(True, True), (False, False)])
def test_kelly_in_cerebro_has_no_lookahead(runonce, preload):
    df = make_bars(4000, seed=24)  # a seed whose first trades show an edge
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(df))
    cerebro.broker.setcash(50_000.0)
    cerebro.broker.setcommission(commission=0.62, margin=770.0, mult=5.0,
                                 commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False)
    cerebro.addsizer(KellySizer, min_trades=5, lookback=10)
    cerebro.addstrategy(BollingerReversion, stop_ticks=40)
    strat = cerebro.run(runonce=runonce, preload=preload)[0]
    sizer = strat.getsizer()
    real = [t for t in strat.trade_log if t["exit_reason"] != "end"]
    # real trades and paper trades of declined signals, in the order they closed
    log = sorted(real + strat.shadow_log, key=lambda t: t["exit_dt"])
    assert len(sizer.decisions) > 20 and {d.binding for d in sizer.decisions} - {"warmup"}
    for d in sizer.decisions:
        # only trades that closed at or before the decision's bar can be in its window
        known = [t for t in log if t["exit_dt"] <= d.dt]
        assert d.trades_used == min(10, len(known))
        if d.p is not None:
            window = known[-10:]
            wins = sum(t["net_pnl"] > 0 for t in window)
            assert d.p == pytest.approx(wins / len(window))
    sized = [t for t in real if t["kelly_p"] is not None]
    assert sized and all(t["contracts"] >= 1 for t in sized)


def _sma_kelly_run(paper_trades: bool):
    df = make_bars(6000, seed=5)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(df))
    cerebro.broker.setcash(50_000.0)
    cerebro.broker.setcommission(commission=0.62, margin=770.0, mult=5.0,
                                 commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False)
    cerebro.addsizer(KellySizer, min_trades=5, lookback=10, paper_trades=paper_trades)
    cerebro.addstrategy(SmaCrossover, fast=5, slow=20)
    strat = cerebro.run()[0]
    return cerebro, strat, [d.binding for d in strat.getsizer().decisions]


def test_declined_signals_are_paper_traded_so_kelly_can_resume():
    # A losing stretch makes Kelly see no edge. Without paper trades no real trade closes
    # again, the window never changes and every later decision is 'no_edge' ...
    _, frozen, bindings = _sma_kelly_run(paper_trades=False)
    first = bindings.index("no_edge")
    assert set(bindings[first:]) == {"no_edge"}
    # ... with them, the declined signals' paper results move the window and Kelly resumes.
    cerebro, strat, bindings = _sma_kelly_run(paper_trades=True)
    first = bindings.index("no_edge")
    assert set(bindings[first:]) - {"no_edge"}
    assert len(strat.trade_log) > len(frozen.trade_log)
    for t in strat.shadow_log:
        # one contract, net of two sides of $0.62: gross - 1.24
        assert t["contracts"] == 1
        sign = 1 if t["direction"] == "long" else -1
        gross = (t["exit_price"] - t["entry_price"]) * sign * 5
        assert t["net_pnl"] == pytest.approx(gross - 2 * 0.62)
    # paper trades never reach the account: the real log still reconciles with equity
    total = sum(t["net_pnl"] for t in strat.trade_log)
    assert total == pytest.approx(cerebro.broker.getvalue() - 50_000.0)


# ------------------------------------------------------------------ rolls: one signal trade
class _RollFeed(bt.feeds.PandasData):
    lines = ("roll",)
    params = (("roll", "roll"),)


def _planned(plan: dict):
    from m2k_bt.strategies.base import M2KStrategy

    class Planned(M2KStrategy):
        """Wants the direction of the latest ``plan`` entry at or before this bar."""

        def _signal(self):
            bar = len(self) - 1
            return plan[max(k for k in plan if k <= bar)]

    return Planned


def test_kelly_counts_a_rolled_position_as_one_trade():
    from scripted import hand_bars

    from m2k_bt.brokers.commission import M2KCommInfo

    opens = {1: 2000.0, 4: 2004.0, 7: 2010.0, 10: 2010.0, 12: 2005.0}
    rows = []
    price = 2000.0
    for i in range(16):
        price = opens.get(i, price)
        rows.append((price, price + 1.0, price - 1.0, price))
    df = hand_bars(rows)
    df["roll"] = 0.0
    df.iloc[3, df.columns.get_loc("roll")] = 1.0  # new contract on bar 3: the held long rolls
    naive = df.copy()
    naive.index = naive.index.tz_localize(None)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(_RollFeed(dataname=naive, openinterest=None))
    cerebro.broker.setcash(100_000.0)
    cerebro.broker.addcommissioninfo(M2KCommInfo())
    cerebro.addsizer(KellySizer, min_trades=2, lookback=10)
    # long from bar 0, flat at bar 6, long at 9, flat at 11, long at 14 (orders fill next open)
    cerebro.addstrategy(_planned({0: 1, 6: 0, 9: 1, 11: 0, 14: 1}))
    strat = cerebro.run()[0]
    log = strat.trade_log
    assert [(t["exit_reason"], t["trade_id"]) for t in log] == [
        ("roll", 1), ("signal", 1), ("signal", 2), ("end", 3)]
    # leg 1: (2004 - 2000) x $5 - 2 x 0.62 = 18.76; leg 2: (2010 - 2004) x $5 - 1.24 = 28.76
    # signal trade 1 = 18.76 + 28.76 = 47.52 = (2010 - 2000) x $5 - 4 sides x 0.62
    # trade 2: (2005 - 2010) x $5 - 1.24 = -26.24
    assert [t["net_pnl"] for t in log[:3]] == pytest.approx([18.76, 28.76, -26.24])
    entry_at_14 = strat.getsizer().decisions[-1]
    # two samples, not three: p = 1 / 2, b = 47.52 / 26.24 = 1.810976
    # f* = p - q / b = 0.5 - 0.5 x 26.24 / 47.52 = 0.5 - 0.276094 = 0.223906
    assert entry_at_14.trades_used == 2
    assert entry_at_14.p == pytest.approx(0.5)
    assert entry_at_14.b == pytest.approx(47.52 / 26.24)
    assert entry_at_14.f_star == pytest.approx(0.5 - 0.5 * 26.24 / 47.52)
    # at bar 9 the rolled trade was one sample: below min_trades, still warm-up
    assert [d.binding for d in strat.getsizer().decisions[:2]] == ["warmup", "warmup"]
    assert strat.getsizer().decisions[1].trades_used == 1


def test_signal_trades_leaves_out_a_rolled_position_still_held():
    from m2k_bt.sizers.kelly import signal_trades

    log = [
        {"trade_id": 1, "net_pnl": 5.0, "gross_pnl": 6.24, "commission": 1.24, "contracts": 1,
         "exit_reason": "signal", "entry_dt": 0, "exit_dt": 1},
        {"trade_id": 2, "net_pnl": -3.0, "gross_pnl": -1.76, "commission": 1.24,
         "contracts": 1, "exit_reason": "roll", "entry_dt": 1, "exit_dt": 2},
    ]
    # trade 2's roll reopened a position that is still open: only trade 1 is complete
    assert [t["trade_id"] for t in signal_trades(log, open_trade_id=2)] == [1]
    # the reopening failed (nothing open now): trade 2 ended at the roll, one leg
    assert [(t["trade_id"], t["legs"]) for t in signal_trades(log)] == [(1, 1), (2, 1)]
    assert [t["trade_id"] for t in signal_trades(log, last=1)] == [2]
