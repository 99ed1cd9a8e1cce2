"""Mean reversion on Bollinger bands: the article's fixed-window and volatility-adjusted bands."""

from __future__ import annotations

import backtrader as bt

from ..errors import ParameterError
from ..indicators.bands import AdaptiveBollingerBands, BollingerBandsDdof, TickSums, band_side
from .base import M2KStrategy

__all__ = ["BollingerReversion", "AdaptiveBollinger"]


class _BandReversion(M2KStrategy):
    """Shared rules of the Bollinger strategies: fade the bands; exit at the middle band or when
    the band direction changes (``exit``).

    A subclass makes the bands (:meth:`_make_bands`) and says which windows it uses
    (:meth:`_band_periods`) and which one holds on this bar (:meth:`_window_now`).
    """

    params = (
        ("devfactor", 2.0),
        ("ddof", 1),
        ("exit", "middle"),
        ("rsi_period", 14),
        ("rsi_oversold", None),
        ("rsi_overbought", None),
    )
    _optional_types = {"rsi_oversold": float, "rsi_overbought": float}

    @classmethod
    def _check_params(cls, v: dict) -> None:
        super()._check_params(v)
        name = cls.__name__
        if not v["devfactor"] > 0:
            raise ParameterError(f"{name} parameter 'devfactor' must be > 0, got "
                                 f"{v['devfactor']!r}")
        if v["ddof"] not in (0, 1):
            raise ParameterError(f"{name} parameter 'ddof' must be 1 (sample, like pandas) or "
                                 f"0 (population, like backtrader), got {v['ddof']!r}")
        if v["exit"] not in ("middle", "signal"):
            raise ParameterError(f"{name} parameter 'exit' must be 'middle' or 'signal', got "
                                 f"{v['exit']!r}")
        cls._check_period(v, "rsi_period")
        for key in ("rsi_oversold", "rsi_overbought"):
            if v[key] is not None and not 0 < v[key] < 100:
                raise ParameterError(f"{name} parameter '{key}' must be between 0 and 100 "
                                     f"(or None), got {v[key]!r}")
        low, high = v["rsi_oversold"], v["rsi_overbought"]
        if low is not None and high is not None and low >= high:
            raise ParameterError(f"{name}: rsi_oversold ({low}) must be below rsi_overbought "
                                 f"({high})")

    def __init__(self) -> None:
        super().__init__()
        self.bands = self._make_bands()
        p = self.p
        self._tick_size = self._data_tick()
        self._sums = {n: TickSums(self.data.close, period=n, tick=self._tick_size)
                      for n in self._band_periods()}
        self.rsi = (bt.ind.RSI(self.data.close, period=p.rsi_period, safediv=True)
                    if p.rsi_oversold is not None or p.rsi_overbought is not None else None)

    def _make_bands(self):
        raise NotImplementedError

    def _band_periods(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _window_now(self) -> int:
        """Bars in the bands' window on this bar."""
        raise NotImplementedError

    def _band_direction(self) -> int:
        """The article's signal, the band direction: +1 below the lower band, -1 above the
        upper, else 0.

        Decided exactly on integer tick sums (:func:`~m2k_bt.indicators.bands.band_side`): a close
        exactly on a band is inside, and no float noise moves it out."""
        return -self._side()

    def _side(self) -> int:
        n = self._window_now()
        sums = self._sums[n]
        self._close_ticks = round(self.data.close[0] / self._tick_size)
        self._sum_now = int(sums.sum[0])
        return band_side(self._close_ticks, self._sum_now, int(sums.sumsq[0]), n,
                         self.p.devfactor, self.p.ddof)

    def direction(self) -> int:
        band = self._band_direction()
        if self.p.exit == "signal" or band:
            return band
        held = self._held()
        # close vs the middle band (the mean) exactly: n * close_ticks vs the tick sum
        at = self._window_now() * self._close_ticks - self._sum_now
        if (held > 0 and at >= 0) or (held < 0 and at <= 0):
            return 0  # back at the middle band: take the profit
        return held

    def _confirm_entry(self, direction: int) -> bool:
        if self.rsi is None:
            return True
        low, high = self.p.rsi_oversold, self.p.rsi_overbought
        if direction > 0:
            return low is None or self.rsi[0] < low
        return high is None or self.rsi[0] > high


class BollingerReversion(_BandReversion):
    """Mean reversion: buy below the lower Bollinger band, sell short above the upper one.

    ``exit="middle"`` (the classic rule, default) holds until the close is back at the middle
    band (or beyond it, or on the other side of the opposite band, which reverses).
    ``exit="signal"`` is the article literally: the target position is the band direction, +1
    below the lower band, -1 above the upper, flat in between. ``ddof=1`` matches the article's
    pandas ``rolling().std()``; ``ddof=0`` gives backtrader's population bands. Difference from
    the article: none in the direction; the article's frame column assignments are reproduced as
    a per-bar rule.

    With ``rsi_oversold``/``rsi_overbought`` set, a long entry also needs RSI(``rsi_period``)
    below ``rsi_oversold`` and a short entry RSI above ``rsi_overbought``.

    Params (besides :class:`M2KStrategy`'s):

    - ``period`` (def: ``20``): bars in the bands' window.
    - ``devfactor`` (def: ``2.0``): band half-width in standard deviations.
    - ``ddof`` (def: ``1``): 1 = sample standard deviation (pandas), 0 = population.
    - ``exit`` (def: ``"middle"``): ``"middle"`` or ``"signal"`` (the band direction), see above.
    - ``rsi_period`` (def: ``14``): RSI period for the confirmation.
    - ``rsi_oversold`` (def: ``None``): RSI below which longs may enter; ``None`` = no filter.
    - ``rsi_overbought`` (def: ``None``): RSI above which shorts may enter; ``None`` = no filter.
    """

    params = (("period", 20),)

    @classmethod
    def _check_params(cls, v: dict) -> None:
        super()._check_params(v)
        cls._check_period(v, "period")

    def _make_bands(self):
        p = self.p
        return BollingerBandsDdof(self.data.close, period=p.period, devfactor=p.devfactor,
                                  ddof=p.ddof)

    def _band_periods(self) -> tuple[int, ...]:
        return (self.p.period,)

    def _window_now(self) -> int:
        return self.p.period


class AdaptiveBollinger(_BandReversion):
    """Bollinger reversion on the article's volatility-adjusted bands.

    On every bar the window is ``period_high`` (20) when the sample standard deviation of the
    last ``vol_lookback`` (100) bar returns is above ``vol_threshold``, else ``period_low`` (14);
    see :class:`m2k_bt.indicators.bands.AdaptiveBollingerBands` for why returns replace the
    article's prices. Entries, exits and RSI confirmation as in :class:`BollingerReversion`.

    Params (besides :class:`M2KStrategy`'s and the band rules of :class:`BollingerReversion`):

    - ``period_high`` (def: ``20``): window when volatility is high.
    - ``period_low`` (def: ``14``): window when volatility is low.
    - ``vol_lookback`` (def: ``100``): returns in the volatility estimate.
    - ``vol_threshold`` (def: ``0.0015``): per-bar return standard deviation that counts as high.
    """

    params = (("period_high", 20), ("period_low", 14), ("vol_lookback", 100),
              ("vol_threshold", 0.0015))

    @classmethod
    def _check_params(cls, v: dict) -> None:
        super()._check_params(v)
        cls._check_period(v, "period_high")
        cls._check_period(v, "period_low")
        cls._check_period(v, "vol_lookback", low=3)
        if not v["vol_threshold"] > 0:
            raise ParameterError(f"AdaptiveBollinger parameter 'vol_threshold' must be > 0 "
                                 f"(a per-bar return standard deviation), got "
                                 f"{v['vol_threshold']!r}")

    def _make_bands(self):
        p = self.p
        return AdaptiveBollingerBands(self.data.close, period_high=p.period_high,
                                      period_low=p.period_low, vol_lookback=p.vol_lookback,
                                      vol_threshold=p.vol_threshold, devfactor=p.devfactor,
                                      ddof=p.ddof)

    def _band_periods(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.p.period_high, self.p.period_low)))

    def _window_now(self) -> int:
        return int(self.bands.window[0])

