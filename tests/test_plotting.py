"""Plots render headless, at the size asked, with readable windows for long runs."""

from __future__ import annotations

import struct

import backtrader as bt
import matplotlib
import pandas as pd
import pytest
from conftest import make_bars, pandas_feed

from m2k_bt.errors import ConfigError
from m2k_bt.report.plot import plot_backtrader, plot_equity


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


class SmaCross(bt.Strategy):
    def __init__(self):
        self.cross = bt.ind.CrossOver(bt.ind.SMA(period=10), bt.ind.SMA(period=30))

    def next(self):
        if self.cross > 0:
            self.buy(size=1) if not self.position else None
        elif self.cross < 0 and self.position:
            self.close()


def ran_cerebro(n: int) -> bt.Cerebro:
    cerebro = bt.Cerebro()
    cerebro.adddata(
        pandas_feed(make_bars(n, seed=2), timeframe=bt.TimeFrame.Minutes, compression=5),
        name="M2K",
    )
    cerebro.broker.setcommission(
        commission=0.62, margin=770, mult=5, commtype=bt.CommInfoBase.COMM_FIXED, stocklike=False
    )
    cerebro.addstrategy(SmaCross)
    cerebro.run()
    return cerebro


def test_plot_backtrader_headless(tmp_path):
    path = plot_backtrader(ran_cerebro(200), tmp_path / "plot.png")
    assert png_size(path) == (1600, 900)  # 16 x 9 inches at 100 dpi
    assert path.stat().st_size > 20_000  # a drawn chart, not an empty canvas
    assert matplotlib.get_backend().lower() == "agg"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left


def test_plot_backtrader_long_run_shows_a_recent_window(tmp_path, monkeypatch):
    cerebro = ran_cerebro(1200)
    seen = {}
    original = bt.Cerebro.plot

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(bt.Cerebro, "plot", spy)
    path = plot_backtrader(cerebro, tmp_path / "p.png", max_bars=400, size=(12, 6), dpi=80)
    # 1200 bars, window of 400: start index 800, drawn as a line (more than 300 bars)
    assert (seen["start"], seen["end"], seen["style"]) == (800, 1200, "line")
    assert png_size(path) == (960, 480)


def test_plot_backtrader_short_run_uses_candles(tmp_path, monkeypatch):
    cerebro = ran_cerebro(120)
    seen = {}
    original = bt.Cerebro.plot

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(bt.Cerebro, "plot", spy)
    plot_backtrader(cerebro, tmp_path / "p.png")
    assert (seen["start"], seen["style"]) == (0, "candle")


def test_plot_backtrader_needs_a_finished_run(tmp_path):
    with pytest.raises(ConfigError, match="cerebro.run"):
        plot_backtrader(bt.Cerebro(), tmp_path / "p.png")
    with pytest.raises(ConfigError, match="max_bars"):
        plot_backtrader(ran_cerebro(50), tmp_path / "p.png", max_bars=1)
    assert list(tmp_path.iterdir()) == []


def test_plot_equity_headless(tmp_path):
    idx = pd.date_range("2024-03-04 09:30", periods=300, freq="5min")
    value = pd.Series(10_000 + (pd.Series(range(300)) % 37 - 18).cumsum().to_numpy() * 5.0, idx)
    df = pd.DataFrame({"value": value})  # no drawdown column: computed from value
    path = plot_equity(df, tmp_path / "equity.png")
    assert png_size(path) == (1320, 770)  # 12 x 7 inches at 110 dpi
    assert path.stat().st_size > 20_000


def test_plot_equity_rejects_empty_frames(tmp_path):
    with pytest.raises(ConfigError, match="value"):
        plot_equity(pd.DataFrame(), tmp_path / "e.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_shows_the_window_of_the_last_trades_with_plain_legends(tmp_path, monkeypatch):
    from m2k_bt.engine import BacktestConfig, run_backtest

    # 6,000 bars, SMA 10/30 crossovers; the strategy's trades decide the window
    result = run_backtest(make_bars(6000, seed=4), BacktestConfig(
        params={"fast": 10, "slow": 30}, sizer="fixed", plot=True))
    seen = {}
    original = bt.Cerebro.plot

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(bt.Cerebro, "plot", spy)
    plot_backtrader(result.cerebro, tmp_path / "p.png", max_bars=1000, last_trades=5)
    times = pd.DatetimeIndex(result.equity.index)
    entries = [times.get_loc(pd.Timestamp(t["entry_dt"])) for t in result.trades]
    exits = [times.get_loc(pd.Timestamp(t["exit_dt"])) for t in result.trades]
    # from the 5th last entry minus 1000 // 60 = 16 bars to the last exit plus 16 bars
    assert seen["start"] == entries[-5] - 16
    assert seen["end"] == min(6000, exits[-1] + 17)
    assert seen["end"] - seen["start"] <= 1000
    labels = {type(o).__name__: o.plotlabel() for o in result.strategy.getobservers()}
    assert labels == {"BuySell": "buy / sell", "Value": "account value"}  # no "(True, 0.002)"


def test_plot_has_one_legend_entry_per_mark_and_volume_under_the_price(tmp_path, monkeypatch):
    from m2k_bt.engine import BacktestConfig, run_backtest
    from m2k_bt.report import plot as plot_module

    result = run_backtest(make_bars(600, seed=4), BacktestConfig(
        params={"fast": 10, "slow": 30}, sizer="fixed", plot=True))
    seen = {}

    def capture(fig, path, dpi):
        seen["legends"] = [[t.get_text() for t in ax.get_legend().get_texts()]
                           for ax in fig.axes if ax.get_legend() is not None]
        seen["volume"] = [ax for ax in fig.axes if ax.get_legend() is not None and any(
            t.get_text().startswith("Volume") for t in ax.get_legend().get_texts())]
        seen["price"] = [ax for ax in fig.axes if ax.get_legend() is not None and any(
            t.get_text() == "buy" for t in ax.get_legend().get_texts())]
        return path

    monkeypatch.setattr(plot_module, "_save_atomic", capture)
    plot_backtrader(result.cerebro, tmp_path / "p.png")
    labels = [label for legend in seen["legends"] for label in legend]
    assert labels.count("buy") == 1 and labels.count("sell") == 1
    assert not [label for label in labels if "\n" in label or label == "buy / sell"]
    assert any(label.startswith("account value ") for label in labels)
    # volume has an axis of its own, below the price's
    (volume,), (price,) = seen["volume"], seen["price"]
    assert volume is not price
    assert volume.get_position().y1 <= price.get_position().y0 + 1e-9
