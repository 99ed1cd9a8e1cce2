"""The journal of a live run: every order, fill and state change appended, as it happens, to a
JSON-lines file (one object a line, flushed and synced to disk before the call returns), so
that a crash loses nothing that had happened and a restart can read what was sent (a last
line a crash cut short is cut off when the journal is opened again).

Each record has ``ts`` (UTC, ISO 8601) and ``kind``; the other keys depend on the kind:

- ``state``: ``state`` (``connected``, ``equity``, ``reconciled``, ``held_in_other_month``,
  ``started``, ``history``, ``subscribed``, ``disconnected``, ``reconnected``, ``link_lost``,
  ``link_restored``, ``roll``,
  ``partial_bar``,
  ``halted``, ``cancel_on_exit``, ``stopped``) and ``detail``;
- ``order``: ``event`` (``sent``, ``would_send`` in dry-run, ``not_resent``, ``refused``,
  ``cancel_sent``, ``would_cancel``, ``modify_sent``, ``modify_refused``, ``would_modify``),
  ``ref``, ``plan``
  (``sent``: also ``ib_order_ids`` and ``symbol``, the month it went to), ``reason``;
  a modification also ``price`` and ``was``;
- ``status``: ``ref``, ``ib_order_id``, ``status`` (IB's words), ``filled``, ``remaining``
  (or ``detail`` for an order found closed after a reconnect);
- ``fill``: ``ref``, ``exec_id``, ``symbol`` (the month), ``size`` (signed contracts),
  ``price``, ``commission``, ``recovered`` (true for a fill found at start that the journal
  missed);
- ``adopt``: ``symbol``, ``size``, ``price``: a position taken over at start (``--adopt``);
- ``gap``: ``after``, ``before`` (bar starts, UTC), ``missing`` (bars not had while Globex was
  open), ``backfilled`` (bars fetched from IB's history after a reconnect);
- ``limit``: ``limit`` and ``detail``; ``error``: ``code``, ``message``, ``ref``.

:meth:`Journal.position` is the position the journal accounts for (its fills and adoptions).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
from pathlib import Path

from ..errors import OutputError

__all__ = ["Journal", "read_journal"]

logger = logging.getLogger(__name__)


class Journal:
    """Append-only journal at ``path`` (its folder is created); thread-safe."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._cut_torn_tail()
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot open the journal {self.path}: {exc.strerror or exc}") \
                from exc
        self._lock = threading.Lock()
        self.records = read_journal(self.path)

    def _cut_torn_tail(self) -> None:
        """A last line without its newline is a write a crash cut short (the call never
        returned): it is cut off, so the next record does not run on from it."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            fh.truncate(keep)
        logger.warning("journal %s: a torn last line (a crash mid-write) cut off: %r",
                       self.path, data[keep:keep + 200])

    def write(self, kind: str, **fields) -> dict:
        """Append one record and sync it to disk; returns it."""
        rec = {"ts": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
               "kind": kind, **fields}
        line = json.dumps(rec, default=str, sort_keys=False)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.records.append(rec)
        return rec

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def sent_refs(self) -> set[str]:
        """Every order reference the journal says was sent (or would have been, in dry-run)."""
        return {r["ref"] for r in self.records
                if r["kind"] == "order" and r.get("event") in ("sent", "would_send")}

    def exec_ids(self) -> set[str]:
        return {r["exec_id"] for r in self.records if r["kind"] == "fill"}

    def position(self, symbol: str, root: bool = False) -> float:
        """Contracts of ``symbol`` the journal accounts for: its fills and adoptions. With
        ``root``, ``symbol`` is a contract root (``"M2K"``) and every month of it counts
        (a position rolled from ``M2KZ5`` to ``M2KH6`` is one position)."""
        held = 0.0
        for r in self.records:
            sym = str(r.get("symbol") or "")
            mine = sym == symbol or (root and sym.startswith(symbol)
                                     and 2 <= len(sym) - len(symbol) <= 3)
            if not mine:
                continue
            if r["kind"] == "fill":
                held += float(r["size"])
            elif r["kind"] == "adopt":
                held = float(r["size"])
        return held


def read_journal(path: str | os.PathLike) -> list[dict]:
    """The records of the journal at ``path`` (none if there is no file). A torn last line (a
    crash in the middle of a write) is skipped; any other bad line is an error naming it."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines):
                continue  # torn last write
            raise OutputError(f"{p}:{i}: not a journal record ({exc.msg})") from exc
    return out
