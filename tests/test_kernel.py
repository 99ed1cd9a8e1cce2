"""The compiled kernel (m2k_bt.kernel) against cerebro, and the exact comparisons both share."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from m2k_bt.engine import BacktestConfig, run_backtest
from m2k_bt.indicators.bands import band_side, rolling_bands, sma_above, tick_counts

NY = "America/New_York"


def flat_bars(closes, start="2024-01-02 09:30", freq="5min") -> pd.DataFrame:
    """Bars whose open, high, low and close are all the given closes."""
    closes = np.asarray(closes, dtype="float64")
    idx = pd.date_range(start, periods=len(closes), freq=freq, tz=NY, name="datetime")
    return pd.DataFrame({"open": closes, "high": closes, "low": closes, "close": closes,
                         "volume": 100.0}, index=idx)


# ------------------------------------------------------------------ exact comparisons
def test_fsum_average_of_a_flat_stretch_is_not_a_tie_but_ticks_are():
    # 1900.4 repeated: fsum(3 x)/3 > fsum(7 x)/7 in floats, but both averages are 1900.4
    x = 1900.4
    assert math.fsum([x] * 3) / 3 > math.fsum([x] * 7) / 7  # the float noise the rule removes
    t = int(tick_counts(np.array([x]), 0.1)[0])
    assert t == 19004
    assert not sma_above(3 * t, 3, 7 * t, 7)  # equal averages are not "above"
    assert sma_above(3 * t + 1, 3, 7 * t, 7)  # one tick more in the fast window is


def test_sma_tie_goes_short_in_cerebro():
    # a flat stretch at 1900.4: fast SMA(3) == slow SMA(7) exactly, so the signal is -1
    bars = flat_bars([1900.4] * 12)
    res = run_backtest(bars, BacktestConfig(strategy="sma", params={"fast": 3, "slow": 7},
                                            sizer="fixed"))
    assert [t["direction"] for t in res.trades] == ["short"]
    res = run_backtest(bars, BacktestConfig(strategy="sma", sizer="fixed",
                                            params={"fast": 3, "slow": 7, "long_only": True}))
    assert res.trades == []  # long-only: a tie is flat


def test_close_exactly_on_a_band_is_inside():
    # window 1999.4 x4, 2000.3 (ticks 19994 x4, 20003): mean 19995.8, population sd 3.6,
    # upper band 19995.8 + 2 x 3.6 = 20003.0 = the close: on the band, not above it
    w = np.array([1999.4] * 4 + [2000.3])
    mid, top, bot = rolling_bands(w[None, :], 2.0, 0)
    assert w[-1] > top[0]  # float noise puts it 3e-13 above the band
    t = tick_counts(w, 0.1)
    s, q = int(t.sum()), int((t * t).sum())
    assert band_side(int(t[-1]), s, q, 5, 2.0, 0) == 0
    assert band_side(int(t[-1]) + 1, s, q, 5, 2.0, 0) == 1  # a tick higher is above
    bars = flat_bars(list(w) + [2000.3] * 4)
    res = run_backtest(bars, BacktestConfig(
        strategy="bollinger", sizer="fixed",
        params={"period": 5, "ddof": 0, "exit": "signal"}))
    assert res.trades == []  # before the rule: a short at 2000.3


# ------------------------------------------------------------------ kernel vs cerebro
from conftest import make_bars  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from m2k_bt.kernel.simulation import (  # noqa: E402
    KERNEL_EXIT_REASONS,
    KernelData,
    KernelUnsupported,
    prepare,
    simulate,
    simulate_many,
    supported,
)
from m2k_bt.sizers.kelly import BINDINGS  # noqa: E402
from m2k_bt.strategies import SmaCrossover  # noqa: E402
from m2k_bt.strategies.base import EXIT_REASONS, M2KStrategy  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "datafeeds" / "m2k_5min.csv.gz"


def stressed_bars(n: int, seed: int, vol: float = 0.002, gaps: int = 3, rolls: int = 3,
                  freq: str = "5min") -> pd.DataFrame:
    """A random walk on the tick grid with session-like gaps (bars removed, the price jumping
    across the gap, so stops are gapped through) and roll markers (the price jumping by a roll
    spread on the first bar of the new contract)."""
    rng = np.random.default_rng(seed)
    df = make_bars(n + 40 * gaps, seed=seed, vol=vol, freq=freq)
    keep = np.ones(len(df), dtype=bool)
    jump = np.zeros(len(df))
    for start in rng.integers(50, len(df) - 50, gaps):
        keep[start:start + int(rng.integers(5, 40))] = False
        jump[start:] += round(float(rng.normal(0, 80))) * 0.1
    roll = np.zeros(len(df), dtype=bool)
    for at in rng.integers(50, len(df) - 10, rolls):
        roll[at] = True
        jump[at:] += round(float(rng.normal(0, 50))) * 0.1
    out = df.copy()
    for col in ("open", "high", "low", "close"):
        out[col] = np.round(out[col].to_numpy() + jump, 1)
    out["roll"] = roll
    return out[keep].iloc[:n]


def _same(a, b, where: str) -> None:
    assert type(a) is type(b), f"{where}: cerebro {type(a).__name__} vs kernel {type(b).__name__}"
    if isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-6, f"{where}: cerebro {a!r} vs kernel {b!r}"
    else:
        assert a == b, f"{where}: cerebro {a!r} vs kernel {b!r}"


def assert_parity(bars, config):
    """Kernel and cerebro agree row for row; returns (cerebro result, kernel result)."""
    ref = run_backtest(bars, config)
    got = simulate(bars, config)
    assert len(got.trades) == len(ref.trades), (
        f"{len(ref.trades)} cerebro trades vs {len(got.trades)} kernel trades")
    for j, (x, y) in enumerate(zip(ref.trades, got.trades)):
        assert set(y) >= set(x)
        for key, value in x.items():
            _same(value, y[key], f"trade {j} {key}")
    assert abs(ref.final_value - got.final_value) < 0.005  # to the cent
    assert got.equity["value"].to_numpy() == pytest.approx(ref.equity["value"].to_numpy(),
                                                            abs=1e-6)
    for key in ref.metrics:
        r, k = ref.metrics[key], got.metrics[key]
        assert (r is None) == (k is None), key
        if r is not None:
            assert k == pytest.approx(r, rel=1e-9, abs=1e-9), key
    assert [(e.dt, e.kind, e.contracts) for e in ref.margin_events] == \
        [(e.dt, e.kind, e.contracts) for e in got.margin_events]
    for x, y in zip(ref.margin_events, got.margin_events):
        assert y.equity == pytest.approx(x.equity, abs=1e-6)
    sizer = ref.strategy.getsizer()
    decisions = getattr(sizer, "decisions", [])
    assert [(d.dt, d.contracts, d.binding) for d in decisions] == \
        [(d.dt, d.contracts, d.binding) for d in got.kernel.decisions]
    assert got.kernel.order_rejections == {k: v for k, v in ref.strategy.order_rejections.items()
                                           if v}
    assert got.kernel.rolls == ref.strategy.rolls
    assert got.kernel.shadow_trades == len(ref.strategy.shadow_log)
    assert got.warnings == ref.warnings
    assert list(got.analysis) == list(ref.analysis)
    for name in ("trades", "costs", "margin", "kelly", "returns"):
        if name in ref.analysis:
            _same_tree(ref.analysis[name], got.analysis[name], name)
    return ref, got


def _same_tree(a, b, where: str) -> None:
    """Analyzer outputs equal key for key (floats to 1e-6 relative)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: {set(a) ^ set(b)}"
        for key in a:
            if key != "ref":  # backtrader's trade refs count across runs in a process
                _same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} items"
        for j, (x, y) in enumerate(zip(a, b)):
            _same_tree(x, y, f"{where}[{j}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-6), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


#: Hand-picked cases that together reach every exit reason and every Kelly binding.
_STRESS = stressed_bars(2500, seed=11, vol=0.003)
_CALM = stressed_bars(2500, seed=5, vol=0.0015, gaps=1)
KELLY_FAST = {"min_trades": 4, "lookback": 12}
CASES = [
    ("sma ls kelly", _CALM, BacktestConfig(strategy="sma", params={"fast": 10, "slow": 30},
                                           sizer_params=KELLY_FAST)),
    ("sma stops", _STRESS, BacktestConfig(
        strategy="sma", sizer="fixed", slippage_ticks=1,
        params={"fast": 8, "slow": 40, "stop_ticks": 25, "target_ticks": 60})),
    ("sma session", _CALM, BacktestConfig(
        strategy="sma", sizer="fixed", rth_only=True,
        params={"fast": 6, "slow": 24, "flat_before_close": "15:30", "long_only": True})),
    ("margin calls", _STRESS, BacktestConfig(strategy="bollinger", sizer="fixed", cash=3000.0,
                                             sizer_params={"contracts": 3})),
    ("kelly max_fraction", _CALM, BacktestConfig(
        strategy="sma", params={"fast": 10, "slow": 30, "stop_ticks": 40},
        sizer_params={**KELLY_FAST, "max_fraction": 0.002})),
    ("kelly zero", _CALM, BacktestConfig(
        strategy="sma", params={"fast": 10, "slow": 30, "stop_ticks": 400},
        sizer_params={**KELLY_FAST, "max_fraction": 0.001})),
    ("kelly exposure", _CALM, BacktestConfig(
        strategy="bollinger", params={"stop_ticks": 5},
        sizer_params={**KELLY_FAST, "max_exposure": 0.3, "kelly_scale": 1.0})),
    ("kelly margin", _CALM, BacktestConfig(
        strategy="bollinger", cash=2000.0, params={"stop_ticks": 5, "exit": "signal"},
        sizer_params={**KELLY_FAST, "max_exposure": 50.0, "kelly_scale": 1.0,
                      "max_fraction": 1.0})),
    ("kelly max_contracts", _CALM, BacktestConfig(
        strategy="bollinger", params={"stop_ticks": 5, "exit": "signal"},
        sizer_params={**KELLY_FAST, "max_contracts": 1, "kelly_scale": 1.0})),
    ("bollinger rsi", _STRESS, BacktestConfig(
        strategy="bollinger", sizer="fixed", sizer_params={"contracts": 2},
        params={"ddof": 0, "rsi_oversold": 45, "rsi_overbought": 55, "stop_atr": 3.0})),
    ("adaptive", _STRESS, BacktestConfig(
        strategy="adaptive", params={"vol_threshold": 0.003, "target_atr": 2.0},
        sizer_params={**KELLY_FAST, "paper_trades": False})),
    ("intraday cut-backs", _STRESS, BacktestConfig(
        strategy="bollinger", sizer="kelly", cash=3000.0, intraday_margin=200.0,
        params={"stop_ticks": 30, "target_ticks": 30},
        sizer_params={**KELLY_FAST, "kelly_scale": 1.0, "max_fraction": 1.0,
                      "max_exposure": 50.0})),
    ("intraday fixed", _CALM, BacktestConfig(
        strategy="sma", sizer="fixed", cash=5000.0, intraday_margin=300.0,
        sizer_params={"contracts": 10},
        params={"fast": 10, "slow": 30, "stop_ticks": 60, "target_ticks": 120})),
    ("intraday plain", _CALM, BacktestConfig(
        strategy="sma", sizer="fixed", cash=4000.0, intraday_margin=400.0,
        sizer_params={"contracts": 6}, params={"fast": 10, "slow": 30})),
    ("sma adx", _STRESS, BacktestConfig(strategy="sma", sizer="fixed",
                                        params={"fast": 10, "slow": 30, "adx_min": 25.0})),
    ("sma events", _CALM, BacktestConfig(  # NFP 2024-01-05 08:30 inside the bars
        strategy="sma", sizer="fixed", params={"fast": 10, "slow": 30},
        avoid_events="nfp,cpi", flat_before_event=True, event_before=60.0)),
]


def test_named_cases_agree_and_cover_every_reason_and_cap():
    reasons, bindings, events = set(), set(), set()
    for name, bars, config in CASES:
        ref, got = assert_parity(bars, config)
        reasons |= {t["exit_reason"] for t in got.trades}
        bindings |= {d.binding for d in got.kernel.decisions}
        events |= {e.kind for e in got.margin_events}
        assert got.trades or got.kernel.decisions, name
    assert reasons == set(KERNEL_EXIT_REASONS), set(KERNEL_EXIT_REASONS) - reasons
    assert set(EXIT_REASONS) == reasons  # event filters too (issue 22)
    assert bindings == set(BINDINGS), set(BINDINGS) - bindings
    assert events >= {"margin_call", "intraday_cutback"}, events


@st.composite
def configs(draw):
    kind = draw(st.sampled_from(["sma", "bollinger", "adaptive"]))
    params: dict = {}
    if kind == "sma":
        fast = draw(st.integers(2, 20))
        params.update(fast=fast, slow=draw(st.integers(fast + 1, 60)))
        if draw(st.booleans()):
            params["adx_min"] = float(draw(st.integers(10, 40)))
    else:
        if kind == "bollinger":
            params["period"] = draw(st.integers(3, 30))
        else:
            params.update(period_high=draw(st.integers(5, 25)), period_low=draw(st.integers(3, 20)),
                          vol_lookback=draw(st.integers(10, 60)),
                          vol_threshold=draw(st.sampled_from([0.001, 0.002, 0.003])))
        params.update(devfactor=draw(st.sampled_from([1.0, 1.5, 2.0, 2.5])),
                      ddof=draw(st.sampled_from([0, 1])),
                      exit=draw(st.sampled_from(["middle", "signal"])))
        if draw(st.booleans()):
            params.update(rsi_oversold=40.0, rsi_overbought=60.0)
    params["long_only"] = draw(st.booleans())
    stop = draw(st.sampled_from([None, "ticks", "atr"]))
    if stop == "ticks":
        params["stop_ticks"] = draw(st.integers(3, 60))
    elif stop == "atr":
        params["stop_atr"] = draw(st.sampled_from([0.5, 1.5, 3.0]))
    target = draw(st.sampled_from([None, "ticks", "atr"]))
    if target == "ticks":
        params["target_ticks"] = draw(st.integers(3, 80))
    elif target == "atr":
        params["target_atr"] = draw(st.sampled_from([1.0, 2.5]))
    if draw(st.booleans()):
        params["flat_before_close"] = draw(st.sampled_from(["15:00", "15:55"]))
    sizer = draw(st.sampled_from(["fixed", "kelly"]))
    if sizer == "fixed":
        sizer_params = {"contracts": draw(st.integers(1, 6))}
    else:
        lookback = draw(st.integers(3, 30))
        sizer_params = {"lookback": lookback, "min_trades": draw(st.integers(1, lookback)),
                        "warmup_contracts": draw(st.integers(0, 3)),
                        "kelly_scale": draw(st.sampled_from([0.25, 0.5, 1.0])),
                        "max_fraction": draw(st.sampled_from([0.01, 0.2, 1.0])),
                        "max_exposure": draw(st.sampled_from([0.5, 2.0, 20.0])),
                        "max_contracts": draw(st.integers(1, 60)),
                        "paper_trades": draw(st.booleans())}
    return BacktestConfig(
        strategy=kind, params=params, sizer=sizer, sizer_params=sizer_params,
        cash=float(draw(st.sampled_from([1500, 3000, 8000, 25000]))),
        slippage_ticks=float(draw(st.integers(0, 3))),
        commission=draw(st.sampled_from([None, 0.0, 2.5])),
        margin=draw(st.sampled_from([None, 1500.0])),
        intraday_margin=draw(st.sampled_from([None, None, 150.0, 400.0])),
        rth_only=draw(st.booleans()),
    )


@settings(max_examples=25, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(config=configs(), seed=st.integers(0, 10_000),
       vol=st.sampled_from([0.001, 0.002, 0.004]))
def test_random_configs_agree_with_cerebro(config, seed, vol):
    bars = stressed_bars(900, seed=seed, vol=vol, gaps=2, rolls=2)
    assert_parity(bars, config)


def test_bundled_data_every_strategy_and_sizer():
    from m2k_bt.feeds import load_bars

    bars = load_bars(BUNDLED).iloc[-4000:]
    for strategy in ("sma", "bollinger", "adaptive"):
        for sizer in ("fixed", "kelly"):
            params = {"fast": 20, "slow": 80} if strategy == "sma" else {}
            assert_parity(bars, BacktestConfig(strategy=strategy, sizer=sizer, params=params))


# ------------------------------------------------------------------ known answers, both engines
def hand(rows, start="2024-03-04 10:00", freq="1min") -> pd.DataFrame:
    """Bars from (open, high, low, close) rows, New York time."""
    idx = pd.date_range(start, periods=len(rows), freq=freq, tz=NY, name="datetime")
    o, h, lo, c = (np.array(col, dtype="float64") for col in zip(*rows))
    return pd.DataFrame({"open": o, "high": h, "low": lo, "close": c, "volume": 100.0},
                        index=idx)


# four bars that make a close of 2000.0 fall below BollingerReversion(period=5, devfactor=1)'s
# lower band (window 2010, 2012, 2010, 2012, 2000: mean 2008.8, sd 5.02, lower band 2003.78),
# so the strategy buys on the bar closing at 2000.0 and the order fills at the next open
LEAD = [(2010.0, 2012.0, 2010.0, 2010.0), (2010.0, 2012.0, 2010.0, 2012.0),
        (2012.0, 2012.0, 2010.0, 2010.0), (2010.0, 2012.0, 2010.0, 2012.0)]
BUY_BELOW = BacktestConfig(strategy="bollinger", sizer="fixed", sizer_params={"contracts": 2},
                           params={"period": 5, "devfactor": 1.0})


@pytest.mark.parametrize("slippage,net", [(0.0, 102.52), (1.0, 100.52)])
def test_known_answer_commission_and_slippage(slippage, net):
    rows = LEAD + [(2010.0, 2012.0, 2000.0, 2000.0),   # signal: below the lower band
                   (2000.0, 2011.0, 1999.0, 2010.5),   # bought at the open; back at the middle
                   (2010.5, 2011.0, 2010.0, 2010.5),   # sold at the open
                   (2010.5, 2011.0, 2010.0, 2010.5)]
    config = BUY_BELOW.replace(slippage_ticks=slippage)
    ref, got = assert_parity(hand(rows), config)
    (trade,) = got.trades
    # 2 contracts x 10.5 pts x $5 - 4 sides x $0.62 = 102.52; with one tick (0.1 pt) of
    # slippage on each fill: 2 x (2010.4 - 2000.1) x 5 - 2.48 = 100.52
    assert trade["net_pnl"] == pytest.approx(net)
    assert got.final_value == pytest.approx(25_000.0 + net)


def test_known_answer_margin_call_and_negative_equity():
    rows = LEAD + [(2010.0, 2012.0, 2000.0, 2000.0),   # signal: buy 2
                   (2000.0, 2000.0, 1990.0, 1990.0),   # filled at 2000.0
                   (1990.0, 1990.0, 1950.0, 1950.0),
                   (1950.0, 1950.0, 1930.0, 1930.0),   # equity below maintenance
                   (1925.0, 1926.0, 1920.0, 1921.0),   # liquidated at the open, 1925.0
                   (1921.0, 1922.0, 1920.0, 1921.0)]
    ref, got = assert_parity(hand(rows), BUY_BELOW.replace(cash=2000.0))
    (event,) = got.margin_events
    # equity = 2,000 - 2 x 0.62 + 2 x (1930 - 2000) x $5 = 1,298.76 < 2 x $700 = 1,400
    assert (event.kind, event.equity, event.requirement) == ("margin_call", pytest.approx(
        1298.76), 1400.0)
    assert got.trades[0]["exit_reason"] == "margin_call"
    assert got.trades[0]["exit_price"] == 1925.0
    # final = 2,000 - 2 x 75 pts x $5 - 4 x 0.62 = 1,247.52
    assert got.final_value == pytest.approx(1247.52)
    crash = LEAD + [(2010.0, 2012.0, 2000.0, 2000.0), (2000.0, 2000.0, 1700.0, 1700.0),
                    (1700.0, 1701.0, 1699.0, 1700.0), (1700.0, 1701.0, 1699.0, 1700.0)]
    ref, got = assert_parity(hand(crash), BUY_BELOW.replace(cash=2000.0))
    # equity = 2,000 - 1.24 + 2 x (-300) x 5 = -1,001.24 < 0
    assert [e.kind for e in got.margin_events] == ["negative_equity", "margin_call"]
    assert got.margin_events[0].equity == pytest.approx(-1001.24)


def test_known_answer_initial_margin_rejection():
    rows = LEAD + [(2010.0, 2012.0, 2000.0, 2000.0)] + [(2000.0, 2001.0, 1999.0, 2000.0)] * 3
    # 2 contracts need 2 x $770 + 2 x $0.62 = $1,541.24 > $1,000 cash: Margin, no trade
    ref, got = assert_parity(hand(rows), BUY_BELOW.replace(cash=1000.0))
    assert got.trades == [] and got.kernel.order_rejections == {"Margin": 1}
    assert got.final_value == 1000.0


# ------------------------------------------------------------------ support, reuse, errors
class MyStrategy(M2KStrategy):
    def _signal(self):
        return 1


def test_unsupported_configs_say_why():
    assert supported(BacktestConfig(strategy=MyStrategy))[0] is False
    assert "MyStrategy" in supported(BacktestConfig(strategy=MyStrategy))[1]
    assert "per-bar strategy" in supported(BacktestConfig(strategy=MyStrategy))[1]
    with pytest.raises(KernelUnsupported, match="MyStrategy is a per-bar strategy"):
        simulate(make_bars(300), BacktestConfig(strategy=MyStrategy))
    assert supported(BacktestConfig(avoid_events="fomc")) == (True, "")  # issue 22
    for strategy in ("sma", "bollinger", "adaptive"):
        for sizer in ("fixed", "kelly"):
            assert supported(BacktestConfig(strategy=strategy, sizer=sizer)) == (True, "")


def test_bad_config_raises_the_runners_errors():
    from m2k_bt.errors import ParameterError

    with pytest.raises(ParameterError, match="fsat"):
        simulate(make_bars(300), BacktestConfig(params={"fsat": 3}))
    with pytest.raises(ParameterError):
        simulate(make_bars(300), BacktestConfig(sizer="fixed", sizer_params={"contracts": 0}))
    from m2k_bt.errors import NotEnoughBarsError

    config = BacktestConfig(params={"fast": 10, "slow": 200})
    with pytest.raises(NotEnoughBarsError) as ref:
        run_backtest(make_bars(150), config)
    with pytest.raises(NotEnoughBarsError) as got:
        simulate(make_bars(150), config)
    assert str(got.value) == str(ref.value)


def test_the_kernel_takes_the_plan_cerebro_takes():
    from m2k_bt.engine import resolve

    bars = make_bars(1500, seed=4)
    plan = resolve(BacktestConfig(strategy="sma", sizer="fixed", params={"fast": 5, "slow": 20}))
    got = simulate(bars, plan)
    assert got.config is plan.config and got.engine == "kernel"
    assert got.final_value == simulate(bars, plan.config).final_value
    trials = [plan.with_params({"fast": f, "slow": 20}) for f in (5, 8)]
    many = simulate_many(bars, trials)
    assert many[0].final_value == got.final_value
    assert abs(many[1].final_value - run_backtest(bars, trials[1]).final_value) < 0.005


def test_indicators_are_computed_once_per_data_set():
    bars = make_bars(1500, seed=4)
    data = prepare(bars)
    assert isinstance(data, KernelData)
    grid = [BacktestConfig(strategy="sma", sizer="fixed", params={"fast": f, "slow": s})
            for f in (5, 10) for s in (30, 60)]
    results = simulate_many(data, grid)
    # one tick-sum array per window (5, 10, 30, 60), shared by the trials
    assert sorted(k[1] for k in data._sums) == [5, 10, 30, 60]
    assert data.sums(30)[0] is data.sums(30)[0]
    for config, res in zip(grid, results):
        assert res.final_value == simulate(bars, config).final_value
    many = simulate_many(bars, grid)  # from the bars: one KernelData made for all
    assert [r.final_value for r in many] == [r.final_value for r in results]


def test_a_study_keeps_a_bounded_number_of_signals_and_one_bars_object():
    """Regression (benchmarks/bench_study_memory.py): a 1,000-trial study grew ~277 KB a
    trial, one kept SMA signal per (fast, slow); and every bars object a process had studied
    stayed cached for good (its KernelData held it)."""
    import gc
    import weakref

    import m2k_bt.kernel.simulation as kernel

    bars = make_bars(1500, seed=4)
    data = prepare(bars)
    grid = [BacktestConfig(strategy="sma", sizer="fixed", params={"fast": f, "slow": s})
            for f in range(5, 15) for s in (30, 60)]  # 20 trials
    simulate_many(data, grid)
    assert len(data._signals) == kernel.SIGNALS_KEPT < len(grid)
    assert sorted(k[1] for k in data._sums) == [*range(5, 15), 30, 60]
    # tick sums: the windows used last are kept, SUMS_KEPT of them or as many as fit
    # SUMS_BYTES at 12 bytes a bar (int32 sums, int64 squares): 96 MiB / (12 x 1,500 bars)
    # = 5,592 windows here; on 1M bars 96 MiB / 12 MB = 8 < 32, so SUMS_KEPT
    assert kernel.SUMS_BYTES == 96 * 2**20
    assert data._sums_kept == 96 * 2**20 // (12 * 1500) == 5592
    for w in range(100, 100 + data._sums_kept + 5):
        data.sums(w)
    assert len(data._sums) == data._sums_kept and ("sums", 5) not in data._sums
    s5, q5 = data.sums(5)
    assert s5[4] == data.ct[:5].sum() and q5[4] == (data.ct[:5] ** 2).sum()
    # the most recent signals are the ones kept, and a kept one is reused as it is
    assert list(data._signals)[-1] == ("sma", 14, 60)
    assert data.sma_signal(14, 60) is data.sma_signal(14, 60)
    # run_backtest_fast keeps indicators for one bars object at a time
    first = make_bars(1500, seed=5)
    gone = weakref.ref(first)
    kernel.run_backtest_fast(first, grid[0])
    assert kernel._DATA_CACHE["bars"] is first
    kernel.run_backtest_fast(bars, grid[0])
    del first
    gc.collect()
    assert gone() is None and kernel._DATA_CACHE["bars"] is bars
    assert len(kernel._DATA_CACHE["data"]) == 1


def test_event_and_signal_filters_run_in_the_kernel():
    """Issue 22 item 4 (they ran in cerebro before): see test_signal_strategies.py for the
    parity of their trades and records."""
    assert supported(BacktestConfig(avoid_events="fomc")) == (True, "")
    assert supported(BacktestConfig(params={"avoid_events": "fomc"})) == (True, "")
    assert supported(BacktestConfig(signal_min=3.0)) == (True, "")


# ------------------------------------------------------------------ run_backtest.py --engine
def _outputs(tmp_path, name, data_csv, *extra):
    import json

    from m2k_bt.cli.backtest import main

    out = tmp_path / name
    code = main(["--data", data_csv, "--out", str(out), "--param", "fast=10", "--param",
                 "slow=30", "--slippage-ticks", "1", "--no-plot", "--quiet", *extra])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    return report, (out / "trades.csv").read_text(), (out / "equity.csv").read_text()


def test_cli_engine_kernel_writes_the_same_outputs(tmp_path, capsys):
    from conftest import rth_bars, write_bars_csv

    data_csv = write_bars_csv(rth_bars(), tmp_path / "m2k_5min.csv")
    ref, ref_trades, ref_equity = _outputs(tmp_path, "cerebro", data_csv)
    capsys.readouterr()
    got, got_trades, got_equity = _outputs(tmp_path, "kernel", data_csv, "--engine", "kernel")
    assert capsys.readouterr().err == ""  # the kernel ran: no fallback note
    assert got_trades == ref_trades and ref_trades.count("\n") > 5
    assert got_equity == ref_equity
    _same_tree(ref["results"], got["results"], "results")
    _same_tree(ref["analyzers"], got["analyzers"], "analyzers")
    assert got["warnings"] == ref["warnings"]
    # a configuration the kernel does not model runs in cerebro, saying why
    capsys.readouterr()
    mine = tmp_path / "mine.py"
    mine.write_text("from m2k_bt.strategies import SmaCrossover\n\n\n"
                    "class PerBar(SmaCrossover):\n"
                    "    def direction(self):\n"
                    "        return super().direction()\n")
    _outputs(tmp_path, "fallback", data_csv, "--engine", "kernel", "--strategy",
             f"{mine}:PerBar")
    assert "running in cerebro: strategy PerBar is a per-bar strategy" in \
        capsys.readouterr().err


def test_run_backtest_fast_is_a_drop_in_for_the_optimiser():
    from m2k_bt.engine import BacktestResult
    from m2k_bt.kernel.simulation import KernelResult, run_backtest_fast
    from m2k_bt.optimize.study import evaluate_params

    bars = make_bars(1500, seed=8)
    config = BacktestConfig(strategy="sma", sizer="fixed", params={"fast": 5, "slow": 20})
    fast = run_backtest_fast(bars, config)
    assert KernelResult is BacktestResult  # one result for both engines
    assert fast.engine == "kernel" and fast.kernel is not None and fast.cerebro is None
    assert run_backtest_fast(bars, config).final_value == fast.final_value
    slow = run_backtest_fast(bars, config.replace(strategy=MyStrategy, params={}))  # cerebro
    assert slow.engine == "cerebro" and slow.kernel is None and slow.cerebro is not None
    a = evaluate_params(bars, config, {"fast": 8}, "sharpe", 1, run_backtest_fast)
    b = evaluate_params(bars, config, {"fast": 8}, "sharpe", 1)
    assert a["value"] == pytest.approx(b["value"], rel=1e-9)


# ------------------------------------------------------------------ optimize / walkforward
def test_optimize_runs_trials_in_the_kernel_and_verifies_the_best_in_cerebro(monkeypatch):
    from m2k_bt.errors import M2KError
    from m2k_bt.optimize.study import optimize

    bars = make_bars(2500, seed=12)
    config = BacktestConfig(strategy="sma", sizer="fixed")
    space = ["fast=5:15:5", "slow=30:60:15"]
    fast = optimize(bars, config, space, sampler="grid", workers=1, overfitting=False,
                    quiet=True)
    slow = optimize(bars, config, space, sampler="grid", workers=1, overfitting=False,
                    quiet=True, engine="cerebro")
    info = fast.settings["engine"]
    assert info["engine"] == "kernel" and info["engines_agree"] is True
    assert info["final_value_kernel"] == pytest.approx(info["final_value_cerebro"], abs=0.005)
    assert slow.settings["engine"] == {"engine": "cerebro"}
    assert fast.best_params == slow.best_params
    assert fast.best_value == pytest.approx(slow.best_value, rel=1e-9)
    assert fast.trials["value"].tolist() == pytest.approx(slow.trials["value"].tolist())
    # an unsupported configuration runs in cerebro and says why
    class PerBar(SmaCrossover):
        def direction(self):
            return super().direction()

    other = optimize(bars, config.replace(strategy=PerBar), space, sampler="grid",
                     workers=1, overfitting=False, quiet=True)
    assert "per-bar strategy" in other.settings["engine"]["kernel_unsupported"]
    # engines that disagree fail loudly with both numbers
    from conftest import kernel_off_by_a_dollar

    kernel_off_by_a_dollar(monkeypatch)
    with pytest.raises(M2KError, match="kernel and cerebro disagree"):
        optimize(bars, config, space, sampler="grid", workers=1, overfitting=False, quiet=True)


@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(config=configs(), seed=st.integers(0, 10_000),
       vol=st.sampled_from([0.001, 0.002, 0.004]),
       freq=st.sampled_from(["5min", "61111111us"]))  # holding minutes not whole
def test_trade_statistics_from_the_kernels_columns_are_the_analyzers_to_the_bit(config, seed,
                                                                                 vol, freq):
    """The kernel's trade statistics come from its columns (``closed_trade_statistics``), not
    from its trade-list dicts: every figure equals what the analyzers' ``trade_statistics``
    makes of those dicts, bit for bit (compared as ``repr``: -0.0, NaN and 1e-17 apart
    differ), holding minutes and streaks included."""
    from m2k_bt.analyzers.trades import trade_statistics

    got = simulate(stressed_bars(900, seed=seed, vol=vol, gaps=2, rolls=2, freq=freq), config)
    stats = got.analysis["trades"]
    ref = trade_statistics(stats["trade_list"])
    ref["open_trades"] = stats["open_trades"]
    assert list(ref) == list(stats)
    assert {k: repr(v) for k, v in ref.items() if k != "trade_list"} == \
        {k: repr(v) for k, v in stats.items() if k != "trade_list"}
    assert ref["trade_list"] is stats["trade_list"]


def test_simulate_pauses_garbage_collection_and_restores_it(monkeypatch):
    """simulate() builds its result with Python's cyclic collector paused (thousands of
    trade dicts would start a collection every 700), and leaves it as it found it, also
    when it raises."""
    import gc

    import m2k_bt.kernel.simulation as sim

    seen = []
    real = sim.kernel_result

    def spy(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "kernel_result", spy)
    bars = make_bars(400, seed=3)
    config = BacktestConfig(strategy="sma", params={"fast": 5, "slow": 20}, sizer="fixed")
    assert gc.isenabled()
    simulate(bars, config)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        simulate(bars, config)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
    with pytest.raises(KernelUnsupported):
        simulate(bars, BacktestConfig(strategy=MyStrategy))
    assert gc.isenabled()


def test_a_run_on_its_own_data_drops_its_signal_and_sums_before_the_result():
    """simulate() on a DataFrame makes data of its own: after the loop its kept tick sums
    and signal are dropped (not held while the result is built); data a caller prepared (a
    study's, shared by its trials) keeps them for the next run, and the results agree."""
    from m2k_bt.kernel.simulation import _run, prepare

    bars = make_bars(600, seed=5)
    config = BacktestConfig(strategy="sma", params={"fast": 5, "slow": 20}, sizer="fixed")
    own = _run(bars, config)
    assert own.data._sums == {} and own.data._signals == {}
    data = prepare(bars, config)
    shared = _run(data, config)
    assert set(data._sums) == {("sums", 5), ("sums", 20)} and len(data._signals) == 1
    for a, b in zip(own.out, shared.out):
        assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    assert simulate(bars, config).trades == simulate(data, config).trades
