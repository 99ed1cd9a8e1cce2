"""Indicators the article uses where backtrader lacks them."""

from .bands import (
    FIB_RATIOS,
    AdaptiveBollingerBands,
    BollingerBandsDdof,
    FibonacciLevels,
    TickSums,
    band_side,
    fibonacci_levels,
    rolling_bands,
    sma_above,
    tick_counts,
    window_tick_sums,
)

__all__ = [
    "BollingerBandsDdof",
    "AdaptiveBollingerBands",
    "FibonacciLevels",
    "FIB_RATIOS",
    "fibonacci_levels",
    "rolling_bands",
    "TickSums",
    "tick_counts",
    "window_tick_sums",
    "sma_above",
    "band_side",
]
