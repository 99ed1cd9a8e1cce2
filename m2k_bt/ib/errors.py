"""The errors of live trading through Interactive Brokers: each an :class:`~m2k_bt.errors.M2KError`
(so a ``ValueError``), so the command line turns it into one line and exit status 2."""

from __future__ import annotations

from ..errors import M2KError

__all__ = ["IBError", "GatewayError", "ContractMismatchError", "ReconcileError", "MissingIBError"]


class IBError(M2KError):
    """Root of the errors of :mod:`m2k_bt.ib`."""


class GatewayError(IBError):
    """No IB gateway at the address, or something there that is not one (names the address)."""


class ContractMismatchError(IBError):
    """IB's contract details disagree with our contract facts (multiplier, tick, exchange)."""


class ReconcileError(IBError):
    """The account holds a position or orders the journal cannot account for."""


class MissingIBError(IBError):
    """``ib_async`` is not installed (``pip install m2k_bt[ib]``)."""


def require_ib_async():
    """The ``ib_async`` module, imported on first use so that ``import m2k_bt`` never needs it."""
    try:
        import ib_async
    except ImportError as exc:
        raise MissingIBError(
            "live trading through IB needs ib_async: pip install 'm2k_bt[ib]' "
            "(or pip install 'ib_async>=2.0')"
        ) from exc
    return ib_async
