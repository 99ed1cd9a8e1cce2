"""Parameter search with Optuna: TPE (Bergstra et al., 2011) or a grid, on full backtests.

Every trial is one complete :func:`m2k_bt.engine.run_backtest` (our contract model, sizer,
broker and the minimal analyzers ``returns`` and ``trades``): no shortcut changes a result. The
objective is a key of ``result.metrics`` (:data:`OBJECTIVES`); each trial also records its
daily returns (per CME trade date) so that :mod:`m2k_bt.overfitting` can compute the Deflated
Sharpe Ratio and the Probability of Backtest Overfitting over all trials of the study.

Search space (:func:`parse_space`): ``fast=10:100:5`` (integers 10 to 100 step 5),
``devfactor=1.5:3.0:0.25`` (floats on a step; ``1.5:3.0`` is continuous, TPE only),
``exit=middle,signal`` (choices), ``period=20`` (fixed).

Constraints. A trial is **infeasible** when the strategy's ``validate_params`` rejects its
parameters (e.g. SmaCrossover's ``fast < slow``; no backtest is run), when it makes fewer than
``min_trades`` round trips, or when the objective is undefined (e.g. no Sharpe ratio without a
return). Infeasible trials are recorded as Optuna ``PRUNED`` with the reason in the user
attribute ``infeasible``; TPE treats them as the worst trials and they count towards
``trials``. Their returns take no part in DSR and PBO, but those that ran a backtest count in
the DSR's number of trials N (they were tried, then discarded).

Where the study lives and who runs it:

- **Embedded default**: SQLite ``study.db`` in the output folder, run by ``workers`` local
  processes (def: one per core), each calling ``study.optimize`` on the shared storage, with
  the bars sent once per process. ``workers=1`` runs in this process.
- ``storage``: any Optuna RDB URL, e.g. ``postgresql://user:pw@db-host/optuna``, so that
  drivers on many machines share one study (run the same command on each; give each the same
  ``--study-name``). Storages other than SQLite get Optuna's heartbeat (60 s) and
  ``RetryHeartbeatStaleTrialCallback``: a trial whose process died is failed after 180 s and
  re-queued with the same parameters (SQLite studies are recovered at once, see Resume).
- ``dask``: ``"local"`` starts a ``distributed.LocalCluster(n_workers=2, processes=True,
  threads_per_worker=1)``; an address such as ``"tcp://10.0.0.5:8786"`` connects to a running
  cluster. Trials run as Dask tasks (``ask`` here, backtest on a worker, ``tell`` here); the
  study stays in the driver's storage. To build a cluster on several machines, with the same
  Python environment and ``pip install -e .[optimize]`` on each::

      # machine A (scheduler; port 8786 for workers, 8787 dashboard)
      dask scheduler
      # every machine that should run backtests, one process per core, one thread each
      dask worker tcp://A:8786 --nworkers auto --nthreads 1
      # anywhere, the driver
      python run_backtest.py optimize --dask tcp://A:8786 --trials 500 --out results/opt

Resume. Re-running with the same output folder (or ``storage`` and ``study_name``) loads the
study and runs only what is missing up to ``trials`` finished (complete + infeasible) trials.
Trials left ``RUNNING`` or ``FAIL`` by an interrupted run are marked ``FAIL`` and their
parameters re-queued once, so no trial is lost; a grid never queues a parameter set twice.

Determinism. With ``seed`` and one worker, TPE proposes the same trials in the same order and
finds the same best parameters every time (the backtests themselves are deterministic). With
several workers or Dask the order in which results come back varies, so TPE's later proposals
and possibly the best parameters vary: the seed then makes each worker's sampler reproducible,
not the study. A grid evaluates the same set of points at any worker count.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, M2KError, ParameterError, did_you_mean

__all__ = [
    "OBJECTIVES",
    "DEFAULT_SPACES",
    "ParamRange",
    "parse_space",
    "OptimizeResult",
    "optimize",
    "evaluate_params",
    "study_storage_url",
]

#: Objectives (keys of ``BacktestResult.metrics``) and their direction.
OBJECTIVES = {
    "sharpe": "maximize",
    "sortino": "maximize",
    "calmar": "maximize",
    "sqn": "maximize",
    "net_profit": "maximize",
    "return_pct": "maximize",
    "cagr": "maximize",
    "profit_factor": "maximize",
    "win_rate": "maximize",
    "expectancy": "maximize",
    "max_drawdown": "minimize",
    "max_drawdown_pct": "minimize",
}

#: Search spaces used when none is given, per strategy name.
DEFAULT_SPACES = {
    "sma": ("fast=10:100:5", "slow=50:300:10"),
    "bollinger": ("period=10:60:5", "devfactor=1.5:3.0:0.25"),
    "adaptive": ("period_high=16:40:4", "period_low=8:14:2", "devfactor=1.5:3.0:0.25"),
}

#: Default PBO block count S (C(16, 8) = 12,870 splits).
DEFAULT_PBO_SPLITS = 16


# ---------------------------------------------------------------- search space


@dataclass(frozen=True)
class ParamRange:
    """One searched parameter: ``kind`` ``"int"``, ``"float"`` or ``"choice"``.

    >>> r = parse_space(["fast=10:30:10"])["fast"]
    >>> r.kind, r.grid()
    ('int', [10, 20, 30])
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step))
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step)
        return trial.suggest_categorical(self.name, list(self.choices))

    def grid(self) -> list:
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None:
            raise ConfigError(
                f"--space {self}: a grid needs a step for every float range, e.g. "
                f"{self.name}={self.low}:{self.high}:0.25"
            )
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        if self.kind == "int":
            return [int(self.low + i * self.step) for i in range(n)]
        return [round(self.low + i * self.step, 10) for i in range(n)]

    def __str__(self) -> str:
        if self.kind == "choice":
            return f"{self.name}={','.join(map(str, self.choices))}"
        num = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: repr(float(v)))
        step = "" if self.step is None else f":{num(self.step)}"
        return f"{self.name}={num(self.low)}:{num(self.high)}{step}"


def _scalar(text: str):
    t = text.strip()
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return t


def _parse_one(item: str) -> ParamRange:
    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ConfigError(
            f"--space takes NAME=LOW:HIGH[:STEP] or NAME=A,B,C, got {item!r} "
            f"(e.g. fast=10:100:5, devfactor=1.5:3.0:0.25, exit=middle,signal)"
        )
    if ":" in value:
        parts = value.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"--space {item!r}: a range is LOW:HIGH or LOW:HIGH:STEP")
        nums = [_scalar(p) for p in parts]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in nums):
            raise ConfigError(f"--space {item!r}: range bounds and step must be numbers")
        if any(not math.isfinite(x) for x in nums):
            raise ConfigError(f"--space {item!r}: range bounds and step must be finite")
        is_int = all(isinstance(x, int) for x in nums)
        low, high = nums[0], nums[1]
        step = nums[2] if len(nums) == 3 else (1 if is_int else None)
        if low > high:
            raise ConfigError(f"--space {item!r}: low {low} is above high {high}")
        if step is not None and step <= 0:
            raise ConfigError(f"--space {item!r}: step must be > 0, got {step}")
        return ParamRange(name, "int" if is_int else "float", low, high, step)
    choices = tuple(_scalar(c) for c in value.split(",") if c.strip())
    if not choices:
        raise ConfigError(f"--space {item!r}: no choices")
    return ParamRange(name, "choice", choices=choices)


def parse_space(
    spec: str | Sequence[str] | dict | None = None, strategy=None
) -> dict[str, ParamRange]:
    """Parse ``["fast=10:100:5", "slow=50:300:10"]`` (or one string separated by spaces or
    semicolons) into :class:`ParamRange` objects; ``None`` gives the strategy's
    :data:`DEFAULT_SPACES`. Names are checked against the strategy's parameters when the
    strategy can be resolved.

    >>> sorted(parse_space("fast=10:100:5 slow=50:300:10"))
    ['fast', 'slow']
    >>> parse_space(["devfactor=1.5:3.0:0.25"])["devfactor"].grid()[:3]
    [1.5, 1.75, 2.0]
    """
    if isinstance(spec, dict):
        space = {
            k: (v if isinstance(v, ParamRange) else _parse_one(f"{k}={v}")) for k, v in spec.items()
        }
    else:
        if spec is None:
            key = strategy.lower() if isinstance(strategy, str) else None
            if key not in DEFAULT_SPACES:
                raise ConfigError(
                    f"no default search space for strategy {strategy!r}; give --space, e.g. "
                    f"--space period=10:60:5 devfactor=1.5:3.0:0.25"
                )
            spec = DEFAULT_SPACES[key]
        items = spec.replace(";", " ").split() if isinstance(spec, str) else list(spec)
        space = {}
        for item in items:
            r = _parse_one(item)
            if r.name in space:
                raise ConfigError(f"--space names '{r.name}' twice")
            space[r.name] = r
    if not space:
        raise ConfigError("the search space is empty; give --space NAME=LOW:HIGH[:STEP]")
    known = _strategy_param_names(strategy)
    if known is not None:
        for name in space:
            if name not in known:
                raise ParameterError(
                    f"--space: unknown parameter '{name}' of strategy {_strategy_label(strategy)}"
                    f"{did_you_mean(name, known)}; known: {', '.join(sorted(known))}"
                )
    return space


def _strategy_class(strategy):
    if strategy is None:
        return None
    if isinstance(strategy, type):
        return strategy
    try:
        from .engine import resolve_strategy
    except ImportError:  # pragma: no cover - engine always ships
        return None
    try:
        return resolve_strategy(strategy)
    except ImportError:
        return None


def _strategy_param_names(strategy) -> list[str] | None:
    cls = _strategy_class(strategy)
    params = getattr(cls, "params", None)
    getkeys = getattr(params, "_getkeys", None)
    return list(getkeys()) if getkeys else None


def _strategy_label(strategy) -> str:
    return strategy.__name__ if isinstance(strategy, type) else repr(strategy)


# ---------------------------------------------------------------- one trial


def _equity_values(result) -> pd.Series:
    eq = getattr(result, "equity", None)
    if eq is not None and len(eq) and "value" in eq:
        return eq["value"]
    return pd.Series(dtype=float, index=pd.DatetimeIndex([]))


def evaluate_params(
    bars: pd.DataFrame,
    config,
    params: dict,
    objective: str = "sharpe",
    min_trades: int = 1,
    run_backtest: Callable | None = None,
) -> dict:
    """Run one trial; a plain, picklable dict (what a worker sends back):

    ``value`` (objective, or None), ``infeasible`` (reason or None) and ``attrs``: ``metrics``,
    ``start_value``, ``final_value``, ``first_dt``, ``last_dt``, ``elapsed`` (s) and
    ``returns`` (``{"YYYY-MM-DD": daily return}``). A study stores ``attrs`` in the trial's user
    attribute ``backtest`` and the reason in ``infeasible``.
    """
    from .overfitting import daily_returns

    fixed = dict(getattr(config, "params", {}) or {})
    # command-line --param values arrive as text: compare numbers as numbers
    merged = {**{k: _scalar(v) if isinstance(v, str) else v for k, v in fixed.items()}, **params}
    cls = _strategy_class(getattr(config, "strategy", None))
    validate = getattr(cls, "validate_params", None)
    try:
        if validate is not None:
            validate(dict(merged))
        if "fast" in merged and "slow" in merged and merged["fast"] >= merged["slow"]:
            raise ParameterError(f"fast ({merged['fast']}) must be below slow ({merged['slow']})")
    except ParameterError as exc:
        return {"value": None, "infeasible": f"constraint: {exc}", "attrs": {}}
    if run_backtest is None:
        from .engine import run_backtest
    t0 = time.perf_counter()
    result = run_backtest(bars, dataclasses.replace(config, params=merged, analyzers=False))
    elapsed = time.perf_counter() - t0
    metrics = {k: _plain_number(v) for k, v in (result.metrics or {}).items()}
    rets = daily_returns(_equity_values(result), result.start_value)
    attrs = {
        "metrics": metrics,
        "start_value": float(result.start_value),
        "final_value": float(result.final_value),
        "first_dt": str(result.first_dt),
        "last_dt": str(result.last_dt),
        "elapsed": round(elapsed, 4),
        "returns": {d.strftime("%Y-%m-%d"): float(r) for d, r in rets.items()},
    }
    value = metrics.get(objective)
    trades = metrics.get("trades") or 0
    reason = None
    if trades < min_trades:
        reason = f"min_trades: {trades} trades < {min_trades}"
    elif value is None or not math.isfinite(value):
        reason = f"objective {objective} undefined ({value})"
    return {"value": None if reason else float(value), "infeasible": reason, "attrs": attrs}


def _plain_number(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _apply(trial, outcome: dict):
    """Record an outcome on an Optuna trial; return ``(state, value)`` for ``tell``."""
    import optuna

    if outcome["attrs"]:
        trial.set_user_attr("backtest", outcome["attrs"])  # one write: SQLite commits are slow
    if outcome["infeasible"]:
        trial.set_user_attr("infeasible", outcome["infeasible"])
        return optuna.trial.TrialState.PRUNED, None
    return optuna.trial.TrialState.COMPLETE, outcome["value"]


def _make_objective(bars, config, space, objective, min_trades, run_backtest):
    import optuna

    def fn(trial):
        params = {name: r.suggest(trial) for name, r in space.items()}
        outcome = evaluate_params(bars, config, params, objective, min_trades, run_backtest)
        state, value = _apply(trial, outcome)
        if state == optuna.trial.TrialState.PRUNED:
            raise optuna.TrialPruned(outcome["infeasible"])
        return value

    return fn


# ---------------------------------------------------------------- storage and study


def study_storage_url(out: str | Path) -> str:
    """The embedded storage URL of an output folder: ``sqlite:///<out>/study.db``."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def _is_remote(url: str | None) -> bool:
    """Another machine may run trials of this study: any RDB URL but a SQLite file."""
    return url is not None and not url.startswith("sqlite:")


def _storage(url: str | None):
    import warnings

    import optuna

    if url is None:
        return None
    if _is_remote(url):
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                heartbeat_interval=60,
                grace_period=180,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    _fast_sqlite(storage.engine)
    return storage


def _fast_sqlite(engine) -> None:
    """Make SQLite safe and quick for several worker processes.

    - ``BEGIN IMMEDIATE`` for every transaction: Python's sqlite3 otherwise starts the
      transaction only at the first write, so two workers could both read a queued (WAITING)
      trial as free and both run it. Optuna's check-then-set in ``set_trial_state_values`` is
      atomic only inside a real write transaction.
    - WAL journal and ``synchronous=NORMAL``: a commit no longer waits for the disk, which cut
      Optuna's per-trial bookkeeping about tenfold here. A crashed or killed process loses
      nothing committed; only a power cut may lose the last commits (those trials then simply
      run again on resume).
    """
    from sqlalchemy import event

    def on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    def on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()  # connections opened during set-up get the settings too


def _sampler(name: str, seed: int | None, parallel: bool):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel)
    # grid: every point is enqueued, so the sampler never proposes anything itself
    return optuna.samplers.RandomSampler(seed=seed)


def _key(params: dict, names) -> tuple:
    return tuple(_hashable(params.get(n)) for n in names)


def _hashable(v):
    if isinstance(v, float) and v.is_integer():
        return v  # 2.0 == 2 hashes alike
    return v


def _prepare_queue(study, space, sampler: str, target: int, recover: bool) -> list[str]:
    """Fail and re-queue interrupted trials; queue grid points. Returns notes."""
    import optuna

    TS = optuna.trial.TrialState
    notes = []
    names = list(space)
    trials = study.get_trials(deepcopy=False)
    done = {_key(t.params, names) for t in trials if t.state in (TS.COMPLETE, TS.PRUNED)}
    waiting = {
        _key(t.system_attrs.get("fixed_params", t.params), names)
        for t in trials
        if t.state == TS.WAITING
    }
    if recover:
        retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
        for t in trials:
            if t.state not in (TS.RUNNING, TS.FAIL):
                continue
            if t.state == TS.RUNNING:
                study._storage.set_trial_state_values(t._trial_id, TS.FAIL)
            if t.number in retried:
                continue
            key = _key(t.params, names)
            if t.params and key not in done and key not in waiting:
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
                waiting.add(key)
                notes.append(f"trial {t.number} ({t.state.name}) re-queued with {t.params}")
    if sampler == "grid":
        n_finished = len(done)
        room = max(0, target - n_finished - len(waiting))
        grid = itertools.product(*(space[n].grid() for n in names))
        queued = 0
        for point in grid:
            if queued >= room:
                break
            key = tuple(_hashable(v) for v in point)
            if key in done or key in waiting:
                continue
            study.enqueue_trial(dict(zip(names, point)))
            waiting.add(key)
            queued += 1
    return notes


def _count(study) -> tuple[int, int, int, int]:
    import optuna

    TS = optuna.trial.TrialState
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return (
        states.count(TS.COMPLETE),
        states.count(TS.PRUNED),
        states.count(TS.FAIL),
        states.count(TS.WAITING),
    )


# ---------------------------------------------------------------- runners


def _worker(args) -> int:
    """One local worker process: load the study and run ``quota`` trials."""
    (url, name, quota, bars, config, space, objective, min_trades, run, sampler, seed) = args
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=name, storage=_storage(url), sampler=_sampler(sampler, seed, True)
    )
    fn = _make_objective(bars, config, space, objective, min_trades, run)
    study.optimize(fn, n_trials=quota, catch=())
    return quota


def _run_pool(study, url, workers, remaining, payload, sampler, seed, progress, target):
    import concurrent.futures as cf
    import multiprocessing as mp

    quotas = [remaining // workers + (1 if i < remaining % workers else 0) for i in range(workers)]
    quotas = [q for q in quotas if q > 0]
    bars, config, space, objective, min_trades, run = payload
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=len(quotas), mp_context=ctx) as pool:
        futs = [
            pool.submit(
                _worker,
                (
                    url,
                    study.study_name,
                    q,
                    bars,
                    config,
                    space,
                    objective,
                    min_trades,
                    run,
                    sampler,
                    None if seed is None else seed + i,
                ),
            )
            for i, q in enumerate(quotas)
        ]
        pending = set(futs)
        while pending:
            finished, pending = cf.wait(pending, timeout=0.5)
            for f in finished:
                f.result()  # re-raise a worker's error here
            if progress is not None:
                c, p, _, _ = _count(study)
                progress(min(c + p, target), target)


def _run_dask(study, client, remaining, payload, progress, target):
    from distributed import as_completed

    bars, config, space, objective, min_trades, run = payload
    bars_f = client.scatter(bars, broadcast=True)
    n_slots = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
    launched = 0
    running: dict = {}
    ac = as_completed()

    def launch():
        nonlocal launched
        trial = study.ask()
        params = {name: r.suggest(trial) for name, r in space.items()}
        fut = client.submit(
            evaluate_params, bars_f, config, params, objective, min_trades, run, pure=False
        )
        running[fut.key] = trial
        ac.add(fut)
        launched += 1

    while launched < remaining and launched < n_slots:
        launch()
    for fut in ac:
        trial = running.pop(fut.key)
        try:
            outcome = fut.result()
        except BaseException:
            import optuna

            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        state, value = _apply(trial, outcome)
        study.tell(trial, value, state=state)
        if progress is not None:
            c, p, _, _ = _count(study)
            progress(min(c + p, target), target)
        if launched < remaining:
            launch()


# ---------------------------------------------------------------- driver


@dataclass
class OptimizeResult:
    """What :func:`optimize` found.

    - ``best_params``, ``best_value``: of the best feasible trial; ``objective``, ``direction``.
    - ``best_attrs``: that trial's ``metrics``, ``start_value``, ``final_value``, window.
    - ``n_complete``, ``n_infeasible``, ``n_failed``: trial counts in the study.
    - ``dsr``: :class:`m2k_bt.overfitting.DeflatedSharpe` as a dict for the best trial
      (per-day Sharpe ratios; ``sr_annualised`` = ``sr x sqrt(252)``), or None.
    - ``pbo``: :class:`m2k_bt.overfitting.PBOResult` as a dict (without per-split lists), or
      None; ``notes`` says why a statistic is missing.
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


def _preselect(bars: pd.DataFrame, config):
    """Apply start/end/resample once, so each trial does not redo them."""
    if not any(getattr(config, k, None) for k in ("start", "end", "resample")):
        return bars, config
    from . import engine

    select = getattr(engine, "select_bars", None) or engine._select
    return select(bars, config), dataclasses.replace(config, start=None, end=None, resample=None)


def optimize(
    bars: pd.DataFrame,
    config,
    space: str | Sequence[str] | dict | None = None,
    trials: int | None = None,
    objective: str = "sharpe",
    sampler: str = "tpe",
    workers: int | None = None,
    storage: str | None = None,
    dask: str | None = None,
    seed: int | None = None,
    min_trades: int = 1,
    study_name: str | None = None,
    out: str | Path | None = None,
    run_backtest: Callable | None = None,
    quiet: bool = False,
    progress: Callable[[int, int], None] | None = None,
    overfitting: bool = True,
    pbo_splits: int = DEFAULT_PBO_SPLITS,
) -> OptimizeResult:
    """Search ``space`` for the parameters of ``config.strategy`` that optimise ``objective``.

    - ``bars``, ``config``: as :func:`m2k_bt.engine.run_backtest`; ``config.params`` holds the
      fixed parameters.
    - ``space``: see :func:`parse_space` (def: the strategy's :data:`DEFAULT_SPACES`).
    - ``trials`` (def: ``50`` for TPE, the whole grid for ``"grid"``): finished trials wanted
      in the study in total, counting those of earlier runs; for TPE capped at the number of
      distinct points when every parameter is discrete.
    - ``objective`` (def: ``"sharpe"``): a key of :data:`OBJECTIVES`.
    - ``sampler`` (def: ``"tpe"``): ``"tpe"`` or ``"grid"``.
    - ``workers`` (def: one per core): local worker processes; ignored with ``dask``.
    - ``storage`` (def: ``study.db`` in ``out``; in memory without ``out`` and one worker):
      an Optuna RDB URL.
    - ``dask``: ``"local"`` or a scheduler address (see the module docstring).
    - ``seed``: sampler seed; see "Determinism" in the module docstring.
    - ``min_trades`` (def: ``1``): fewer round trips make a trial infeasible.
    - ``study_name`` (def: ``"m2k-<strategy>"``).
    - ``out``: folder for ``study.db``, ``trials.csv`` and ``optimize.json``.
    - ``run_backtest`` (def: the engine's): must be importable by name for workers and Dask.
    - ``overfitting`` (def: ``True``): compute DSR and PBO (``pbo_splits`` blocks, def 16).
    """
    import optuna

    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"unknown objective '{objective}'{did_you_mean(objective, OBJECTIVES)}; "
            f"known: {', '.join(OBJECTIVES)}"
        )
    if sampler not in ("tpe", "grid"):
        raise ConfigError(f"sampler must be 'tpe' or 'grid', got {sampler!r}")
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a whole number >= 1, got {workers!r}")
    if isinstance(min_trades, bool) or not isinstance(min_trades, int) or min_trades < 0:
        raise ConfigError(f"--min-trades must be a whole number >= 0, got {min_trades!r}")
    space = parse_space(space, config.strategy) if not isinstance(space, dict) else space
    if sampler == "grid":
        grid_size = math.prod(len(r.grid()) for r in space.values())
        target = grid_size if trials is None else min(trials, grid_size)
    else:
        target = 50 if trials is None else trials
        if isinstance(target, int) and all(r.kind != "float" or r.step for r in space.values()):
            size = math.prod(len(r.grid()) for r in space.values())
            if target > size:  # TPE would only repeat points
                target = size
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ConfigError(f"--trials must be a whole number >= 1, got {trials!r}")
    bars, config = _preselect(bars, config)
    if not isinstance(bars, pd.DataFrame) or bars.empty:
        raise ConfigError("no bars to optimise on: the data is empty")

    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    remote = _is_remote(storage)
    url = storage
    if url is None:
        if out_dir is not None:
            url = study_storage_url(out_dir)
        elif workers > 1 and dask is None:
            url = study_storage_url(tempfile.mkdtemp(prefix="m2k-opt-"))
    strategy_name = getattr(config, "strategy_name", None) or str(config.strategy)
    name = study_name or f"m2k-{strategy_name}"
    direction = OBJECTIVES[objective]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    use_pool = dask is None and workers > 1
    try:
        study = optuna.create_study(
            study_name=name,
            storage=_storage(url),
            direction=direction,
            sampler=_sampler(sampler, seed, parallel=use_pool or dask is not None),
            load_if_exists=True,
        )
    except Exception as exc:  # SQLAlchemy errors: bad URL, unreachable server, missing driver
        if isinstance(exc, M2KError):
            raise
        raise ConfigError(f"--storage {url!r}: cannot open the study: {exc}") from None
    _check_study(study, direction, objective, space, strategy_name)
    notes = _prepare_queue(study, space, sampler, target, recover=not remote)

    c, p, _, _ = _count(study)
    remaining = max(0, target - c - p)
    payload = (bars, config, space, objective, min_trades, run_backtest)
    if remaining:
        if dask is not None:
            client, cluster = _dask_client(dask)
            try:
                _run_dask(study, client, remaining, payload, progress, target)
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
        elif use_pool:
            _run_pool(study, url, workers, remaining, payload, sampler, seed, progress, target)
        else:
            fn = _make_objective(*payload)
            done = [c + p]

            def cb(_study, _trial):
                done[0] += 1
                if progress is not None:
                    progress(min(done[0], target), target)

            study.optimize(fn, n_trials=remaining, catch=(), callbacks=[cb])
    result = _collect(study, objective, direction, url, sampler, notes)
    result.settings = {
        "strategy": strategy_name,
        "fixed_params": dict(getattr(config, "params", {}) or {}),
        "space": [str(r) for r in space.values()],
        "trials": target,
        "objective": objective,
        "sampler": sampler,
        "workers": None if dask else workers,
        "dask": dask,
        "seed": seed,
        "min_trades": min_trades,
        "bars": len(bars),
        "first_bar": str(bars.index[0]),
        "last_bar": str(bars.index[-1]),
    }
    if overfitting:
        _overfitting(study, result, pbo_splits)
    result.elapsed = time.perf_counter() - t0
    if out_dir is not None:
        result.paths = _write(result, out_dir)
    return result


def _dask_client(address: str):
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover
        raise ConfigError(
            "--dask needs dask[distributed]: pip install 'dask[distributed]'"
        ) from None
    if address == "local":
        cluster = LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        )
        return Client(cluster), cluster
    try:
        return Client(address, timeout="20s"), None
    except OSError as exc:
        raise ConfigError(
            f"--dask {address}: cannot reach a Dask scheduler ({exc}); start one with "
            f"'dask scheduler' and workers with 'dask worker {address}'"
        ) from None


def _check_study(study, direction, objective, space, strategy_name) -> None:
    attrs = study.user_attrs
    mine = {
        "objective": objective,
        "space": [str(r) for r in space.values()],
        "strategy": strategy_name,
    }
    if not attrs.get("objective"):
        for k, v in mine.items():
            study.set_user_attr(k, v)
        return
    for k, v in mine.items():
        if attrs.get(k) != v:
            raise ConfigError(
                f"study '{study.study_name}' already exists with {k}={attrs.get(k)!r}, not "
                f"{v!r}; resume it with the same settings or pick another --study-name or --out"
            )


def _collect(study, objective, direction, url, sampler, notes) -> OptimizeResult:
    import optuna

    TS = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
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
        storage=_redact(url),
        trials=table,
        notes=list(notes),
    )


def _redact(url: str | None) -> str | None:
    if url is None or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def returns_matrix(study) -> pd.DataFrame:
    """Dates x complete trials (column = trial number) of recorded daily returns."""
    import optuna

    cols = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        r = t.user_attrs.get("backtest", {}).get("returns")
        if r:
            cols[t.number] = pd.Series(r, dtype=float)
    if not cols:
        return pd.DataFrame()
    frame = pd.DataFrame(cols)
    frame.index = pd.DatetimeIndex(frame.index)
    return frame.sort_index().fillna(0.0)


def _overfitting(study, result: OptimizeResult, pbo_splits: int) -> None:
    from .overfitting import deflated_sharpe_from_returns, probability_of_backtest_overfitting

    matrix = returns_matrix(study)
    best = study.best_trial.number
    if matrix.empty or best not in matrix or len(matrix) < 3:
        result.notes.append("DSR and PBO need daily returns of 3+ trade dates; none computed")
        return
    try:
        # N counts every backtest the search ran and looked at, the infeasible ones (too few
        # trades, undefined objective) included: they were tried and discarded, which is the
        # selection the deflation corrects for. Constraint violations never ran: not counted.
        ran = sum(
            1
            for t in study.get_trials(deepcopy=False)
            if t.state.name in ("COMPLETE", "PRUNED") and "backtest" in t.user_attrs
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


def _write(result: OptimizeResult, out: Path) -> dict:
    paths = {}
    p = out / "trials.csv"
    result.trials.to_csv(p, index=False)
    paths["trials.csv"] = p
    p = out / "optimize.json"
    p.write_text(json.dumps(_clean(result.as_dict()), indent=2, default=str))
    paths["optimize.json"] = p
    if result.storage and result.storage.startswith("sqlite:///"):
        paths["study.db"] = Path(result.storage[len("sqlite:///") :])
    return paths


def _clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o
