"""Parameter search with Optuna: TPE (Bergstra et al., 2011) or a grid, on full backtests.

Every trial is one complete :func:`m2k_bt.engine.cerebro.run_backtest` (our contract model, sizer,
broker and the minimal analyzers ``returns`` and ``trades``): no shortcut changes a result. The
objective is a key of ``result.metrics`` (:data:`OBJECTIVES`); each trial also records its
daily returns (per CME trade date) so that :mod:`m2k_bt.optimize.overfitting` can compute the Deflated
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
  processes (def: 1 with kernel trials, one per core with cerebro) on the shared storage, with
  the bars sent once per process. ``workers=1`` runs in this process; a fresh study then lives
  in memory and is written to ``study.db`` in batches (see ``private_storage``).
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
import json
import math
import os
import re
import socket
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, M2KError, ParameterError, did_you_mean

__all__ = [
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
    >>> r.kind, list(r.grid())
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

    def grid(self) -> Sequence:
        """The values a grid walks, as a lazy sequence: ``fast=1:1000000000`` costs no memory."""
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None:
            raise ConfigError(
                f"--space {self}: a grid needs a step for every float range, e.g. "
                f"{self.name}={self.low}:{self.high}:0.25"
            )
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        if self.kind == "int":
            return range(int(self.low), int(self.low) + n * int(self.step), int(self.step))
        return _FloatSteps(float(self.low), float(self.step), n)

    def draw(self, rng: np.random.Generator):
        """One value drawn uniformly from the range (no list is built)."""
        if self.kind == "float" and self.step is None:
            return float(rng.uniform(self.low, self.high))
        values = self.grid()
        return values[int(rng.integers(len(values)))]

    def __str__(self) -> str:
        if self.kind == "choice":
            return f"{self.name}={','.join(map(str, self.choices))}"
        num = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: repr(float(v)))
        step = "" if self.step is None else f":{num(self.step)}"
        return f"{self.name}={num(self.low)}:{num(self.high)}{step}"


class _FloatSteps(Sequence):
    """``low, low + step, ...`` (``n`` values, rounded to 10 decimals) without a list."""

    def __init__(self, low: float, step: float, n: int):
        self.low, self.step, self.n = low, step, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return round(self.low + i * self.step, 10)


def _grid_size(space: dict) -> int:
    return math.prod(len(r.grid()) for r in space.values())


def _grid_points(space: dict):
    """Grid points in ``itertools.product`` order, decoded one at a time from their index
    (``itertools.product`` would first copy every range into a tuple).

    >>> list(_grid_points(parse_space(["a=1:2", "b=x,y"])))
    [{'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
    """
    names = list(space)
    grids = [space[n].grid() for n in names]
    sizes = [len(g) for g in grids]
    for index in range(math.prod(sizes)):
        point, rest = {}, index
        for name, grid, size in zip(reversed(names), reversed(grids), reversed(sizes)):
            rest, i = divmod(rest, size)
            point[name] = grid[i]
        yield {n: point[n] for n in names}


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


#: How a --space item is written, for error messages.
SPACE_SYNTAX = (
    "the syntax is name=lo:hi:step or name=a,b,c (e.g. fast=10:100:5, devfactor=1.5:3.0:0.25, "
    "exit=middle,signal)"
)
_RANGE_TYPO = re.compile(r"^[-+]?\d+(\.\d*)?\s*(-|\.\.|to|~)\s*[-+]?\d+(\.\d*)?$")


def _parse_one(item: str) -> ParamRange:
    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ConfigError(f"--space {item!r}: {SPACE_SYNTAX}")
    if _RANGE_TYPO.match(value):
        raise ConfigError(f"--space {item!r} is not a range: {SPACE_SYNTAX}")
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
        defaults = _strategy_defaults(strategy)
        for name, r in space.items():
            numeric = isinstance(defaults.get(name), (int, float)) and not isinstance(
                defaults.get(name), bool
            )
            if numeric and r.kind == "choice" and any(isinstance(c, str) for c in r.choices):
                raise ConfigError(
                    f"--space {r}: {name} takes numbers (default {defaults[name]!r}); "
                    f"{SPACE_SYNTAX}"
                )
    return space


def _strategy_class(strategy):
    if strategy is None:
        return None
    if isinstance(strategy, type):
        return strategy
    try:
        from ..engine.cerebro import resolve_strategy
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


def _strategy_defaults(strategy) -> dict:
    cls = _strategy_class(strategy)
    params = getattr(cls, "params", None)
    items = getattr(params, "_getitems", None)
    return dict(items()) if items else {}


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
        from ..engine.cerebro import run_backtest
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
        "returns": dict(zip(rets.index.strftime("%Y-%m-%d"), rets.to_numpy(float).tolist())),
    }
    value = metrics.get(objective)
    trades = metrics.get("trades") or 0
    reason = None
    if trades < min_trades:
        reason = f"min_trades: {trades} trades < {min_trades}"
    elif value is None or not math.isfinite(value):
        reason = f"objective {objective} undefined ({value})"
    return {"value": None if reason else float(value), "infeasible": reason, "attrs": attrs}


def evaluate_batch(
    bars: pd.DataFrame,
    config,
    params_list: Sequence[dict],
    objective: str = "sharpe",
    min_trades: int = 1,
    run_backtest: Callable | None = None,
) -> list[dict]:
    """:func:`evaluate_params` for each of ``params_list`` in turn, in this process: one
    Dask task (or one claim of a worker) runs a whole batch, and the kernel's indicators,
    kept per bars object, are shared by the batch's trials."""
    return [evaluate_params(bars, config, p, objective, min_trades, run_backtest)
            for p in params_list]


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


# ---------------------------------------------------------------- storage and study

#: Seconds between heartbeats of a running trial; one silent for 3x as long belongs to a dead
#: process and is failed and re-queued (a process on the same host is seen dead at once).
DEFAULT_HEARTBEAT = 10
#: Seconds a lost storage connection is retried (with backoff) before the run gives up.
DEFAULT_RECONNECT = 60.0
#: A trial whose process died is re-queued this many times (with all its parameters).
MAX_RETRIES = 1
#: TPE proposals equal to a finished or running parameter set are re-drawn this many times,
#: then a parameter set is drawn uniformly from the space's free points.
REDRAWS = 3
_POLL = 0.5  # s between looks at the storage while other processes finish their trials


class StorageError(ConfigError):
    """The study's storage cannot be reached, or was lost for longer than the retry period."""


def study_storage_url(out: str | Path) -> str:
    """The embedded storage URL of an output folder: ``sqlite:///<out>/study.db``."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def _is_remote(url: str | None) -> bool:
    """Another machine may run trials of this study: any RDB URL but a SQLite file."""
    return url is not None and not url.startswith("sqlite:")


def mask_url(url: str | None) -> str | None:
    """``url`` with its password replaced by ``***``.

    >>> mask_url("postgresql://ann:s3cret@db:5432/optuna")
    'postgresql://ann:***@db:5432/optuna'
    >>> mask_url("sqlite:///tmp/study.db")
    'sqlite:///tmp/study.db'
    """
    if url is None:
        return None
    return re.sub(r"^([a-z0-9+._-]+://[^:/@]*:)[^@]*@", r"\1***@", url, flags=re.I)


def _driver_url(url: str) -> str:
    """Map ``postgresql://`` (and ``postgres://``) to the installed driver: psycopg 3 (the
    ``postgres`` extra), else psycopg2. An explicit ``+driver`` is kept."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise StorageError(
        f"--storage {mask_url(url)}: no PostgreSQL driver is installed; "
        f"pip install -e '.[postgres]' (psycopg 3)"
    )


def _db_errors() -> tuple:
    import optuna
    import sqlalchemy.exc as sa

    return (sa.OperationalError, sa.InterfaceError, optuna.exceptions.StorageInternalError)


def _one_line(exc: BaseException, url: str | None) -> str:
    """The first meaningful line of a driver's message, password masked."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = next((ln for ln in lines if not ln.startswith("(Background")), "") or type(exc).__name__
    line = re.sub(r"\s*\(Background on this error at:.*", "", line)
    if url:
        m = re.match(r"^[a-z0-9+._-]+://[^:/@]*:([^@]*)@", url, flags=re.I)
        if m and m.group(1):
            line = line.replace(m.group(1), "***")
    return line[:300]


_SQLITE_STORAGES: dict = {}  # (url, heartbeat) -> (file's inode, storage): one per file


def _storage(url: str | None, heartbeat: int = DEFAULT_HEARTBEAT):
    """An RDB storage with heartbeats (any URL, SQLite included); None in memory. A SQLite
    file's storage is made once per process (each costs a schema check of ~0.1 s: walk-forward
    opens one per fold), again if the file was replaced."""
    if url is not None and _driver_url(url).startswith("sqlite:///"):
        path = _driver_url(url)[len("sqlite:///"):]
        key = (url, int(heartbeat))
        held = _SQLITE_STORAGES.get(key)
        inode = _inode(path)
        if held is not None and inode is not None and held[0] == inode:
            return held[1]
        storage = _new_storage(url, heartbeat)
        _SQLITE_STORAGES[key] = (_inode(path), storage)
        return storage
    return _new_storage(url, heartbeat)


def _inode(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _new_storage(url: str | None, heartbeat: int = DEFAULT_HEARTBEAT):
    import random
    import warnings

    import optuna
    import sqlalchemy.exc as sa

    if url is None:
        return None
    real = _driver_url(url)
    kwargs = {}
    if real.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    real,
                    heartbeat_interval=max(1, int(heartbeat)),
                    grace_period=max(2, 3 * int(heartbeat)),
                    **kwargs,
                )
            break
        except (sa.IntegrityError, sa.ProgrammingError) as exc:
            # two processes creating the tables of a fresh database at once: one loses the
            # race on a catalogue row; the tables exist now, so try again
            if attempt == 5:
                raise StorageError(
                    f"--storage {mask_url(url)}: cannot create the study tables: "
                    f"{_one_line(exc, url)}"
                ) from None
            time.sleep(0.1 + random.random() * 0.4)
        except (ImportError, ModuleNotFoundError) as exc:
            raise StorageError(
                f"--storage {mask_url(url)}: the database driver is missing ({exc}); "
                f"pip install -e '.[postgres]' for PostgreSQL"
            ) from None
        except Exception as exc:  # SQLAlchemy: bad URL, unreachable server, wrong password
            if isinstance(exc, M2KError):
                raise
            raise StorageError(
                f"--storage {mask_url(url)}: cannot open the study: {_one_line(exc, url)}"
            ) from None
    if real.startswith("sqlite:"):
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


def _derive_seed(seed: int | None, *parts) -> int | None:
    """``seed`` itself for the first worker of a fresh study, else a seed mixed from ``seed``
    and ``parts`` (worker identity, finished trials): a resumed study or a second process
    draws new proposals instead of replaying the first ones."""
    if seed is None:
        return None
    if not any(parts):
        return seed
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


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


def _full_params(t, names) -> dict | None:
    """All searched parameters of a trial (a queued trial's are in ``fixed_params``), or None
    when its process died before every parameter was drawn."""
    for p in (t.system_attrs.get("fixed_params"), t.params):
        if p and all(n in p for n in names):
            return {n: p[n] for n in names}
    return None


def _discarded(t) -> bool:
    return "m2k_discard" in t.system_attrs


def _live(t) -> bool:
    """A trial that counts towards ``--trials``: finished, running or queued."""
    return t.state.name != "FAIL"


_HOST = socket.gethostname()


def _owner() -> str:
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
class _Plan:
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


def _retrying(plan: _Plan, fn, *args):
    """``fn(*args)``, retried with backoff while the storage connection is down."""
    errors = _db_errors()
    deadline = time.monotonic() + plan.reconnect
    delay = 0.25
    while True:
        try:
            return fn(*args)
        except errors as exc:
            if time.monotonic() + delay > deadline:
                raise StorageError(
                    f"--storage {mask_url(plan.url)}: lost the connection for over "
                    f"{plan.reconnect:g} s ({_one_line(exc, plan.url)}); the study is saved: "
                    f"run the same command again to resume it"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class _Heartbeat:
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


def _open_study(plan: _Plan, direction: str, sampler):
    """Create the study or join it, race-free: of processes starting at once on a fresh
    storage exactly one creates it; the others load it."""
    import optuna

    storage = _storage(plan.url, plan.heartbeat)
    for _ in range(5):
        try:
            study = optuna.create_study(
                study_name=plan.name, storage=storage, direction=direction, sampler=sampler
            )
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            pass
        try:
            return optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler), False
        except KeyError:  # created and gone again? try once more
            time.sleep(0.1)
        except _db_errors() as exc:
            raise StorageError(
                f"--storage {mask_url(plan.url)}: cannot load study '{plan.name}': "
                f"{_one_line(exc, plan.url)}"
            ) from None
    raise StorageError(f"--storage {mask_url(plan.url)}: cannot create or load '{plan.name}'")


def _setup(study, created: bool, plan: _Plan, direction, objective, strategy_name) -> list[str]:
    """The creator records the settings and queues the grid, then marks the study ready;
    others wait for that (up to a minute), check their settings match, then recover."""
    if created:
        study.set_user_attr("m2k_setup", _owner())  # first: joiners now wait for m2k_ready
    else:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            attrs = study.user_attrs
            # ready, or a study of an earlier version (settings but no set-up mark)
            if attrs.get("m2k_ready") or ("m2k_setup" not in attrs and attrs.get("objective")):
                break
            time.sleep(0.2)
    _check_study(study, direction, objective, plan.space, strategy_name)
    notes = _recover(study, plan)
    if plan.sampler == "grid":
        _enqueue_grid(study, plan)
    if study.user_attrs.get("trials") != plan.target:
        study.set_user_attr("trials", plan.target)  # for --status
    if not study.user_attrs.get("m2k_ready"):
        study.set_user_attr("m2k_ready", True)
    return notes


def _retry(study, t, plan: _Plan, trials=None) -> str | None:
    """Queue a failed trial again with all its parameters, once, unless its parameter set is
    already finished, running or queued."""
    if _discarded(t) or t.user_attrs.get("retries", 0) >= MAX_RETRIES:
        return None
    params = _full_params(t, plan.names)
    if params is None:
        return None  # died while drawing: it never ran a backtest, nothing to redo
    trials = trials if trials is not None else study.get_trials(deepcopy=False)
    if any(x.user_attrs.get("retry_of") == t.number for x in trials):
        return None
    key = _key(params, plan.names)
    if any(x.number != t.number and _live(x) and _trial_key(x, plan) == key for x in trials):
        return None
    study.enqueue_trial(
        params,
        user_attrs={"retry_of": t.number, "retries": t.user_attrs.get("retries", 0) + 1},
    )
    return f"trial {t.number} ({t.state.name}) re-queued with {params}"


def _trial_key(t, plan: _Plan):
    p = _full_params(t, plan.names)
    return None if p is None else _key(p, plan.names)


def _reap(study, plan: _Plan) -> list[str]:
    """Fail the RUNNING trials of dead processes (stale heartbeat, or a process of this host
    that is gone) and re-queue them. Atomic per trial: of two processes reaping at once, one
    wins each trial."""
    import optuna

    TS = optuna.trial.TrialState
    storage = study._storage
    if not hasattr(storage, "_get_stale_trial_ids"):
        return []  # in memory: this process is the only one
    stale = set(storage._get_stale_trial_ids(study._study_id))
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
        owner = t.system_attrs.get("m2k_owner")
        if owner:
            host, _, pid = owner.rpartition(":")
            if host == _HOST and pid.isdigit() and not _pid_alive(int(pid)):
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


def _recover(study, plan: _Plan) -> list[str]:
    """At start: reap dead processes' trials; re-queue failed ones never retried."""
    notes = _reap(study, plan)
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state.name == "FAIL" and not _discarded(t):
            note = _retry(study, t, plan, trials)
            if note:
                notes.append(note)
                trials = study.get_trials(deepcopy=False)
    return notes


def _enqueue_grid(study, plan: _Plan) -> None:
    """Queue grid points in grid order, skipping those finished, running or queued, until the
    study holds ``target`` live trials."""
    trials = study.get_trials(deepcopy=False)
    live = [t for t in trials if _live(t)]
    taken = {_trial_key(t, plan) for t in live}
    room = plan.target - len(live)
    for point in _grid_points(plan.space):
        if room <= 0:
            break
        if _key(point, plan.names) in taken:
            continue
        study.enqueue_trial(point)
        room -= 1


def _discard(study, trial_id: int, why: str) -> None:
    """A trial we opened but will not run (duplicate, over the cap): FAIL with a mark, so it
    counts nowhere (not in --trials, trials.csv, DSR) and is never retried."""
    import optuna

    storage = study._storage
    storage.set_trial_system_attr(trial_id, "m2k_discard", why)
    try:
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def _taken_before(trials, number: int, key, plan: _Plan) -> bool:
    """Another live trial holds ``key`` and comes first (a lower number, or finished)."""
    return any(
        t.number != number
        and _live(t)
        and (t.number < number or t.state.is_finished())
        and _trial_key(t, plan) == key
        for t in trials
    )


def _claim(study, plan: _Plan, rng: np.random.Generator):
    """The next trial this process runs and its parameters, or None when the study has no
    work left for it: queued trials first (grid points, retries), then, for TPE, a new
    proposal while the study holds fewer than ``target`` live trials (a study-wide cap that
    every process reads from the storage; trial numbers order concurrent claims)."""
    import optuna

    TS = optuna.trial.TrialState
    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state != TS.WAITING:
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, TS.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_system_attr(t._trial_id, "m2k_owner", _owner())
        params = _full_params(t, plan.names)
        if params is None or _taken_before(trials, t.number, _key(params, plan.names), plan):
            _discard(study, t._trial_id, "duplicate of a queued, running or finished trial")
            continue
        trial = optuna.Trial(study, t._trial_id)
        return trial, {n: r.suggest(trial) for n, r in plan.space.items()}
    if plan.sampler == "grid":
        return None
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
        storage.set_trial_system_attr(trial_id, "m2k_owner", _owner())
        if fixed is not None:
            storage.set_trial_system_attr(trial_id, "fixed_params", fixed)
        trial = optuna.Trial(study, trial_id)
        trials = study.get_trials(deepcopy=False)
        if sum(1 for t in trials if t.number < trial.number and _live(t)) >= plan.target:
            _discard(study, trial_id, "over the study's --trials")
            return None
        params = {n: r.suggest(trial) for n, r in plan.space.items()}
        key = _key(params, plan.names)
        trials = _after_drawing(study, trial.number, plan)
        if not _taken_before(trials, trial.number, key, plan):
            return trial, params
        _discard(study, trial_id, "duplicate of a queued, running or finished trial")
    return None


#: How long a new trial waits for lower-numbered trials of other processes to finish drawing
#: their parameters before it compares its own with theirs.
DRAW_WAIT = 2.0


def _after_drawing(study, number: int, plan: _Plan):
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


def _free_point(plan: _Plan, taken: set, rng: np.random.Generator) -> dict | None:
    for _ in range(1000):
        point = {n: r.draw(rng) for n, r in plan.space.items()}
        if _key(point, plan.names) not in taken:
            return point
    return None


def _tell(study, trial, outcome: dict) -> None:
    import optuna

    try:
        state, value = _apply(trial, outcome)
        study.tell(trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # failed meanwhile as stale by another process: its retry runs it again


def _fail(study, trial) -> None:
    import optuna

    try:
        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    except Exception:  # noqa: BLE001 - best effort on the way out; resume recovers it
        pass


def _counts(study) -> dict:
    out = {"COMPLETE": 0, "PRUNED": 0, "RUNNING": 0, "WAITING": 0, "FAIL": 0}
    for t in study.get_trials(deepcopy=False):
        if not _discarded(t):
            out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _busy(study) -> bool:
    """Trials still running or queued (maybe in other processes)."""
    c = _counts(study)
    return bool(c["RUNNING"] or c["WAITING"])


# ---------------------------------------------------------------- runners


def _work(study, plan: _Plan, payload, progress=None, after_batch=None) -> int:
    """This process's share of the study: claim up to ``plan.batch`` trials, run them, record
    them, until the study is done. Stays while other processes still run trials, so that one
    of theirs whose process dies is re-run here. Returns the number of trials run."""
    bars, config, space, objective, min_trades, run = payload
    rng = np.random.default_rng(_derive_seed(plan.seed, plan.identity, "free"))
    ran, reaped = 0, time.monotonic()
    with _Heartbeat(study._storage, plan.heartbeat) as beat:
        while True:
            claimed = []
            while len(claimed) < max(1, plan.batch):
                got = _retrying(plan, _claim, study, plan, rng)
                if got is None:
                    break
                claimed.append(got)
                beat.add(got[0]._trial_id)
            if not claimed:
                if not _retrying(plan, _busy, study):
                    return ran
                _retrying(plan, _reap, study, plan)  # a trial we wait for may be dead
                time.sleep(_POLL)
                continue
            told = 0
            try:
                for trial, params in claimed:
                    outcome = evaluate_params(bars, config, params, objective, min_trades, run)
                    _retrying(plan, _tell, study, trial, outcome)
                    beat.ids.discard(trial._trial_id)
                    told += 1
            except BaseException:
                for trial, _ in claimed[told:]:
                    _fail(study, trial)
                raise
            ran += told
            if after_batch is not None:
                _retrying(plan, after_batch)
            if time.monotonic() - reaped > plan.heartbeat:  # dead processes' trials, now and
                _retrying(plan, _reap, study, plan)  # then (queued retries go first)
                reaped = time.monotonic()
            if progress is not None:
                c = _retrying(plan, _counts, study)
                progress(min(c["COMPLETE"] + c["PRUNED"], plan.target), plan.target)


def _worker(args) -> None:
    """One local worker process: open the study and work on it; errors go back on ``queue``."""
    plan, direction, payload, index, queue = args
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(
            study_name=plan.name, storage=_storage(plan.url, plan.heartbeat)
        )
        n_done = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
        seed = _derive_seed(plan.seed, plan.identity, index or "", n_done or "")
        study.sampler = _sampler(plan.sampler, seed, True)
        _work(study, dataclasses.replace(plan, identity=f"{plan.identity}/{index}"), payload)
        queue.put((index, None))
    except BaseException as exc:  # noqa: BLE001 - reported by the driver
        queue.put((index, exc if isinstance(exc, M2KError) else RuntimeError(repr(exc))))


def _run_pool(study, plan: _Plan, direction, workers, payload, progress) -> list[str]:
    """``workers`` spawned processes on the shared storage. A worker that dies (killed) does
    not stop the others: its trial is re-run by them; this process finishes what is left."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=((plan, direction, payload, i, queue),), daemon=True)
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    notes, errors, reported = [], [], set()
    try:
        while True:
            while not queue.empty():
                index, exc = queue.get()
                reported.add(index)
                if exc is not None:
                    errors.append(exc)
            if errors:
                raise errors[0]
            if progress is not None:
                c = _retrying(plan, _counts, study)
                progress(min(c["COMPLETE"] + c["PRUNED"], plan.target), plan.target)
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
        _work(study, plan, payload, progress)
    return notes


#: Trials a Dask task runs when the trials run in the kernel (see ``batch`` of :func:`optimize`).
DASK_KERNEL_BATCH = 32
#: A Dask task lost with its worker (its scattered bars gone too) is submitted again this often.
DASK_RESUBMITS = 3


def _run_dask(study, plan: _Plan, client, payload, progress, after_batch=None) -> None:
    """Trials as Dask tasks, ``plan.batch`` trials a task: claimed and recorded here,
    backtests on the workers (:func:`evaluate_batch`). A worker that dies loses nothing: Dask
    runs its task again on another worker, and a task Dask gives up on with the worker
    (cancelled, its data lost) is submitted again from here."""
    import concurrent.futures as cf

    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    lost = (cf.CancelledError, KilledWorker, OSError, TimeoutError)
    bars, config, space, objective, min_trades, run = payload
    data = {"bars": client.scatter(bars, broadcast=True)}
    n_slots = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
    # the default: up to DASK_KERNEL_BATCH trials a task, but at least two tasks a slot
    size = plan.batch or max(1, min(DASK_KERNEL_BATCH, math.ceil(plan.target / (2 * n_slots))))
    rng = np.random.default_rng(_derive_seed(plan.seed, plan.identity, "free"))
    running: dict = {}
    ac = as_completed()
    with _Heartbeat(study._storage, plan.heartbeat) as beat:

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
                    got = _retrying(plan, _claim, study, plan, rng)
                    if got is None:
                        break
                    beat.add(got[0]._trial_id)
                    batch.append(got)
                if not batch:
                    return
                submit(batch, 0)

        while True:
            _retrying(plan, _reap, study, plan)
            fill()
            if not running:
                if not _retrying(plan, _busy, study):
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
                    _fail(study, other)
                raise
            for (trial, _), outcome in zip(batch, outcomes):
                _retrying(plan, _tell, study, trial, outcome)
                beat.ids.discard(trial._trial_id)
            if after_batch is not None:
                _retrying(plan, after_batch)
            if progress is not None:
                c = _retrying(plan, _counts, study)
                progress(min(c["COMPLETE"] + c["PRUNED"], plan.target), plan.target)


# ---------------------------------------------------------------- driver


@dataclass
class OptimizeResult:
    """What :func:`optimize` found.

    - ``best_params``, ``best_value``: of the best feasible trial; ``objective``, ``direction``.
    - ``best_attrs``: that trial's ``metrics``, ``start_value``, ``final_value``, window.
    - ``n_complete``, ``n_infeasible``, ``n_failed``: trial counts in the study.
    - ``dsr``: :class:`m2k_bt.optimize.overfitting.DeflatedSharpe` as a dict for the best trial
      (per-day Sharpe ratios; ``sr_annualised`` = ``sr x sqrt(252)``), or None.
    - ``pbo``: :class:`m2k_bt.optimize.overfitting.PBOResult` as a dict (without per-split lists), or
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
    from ..engine import cerebro as engine

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
    heartbeat: int = DEFAULT_HEARTBEAT,
    reconnect: float = DEFAULT_RECONNECT,
    engine: str = "kernel",
    batch: int | None = None,
    verify: bool = True,
    private_storage: bool = False,
) -> OptimizeResult:
    """Search ``space`` for the parameters of ``config.strategy`` that optimise ``objective``.

    - ``bars``, ``config``: as :func:`m2k_bt.engine.cerebro.run_backtest`; ``config.params`` holds the
      fixed parameters.
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
    - ``batch`` (def: on Dask with kernel trials, ``trials / (2 x worker threads)`` trials a
      task, at most :data:`DASK_KERNEL_BATCH`; else 1): trials a process claims together and a
      Dask task runs (:func:`evaluate_batch`), so that scheduling does not dominate a trial of
      milliseconds. TPE then proposes up to ``batch`` points before it sees their results (as
      ``batch`` parallel workers would; its constant liar is on).
    - ``verify`` (def: ``True``): with kernel trials, re-run the best parameters in cerebro
      (see ``engine``); ``False`` leaves that to the caller (``settings["engine"]`` then says
      ``verified_in_cerebro: false``): :func:`m2k_bt.optimize.walkforward.walk_forward` verifies each
      fold's choice on its out-of-sample window instead.
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
      cerebro. Ignored when ``run_backtest`` is given.
    """

    t0 = time.perf_counter()
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
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            from ..outputs import OutputFolder

            # one run per folder: a second optimize into it refuses at once
            stack.enter_context(OutputFolder(out_dir, marker="optimize.json")).clear(
                ["trials.csv", "study.html"]
            )
        run_backtest, engine_info = _pick_engine(run_backtest, engine, config)
        in_kernel = engine_info["engine"] == "kernel"
        if workers is None:
            workers = 1 if in_kernel else (os.cpu_count() or 1)
        if batch is None:  # 0: sized on Dask by the cluster (see _run_dask)
            batch = 0 if (in_kernel and dask is not None) else 1
        return _optimize_in(
            bars, config, space, target, objective, sampler, workers, storage, dask, seed,
            min_trades, study_name, out_dir, run_backtest, quiet, progress, overfitting,
            pbo_splits, heartbeat, reconnect, t0, engine_info, batch, verify,
            private_storage and not _is_remote(storage),
        )


def _pick_engine(run_backtest, engine: str, config) -> tuple:
    """(the trial function, what ran the trials) for ``engine``; see :func:`optimize`."""
    if engine not in ("kernel", "cerebro"):
        raise ConfigError(f"--engine must be 'kernel' or 'cerebro', got {engine!r}")
    if run_backtest is not None:
        return run_backtest, {"engine": "custom"}
    if engine == "cerebro":
        return None, {"engine": "cerebro"}
    from ..kernel.simulation import supported

    ok, why = supported(config)
    if not ok:
        return None, {"engine": "cerebro", "kernel_unsupported": why}
    from ..kernel.simulation import run_backtest_fast

    return run_backtest_fast, {"engine": "kernel"}


def _verify_in_cerebro(bars, config, result, objective, min_trades, info: dict) -> dict:
    """Re-run the best parameters in cerebro; both engines must agree to the cent."""
    from ..kernel.simulation import run_backtest_fast

    if not result.best_params:
        return info
    fast = evaluate_params(bars, config, result.best_params, objective, min_trades,
                           run_backtest_fast)
    slow = evaluate_params(bars, config, result.best_params, objective, min_trades)
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


def _optimize_in(
    bars, config, space, target, objective, sampler, workers, storage, dask, seed, min_trades,
    study_name, out_dir, run_backtest, quiet, progress, overfitting, pbo_splits, heartbeat,
    reconnect, t0, engine_info=None, batch: int = 1, verify: bool = True,
    private: bool = False,
) -> OptimizeResult:
    import optuna

    remote = _is_remote(storage)
    url = storage
    if url is None:
        if out_dir is not None:
            url = study_storage_url(out_dir)
            private = True  # the output folder's lock keeps other processes out
        elif workers > 1 and dask is None:
            url = study_storage_url(tempfile.mkdtemp(prefix="m2k-opt-"))
    strategy_name = getattr(config, "strategy_name", None) or str(config.strategy)
    name = study_name or f"m2k-{strategy_name}"
    direction = OBJECTIVES[objective]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    use_pool = dask is None and workers > 1
    plan = _Plan(
        url=url,
        name=name,
        space=space,
        sampler=sampler,
        target=target,
        seed=seed,
        heartbeat=heartbeat,
        reconnect=reconnect,
        parallel=use_pool or dask is not None or remote or batch != 1,
        # processes on other machines share the storage: each draws its own proposals
        identity=_owner() if remote else "",
        batch=batch,
    )
    behind = None
    if url is None:  # in memory, this process only
        study = optuna.create_study(direction=direction, sampler=_sampler(sampler, seed, False))
        created = True
    elif private and not use_pool and not remote and _fresh(plan):
        # one process uses the storage: this one (on Dask the workers only run backtests)
        study = optuna.create_study(study_name=name, direction=direction)
        created, behind = True, _WriteBehind(plan, study)
    else:
        study, created = _open_study(plan, direction, None)
    notes = _retrying(plan, _setup, study, created, plan, direction, objective, strategy_name)
    n_done = sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
    study.sampler = _sampler(
        sampler, _derive_seed(seed, plan.identity, n_done or ""), plan.parallel
    )
    payload = (bars, config, space, objective, min_trades, run_backtest)
    if dask is not None:
        client, cluster = _dask_client(dask)
        try:
            _run_dask(study, plan, client, payload, progress,
                      behind.maybe if behind is not None else None)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
            if behind is not None:
                _retrying(plan, behind.flush)
    elif use_pool and _retrying(plan, _has_work, study, plan):
        notes += _run_pool(study, plan, direction, workers, payload, progress)
    elif behind is not None:
        try:
            _work(study, plan, payload, progress, behind.maybe)
        finally:  # what finished is kept, also on Ctrl-C (the trial it stopped is FAIL)
            _retrying(plan, behind.flush)
    else:
        _work(study, plan, payload, progress)
    result = _collect(study, objective, direction, url, sampler, notes)
    result.settings = {
        "strategy": strategy_name,
        "fixed_params": dict(getattr(config, "params", {}) or {}),
        "space": [str(r) for r in space.values()],
        "trials": target,
        "objective": objective,
        "sampler": sampler,
        "workers": None if dask else workers,
        "batch": batch or "auto",
        "dask": dask,
        "seed": seed,
        "min_trades": min_trades,
        "bars": len(bars),
        "first_bar": str(bars.index[0]),
        "last_bar": str(bars.index[-1]),
    }
    info = dict(engine_info or {"engine": "custom"})
    if info["engine"] == "kernel":
        if verify:
            info = _verify_in_cerebro(bars, config, result, objective, min_trades, info)
        else:
            info["verified_in_cerebro"] = False
    result.settings["engine"] = info
    if overfitting:
        _overfitting(study, result, pbo_splits)
    result.elapsed = time.perf_counter() - t0
    if out_dir is not None:
        result.paths = _write(result, out_dir)
    return result


#: Seconds between writes of a study kept in memory to its private storage (see _WriteBehind).
FLUSH_SECONDS = 2.0


class _WriteBehind:
    """A fresh study on a storage only this process uses (the ``study.db`` of an output
    folder it holds locked) runs in memory; its finished trials are written to the storage
    in one batch every :data:`FLUSH_SECONDS` and at the end, so a trial of milliseconds does
    not pay a dozen SQLite round trips. Trials go in number order and only finished ones, so
    the storage always holds a consistent study: a run killed outright loses at most the
    last seconds of trials and resumes from the storage like any other study."""

    def __init__(self, plan: _Plan, mem_study):
        self.plan, self.mem = plan, mem_study
        self.disk = None
        self.written = 0  # trials of ``mem`` (by number) already in the storage
        self.last = time.monotonic()

    def maybe(self) -> None:
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import optuna

        trials = self.mem.get_trials(deepcopy=False)
        todo = []
        for t in trials[self.written:]:
            if not t.state.is_finished():
                break
            todo.append(t)
        if self.disk is None:
            storage = _storage(self.plan.url, self.plan.heartbeat)
            self.disk = optuna.create_study(study_name=self.plan.name, storage=storage,
                                            direction=self.mem.direction)
            # settings first, the ready mark last (as _setup does on a shared storage)
            for key, value in self.mem.user_attrs.items():
                if key != "m2k_ready":
                    self.disk.set_user_attr(key, value)
        # the RDB storage itself, not the study's cache of it: nothing here reads them back
        storage = getattr(self.disk._storage, "_backend", self.disk._storage)
        for t in todo:
            storage.create_new_trial(self.disk._study_id, template_trial=t)
        self.written += len(todo)
        for key, value in self.mem.user_attrs.items():
            if self.disk.user_attrs.get(key) != value:
                self.disk.set_user_attr(key, value)
        self.last = time.monotonic()


def _fresh(plan: _Plan) -> bool:
    """The storage does not hold this study yet (a private one may then run in memory)."""
    import optuna

    try:
        names = optuna.get_all_study_names(_storage(plan.url, plan.heartbeat))
    except _db_errors():
        return False
    return plan.name not in names


def _has_work(study, plan: _Plan) -> bool:
    """Anything left to claim or still running (else a pool would start for nothing)."""
    c = _counts(study)
    if c["RUNNING"] or c["WAITING"]:
        return True
    return plan.sampler == "tpe" and c["COMPLETE"] + c["PRUNED"] < plan.target


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
    trials = [t for t in study.get_trials(deepcopy=False) if not _discarded(t)]
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
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage
    st = _storage(url, heartbeat=DEFAULT_HEARTBEAT)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
    except _db_errors() as exc:
        raise StorageError(f"--storage {mask_url(url)}: {_one_line(exc, url)}") from None
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
        trials = [t for t in study.get_trials(deepcopy=False) if not _discarded(t)]
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
            "distinct": len({_param_key(t) for t in by["COMPLETE"] + by["PRUNED"]}),
            "best": best,
            "running_trials": [
                {
                    "number": t.number,
                    "owner": t.system_attrs.get("m2k_owner"),
                    "seconds": round((now - t.datetime_start).total_seconds(), 1)
                    if t.datetime_start else None,
                    "params": _full_params(t, list(t.params)) or dict(t.params),
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


def _param_key(t) -> tuple:
    return tuple(sorted((k, _hashable(v)) for k, v in t.params.items()))


def returns_matrix(study) -> pd.DataFrame:
    """Dates x complete trials (column = trial number) of recorded daily returns; one column
    per distinct parameter set (the first trial that ran it)."""
    import optuna

    cols, seen = {}, set()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        r = t.user_attrs.get("backtest", {}).get("returns")
        if r and _param_key(t) not in seen:
            seen.add(_param_key(t))
            cols[t.number] = pd.Series(r, dtype=float)
    if not cols:
        return pd.DataFrame()
    frame = pd.DataFrame(cols)
    frame.index = pd.DatetimeIndex(frame.index)
    return frame.sort_index().fillna(0.0)


def _overfitting(study, result: OptimizeResult, pbo_splits: int) -> None:
    from .overfitting import deflated_sharpe_from_returns, probability_of_backtest_overfitting

    matrix = returns_matrix(study)
    best_key = _param_key(study.best_trial)
    best = next(
        (t.number for t in study.get_trials(deepcopy=False)
         if t.number in matrix and _param_key(t) == best_key),
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
                _param_key(t)
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


def _write(result: OptimizeResult, out: Path) -> dict:
    """trials.csv and optimize.json, each written atomically (a kill leaves the old file or
    the new one; a symlink planted in ``out`` is replaced, not followed)."""
    from ..outputs import atomic_open, atomic_write_text

    paths = {}
    p = out / "trials.csv"
    with atomic_open(p, "w", newline="") as fh:
        result.trials.to_csv(fh, index=False)
    paths["trials.csv"] = p
    from ..report.html import write_study_html

    paths["study.html"] = write_study_html(result, out / "study.html")
    p = out / "optimize.json"
    atomic_write_text(p, json.dumps(_clean(result.as_dict()), indent=2, default=str))
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
