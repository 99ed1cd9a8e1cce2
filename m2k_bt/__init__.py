"""m2k_bt: a Backtrader plugin pack for CME Micro E-mini Russell 2000 futures (M2K)."""

from . import contracts, errors
from .contracts import M2K, RTY, ContractSpec
from .errors import ContractSpecError, DataFeedError, M2KError, ParameterError

__all__ = [
    "contracts",
    "errors",
    "ContractSpec",
    "M2K",
    "RTY",
    "M2KError",
    "ContractSpecError",
    "DataFeedError",
    "ParameterError",
]
