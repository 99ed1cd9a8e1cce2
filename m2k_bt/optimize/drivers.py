"""Who runs a study's trials: this process, a pool of local worker processes on the shared
storage, or a Dask cluster (claimed and recorded here, backtests on the workers).

Each driver claims trials (:mod:`m2k_bt.optimize.claims`), runs them
(:func:`m2k_bt.optimize.trial.evaluate_params`) and records them, until the study is done.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing as mp
import threading
import time

import numpy as np
import optuna

from ..errors import ConfigError, M2KError
from ..kernel import shared_bars
from .claims import (
    Heartbeat,
    StudyPlan,
    busy,
    claim,
    counts,
    derive_seed,
    fail_trial,
    make_sampler,
    reap,
    recover,
    tell,
)
from .storage import DB_ERRORS, lost_connection, retrying, storage_for
from .threads import one_blas_thread, one_thread_children
from .trial import evaluate_batch
from .trialindex import TrialIndex
from .writebehind import EncodedAttrs

__all__ = ["BACKTESTER_START", "child_signals", "DASK_KERNEL_BATCH", "KERNEL_BATCH",
           "DASK_RESUBMITS", "PROGRESS_SECONDS", "IN_FLIGHT", "STARTING_BATCH", "work", "run_pool",
           "run_backtesters", "run_dask", "dask_client"]

_POLL = 0.5  # s between looks at the storage while other processes finish their trials
#: Seconds between progress reports: each counts the study's trials in the storage, so they
#: are not made after every trial (a report is also made when the work is done).
PROGRESS_SECONDS = 0.5


class _Progress:
    """``progress(done, target)`` every :data:`PROGRESS_SECONDS` at most (and on demand)."""

    def __init__(self, study, plan: StudyPlan, progress):
        self.study, self.plan, self.progress = study, plan, progress
        self.last = time.monotonic()

    def maybe(self) -> None:
        if self.progress is not None and time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.report()

    def report(self) -> None:
        if self.progress is None:
            return
        c = retrying(self.plan, counts, self.study)
        self.progress(min(c["COMPLETE"] + c["PRUNED"], self.plan.target), self.plan.target)
        self.last = time.monotonic()


# ---------------------------------------------------------------- this process, local workers


#: Trials a process claims and runs together when the study's ``batch`` is automatic (0:
#: a grid in the kernel): their backtests run in one compiled call (:func:`evaluate_batch`).
KERNEL_BATCH = 32


def work(study, plan: StudyPlan, payload, progress=None, after_batch=None) -> int:
    """This process's share of the study: claim up to ``plan.batch`` trials (0: up to
    :data:`KERNEL_BATCH`), run them, record them, until the study is done. Stays while other
    processes still run trials, so that one of theirs whose process dies is re-run here.
    Returns the number of trials run."""
    bars, config, space, objective, min_trades, run = payload
    size = plan.batch or KERNEL_BATCH
    rng = np.random.default_rng(derive_seed(plan.seed, plan.identity, "free"))
    ran, reaped = 0, time.monotonic()
    index, shown = TrialIndex(study, plan.names), _Progress(study, plan, progress)
    with Heartbeat(study._storage, plan.heartbeat) as beat, one_blas_thread(), \
            shared_bars(bars):
        while True:
            claimed = []
            while len(claimed) < size:
                got = retrying(plan, claim, study, plan, rng, index)
                if got is None:
                    break
                claimed.append(got)
                beat.add(got[0]._trial_id)
            if not claimed:
                if not retrying(plan, busy, study):
                    shown.report()
                    return ran
                retrying(plan, reap, study, plan)  # a trial we wait for may be dead
                time.sleep(_POLL)
                continue
            told = 0
            try:
                outcomes = evaluate_batch(bars, config, [p for _, p in claimed], objective,
                                          min_trades, run)
                for (trial, _), outcome in zip(claimed, outcomes):
                    retrying(plan, tell, study, trial, outcome)
                    beat.ids.discard(trial._trial_id)
                    told += 1
            except BaseException:
                for trial, _ in claimed[told:]:
                    fail_trial(study, trial)
                raise
            ran += told
            if after_batch is not None:
                retrying(plan, after_batch)
            if time.monotonic() - reaped > plan.heartbeat:  # dead processes' trials, now and
                retrying(plan, reap, study, plan)  # then (queued retries go first)
                reaped = time.monotonic()
            shown.maybe()


def _worker(args) -> None:
    """One local worker process: open the study and work on it; errors go back on ``queue``."""
    plan, direction, payload, index, queue = args
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = storage_for(plan.url, plan.heartbeat)
        study = retrying(plan, lambda: optuna.load_study(study_name=plan.name, storage=storage))
        n_done = sum(1 for t in retrying(plan, study.get_trials, False)
                     if t.state.is_finished())
        seed = derive_seed(plan.seed, plan.identity, index or "", n_done or "")
        study.sampler = make_sampler(plan.sampler, seed, True)
        work(study, dataclasses.replace(plan, identity=f"{plan.identity}/{index}"), payload)
        queue.put((index, None))
    except BaseException as exc:  # noqa: BLE001 - reported by the driver
        if isinstance(exc, DB_ERRORS):  # one not retried: its one line, never its SQL
            exc = lost_connection(plan, exc)
        queue.put((index, exc if isinstance(exc, M2KError) else RuntimeError(repr(exc))))


def run_pool(study, plan: StudyPlan, direction, workers, payload, progress) -> list[str]:
    """``workers`` spawned processes on the shared storage. A worker that dies (killed) does
    not stop the others: its trial is re-run by them; this process finishes what is left."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=((plan, direction, payload, i, queue),), daemon=True)
        for i in range(workers)
    ]
    with one_thread_children():  # each worker's BLAS starts with one thread
        for p in procs:
            p.start()
    notes, errors, reported = [], [], set()
    shown = _Progress(study, plan, progress)
    try:
        while True:
            while not queue.empty():
                index, exc = queue.get()
                reported.add(index)
                if exc is not None:
                    errors.append(exc)
            if errors:
                raise errors[0]
            shown.report()
            if all(not p.is_alive() for p in procs):
                break
            time.sleep(_POLL)
        while not queue.empty():
            index, exc = queue.get()
            reported.add(index)
            if exc is not None:
                raise exc
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(5)
    for i, p in enumerate(procs):
        if i not in reported:
            notes.append(f"worker {i + 1} died (exit status {p.exitcode}); its trial was re-run")
    if notes:  # finish here whatever the dead workers left
        work(study, plan, payload, progress)
    return notes


# ---------------------------------------------------------------- local backtesters

#: Trials this process runs at a time itself while its backtester processes start (they
#: take seconds to import and load the compiled kernel).
STARTING_BATCH = 4
#: How backtester processes are started where the platform has it: ``"fork"`` (Linux) starts
#: one in milliseconds with this process's imports, bars and compiled kernel; ``"spawn"`` (the
#: only way on Windows and macOS, and used when this process runs other threads, which a
#: fork would copy mid-work) imports the program again and loads the kernel, a second or two
#: each, which a study of a few thousand kernel trials does not recover.
BACKTESTER_START = "fork"
#: Batches a local backtester process holds at once (one running, the next waiting), so that
#: it does not wait for this process to record a batch before it starts the next.
IN_FLIGHT = 2


def child_signals() -> None:
    """A worker process's signals: Ctrl-C is ignored (it is its parent's to handle: the
    terminal sends it to the whole group) and SIGTERM ends it at once, as by default. A
    forked process inherits the parent's handlers (the command line's SIGTERM handler raises
    in Python, which would print a traceback when the parent stops it): reset here."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _backtester(conn, payload) -> None:
    """One local backtester process: run each batch of parameter sets it is sent and send
    the outcomes back, until it is sent None. Ctrl-C is this process's parent's to handle
    (it stops the backtesters); a lost parent ends the loop."""
    child_signals()
    bars, config, space, objective, min_trades, run = payload
    with one_blas_thread():
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                return
            if batch is None:
                return
            try:
                out = evaluate_batch(bars, config, batch, objective, min_trades, run)
                for outcome in out:  # encoded here, in parallel, not by the writing process
                    if outcome["attrs"]:
                        outcome["attrs"] = EncodedAttrs(outcome["attrs"])
            except BaseException as exc:  # noqa: BLE001 - reported by the driver
                out = exc if isinstance(exc, M2KError) else RuntimeError(repr(exc))
            conn.send(out)


def run_backtesters(study, plan: StudyPlan, workers: int, payload, progress=None,
                    after_batch=None, idle=None) -> list[str]:
    """``workers`` spawned processes that only run backtests, ``plan.batch`` trials a batch
    (def: as on Dask, up to :data:`DASK_KERNEL_BATCH`); this process claims the trials and
    records them on ``study`` (a study in memory, written behind to a private storage: no
    trial costs a storage round trip). A backtester that dies loses nothing: its trials are
    failed and re-queued, and the others (or this process, when none is left) run them.
    Until the first backtester has reported, this process runs trials itself,
    :data:`STARTING_BATCH` at a time, between looks at them. ``idle`` (def: None): called
    when every backtester is busy and this process would wait for them (the write-behind
    writes finished trials then: :meth:`m2k_bt.optimize.writebehind.WriteBehind.idle`)."""
    from multiprocessing.connection import wait

    size = plan.batch if plan.batch > 1 else max(
        1, min(DASK_KERNEL_BATCH, math.ceil(plan.target / (2 * IN_FLIGHT * workers))))
    # a fork copies every thread's locks as they are: only from a process of one thread
    forking = (BACKTESTER_START == "fork" and "fork" in mp.get_all_start_methods()
               and threading.active_count() == 1)
    ctx = mp.get_context(BACKTESTER_START if forking else "spawn")
    rng = np.random.default_rng(derive_seed(plan.seed, plan.identity, "free"))
    index, shown = TrialIndex(study, plan.names), _Progress(study, plan, progress)
    procs, held, notes = {}, {}, []  # conn -> process; conn -> claimed batches in order
    ends = []
    for _ in range(workers):
        mine, theirs = ctx.Pipe()
        procs[mine] = ctx.Process(target=_backtester, args=(theirs, payload), daemon=True)
        held[mine] = []
        ends.append(theirs)
    start_error: list = []

    def start_all() -> None:
        """Start the backtesters. A start blocks until the new process has imported this
        program and read the bars (a second or so each): in a thread of its own, so that this
        process runs trials meanwhile."""
        try:
            with one_thread_children():  # each backtester's BLAS starts with one thread
                for proc, theirs in zip(procs.values(), ends):
                    proc.start()
                    theirs.close()
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread
            start_error.append(exc)

    # spawned backtesters start in a thread (None: forked, from this thread)
    starter = None if forking else threading.Thread(
        target=start_all, name="m2k-start-backtesters", daemon=True)

    def feed(conn) -> None:
        while len(held[conn]) < IN_FLIGHT:
            batch = []
            while len(batch) < size:
                got = retrying(plan, claim, study, plan, rng, index)
                if got is None:
                    break
                batch.append(got)
            if not batch:
                return
            held[conn].append(batch)
            conn.send([params for _, params in batch])

    def lost(conn) -> None:
        proc = procs.pop(conn)
        for batch in held.pop(conn):
            for trial, _ in batch:
                fail_trial(study, trial)
        proc.join(5)
        notes.append(f"backtester process {proc.pid} died (exit status {proc.exitcode}); "
                     f"its trials were re-run")
        notes.extend(retrying(plan, recover, study, plan))
        for other in list(procs):  # its trials, re-queued, go to the others
            feed(other)

    bars, config, space, objective, min_trades, run = payload
    mine: list = []  # what this process runs itself while the backtesters start

    def run_here() -> bool:
        """A few trials run here (none left to claim: False)."""
        while len(mine) < STARTING_BATCH:
            got = retrying(plan, claim, study, plan, rng, index)
            if got is None:
                break
            mine.append(got)
        if not mine:
            return False
        outcomes = evaluate_batch(bars, config, [p for _, p in mine], objective, min_trades,
                                  run)
        while mine:
            retrying(plan, tell, study, mine[0][0], outcomes.pop(0))
            mine.pop(0)
        if after_batch is not None:
            retrying(plan, after_batch)
        shown.maybe()
        return True

    done, started = False, False
    try:
        if starter is None:  # a forked backtester starts with this process's modules and
            run_here()  # compiled kernel (the first trials run here first to load it), in
            start_all()  # milliseconds, from this thread (no other thread's locks copied)
        else:
            starter.start()
            while starter.is_alive():  # the backtesters start: trials run here meanwhile
                if not run_here():
                    break
            starter.join()
        if start_error:
            raise start_error[0]
        for conn in list(procs):
            feed(conn)
        while procs and any(held.values()):
            watched = [*procs, *(p.sentinel for p in procs.values())]
            ready = wait(watched, timeout=0)
            if not ready and started and idle is not None:
                retrying(plan, idle)  # nothing to do but wait: write what is finished
                ready = wait(watched, timeout=0)
            if not ready and started:
                ready = wait(watched)
            if not ready and not started:
                if run_here():
                    continue
                started = True  # nothing left to claim here: wait for the backtesters
            started = started or bool(ready)
            for conn in [c for c in list(procs) if c in ready or procs[c].sentinel in ready]:
                try:
                    if not conn.poll():
                        raise EOFError  # its process ended with nothing more to say
                    outcomes = conn.recv()
                except (EOFError, OSError):
                    lost(conn)
                    continue
                batch = held[conn].pop(0)
                if isinstance(outcomes, BaseException):
                    raise outcomes
                for (trial, _), outcome in zip(batch, outcomes):
                    retrying(plan, tell, study, trial, outcome)
                if after_batch is not None:
                    retrying(plan, after_batch)
                shown.maybe()
                feed(conn)
        done = True
    except BaseException:
        for batch in [*(b for batches in held.values() for b in batches), mine]:
            for trial, _ in batch:
                fail_trial(study, trial)
        raise
    finally:
        if starter is not None and starter.ident is not None:
            starter.join()  # no backtester starts after this
        for conn, proc in procs.items():
            if done:
                try:
                    conn.send(None)  # done: it ends on its own
                except OSError:
                    pass
                proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    # what is left (every backtester lost): run here
    work(study, plan, payload, progress, after_batch)
    return notes


# ---------------------------------------------------------------- Dask

#: Trials a Dask task runs when the trials run in the kernel (see ``batch`` of
#: :func:`m2k_bt.optimize.study.optimize`).
DASK_KERNEL_BATCH = 32
#: A Dask task lost with its worker (its scattered bars gone too) is submitted again this often.
DASK_RESUBMITS = 3


def run_dask(study, plan: StudyPlan, client, payload, progress, after_batch=None) -> None:
    """Trials as Dask tasks, ``plan.batch`` trials a task: claimed and recorded here,
    backtests on the workers (:func:`evaluate_batch`). A worker that dies loses nothing: Dask
    runs its task again on another worker, and a task Dask gives up on with the worker
    (cancelled, its data lost) is submitted again from here."""
    # distributed takes most of a second to import and only --dask needs it
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    lost = (cf.CancelledError, KilledWorker, OSError, TimeoutError)
    bars, config, space, objective, min_trades, run = payload
    data = {"bars": client.scatter(bars, broadcast=True)}
    n_slots = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
    # the default: up to DASK_KERNEL_BATCH trials a task, but at least two tasks a slot
    size = plan.batch or max(1, min(DASK_KERNEL_BATCH, math.ceil(plan.target / (2 * n_slots))))
    rng = np.random.default_rng(derive_seed(plan.seed, plan.identity, "free"))
    index, shown = TrialIndex(study, plan.names), _Progress(study, plan, progress)
    running: dict = {}
    ac = as_completed()
    with Heartbeat(study._storage, plan.heartbeat) as beat:

        def submit(batch, attempt: int) -> None:
            fut = client.submit(
                evaluate_batch, data["bars"], config, [p for _, p in batch], objective,
                min_trades, run, pure=False,
            )
            running[fut.key] = (batch, attempt)
            ac.add(fut)

        def fill() -> None:
            while len(running) < n_slots:
                batch = []
                while len(batch) < size:
                    got = retrying(plan, claim, study, plan, rng, index)
                    if got is None:
                        break
                    beat.add(got[0]._trial_id)
                    batch.append(got)
                if not batch:
                    return
                submit(batch, 0)

        while True:
            retrying(plan, reap, study, plan)
            fill()
            if not running:
                if not retrying(plan, busy, study):
                    shown.report()
                    return
                time.sleep(_POLL)
                continue
            fut = next(ac)
            batch, attempt = running.pop(fut.key)
            try:
                outcomes = fut.result()
            except lost:
                if attempt >= DASK_RESUBMITS:
                    raise
                data["bars"] = client.scatter(bars, broadcast=True)
                submit(batch, attempt + 1)
                continue
            except BaseException:
                for other, _ in [*batch, *(t for b, _ in running.values() for t in b)]:
                    fail_trial(study, other)
                raise
            for (trial, _), outcome in zip(batch, outcomes):
                retrying(plan, tell, study, trial, outcome)
                beat.ids.discard(trial._trial_id)
            if after_batch is not None:
                retrying(plan, after_batch)
            shown.maybe()


def dask_client(address: str):
    """A Dask client for ``address`` (``"local"``: a 2-process LocalCluster) and the cluster
    this made (None when it connected to a running scheduler)."""
    try:  # dask[distributed] is imported only for --dask (most of a second)
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
    except ValueError as exc:  # not an address distributed can parse
        raise ConfigError(
            f"--dask {address}: not a scheduler address ({exc}); give 'local' or "
            f"tcp://host:8786"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"--dask {address}: cannot reach a Dask scheduler ({exc}); start one with "
            f"'dask scheduler' and workers with 'dask worker {address}'"
        ) from None
