"""Any trial of a finished study, rebuilt in full on demand.

A study keeps only each trial's figures (metrics, final value, daily returns): no trade log,
analyzers or report, which would cost more than the trial. :func:`study_trial` reads one
trial's parameters and figures back from a study's output folder; the command line's
``run_backtest.py --from-study DIR --trial N`` (with the study's data and settings flags) runs
those parameters as an ordinary backtest, with every output, and :func:`check_reopened`
proves it is the very trial: its final value to the cent and its metrics to 1e-9, or an error
naming both numbers (the data or a setting differs from the study's).
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna

from ..errors import ConfigError, M2KError
from .storage import SQLITE_FILES, study_storage_url

__all__ = ["study_trial", "check_reopened"]


def study_trial(folder: str | Path, number: int, study_name: str | None = None
                ) -> tuple[dict, dict]:
    """``(parameters, figures)`` of trial ``number`` of the study in ``folder`` (an optimize
    run's ``--out``, holding ``study.db``); ``study_name`` when the storage holds several.
    One :class:`~m2k_bt.errors.ConfigError` line for a folder without a study, a number the
    study does not have, or a trial that ran no backtest."""
    folder = Path(folder)
    if not (folder / SQLITE_FILES[0]).is_file():
        raise ConfigError(f"--from-study {folder}: no {SQLITE_FILES[0]} there; give the --out "
                          f"folder of an optimize run")
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ConfigError(f"--trial must be a trial number >= 0, got {number!r}")
    storage = study_storage_url(folder)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = optuna.get_all_study_names(storage)
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"--from-study {folder}: study {study_name!r} not found; it holds "
                          f"{', '.join(names) or 'none'}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise ConfigError(f"--trial {number}: the study has trials 0 to {len(trials) - 1}")
    figures = found.user_attrs.get("backtest")
    if not figures:
        why = found.user_attrs.get("infeasible") or found.state.name.lower()
        raise ConfigError(f"--trial {number} ran no backtest ({why}); pick a trial that did "
                          f"(trials.csv, state COMPLETE or PRUNED with metrics)")
    return dict(found.params), dict(figures)


def check_reopened(result, figures: dict, number: int) -> None:
    """Raise :class:`~m2k_bt.errors.M2KError` unless ``result`` (a full backtest of trial
    ``number``'s parameters) is the trial the study recorded (``figures``): final value to
    the cent, each recorded metric to 1e-9 relative."""
    want = float(figures["final_value"])
    if abs(float(result.final_value) - want) >= 0.005:
        raise M2KError(f"trial {number} ended at {want:.2f} in the study but at "
                       f"{result.final_value:.2f} now: run with the study's data and settings "
                       f"(the same --data, --start/--end, --sizer, --cash and other flags)")
    for key, value in (figures.get("metrics") or {}).items():
        got = (result.metrics or {}).get(key)
        if value is None or got is None:
            same = value is None and (got is None or not math.isfinite(got))
        else:
            same = abs(got - value) <= 1e-9 * max(1.0, abs(value))
        if not same:
            raise M2KError(f"trial {number}'s {key} was {value!r} in the study but is {got!r} "
                           f"now: run with the study's data and settings")
