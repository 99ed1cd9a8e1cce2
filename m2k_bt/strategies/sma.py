"""Trend following on a fast/slow simple moving average pair (the article's first strategy)."""

from __future__ import annotations

import backtrader as bt

from ..errors import ParameterError
from ..indicators.bands import TickSums, sma_above
from .base import M2KStrategy

__all__ = ["SmaCrossover"]


class SmaCrossover(M2KStrategy):
    """Trend following: long while the fast SMA is above the slow one, short otherwise.

    The article's rule (``Signal = 1 where SMA_50 > SMA_200 else -1``): long/short mode holds
    +1 or -1 on every bar once both averages are defined; ``long_only`` holds long or flat
    (the article's third snippet, ``np.where(..., 1, 0)``). Difference from the article: its
    ``df['Signal'][50:] = ...`` is a chained assignment that does nothing under pandas 3, and
    even under pandas 2 it set -1 on bars 50-198 where SMA_200 is still undefined; here nothing
    is traded until both averages are defined.

    With ``adx_min`` set, a new entry also needs ADX(``adx_period``) >= ``adx_min`` (a trend
    strong enough); positions already held follow the crossover as usual.

    Params (besides :class:`M2KStrategy`'s):

    - ``fast`` (def: ``50``): bars in the fast simple moving average.
    - ``slow`` (def: ``200``): bars in the slow simple moving average.
    - ``adx_min`` (def: ``None``): minimum ADX for a new entry; ``None`` = no filter.
    - ``adx_period`` (def: ``14``): ADX period.
    """

    params = (("fast", 50), ("slow", 200), ("adx_min", None), ("adx_period", 14))
    _optional_types = {"adx_min": float}

    @classmethod
    def _check_params(cls, v: dict) -> None:
        super()._check_params(v)
        cls._check_period(v, "fast")
        cls._check_period(v, "slow")
        cls._check_period(v, "adx_period")
        if v["fast"] >= v["slow"]:
            raise ParameterError(
                f"SmaCrossover: fast ({v['fast']}) must be shorter than slow ({v['slow']}); "
                f"swap them or shorten fast"
            )
        if v["adx_min"] is not None and not 0 < v["adx_min"] < 100:
            raise ParameterError(
                f"SmaCrossover parameter 'adx_min' must be between 0 and 100 (or None), "
                f"got {v['adx_min']!r}"
            )

    def __init__(self) -> None:
        super().__init__()
        self.sma_fast = bt.ind.SMA(self.data.close, period=self.p.fast)
        self.sma_slow = bt.ind.SMA(self.data.close, period=self.p.slow)
        # the crossover is decided on exact integer tick sums (see direction), not on the SMAs
        tick = self._data_tick()
        self._fast = TickSums(self.data.close, period=self.p.fast, tick=tick).lines.sum
        self._slow = TickSums(self.data.close, period=self.p.slow, tick=tick).lines.sum
        self.adx = (bt.ind.ADX(self.data, period=self.p.adx_period)
                    if self.p.adx_min is not None else None)

    def direction(self) -> int:
        # fast above slow, decided exactly in ticks: sum_fast * slow > sum_slow * fast; equal
        # averages (common on the 0.10 grid in a flat stretch) are not "above": short/flat
        return 1 if sma_above(self._fast[0], self.p.fast, self._slow[0], self.p.slow) else -1

    def _confirm_entry(self, direction: int) -> bool:
        return self.adx is None or self.adx[0] >= self.p.adx_min

