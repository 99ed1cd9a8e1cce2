"""The contract traded through IB: our calendar picks the month, IB's details are checked
against our contract facts before anything is sent.

- :func:`front_month`: the contract our roll calendar trades at a moment (as in backtests).
- :func:`ib_future`: the ``ib_async.Future`` asking IB for that month.
- :func:`check_details`: IB's multiplier, minimum tick and exchange against the
  :class:`~m2k_bt.contracts.ContractSpec`; every difference is named.
- :func:`resolve_contract`: the three together over a connected :class:`~m2k_bt.ib.store.IBStore`
  (:func:`month_details`: the same for a given month, a coroutine on the IB thread).
- :func:`roll_moment`: when a month stops being the front month (the open of the roll session).
"""

from __future__ import annotations

import datetime as _dt

from ..contracts import (
    DEFAULT_ROLL_DAYS,
    TICK_TOLERANCE,
    ContractMonth,
    ContractSpec,
    front_contract,
)
from ..sessions import GLOBEX_REOPEN, NY_ZONE
from .errors import ContractMismatchError, require_ib_async

__all__ = ["front_month", "roll_moment", "ib_future", "check_details", "month_details",
           "resolve_contract"]


def front_month(spec: ContractSpec, when: _dt.datetime | None = None,
                days_before: int = DEFAULT_ROLL_DAYS) -> ContractMonth:
    """The month our roll calendar trades at ``when`` (default: now, New York time).

    >>> from m2k_bt.contracts import M2K
    >>> str(front_month(M2K, _dt.datetime(2025, 12, 10, 18, 0)))  # the roll session has opened
    'M2KH6'
    """
    if when is None:
        when = _dt.datetime.now(NY_ZONE)
    return front_contract(spec, when, days_before)


def roll_moment(month: ContractMonth, days_before: int = DEFAULT_ROLL_DAYS) -> _dt.datetime:
    """The moment (naive New York) from which the month after ``month`` is the front month:
    18:00 on the evening before ``month``'s roll date, the open of the roll date's session
    (:func:`front_month` changes there, as the backtests' continuous series does).

    >>> from m2k_bt.contracts import M2K, ContractMonth
    >>> roll_moment(ContractMonth(2025, 12, M2K))
    datetime.datetime(2025, 12, 10, 18, 0)
    """
    day = month.roll(days_before) - _dt.timedelta(days=1)
    return _dt.datetime.combine(day, GLOBEX_REOPEN)


def ib_future(month: ContractMonth):
    """The ``ib_async.Future`` for ``month`` (symbol, month, exchange, currency; IB fills in
    the rest when the contract is qualified)."""
    ib_async = require_ib_async()
    spec = month.spec
    return ib_async.Future(symbol=spec.root, lastTradeDateOrContractMonth=f"{month.year}"
                           f"{month.month:02d}", exchange=spec.exchange, currency=spec.currency)


def check_details(spec: ContractSpec, details, month: ContractMonth | None = None) -> None:
    """Raise :class:`ContractMismatchError` naming every field where IB's contract details
    (``ib_async.ContractDetails``: ``minTick``, ``contract.multiplier``, ``contract.exchange``,
    ``contract.currency``) differ from ``spec``; given ``month``, also IB's last trade date
    (``contract.lastTradeDateOrContractMonth``) against our calendar's expiry, on which our
    roll date hangs.

    >>> from types import SimpleNamespace as NS
    >>> from m2k_bt.contracts import M2K, ContractMonth
    >>> ib = NS(minTick=0.1, contract=NS(multiplier="5", exchange="CME", currency="USD",
    ...                                  localSymbol="M2KZ5",
    ...                                  lastTradeDateOrContractMonth="20251219"))
    >>> check_details(M2K, ib, ContractMonth(2025, 12, M2K))
    >>> ib.contract.lastTradeDateOrContractMonth = "20251218"
    >>> check_details(M2K, ib, ContractMonth(2025, 12, M2K))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m2k_bt.ib.errors.ContractMismatchError: ... last trade date 20251218 (ours 20251219); ...
    """
    c = details.contract
    problems = []
    if month is not None:
        ours = f"{month.expiry:%Y%m%d}"
        theirs = str(getattr(c, "lastTradeDateOrContractMonth", "") or "")[:8]
        if theirs[:6] != ours[:6] or (len(theirs) == 8 and theirs != ours):
            problems.append(f"last trade date {theirs or '(none)'} (ours {ours})")
    try:
        multiplier = float(c.multiplier)
    except (TypeError, ValueError):
        multiplier = float("nan")
    if not abs(multiplier - spec.multiplier) <= TICK_TOLERANCE * spec.multiplier:
        problems.append(f"multiplier {c.multiplier!r} (ours {spec.multiplier:g})")
    tick = float(details.minTick or 0.0)
    if not abs(tick - spec.tick_size) <= TICK_TOLERANCE * spec.tick_size:
        problems.append(f"minimum tick {tick:g} (ours {spec.tick_size:g})")
    if c.exchange != spec.exchange:
        problems.append(f"exchange {c.exchange!r} (ours {spec.exchange!r})")
    if c.currency and c.currency != spec.currency:
        problems.append(f"currency {c.currency!r} (ours {spec.currency!r})")
    if problems:
        raise ContractMismatchError(
            f"IB's contract details for {getattr(c, 'localSymbol', '') or spec.root} disagree "
            f"with our {spec.root} facts: {'; '.join(problems)}; fix the contract spec "
            f"(m2k_bt.contracts) or the symbol"
        )


async def month_details(ib, spec: ContractSpec, month: ContractMonth):
    """(IB thread) IB's contract details of ``month``, checked with :func:`check_details`; a
    month IB does not know is a :class:`ContractMismatchError`."""
    found = await ib.reqContractDetailsAsync(ib_future(month))
    if not found:
        raise ContractMismatchError(f"IB knows no contract {month.symbol} ({spec.root} "
                                    f"{month.year}-{month.month:02d} on {spec.exchange})")
    if len(found) > 1:
        raise ContractMismatchError(f"IB returned {len(found)} contracts for {month.symbol}; "
                                    f"expected one")
    details = found[0]
    check_details(spec, details, month)
    return details


def resolve_contract(store, spec: ContractSpec, when: _dt.datetime | None = None,
                     days_before: int = DEFAULT_ROLL_DAYS):
    """``(month, qualified ib contract, details)`` for the front month at ``when``
    (:func:`front_month`, :func:`month_details`)."""
    month = front_month(spec, when, days_before)
    details = store.run(lambda: month_details(store.ib, spec, month))
    return month, details.contract, details
