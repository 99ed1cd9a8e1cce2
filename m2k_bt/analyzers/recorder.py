"""The per-bar recorder that :class:`~m2k_bt.analyzers.margin.MarginExposure`,
:class:`~m2k_bt.analyzers.returns.ReturnsRisk` and :class:`~m2k_bt.analyzers.equity.EquityCurve`
share, and the shortcut that makes backtrader's per-bar calls to this package's analyzers cheap.

Per bar the recorder appends three doubles (equity, cash, the first feed's position); bar times
and closes are read from backtrader's own line buffers after the run. Columns come out as numpy
arrays, built once.
"""

from __future__ import annotations

import datetime as _dt
from array import array

import backtrader as bt
import numpy as np

from ..sessions import num2datetime64

__all__ = ["BarRecorder", "quiet_dispatch"]


def _view(values, n: int) -> np.ndarray:
    """The first ``n`` values of a finished line buffer without copying them when it is an
    ``array('d')`` (backtrader gives a re-run fresh buffers, so the view stays valid)."""
    if isinstance(values, array) and values.typecode == "d":
        return np.frombuffer(values, dtype="float64", count=n)
    return _floats(values, n)


def _floats(values, n: int) -> np.ndarray:
    """The first ``n`` values of a line buffer or ``array('d')`` as a new float64 array."""
    if isinstance(values, array) and values.typecode == "d":
        return np.frombuffer(values, dtype="float64", count=n).copy()
    out = np.fromiter(values, dtype="float64", count=n)  # a bounded buffer (deque)
    return out


_PER_BAR_HOOKS = ("next", "prenext", "nextstart")
_FUND_HOOKS = ("notify_fund", "notify_cashvalue")


def _ignore(*args) -> None:
    """Stands in for backtrader's per-bar dispatch to an analyzer with nothing to do."""


def quiet_dispatch(analyzer: bt.Analyzer, per_bar=None) -> None:
    """Make backtrader's per-bar calls to one of this package's analyzers cost one call.

    Every bar, backtrader calls each analyzer's ``_next`` (or ``_prenext``/``_nextstart``),
    ``_notify_fund`` and ``_notify_cashvalue``, which loop over child analyzers and then call
    ``next``/``notify_fund``/``notify_cashvalue``. Ours have no children and, but for the
    recorder's driver (``per_bar``), nothing to do per bar, so those entry points are bound
    straight to ``per_bar`` or to a no-op. A subclass that defines any of these hooks, or has
    children, keeps backtrader's normal dispatch for that group.
    """
    if analyzer._children:
        return
    cls = type(analyzer)
    if all(getattr(cls, h) is getattr(bt.Analyzer, h) for h in _FUND_HOOKS):
        analyzer._notify_fund = analyzer._notify_cashvalue = _ignore
    if all(getattr(cls, h) is getattr(bt.Analyzer, h) for h in _PER_BAR_HOOKS):
        call = per_bar or _ignore
        analyzer._next = analyzer._prenext = analyzer._nextstart = call
    elif per_bar is not None:  # a subclass with its own next: run both
        own_next = type(analyzer).next.__get__(analyzer)

        def both() -> None:
            per_bar()
            own_next()

        analyzer.next = both


class BarRecorder:
    """Account state at every bar, recorded once per strategy for the analyzers that need it.

    ``MarginExposure``, ``ReturnsRisk`` and ``EquityCurve`` share one recorder, attached to
    the strategy; the first of them to start drives it (see :func:`quiet_dispatch`), so the
    others do nothing per bar. Per bar it appends three doubles: ``broker.getvalue()``,
    ``broker.getcash()`` and the first feed's position. Bar times and closes are read after
    the run from backtrader's line buffers (the strategy's ``datetime`` line, the first feed's
    ``close``), which hold every bar in every ``preload``/``runonce`` mode; only when they may
    not (``exactbars`` > 0, a replayed feed, or a close with several feeds) are the float time
    and the close recorded per bar as well. Times become datetimes once, at the end, vectorised.
    While a position is open, and only then, ``MarginExposure`` is called for its margin sums.
    """

    ATTR = "_m2k_bar_recorder"

    def __init__(self, strategy) -> None:
        self.strategy = strategy
        self.start_value = strategy.broker.getvalue()
        self.values = array("d")
        self.cash = array("d")
        self.positions = array("d")
        datas = strategy.datas
        cerebro = getattr(strategy, "cerebro", None)
        exactbars = int(getattr(getattr(cerebro, "p", None), "exactbars", 0) or 0)
        replay = any(getattr(d, "replaying", False) for d in datas)
        self._dtline = strategy.lines.datetime
        self.tz = getattr(self._dtline, "_tz", None)
        own_times = exactbars > 0 or replay
        self.times = array("d") if own_times else None
        self.closes = array("d") if own_times or len(datas) != 1 else None
        self.margin_hook = None  # MarginExposure._in_market(i, equity), set at its start
        self._driver = None
        self._users = 0
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def attach(cls, analyzer: bt.Analyzer) -> BarRecorder:
        """The strategy's recorder (made on first use); the first analyzer attached drives it."""
        strategy = analyzer.strategy
        rec = getattr(strategy, cls.ATTR, None)
        if rec is None:
            rec = cls(strategy)
            setattr(strategy, cls.ATTR, rec)
        if rec._driver is None:
            rec._driver = analyzer
            quiet_dispatch(analyzer, rec._first_bar)
        else:
            quiet_dispatch(analyzer)
        rec._users += 1
        return rec

    def _first_bar(self) -> None:
        """Build the per-bar function once every analyzer has started, then run it."""
        record = self._recorder()
        quiet_dispatch(self._driver, record)
        record()

    def _recorder(self):
        strategy = self.strategy
        broker = strategy.broker
        data = strategy.datas[0]
        datas = strategy.datas
        multi = len(datas) > 1
        getvalue, getcash = broker.getvalue, broker.getcash
        if type(broker).getposition is bt.brokers.BackBroker.getposition:
            getpos = broker.positions.__getitem__  # what BackBroker.getposition does
        else:
            getpos = broker.getposition
        values_append = self.values.append
        cash_append = self.cash.append
        pos_append = self.positions.append
        times_append = self.times.append if self.times is not None else None
        closes_append = self.closes.append if self.closes is not None else None
        dtline, close = self._dtline, data.close
        hook = self.margin_hook
        nvalues = self.values.__len__

        def record() -> None:
            value = getvalue()
            values_append(value)
            cash_append(getcash())
            size = getpos(data).size
            pos_append(size)
            if times_append is not None:
                times_append(dtline[0])
            if closes_append is not None:
                closes_append(close[0])
            if hook is not None and (size or multi and any(getpos(d).size for d in datas)):
                hook(nvalues() - 1, value)

        return record

    def __len__(self) -> int:
        return len(self.values)

    def column(self, key: str) -> np.ndarray:
        """One column over the bars as a float64 array (``datetime64[us]`` for
        ``"datetimes"``), computed once: ``values``, ``cash``, ``positions``, ``times``
        (backtrader float times), ``closes`` (first feed) or ``datetimes``."""
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self._compute(key)
        return out

    def _compute(self, key: str) -> np.ndarray:
        n = len(self.values)
        if key in ("values", "cash", "positions"):
            # a view, not a copy: nothing appends to the recorder after the run, and done()
            # swaps in empty arrays, leaving these buffers to the views alone
            return np.frombuffer(getattr(self, key), dtype="float64", count=n)
        if key == "times":
            if self.times is not None:
                return _floats(self.times, n)
            if len(self._dtline) != n:  # cannot happen without replay or exactbars
                raise RuntimeError(
                    f"m2k_bt analyzers: {n} bars recorded but the strategy has "
                    f"{len(self._dtline)}; please report this with your cerebro settings"
                )
            return _view(self._dtline.array, n)
        if key == "closes":
            if self.closes is not None:
                return _floats(self.closes, n)
            data = self.strategy.datas[0]
            m = len(data)
            closes = _view(data.close.array, m)
            if m == n:
                return closes
            # not expected with one feed: each bar's close is the feed's last bar by then
            at = np.searchsorted(_floats(data.datetime.array, m), self.times_np(), "right") - 1
            return np.where(at >= 0, closes[np.maximum(at, 0)], np.nan)
        if key == "datetimes":
            times = self.column("times")
            if self.tz is None:
                return num2datetime64(times)
            return np.array(
                [bt.num2date(t, tz=self.tz, naive=True) for t in times.tolist()],
                dtype="datetime64[us]",
            ).reshape(-1)
        raise KeyError(key)

    def values_np(self) -> np.ndarray:
        """``broker.getvalue()`` at each bar ($)."""
        return self.column("values")

    def times_np(self) -> np.ndarray:
        """The strategy's float time at each bar (backtrader's day numbers)."""
        return self.column("times")

    def datetimes_np(self) -> np.ndarray:
        """Each bar's time as naive ``datetime64[us]``, as ``strategy.datetime.datetime(0)``."""
        return self.column("datetimes")

    def datetime_at(self, i: int | None) -> _dt.datetime | None:
        """Bar ``i``'s time, as ``strategy.datetime.datetime(0)`` gave it on that bar."""
        if i is None:
            return None
        return bt.num2date(float(self.times_np()[i]), tz=self.tz, naive=True)

    def done(self) -> None:
        """Called from each user's ``stop``: after the last one only the length is kept."""
        self._users -= 1
        if self._users <= 0:
            self._cache.clear()
            for name in ("values", "cash", "positions", "times", "closes"):
                if getattr(self, name) is not None:
                    setattr(self, name, array("d"))

