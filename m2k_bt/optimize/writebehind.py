"""A fresh study on a storage only this process uses runs in memory and is written behind
to the storage in batches (see :class:`WriteBehind`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from datetime import datetime, timezone

import optuna
from optuna.distributions import distribution_to_json
from optuna.storages._rdb import models
from sqlalchemy import insert, select

from .claims import StudyPlan
from .storage import DB_ERRORS, storage_for

__all__ = ["EncodedAttrs", "FLUSH_SECONDS", "IDLE_FLUSH_TRIALS", "WriteBehind", "is_fresh",
           "signals_held", "write_trials"]

#: Seconds between writes of a study kept in memory to its private storage.
FLUSH_SECONDS = 2.0
#: Finished trials waiting to be written that make a flush worth it while this process would
#: otherwise wait for its backtester processes (:meth:`WriteBehind.idle`): a flush costs a
#: commit and a few statements whatever its size, so not after every batch.
IDLE_FLUSH_TRIALS = 128


class EncodedAttrs(dict):
    """A trial's user attribute (a dict) with its JSON text made beforehand: a backtester
    process encodes the attributes of the trials it ran (in parallel with the others), so that
    the process writing them to the storage (:func:`write_trials`) does not encode them again.
    It is a plain ``dict`` to every reader; ``json`` is ``json.dumps`` of its items when it was
    made (it is not changed afterwards: a trial's attributes are written once)."""

    def __init__(self, items: dict):
        super().__init__(items)
        self.json = json.dumps(items)


def _json(value) -> str:
    """``json.dumps(value)``, or the text an :class:`EncodedAttrs` was made with."""
    return value.json if type(value) is EncodedAttrs else json.dumps(value)


class WriteBehind:
    """A fresh study on a storage only this process uses (the ``study.db`` of an output
    folder it holds locked) runs in memory; its finished trials are written to the storage
    in one batch every :data:`FLUSH_SECONDS` and at the end, so a trial of milliseconds does
    not pay a dozen SQLite round trips. Trials go in number order and only finished ones, so
    the storage always holds a consistent study: a run killed outright loses at most the
    last seconds of trials and resumes from the storage like any other study."""

    def __init__(self, plan: StudyPlan, mem_study):
        self.plan, self.mem = plan, mem_study
        self.disk = None
        self.written = 0  # trials of ``mem`` (by number) already in the storage
        self.unsure = False  # a flush was cut short: ``written`` is read back from the storage
        self.attrs = None  # the study's user attributes as last written
        self.last = time.monotonic()

    def maybe(self) -> None:
        """Flush when the last write is :data:`FLUSH_SECONDS` old (called after each batch)."""
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def idle(self) -> None:
        """This process would wait (for its backtesters): flush when at least
        :data:`IDLE_FLUSH_TRIALS` trials are waiting to be written, so that the end of the
        study does not write them all while nothing else runs."""
        if len(self._finished()) >= IDLE_FLUSH_TRIALS:
            self.flush()

    def _finished(self) -> list:
        """The trials to write: those after the last written, up to the first not finished
        (trials go in number order)."""
        done = []
        for t in self.mem.get_trials(deepcopy=False)[self.written:]:
            if not t.state.is_finished():
                break
            done.append(t)
        return done

    def flush(self) -> None:
        """:meth:`_flush` with Ctrl-C and SIGTERM held until it is done (then raised): a
        signal landing inside the storage's transaction could otherwise leave it open in
        this process, and the study's last flush would wait on its lock."""
        with signals_held():
            self._flush()

    def _flush(self) -> None:
        """Write the trials finished since the last flush, in number order, and the study's
        user attributes (the storage's study is created on the first flush).

        A flush cut short (Ctrl-C, a lost connection) may have written some of its trials,
        the last one maybe without hearing so: the next flush first reads back how many
        trials the storage holds (trial ``k`` there is trial ``k`` here), so that none is
        written twice and none is skipped."""
        if self.disk is None or self.unsure:
            self._open()
        self.unsure = True
        # the RDB storage itself, not the study's cache of it: nothing here reads them back
        storage = getattr(self.disk._storage, "_backend", self.disk._storage)
        done = self._finished()
        if done:
            write_trials(storage, self.disk._study_id, done)
            self.written += len(done)
        attrs = self.mem.user_attrs
        if attrs != self.attrs:  # the storage's are read (a query) only when ours changed
            stored = self.disk.user_attrs
            for key, value in attrs.items():
                if stored.get(key) != value:
                    self.disk.set_user_attr(key, value)
            self.attrs = attrs
        self.unsure = False
        self.last = time.monotonic()

    def _open(self) -> None:
        """Create the storage's study (or find the one a flush cut short created), write the
        settings (the ready mark comes last, after the trials, as ``set_up_study`` does on a
        shared storage) and read back how many trials it holds."""
        storage = storage_for(self.plan.url, self.plan.heartbeat)
        if self.disk is None:
            self.unsure = True
            try:
                self.disk = optuna.create_study(study_name=self.plan.name, storage=storage,
                                                direction=self.mem.direction)
            except optuna.exceptions.DuplicatedStudyError:  # created by a flush cut short
                self.disk = optuna.load_study(study_name=self.plan.name, storage=storage)
            for key, value in self.mem.user_attrs.items():
                if key != "m2k_ready" and self.disk.user_attrs.get(key) != value:
                    self.disk.set_user_attr(key, value)
        backend = getattr(self.disk._storage, "_backend", self.disk._storage)
        self.written = backend.get_n_trials(self.disk._study_id)
        self.unsure = False


@contextlib.contextmanager
def signals_held():
    """Within the block, SIGINT and SIGTERM are noted, not acted on; when it ends, the first
    one noted is handled as it would have been (its previous handler is called: Ctrl-C raises
    ``KeyboardInterrupt``, the command line's SIGTERM handler its exception; a default action
    is taken by sending the signal again). Python runs signal handlers in the main thread
    only, so in another thread (or where a handler was set outside Python) the block runs as
    it is."""
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in stops}
    if threading.current_thread() is not threading.main_thread() or \
            any(h is None for h in previous.values()):
        yield
        return
    caught: list[int] = []
    for s in stops:
        signal.signal(s, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            signum, handler = caught[0], previous[caught[0]]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


def _utc(moment: datetime | None) -> datetime | None:
    """A trial's local naive time as the naive UTC Optuna's RDB storage keeps."""
    return None if moment is None else moment.astimezone(timezone.utc).replace(tzinfo=None)


def write_trials(storage, study_id: int, trials) -> None:
    """Add finished ``trials`` (numbered from the count the storage's study already holds)
    to ``storage`` (an Optuna ``RDBStorage``) in one transaction, a handful of multi-row
    statements in all: what ``create_new_trial(template_trial=t)`` writes for each, without
    its dozen statements and its deep copy a trial. All of them or none are written."""
    T = models.TrialModel.__table__
    steps_model = models.TrialIntermediateValueModel
    rows = [{"number": t.number, "study_id": study_id, "state": t.state,
             "datetime_start": _utc(t.datetime_start),
             "datetime_complete": _utc(t.datetime_complete)} for t in trials]
    with storage.engine.begin() as conn:
        conn.execute(insert(T), rows)
        ids = dict(conn.execute(
            select(T.c.number, T.c.trial_id).where(T.c.study_id == study_id,
                                                   T.c.number >= trials[0].number)
        ).all())
        values, params, user, system, steps = [], [], [], [], []
        for t in trials:
            tid = ids[t.number]
            for objective, v in enumerate(t.values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(v)
                values.append({"trial_id": tid, "objective": objective, "value": stored,
                               "value_type": kind})
            for name, v in t.params.items():
                dist = t.distributions[name]
                params.append({"trial_id": tid, "param_name": name,
                               "param_value": dist.to_internal_repr(v),
                               "distribution_json": distribution_to_json(dist)})
            user += [{"trial_id": tid, "key": k, "value_json": _json(v)}
                     for k, v in t.user_attrs.items()]
            system += [{"trial_id": tid, "key": k, "value_json": json.dumps(v)}
                       for k, v in t.system_attrs.items()]
            for step, v in t.intermediate_values.items():
                stored, kind = steps_model.intermediate_value_to_stored_repr(v)
                steps.append({"trial_id": tid, "step": step, "intermediate_value": stored,
                              "intermediate_value_type": kind})
        for model, batch in ((models.TrialValueModel, values), (models.TrialParamModel, params),
                             (models.TrialUserAttributeModel, user),
                             (models.TrialSystemAttributeModel, system),
                             (models.TrialIntermediateValueModel, steps)):
            if batch:
                conn.execute(insert(model.__table__), batch)


def is_fresh(plan: StudyPlan) -> bool:
    """The storage does not hold this study yet (a private one may then run in memory)."""
    try:
        names = optuna.get_all_study_names(storage_for(plan.url, plan.heartbeat))
    except DB_ERRORS:
        return False
    return plan.name not in names
