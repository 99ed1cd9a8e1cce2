"""The command line (``run_backtest.py``): backtest, optimize, walkforward and live."""

from .backtest import (
    main,
)

__all__ = [
    "main",
]
