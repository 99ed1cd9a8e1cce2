"""Parameter search with Optuna: TPE (Bergstra et al., 2011) or a grid, on full backtests.

Every trial is one complete :func:`m2k_bt.engine.cerebro.run_backtest` (our contract model, sizer,
broker and the minimal analyzers ``returns`` and ``trades``): no shortcut changes a result. The
objective is a key of ``result.metrics`` (:data:`m2k_bt.optimize.trial.OBJECTIVES`); each trial
also records its daily returns (per CME trade date) so that :mod:`m2k_bt.optimize.overfitting`
can compute the Deflated Sharpe Ratio and the Probability of Backtest Overfitting over all
trials of the study.

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
  processes (def: 1 with kernel trials, one per core with cerebro), with the bars sent once per
  process. A fresh study lives in memory in this process and is written to ``study.db`` in
  batches (see ``private_storage``); ``workers=1`` runs its trials here, more workers are
  backtester processes that this process sends batches of parameter sets to
  (:func:`m2k_bt.optimize.drivers.run_backtesters`). A study resumed from ``study.db`` is run
  by ``workers`` processes on the file itself, as on a shared storage.
- ``storage``: any Optuna RDB URL, e.g. ``postgresql://user:pw@db-host/optuna`` (mapped to the
  installed driver, psycopg 3 from the ``postgres`` extra), so that processes on many machines
  share one study: run the same command on each, with the same ``--study-name``.
- ``dask``: ``"local"`` starts a ``distributed.LocalCluster(n_workers=2, processes=True,
  threads_per_worker=1)``; an address such as ``"tcp://10.0.0.5:8786"`` connects to a running
  cluster. Trials run as Dask tasks (claimed and recorded here, backtest on a worker); the
  study stays in the driver's storage. To build a cluster on several machines, with the same
  Python environment and ``pip install -e .[optimize]`` on each::

      # machine A (scheduler; port 8786 for workers, 8787 dashboard)
      dask scheduler
      # every machine that should run backtests, one process per core, one thread each
      dask worker tcp://A:8786 --nworkers auto --nthreads 1
      # anywhere, the driver
      python run_backtest.py optimize --dask tcp://A:8786 --trials 500 --out results/opt

How processes share a study (any storage, SQLite included):

- ``trials`` is the study's: before a process starts a new trial it counts the study's
  finished, running and queued trials in the storage; trial numbers order concurrent claims,
  so K processes together run ``trials`` and all stop.
- The first process creates the study (creation is race-free: the others load it) and queues
  the grid; the others wait for that, then join. Queued trials are claimed atomically; one
  whose parameter set is already finished, running or queued elsewhere is discarded (FAIL
  with the system attribute ``m2k_discard``, counted nowhere).
- A TPE proposal equal to a finished, running or queued parameter set is re-drawn
  (:data:`REDRAWS` times, then a free point at random). Each process seeds its sampler from
  ``seed``, its identity (host and pid when the storage is shared, worker number) and the
  number of finished trials, so neither a second process nor a resumed study replays
  proposals.
- Dead processes: every running trial records a heartbeat (``heartbeat``, def 10 s) and its
  owner (``host:pid``). A trial whose owner on this host is gone, or whose heartbeat is older
  than 3 heartbeats, is failed and re-queued once with all its parameters (from the queue's
  ``fixed_params``, never a half-drawn set) by whichever process sees it; processes stay until
  no trial of the study is running, so nothing stays RUNNING.
- A lost connection is retried with backoff for ``reconnect`` seconds (def 60), then a
  :class:`StorageError` (one line, password masked); the study stays resumable.

Resume. Re-running with the same output folder (or ``storage`` and ``study_name``) loads the
study and runs only what is missing up to ``trials``; interrupted trials are re-queued as
above, failed ones (Ctrl-C) too, once; a grid never queues a parameter set twice.

Determinism. With ``seed`` and one worker, TPE proposes the same trials in the same order and
finds the same best parameters every time (the backtests themselves are deterministic). With
several workers or Dask the order in which results come back varies, so TPE's later proposals
and possibly the best parameters vary: the seed then makes each worker's sampler reproducible,
not the study. A grid evaluates the same set of points at any worker count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from ..engine import select_bars
from ..errors import ConfigError, M2KError, did_you_mean
from ..kernel import choose_engine, run_backtest_fast
from ..outputs import OutputFolder
from ..report.study_html import study_html_text
from .cerebro_check import CerebroCheck
from .claims import (
    StudyPlan,
    derive_seed,
    has_work,
    make_sampler,
    open_study,
    owner_id,
    set_up_study,
)
from .drivers import dask_client, run_backtesters, run_dask, run_pool, work
from .results import (
    DEFAULT_PBO_SPLITS,
    OptimizeResult,
    add_overfitting,
    collect_result,
    write_study_outputs,
)
from .space import ParamRange, grid_size, parse_space, strategy_class
from .storage import (
    DEFAULT_HEARTBEAT,
    DEFAULT_RECONNECT,
    folder_storage_url,
    is_remote,
    retrying,
    storage_for,
    study_storage_url,
)
from .trial import OBJECTIVES, evaluate_params
from .writebehind import WriteBehind, is_fresh

__all__ = ["MAX_SEED", "StudySettings", "check_study_settings", "optimize", "preselect"]

#: The largest sampler seed (numpy's legacy seeding takes 32 bits).
MAX_SEED = 2**32 - 1
_DASK_ADDRESS = re.compile(r"^([a-z][a-z0-9+]*://\S+|[\w.\[\]:-]+:\d+)$", re.I)


def check_study_settings(
    seed: int | None = None,
    reconnect: float = DEFAULT_RECONNECT,
    heartbeat: int = DEFAULT_HEARTBEAT,
    study_name: str | None = None,
    dask: str | None = None,
) -> None:
    """Raise :class:`ConfigError` naming the flag for a value a study cannot use (checked by
    :func:`optimize` and, before any data is loaded, by the command line).

    >>> check_study_settings(seed=-1)
    Traceback (most recent call last):
    ...
    m2k_bt.errors.ConfigError: --seed must be a whole number from 0 to 4294967295, got -1
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed <= MAX_SEED):
        raise ConfigError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    if (isinstance(reconnect, bool) or not isinstance(reconnect, (int, float))
            or not math.isfinite(reconnect) or reconnect < 0):
        raise ConfigError(f"--reconnect must be a number of seconds >= 0, got {reconnect!r}")
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"--heartbeat must be a whole number of seconds >= 1, "
                          f"got {heartbeat!r}")
    if study_name is not None and (not isinstance(study_name, str) or not study_name.strip()):
        raise ConfigError(f"--study-name must be a non-empty name, got {study_name!r}; "
                          f"leave it out for m2k-<strategy>")
    if dask is not None and (not isinstance(dask, str) or (
            dask != "local" and not _DASK_ADDRESS.match(dask))):
        raise ConfigError(f"--dask must be 'local' or a scheduler address such as "
                          f"tcp://host:8786, got {dask!r}")


@dataclass(frozen=True)
class StudySettings:
    """One run of :func:`optimize`, its arguments checked and resolved: what the study is
    run with. Built by :func:`optimize`; fields as its parameters, and:

    - ``space``: parsed (:class:`~m2k_bt.optimize.space.ParamRange` by name); ``target``: the
      study's trials (``trials`` resolved, capped by the space's size).
    - ``bars``, ``config``: start/end/resample already applied (:func:`preselect`).
    - ``workers``, ``batch``: resolved (``batch`` 0: sized by the driver).
    - ``out_dir``: ``out`` as a path, or None; ``private``: ``private_storage`` on a local
      storage.
    - ``run_backtest``: the trial function (None: cerebro's), ``engine_info``: what runs the
      trials (:func:`m2k_bt.kernel.choice.choose_engine`).
    - ``started``: ``time.perf_counter()`` when :func:`optimize` was called.
    """

    bars: pd.DataFrame
    config: Any
    space: dict[str, ParamRange]
    target: int
    objective: str
    sampler: str
    workers: int
    storage: str | None
    dask: str | None
    seed: int | None
    min_trades: int
    study_name: str | None
    out_dir: Path | None
    run_backtest: Callable | None
    progress: Callable[[int, int], None] | None
    overfitting: bool
    pbo_splits: int
    heartbeat: int
    reconnect: float
    engine_info: dict
    batch: int
    verify: bool
    private: bool
    started: float

    #: A signal strategy's look-ahead check made before the trials (:func:`lookahead_once`),
    #: or None; ``trial_config``: the configuration the trials run (the check off when it
    #: was made here), None for ``config``.
    lookahead: dict | None = None
    trial_config: Any = None

    @property
    def payload(self) -> tuple:
        """What a process needs to run trials (pickled to local workers; on Dask the bars are
        scattered once): ``(bars, config, space, objective, min_trades, run_backtest)``."""
        return (self.bars, self.trial_config or self.config, self.space, self.objective,
                self.min_trades, self.run_backtest)


def lookahead_once(bars: pd.DataFrame, config, space: dict) -> tuple[Any, dict | None]:
    """A signal strategy's look-ahead check (:func:`m2k_bt.strategies.signals.check_lookahead`)
    made once before a study, not in every trial: ``(configuration for the trials, report)``.

    The check runs on the study's bars with the first point of the space (each range's first
    value; the strategy's defaults when that point breaks a constraint). A leak raises
    :class:`~m2k_bt.errors.LookaheadError` before any trial; otherwise the trials run with
    ``lookahead_check=False`` and the report says where the check ran. The winner is checked
    again when the study re-runs it in both engines (``verify``): a leak that only some
    parameter values make still cannot be the study's answer, and a leak flatters its
    trial, which is what makes it the winner. Nothing to do (the configuration as it is, None)
    for a strategy that is not a signal strategy or when ``lookahead_check`` is off."""
    from ..engine import resolve
    from ..errors import ParameterError
    from ..strategies.signals import SignalStrategy, compute_signals

    cls = strategy_class(getattr(config, "strategy", None))
    fixed = dict(getattr(config, "params", {}) or {})
    if not (isinstance(cls, type) and issubclass(cls, SignalStrategy)):
        return config, None
    if str(fixed.get("lookahead_check", True)).lower() in ("false", "0", "no", "off"):
        return config, None
    first = {name: (r.low if r.kind == "float" and r.step is None else r.grid()[0])
             for name, r in space.items()}
    for point in (first, {}):
        try:
            plan = resolve(dataclasses.replace(config, params={**fixed, **point}))
        except ParameterError:
            continue
        t0 = time.perf_counter()
        _, report = compute_signals(plan.strategy_cls, bars, plan.params,
                                    float(plan.comminfo.p.tick_size), check=True)
        report = {**report, "seconds": round(time.perf_counter() - t0, 4),
                  "params": {k: plan.params[k] for k in point} or "defaults",
                  "where": "once before the trials, and on the winner in its verification"}
        return dataclasses.replace(config, params={**fixed, "lookahead_check": False}), report
    return config, None  # no point of the space is valid: every trial checks its own


def preselect(bars: pd.DataFrame, config):
    """``bars`` with ``config``'s start/end/resample applied once, and ``config`` without them,
    so that each trial (or walk-forward fold) does not redo them."""
    if not any(getattr(config, k, None) for k in ("start", "end", "resample")):
        return bars, config
    return select_bars(bars, config), dataclasses.replace(config, start=None, end=None,
                                                          resample=None)


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
    heartbeat: int = DEFAULT_HEARTBEAT,
    reconnect: float = DEFAULT_RECONNECT,
    engine: str = "kernel",
    batch: int | None = None,
    verify: bool = True,
    private_storage: bool = False,
) -> OptimizeResult:
    """Search ``space`` for the parameters of ``config.strategy`` that optimise ``objective``.

    - ``bars``, ``config``: as :func:`m2k_bt.engine.cerebro.run_backtest`; ``config.params``
      holds the fixed parameters.
    - ``space``: see :func:`parse_space` (def: the strategy's :data:`DEFAULT_SPACES`).
    - ``trials`` (def: ``50`` for TPE, the whole grid for ``"grid"``): finished trials wanted
      in the study in total, counting those of earlier runs; for TPE capped at the number of
      distinct points when every parameter is discrete.
    - ``objective`` (def: ``"sharpe"``): a key of :data:`OBJECTIVES`.
    - ``sampler`` (def: ``"tpe"``): ``"tpe"`` or ``"grid"``.
    - ``workers`` (def: 1 when the trials run in the kernel, else one per core): local worker
      processes; ignored with ``dask``. A kernel trial takes milliseconds, a worker process
      seconds to start (imports, the compiled loop, the bars): more workers pay off only for
      studies of thousands of trials.
    - ``batch`` (def: with kernel trials on Dask, ``trials / (2 x worker threads)`` trials a
      task, at most :data:`DASK_KERNEL_BATCH`; a grid in the kernel: up to
      :data:`~m2k_bt.optimize.drivers.KERNEL_BATCH` in this process, ``trials / (4 x
      workers)`` a backtester process; else 1): trials a process claims together and a Dask
      task or backtester runs (:func:`evaluate_batch`: in the kernel, their backtests in one
      compiled call), so that scheduling does not dominate a trial of milliseconds. TPE then
      proposes up to ``batch`` points before it sees their results (as ``batch`` parallel
      workers would; its constant liar is on).
    - ``verify`` (def: ``True``): with kernel trials, re-run the best parameters in cerebro
      (see ``engine``); ``False`` leaves that to the caller (``settings["engine"]`` then says
      ``verified_in_cerebro: false``): :func:`m2k_bt.optimize.walkforward.walk_forward`
      verifies each fold's choice on its out-of-sample window instead.
    - ``private_storage`` (def: ``False``): ``storage`` is this process's alone (a SQLite file
      in a folder it holds locked, as walk-forward's ``study.db``). A fresh study on a private
      storage (the default ``study.db`` in ``out`` is one) runs in memory, one process, and
      its finished trials are written in batches every couple of seconds and at the end; an
      existing one is resumed in place.
    - ``storage`` (def: ``study.db`` in ``out``; in memory without ``out`` and one worker):
      an Optuna RDB URL.
    - ``dask``: ``"local"`` or a scheduler address (see the module docstring).
    - ``seed``: sampler seed; see "Determinism" in the module docstring.
    - ``min_trades`` (def: ``1``): fewer round trips make a trial infeasible.
    - ``study_name`` (def: ``"m2k-<strategy>"``).
    - ``out``: folder for ``study.db``, ``trials.csv`` and ``optimize.json``.
    - ``run_backtest`` (def: the engine's): must be importable by name for workers and Dask.
    - ``overfitting`` (def: ``True``): compute DSR and PBO (``pbo_splits`` blocks, def 16).
    - ``heartbeat`` (def: 10 s): a running trial's heartbeat period; a trial silent for 3x as
      long is failed and re-queued once (at once when its process on this host is gone).
    - ``reconnect`` (def: 60 s): how long a lost storage connection is retried before a
      :class:`StorageError`; the study stays resumable.
    - ``engine`` (def: ``"kernel"``): ``"kernel"`` runs the trials in the compiled kernel
      (:mod:`m2k_bt.kernel.simulation`) when it models ``config`` (else cerebro, the reason in
      ``settings["engine"]``), then re-runs the best parameters in cerebro: both must agree
      to the cent, or the run fails with both numbers; ``"cerebro"`` runs every trial in
      cerebro (see :func:`m2k_bt.kernel.choice.choose_engine`). Ignored when
      ``run_backtest`` is given.
    - ``quiet``: no progress reports (``progress`` is not called: counting the study's
      trials for it is not free); the library prints nothing itself either way.
    - ``progress``: called as ``progress(done, target)`` every
      :data:`m2k_bt.optimize.drivers.PROGRESS_SECONDS` at most, and when the trials are done.

    The checked and resolved arguments travel on as one :class:`StudySettings`.
    """

    t0 = time.perf_counter()
    check_study_settings(seed, reconnect, heartbeat, study_name, dask)
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"unknown objective '{objective}'{did_you_mean(objective, OBJECTIVES)}; "
            f"known: {', '.join(OBJECTIVES)}"
        )
    if sampler not in ("tpe", "grid"):
        raise ConfigError(f"sampler must be 'tpe' or 'grid', got {sampler!r}")
    if workers is not None and (
            isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be a whole number >= 1, got {workers!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"--batch must be a whole number >= 1, got {batch!r}")
    if isinstance(min_trades, bool) or not isinstance(min_trades, int) or min_trades < 0:
        raise ConfigError(f"--min-trades must be a whole number >= 0, got {min_trades!r}")
    space = parse_space(space, config.strategy) if not isinstance(space, dict) else space
    if sampler == "grid":
        size = grid_size(space)
        target = size if trials is None else min(trials, size)
    else:
        target = 50 if trials is None else trials
        if isinstance(target, int) and all(r.kind != "float" or r.step for r in space.values()):
            size = grid_size(space)
            if target > size:  # TPE would only repeat points
                target = size
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ConfigError(f"--trials must be a whole number >= 1, got {trials!r}")
    bars, config = preselect(bars, config)
    if not isinstance(bars, pd.DataFrame) or bars.empty:
        raise ConfigError("no bars to optimise on: the data is empty")

    out_dir = Path(out) if out is not None else None
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            # one run per folder: a second optimize into it refuses at once
            stack.enter_context(OutputFolder(out_dir, marker="optimize.json")).clear(
                ["trials.csv", "study.html"]
            )
        run_backtest, engine_info = choose_engine(config, engine, run_backtest)
        in_kernel = engine_info["engine"] == "kernel"
        if workers is None:
            workers = 1 if in_kernel else (os.cpu_count() or 1)
        if batch is None:  # 0: sized by the driver (run_dask, run_backtesters, work)
            batch = 0 if in_kernel and (dask is not None or sampler == "grid") else 1
        if quiet:
            progress = None
        trial_config, lookahead = lookahead_once(bars, config, space)
        return _run_study(StudySettings(
            lookahead=lookahead, trial_config=trial_config,
            bars=bars, config=config, space=space, target=target, objective=objective,
            sampler=sampler, workers=workers, storage=storage, dask=dask, seed=seed,
            min_trades=min_trades, study_name=study_name, out_dir=out_dir,
            run_backtest=run_backtest, progress=progress, overfitting=overfitting,
            pbo_splits=pbo_splits, heartbeat=heartbeat, reconnect=reconnect,
            engine_info=engine_info, batch=batch, verify=verify,
            private=private_storage and not is_remote(storage), started=t0,
        ))


def _verify_in_cerebro(bars, config, result, objective, min_trades, info: dict,
                       check: CerebroCheck | None = None) -> dict:
    """Re-run the best parameters in cerebro (``check``: already started behind); both
    engines must agree to the cent."""
    if not result.best_params:
        return info
    fast = evaluate_params(bars, config, result.best_params, objective, min_trades,
                           run_backtest_fast)
    slow = check.outcome() if check is not None else evaluate_params(
        bars, config, result.best_params, objective, min_trades)
    a = fast["attrs"].get("final_value")
    b = slow["attrs"].get("final_value")
    va, vb = fast["value"], slow["value"]
    same_value = (va is None and vb is None) or (
        va is not None and vb is not None and abs(va - vb) <= 1e-9 * max(1.0, abs(vb)))
    if a is None or b is None or abs(a - b) >= 0.005 or not same_value:
        raise M2KError(
            f"kernel and cerebro disagree on the best parameters {result.best_params}: final "
            f"equity kernel {a!r} vs cerebro {b!r}, {objective} kernel {va!r} vs cerebro "
            f"{vb!r}; rerun with --engine cerebro and report this"
        )
    return {**info, "verified_in_cerebro": True, "final_value_kernel": a,
            "final_value_cerebro": b, "engines_agree": True}


def _run_study(s: StudySettings) -> OptimizeResult:
    """Open (or create, or resume) the study, run its trials with the chosen driver, and
    gather the result: settings, the engines' check, DSR/PBO and the files in ``out_dir``."""
    remote = is_remote(s.storage)
    url, private = s.storage, s.private
    if url is None:
        if s.out_dir is not None:
            url = folder_storage_url(s.out_dir)
            private = True  # the output folder's lock keeps other processes out
        elif s.workers > 1 and s.dask is None:
            url = study_storage_url(tempfile.mkdtemp(prefix="m2k-opt-"))
    strategy_name = getattr(s.config, "strategy_name", None) or str(s.config.strategy)
    name = s.study_name or f"m2k-{strategy_name}"
    direction = OBJECTIVES[s.objective]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    use_pool = s.dask is None and s.workers > 1
    plan = StudyPlan(
        url=url,
        name=name,
        space=s.space,
        sampler=s.sampler,
        target=s.target,
        seed=s.seed,
        heartbeat=s.heartbeat,
        reconnect=s.reconnect,
        parallel=use_pool or s.dask is not None or remote or s.batch != 1,
        # processes on other machines share the storage: each draws its own proposals
        identity=owner_id() if remote else "",
        batch=s.batch,
    )
    behind = None
    if url is None:  # in memory, this process only
        study = optuna.create_study(direction=direction,
                                    sampler=make_sampler(s.sampler, s.seed, False))
        created = True
    elif private and not remote and is_fresh(plan):
        # one process uses the storage: this one (local backtester processes and Dask
        # workers only run backtests)
        study = optuna.create_study(study_name=name, direction=direction)
        created, behind = True, WriteBehind(plan, study)
    else:
        study, created = retrying(plan, open_study, plan, direction, None,
                                  storage_for(url, s.heartbeat))
    # on a private storage nobody else can be setting the study up: a ready mark missing
    # (its creator killed in its first write) is not waited for
    notes = retrying(plan, set_up_study, study, created, plan, direction, s.objective,
                     strategy_name, not private)
    n_done = sum(1 for t in retrying(plan, study.get_trials, False) if t.state.is_finished())
    study.sampler = make_sampler(
        s.sampler, derive_seed(s.seed, plan.identity, n_done or ""), plan.parallel
    )
    if s.dask is not None:
        client, cluster = dask_client(s.dask)
        try:
            run_dask(study, plan, client, s.payload, s.progress,
                     behind.maybe if behind is not None else None)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
            if behind is not None:
                retrying(plan, behind.flush)
    elif use_pool and behind is not None:
        try:
            notes += run_backtesters(study, plan, s.workers, s.payload, s.progress,
                                     behind.maybe, behind.idle)
        finally:  # what finished is kept, also on Ctrl-C (the trials it stopped are FAIL)
            retrying(plan, behind.flush)
    elif use_pool and retrying(plan, has_work, study, plan):
        notes += run_pool(study, plan, direction, s.workers, s.payload, s.progress)
    elif behind is not None:
        try:
            work(study, plan, s.payload, s.progress, behind.maybe)
        finally:  # what finished is kept, also on Ctrl-C (the trial it stopped is FAIL)
            retrying(plan, behind.flush)
    else:
        work(study, plan, s.payload, s.progress)
    # the study's reads from here on ride out a lost connection as the trials' did
    result = retrying(plan, collect_result, study, s.objective, direction, url, s.sampler,
                      notes)
    result.settings = {
        "strategy": strategy_name,
        "fixed_params": dict(getattr(s.config, "params", {}) or {}),
        "space": [str(r) for r in s.space.values()],
        "trials": s.target,
        "objective": s.objective,
        "sampler": s.sampler,
        "workers": None if s.dask else s.workers,
        "batch": s.batch or "auto",
        "dask": s.dask,
        "seed": s.seed,
        "min_trades": s.min_trades,
        "bars": len(s.bars),
        "first_bar": str(s.bars.index[0]),
        "last_bar": str(s.bars.index[-1]),
    }
    if s.lookahead is not None:
        result.settings["lookahead_check"] = s.lookahead
    info = dict(s.engine_info)
    checking = info["engine"] == "kernel" and s.verify and bool(result.best_params)
    html = None
    with (CerebroCheck(s.bars, s.config, result.best_params, s.objective, s.min_trades)
          if checking else contextlib.nullcontext()) as check:
        # while cerebro checks the winner in a process of its own: DSR, PBO and study.html
        if s.overfitting:
            retrying(plan, add_overfitting, study, result, s.pbo_splits)
        if check is not None and check.behind and s.out_dir is not None:
            html = study_html_text(result)
        if info["engine"] == "kernel":
            if s.verify:
                info = _verify_in_cerebro(s.bars, s.config, result, s.objective,
                                          s.min_trades, info, check)
            else:
                info["verified_in_cerebro"] = False
    result.settings["engine"] = info
    result.elapsed = time.perf_counter() - s.started
    if s.out_dir is not None:
        result.paths = write_study_outputs(result, s.out_dir, html)
    return result
