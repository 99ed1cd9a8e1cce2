"""Indicators the article uses where backtrader lacks them."""

from .bands import (
    BollingerBandsDdof,
    AdaptiveBollingerBands,
    FibonacciLevels,
    FIB_RATIOS,
    fibonacci_levels,
    rolling_bands,
    TickSums,
    tick_counts,
    window_tick_sums,
    sma_above,
    band_side,
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
