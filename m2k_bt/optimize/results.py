"""What a study found: the result and its trials table, the study's status, the overfitting
statistics over its trials (DSR and PBO) and the files ``optimize`` writes."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from ..errors import ConfigError, M2KError, did_you_mean
from ..outputs import atomic_open, atomic_write_text, jsonable
from ..report import write_study_html
from .claims import full_params, is_discarded
from .overfitting import deflated_sharpe_from_returns, probability_of_backtest_overfitting
from .space import params_key
from .storage import DB_ERRORS, DEFAULT_HEARTBEAT, StorageError, mask_url, one_line, storage_for

__all__ = [
    "DEFAULT_PBO_SPLITS",
    "OptimizeResult",
    "collect_result",
    "study_status",
    "format_status",
    "returns_matrix",
    "add_overfitting",
    "write_study_outputs",
]

#: Default PBO block count S (C(16, 8) = 12,870 splits).
DEFAULT_PBO_SPLITS = 16


@dataclass
class OptimizeResult:
    """What :func:`m2k_bt.optimize.study.optimize` found.

    - ``best_params``, ``best_value``: of the best feasible trial; ``objective``, ``direction``.
    - ``best_attrs``: that trial's ``metrics``, ``start_value``, ``final_value``, window.
    - ``n_complete``, ``n_infeasible``, ``n_failed``: trial counts in the study.
    - ``dsr``: :class:`m2k_bt.optimize.overfitting.DeflatedSharpe` as a dict for the best trial
      (per-day Sharpe ratios; ``sr_annualised`` = ``sr x sqrt(252)``), or None.
    - ``pbo``: :class:`m2k_bt.optimize.overfitting.PBOResult` as a dict (without per-split
      lists), or None; ``notes`` says why a statistic is missing.
    - ``trials``: one row per trial (number, state, params, value, main metrics).
    """

    best_params: dict
    best_value: float
    objective: str
    direction: str
    best_attrs: dict
    n_complete: int
    n_infeasible: int
    n_failed: int
    study_name: str
    storage: str | None
    trials: pd.DataFrame
    dsr: dict | None = None
    pbo: dict | None = None
    elapsed: float = 0.0
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    paths: dict = field(default_factory=dict)

    def summary(self) -> str:
        m = self.best_attrs.get("metrics", {})
        params = ", ".join(f"{k}={v}" for k, v in self.best_params.items())
        lines = [
            f"study {self.study_name}: {self.n_complete} complete, {self.n_infeasible} "
            f"infeasible, {self.n_failed} failed trials in {self.elapsed:.1f} s",
            f"best {self.objective} = {self.best_value:.4g} with {params}",
            "  net profit ${:,.2f}, trades {}, max drawdown {}".format(
                m.get("net_profit") or 0.0,
                m.get("trades"),
                "n/a" if m.get("max_drawdown_pct") is None else f"{m['max_drawdown_pct']:.2f}%",
            ),
        ]
        if self.dsr:
            lines.append(
                f"deflated Sharpe ratio {self.dsr['dsr']:.3f} (PSR {self.dsr['psr']:.3f}; "
                f"daily SR {self.dsr['sr']:.4f} vs SR* {self.dsr['sr_star']:.4f} for "
                f"{self.dsr['n_trials']} trials)"
            )
        if self.pbo:
            lines.append(
                f"probability of backtest overfitting {self.pbo['pbo']:.3f} "
                f"(CSCV, S={self.pbo['n_splits']}, {self.pbo['n_combinations']} splits)"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "objective": self.objective,
            "direction": self.direction,
            "best_params": self.best_params,
            "best_value": self.best_value,
            "best_metrics": self.best_attrs.get("metrics", {}),
            "best_window": [self.best_attrs.get("first_dt"), self.best_attrs.get("last_dt")],
            "trials_complete": self.n_complete,
            "trials_infeasible": self.n_infeasible,
            "trials_failed": self.n_failed,
            "deflated_sharpe": self.dsr,
            "pbo": self.pbo,
            "elapsed_s": round(self.elapsed, 3),
            "settings": self.settings,
            "notes": self.notes,
        }


def collect_result(study, objective, direction, url, sampler, notes) -> OptimizeResult:
    """The :class:`OptimizeResult` of a finished study (no settings, statistics or paths yet);
    a :class:`ConfigError` when no trial is feasible."""
    TS = optuna.trial.TrialState
    trials = [t for t in study.get_trials(deepcopy=False) if not is_discarded(t)]
    complete = [t for t in trials if t.state == TS.COMPLETE]
    pruned = [t for t in trials if t.state == TS.PRUNED]
    failed = [t for t in trials if t.state == TS.FAIL]
    rows = []
    for t in trials:
        m = t.user_attrs.get("backtest", {}).get("metrics", {})
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                **{f"param_{k}": v for k, v in t.params.items()},
                "infeasible": t.user_attrs.get("infeasible"),
                "retry_of": t.user_attrs.get("retry_of"),
                **{
                    k: m.get(k)
                    for k in (
                        "net_profit",
                        "sharpe",
                        "sqn",
                        "profit_factor",
                        "win_rate",
                        "trades",
                        "max_drawdown_pct",
                    )
                },
                "elapsed_s": t.user_attrs.get("backtest", {}).get("elapsed"),
            }
        )
    table = pd.DataFrame(rows)
    if not complete:
        reasons = sorted({t.user_attrs.get("infeasible", "?").split(":")[0] for t in pruned})
        raise ConfigError(
            f"no feasible trial among {len(trials)} in study '{study.study_name}' "
            f"(infeasible: {', '.join(reasons) or 'none'}); widen --space, lower --min-trades "
            f"or use more data"
        )
    best = study.best_trial
    return OptimizeResult(
        best_params=dict(best.params),
        best_value=float(best.value),
        objective=objective,
        direction=direction,
        best_attrs={k: v for k, v in best.user_attrs.get("backtest", {}).items() if k != "returns"},
        n_complete=len(complete),
        n_infeasible=len(pruned),
        n_failed=len(failed),
        study_name=study.study_name,
        storage=mask_url(url),
        trials=table,
        notes=list(notes),
    )


def study_status(storage: str, study_name: str | None = None) -> list[dict]:
    """Progress of the studies in ``storage`` (or of ``study_name``), read without running
    anything: ``study``, ``trials`` (the study's --trials), counts ``complete``,
    ``infeasible``, ``running``, ``queued``, ``failed``, ``distinct`` parameter sets, ``best``
    (``{"value", "params", "number"}`` or None) and ``running_trials``
    (``[{"number", "owner", "seconds", "params"}]``)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage
    st = storage_for(url, heartbeat=DEFAULT_HEARTBEAT)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    except DB_ERRORS as exc:
        raise StorageError(f"--storage {mask_url(url)}: {one_line(exc, url)}") from None
    if study_name is not None:
        if study_name not in names:
            raise StorageError(
                f"--storage {mask_url(url)} holds no study '{study_name}'"
                f"{did_you_mean(study_name, names)}; studies: {', '.join(names) or 'none'}"
            )
        names = [study_name]
    out, now = [], datetime.now()
    for name in names:
        study = optuna.load_study(study_name=name, storage=st)
        trials = [t for t in study.get_trials(deepcopy=False) if not is_discarded(t)]
        by = {k: [t for t in trials if t.state.name == k] for k in
              ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")}
        best = None
        if by["COMPLETE"]:
            b = study.best_trial
            best = {"value": b.value, "params": dict(b.params), "number": b.number}
        out.append({
            "study": name,
            "trials": study.user_attrs.get("trials"),
            "objective": study.user_attrs.get("objective"),
            "complete": len(by["COMPLETE"]),
            "infeasible": len(by["PRUNED"]),
            "running": len(by["RUNNING"]),
            "queued": len(by["WAITING"]),
            "failed": len(by["FAIL"]),
            "distinct": len({params_key(t.params) for t in by["COMPLETE"] + by["PRUNED"]}),
            "best": best,
            "running_trials": [
                {
                    "number": t.number,
                    "owner": t.system_attrs.get("m2k_owner"),
                    "seconds": round((now - t.datetime_start).total_seconds(), 1)
                    if t.datetime_start else None,
                    "params": full_params(t, list(t.params)) or dict(t.params),
                }
                for t in by["RUNNING"]
            ],
        })
    return out


def format_status(rows: list[dict]) -> str:
    """The text ``optimize --status`` prints."""
    if not rows:
        return "no study in this storage yet"
    lines = []
    for r in rows:
        done = r["complete"] + r["infeasible"]
        lines.append(
            f"study {r['study']}: {done}/{r['trials'] or '?'} finished ({r['complete']} complete, "
            f"{r['infeasible']} infeasible; {r['distinct']} distinct), {r['running']} running, "
            f"{r['queued']} queued, {r['failed']} failed"
        )
        if r["best"]:
            params = ", ".join(f"{k}={v}" for k, v in r["best"]["params"].items())
            lines.append(
                f"  best {r['objective'] or 'value'} = {r['best']['value']:.4g} with {params} "
                f"(trial {r['best']['number']})"
            )
        for t in r["running_trials"]:
            params = ", ".join(f"{k}={v}" for k, v in t["params"].items())
            lines.append(
                f"  running: trial {t['number']} ({params}) on {t['owner'] or '?'} for "
                f"{t['seconds']} s"
            )
    return "\n".join(lines)


def returns_matrix(study) -> pd.DataFrame:
    """Dates x complete trials (column = trial number) of recorded daily returns; one column
    per distinct parameter set (the first trial that ran it)."""
    cols, seen = {}, set()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        r = t.user_attrs.get("backtest", {}).get("returns")
        if r and params_key(t.params) not in seen:
            seen.add(params_key(t.params))
            cols[t.number] = r
    if not cols:
        return pd.DataFrame()
    # one array, not a Series per trial: trials of one study mostly share their dates
    dates = sorted(set().union(*cols.values()))
    values = np.array([[r.get(d, np.nan) for d in dates] if len(r) != len(dates) or
                       list(r) != dates else list(r.values()) for r in cols.values()],
                      dtype=float).T
    values[np.isnan(values)] = 0.0  # a trial without a return that day (or a NaN one)
    return pd.DataFrame(values, index=pd.DatetimeIndex(dates), columns=list(cols))


def add_overfitting(study, result: OptimizeResult, pbo_splits: int) -> None:
    """Set ``result.dsr`` and ``result.pbo`` from the study's daily returns (or say in
    ``result.notes`` why one is missing)."""
    matrix = returns_matrix(study)
    best_key = params_key(study.best_trial.params)
    best = next(
        (t.number for t in study.get_trials(deepcopy=False)
         if t.number in matrix and params_key(t.params) == best_key),
        study.best_trial.number,
    )
    if matrix.empty or best not in matrix or len(matrix) < 3:
        result.notes.append("DSR and PBO need daily returns of 3+ trade dates; none computed")
        return
    try:
        # N counts every backtest the search ran and looked at, the infeasible ones (too few
        # trades, undefined objective) included: they were tried and discarded, which is the
        # selection the deflation corrects for. Constraint violations never ran: not counted.
        # distinct configurations: a parameter set run twice is one trial of the search
        ran = len(
            {
                params_key(t.params)
                for t in study.get_trials(deepcopy=False)
                if t.state.name in ("COMPLETE", "PRUNED") and "backtest" in t.user_attrs
            }
        )
        n = max(ran, matrix.shape[1])
        d = deflated_sharpe_from_returns(matrix, n_trials=n, selected=best).as_dict()
        d["sr_annualised"] = d["sr"] * math.sqrt(252)
        d["best"] = int(d["best"])
        result.dsr = d
    except M2KError as exc:
        result.notes.append(f"DSR not computed: {exc}")
    s = min(pbo_splits, 2 * (len(matrix) // 4))
    if matrix.shape[1] < 2 or s < 2:
        result.notes.append(
            f"PBO needs 2+ complete trials and 4+ trade dates; have {matrix.shape[1]} trials, "
            f"{len(matrix)} dates"
        )
        return
    r = probability_of_backtest_overfitting(matrix, n_splits=s).as_dict()
    result.pbo = {
        k: v
        for k, v in r.items()
        if k not in ("is_best", "is_performance", "oos_performance", "logits")
    }
    result.pbo["logit_median"] = float(np.median(r["logits"]))


def write_study_outputs(result: OptimizeResult, out: Path, html: str | None = None) -> dict:
    """trials.csv, study.html (``html``: its text, already made) and optimize.json (the
    marker: written last), each written atomically (a kill leaves the old file or the new
    one; a symlink planted in ``out`` is replaced, not followed). Stopped while writing
    (Ctrl-C, SIGTERM, a full disk), it removes what it wrote: a folder holds all three or
    none (``study.db`` is kept either way)."""
    paths = {}
    names = ("optimize.json", "trials.csv", "study.html")  # the marker first
    try:
        p = out / "trials.csv"
        with atomic_open(p, "w", newline="") as fh:
            result.trials.to_csv(fh, index=False)
        paths["trials.csv"] = p
        paths["study.html"] = write_study_html(result, out / "study.html", html)
        p = out / "optimize.json"
        atomic_write_text(p, json.dumps(jsonable(result.as_dict(), times=str), indent=2))
        paths["optimize.json"] = p
    except BaseException:
        for name in names:
            with contextlib.suppress(OSError):
                (out / name).unlink()
        raise
    if result.storage and result.storage.startswith("sqlite:///"):
        paths["study.db"] = Path(result.storage[len("sqlite:///") :])
    return paths
