"""A strategy that trades a fixed script, and bars built by hand, for known-answer tests."""

from __future__ import annotations

import backtrader as bt
import pandas as pd

NY = "America/New_York"


def hand_bars(rows, start="2024-03-04 10:00", freq="1min") -> pd.DataFrame:
    """Bars from (open, high, low, close) tuples; timestamps every ``freq`` from ``start``."""
    idx = pd.date_range(start, periods=len(rows), freq=freq, tz=NY)
    df = pd.DataFrame(rows, columns=["open", "high", "low", "close"], index=idx, dtype=float)
    df["volume"] = 100.0
    df.index.name = "datetime"
    return df


class Scripted(bt.Strategy):
    """Submit market orders from ``plan``: {bar number (0-based): signed size}. Orders fill at the
    next bar's open. Records every notified order and closed trade."""

    params = (("plan", None),)

    def __init__(self):
        self.orders = []
        self.trades = []

    def next(self):
        size = (self.p.plan or {}).get(len(self) - 1)
        if size:
            (self.buy if size > 0 else self.sell)(size=abs(size))

    def notify_order(self, order):
        if order.status in (order.Completed, order.Margin, order.Rejected, order.Canceled):
            self.orders.append(order)

    def notify_trade(self, trade):
        if trade.isclosed:
            self.trades.append(trade)
