"""Reconciliation at start: what IB holds against what the journal accounts for.

IB reports the account's position in the contract, its open orders and the day's executions.
Ours carry our order reference (tag ``m2k-``). The rule:

- fills of our orders that the journal has not recorded (a crash between sending an order and
  its fill) are *recovered*: journalled, and counted;
- the position the journal then accounts for must equal IB's; if it does not, or if orders that
  are not ours are working on the contract, the run is refused (:class:`ReconcileError`)
  unless it is told to adopt (``--adopt``): it then takes IB's position as its own;
- our open orders are never sent again (the broker knows their references); the broker
  keeps a bracket's stop and target while the position they protect is held, and cancels the
  rest (an earlier run's entry: the strategy decides again).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from .errors import ReconcileError

__all__ = ["IBOrder", "IBFill", "Reconciliation", "reconcile", "is_ours"]


@dataclass(frozen=True)
class IBOrder:
    """An open order at IB: ``order_id``, ``ref``, ``action`` (BUY/SELL), ``quantity``,
    ``order_type``, ``status``."""

    order_id: int
    ref: str
    action: str
    quantity: float
    order_type: str
    status: str = ""


@dataclass(frozen=True)
class IBFill:
    """An execution at IB: ``exec_id``, ``order_id``, ``ref``, ``size`` (signed contracts),
    ``price``, ``commission`` (``None`` when not reported yet), ``con_id`` and ``symbol`` of
    its contract (``0``/``""``: not told), ``time`` (aware; ``None``: not told)."""

    exec_id: str
    order_id: int
    ref: str
    size: float
    price: float
    commission: float | None = None
    con_id: int = 0
    symbol: str = ""
    time: _dt.datetime | None = None


@dataclass
class Reconciliation:
    """The outcome: ``position`` (IB's, now ours), ``expected`` (what the journal and the
    recovered fills account for), ``adopted``, ``ours`` / ``foreign`` open orders,
    ``recovered`` fills."""

    position: float
    expected: float
    adopted: bool = False
    ours: list[IBOrder] = field(default_factory=list)
    foreign: list[IBOrder] = field(default_factory=list)
    recovered: list[IBFill] = field(default_factory=list)

    def summary(self) -> str:
        return (f"position {self.position:+g} (journal {self.expected:+g}"
                f"{', adopted' if self.adopted else ''}); our open orders {len(self.ours)}, "
                f"others {len(self.foreign)}; recovered fills {len(self.recovered)}")


def is_ours(ref: str, tag: str) -> bool:
    """True for an order reference we made (``tag-...``).

    >>> is_ours("m2k-202510011035-1-S", "m2k"), is_ours("", "m2k"), is_ours("m2kx", "m2k")
    (True, False, False)
    """
    return bool(ref) and ref.startswith(f"{tag}-")


def reconcile(symbol: str, ib_position: float, open_orders: list[IBOrder], fills: list[IBFill],
              journal_position: float, journal_exec_ids: set[str], tag: str,
              adopt: bool = False) -> Reconciliation:
    """Apply the rule of the module doc; raise :class:`ReconcileError` (naming the numbers and
    the way out) when the account holds what we cannot account for and ``adopt`` is false.

    >>> r = reconcile("M2KZ5", 1.0, [], [IBFill("e1", 7, "m2k-202510011035-1", 1.0, 2000.0)],
    ...               0.0, set(), "m2k")
    >>> r.expected, len(r.recovered)
    (1.0, 1)
    """
    ours = [o for o in open_orders if is_ours(o.ref, tag)]
    foreign = [o for o in open_orders if not is_ours(o.ref, tag)]
    recovered = [f for f in fills if is_ours(f.ref, tag) and f.exec_id not in journal_exec_ids]
    expected = journal_position + sum(f.size for f in recovered)
    problems = []
    if abs(ib_position - expected) > 1e-9:
        problems.append(f"the account holds {ib_position:+g} {symbol} but the journal accounts "
                        f"for {expected:+g}")
    if foreign:
        problems.append(f"{len(foreign)} open order(s) on {symbol} that are not ours (order ids "
                        f"{', '.join(str(o.order_id) for o in foreign)})")
    if problems and not adopt:
        raise ReconcileError(f"refusing to trade: {'; '.join(problems)}; pass --adopt to take "
                             f"the position over as it is, or flatten and cancel in TWS first")
    return Reconciliation(position=ib_position, expected=expected, adopted=bool(problems),
                          ours=ours, foreign=foreign, recovered=recovered)
