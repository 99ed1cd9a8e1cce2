"""Which engine runs a configuration's backtests: the compiled kernel where it models the
configuration exactly, else cerebro, saying why.

One place decides, for ``run_backtest.py --engine``, :func:`m2k_bt.optimize.study.optimize`
and :func:`m2k_bt.optimize.walkforward.walk_forward`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .simulation import run_backtest_fast, supported

__all__ = ["ENGINES", "choose_engine"]

#: The engines a run can ask for.
ENGINES = ("kernel", "cerebro")


def choose_engine(config, engine: str, run_backtest: Callable | None = None
                  ) -> tuple[Callable | None, dict]:
    """``(backtest function, info)`` for running ``config`` with ``engine``.

    - ``engine``: ``"kernel"`` or ``"cerebro"``; anything else is a :class:`ConfigError`.
    - ``run_backtest``: the caller's own backtest function, which then wins:
      ``(run_backtest, {"engine": "custom"})``.
    - ``"cerebro"``: ``(None, {"engine": "cerebro"})``: None means
      :func:`m2k_bt.engine.cerebro.run_backtest`.
    - ``"kernel"``: ``(run_backtest_fast, {"engine": "kernel"})`` when
      :func:`m2k_bt.kernel.simulation.supported` says the kernel models ``config``, else
      ``(None, {"engine": "cerebro", "kernel_unsupported": why})``.

    >>> from m2k_bt.engine import BacktestConfig
    >>> choose_engine(BacktestConfig(sizer="fixed"), "cerebro")
    (None, {'engine': 'cerebro'})
    >>> from m2k_bt.strategies import SmaCrossover
    >>> class Mine(SmaCrossover):
    ...     def direction(self):
    ...         return 1
    >>> run, info = choose_engine(BacktestConfig(strategy=Mine), "kernel")
    >>> run, info["engine"], info["kernel_unsupported"][:33]
    (None, 'cerebro', 'strategy Mine is a per-bar strate')
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be 'kernel' or 'cerebro', got {engine!r}")
    if run_backtest is not None:
        return run_backtest, {"engine": "custom"}
    if engine == "cerebro":
        return None, {"engine": "cerebro"}
    ok, why = supported(config)
    if not ok:
        return None, {"engine": "cerebro", "kernel_unsupported": why}
    return run_backtest_fast, {"engine": "kernel"}
