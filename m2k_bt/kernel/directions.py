"""A strategy as the kernel's loop trades it: a direction per bar, exit masks, entry filters and
stop/target distances (:class:`Directions`).

The loop (:mod:`m2k_bt.kernel.loop`) knows no strategy. Signal strategies
(:class:`~m2k_bt.strategies.signals.SignalStrategy`) give their arrays through
:func:`~m2k_bt.strategies.signals.compute_signals`, the same function their cerebro version
reads; the built-in strategies (per-bar classes, their signal versions in
:mod:`m2k_bt.strategies.vectorised`, and subclasses of either that override none of their
methods) take the same arrays from :class:`~m2k_bt.kernel.data.KernelData`'s shared window sums,
so a study computes each window once. A strategy with a per-bar method of its own
(``direction``, ``next``, an entry filter) runs in cerebro.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from ..strategies import AdaptiveBollinger, BollingerReversion, M2KStrategy, SmaCrossover
from ..strategies.signals import SignalStrategy, compute_signals
from ..strategies.vectorised import SIGNAL_TWINS
from .loop import KEEP

__all__ = ["Directions", "strategy_kind", "directions"]

_KIND_OF = {SmaCrossover: "sma", BollingerReversion: "bollinger", AdaptiveBollinger: "adaptive"}
_KIND_OF.update({twin: _KIND_OF[cls] for cls, twin in SIGNAL_TWINS.items()})


@dataclass
class Directions:
    """What the loop trades for one strategy on one bar set.

    ``sig``: -1, 0, +1 or :data:`~m2k_bt.kernel.loop.KEEP` per bar (int64); ``exit_long`` /
    ``exit_short``: close a long / short on a KEEP bar; ``allow_long`` / ``allow_short``: new
    entries allowed; ``first``: the first bar the strategy decides on; ``stop_pts`` /
    ``target_pts``: the signal's own distances in points (NaN none), or ``None``; ``wants``:
    backtrader indicators the built-in rules read ((kind, period), e.g. ("adx", 14));
    ``lookahead``: the look-ahead check's report; ``indicators``: a signal's other columns."""

    sig: np.ndarray
    exit_long: np.ndarray
    exit_short: np.ndarray
    allow_long: np.ndarray
    allow_short: np.ndarray
    first: int
    stop_pts: np.ndarray | None = None
    target_pts: np.ndarray | None = None
    lookahead: dict | None = None
    indicators: dict | None = None


def _overrides(cls: type, anchor: type) -> list[str]:
    """Methods of ``anchor`` (or its bases) that ``cls`` or a class between them redefines."""
    out = []
    for klass in cls.__mro__:
        if klass is anchor:
            break
        for name, value in klass.__dict__.items():
            if (inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod,
                                                                property))) \
                    and hasattr(anchor, name) and name not in ("signal", "_check_params"):
                out.append(f"{klass.__name__}.{name}")
    return out


def strategy_kind(cls: type) -> tuple[str | None, str]:
    """(kind, why): ``"sma"``, ``"bollinger"`` or ``"adaptive"`` for the built-in rules (and a
    subclass overriding none of their methods), ``"signal"`` for another signal strategy, else
    ``None`` and one line saying why the kernel cannot run it."""
    for klass in cls.__mro__:
        if klass in _KIND_OF:
            changed = _overrides(cls, klass)
            if changed:
                return None, (f"strategy {cls.__name__} is a per-bar strategy ({changed[0]} "
                              f"overrides the built-in rule), which only cerebro runs")
            return _KIND_OF[klass], ""
    if isinstance(cls, type) and issubclass(cls, SignalStrategy):
        changed = _overrides(cls, SignalStrategy)
        if changed:
            return None, (f"signal strategy {cls.__name__} redefines {changed[0]}, a per-bar "
                          f"method, which only cerebro runs; keep the rule in signal()")
        return "signal", ""
    if isinstance(cls, type) and issubclass(cls, M2KStrategy):
        return None, (f"strategy {getattr(cls, '__name__', cls)} is a per-bar strategy "
                      f"(direction() runs bar by bar), which only cerebro runs; write it as a "
                      f"signal strategy for the kernel")
    return None, (f"strategy {getattr(cls, '__name__', cls)} is not an M2KStrategy; only "
                  f"cerebro runs it")


def _mask(a, n: int, default: bool) -> np.ndarray:
    return np.full(n, default, dtype=bool) if a is None else np.asarray(a, dtype=bool)


def directions(kind: str, cls: type, p: dict, data, tick: float) -> Directions:
    """The :class:`Directions` of ``cls`` with parameters ``p`` on ``data`` (a
    :class:`~m2k_bt.kernel.data.KernelData`). Built-in kinds read ADX/RSI from ``data``'s
    backtrader pass; a signal strategy's output is kept in ``data`` per parameter set."""
    n = data.n
    no = np.zeros(n, dtype=bool)
    yes = np.ones(n, dtype=bool)
    if kind == "signal":
        key = ("signal", cls, tuple(sorted((k, repr(v)) for k, v in p.items())))

        def make():
            return compute_signals(cls, data.bars, p, tick, check=bool(p["lookahead_check"]))
        sig, report = data.signals(key, make)
        d = np.where(np.isnan(sig.direction), KEEP, sig.direction).astype("int64")
        return Directions(d, _mask(sig.exit_long, n, False), _mask(sig.exit_short, n, False),
                          _mask(sig.long_ok, n, True), _mask(sig.short_ok, n, True),
                          sig.first, sig.stop, sig.target, report, sig.indicators)
    allow_long = allow_short = yes
    first = 0
    if kind == "sma":
        sig, xl, xs = data.sma_signal(p["fast"], p["slow"]), no, no
        first = p["slow"] - 1
    else:
        if kind == "bollinger":
            band, mid = data.band(p["period"], p["devfactor"], p["ddof"])
            first = p["period"] - 1
        else:
            band, mid = data.adaptive_band(p)
            first = max(p["vol_lookback"] + 1, p["period_high"], p["period_low"]) - 1
        if p["exit"] == "signal":
            sig, xl, xs = band, no, no
        else:
            sig = np.where(band != 0, band, KEEP).astype("int64")
            xl, xs = mid >= 0, mid <= 0
    filters = []
    if kind == "sma" and p["adx_min"] is not None:
        filters.append(("adx", p["adx_period"]))
    if kind != "sma" and (p["rsi_oversold"] is not None or p["rsi_overbought"] is not None):
        filters.append(("rsi", p["rsi_period"]))
    for what, period in filters:
        values, mp = data.indicator(what, period)
        first = max(first, mp - 1)
        if what == "adx":
            allow_long = allow_short = values >= p["adx_min"]
        else:
            low, high = p["rsi_oversold"], p["rsi_overbought"]
            allow_long = values < low if low is not None else yes
            allow_short = values > high if high is not None else yes
    return Directions(sig, xl, xs, allow_long, allow_short, first)
