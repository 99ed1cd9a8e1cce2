"""Issue 21, "exact to the last bit": both engines refuse the same bars, never answer from
stale data, book money in integer cents, model a cut-back that meets the strategy's own close,
and write the same files. Each test here failed before the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_bars

from m2k_bt.engine import BacktestConfig, run_backtest
from m2k_bt.errors import ParameterError
from m2k_bt.kernel.simulation import run_backtest_fast, simulate

SMA = BacktestConfig(strategy="sma", sizer="fixed", params={"fast": 5, "slow": 20})


# ------------------------------------------------------------------ 2. one validation
def _duplicate(bars):
    return pd.concat([bars.iloc[:200], bars.iloc[199:200], bars.iloc[200:]])


@pytest.mark.parametrize("spoil", [
    _duplicate,                                     # a duplicate timestamp
    lambda b: b.iloc[::-1],                         # a reversed index
    lambda b: b.drop(columns="volume"),             # no volume column
], ids=["duplicate", "reversed", "no-volume"])
def test_the_kernel_refuses_the_bars_cerebro_refuses(spoil):
    bad = spoil(make_bars(600, seed=3))
    with pytest.raises(ParameterError) as ref:
        run_backtest(bad, SMA)
    with pytest.raises(ParameterError) as got:
        simulate(bad, SMA)
    assert str(got.value) == str(ref.value)
    with pytest.raises(ParameterError):
        run_backtest_fast(bad, SMA)


# ------------------------------------------------------------------ 3. no stale cache
def test_run_backtest_fast_sees_bars_edited_in_place():
    bars = make_bars(1500, seed=8)
    first = run_backtest_fast(bars, SMA)
    assert first.final_value == simulate(bars, SMA).final_value
    # the same frame, its prices moved in place: the cached indicators are no longer valid
    for col in ("open", "high", "low", "close"):
        bars[col] = np.round(bars[col].to_numpy()[::-1].copy(), 1)
    bars["high"] = bars[["open", "high", "low", "close"]].max(axis=1)
    bars["low"] = bars[["open", "high", "low", "close"]].min(axis=1)
    again = run_backtest_fast(bars, SMA)
    ref = run_backtest(bars, SMA)
    assert len(again.trades) == len(ref.trades)
    assert abs(again.final_value - ref.final_value) < 0.005
    assert again.final_value != first.final_value


# ------------------------------------------------------------------ 1. money in integers
BUNDLED_1MIN = __import__("pathlib").Path(__file__).resolve().parents[1] / "datafeeds" / \
    "m2k_1min.csv.gz"


def test_a_slipped_fill_is_on_the_grid():
    from m2k_bt.rules import prices

    # 1824.2 - 0.1 is 1824.1000000000001 in floats; one tick = 50 cents of an M2K contract
    assert 1824.2 - 0.1 != 1824.1
    slip = prices.slip_cents(1, 0.1, 500)            # 1 tick x 0.1 pt x $5 x 100 = 50 cents
    assert slip == 50
    assert prices.slip_down(1824.2, 1800.0, slip, 500) == 1824.1
    assert prices.slip_up(1824.2, 1900.0, slip, 500) == 1824.3


def test_f_star_exactly_zero_is_no_edge():
    from m2k_bt.rules import kelly

    # wins 3 x $20, losses 2 x $30 (per contract, in 1/100 cents): p = 0.6, b = 20 / 30,
    # f* = (2/3 x 0.6 - 0.4) / (2/3) = 0 exactly: no edge, in both engines
    values = np.array([200_000, -300_000, 200_000, -300_000, 200_000], np.int64)
    wins, won, losses, lost = kelly.tally(values, 0, 5)
    # $25,000 equity and free cash, one contract worth 2000 x $5 = 1,000,000 cents, margin $770
    out = kelly.decide(5, 5, 1, wins, won, losses, lost, np.nan, 2_500_000, 2_500_000,
                       1_000_000, 77_000, 0.5, 0.2, 2, 1, 50)
    contracts, binding, p, b, f_star = out[:5]
    assert (contracts, kelly.BINDINGS[binding], f_star) == (0, "no_edge", 0.0)


@pytest.mark.skipif(not BUNDLED_1MIN.exists(), reason="bundled 1-minute data not present")
def test_issue_reproducer_break_even_trade_is_no_win_in_either_engine():
    from m2k_bt.feeds import load_bars

    bars = load_bars(BUNDLED_1MIN)
    config = BacktestConfig(
        strategy="adaptive", params={"period_low": 27, "devfactor": 1.4, "ddof": 0},
        sizer="kelly", sizer_params={"max_exposure": 50.0, "lookback": 20, "min_trades": 10},
        commission=0.0, slippage_ticks=1.0, start="2024-09-09", end="2024-09-16")
    ref = run_backtest(bars, config)
    got = simulate(bars, config)
    assert any(t["net_pnl"] == 0.0 for t in ref.trades)  # the break-even trades are there
    assert [(t["exit_dt"], t["contracts"], t["net_pnl"], t["kelly_p"]) for t in got.trades] == \
        [(t["exit_dt"], t["contracts"], t["net_pnl"], t["kelly_p"]) for t in ref.trades]
    assert round(got.final_value, 2) == round(ref.final_value, 2)


# ------------------------------------------------------------------ 4. the same files
def _run_cli(tmp_path, name, data_csv, *extra):
    import json

    from m2k_bt.cli.backtest import main

    out = tmp_path / name
    assert main(["--data", data_csv, "--out", str(out), "--param", "fast=10", "--param",
                 "slow=30", "--slippage-ticks", "1", "--sizer", "kelly", "--sizer-param",
                 "min_trades=3", "--sizer-param", "lookback=6", "--no-plot", "--quiet",
                 *extra]) == 0
    text = (out / "report.json").read_text()
    return json.loads(text), (out / "trades.csv").read_text(), (out / "equity.csv").read_text(), \
        text


def _without_engine_and_timings(report: dict) -> dict:
    import re

    drop = re.compile(r"generated_at|elapsed|engine|seconds")

    def norm(o):
        if isinstance(o, dict):
            return {k: norm(v) for k, v in o.items() if not drop.search(k)}
        if isinstance(o, list):
            return [norm(v) for v in o]
        return o
    return norm(report)


def test_engine_kernel_writes_the_same_files_as_cerebro(tmp_path, capsys):
    from conftest import rth_bars, write_bars_csv

    data_csv = write_bars_csv(rth_bars(), tmp_path / "m2k_5min.csv")
    ref, ref_trades, ref_equity, ref_text = _run_cli(tmp_path, "cerebro", data_csv)
    got, got_trades, got_equity, got_text = _run_cli(tmp_path, "kernel", data_csv, "--engine",
                                                     "kernel")
    assert "running in cerebro" not in capsys.readouterr().err
    assert (ref["engine"], got["engine"]) == ("cerebro", "kernel")
    # every parameter, defaults included, with its type; the sizer's class
    assert got["inputs"]["strategy"] == ref["inputs"]["strategy"]
    assert got["inputs"]["sizer"] == ref["inputs"]["sizer"]
    assert got["inputs"]["sizer"]["class"] == "KellySizer"
    assert got["inputs"]["strategy"]["params"]["fast"] == 10
    assert _without_engine_and_timings(got) == _without_engine_and_timings(ref)
    assert got_trades == ref_trades and got_equity == ref_equity
    # byte for byte: the JSON text too (1 and 1.0 are equal as values, not as text)

    def lines(text):
        return [x for x in text.splitlines()
                if not any(k in x for k in ('"generated_at"', '"engine"', '"elapsed'))]
    assert lines(got_text) == lines(ref_text)
    # money in dollars and cents: gross_pnl, commission, net_pnl
    header, first = ref_trades.splitlines()[:2]
    cells = dict(zip(header.split(","), first.split(",")))
    for key in ("gross_pnl", "commission", "net_pnl"):
        assert len(cells[key].split(".")[1]) == 2, cells


# ------------------------------------------------------------------ 5. partly executed order
def test_own_close_on_the_bar_of_an_intraday_cutback_is_modelled():
    from test_kernel import assert_parity

    from m2k_bt.kernel.simulation import run_kernel_or_say_why

    # 5-minute bars from 15:00, rising (a long of 10 from 15:15, SMA(2) over SMA(3)), then the
    # close at 15:45, the first bar after the intraday window, drops below the averages: the
    # broker cuts 10 back to what $3,000 supports overnight, floor(equity / $770) = 3 (a
    # market order for 7), and the strategy closes its 10 on the same bar. At 15:50 the cut
    # fills first, then the close of 10 meets a position of 3: it closes the 3 (Partial) and
    # the other 7 would open a short needing 7 x $770 of margin: Margin.
    closes = [2000.0, 2001.0, 2002.0, 2003.0, 2004.0, 2005.0, 2006.0, 2007.0, 2008.0, 2000.0,
              2000.0, 2000.0]
    rows = [(c, c + 0.5, c - 0.5, c) for c in closes]
    idx = pd.date_range("2024-03-04 15:00", periods=len(rows), freq="5min",
                        tz="America/New_York", name="datetime")
    o, h, lo, c = (np.array(col) for col in zip(*rows))
    bars = pd.DataFrame({"open": o, "high": h, "low": lo, "close": c, "volume": 100.0},
                        index=idx)
    config = BacktestConfig(strategy="sma", sizer="fixed", sizer_params={"contracts": 10},
                            params={"fast": 2, "slow": 3, "long_only": True}, cash=3000.0,
                            intraday_margin=150.0, slippage_ticks=1.0)
    assert run_kernel_or_say_why(bars, config) is not None  # no fallback to cerebro
    ref, got = assert_parity(bars, config)
    assert [e.kind for e in got.margin_events] == ["intraday_cutback"]
    assert got.kernel.order_rejections == {"Margin": 1}
    (trade,) = got.trades
    # 10 long: 7 cut back (reason margin_call would need the whole trade), the last 3 closed by
    # the strategy's own order: the trade ends with it, reason signal
    assert (trade["contracts"], trade["exit_reason"]) == (10, "signal")
