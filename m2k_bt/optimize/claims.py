"""How processes share a study: claiming trials, heartbeats, reaping dead processes'
trials, re-queueing them, queueing the grid and keeping parameter sets distinct.

Every process of a study (local workers, other machines on a shared storage) runs the same
code against the storage: trial numbers order concurrent claims, a running trial records its
owner and a heartbeat, and whichever process sees a dead one fails and re-queues it. See
"How processes share a study" in :mod:`m2k_bt.optimize.study`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import optuna

from ..errors import ConfigError
from .space import grid_points, point_key
from .storage import (
    DEFAULT_HEARTBEAT,
    DEFAULT_RECONNECT,
    StorageError,
    mask_url,
    storage_for,
)
from .trialindex import TrialIndex, full_params, is_discarded

__all__ = [
    "MAX_RETRIES",
    "REDRAWS",
    "DRAW_WAIT",
    "SETUP_WAIT",
    "SETUP_START_WAIT",
    "StudyPlan",
    "Heartbeat",
    "derive_seed",
    "make_sampler",
    "owner_id",
    "full_params",
    "is_discarded",
    "open_study",
    "set_up_study",
    "reap",
    "recover",
    "claim",
    "tell",
    "fail_trial",
    "counts",
    "busy",
    "has_work",
]

#: A trial whose process died is re-queued this many times (with all its parameters).
MAX_RETRIES = 1
#: TPE proposals equal to a finished or running parameter set are re-drawn this many times,
#: then a parameter set is drawn uniformly from the space's free points.
REDRAWS = 3


def derive_seed(seed: int | None, *parts) -> int | None:
    """``seed`` itself for the first worker of a fresh study, else a seed mixed from ``seed``
    and ``parts`` (worker identity, finished trials): a resumed study or a second process
    draws new proposals instead of replaying the first ones."""
    if seed is None:
        return None
    if not any(parts):
        return seed
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def make_sampler(name: str, seed: int | None, parallel: bool):
    """Optuna's sampler for ``name``: TPE (its constant liar on when trials run in parallel),
    or for a grid a random sampler that never proposes (every point is queued)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel)
    # grid: every point is enqueued, so the sampler never proposes anything itself
    return optuna.samplers.RandomSampler(seed=seed)


def _live(t) -> bool:
    """A trial that counts towards ``--trials``: finished, running or queued."""
    return t.state.name != "FAIL"


_HOST = socket.gethostname()


def owner_id() -> str:
    """This process as a trial's owner: ``host:pid``."""
    return f"{_HOST}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped is a zombie: dead for us
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class StudyPlan:
    """What every process of a study agrees on (sent to local workers)."""

    url: str | None
    name: str
    space: dict
    sampler: str
    target: int
    seed: int | None
    heartbeat: int = DEFAULT_HEARTBEAT
    reconnect: float = DEFAULT_RECONNECT
    parallel: bool = False
    identity: str = ""
    batch: int = 1

    @property
    def names(self) -> list[str]:
        return list(self.space)

    @property
    def grace(self) -> float:
        return max(2, 3 * int(self.heartbeat))


class Heartbeat:
    """Records a heartbeat every ``interval`` s for the trials this process runs; storage
    errors are left to the main loop (a heartbeat that cannot be written is simply missed)."""

    def __init__(self, storage, interval: int):
        self.storage, self.interval = storage, interval
        self.ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def add(self, trial_id: int) -> None:
        self.ids.add(trial_id)
        self._record(trial_id)

    def _record(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception:  # noqa: BLE001 - a missed beat; the main loop sees the outage
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in list(self.ids):
                self._record(trial_id)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def open_study(plan: StudyPlan, direction: str, sampler, storage=None):
    """Create the study or join it, race-free: of processes starting at once on a fresh
    storage exactly one creates it; the others load it. ``storage`` (def: opened here):
    ``plan.url``'s. A lost connection is raised as the driver's error, for
    :func:`m2k_bt.optimize.storage.retrying` to ride out or report."""
    storage = storage if storage is not None else storage_for(plan.url, plan.heartbeat)
    for _ in range(5):
        try:
            study = optuna.create_study(
                study_name=plan.name, storage=storage, direction=direction, sampler=sampler
            )
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process created it (or we did, and the answer was lost)
        try:
            return optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler), False
        except KeyError:  # created and gone again? try once more
            time.sleep(0.1)
    raise StorageError(f"--storage {mask_url(plan.url)}: cannot create or load '{plan.name}'")


#: Seconds a process joining a study waits for its creator to finish setting it up (record
#: the settings, queue the grid); a creator on this host that is gone is not waited for.
SETUP_WAIT = 60.0
#: Seconds it waits for a study with no set-up mark at all to get one (a creator writes it
#: right after creating the study; one killed in between never will).
SETUP_START_WAIT = 5.0


def set_up_study(study, created: bool, plan: StudyPlan, direction, objective,
                 strategy_name, wait: bool = True) -> list[str]:
    """The creator records the settings and queues the grid, then marks the study ready;
    others wait for that (up to :data:`SETUP_WAIT`), check their settings match, then
    recover. ``wait=False``: no other process can be setting it up (a private storage), so
    a study left without its ready mark (its creator killed) is set up at once."""
    if created:
        study.set_user_attr("m2k_setup", owner_id())  # first: joiners now wait for m2k_ready
    elif wait:
        _wait_for_setup(study)
    _check_study(study, direction, objective, plan.space, strategy_name)
    notes = recover(study, plan)
    if plan.sampler == "grid":
        _enqueue_grid(study, plan)
    if study.user_attrs.get("trials") != plan.target:
        study.set_user_attr("trials", plan.target)  # for --status
    if not study.user_attrs.get("m2k_ready"):
        study.set_user_attr("m2k_ready", True)
    return notes


def _wait_for_setup(study) -> None:
    """Until the study is ready, or its creator is known dead, or the waits run out."""
    start = time.monotonic()
    while True:
        attrs = study.user_attrs
        # ready, or a study of an earlier version (settings but no set-up mark)
        if attrs.get("m2k_ready") or ("m2k_setup" not in attrs and attrs.get("objective")):
            return
        owner = attrs.get("m2k_setup")
        if owner is None:
            if time.monotonic() - start > SETUP_START_WAIT:
                return  # created and never marked: its creator died at once
        elif _owner_dead(owner) or time.monotonic() - start > SETUP_WAIT:
            return
        time.sleep(0.2)


def _owner_dead(owner: str) -> bool:
    """``owner`` (``host:pid``) is a process of this host that is gone."""
    host, _, pid = str(owner).rpartition(":")
    return host == _HOST and pid.isdigit() and not _pid_alive(int(pid))


def _retry(study, t, plan: StudyPlan, trials=None) -> str | None:
    """Queue a failed trial again with all its parameters, once, unless its parameter set is
    already finished, running or queued."""
    if is_discarded(t) or t.user_attrs.get("retries", 0) >= MAX_RETRIES:
        return None
    params = full_params(t, plan.names)
    if params is None:
        return None  # died while drawing: it never ran a backtest, nothing to redo
    trials = trials if trials is not None else study.get_trials(deepcopy=False)
    if any(x.user_attrs.get("retry_of") == t.number for x in trials):
        return None
    key = point_key(params, plan.names)
    if any(x.number != t.number and _live(x) and _trial_key(x, plan) == key for x in trials):
        return None
    study.enqueue_trial(
        params,
        user_attrs={"retry_of": t.number, "retries": t.user_attrs.get("retries", 0) + 1},
    )
    return f"trial {t.number} ({t.state.name}) re-queued with {params}"


def _trial_key(t, plan: StudyPlan):
    p = full_params(t, plan.names)
    return None if p is None else point_key(p, plan.names)


def reap(study, plan: StudyPlan) -> list[str]:
    """Fail the RUNNING trials of dead processes (stale heartbeat, or a process of this host
    that is gone) and re-queue them. Atomic per trial: of two processes reaping at once, one
    wins each trial."""
    TS = optuna.trial.TrialState
    storage = study._storage
    if not hasattr(storage, "_get_stale_trial_ids"):
        return []  # in memory: this process is the only one
    stale = set(storage._get_stale_trial_ids(study._study_id))
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
        owner = t.system_attrs.get("m2k_owner")
        if owner:
            if _owner_dead(owner):
                stale.add(t._trial_id)
        elif t.datetime_start and (now - t.datetime_start).total_seconds() > plan.grace:
            stale.add(t._trial_id)  # created, never claimed: its process died at once
    notes = []
    for trial_id in sorted(stale):
        try:
            if not storage.set_trial_state_values(trial_id, TS.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        note = _retry(study, storage.get_trial(trial_id), plan)
        if note:
            notes.append(note)
    return notes


def recover(study, plan: StudyPlan) -> list[str]:
    """Reap dead processes' trials; re-queue failed ones never retried (at start, and when a
    local worker process died holding trials)."""
    notes = reap(study, plan)
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state.name == "FAIL" and not is_discarded(t):
            note = _retry(study, t, plan, trials)
            if note:
                notes.append(note)
                trials = study.get_trials(deepcopy=False)
    return notes


def _enqueue_grid(study, plan: StudyPlan) -> None:
    """Queue grid points in grid order, skipping those finished, running or queued, until the
    study holds ``target`` live trials."""
    trials = study.get_trials(deepcopy=False)
    live = [t for t in trials if _live(t)]
    taken = {_trial_key(t, plan) for t in live}
    room = plan.target - len(live)
    for point in grid_points(plan.space):
        if room <= 0:
            break
        if point_key(point, plan.names) in taken:
            continue
        study.enqueue_trial(point)
        room -= 1


def _discard(study, trial_id: int, why: str) -> None:
    """A trial we opened but will not run (duplicate, over the cap): FAIL with a mark, so it
    counts nowhere (not in --trials, trials.csv, DSR) and is never retried."""
    storage = study._storage
    storage.set_trial_system_attr(trial_id, "m2k_discard", why)
    try:
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def _taken_before(trials, number: int, key, plan: StudyPlan) -> bool:
    """Another live trial holds ``key`` and comes first (a lower number, or finished)."""
    return any(
        t.number != number
        and _live(t)
        and (t.number < number or t.state.is_finished())
        and _trial_key(t, plan) == key
        for t in trials
    )


def claim(study, plan: StudyPlan, rng: np.random.Generator, index: TrialIndex | None = None):
    """The next trial this process runs and its parameters, or None when the study has no
    work left for it: queued trials first (grid points, retries), then, for TPE, a new
    proposal while the study holds fewer than ``target`` live trials (a study-wide cap that
    every process reads from the storage; trial numbers order concurrent claims).

    ``index`` (def: a new one, which reads the whole study): this process's
    :class:`m2k_bt.optimize.trialindex.TrialIndex` of the study, kept from claim to claim so
    that a claim reads only the trials added since the last one."""
    TS = optuna.trial.TrialState
    storage = study._storage
    index = index if index is not None else TrialIndex(study, plan.names)
    index.refresh()
    while index.queue:
        number, trial_id, params = index.queue.popleft()
        try:
            if not storage.set_trial_state_values(trial_id, TS.RUNNING):
                continue  # another process claimed it first
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_system_attr(trial_id, "m2k_owner", owner_id())
        if params is None or index.taken_before(number, trial_id,
                                                point_key(params, plan.names)):
            _discard(study, trial_id, "duplicate of a queued, running or finished trial")
            continue
        trial = optuna.Trial(study, trial_id)
        return trial, {n: r.suggest(trial) for n, r in plan.space.items()}
    if plan.sampler == "grid":
        return None
    trials = study.get_trials(deepcopy=False)  # TPE's sampler reads them all anyway
    for attempt in range(REDRAWS + 1):
        trials = study.get_trials(deepcopy=False) if attempt else trials
        taken = {_trial_key(t, plan) for t in trials if _live(t)}
        if sum(map(_live, trials)) >= plan.target:
            return None
        fixed = None
        if attempt == REDRAWS:  # TPE keeps proposing taken sets: a free point at random
            fixed = _free_point(plan, taken, rng)
            if fixed is None:
                return None  # every point of the space is taken
        trial_id = storage.create_new_trial(study._study_id)
        storage.set_trial_system_attr(trial_id, "m2k_owner", owner_id())
        if fixed is not None:
            storage.set_trial_system_attr(trial_id, "fixed_params", fixed)
        trial = optuna.Trial(study, trial_id)
        trials = study.get_trials(deepcopy=False)
        if sum(1 for t in trials if t.number < trial.number and _live(t)) >= plan.target:
            _discard(study, trial_id, "over the study's --trials")
            return None
        params = {n: r.suggest(trial) for n, r in plan.space.items()}
        key = point_key(params, plan.names)
        trials = _after_drawing(study, trial.number, plan)
        if not _taken_before(trials, trial.number, key, plan):
            return trial, params
        _discard(study, trial_id, "duplicate of a queued, running or finished trial")
    return None


#: How long a new trial waits for lower-numbered trials of other processes to finish drawing
#: their parameters before it compares its own with theirs.
DRAW_WAIT = 2.0


def _after_drawing(study, number: int, plan: StudyPlan):
    """The study's trials once every live trial numbered below ``number`` has its parameters.

    Trial numbers order concurrent claims: the lower number keeps a parameter set both drew.
    A process that created its trial first but has not written its parameters yet would be
    invisible to the later one's check, and both would run the same set; so the later one
    waits (up to :data:`DRAW_WAIT` s: a process that died while drawing is reaped later)."""
    deadline = time.monotonic() + DRAW_WAIT
    while True:
        trials = study.get_trials(deepcopy=False)
        drawing = [t for t in trials if t.number < number and _live(t)
                   and not t.state.is_finished() and _trial_key(t, plan) is None]
        if not drawing or time.monotonic() > deadline:
            return trials
        time.sleep(0.02)


def _free_point(plan: StudyPlan, taken: set, rng: np.random.Generator) -> dict | None:
    for _ in range(1000):
        point = {n: r.draw(rng) for n, r in plan.space.items()}
        if point_key(point, plan.names) not in taken:
            return point
    return None


def tell(study, trial, outcome: dict) -> None:
    """Record a trial's outcome (:func:`m2k_bt.optimize.trial.evaluate_params`) and finish it;
    one failed meanwhile by another process (as stale) is left as it is."""
    try:
        state, value = _apply(trial, outcome)
        # what study.tell(trial, value, state=state) stores, without its deep copy of the
        # whole trial (a quarter of a millisecond a trial, its daily returns included); our
        # samplers (TPE, and Random for a grid) do nothing after a trial; like tell, the
        # sampler's cache of the study's trials is dropped (it holds only within a trial)
        study._storage.set_trial_state_values(
            trial._trial_id, state, None if value is None else [float(value)])
        local = getattr(study, "_thread_local", None)
        if local is not None:
            local.cached_all_trials = None
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # failed meanwhile as stale by another process: its retry runs it again


def fail_trial(study, trial) -> None:
    """Mark a claimed trial FAIL on the way out (best effort; a resume re-queues it)."""
    try:
        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    except Exception:  # noqa: BLE001 - best effort on the way out; resume recovers it
        pass


def counts(study) -> dict:
    """The study's trials by state name, discarded ones left out."""
    out = {"COMPLETE": 0, "PRUNED": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0}
    for t in study.get_trials(deepcopy=False):
        if not is_discarded(t):
            out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def busy(study) -> bool:
    """Trials still running or queued (maybe in other processes)."""
    c = counts(study)
    return bool(c["RUNNING"] or c["WAITING"])


def has_work(study, plan: StudyPlan) -> bool:
    """Anything left to claim or still running (else a pool would start for nothing)."""
    c = counts(study)
    if c["RUNNING"] or c["WAITING"]:
        return True
    return plan.sampler == "tpe" and c["COMPLETE"] + c["PRUNED"] < plan.target


def _check_study(study, direction, objective, space, strategy_name) -> None:
    attrs = study.user_attrs
    mine = {
        "objective": objective,
        "space": [str(r) for r in space.values()],
        "strategy": strategy_name,
    }
    for k, v in mine.items():
        if attrs.get(k) is None:  # new, or its creator was killed while recording them
            study.set_user_attr(k, v)
        elif attrs[k] != v:
            raise ConfigError(
                f"study '{study.study_name}' already exists with {k}={attrs.get(k)!r}, not "
                f"{v!r}; resume it with the same settings or pick another --study-name or --out"
            )


def _apply(trial, outcome: dict):
    """Record an outcome on an Optuna trial; return ``(state, value)`` for ``tell``."""
    if outcome["attrs"]:
        trial.set_user_attr("backtest", outcome["attrs"])  # one write: SQLite commits are slow
    if outcome["infeasible"]:
        trial.set_user_attr("infeasible", outcome["infeasible"])
        return optuna.trial.TrialState.PRUNED, None
    return optuna.trial.TrialState.COMPLETE, outcome["value"]
