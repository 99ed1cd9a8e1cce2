"""The built-in strategies written as signal strategies (:mod:`.signals`).

:class:`SmaSignal`, :class:`BollingerSignal` and :class:`AdaptiveSignal` take the parameters of
:class:`~m2k_bt.strategies.sma.SmaCrossover`,
:class:`~m2k_bt.strategies.bands.BollingerReversion` and
:class:`~m2k_bt.strategies.bands.AdaptiveBollinger` (they inherit their checks and indicators,
so report.html draws the same lines) and compute the same directions for all bars at once, with
the same exact integer-tick arithmetic (:func:`~m2k_bt.indicators.bands.sma_directions`,
:func:`~m2k_bt.indicators.bands.band_arrays`); ``tests/test_signal_strategies.py`` proves each
gives the trades of its per-bar version. They are also templates for a signal strategy of one's
own that needs stops, exits or entry filters."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..indicators.bands import (
    adaptive_windows,
    band_arrays,
    sma_directions,
    tick_counts,
    window_sums,
)
from .bands import AdaptiveBollinger, BollingerReversion
from .signals import SignalStrategy, bt_indicator
from .sma import SmaCrossover

__all__ = ["SmaSignal", "BollingerSignal", "AdaptiveSignal", "SIGNAL_TWINS", "twin_of"]


def _frame(index, direction, **cols) -> pd.DataFrame:
    return pd.DataFrame({"direction": direction, **cols}, index=index)


def _filter(direction: np.ndarray, values: np.ndarray) -> None:
    """No opinion where an entry filter's indicator is still warming up (the per-bar version
    is not called before its indicators' warm-up)."""
    direction[np.isnan(values)] = np.nan


class SmaSignal(SignalStrategy, SmaCrossover):
    """:class:`~m2k_bt.strategies.sma.SmaCrossover` as a signal: +1 where the fast SMA is above
    the slow one (exactly, in ticks), else -1; no opinion before the slow SMA exists; the ADX
    filter as ``long_ok``/``short_ok``."""

    signal_params = ("fast", "slow", "adx_min", "adx_period")

    def signal(self, bars):
        p = self.p
        ct = tick_counts(bars["close"].to_numpy(), self.tick)
        d = sma_directions(window_sums(ct, p.fast)[0], p.fast, window_sums(ct, p.slow)[0],
                           p.slow).astype("float64")
        d[: p.slow - 1] = np.nan
        cols = {}
        if p.adx_min is not None:
            adx = bt_indicator(bars, "ADX", period=p.adx_period)
            _filter(d, adx)
            with np.errstate(invalid="ignore"):
                cols["long_ok"] = cols["short_ok"] = adx >= p.adx_min
        return _frame(bars.index, d, **cols)


class _BandSignal(SignalStrategy):
    """The band rules as a signal: the band direction where the close is outside the bands;
    with ``exit="middle"`` no opinion inside them (the position is kept) and ``exit_long`` /
    ``exit_short`` where the close is back at the middle band; the RSI filter as
    ``long_ok``/``short_ok``."""

    def _sums(self, bars) -> tuple[np.ndarray, ...]:
        """(close ticks, window sums, window sums of squares, window) on every bar."""
        raise NotImplementedError

    def _warmup(self) -> int:
        raise NotImplementedError

    def signal(self, bars):
        p = self.p
        ct, s, q, n = self._sums(bars)
        band, mid = band_arrays(ct, s, q, n, p.devfactor, p.ddof)
        d = band.astype("float64")
        cols = {}
        if p.exit != "signal":
            d[band == 0] = np.nan
            cols = {"exit_long": mid >= 0, "exit_short": mid <= 0}
        d[: self._warmup() - 1] = np.nan
        if p.rsi_oversold is not None or p.rsi_overbought is not None:
            rsi = bt_indicator(bars, "RSI", period=p.rsi_period, safediv=True, source="close")
            _filter(d, rsi)
            with np.errstate(invalid="ignore"):
                n_ = len(d)
                cols["long_ok"] = rsi < p.rsi_oversold if p.rsi_oversold is not None else \
                    np.ones(n_, dtype=bool)
                cols["short_ok"] = rsi > p.rsi_overbought if p.rsi_overbought is not None else \
                    np.ones(n_, dtype=bool)
        return _frame(bars.index, d, **cols)


class BollingerSignal(_BandSignal, BollingerReversion):
    """:class:`~m2k_bt.strategies.bands.BollingerReversion` as a signal."""

    signal_params = ("period", "devfactor", "ddof", "exit", "rsi_period", "rsi_oversold",
                     "rsi_overbought")

    def _sums(self, bars):
        ct = tick_counts(bars["close"].to_numpy(), self.tick)
        s, q = window_sums(ct, self.p.period)
        return ct, s, q, self.p.period

    def _warmup(self) -> int:
        return self.p.period


class AdaptiveSignal(_BandSignal, AdaptiveBollinger):
    """:class:`~m2k_bt.strategies.bands.AdaptiveBollinger` as a signal."""

    signal_params = ("period_high", "period_low", "vol_lookback", "vol_threshold", "devfactor",
                     "ddof", "exit", "rsi_period", "rsi_oversold", "rsi_overbought")

    def _sums(self, bars):
        p = self.p
        close = bars["close"].to_numpy(dtype="float64")
        ct = tick_counts(close, self.tick)
        window = adaptive_windows(close, p.period_high, p.period_low, p.vol_lookback,
                                  p.vol_threshold)
        sh, qh = window_sums(ct, p.period_high)
        sl, ql = window_sums(ct, p.period_low)
        high = window == p.period_high
        return (ct, np.where(high, sh, sl), np.where(high, qh, ql),
                np.where(window > 0, window, p.period_low))

    def _warmup(self) -> int:
        p = self.p
        return max(p.vol_lookback + 1, p.period_high, p.period_low)


#: Each built-in per-bar strategy and its signal version.
SIGNAL_TWINS = {SmaCrossover: SmaSignal, BollingerReversion: BollingerSignal,
                AdaptiveBollinger: AdaptiveSignal}


def twin_of(cls: type) -> type | None:
    """The signal version of a built-in strategy class (itself for a signal version); ``None``
    for any other class."""
    if cls in SIGNAL_TWINS.values():
        return cls
    return SIGNAL_TWINS.get(cls)
