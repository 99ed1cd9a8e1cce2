"""Writing result files safely: atomic files, a checked and locked output folder.

Every file m2k_bt writes (the runner's report.json, trades.csv, equity.csv, plots, report.html;
the optimiser's trials.csv and optimize.json; walk-forward outputs) goes through this module, so
the same promises hold everywhere:

- **Atomic.** A file is written to a temporary file beside it (``.<name>.<random>.m2k-tmp``)
  and moved onto its name with ``os.replace``: a reader, or a run killed at any moment, sees
  the old file or the new one, never a half-written one. On an error the temporary file is
  removed.
- **No symlink is followed.** The temporary file is created with ``O_EXCL`` (never through an
  existing name) and ``os.replace`` swaps the directory entry itself: a symlink planted under
  the target name is replaced by the new file; the file it pointed to is not touched.
- **One clear error.** Any ``OSError`` while writing (no space left, permission denied, a
  folder that is a file...) becomes :class:`~m2k_bt.errors.OutputError` naming the file.
- **One run per folder.** :class:`OutputFolder` (or :func:`lock_output_dir`) creates the folder,
  checks it can be written (before any data is loaded), and holds an exclusive lock on it
  (``fcntl.flock`` on ``.m2k_bt.lock`` in the folder) for the whole run: a second run into the
  same folder fails at once with ``results/x is in use by another run (pid N); wait for it or
  choose another --out``. :meth:`OutputFolder.clear` removes an earlier run's outputs, the
  marker file (``report.json``) first, so a folder holding the marker is one complete run.

The API, all of it:

- ``atomic_path(path)``: context manager yielding a temporary ``Path`` to write; moved onto
  ``path`` when the block ends without an exception.
- ``atomic_open(path, mode="w")``: the same, yielding an open file object (text or binary).
- ``atomic_write_text(path, text)`` / ``atomic_write_bytes(path, data)``: one-shot writes;
  return ``path`` as a ``Path``.
- ``check_writable(folder)``: create ``folder`` (and parents) and prove a file can be written
  in it; returns the folder as a ``Path`` or raises ``OutputError``.
- ``OutputFolder(folder, marker="report.json")`` / ``lock_output_dir(folder)``: context
  manager that checks and locks the folder; ``.clear(names)`` removes stale outputs.
- ``refuse_symlinks(paths)``: raise ``OutputError`` when any of ``paths`` is a symlink (for
  files another library opens by name, such as SQLite's ``study.db`` and its ``-wal``).
- ``COMPLETE_HOOKS``: callables run with the folder's ``Path`` when a run leaves its outermost
  ``OutputFolder`` without an exception (its outputs are complete); the command line uses it to
  let a late Ctrl-C or SIGTERM end the process normally.
- ``jsonable(obj)``: any result as plain JSON types (the one JSON clean-up of the package);
  ``ny_iso(value)`` / ``ny_index_iso(index)``: the one timestamp format of every output, ISO
  8601 with the New York offset (``2024-03-11T09:30:00-04:00``).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with OutputFolder(d / "run") as out:
...     _ = atomic_write_text(out.path / "report.json", "{}")
>>> sorted(p.name for p in (d / "run").iterdir())
['report.json']
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputError
from .sessions import NY_ZONE

__all__ = [
    "COMPLETE_HOOKS",
    "LOCK_NAME",
    "OutputError",
    "OutputFolder",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "jsonable",
    "lock_output_dir",
    "refuse_symlinks",
    "ny_index_iso",
    "ny_iso",
]

#: Name of the lock file an :class:`OutputFolder` holds in the folder during a run.
LOCK_NAME = ".m2k_bt.lock"

#: Suffix of the writer's temporary files; :meth:`OutputFolder.clear` removes leftovers.
TMP_SUFFIX = ".m2k-tmp"

#: Test hook: when set to a file name, the writer dies with SIGKILL just before moving that
#: file into place (used by the test that a killed run leaves no mixed folder).
_KILL_HOOK = "M2K_BT_TEST_KILL_BEFORE"


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space or choose another --out"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded; free some space or choose another --out"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only folder?); choose another --out"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file stands where a folder is needed; choose another --out"
    if exc.errno == errno.ELOOP:
        return "a symlink stands there (never followed); remove it or choose another --out"
    if exc.errno == errno.EISDIR:
        return "a folder stands where a file is needed; remove it or choose another --out"
    return f"{exc.strerror or exc}; choose another --out"


def _error(path: Path, exc: OSError, what: str = "cannot write") -> OutputError:
    return OutputError(f"{what} {path}: {_why(exc)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was. A symlink at
    ``path`` is replaced, not followed. ``OSError`` becomes :class:`OutputError`.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise _error(path, exc) from exc
    try:
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared
        yield Path(tmp)
        _replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _error(path, exc) from exc
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Yield a file object open on a fresh temporary file; moved onto ``path`` on success.

    ``mode`` is ``"w"`` (text; ``kwargs`` go to ``open``, e.g. ``newline=""``) or ``"wb"``.
    The file is opened from the descriptor ``mkstemp`` returned, never again by name.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise _error(path, exc) from exc
    try:
        os.fchmod(fd, 0o644)
        if mode == "w":
            kwargs.setdefault("encoding", "utf-8")
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
        _replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _error(path, exc) from exc
        raise


def _replace(tmp: str, path: Path) -> None:
    if os.environ.get(_KILL_HOOK) == path.name:  # pragma: no cover - runs in a killed child
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path`` as a ``Path``."""
    with atomic_open(path, "w", encoding=encoding, newline="") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a ``Path``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) and prove a file can be written and removed in it.

    Run it before the slow part of a job, so a read-only folder, a file in the way, ``/proc``
    or a full disk is reported at once. Returns ``folder`` as a ``Path``; raises
    :class:`OutputError` naming the folder and what is wrong.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {folder}: it is a file, not a folder; "
                          f"choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(folder, exc, "cannot create") from exc
    probe = None
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=TMP_SUFFIX)
        try:
            os.write(fd, b"m2k_bt write check\n" * 64)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _error(folder, exc) from exc
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)
    return folder


def refuse_symlinks(paths: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`OutputError` when one of ``paths`` is a symlink (dangling or not).

    For a file written by another library that opens it by name and would follow a symlink
    (SQLite's ``study.db``, ``study.db-wal``, ``study.db-shm``, ``study.db-journal``): the
    run refuses instead of writing into the symlink's target."""
    for p in paths:
        if Path(p).is_symlink():
            raise _error(Path(p), OSError(errno.ELOOP, "symlink"))


#: Folders this process holds locked: realpath -> [OutputFolder, nesting depth].
_HELD: dict[str, list] = {}
_HELD_LOCK = threading.Lock()

#: Called with the folder when a run leaves the last OutputFolder this process holds without an
#: exception: the run's outputs are complete (see the module docstring).
COMPLETE_HOOKS: list[Callable[[Path], None]] = []


def _lock_fd(fd: int) -> bool:
    """Try an exclusive, non-blocking lock; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


class OutputFolder:
    """An output folder checked, created and locked for one run.

    - ``path``: the folder (created with its parents).
    - ``marker`` (def: ``"report.json"``): the file whose presence means "one complete run";
      :meth:`clear` removes it first and the caller writes it last.

    ``with OutputFolder("results/x") as out:`` checks the folder is writable
    (:func:`check_writable`) and takes the lock, or raises :class:`OutputError`
    (``results/x is in use by another run (pid N); wait for it or choose another --out``).
    On leaving, the lock is released and its file removed; a folder this run created and left
    empty is removed too.
    """

    def __init__(self, path: str | os.PathLike, marker: str = "report.json"):
        self.path = Path(path)
        self.marker = marker
        self._fd: int | None = None
        self._created = False
        self._key: str | None = None

    def __enter__(self) -> OutputFolder:
        self._created = not self.path.exists()
        check_writable(self.path)
        self._key = os.path.realpath(self.path)
        with _HELD_LOCK:
            if self._key in _HELD:  # this process holds it already (the CLI around a library
                _HELD[self._key][1] += 1  # call): nested use shares that lock
                return self
            self._lock()
            try:
                self._check_marker()
            except BaseException:
                self._unlock()
                raise
            _HELD[self._key] = [self, 1]
        return self

    def _check_marker(self) -> None:
        """An earlier run's JSON marker is a JSON object; any other file under that name is
        not ours to replace: refused before the run does any work."""
        marker = self.path / self.marker
        if not (self.marker.endswith(".json") and marker.is_file() and not marker.is_symlink()):
            return
        import json

        try:
            ours = isinstance(json.loads(marker.read_text()), dict)
        except OSError as exc:
            raise _error(marker, exc, "cannot read") from exc
        except ValueError:
            ours = False
        if not ours:
            raise OutputError(f"{marker} is not the {self.marker} of a run (not a JSON object); "
                              f"move it away or choose another --out")

    def _lock(self) -> None:
        lock = self.path / LOCK_NAME
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as exc:
                raise _error(lock, exc) from exc
            if not _lock_fd(fd):
                os.close(fd)
                raise OutputError(f"{self.path} is in use by another run ({_holder(lock)}); "
                                  f"wait for it or choose another --out")
            # the holder before us may have removed the file after we opened it: the lock is
            # only ours if the name still points at the file we locked
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def __exit__(self, *exc_info) -> None:
        with _HELD_LOCK:
            entry = _HELD.get(self._key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[self._key]
        owner = entry[0]
        if owner._fd is None:
            return
        owner._unlock()
        if exc_info[0] is None and not _HELD:  # nothing else is being written: complete
            for hook in list(COMPLETE_HOOKS):
                hook(owner.path)

    def _unlock(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path / LOCK_NAME)  # while still locked: nobody can be holding it
        os.close(self._fd)
        self._fd = None
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only succeeds when the run left nothing

    def clear(self, names: Iterable[str] = ()) -> list[str]:
        """Remove an earlier run's outputs: the marker first, then the files its ``files``
        list names, then ``names``, then writer leftovers (``*.m2k-tmp``).

        Only plain files and symlinks directly in the folder are removed (a symlink itself,
        never its target); sub-folders and other files are left alone. Returns the names
        removed.
        """
        removed: list[str] = []
        listed: list[str] = []
        marker = self.path / self.marker
        if self.marker.endswith(".json") and marker.is_file() and not marker.is_symlink():
            with contextlib.suppress(OSError, ValueError):
                import json

                files = json.loads(marker.read_text()).get("files") or {}
                listed = [str(n) for n in files if isinstance(n, str)]
        candidates = [self.marker, *listed, *names]
        candidates += [p.name for p in self.path.glob(f".*{TMP_SUFFIX}")]
        for name in dict.fromkeys(candidates):
            if not name or Path(name).name != name or name in (".", "..", LOCK_NAME):
                continue  # only names directly in the folder
            target = self.path / name
            if target.is_symlink() or target.is_file():
                try:
                    target.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise _error(target, exc, "cannot remove") from exc
                removed.append(name)
        return removed


def lock_output_dir(path: str | os.PathLike, marker: str = "report.json") -> OutputFolder:
    """``with lock_output_dir("results/x") as out: ...``: same as :class:`OutputFolder`."""
    return OutputFolder(path, marker=marker)


# -------------------------------------------------------------------------------------------
# what goes into the files: one timestamp format, plain JSON values
# -------------------------------------------------------------------------------------------


def ny_iso(value: Any) -> str | None:
    """ISO 8601 with the New York offset; a naive time is New York wall time (backtrader's
    times are), an aware one is converted. At the autumn repeat a naive time is read as the
    first (daylight-saving) one.

    >>> ny_iso(_dt.datetime(2024, 1, 2, 9, 30))
    '2024-01-02T09:30:00-05:00'
    >>> ny_iso("2024-07-01T14:00:00+00:00")
    '2024-07-01T10:00:00-04:00'
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    if isinstance(value, _dt.datetime):
        value = value.replace(tzinfo=NY_ZONE) if value.tzinfo is None else value.astimezone(NY_ZONE)
        return value.isoformat(timespec="seconds" if not value.microsecond else "auto")
    if isinstance(value, _dt.date):
        return value.isoformat()
    return str(value)


def ny_index_iso(index) -> list[str]:
    """:func:`ny_iso` of every time of a DatetimeIndex, vectorised (an equity curve's index)."""
    import pandas as pd

    idx = pd.DatetimeIndex(index)
    if idx.tz is None:
        try:
            idx = idx.tz_localize(NY_ZONE.key, ambiguous="infer", nonexistent="shift_forward")
        except (ValueError, TypeError):  # not inferable (a gap at the repeat): first one
            idx = idx.tz_localize(NY_ZONE.key, ambiguous=[True] * len(idx),
                                  nonexistent="shift_forward")
    else:
        idx = idx.tz_convert(NY_ZONE.key)
    text = pd.Index(idx.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return list(text.str[:-2] + ":" + text.str[-2:])


def jsonable(
    obj: Any, *, times: Callable[[Any], Any] = ny_iso, containers_only: bool = False
) -> Any:
    """``obj`` as plain JSON types, recursively: what ``json.dumps(..., allow_nan=False)``
    writes without a ``default``.

    - ``None``, ``bool``, ``str``, ``int`` as they are; a float as it is, NaN and +-inf as None
      (a numpy float64, a float subclass, is kept: ``json`` writes it as a float).
    - datetimes, dates and pandas Timestamps through ``times``; a ``datetime.time`` and any
      other object with ``isoformat()`` as its ISO text.
    - a dataclass as ``dataclasses.asdict``; a dict with its keys as ``str``; lists, tuples and
      sets as lists; a class as its name; a path as its text; a numpy scalar as the Python
      value; anything else as ``str(obj)``.

    Params:

    - ``times`` (def: :func:`ny_iso`): how a datetime, date or Timestamp is written; the run's
      outputs use ISO 8601 with the New York offset; ``times=str`` gives
      ``2024-01-02 09:30:00``, what ``json.dumps(default=str)`` writes (the optimiser's
      ``optimize.json`` and ``walkforward.json``).
    - ``containers_only`` (def: ``False``): rebuild only the containers, dicts (keys as
      ``str``) and lists or tuples (as lists), and leave every other value as it is (NaN,
      datetimes, numpy arrays, dataclasses): an analyzer's output as plain dicts and lists
      with its values' types kept. A list whose first item is not a dict, list or tuple (an
      equity column) is copied without a walk.

    >>> jsonable({"dt": _dt.datetime(2024, 1, 2, 9, 30), "x": float("nan"), 3: (1, 2)})
    {'dt': '2024-01-02T09:30:00-05:00', 'x': None, '3': [1, 2]}
    >>> jsonable({"dt": _dt.date(2024, 1, 2)}, times=str)
    {'dt': '2024-01-02'}
    >>> jsonable({1: (float("nan"), [2])}, containers_only=True)
    {'1': [nan, [2]]}
    """
    if containers_only:
        return _containers(obj)
    return _json(obj, times)


def _json(obj: Any, times: Callable[[Any], Any]) -> Any:
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (_dt.datetime, _dt.date)) or hasattr(obj, "to_pydatetime"):
        return times(obj)
    if isinstance(obj, _dt.time):
        return obj.isoformat()
    if hasattr(obj, "isoformat") and callable(obj.isoformat):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _json(dataclasses.asdict(obj), times)
    if isinstance(obj, dict):
        return {str(k): _json(v, times) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_json(v, times) for v in obj]
    if isinstance(obj, type):
        return obj.__name__
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return _json(obj.item(), times)
    return str(obj)


def _containers(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _containers(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if obj and not isinstance(obj[0], (dict, list, tuple)):
            return list(obj)  # a column of scalars (an equity curve): no per-item walk
        return [_containers(v) for v in obj]
    return obj
