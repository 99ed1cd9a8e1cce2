"""Live trading through Interactive Brokers, over ``ib_async`` (the optional ``ib`` extra:
``pip install 'm2k_bt[ib]'``). ``ib_async`` is imported on first use, so importing this package
does not need it.

- :mod:`~m2k_bt.ib.store`: the connection (timeout, reconnect with back-off).
- :mod:`~m2k_bt.ib.contract`: the front month from our calendar, checked against IB's details.
- :mod:`~m2k_bt.ib.feed`: history, then real-time bars aggregated to the strategy's bar size;
  the roll to the next month; backfill after a reconnect.
- :mod:`~m2k_bt.ib.broker`: the backtrader broker (orders, brackets, fills, reconciliation).
- :mod:`~m2k_bt.ib.orders`, :mod:`~m2k_bt.ib.reconcile`, :mod:`~m2k_bt.ib.limits`,
  :mod:`~m2k_bt.ib.journal`, :mod:`~m2k_bt.ib.errors`: one rule each.
"""

from .broker import IBBroker
from .contract import check_details, front_month, resolve_contract, roll_moment
from .errors import ContractMismatchError, GatewayError, IBError, MissingIBError, ReconcileError
from .feed import BarAggregator, IBBarSource
from .journal import Journal, read_journal
from .limits import LimitGuard, Limits
from .orders import bracket_prices, order_ref
from .reconcile import reconcile
from .store import PAPER_PORT, IBStore, parse_address

__all__ = [
    "IBBroker",
    "IBBarSource",
    "BarAggregator",
    "IBStore",
    "PAPER_PORT",
    "parse_address",
    "Journal",
    "read_journal",
    "Limits",
    "LimitGuard",
    "front_month",
    "check_details",
    "resolve_contract",
    "roll_moment",
    "bracket_prices",
    "order_ref",
    "reconcile",
    "IBError",
    "GatewayError",
    "ContractMismatchError",
    "ReconcileError",
    "MissingIBError",
]
