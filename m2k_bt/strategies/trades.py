"""A strategy's open position: running totals that become one row of its trade log."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

__all__ = ["OpenTrade"]


@dataclass
class OpenTrade:
    """Running totals of the position being built and unwound (average-cost accounting)."""

    direction: int
    entry_dt: _dt.datetime
    entry_bar: int
    kelly: tuple
    trade_id: int = 0
    size: int = 0
    avg_cost: float = 0.0
    entry_value: float = 0.0
    entry_contracts: int = 0
    exit_value: float = 0.0
    exit_contracts: int = 0
    gross: float = 0.0
    comm: float = 0.0

    def add(self, qty: int, price: float, comm: float) -> None:
        self.avg_cost = (self.avg_cost * self.size + price * qty) / (self.size + qty)
        self.size += qty
        self.entry_value += price * qty
        self.entry_contracts += qty
        self.comm += comm

    def close_part(self, qty: int, price: float, comm: float, mult: float) -> None:
        self.gross += (price - self.avg_cost) * qty * self.direction * mult
        self.size -= qty
        self.exit_value += price * qty
        self.exit_contracts += qty
        self.comm += comm
