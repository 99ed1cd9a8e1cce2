"""Studies: parameter search, walk-forward and overfitting statistics (the ``optimize`` extra).

The modules, one job each: :mod:`.space` (search spaces), :mod:`.trial` (one trial),
:mod:`.storage` (where a study lives), :mod:`.trialindex` (what a process has read of a
study's trials), :mod:`.claims` (processes sharing a study), :mod:`.writebehind` (a private
study kept in memory), :mod:`.threads` (one BLAS thread in the trial loop), :mod:`.drivers`
(this process, local backtesters or a local pool, Dask), :mod:`.results` (the result, status,
DSR/PBO, files), :mod:`.study` (:func:`optimize`), :mod:`.walkforward` and
:mod:`.overfitting`.
"""

from .overfitting import (
    EULER_GAMMA,
    DeflatedSharpe,
    PBOResult,
    daily_returns,
    deflated_sharpe_from_returns,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_ratio,
)
from .results import OptimizeResult, format_status, study_status
from .space import DEFAULT_SPACES, ParamRange, parse_space
from .storage import StorageError, mask_url, study_storage_url
from .study import optimize
from .trial import OBJECTIVES, evaluate_batch, evaluate_params
from .walkforward import (
    Fold,
    WalkForwardResult,
    Window,
    annualised_return,
    folds_for_count,
    parameter_stability,
    parse_window,
    plot_oos_equity,
    split_folds,
    walk_forward,
)

__all__ = [
    "EULER_GAMMA",
    "sharpe_ratio",
    "probabilistic_sharpe_ratio",
    "expected_max_sharpe",
    "deflated_sharpe_ratio",
    "DeflatedSharpe",
    "deflated_sharpe_from_returns",
    "PBOResult",
    "probability_of_backtest_overfitting",
    "daily_returns",
    "OBJECTIVES",
    "DEFAULT_SPACES",
    "ParamRange",
    "parse_space",
    "evaluate_batch",
    "OptimizeResult",
    "optimize",
    "evaluate_params",
    "study_storage_url",
    "study_status",
    "format_status",
    "mask_url",
    "StorageError",
    "Window",
    "Fold",
    "parse_window",
    "split_folds",
    "folds_for_count",
    "WalkForwardResult",
    "walk_forward",
    "annualised_return",
    "parameter_stability",
    "plot_oos_equity",
]
