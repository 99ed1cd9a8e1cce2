"""A strategy's open position: running totals that become one row of its trade log.

Exact: prices are booked as integers, the cents one contract is worth at each fill
(:func:`m2k_bt.rules.prices.to_units`), commissions in cents; the trade's P&L is an integer
number of cents (:func:`m2k_bt.rules.pnl.trade_gross_cents`), the same in both engines.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from ..rules import money, pnl

__all__ = ["OpenTrade"]


@dataclass
class OpenTrade:
    """Running totals of the position being built and unwound (average-cost accounting), in
    integers: ``*_units`` are sums of fill prices in cents of contract value times contracts,
    ``comm`` is cents."""

    direction: int
    entry_dt: _dt.datetime
    entry_bar: int
    kelly: tuple
    trade_id: int = 0
    size: int = 0
    entry_units: int = 0
    entry_contracts: int = 0
    exit_units: int = 0
    exit_contracts: int = 0
    comm: int = 0

    def add(self, qty: int, units: int, comm: int) -> None:
        self.size += qty
        self.entry_units += units * int(qty)  # integers: 5.0 contracts would make floats
        self.entry_contracts += qty
        self.comm += comm

    def close_part(self, qty: int, units: int, comm: int) -> None:
        self.size -= qty
        self.exit_units += units * int(qty)  # (and -1 x 0.0, a "-0.00" P&L)
        self.exit_contracts += qty
        self.comm += comm

    @property
    def gross(self) -> int:
        """Gross P&L in cents once the trade is flat (exit value - entry value)."""
        return pnl.trade_gross_cents(self.direction, self.entry_units, self.exit_units)

    def row(self, per_point: float) -> dict:
        """Prices and money of the closed trade: average entry and exit prices, gross, commission
        and net in dollars (each the double nearest to its exact value)."""
        gross = self.gross
        return {
            "entry_price": pnl.average_fill(self.entry_units, self.entry_contracts, per_point),
            "exit_price": pnl.average_fill(self.exit_units, self.exit_contracts, per_point),
            "gross_pnl": money.dollars(gross),
            "commission": money.dollars(self.comm),
            "net_pnl": money.dollars(gross - self.comm),
        }
