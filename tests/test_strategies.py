"""Strategies: seed parity with the article's pandas signals, brackets, sessions, rolls, logs."""

from __future__ import annotations

from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from conftest import make_bars, pandas_feed

from m2k_bt.contracts import is_on_tick
from m2k_bt.errors import ParameterError
from m2k_bt.sizers.kelly import FixedContracts
from m2k_bt.strategies import (
    STRATEGIES,
    AdaptiveBollinger,
    BollingerReversion,
    SmaCrossover,
    strategy_params,
)

CASH = 100_000.0
BUNDLED = Path(__file__).resolve().parents[1] / "datafeeds" / "m2k_5min.csv.gz"
MODES = [pytest.param(True, True, id="runonce"), pytest.param(False, False, id="next")]


def parity_bars() -> pd.DataFrame:
    """>= 10,000 bars for the parity runs: the bundled data when it exists, else a random walk."""
    if BUNDLED.exists():
        from m2k_bt.feeds.loaders import load_bars

        return load_bars(BUNDLED).iloc[-12_000:]
    return make_bars(12_000, seed=3)


def set_m2k_costs(cerebro: bt.Cerebro) -> None:
    # $0.62 per contract per side, $770 initial margin, $5 per point
    cerebro.broker.setcommission(commission=0.62, margin=770.0, mult=5.0,
                                 commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False)


def recording(cls):
    """``cls`` that also records the position held during each bar (bar index -> size)."""

    class Recording(cls):
        def __init__(self):
            super().__init__()
            self.held = {}

        def next(self):
            self.held[len(self.data) - 1] = self.position.size
            super().next()

    Recording.__name__ = f"Recording{cls.__name__}"
    return Recording


def run(df, cls, runonce=True, preload=True, sizer=(FixedContracts, {}), cash=CASH, feed=None,
        **params):
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed if feed is not None else pandas_feed(df))
    cerebro.broker.setcash(cash)
    set_m2k_costs(cerebro)
    if sizer is not None:
        cerebro.addsizer(sizer[0], **sizer[1])
    cerebro.addstrategy(recording(cls), **params)
    strat = cerebro.run(runonce=runonce, preload=preload)[0]
    return strat, cerebro.broker.getvalue()


def assert_parity(strat, signal: np.ndarray, defined: np.ndarray) -> int:
    """Position held during bar t+1 == the reference signal at bar t, wherever it is defined."""
    checked = 0
    for t1, held in strat.held.items():
        t = t1 - 1
        if t >= 0 and defined[t]:
            assert held == signal[t], f"bar {t1}: held {held}, article signal {signal[t]}"
            checked += 1
    return checked


# ------------------------------------------------------------------ seed parity
@pytest.mark.parametrize("runonce,preload", MODES)
@pytest.mark.parametrize("long_only", [False, True])
def test_sma_parity_with_article(runonce, preload, long_only):
    df = parity_bars()
    close = df["close"]
    # The article: SMA_50, SMA_200 by pandas rolling means; Signal = 1 where SMA_50 > SMA_200,
    # else -1 (long-only: 0). Its chained assignment is written as a plain np.where here.
    sma50, sma200 = close.rolling(50).mean(), close.rolling(200).mean()
    signal = np.where(sma50 > sma200, 1, 0 if long_only else -1)
    defined = (sma200.notna()).to_numpy()
    strat, _ = run(df, SmaCrossover, runonce, preload, long_only=long_only)
    assert assert_parity(strat, signal, defined) >= 10_000 - 200


@pytest.mark.parametrize("runonce,preload", MODES)
def test_bollinger_parity_with_article(runonce, preload):
    df = parity_bars()
    close = df["close"]
    mid = close.rolling(window=20).mean()
    upper = mid + 2 * close.rolling(window=20).std()
    lower = mid - 2 * close.rolling(window=20).std()
    signal = np.where(close < lower, 1, 0)
    signal = np.where(close > upper, -1, signal)
    defined = upper.notna().to_numpy()
    strat, _ = run(df, BollingerReversion, runonce, preload, exit="signal")
    assert assert_parity(strat, signal, defined) >= 10_000
    assert len(strat.trade_log) > 50  # the comparison saw real trading


@pytest.mark.parametrize("runonce,preload", MODES)
def test_adaptive_parity_with_documented_rule(runonce, preload):
    df = parity_bars()
    close = df["close"]
    threshold = float(close.pct_change().rolling(100).std().median())  # both windows get used
    vol = close.pct_change().rolling(100).std()
    window = np.where(vol > threshold, 20, 14)
    bands = {}
    for w in (20, 14):
        m, s = close.rolling(w).mean(), close.rolling(w).std()
        bands[w] = (m + 2 * s, m - 2 * s)
    upper = np.where(window == 20, bands[20][0], bands[14][0])
    lower = np.where(window == 20, bands[20][1], bands[14][1])
    signal = np.where(close < lower, 1, 0)
    signal = np.where(close > upper, -1, signal)
    defined = vol.notna().to_numpy()
    assert 0.2 < (window[defined] == 20).mean() < 0.8
    strat, _ = run(df, AdaptiveBollinger, runonce, preload, exit="signal",
                   vol_threshold=threshold)
    assert assert_parity(strat, signal, defined) >= 10_000


# ------------------------------------------------------------------ trade log
@pytest.mark.parametrize("runonce,preload", MODES)
def test_trade_log_sums_to_equity_change(runonce, preload):
    df = make_bars(3000, seed=5)
    strat, value = run(df, BollingerReversion, runonce, preload, stop_ticks=30, target_ticks=40)
    log = strat.trade_log
    assert {t["exit_reason"] for t in log} >= {"signal", "stop", "target"}
    assert sum(t["net_pnl"] for t in log) == pytest.approx(value - CASH, abs=1e-6)
    for t in log:
        sign = 1 if t["direction"] == "long" else -1
        # gross = (exit - entry) x direction x contracts x $5; ticks = (exit - entry) x dir / 0.10
        assert t["gross_pnl"] == pytest.approx(
            (t["exit_price"] - t["entry_price"]) * sign * t["contracts"] * 5.0)
        assert t["ticks"] == pytest.approx((t["exit_price"] - t["entry_price"]) * sign / 0.10)
        assert t["commission"] == pytest.approx(2 * 0.62 * t["contracts"])  # 2 sides x $0.62
        assert t["net_pnl"] == pytest.approx(t["gross_pnl"] - t["commission"])
        assert t["bars_held"] >= 0 and t["kelly_p"] is None


def test_open_position_at_end_is_logged_at_last_close():
    df = make_bars(400, seed=1)
    strat, value = run(df, SmaCrossover, fast=5, slow=20)
    last = strat.trade_log[-1]
    assert last["exit_reason"] == "end"
    assert last["exit_price"] == pytest.approx(df["close"].iloc[-1])
    assert sum(t["net_pnl"] for t in strat.trade_log) == pytest.approx(value - CASH, abs=1e-6)


# ------------------------------------------------------------------ brackets
class _BracketProbe(BollingerReversion):
    def __init__(self):
        super().__init__()
        self.placed = []  # (exectype, price, signal-bar close, direction)

    def notify_order(self, order):
        if order.status == order.Accepted and order.exectype in (bt.Order.Stop, bt.Order.Limit):
            self.placed.append((order.exectype, order.created.price, order.isbuy()))
        super().notify_order(order)


@pytest.mark.parametrize("params", [dict(stop_ticks=25, target_ticks=37),
                                    dict(stop_atr=1.3, target_atr=2.7, atr_period=10)])
def test_bracket_prices_on_tick_grid(params):
    df = make_bars(2000, seed=7)
    strat, _ = run(df, _BracketProbe, **params)
    assert len(strat.placed) > 20
    for _, price, _ in strat.placed:
        assert is_on_tick(price, 0.10), price


def test_bracket_known_answer():
    df = make_bars(300, seed=2)
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(pandas_feed(df))
    set_m2k_costs(cerebro)
    cerebro.addstrategy(SmaCrossover, fast=5, slow=20, stop_ticks=25, target_atr=1.5)
    strat = cerebro.run()[0]
    strat_close = 2000.04  # off the grid: the reference is snapped to 2000.0
    strat.data.close[0] = strat_close
    strat._atr = [1.234]  # 1.5 ATR = 1.851 points = 18.51 ticks -> 18 ticks (towards the entry)
    stop, target = strat._bracket_for(+1)
    assert stop == pytest.approx(2000.0 - 25 * 0.10)  # 1997.5
    assert target == pytest.approx(2000.0 + 18 * 0.10)  # 2001.8
    stop, target = strat._bracket_for(-1)
    assert (stop, target) == (pytest.approx(2002.5), pytest.approx(1998.2))
    assert strat.stop_distance() == pytest.approx(2.5)


def test_no_reentry_after_stop_until_direction_changes():
    df = make_bars(3000, seed=11)
    strat, _ = run(df, SmaCrossover, fast=10, slow=40, stop_ticks=8)
    log = strat.trade_log
    stops = [i for i, t in enumerate(log) if t["exit_reason"] == "stop"]
    assert stops
    for i in stops:
        if i + 1 < len(log):
            assert log[i + 1]["direction"] != log[i]["direction"] or \
                log[i + 1]["entry_dt"] > log[i]["exit_dt"]


# ------------------------------------------------------------------ sessions
def test_rth_only_and_flat_before_close():
    df = make_bars(4000, seed=4)
    strat, value = run(df, SmaCrossover, fast=5, slow=30, rth_only=True,
                       flat_before_close="15:55")
    log = strat.trade_log
    assert any(t["exit_reason"] == "session_close" for t in log)
    for t in log:
        # decided on a bar stamped 09:30 <= t < 15:55, filled at the next bar's open
        assert pd.Timestamp("09:35").time() <= t["entry_dt"].time() <= pd.Timestamp("15:55").time()
    times = df.index.tz_localize(None)
    for i, held in strat.held.items():
        if pd.Timestamp("16:00").time() <= times[i].time() < pd.Timestamp("18:00").time():
            assert held == 0, times[i]
    assert sum(t["net_pnl"] for t in log) == pytest.approx(value - CASH, abs=1e-6)


# ------------------------------------------------------------------ rolls
class RollFeed(bt.feeds.PandasData):
    lines = ("roll",)
    params = (("roll", "roll"),)


@pytest.mark.parametrize("runonce,preload", MODES)
def test_roll_closes_and_reopens_paying_costs(runonce, preload):
    df = make_bars(600, seed=9)
    roll = np.zeros(len(df))
    roll[[250, 400]] = 1.0
    naive = df.assign(roll=roll)
    naive.index = naive.index.tz_localize(None)
    feed = RollFeed(dataname=naive, openinterest=None)
    strat, value = run(df, SmaCrossover, runonce, preload, feed=feed, fast=5, slow=20)
    rolled = [t for t in strat.trade_log if t["exit_reason"] == "roll"]
    assert strat.rolls == 2 and len(rolled) == 2
    for t in rolled:
        assert t["commission"] == pytest.approx(2 * 0.62)  # both sides paid
    # the position never lapses: held during bar 251 is what was held during bar 250
    assert strat.held[251] == strat.held[250] != 0
    assert sum(t["net_pnl"] for t in strat.trade_log) == pytest.approx(value - CASH, abs=1e-6)


# ------------------------------------------------------------------ rejections
def test_margin_rejections_are_counted_not_fatal():
    df = make_bars(500, seed=1)
    strat, value = run(df, SmaCrossover, cash=500.0, fast=5, slow=20)  # 500 < $770 margin
    assert strat.order_rejections.get("Margin", 0) > 0
    assert strat.trade_log == [] and value == pytest.approx(500.0)
    assert "Margin" in strat.events[0]


def test_works_with_backtraders_own_sizer():
    df = make_bars(800, seed=2)
    strat, value = run(df, SmaCrossover, sizer=(bt.sizers.FixedSize, dict(stake=3)), fast=5,
                       slow=20)
    assert {t["contracts"] for t in strat.trade_log} == {3}
    assert set(strat.held.values()) <= {-3, 0, 3}


# ------------------------------------------------------------------ parameters
def test_registry_and_params():
    assert STRATEGIES == {"sma": SmaCrossover, "bollinger": BollingerReversion,
                          "adaptive": AdaptiveBollinger}
    assert strategy_params(SmaCrossover)["slow"] == 200
    assert strategy_params(BollingerReversion)["exit"] == "middle"
    assert strategy_params(AdaptiveBollinger)["period_low"] == 14


def test_validate_coerces_cli_strings():
    v = SmaCrossover.validate_params({"fast": "20", "slow": "100", "long_only": "true",
                                      "stop_ticks": "12", "adx_min": "none"})
    assert (v["fast"], v["slow"], v["long_only"], v["stop_ticks"], v["adx_min"]) == \
        (20, 100, True, 12, None)
    assert BollingerReversion.validate_params({"devfactor": "2.5"})["devfactor"] == 2.5


@pytest.mark.parametrize("cls,params,words", [
    (SmaCrossover, {"fsat": 10}, "did you mean 'fast'"),
    (SmaCrossover, {"fast": 200, "slow": 50}, "fast (200) must be shorter"),
    (SmaCrossover, {"fast": "ten"}, "'fast' must be an int"),
    (BollingerReversion, {"period": 1}, "'period' must be an integer >= 2"),
    (BollingerReversion, {"devfactor": 0}, "'devfactor' must be > 0"),
    (BollingerReversion, {"stop_ticks": -5}, "'stop_ticks' must be > 0"),
    (BollingerReversion, {"exit": "mid"}, "'exit' must be 'middle' or 'signal'"),
    (AdaptiveBollinger, {"vol_threshold": 0.0}, "'vol_threshold' must be > 0"),
    (SmaCrossover, {"stop_ticks": 10, "stop_atr": 2.0}, "not both"),
    (SmaCrossover, {"flat_before_close": "3pm"}, "'HH:MM'"),
])
def test_validate_rejects(cls, params, words):
    with pytest.raises(ParameterError, match=words.replace("(", r"\(").replace(")", r"\)")):
        cls.validate_params(params)


def test_misspelt_kwarg_through_cerebro_raises():
    cerebro = bt.Cerebro()
    cerebro.adddata(pandas_feed(make_bars(50)))
    cerebro.addstrategy(SmaCrossover, fsat=10)
    with pytest.raises(ParameterError, match="did you mean 'fast'"):
        cerebro.run()


def test_open_trade_logged_at_the_end_with_exactbars():
    # exactbars=1 releases the line buffers before stop(): the open trade is marked at the
    # broker's last mark-to-market price instead, and still reconciles with equity
    from m2k_bt.brokers.commission import M2KCommInfo

    results = {}
    for exactbars in (0, 1):
        cerebro = bt.Cerebro(stdstats=False, exactbars=exactbars)
        cerebro.adddata(pandas_feed(make_bars(2000)))
        cerebro.broker.addcommissioninfo(M2KCommInfo())
        cerebro.broker.setcash(25_000.0)
        cerebro.addstrategy(SmaCrossover, fast=10, slow=30)
        strat = cerebro.run()[0]
        assert strat.trade_log[-1]["exit_reason"] == "end"
        total = sum(t["net_pnl"] for t in strat.trade_log)
        assert total == pytest.approx(cerebro.broker.getvalue() - 25_000.0)
        results[exactbars] = strat.trade_log[-1]
    assert results[1]["exit_price"] == results[0]["exit_price"]
    assert results[1]["exit_dt"] == results[0]["exit_dt"]


# ------------------------------------------------------------------ layout (issue 20)
def test_text_to_bool_is_the_one_word_list():
    from m2k_bt.errors import FALSE_WORDS, NONE_WORDS, TRUE_WORDS, parse_bool

    assert [parse_bool(w) for w in (" Yes", "T", "on", "0", "off", "N", "maybe", "")] == \
        [True, True, True, False, False, False, None, None]
    for word in TRUE_WORDS | FALSE_WORDS:
        assert SmaCrossover.validate_params({"long_only": word})["long_only"] is parse_bool(word)
    for word in NONE_WORDS:
        assert SmaCrossover.validate_params({"adx_min": word})["adx_min"] is None
    with pytest.raises(ParameterError, match="'long_only' must be a bool, got 'maybe'"):
        SmaCrossover.validate_params({"long_only": "maybe"})


def test_facts_come_from_sessions_and_contracts():
    from m2k_bt import sessions
    from m2k_bt.contracts import M2K
    from m2k_bt.indicators.bands import TickSums
    from m2k_bt.strategies import base

    assert not hasattr(base, "DEFAULT_TICK")
    assert base.GLOBEX_REOPEN is sessions.GLOBEX_REOPEN
    assert dict(TickSums.params._getitems())["tick"] == M2K.tick_size == 0.10


def test_a_subclass_hook_named_signal_still_trades():
    # the 0.1 name of the direction hook: a subclass defining _signal still works
    from m2k_bt.strategies.base import M2KStrategy

    class Old(M2KStrategy):
        def _signal(self):
            return 1

    class New(M2KStrategy):
        def _direction(self):
            return 1

    logs = [run(make_bars(60), cls)[0].trade_log for cls in (Old, New)]
    assert logs[0] == logs[1] and logs[0][0]["direction"] == "long"
