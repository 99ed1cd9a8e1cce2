"""Where a study lives: storage URLs, opening an Optuna RDB storage (SQLite or a server),
and riding out a lost connection.

A SQLite file's storage is made once per process and file; ``postgresql://`` is mapped to the
installed driver; a lost connection is retried with backoff for ``reconnect`` seconds, then
becomes one :class:`StorageError` line with the password masked.
"""

from __future__ import annotations

import atexit
import errno
import importlib.util
import logging
import os
import random
import re
import time
import warnings
import weakref
from pathlib import Path
from urllib.parse import unquote_plus

import optuna
import sqlalchemy.exc as sa
from sqlalchemy import event

from ..errors import ConfigError, M2KError
from ..outputs import refuse_symlinks

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_RECONNECT",
    "DB_ERRORS",
    "StorageError",
    "SQLITE_FILES",
    "study_storage_url",
    "folder_storage_url",
    "is_remote",
    "mask_url",
    "one_line",
    "storage_for",
    "retrying",
    "lost_connection",
    "is_disk_full",
]

#: Seconds between heartbeats of a running trial; one silent for 3x as long belongs to a dead
#: process and is failed and re-queued (a process on the same host is seen dead at once).
DEFAULT_HEARTBEAT = 10
#: Seconds a lost storage connection is retried (with backoff) before the run gives up.
DEFAULT_RECONNECT = 60.0


class StorageError(ConfigError):
    """The study's storage cannot be reached, or was lost for longer than the retry period."""


def study_storage_url(out: str | Path) -> str:
    """The embedded storage URL of an output folder: ``sqlite:///<out>/study.db``."""
    return f"sqlite:///{(Path(out) / 'study.db').resolve()}"


#: The files SQLite keeps for ``study.db`` (the database, its write-ahead log and index,
#: and the rollback journal), each opened by name.
SQLITE_FILES = ("study.db", "study.db-wal", "study.db-shm", "study.db-journal")


def folder_storage_url(out: str | Path) -> str:
    """:func:`study_storage_url` of an output folder the run writes its study into, after
    refusing a symlink planted at ``study.db`` or its companions (SQLite would follow it
    and write into its target): :class:`m2k_bt.errors.OutputError`, one line."""
    refuse_symlinks(Path(out) / name for name in SQLITE_FILES)
    return study_storage_url(out)


def is_remote(url: str | None) -> bool:
    """Another machine may run trials of this study: any RDB URL but a SQLite file."""
    return url is not None and not url.startswith("sqlite:")


#: Query parameters of a storage URL whose values are secrets (libpq's ``password``,
#: ``sslpassword``; any ``...key``, ``...token``, ``...secret``).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key", re.I)
_SCHEME = re.compile(r"^([a-z][a-z0-9+._-]*://)(.*)$", re.I | re.S)


def _split_secrets(url: str) -> tuple[str, list[tuple[str, str]]]:
    """``url`` masked, and the secrets it holds as ``(text, replacement)`` pairs."""
    m = _SCHEME.match(url)
    if not m:
        return url, []
    scheme, rest = m.groups()
    secrets: list[tuple[str, str]] = []
    at = rest.rfind("@")  # an unencoded "@" in a password: the last one ends it
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        if colon and password:
            secrets.append((password, "***"))
            # a driver that splits at the first "@" takes the rest as the host: "ss@db"
            secrets += [(password[i + 1:] + "@", "***@")
                        for i, ch in enumerate(password) if ch == "@" and password[i + 1:]]
            rest = f"{user}:***{rest[at:]}"

    def query_secret(q: re.Match) -> str:
        if q.group(3):
            secrets.append((q.group(3), "***"))
        return f"{q.group(1)}{q.group(2)}=***"

    rest = re.sub(r"([?&;])([^=&;?]+)=([^&;]*)",
                  lambda q: query_secret(q) if _SECRET_KEY.search(q.group(2)) else q.group(0),
                  rest)
    for text, mask in list(secrets):
        plain = unquote_plus(text)
        if plain != text:
            secrets.append((plain, mask))
    return scheme + rest, secrets


def mask_url(url: str | None) -> str | None:
    """``url`` with every secret replaced by ``***``: the password (also one holding an
    unencoded ``@``) and query parameters such as ``?password=``.

    >>> mask_url("postgresql://ann:s3cret@db:5432/optuna")
    'postgresql://ann:***@db:5432/optuna'
    >>> mask_url("postgresql://ann@db/optuna?password=s3cret&sslmode=require")
    'postgresql://ann@db/optuna?password=***&sslmode=require'
    >>> mask_url("postgresql://ann:p@ss@db/optuna")
    'postgresql://ann:***@db/optuna'
    >>> mask_url("sqlite:///tmp/study.db")
    'sqlite:///tmp/study.db'
    """
    if url is None:
        return None
    return _split_secrets(url)[0]


def _driver_url(url: str) -> str:
    """Map ``postgresql://`` (and ``postgres://``) to the installed driver: psycopg 3 (the
    ``postgres`` extra), else psycopg2. An explicit ``+driver`` is kept."""
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


#: What a lost or refused database connection raises (retried by :func:`retrying`).
DB_ERRORS = (sa.OperationalError, sa.InterfaceError, optuna.exceptions.StorageInternalError)


def one_line(exc: BaseException, url: str | None) -> str:
    """The first meaningful line of a driver's message, password masked."""
    while isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__:
        exc = exc.__cause__  # Optuna's wrapper of the driver's error: say the driver's
    text = str(getattr(exc, "orig", None) or exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = next((ln for ln in lines if not ln.startswith("(Background")), "") or type(exc).__name__
    line = re.sub(r"\s*\(Background on this error at:.*", "", line)
    if url:
        for text, mask in sorted(_split_secrets(url)[1], key=lambda p: -len(p[0])):
            line = line.replace(text, mask)
    # any URL the driver quotes back: its secrets too
    line = re.sub(r"[a-z][a-z0-9+._-]*://\S+", lambda m: mask_url(m.group(0)), line, flags=re.I)
    return line[:300]


#: The logger of Optuna's RDB storage (``optuna.storages._rdb.storage``).
_OPTUNA_RDB_LOGGER = "optuna.storages._rdb.storage"


def _drop_query_fallback_warning() -> None:
    """Silence Optuna's warning "Caught an error from sqlalchemy: ... Falling back to a slower
    alternative", the only warning its RDB storage module logs. Optuna's read of a study's
    trials takes any ``OperationalError`` for SQLite's limit on query variables, logs it with
    the whole statement and every parameter (KB of ``[SQL: ...]`` and ``[parameters: ...]``
    on stderr) and runs a slower query. On a lost connection that query fails too and
    :func:`retrying` says so in one line; at SQLite's real limit it works, and the warning
    told the user nothing to act on. Done when a storage is opened, not on import (importing
    the package changes no other library's logging), by the logger's level: a
    ``logging.Filter`` on that logger left a finished study's ``-wal``/``-shm`` files behind
    (caught by tests/test_hardening_signals.py; how, not found)."""
    logging.getLogger(_OPTUNA_RDB_LOGGER).setLevel(logging.ERROR)


_SQLITE_STORAGES: dict = {}  # (url, heartbeat) -> (file's inode, storage): one per file


def storage_for(url: str | None, heartbeat: int = DEFAULT_HEARTBEAT):
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
    if url is None:
        return None
    real = _driver_url(url)
    _drop_query_fallback_warning()
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
                    f"{one_line(exc, url)}"
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
                f"--storage {mask_url(url)}: cannot open the study: {one_line(exc, url)}"
            ) from None
    if real.startswith("sqlite:"):
        _fast_sqlite(storage.engine)
    _ENGINES.add(storage.engine)
    return storage


#: Every storage engine this process opened (while it lives), closed at exit.
_ENGINES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    """Close the storages' connections at exit: SQLite then folds its write-ahead log into
    the file and removes ``study.db-wal`` and ``-shm`` (the run's folder holds ``study.db``
    alone), also when the command line skips the interpreter's teardown
    (:func:`m2k_bt.cli.backtest.exit_now`)."""
    for engine in list(_ENGINES):
        try:
            engine.dispose()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


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


#: SQLite's "database or disk is full" and PostgreSQL's ``disk_full`` (SQLSTATE 53100).
_SQLITE_FULL = 13
_PG_DISK_FULL = "53100"


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` (or an error it was raised from) says the storage's disk is full: not a lost
    connection, and no retry will help."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for e in (exc, getattr(exc, "orig", None)):
            if e is None:
                continue
            if getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL:
                return True
            if _PG_DISK_FULL in (getattr(e, "sqlstate", None), getattr(e, "pgcode", None)):
                return True
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                return True
            text = str(e).lower()
            if "database or disk is full" in text or "no space left on device" in text:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full_error(plan, exc: BaseException) -> StorageError:
    url = plan.url or ""
    where = (url[len("sqlite:///"):] if url.startswith("sqlite:///")
             else f"the server of --storage {mask_url(url)}")
    return StorageError(
        f"cannot write {where}: no space left on the device ({one_line(exc, plan.url)}); the "
        f"study is saved up to its last write: free some space and run the same command again"
    )


def lost_connection(plan, exc: BaseException) -> StorageError:
    """The one line of a connection to ``plan.url`` lost for good (``exc``: the driver's
    error): how long it was retried, the driver's reason, and how to resume."""
    return StorageError(
        f"--storage {mask_url(plan.url)}: lost the connection for over "
        f"{plan.reconnect:g} s ({one_line(exc, plan.url)}); the study is saved: "
        f"run the same command again to resume it"
    )


def retrying(plan, fn, *args):
    """``fn(*args)``, retried with backoff while the storage connection is down, for up to
    ``plan.reconnect`` seconds; then a :class:`StorageError` naming ``plan.url`` (masked).
    A full disk is not retried: a :class:`StorageError` saying so at once. ``plan`` is a
    :class:`m2k_bt.optimize.claims.StudyPlan` (anything with ``url`` and ``reconnect``)."""
    deadline = time.monotonic() + plan.reconnect
    delay = 0.25
    while True:
        try:
            return fn(*args)
        except DB_ERRORS as exc:
            if is_disk_full(exc):
                raise _disk_full_error(plan, exc) from None
            if time.monotonic() + delay > deadline:
                raise lost_connection(plan, exc) from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
