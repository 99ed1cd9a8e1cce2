"""Validated bars kept on disk, so that a file is parsed and checked once, not at every run.

:func:`m2k_bt.feeds.load_bars` spends most of a study's start-up reading and validating the
file (1.5 s for the bundled 141,870 five-minute bars): every row parsed, its time zone and
Globex session checked, its prices checked against the tick grid. The frame it returns (with
its ``attrs``: the data report, the source, the line numbers) is kept here, keyed by what it
depends on: the file's **content** (a SHA-256 of its bytes, so an edited or replaced file is
never served stale, whatever its time stamp), its path, every loading option, the contract
spec, the pandas version and the loader's own code (a digest of its source files). A later
load with the same key reads it back (about 10 ms).

Where: ``$M2K_CACHE_DIR``, else ``$XDG_CACHE_HOME/m2k_bt/bars``, else
``~/.cache/m2k_bt/bars``. ``M2K_CACHE_DIR=off`` turns it off. At most :data:`KEEP` entries are
kept (the least recently used go). An entry that cannot be read (truncated, from another
pandas) is parsed again and rewritten; a cache that cannot be written (read-only home, full
disk) is skipped: the bars are the same either way, only the time differs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import pandas as pd

__all__ = ["cache_dir", "cached_load", "file_sha256", "KEEP"]

#: Entries kept in the cache directory.
KEEP = 16
_FORMAT = 1  # bump when the pickled layout changes


def cache_dir() -> Path | None:
    """The cache directory, or None when caching is off (``M2K_CACHE_DIR=off``)."""
    env = os.environ.get("M2K_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "no", "false") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "m2k_bt" / "bars"


@functools.cache
def _code() -> str:
    """A digest of the code that reads and validates bars (this folder, the sessions and the
    contracts): a changed loader never serves a frame an older one made."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted([*here.glob("*.py"), here.parent / "sessions.py",
                          here.parent / "contracts.py"]):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str | None:
    """Hex sha256 of a file's bytes, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _key(path: str, options: tuple) -> str | None:
    content = file_sha256(path)
    if content is None:
        return None  # the loader says what is wrong with the file
    return hashlib.sha256(repr((_FORMAT, content, _code(), pd.__version__,
                                os.path.abspath(path), options)).encode()).hexdigest()


def cached_load(path: str, options: tuple, load) -> pd.DataFrame:
    """``load()`` (which reads and validates ``path`` with ``options``), or the frame it made
    before for the same file content, path, options and package version."""
    folder = cache_dir()
    key = _key(path, options) if folder is not None else None
    if key is None:
        return load()
    entry = folder / f"{key}.pkl"
    try:
        with open(entry, "rb") as fh:
            frame = pickle.load(fh)
        if isinstance(frame, pd.DataFrame):
            os.utime(entry)  # recently used
            return frame
    except Exception:  # noqa: BLE001 - missing or unreadable: parse the file again
        pass
    frame = load()
    _store(folder, entry, frame)
    return frame


def _store(folder: Path, entry: Path, frame: pd.DataFrame) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pkl")
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(frame, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, entry)  # whole or not at all, also with a concurrent writer
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        entries = sorted(folder.glob("*.pkl"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # no cache (read-only, full disk): the next run parses the file again
