"""The research engine: a compiled simulation proven equal to cerebro's."""

from .choice import choose_engine
from .simulation import (
    KERNEL_EXIT_REASONS,
    KernelData,
    KernelDiverged,
    KernelResult,
    KernelUnsupported,
    prepare,
    run_backtest_fast,
    run_figures_fast,
    run_figures_many,
    run_kernel_or_say_why,
    shared_bars,
    simulate,
    simulate_many,
    supported,
)

__all__ = [
    "KernelResult",
    "KernelData",
    "KernelUnsupported",
    "KernelDiverged",
    "simulate",
    "simulate_many",
    "supported",
    "prepare",
    "KERNEL_EXIT_REASONS",
    "run_kernel_or_say_why",
    "run_backtest_fast",
    "run_figures_fast",
    "run_figures_many",
    "shared_bars",
    "choose_engine",
]
