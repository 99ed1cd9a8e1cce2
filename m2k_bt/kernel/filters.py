"""Event and external-series filters as the kernel's loop reads them: masks on the bars, and
the strategy's ``event_log`` rebuilt from what the loop did.

:class:`~m2k_bt.strategies.base.M2KStrategy` refuses entries whose first held bar overlaps an
avoided event's window (``avoid_events``, ``event_before``/``event_after``), closes before one
with ``flat_before_event``, and refuses entries while the feed's external series is unknown or
outside ``signal_min``/``signal_max``. Here the same decisions are arrays: ``ev`` (per bar, the
index of the event whose window overlaps the next bar, -1 none; :meth:`EventGate.window_index`)
and ``ext_ok`` (the external value allowed); the loop records each refused entry and forced
exit, and :meth:`Gates.report` turns the records into the strategy's ``event_log``,
``event_warnings`` and the ``events`` analyzer's output, record for record as cerebro's.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass

import backtrader as bt
import numpy as np

from ..engine import Plan
from ..errors import ParameterError
from ..feeds.events import EventGate, event_actions, resolve_calendar
from ..feeds.external import align_signal
from . import loop
from .data import KernelData

__all__ = ["Gates", "filters"]


@dataclass
class Gates:
    """The filters of one run: ``ev``, ``ext_ok`` (see the module doc), the ``gate`` (or
    ``None``), whether the external series filters entries (``external``), and what
    :meth:`report` needs."""

    ev: np.ndarray
    ext_ok: np.ndarray
    gate: EventGate | None
    external: bool
    plan: Plan
    data: KernelData
    next_first: int
    values: np.ndarray | None = None

    def report(self, frec: np.ndarray) -> dict | None:
        """``{"log", "warnings", "analysis"}`` from the loop's filter records (``None`` for a
        run without filters): the strategy's ``event_log`` and ``event_warnings`` and the
        ``EventActions`` analysis, as cerebro's."""
        plan, data = self.plan, self.data
        if not plan.filtered:
            return None
        p = plan.params
        log: list[dict] = []
        keys: dict[tuple, dict] = {}
        run: dict | None = None
        events = self.gate.events if self.gate is not None else []
        for bar, action, direction, which in frec.tolist():
            when = data.when(bar)
            side = "long" if direction > 0 else "short"
            if action == loop.F_SIGNAL:
                now = bar + 1
                if run is None or run["_bar"] != now - 1 or run["direction"] != side:
                    value = float(self.values[bar])
                    run = {"dt": when, "action": "signal_blocked", "kind": "signal",
                           "event_time": None,
                           "description": "signal unknown" if math.isnan(value) else
                           f"signal {value:g} outside [{p['signal_min']}, {p['signal_max']}]",
                           "direction": side, "bars": 0,
                           "value": None if math.isnan(value) else value}
                    log.append(run)
                run["bars"] += 1
                run["_bar"] = now
                continue
            event = events[which]
            if action == loop.F_BLOCKED:
                key = (event.time, event.kind, direction)
                rec = keys.get(key)
                if rec is None:
                    rec = keys[key] = _record("entry_blocked", event, side, when)
                    log.append(rec)
                rec["bars"] += 1
            else:
                log.append(_record("forced_exit", event, side, when))
        for rec in log:
            rec.pop("_bar", None)
        warnings = []
        if self.gate is not None and self.next_first < data.n:
            first, last = (bt.num2date(float(data.num[k])) for k in (self.next_first, data.n - 1))
            warnings = self.gate.calendar.coverage_warnings(self.gate.kinds, first, last)
        analysis = event_actions(types.SimpleNamespace(**p), self.gate, log, warnings,
                                 plan.signal)
        return {"log": log, "warnings": warnings, "analysis": analysis}


def _record(action: str, event, side: str, when) -> dict:
    """An ``event_log`` record as ``M2KStrategy._log_event`` makes it."""
    return {"dt": when, "action": action, "kind": event.kind,
            "event_time": event.time.tz_localize(None).to_pydatetime(),
            "description": event.description, "direction": side, "bars": 0}


def filters(plan: Plan, data: KernelData, next_first: int) -> Gates:
    """The :class:`Gates` of ``plan`` on ``data``; ``next_first``: the first bar the strategy
    decides on in cerebro (where the event coverage check starts)."""
    p = plan.params
    n = data.n
    # no event and no external series: arrays shared by the trials on ``data`` (read only)
    ev = data.minus_ones()  # no events (read only)
    gate = None
    if p.get("avoid_events"):
        gate = EventGate(resolve_calendar(p["event_calendar"]), p["avoid_events"],
                         p["event_before"], p["event_after"])
        bar_days = (data.compression if data.intraday else 1440) / 1440.0
        ev = gate.window_index(data.num + bar_days, bar_days)
    low, high = p.get("signal_min"), p.get("signal_max")
    ext_ok = data._get(("all_allowed",), lambda: np.ones(n, dtype=bool))
    values = None
    if (low is not None or high is not None) and plan.signal is None:
        raise ParameterError(
            f"{plan.strategy_cls.__name__}: signal_min/signal_max need a feed with a 'signal' "
            f"line (m2k_bt.feeds.external.SignalFeed, or --signal FILE on the command line)")
    external = plan.signal is not None and (low is not None or high is not None)
    if plan.signal is not None:
        values = align_signal(plan.signal, data.bars.index)
        if external:
            with np.errstate(invalid="ignore"):
                ext_ok = ~np.isnan(values)
                if low is not None:
                    ext_ok &= values >= low
                if high is not None:
                    ext_ok &= values <= high
    return Gates(ev, ext_ok, gate, external, plan, data, next_first, values)
