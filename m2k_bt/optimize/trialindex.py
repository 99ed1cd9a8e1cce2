"""What one process knows of a study's trials, read from the storage a trial at a time.

A grid queues all its points when the study is set up; a process then claims them one after
another. Finding the next queued point and checking that no other trial holds its parameter
set must not read or scan every trial of the study each time (a 2,000-point grid would then
cost 2,000 x 2,000 trial reads). :class:`TrialIndex` keeps, per process:

- the queued (``WAITING``) trials it has seen, in number order: a claim takes the first and
  makes it ``RUNNING`` atomically in the storage, as before; one another process claimed
  meanwhile is simply passed over (a trial never becomes ``WAITING`` again);
- for each parameter set, the trials that hold it; only when a set has more than one holder
  (a retry, or two processes that queued the same point) are the others' states read back
  from the storage to apply the rule "the lower number, or the finished one, keeps it".

:meth:`TrialIndex.refresh` reads only trials it has not seen: on an RDB storage those with a
higher trial id (trial creation locks the study's row, so ids and numbers grow together and
commit in order), in memory those with a higher number; and again those it saw while their
parameters were still being drawn (a TPE trial of another process).
"""

from __future__ import annotations

from collections import deque

import optuna

from .space import point_key

__all__ = ["TrialIndex", "full_params", "is_discarded"]


def full_params(t, names) -> dict | None:
    """All searched parameters of a trial (a queued trial's are in ``fixed_params``), or None
    when its process died (or is still busy) before every parameter was drawn."""
    for p in (t.system_attrs.get("fixed_params"), t.params):
        if p and all(n in p for n in names):
            return {n: p[n] for n in names}
    return None


def is_discarded(t) -> bool:
    """A trial opened but never run (a duplicate, or over the cap): it counts nowhere."""
    return "m2k_discard" in t.system_attrs


class TrialIndex:
    """The queued trials and the holders of each parameter set of ``study``, as far as this
    process has read them (see the module docstring). ``reads`` counts the trials read from
    the storage (the tests check that a claim does not re-read the study)."""

    def __init__(self, study, names):
        self.study, self.names = study, list(names)
        storage = study._storage
        #: the RDB storage behind Optuna's cache, or None for a study in memory
        self.backend = getattr(storage, "_backend", None)
        self.seen = 0  # in memory: trials 0 .. seen-1 read
        self.last_id = -1  # RDB: the highest trial id read
        self.drawing: set[int] = set()  # ids of trials read before their parameters were
        self.queue: deque = deque()  # (number, trial_id, params or None) read as WAITING
        self.holders: dict[tuple, list[tuple[int, int]]] = {}  # key -> [(number, trial_id)]
        self.reads = 0

    def refresh(self) -> None:
        """Read the trials not seen yet (and those seen while still drawing)."""
        for t in self._unseen():
            self.reads += 1
            self.drawing.discard(t._trial_id)
            if t.state.name == "FAIL" or is_discarded(t):
                continue  # never live again: it holds nothing
            params = full_params(t, self.names)
            if t.state == optuna.trial.TrialState.WAITING:
                self.queue.append((t.number, t._trial_id, params))  # None: claimed, discarded
            elif params is None:
                if not t.state.is_finished():
                    self.drawing.add(t._trial_id)
                continue
            if params is not None:
                key = point_key(params, self.names)
                self.holders.setdefault(key, []).append((t.number, t._trial_id))

    def _unseen(self) -> list:
        storage, study_id = self.study._storage, self.study._study_id
        if self.backend is not None:
            trials = self.backend._get_trials(study_id, None, set(self.drawing), self.last_id)
            if trials:
                self.last_id = max(self.last_id, max(t._trial_id for t in trials))
            return trials
        trials = [storage.get_trial(i) for i in sorted(self.drawing)]
        while True:
            try:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.seen)
            except KeyError:
                return trials
            trials.append(storage.get_trial(trial_id))
            self.seen += 1

    def taken_before(self, number: int, trial_id: int, key) -> bool:
        """Another live trial holds ``key`` and comes first (a lower number, or finished):
        read back from the storage only when the set has another holder."""
        storage = self.study._storage
        for other_number, other_id in self.holders.get(key, ()):
            if other_id == trial_id:
                continue
            t = storage.get_trial(other_id)
            self.reads += 1
            if t.state.name == "FAIL" or is_discarded(t):
                continue
            if other_number < number or t.state.is_finished():
                return True
        return False
