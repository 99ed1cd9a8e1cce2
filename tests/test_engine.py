"""run_backtest and the plan: the wiring every job shares."""

import pytest
from conftest import rth_bars

from m2k_bt.contracts import RTY
from m2k_bt.engine import (
    BacktestConfig,
    Plan,
    build_cerebro,
    resolve,
    run_backtest,
    select_bars,
)
from m2k_bt.errors import ConfigError, ParameterError

SMA = {"fast": 10, "slow": 30}


@pytest.fixture(scope="module")
def bars():
    return rth_bars()


def fixed(**kw):
    base = dict(strategy="sma", params=SMA, sizer="fixed")
    base.update(kw)
    return BacktestConfig(**base)


@pytest.mark.parametrize("runonce,preload", [(True, True), (False, True), (False, False)])
def test_engine_modes_agree(bars, runonce, preload):
    ref = run_backtest(bars, fixed())
    other = run_backtest(bars, fixed(runonce=runonce, preload=preload))
    assert other.final_value == pytest.approx(ref.final_value)
    assert [t["net_pnl"] for t in other.trades] == pytest.approx([t["net_pnl"] for t in ref.trades])


def test_result_reconciles(bars):
    r = run_backtest(bars, fixed(slippage_ticks=1))
    assert r.bars == len(bars) and r.trades
    assert sum(t["net_pnl"] for t in r.trades) == pytest.approx(r.final_value - r.start_value)
    assert r.metrics["net_profit"] == pytest.approx(r.final_value - r.start_value)
    assert r.equity["value"].iloc[-1] == pytest.approx(r.final_value)
    # the equity curve carries real dates, not backtrader's float day numbers
    assert r.equity.index[0].year == 2024


def test_rty_is_ten_times_m2k_before_costs(bars):
    # same fills; gross P&L scales with the multiplier: $50 vs $5
    m2k = run_backtest(bars, fixed(commission=0.0))
    rty = run_backtest(bars, fixed(commission=0.0, spec=RTY, cash=250_000.0))
    assert rty.final_value - rty.start_value == pytest.approx(
        10 * (m2k.final_value - m2k.start_value)
    )


def test_margin_override_keeps_initial_above_maintenance(bars):
    selected = select_bars(bars, fixed())
    cerebro, _ = build_cerebro(selected, fixed(margin=500.0))
    ci = cerebro.broker.getcommissioninfo(cerebro.datas[0])
    # initial lowered below the spec's $700 maintenance: maintenance follows it down
    assert (ci.p.margin, ci.p.maintenance_margin) == (500.0, 500.0)
    cerebro, _ = build_cerebro(selected, fixed(maintenance_margin=900.0))
    ci = cerebro.broker.getcommissioninfo(cerebro.datas[0])
    assert (ci.p.margin, ci.p.maintenance_margin) == (900.0, 900.0)


def test_date_filter_is_inclusive(bars):
    sel = select_bars(bars, fixed(start="2024-03-01", end="2024-03-05"))
    assert str(sel.index[0].date()) == "2024-03-01"
    assert str(sel.index[-1].date()) == "2024-03-05"


def test_small_account_margin_call_reaches_the_report():
    # $900 and 1 short contract ($770 initial): an adverse move that takes equity under the
    # $700 maintenance is liquidated at the next open and reported
    r = run_backtest(rth_bars(vol=0.004), fixed(cash=900.0))
    (call,) = [e for e in r.margin_events if e.kind == "margin_call"]
    assert call.equity < call.requirement == pytest.approx(700.0)
    assert any(w.startswith("margin_call") for w in r.warnings)
    assert [t["exit_reason"] for t in r.trades].count("margin_call") == 1
    # the account cannot afford a new contract afterwards: entries are margin-rejected, counted,
    # and not retried every bar
    assert 0 < r.strategy.order_rejections["Margin"] < len(r.trades) + 100
    # nothing was lost: trades reconcile with equity
    assert sum(t["net_pnl"] for t in r.trades) == pytest.approx(r.final_value - r.start_value)


@pytest.mark.parametrize(
    "kw,err,needle",
    [
        ({"cash": 0}, ConfigError, "cash"),
        ({"slippage_ticks": -1}, ConfigError, "slippage"),
        ({"strategy": "nope"}, ParameterError, "unknown strategy"),
        ({"sizer": "half"}, ParameterError, "unknown sizer"),
        ({"sizer_params": {"contracts": 0}}, ParameterError, "contracts"),
        ({"params": {"fast": 30, "slow": 10}}, ParameterError, "fast"),
        ({"start": "not a date"}, ConfigError, "not a date"),
    ],
)
def test_bad_configs(bars, kw, err, needle):
    with pytest.raises(err, match=needle):
        run_backtest(bars, fixed(**kw))


def test_plot_observers_only_when_a_plot_is_drawn(bars):
    import backtrader as bt

    def observers(result):
        return {type(o) for o in result.strategy.observers}

    plain = run_backtest(bars, fixed())
    plotted = run_backtest(bars, fixed(plot=True))
    assert observers(plain) == set()
    assert {bt.observers.BuySell, bt.observers.Value} <= observers(plotted)
    # observers only watch: same trades, same money
    assert plotted.final_value == pytest.approx(plain.final_value)


# -- too few bars for the indicators: our error before running, never backtrader's traceback --

ONE_DAY = dict(start="2024-02-21", end="2024-02-21")  # 09:35-16:00 in 5-min bars: 78 bars


@pytest.mark.parametrize("runonce", [True, False])
@pytest.mark.parametrize(
    "strategy,params,need,culprit",
    [
        ("sma", {"fast": 10, "slow": 400}, 400, "slow=400"),  # SMA(400): first value on bar 400
        ("bollinger", {"period": 400}, 400, "period=400"),  # Bollinger(400): bar 400
        # returns need one bar more than the lookback of their rolling deviation: 100 + 1
        ("adaptive", {"vol_lookback": 100}, 101, "vol_lookback=100"),
        # ADX(50) smooths a smoothed series: 2 x 50 bars
        ("sma", {"fast": 5, "slow": 20, "adx_min": 20, "adx_period": 50}, 100, "adx_period=50"),
    ],
)
def test_too_few_bars_for_the_indicators_is_a_config_error(
    bars, strategy, params, need, culprit, runonce
):
    from m2k_bt.errors import NotEnoughBarsError

    config = BacktestConfig(strategy=strategy, params=params, sizer="fixed", runonce=runonce,
                            **ONE_DAY)
    with pytest.raises(NotEnoughBarsError) as exc:
        run_backtest(bars, config)
    assert isinstance(exc.value, ConfigError)
    assert str(exc.value).startswith(
        f"need at least {need} bars for {culprit}, the selection has 78 "
        f"(2024-02-21 09:35 to 2024-02-21 16:00)"
    )
    assert (exc.value.need, exc.value.have) == (need, 78)


def test_a_four_bar_file_names_the_default_slow(bars):
    from m2k_bt.errors import NotEnoughBarsError

    with pytest.raises(NotEnoughBarsError, match=r"need at least 200 bars for slow=200, "
                                                 r"the selection has 4 "):
        run_backtest(bars.iloc[:4], BacktestConfig(sizer="fixed"))


def test_exactly_the_warm_up_runs(bars):
    # SMA(30) needs 30 bars: 30 run (nothing to trade yet), 29 do not
    result = run_backtest(bars.iloc[:30], fixed())
    assert result.bars == 30
    with pytest.raises(ConfigError, match="need at least 30 bars for slow=30, the selection "
                                          "has 29"):
        run_backtest(bars.iloc[:29], fixed())


def test_too_few_bars_for_an_indicator_without_a_length_parameter(bars):
    import backtrader as bt

    from m2k_bt.engine import min_bars
    from m2k_bt.errors import NotEnoughBarsError

    class Hardwired(bt.Strategy):  # its SMA length is not a parameter: measured, not guessed
        def __init__(self):
            self.sma = bt.indicators.SMA(self.data.close, period=120)

    config = BacktestConfig(strategy=Hardwired, sizer="fixed")
    assert min_bars(bars, config) == 120
    with pytest.raises(NotEnoughBarsError, match="need at least 120 bars for strategy Hardwired, "
                                                 "the selection has 100"):
        run_backtest(bars.iloc[:100], config)


# -- the plan: one resolution of a config, taken by both engines --------------------------------


def test_a_plan_holds_the_checked_resolution():
    from m2k_bt.sizers.kelly import FixedContracts
    from m2k_bt.strategies import SmaCrossover

    plan = resolve(fixed(params={"fast": "10", "slow": 30}, rth_only=True, margin=900.0,
                         sizer_params={"contracts": "2"}))
    assert plan.strategy_cls is SmaCrossover and plan.sizer_cls is FixedContracts
    # text from a command line, coerced once; rth_only passed on as a strategy parameter
    assert (plan.params["fast"], plan.params["rth_only"]) == (10, True)
    assert plan.sizer_params == {"contracts": 2}
    assert (plan.comminfo.p.margin, plan.comminfo.p.maintenance_margin) == (900.0, 700.0)
    assert plan.events == {} and plan.signal is None and not plan.filtered
    assert resolve(plan) is plan


def test_running_a_plan_is_running_its_config(bars):
    config = fixed(slippage_ticks=1)
    by_config = run_backtest(bars, config)
    by_plan = run_backtest(bars, resolve(config))
    assert by_plan.final_value == by_config.final_value
    assert by_plan.trades == by_config.trades
    assert by_plan.config is config


def test_a_study_resolves_once_and_swaps_only_the_parameters(bars, monkeypatch):
    import m2k_bt.engine.plan as plan_module

    ref = run_backtest(bars, fixed())
    looked_up = []
    real = plan_module.resolve_strategy
    monkeypatch.setattr(plan_module, "resolve_strategy",
                        lambda s: looked_up.append(s) or real(s))
    plan = resolve(fixed())
    trials = [plan.with_params({"fast": f, "slow": 30}) for f in (5, 10)]
    assert looked_up == ["sma"]  # the strategy was looked up once, for the plan
    assert [t.params["fast"] for t in trials] == [5, 10]
    assert all(t.comminfo is plan.comminfo and t.sizer_cls is plan.sizer_cls for t in trials)
    assert trials[1].config == plan.config.replace(params={"fast": 10, "slow": 30})
    assert run_backtest(bars, trials[1]).final_value == ref.final_value
    assert looked_up == ["sma"]  # and running a plan looked it up no more
    with pytest.raises(ParameterError, match="fast"):
        plan.with_params({"fast": 40, "slow": 30})  # the parameters are still checked


def test_plan_replace_changes_only_run_settings():
    plan = resolve(fixed())
    quiet = plan.replace(analyzers=False, start="2024-03-01")
    assert (quiet.config.analyzers, quiet.start) == (False, "2024-03-01")
    assert quiet.params == plan.params and isinstance(quiet, Plan)
    with pytest.raises(ValueError, match="cash"):
        plan.replace(cash=1.0)  # the margins were checked against the old cash: resolve again


def test_each_cerebro_gets_its_own_commission_scheme(bars):
    plan = resolve(fixed())
    a, _ = build_cerebro(select_bars(bars, plan), plan)
    b, _ = build_cerebro(select_bars(bars, plan), plan)
    ca = a.broker.getcommissioninfo(a.datas[0])
    cb = b.broker.getcommissioninfo(b.datas[0])
    assert ca is not cb and ca is not plan.comminfo  # the broker switches intraday margin on it
    assert ca.p.margin == cb.p.margin == plan.comminfo.p.margin
