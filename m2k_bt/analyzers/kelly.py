"""The sizing decisions of a Kelly sizer over time: :class:`KellyLog`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import backtrader as bt

from .common import event_dict, mean_or_none
from .recorder import quiet_dispatch

__all__ = ["DECLINE_REASONS", "KellyLog", "declined_entries", "kelly_log"]

#: Why a sizer gave 0 contracts, by binding (the sizer's ``binding`` names).
DECLINE_REASONS = {
    "no_edge": "the Kelly estimate over the recent trades showed no edge (f* <= 0)",
    "zero": "the Kelly fraction of equity was less than the risk of one contract",
    "max_exposure": "one contract's notional was above max_exposure x equity",
    "margin": "one contract's initial margin was above the free cash",
    "max_contracts": "max_contracts is 0",
    "warmup": "warmup_contracts is 0",
}


def declined_entries(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """How many sizing decisions gave 0 contracts, and which limit did it.

    Returns ``entries`` (decisions, count), ``declined`` (decisions with 0 contracts, count)
    and ``by_binding`` (declined count per binding, largest first; ties in name order).

    >>> d = [{"binding": "no_edge", "contracts": 0}, {"binding": "kelly", "contracts": 2},
    ...      {"binding": "max_exposure", "contracts": 0}, {"binding": "no_edge", "contracts": 0}]
    >>> declined_entries(d)
    {'entries': 4, 'declined': 3, 'by_binding': {'no_edge': 2, 'max_exposure': 1}}
    """
    zero = Counter(str(d.get("binding")) for d in decisions if d.get("contracts") == 0)
    order = sorted(zero.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"entries": len(decisions), "declined": sum(zero.values()), "by_binding": dict(order)}


def kelly_log(sizer: str | None, decisions) -> dict[str, Any]:
    """:class:`KellyLog`'s keys (documented there) for the sizer named ``sizer`` and its
    decisions (``None``: a sizer that keeps none). The kernel builds its Kelly log here too."""
    rows = [event_dict(d) for d in decisions] if decisions is not None else []
    f_used = [d["f_used"] for d in rows if d.get("f_used") is not None]
    sizes = [d["contracts"] for d in rows if d.get("contracts") is not None]
    return {
        "sizer": sizer,
        "available": decisions is not None,
        "decisions": rows,
        "count": len(rows),
        "zero_size": sum(1 for s in sizes if s == 0),
        "mean_f_used": mean_or_none(f_used),
        "last_f_used": f_used[-1] if f_used else None,
        "max_contracts": max(sizes) if sizes else None,
        "binding": dict(Counter(str(d.get("binding")) for d in rows if "binding" in d)),
    }


class KellyLog(bt.Analyzer):
    """The sizing decisions of a Kelly sizer over time (``strategy.getsizer().decisions``).

    Works with any sizer: one without a ``decisions`` list reports ``available: False``.

    ``get_analysis()`` keys:

    - ``sizer``: the sizer's class name, or None.
    - ``available``: True when the sizer keeps a ``decisions`` list.
    - ``decisions``: one dict per sizing call, in order; for ``KellySizer``: ``dt``, ``p`` (win
      probability, fraction), ``b`` (payoff ratio), ``f_star`` (full Kelly fraction),
      ``f_used`` (fraction applied after scaling and caps), ``equity`` ($),
      ``risk_per_contract`` ($), ``contracts``, ``binding`` (which limit set the size),
      ``trades_used`` (closed trades in the estimate).
    - ``count``: number of decisions; ``zero_size``: decisions that gave 0 contracts.
    - ``mean_f_used``, ``last_f_used``: fraction of equity risked (fraction); None without
      decisions carrying ``f_used``.
    - ``max_contracts``: largest size decided; None without decisions.
    - ``binding``: count of decisions per binding limit (dict).
    """

    def start(self) -> None:
        quiet_dispatch(self)

    def stop(self) -> None:
        try:
            sizer = self.strategy.getsizer()
        except Exception:  # noqa: BLE001 - any strategy: no sizer is not an error here
            sizer = None
        raw = getattr(sizer, "decisions", None)
        self.rets = kelly_log(type(sizer).__name__ if sizer is not None else None, raw)

    def get_analysis(self) -> dict[str, Any]:
        return self.rets
