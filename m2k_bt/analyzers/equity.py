"""Equity, cash and position at each bar close: :class:`EquityCurve` and :func:`equity_frame`."""

from __future__ import annotations

import backtrader as bt
import numpy as np

from .recorder import BarRecorder

__all__ = ["EquityCurve", "equity_frame"]


class EquityCurve(bt.Analyzer):
    """Equity, cash and position at each bar close, for ``equity.csv`` and plots.

    ``get_analysis()`` is a dict of equal-length numpy arrays (columns), one row per bar
    (``.tolist()`` gives Python objects):

    - ``datetime``: bar time (naive, feed time zone).
    - ``value``: account equity, ``broker.getvalue()`` ($).
    - ``cash``: ``broker.getcash()`` ($; for futures, equity minus margin held).
    - ``position``: signed contracts held in the first data feed.
    - ``close``: the first feed's close (points).
    - ``drawdown``: running peak of value - value ($, >= 0); ``drawdown_pct``: as a % of the
      peak (%; NaN while the peak is not positive).

    :func:`equity_frame` turns it into a DataFrame indexed by ``datetime``. Per bar it costs
    three appended doubles (shared with :class:`ReturnsRisk` and :class:`MarginExposure`);
    the columns are built at the end.
    """

    COLUMNS = ("datetime", "value", "cash", "position", "close", "drawdown", "drawdown_pct")

    def start(self) -> None:
        self._rec = BarRecorder.attach(self)
        self.rets = {c: [] for c in self.COLUMNS}

    def stop(self) -> None:
        rec = self._rec
        values = rec.values_np()
        peak = np.maximum.accumulate(values)  # running peak, the start value included
        np.maximum(peak, rec.start_value, out=peak)
        drawdown = peak - values
        positive = peak > 0
        pct = np.divide(drawdown, peak, out=peak, where=positive)  # reuses peak's memory
        pct *= 100.0
        pct[~positive] = np.nan
        position = rec.column("positions")
        whole = bool(np.all(position == np.trunc(position)))  # contracts: ints, as before
        # numpy columns: 8 bytes a bar, no Python object per value
        self.rets = {
            "datetime": rec.datetimes_np(),
            "value": values,
            "cash": rec.column("cash"),
            "position": position.astype("int64") if whole else position,
            "close": rec.column("closes"),
            "drawdown": drawdown,
            "drawdown_pct": pct,
        }
        rec.done()

    def get_analysis(self) -> dict[str, list]:
        return self.rets


def equity_frame(analysis: dict):
    """A pandas DataFrame of an :class:`EquityCurve` analysis, indexed by ``datetime``."""
    import pandas as pd

    index = pd.DatetimeIndex(pd.to_datetime(analysis.get("datetime", [])), name="datetime")
    cols = {c: analysis.get(c, []) for c in EquityCurve.COLUMNS if c != "datetime"}
    return pd.DataFrame(cols, index=index, copy=False)
