"""TEMPORARY: the names of the former one-file ``m2k_bt.analyzers.standard``, for the modules
other branches still import them from (``engine/cerebro.py``, ``cli/live.py``,
``kernel/simulation.py``, ``benchmarks/bench_compare.py``). Delete this file once they import
from :mod:`m2k_bt.analyzers` (and :mod:`.common` / :mod:`.returns` for the three renamed
helpers below). New code must not import it.
"""

from .common import ratio, rounded
from .equity import equity_frame
from .registry import METRIC_KEYS, add_analyzers, metrics_from
from .returns import periods_from_counts, returns_statistics
from .trades import trade_statistics

__all__ = ["METRIC_KEYS", "add_analyzers", "equity_frame", "metrics_from",
           "returns_statistics", "trade_statistics"]

# the three private names kernel/simulation.py imports, renamed
_r = rounded
_div = ratio
_periods = periods_from_counts
