"""Shared test data builders. Tests never read ../shared: they make their own bars."""

from __future__ import annotations

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

NY = "America/New_York"


def pytest_configure(config) -> None:
    """The cache of validated bars (m2k_bt.feeds.cache) of this test run lives in a temporary
    folder, never in the user's ~/.cache (child processes inherit it)."""
    import os
    import tempfile

    os.environ["M2K_CACHE_DIR"] = tempfile.mkdtemp(prefix="m2k-test-cache-")


def make_bars(
    n: int = 1000,
    seed: int = 0,
    freq: str = "5min",
    start: str = "2024-01-02 09:30",
    price: float = 2000.0,
    vol: float = 0.0015,
    tick: float = 0.10,
) -> pd.DataFrame:
    """A deterministic random walk of ``n`` OHLCV bars on the 0.10 tick grid.

    The index is tz-aware New York time and continuous (no session gaps): fit for strategy and
    broker tests, not for session validation. ``vol`` is the per-bar return standard deviation.
    """
    rng = np.random.default_rng(seed)
    rets = rng.normal(0.0, vol, n)
    close = price * np.exp(np.cumsum(rets))
    close = np.round(close / tick) * tick
    open_ = np.empty(n)
    open_[0] = price
    open_[1:] = close[:-1]
    span = np.abs(rng.normal(0.0, vol, n)) * close
    high = np.maximum(open_, close) + np.round(span / tick) * tick
    low = np.minimum(open_, close) - np.round(span / tick) * tick
    idx = pd.date_range(start, periods=n, freq=freq, tz=NY)
    df = pd.DataFrame(
        {
            "open": np.round(open_, 2),
            "high": np.round(high, 2),
            "low": np.round(low, 2),
            "close": np.round(close, 2),
            "volume": rng.integers(100, 2000, n).astype(float),
        },
        index=idx,
    )
    df.index.name = "datetime"
    return df


def pandas_feed(df: pd.DataFrame, **kwargs) -> bt.feeds.PandasData:
    """backtrader's own PandasData over ``df`` (index made naive New York time)."""
    naive = df.copy()
    if naive.index.tz is not None:
        naive.index = naive.index.tz_convert(NY).tz_localize(None)
    return bt.feeds.PandasData(dataname=naive, openinterest=None, **kwargs)


@pytest.fixture
def bars() -> pd.DataFrame:
    return make_bars()


def rth_bars(start: str = "2024-02-20", end: str = "2024-03-28", seed: int = 1,
             freq: str = "5min", vol: float = 0.002) -> pd.DataFrame:
    """5-minute bars 09:35-16:00 New York on the weekdays of [start, end].

    The default range has no CME holiday or early close, so the bars pass strict validation
    (tick grid and Globex session) as a file written with :func:`write_bars_csv`.
    """
    days = pd.bdate_range(start, end)
    stamps = [
        t
        for d in days
        for t in pd.date_range(f"{d.date()} 09:35", f"{d.date()} 16:00", freq=freq, tz=NY)
    ]
    df = make_bars(len(stamps), seed=seed, vol=vol)
    df.index = pd.DatetimeIndex(stamps, name="datetime")
    return df


def write_bars_csv(df: pd.DataFrame, path) -> str:
    """Write bars as the generic CSV format (ISO timestamps with their UTC offset)."""
    out = df.copy()
    out.index = out.index.map(lambda t: t.isoformat())
    out.to_csv(path, index_label="datetime")
    return str(path)


def kernel_off_by_a_dollar(monkeypatch) -> None:
    """Make the kernel's final equity $1 higher than it is, so that a run verifying it
    against cerebro must fail (the engines-disagree tests)."""
    import m2k_bt.kernel.simulation as kernel
    from m2k_bt.kernel.figures import M_END

    real = kernel._run  # what simulate reads

    def off_by_a_dollar(bars, config=None):
        run = real(bars, config)
        run.out[0][-1] += 1.0  # the last bar's account value
        return run

    real_block = kernel.block_figures  # what a study trial's figures read

    def block_off_by_a_dollar(*args):
        moments, day_values, nets, offsets, codes = real_block(*args)
        moments[:, M_END] += 1.0  # the last bar's account value
        day_values[:, -1] += 1.0  # it is the last trade date's last bar
        return moments, day_values, nets, offsets, codes

    monkeypatch.setattr(kernel, "_run", off_by_a_dollar)
    monkeypatch.setattr(kernel, "block_figures", block_off_by_a_dollar)


@pytest.fixture(scope="module")
def rth_csv(tmp_path_factory) -> str:
    """:func:`rth_bars` written as a CSV file, once per test module."""
    return write_bars_csv(rth_bars(), tmp_path_factory.mktemp("data") / "m2k_test_5min.csv")


def one_line_exit_2(argv: list[str], capsys, needle: str) -> str:
    """Run the command line on ``argv``: exit status 2 and one line ``error: ...`` on stderr
    holding ``needle``; returns that line."""
    from m2k_bt.cli.backtest import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert needle in err, err
    return err
