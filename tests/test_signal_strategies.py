"""Issue 22: your own strategy in both engines.

Signal strategies (a vectorised function of the bars) run in the kernel and in cerebro with
the same trades; the built-in rules written as signals equal their per-bar versions; any array
of directions is a valid strategy (property-based parity); look-ahead is caught; per-bar
strategies with ``direction()`` run in cerebro; ``--strategy FILE.py:NAME`` from the command
line; report.html draws user indicators.
"""

from __future__ import annotations

import math
import textwrap

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from conftest import make_bars, one_line_exit_2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kernel import assert_parity, stressed_bars

from m2k_bt.engine import BacktestConfig
from m2k_bt.engine.cerebro import run_backtest
from m2k_bt.errors import LookaheadError, SignalError
from m2k_bt.kernel import simulate
from m2k_bt.kernel.simulation import supported
from m2k_bt.strategies import (
    AdaptiveSignal,
    BollingerSignal,
    M2KStrategy,
    SmaCrossover,
    SmaSignal,
    check_lookahead,
    signal_strategy,
)


def article_sma(bars, fast=20, slow=50):
    """The article's SMA snippet: long above, short below; no opinion before SMA_slow."""
    df = bars
    df["SMA_fast"] = df["close"].rolling(window=fast).mean()
    df["SMA_slow"] = df["close"].rolling(window=slow).mean()
    df["Signal"] = np.where(df["SMA_fast"] > df["SMA_slow"], 1, -1)
    df.loc[df["SMA_slow"].isna(), "Signal"] = np.nan
    return df


# ------------------------------------------------------------------------------ both engines
@pytest.mark.parametrize("sizer, params", [
    ("fixed", {"fast": 10, "stop_ticks": 30}),
    ("kelly", {"fast": 15, "slow": 40, "target_ticks": 25}),
])
def test_a_signal_function_runs_in_the_kernel_with_cerebro_s_trades_to_the_cent(sizer, params):
    bars = make_bars(1500, seed=3)
    config = BacktestConfig(strategy=article_sma, params=params, sizer=sizer)
    assert supported(config) == (True, "")
    ref, got = assert_parity(bars, config)  # every trade row, final value to the cent
    assert got.engine == "kernel" and ref.engine == "cerebro" and len(ref.trades) > 5
    # the look-ahead check ran in both, on all bars, at 8 cut points
    assert ref.lookahead["cuts"] == got.lookahead["cuts"] == 8
    assert ref.lookahead["bars"] == got.lookahead["bars"] == 1500


def _random_builtin(rng):
    kind = rng.integers(3)
    if kind == 0:
        fast = int(rng.integers(3, 15))
        params = {"fast": fast, "slow": int(rng.integers(fast + 1, 60))}
        if rng.random() < 0.3:
            params["adx_min"] = float(rng.choice([15.0, 25.0]))
        return "sma", SmaSignal, params
    params = {"devfactor": float(rng.choice([1.0, 1.5, 2.0])),
              "exit": str(rng.choice(["middle", "signal"])), "ddof": int(rng.integers(2))}
    if rng.random() < 0.3:
        params["rsi_oversold"] = 45.0
        params["rsi_overbought"] = 55.0
    if kind == 1:
        return "bollinger", BollingerSignal, {**params, "period": int(rng.integers(3, 30))}
    return "adaptive", AdaptiveSignal, {**params, "vol_lookback": int(rng.integers(5, 40)),
                                        "vol_threshold": float(rng.choice([0.001, 0.002]))}


@pytest.mark.parametrize("seed", range(6))
def test_the_built_in_rules_as_signals_equal_their_per_bar_versions(seed):
    rng = np.random.default_rng(seed)
    bars = stressed_bars(700, seed=seed)  # gaps through stops, roll markers
    name, twin, params = _random_builtin(rng)
    if rng.random() < 0.5:
        params["stop_ticks"] = int(rng.integers(5, 40))
    sizer = str(rng.choice(["fixed", "kelly"]))
    per_bar = run_backtest(bars, BacktestConfig(strategy=name, params=params, sizer=sizer))
    as_signal = run_backtest(bars, BacktestConfig(strategy=twin, params=params, sizer=sizer))
    assert as_signal.trades == per_bar.trades
    assert as_signal.final_value == per_bar.final_value
    # and the kernel runs the signal version with the per-bar version's trades
    ref, got = assert_parity(bars, BacktestConfig(strategy=twin, params=params, sizer=sizer))
    assert got.trades == simulate(bars, BacktestConfig(strategy=name, params=params,
                                                       sizer=sizer)).trades


def test_the_built_in_signals_equal_their_per_bar_versions_on_the_bundled_data():
    from m2k_bt.feeds import load_bars

    bars = load_bars("datafeeds/m2k_5min.csv.gz")
    window = {"start": "2024-01-01", "end": "2024-02-15"}
    for name, twin in (("sma", SmaSignal), ("bollinger", BollingerSignal),
                       ("adaptive", AdaptiveSignal)):
        a = run_backtest(bars, BacktestConfig(strategy=name, **window))
        b = run_backtest(bars, BacktestConfig(strategy=twin, **window))
        assert a.trades == b.trades and a.final_value == b.final_value, name
        assert len(a.trades) > 3, name
        assert simulate(bars, BacktestConfig(strategy=twin, **window)).trades == a.trades


# ------------------------------------------------------------------------------ property
_DIRECTIONS = st.lists(st.tuples(st.sampled_from([-1.0, 0.0, 1.0, math.nan]),
                                 st.integers(1, 40)), min_size=1, max_size=40)


def _expand(runs, n: int, lead: int) -> np.ndarray:
    values = np.concatenate([np.full(k, v) for v, k in runs])
    values = np.resize(values, n)
    values[:lead] = np.nan
    return values


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(runs=_DIRECTIONS, lead=st.integers(0, 50), seed=st.integers(0, 10_000),
       sizer=st.sampled_from(["fixed", "kelly"]), cash=st.sampled_from([2_500.0, 25_000.0]),
       stops=st.sampled_from(["none", "ticks", "signal"]), masks=st.booleans(),
       session=st.sampled_from(["none", "rth", "flat"]),
       slippage=st.sampled_from([0.0, 1.0, 0.5]), contracts=st.integers(1, 4),
       events=st.sampled_from(["none", "avoid", "flat", "external"]),
       before=st.sampled_from([600.0, 2500.0, 4000.0]))
def test_any_array_of_directions_trades_the_same_in_both_engines(
        runs, lead, seed, sizer, cash, stops, masks, session, slippage, contracts, events,
        before):
    """Any direction array is a valid strategy: random directions with random execution
    settings (sizers, stops, cash down to margin calls, sessions, event windows, the external
    series filter, rolls, slippage); the kernel and cerebro agree trade row by trade row and
    filter record by record."""
    bars = stressed_bars(400, seed=seed)
    n = len(bars)
    rng = np.random.default_rng(seed)
    direction = _expand(runs, n, lead)
    cols = {"direction": direction}
    if stops == "signal":
        cols["stop"] = np.where(rng.random(n) < 0.8, rng.integers(1, 60, n) * 0.1 + 0.05,
                                np.nan)
        cols["target"] = np.where(rng.random(n) < 0.5, rng.integers(1, 80, n) * 0.1, np.nan)
    if masks:
        cols["exit_long"] = rng.random(n) < 0.2
        cols["exit_short"] = rng.random(n) < 0.2
        cols["long_ok"] = rng.random(n) < 0.7
        cols["short_ok"] = rng.random(n) < 0.7
    frame = pd.DataFrame(cols, index=bars.index)

    def directions(b):  # a prefix of the fixed frame: honest, the check passes
        return frame.iloc[: len(b)]

    params = {"stop_ticks": 20} if stops == "ticks" else {}
    if session == "rth":
        params["rth_only"] = True
    elif session == "flat":
        params["flat_before_close"] = "15:30"
    filters = {}
    if events in ("avoid", "flat"):  # NFP 2024-01-05 08:30 and CPI 2024-01-11 in reach
        filters = {"avoid_events": "nfp,cpi,fomc", "event_before": before, "event_after": 90.0,
                   "flat_before_event": events == "flat"}
    elif events == "external":
        filters = {"signal": _external(seed), "signal_min": 15.0, "signal_max": 25.0}
    config = BacktestConfig(strategy=signal_strategy(directions), params=params, sizer=sizer,
                            sizer_params={"contracts": contracts} if sizer == "fixed" else {},
                            cash=cash, slippage_ticks=slippage, **filters)
    ref, got = assert_parity(bars, config)
    if filters:
        assert got.analysis["events"] == ref.analysis["events"]


def _external(seed: int):
    """An hourly external series around 20 (entries allowed between 15 and 25), with gaps."""
    from m2k_bt.feeds.external import Signal

    rng = np.random.default_rng(seed)
    idx = pd.date_range("2024-01-01", periods=24 * 40, freq="h", tz="America/New_York")
    values = pd.Series(rng.normal(20.0, 6.0, len(idx)), index=idx)
    return Signal(values[rng.random(len(idx)) < 0.7], max_age=pd.Timedelta("2h"))


@pytest.mark.parametrize("strategy, params", [
    ("sma", {"fast": 10, "slow": 40}),
    ("bollinger", {"period": 20, "stop_ticks": 30}),
    (article_sma, {"fast": 10, "slow": 30, "target_ticks": 40}),
])
@pytest.mark.parametrize("filters", [
    {"avoid_events": "fomc,cpi,nfp", "event_before": 900.0, "event_after": 900.0},
    {"avoid_events": "fomc,cpi,nfp", "flat_before_event": True, "event_before": 120.0,
     "event_after": 90.0},
    {"signal_min": 18.0, "signal_max": 26.0},
])
def test_event_windows_and_the_external_series_run_in_the_kernel_with_cerebro_s_records(
        strategy, params, filters):
    """Issue 22 item 4: events and external signals are masks on the directions in the
    kernel: the same trades (exit reason 'event' included), the same blocked entries and
    forced exits in the events analyzer, the same coverage warnings."""
    bars = make_bars(6000, seed=7, start="2024-01-02 09:30")
    if "signal_min" in filters:
        filters = {**filters, "signal": _external(3)}
    config = BacktestConfig(strategy=strategy, params=params, sizer="fixed", **filters)
    assert supported(config) == (True, "")
    ref, got = assert_parity(bars, config)
    assert got.analysis["events"] == ref.analysis["events"]
    log = ref.analysis["events"]["log"]
    assert log, "the filters did something"
    forced = sum(t["exit_reason"] == "event" for t in got.trades)
    assert got.analysis["events"]["forced_exits"] == forced
    if filters.get("flat_before_event") and strategy == "sma":  # always in: closed for each
        assert forced > 0


# ------------------------------------------------------------------------------ look-ahead
LEAKS = {
    "shift(-1)": lambda b: np.sign(b["close"].shift(-1) - b["close"]),
    "centred window": lambda b: np.sign(b["close"] - b["close"].rolling(9, center=True).mean()),
    "whole-sample z-score": lambda b: np.sign((b["close"] - b["close"].mean()) / b["close"].std()),
    "last close": lambda b: np.where(b["close"] > b["close"].iloc[-1], -1, 1),
    "future max": lambda b: np.where(b["close"][::-1].cummax()[::-1] > b["close"], 1, 0),
}
HONEST = {
    "rolling mean": lambda b: np.sign(b["close"] - b["close"].rolling(20).mean()),
    "ewm": lambda b: np.sign(b["close"] - b["close"].ewm(span=12).mean()),
    "expanding max": lambda b: np.where(b["close"] >= b["close"].cummax(), 1, 0),
    "diff": lambda b: np.sign(b["close"].diff()),
}


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_look_ahead_of_each_kind_is_caught_naming_bar_and_cut(name):
    bars = make_bars(600, seed=5)
    with pytest.raises(LookaheadError) as info:
        check_lookahead(LEAKS[name], bars)
    message = str(info.value)
    assert "looks ahead" in message and "on bar " in message and "with only the first" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_signals_pass_the_look_ahead_check(name):
    report = check_lookahead(HONEST[name], make_bars(600, seed=5))
    assert report["cuts"] == 8 and report["bars"] == 600 and report["seconds"] >= 0


def test_a_leaking_signal_makes_no_backtest_in_either_engine_unless_told_to_skip():
    bars = make_bars(600, seed=5)
    leak = signal_strategy(LEAKS["shift(-1)"])
    for run in (run_backtest, simulate):
        with pytest.raises(LookaheadError):
            run(bars, BacktestConfig(strategy=leak, sizer="fixed"))
    ok = run_backtest(bars, BacktestConfig(strategy=leak, sizer="fixed",
                                           params={"lookahead_check": False}))
    assert ok.lookahead is None and len(ok.trades) > 50  # it trades on the future, as told


# ------------------------------------------------------------------------------ bad output
@pytest.mark.parametrize("func, needle", [
    (lambda b: np.ones(len(b) - 1), "returned 599 values for 'direction' on 600 bars"),
    (lambda b: np.full(len(b), 2.0), "'direction' must be -1, 0, +1 or NaN, got"),
    (lambda b: pd.DataFrame({"direction": 1.0, "stop": -1.0}, index=b.index),
     "'stop' must be a distance in points > 0"),
    (lambda b: pd.DataFrame({"side": 1.0}, index=b.index), "without a 'direction' column"),
    (lambda b: b["Close"], "failed: KeyError: 'Close' (the bars have columns open"),
    (lambda b: "long", "returned str"),
])
def test_a_signal_that_is_not_one_is_one_clear_error(func, needle):
    with pytest.raises(SignalError) as info:
        run_backtest(make_bars(600, seed=1), BacktestConfig(strategy=signal_strategy(func)))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_signal_function_parameters_are_declared_by_their_defaults():
    cls = signal_strategy(article_sma)
    assert cls.signal_params == ("fast", "slow")
    assert cls.validate_params({"fast": "12"})["fast"] == 12
    with pytest.raises(Exception, match=r"unknown article_sma parameter 'fsat' \(did you mean"):
        cls.validate_params({"fsat": 3})

    def no_default(bars, period):
        return bars["close"] * 0

    with pytest.raises(Exception, match="parameter 'period' needs a default"):
        signal_strategy(no_default)


# ------------------------------------------------------------------------------ per-bar
class Breakout(M2KStrategy):
    """A per-bar strategy with a common backtrader idiom: the highest high of the 20 bars
    before this one."""

    params = (("lookback", 20),)

    def __init__(self):
        super().__init__()
        self.top = bt.ind.Highest(self.data.high(-1), period=self.p.lookback)
        self.bottom = bt.ind.Lowest(self.data.low(-1), period=self.p.lookback)

    def direction(self):
        if self.data.close[0] > self.top[0]:
            return 1
        if self.data.close[0] < self.bottom[0]:
            return -1
        return None  # keep what is held


def test_a_per_bar_strategy_runs_in_cerebro_and_keeps_its_position_on_none():
    bars = make_bars(800, seed=2)
    ok, why = supported(BacktestConfig(strategy=Breakout))
    assert not ok and "per-bar strategy" in why and "only cerebro" in why
    res = run_backtest(bars, BacktestConfig(strategy=Breakout, sizer="fixed"))
    assert len(res.trades) > 3
    # None keeps the position: every trade ends on a signal the other way (or the end)
    assert {t["exit_reason"] for t in res.trades} <= {"signal", "end"}
    longs = [t for t in res.trades if t["direction"] == "long"]
    assert longs and all(t["bars_held"] > 1 for t in longs[:-1])


def test_an_unchanged_subclass_of_a_built_in_runs_in_the_kernel_but_one_that_overrides_not():
    class Same(SmaCrossover):
        params = (("note", "mine"),)

    class Other(SmaCrossover):
        def direction(self):
            return 1

    assert supported(BacktestConfig(strategy=Same)) == (True, "")
    ok, why = supported(BacktestConfig(strategy=Other))
    assert not ok and "Other.direction overrides the built-in rule" in why


def test_report_html_draws_a_per_bar_strategy_with_line_delays(tmp_path):
    from m2k_bt.report import write_outputs

    res = run_backtest(make_bars(800, seed=2), BacktestConfig(strategy=Breakout, plot=True))
    written = write_outputs(res, tmp_path)
    html = written["html"].read_text()
    assert "Highest" in html and "Lowest" in html
    assert not any("not written" in w for w in res.warnings)


def test_a_requested_output_that_fails_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch,
                                                              rth_csv):
    import m2k_bt.report.plot as plot

    def broken(*args, **kwargs):
        raise RuntimeError("no renderer")

    monkeypatch.setattr(plot, "plot_backtrader", broken)
    err = one_line_exit_2(["--data", rth_csv, "--out", str(tmp_path / "o"), "--quiet",
                           "--engine", "cerebro"], capsys,
                          "plot.png not written: RuntimeError: no renderer")
    assert "the other outputs are in" in err
    assert (tmp_path / "o" / "report.json").is_file()  # the numbers are written


# ------------------------------------------------------------------------------ CLI
STRATEGY_FILE = textwrap.dedent('''
    import numpy as np
    import backtrader as bt
    from m2k_bt.strategies import M2KStrategy


    def bollinger(bars, period=20, devs=2.0):
        df = bars
        df["Middle Band"] = df["close"].rolling(window=period).mean()
        df["Upper Band"] = df["Middle Band"] + devs * df["close"].rolling(window=period).std()
        df["Lower Band"] = df["Middle Band"] - devs * df["close"].rolling(window=period).std()
        df["Signal"] = np.where(df["close"] < df["Lower Band"], 1, 0)
        df["Signal"] = np.where(df["close"] > df["Upper Band"], -1, df["Signal"])
        return df


    def short_one(bars):
        return np.ones(len(bars) - 1)


    def three(bars):
        return np.full(len(bars), 3)


    def peeks(bars):
        return np.sign(bars["close"].shift(-1) - bars["close"])


    class Breakout(M2KStrategy):
        params = (("lookback", 20),)

        def __init__(self):
            super().__init__()
            self.top = bt.ind.Highest(self.data.high(-1), period=self.p.lookback)

        def direction(self):
            return 1 if self.data.close[0] > self.top[0] else None
''')


@pytest.fixture
def strategy_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(STRATEGY_FILE)
    return path


def _report(folder):
    import json

    return json.loads((folder / "report.json").read_text())


def test_cli_runs_a_signal_function_from_a_file_in_both_engines(strategy_file, rth_csv,
                                                                 tmp_path, capsys):
    from m2k_bt.cli.backtest import main

    outs = {}
    for engine in ("kernel", "cerebro"):
        out = tmp_path / engine
        assert main(["--data", rth_csv, "--strategy", f"{strategy_file}:bollinger", "--param",
                     "period=15", "--engine", engine, "--out", str(out), "--quiet",
                     "--no-plot"]) == 0
        outs[engine] = _report(out)
    assert outs["kernel"]["engine"] == "kernel" and outs["cerebro"]["engine"] == "cerebro"
    assert outs["kernel"]["results"] == outs["cerebro"]["results"]
    assert (tmp_path / "kernel" / "trades.csv").read_text() == \
        (tmp_path / "cerebro" / "trades.csv").read_text()
    params = outs["kernel"]["inputs"]["strategy"]["params"]
    assert params["period"] == 15 and params["devs"] == 2.0
    assert outs["kernel"]["lookahead_check"]["cuts"] == 8
    assert outs["kernel"]["overview"]["changed_params"]["strategy"] == {"period": 15}


def test_cli_runs_a_per_bar_class_from_a_file_saying_the_kernel_does_not(strategy_file,
                                                                         rth_csv, tmp_path,
                                                                         capsys):
    from m2k_bt.cli.backtest import main

    out = tmp_path / "o"
    assert main(["--data", rth_csv, "--strategy", f"{strategy_file}:Breakout", "--engine",
                 "kernel", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "running in cerebro" in err and "per-bar" in err
    assert (out / "report.html").is_file() and _report(out)["engine"] == "cerebro"


def test_cli_runs_a_module_strategy_and_optimises_a_file_strategy_s_parameters(
        strategy_file, rth_csv, tmp_path, capsys):
    import json

    from m2k_bt.cli.backtest import main

    assert main(["--data", rth_csv, "--strategy", "m2k_bt.strategies.vectorised:SmaSignal",
                 "--param", "fast=10", "--param", "slow=30", "--out", str(tmp_path / "m"),
                 "--quiet", "--no-plot"]) == 0
    assert _report(tmp_path / "m")["inputs"]["strategy"]["params"]["fast"] == 10
    out = tmp_path / "opt"
    assert main(["optimize", "--data", rth_csv, "--strategy", f"{strategy_file}:bollinger",
                 "--space", "period=10:30:10", "devs=1.5,2.0", "--sampler", "grid",
                 "--min-trades", "0", "--workers", "1", "--out", str(out), "--quiet"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 6  # 3 periods x 2 widths, each once
    assert sorted(zip(trials["param_period"], trials["param_devs"])) == [
        (p, d) for p in (10, 20, 30) for d in (1.5, 2.0)]
    assert json.loads((out / "optimize.json").read_text())["best_params"]["period"] in (10, 20,
                                                                                        30)


@pytest.mark.parametrize("strategy, extra, needle", [
    ("{f}:bolinger", [], "has no 'bolinger' (did you mean 'bollinger'?)"),
    ("{d}/nope.py:bollinger", [], "strategy file"),
    ("{f}:bollinger", ["--param", "perod=3"], "unknown bollinger parameter 'perod' (did you "
                                               "mean 'period'?)"),
    ("{f}:short_one", [], "values for 'direction' on"),
    ("{f}:three", [], "'direction' must be -1, 0, +1 or NaN, got 3"),
    ("no_such_module_xyz:thing", [], "no module named 'no_such_module_xyz'"),
])
def test_cli_strategy_mistakes_are_one_line_exit_2(strategy, extra, needle, strategy_file,
                                                   rth_csv, tmp_path, capsys):
    spec = strategy.format(f=strategy_file, d=tmp_path)
    one_line_exit_2(["--data", rth_csv, "--strategy", spec, *extra, "--out",
                     str(tmp_path / "o"), "--quiet", "--no-plot"], capsys, needle)


def test_signal_strategy_recomputes_on_the_history_in_a_live_run():
    """A live feed has no preloaded data: the signal is computed again on the bars so far at
    each new bar, so each bar's direction is the one a backtest on those bars gives, and a
    replay trades what the backtest trades."""
    from m2k_bt.engine.cerebro import build_cerebro
    from m2k_bt.feeds.live import QueueFeed, ReplaySource

    bars = make_bars(260, seed=4)
    calls = []

    def counting(b, fast=5, slow=20):
        calls.append(len(b))
        return article_sma(b, fast, slow)

    config = BacktestConfig(strategy=counting, sizer="fixed", params={"lookahead_check": False})
    backtest = run_backtest(bars, config)
    calls.clear()
    live = config.replace(runonce=False, preload=False)
    feed = QueueFeed(source=ReplaySource(bars), max_ahead=None, compression=5)
    cerebro, _ = build_cerebro(None, live, feed=feed)
    strategy = cerebro.run()[0]
    assert calls == list(range(1, 261))  # once per bar, on the history up to it
    assert strategy.trade_log == backtest.trades and len(backtest.trades) > 3


def test_cli_walk_forward_and_list_strategies_take_a_file_strategy(strategy_file, rth_csv,
                                                                   tmp_path, capsys):
    import json

    from m2k_bt.cli.backtest import main

    out = tmp_path / "wf"
    assert main(["walkforward", "--data", rth_csv, "--strategy", f"{strategy_file}:bollinger",
                 "--space", "period=10:30:10", "--sampler", "grid", "--sizer", "fixed",
                 "--min-trades", "0", "--is", "10D", "--oos", "5D", "--workers", "1",
                 "--out", str(out), "--quiet"]) == 0
    folds = json.loads((out / "walkforward.json").read_text())
    assert folds["folds"]
    assert all(f["best_params"]["period"] in (10, 20, 30) for f in folds["folds"])
    assert {f["oos_engine"] for f in folds["folds"]} == {"kernel"}
    assert all(f["engines_agree"] for f in folds["folds"])  # each fold checked in cerebro
    capsys.readouterr()
    assert main(["--list-strategies"]) == 0
    assert "--strategy FILE.py:NAME" in capsys.readouterr().out


def test_report_html_draws_a_signal_s_extra_columns_in_both_engines(tmp_path):
    from m2k_bt.report import write_outputs

    bars = make_bars(900, seed=2)
    for run in (run_backtest, simulate):
        res = run(bars, BacktestConfig(strategy=article_sma, plot=True, sizer="fixed"))
        html = write_outputs(res, tmp_path / run.__name__)["html"].read_text()
        assert "SMA_fast" in html and "SMA_slow" in html, run.__name__


def test_cli_look_ahead_is_an_error_unless_no_lookahead_check(strategy_file, rth_csv, tmp_path,
                                                              capsys):
    from m2k_bt.cli.backtest import main

    base = ["--data", rth_csv, "--strategy", f"{strategy_file}:peeks", "--quiet", "--no-plot",
            "--sizer", "fixed"]
    one_line_exit_2([*base, "--out", str(tmp_path / "a")], capsys,
                    "signal peeks looks ahead: 'direction' on bar")
    assert main([*base, "--out", str(tmp_path / "b"), "--no-lookahead-check"]) == 0
    assert _report(tmp_path / "b")["lookahead_check"] is None
    one_line_exit_2(["--data", rth_csv, "--no-lookahead-check", "--out", str(tmp_path / "c"),
                     "--quiet"], capsys, "--no-lookahead-check applies to signal strategies")


def test_a_study_checks_look_ahead_once_before_its_trials_and_again_on_the_winner(
        monkeypatch):
    """A study does not pay the look-ahead check in every trial: once before the trials (on
    the space's first point), trials without it, and the winner checked again in both
    engines when the study verifies it. A leak stops the study before any trial."""
    import m2k_bt.optimize.cerebro_check as cerebro_check
    from m2k_bt.optimize.study import optimize
    from m2k_bt.strategies.signals import LOOKAHEAD_CUTS

    # the winner's cerebro check runs here, where its signal calls are counted (forked, as
    # it is when this process runs no other thread, its calls would be the child's)
    monkeypatch.setattr(cerebro_check, "BEHIND", False)

    bars = make_bars(900, seed=8)
    calls = []

    def counted(b, fast=5, slow=20):
        calls.append(len(b))
        return article_sma(b, fast, slow)

    res = optimize(bars, BacktestConfig(strategy=counted, sizer="fixed"),
                   ["fast=3:6:1", "slow=20:30:10"], sampler="grid", workers=1, quiet=True,
                   overfitting=False, min_trades=0)
    checks = LOOKAHEAD_CUTS + 1  # the whole run and one per cut
    # 8 trials, 1 check before them, the winner re-run with its check in kernel and cerebro
    assert res.n_complete + res.n_infeasible == 8
    assert len(calls) == checks + 8 + 2 * checks
    assert calls.count(len(bars)) == 1 + 8 + 2  # whole-bar runs; the rest are cut
    done = res.settings["lookahead_check"]
    assert done["params"] == {"fast": 3, "slow": 20} and done["cuts"] == LOOKAHEAD_CUTS
    assert "once before the trials" in done["where"]
    # told to skip: no check anywhere, no report
    calls.clear()
    res = optimize(bars, BacktestConfig(strategy=counted, sizer="fixed",
                                        params={"lookahead_check": False}),
                   ["fast=3:6:1", "slow=20:30:10"], sampler="grid", workers=1, quiet=True,
                   overfitting=False, min_trades=0)
    # 8 trials and the winner's cerebro run (the kernel's re-run of the winner reuses its
    # trial's signal, kept per parameter set)
    assert len(calls) == 8 + 1 and "lookahead_check" not in res.settings
    # a leak: an error before any trial
    def leaky(b, k=1):
        calls.append(len(b))
        return np.sign(b["close"].shift(-k) - b["close"])

    calls.clear()
    with pytest.raises(LookaheadError):
        optimize(bars, BacktestConfig(strategy=leaky, sizer="fixed"), ["k=1:3:1"],
                 sampler="grid", workers=1, quiet=True, overfitting=False)
    assert len(calls) == 2  # the whole run and the first cut: no trial ran
