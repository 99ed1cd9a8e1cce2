"""A study's winner re-run in cerebro in a forked process, while the study computes DSR/PBO
and makes ``study.html`` (a cerebro run of a quarter of 5-minute bars takes over a second,
about as long as those): on two cores the check costs the study next to nothing.

Where the platform cannot fork (or a thread of ours runs, which a fork would copy in the
middle of its work), and when the process is lost, the check runs here instead: the result
is the same either way, :func:`m2k_bt.optimize.trial.evaluate_params` in cerebro.
"""

from __future__ import annotations

import multiprocessing as mp
import threading

from ..errors import M2KError
from .drivers import child_signals
from .trial import evaluate_params

__all__ = ["BEHIND", "CerebroCheck"]

#: Whether the check may run in a forked process (where the platform forks and no other
#: thread of ours runs); False runs it in the study's process.
BEHIND = True


def _child(conn, bars, config, params, objective, min_trades) -> None:
    child_signals()  # Ctrl-C is the study's to handle; SIGTERM ends it quietly
    try:
        out = evaluate_params(bars, config, params, objective, min_trades)
    except BaseException as exc:  # noqa: BLE001 - raised in the study's process
        out = exc if isinstance(exc, M2KError) else RuntimeError(repr(exc))
    conn.send(out)


class CerebroCheck:
    """``evaluate_params(bars, config, params, objective, min_trades)`` in cerebro, started
    at once in a forked process (``behind`` says whether it was); :meth:`outcome` waits for
    it. Use it as a context manager: leaving the block stops the process if it still runs."""

    def __init__(self, bars, config, params: dict, objective: str, min_trades: int):
        self.args = (bars, config, params, objective, min_trades)
        self.proc = self.conn = None
        if BEHIND and "fork" in mp.get_all_start_methods() and \
                threading.active_count() == 1:
            ctx = mp.get_context("fork")
            mine, theirs = ctx.Pipe(duplex=False)
            self.proc = ctx.Process(target=_child, args=(theirs, *self.args), daemon=True)
            self.proc.start()
            theirs.close()
            self.conn = mine

    @property
    def behind(self) -> bool:
        return self.proc is not None

    def outcome(self) -> dict:
        """The check's outcome (an error it raised is raised here)."""
        got = None
        if self.proc is not None:
            try:
                got = self.conn.recv()
            except (EOFError, OSError):
                got = None  # the process was lost: run the check here
            finally:
                self.close()
        if isinstance(got, BaseException):
            raise got
        return got if got is not None else evaluate_params(*self.args)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.terminate()
            self.proc.join(5)
            self.conn.close()
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
