"""The ``run_backtest.py`` command line.

``python run_backtest.py`` runs the default backtest on the bundled data; ``python run_backtest.py
optimize|walkforward|live ...`` run the other jobs. A user's mistake prints one line on stderr and
exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path

from ..errors import ConfigError, M2KError, interrupt_behind
from .common import (
    DEFAULT_DATA,
    ArgParser,
    ProgressBar,
    add_common_args,
    config_from_args,
    default_out,
    load_data,
    parse_kv,
)

__all__ = [
    "DEFAULT_DATA",
    "ProgressBar",
    "add_common_args",
    "config_from_args",
    "load_data",
    "main",
    "parse_kv",
]

SUBCOMMANDS = ("optimize", "walkforward", "live")


def _list_strategies() -> str:
    from ..strategies import STRATEGIES, strategy_params

    lines = []
    for name, cls in sorted(STRATEGIES.items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"{name:<10} {cls.__name__}: {doc[0] if doc else ''}")
        for key, default in strategy_params(cls).items():
            lines.append(f"    {key} = {default!r}")
    lines.append("your own: --strategy FILE.py:NAME (or MODULE:NAME), NAME a signal function "
                 "def NAME(bars, param=default, ...) returning -1/0/+1 per bar, or an "
                 "M2KStrategy subclass with direction(); see docs/own-strategy.md")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="run_backtest.py",
        description="Backtest CME Micro E-mini Russell 2000 (M2K) strategies with backtrader. "
        "Subcommands: optimize, walkforward, live (run 'run_backtest.py SUB --help').",
    )
    add_common_args(p)
    p.add_argument("--list-strategies", action="store_true", help="list strategies and params")
    p.add_argument("--engine", choices=("cerebro", "kernel"), default="cerebro",
                   help="cerebro (default) or kernel: the compiled simulation of the built-in "
                   "strategies, same outputs (falls back to cerebro, saying why, for a "
                   "configuration it does not model)")
    p.add_argument("--open", action="store_true", help="open report.html in the web browser")
    p.add_argument("--rerun", metavar="REPORT_JSON",
                   help="run again exactly as recorded in a report.json (flags given after it "
                   "override; --data/--param add)")
    p.add_argument("--from-study", metavar="DIR",
                   help="with --trial N: run trial N of the study in DIR (an optimize --out) "
                   "in full, with every output; give the study's data and settings flags: the "
                   "run must end where the trial did (checked)")
    p.add_argument("--trial", type=int, metavar="N", help="the trial number for --from-study")
    return p


def backtest_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.rerun:
        from .rerun import rerun_argv

        rest = [a for i, a in enumerate(argv) if a != "--rerun" and argv[i - 1 : i] != ["--rerun"]
                and not a.startswith("--rerun=")]
        args = build_parser().parse_args(rerun_argv(args.rerun) + rest)
    if args.list_strategies:
        print(_list_strategies())
        return 0
    from ..engine.cerebro import run_backtest
    from ..outputs import OutputFolder
    from ..report.summary import format_summary, write_outputs

    figures = None
    if (args.from_study is None) != (args.trial is None):
        raise ConfigError("--from-study DIR and --trial N go together")
    if args.from_study is not None:
        from ..optimize.reopen import study_trial

        chosen, figures = study_trial(args.from_study, args.trial)
        given = parse_kv(args.param, "--param")
        both = sorted(set(given) & set(chosen))
        if both:
            raise ConfigError(f"--param {both[0]} is set by --trial {args.trial} of the study; "
                              f"leave it out")
        args.param = list(args.param or []) + [f"{k}={v}" for k, v in chosen.items()]
    out = Path(args.out) if args.out else default_out(args.strategy)
    # the folder is checked and locked before the data is loaded, and stays locked to the end
    with OutputFolder(out):
        bars, config = config_from_args(args)
        progress = ProgressBar("bars", enabled=not args.quiet)
        result = None
        if args.engine != "cerebro":  # the kernel (numba) is imported only when asked for
            from ..kernel import choose_engine, run_kernel_or_say_why

            _, choice = choose_engine(config, args.engine)
            if choice["engine"] == "kernel":  # None, saying why, if the kernel diverges
                result = run_kernel_or_say_why(bars, config)
            else:
                why = choice["kernel_unsupported"]
                print(f"note: running in cerebro: {why}", file=sys.stderr)
        try:
            if result is None:
                result = run_backtest(bars, config,
                                      progress=progress if progress.enabled else None)
        finally:
            progress.close()
        if figures is not None:
            from ..optimize.reopen import check_reopened

            check_reopened(result, figures, args.trial)
        paths = write_outputs(result, out, plot=not args.no_plot)
    if not args.quiet:
        # print what was saved, so the summary and report.json cannot differ
        report = json.loads(Path(paths["report"]).read_text())
        print(format_summary(report))
        print(f"outputs: {out}{os.sep} ({', '.join(sorted(Path(p).name for p in paths.values()))})")
    if args.open and "html" in paths:
        import webbrowser

        webbrowser.open(Path(paths["html"]).resolve().as_uri())
    return 0


class Terminated(BaseException):
    """SIGTERM, raised like ``KeyboardInterrupt`` so that the run unwinds (temporary files
    removed, output folder unlocked) and exits with status 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


#: The signals the command line turns into an orderly end (Ctrl-C, then SIGTERM).
_STOP_SIGNALS = ("SIGINT", "SIGTERM")


def _ignore_stop_signals(*_args) -> None:
    """The process is ending with its outputs complete (or its error said): a late Ctrl-C or
    SIGTERM must not turn it into a failure."""
    import signal

    for name in _STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


@contextlib.contextmanager
def _signals_of_the_run(own_process: bool):
    """Within the block SIGTERM unwinds the run like Ctrl-C (main thread only).

    ``own_process`` (the process's own command line: ``run_backtest.py``, ``m2k-backtest``):
    SIGINT and SIGTERM that ``run_backtest.py`` held back while Python imported the package are
    let through here, where they end the run with its one line; once the run's outputs are
    complete (its last :class:`~m2k_bt.outputs.OutputFolder` released without an error) and on
    leaving, both are ignored, so that the process exits normally. Otherwise (``main(argv)``
    from Python) the handler is installed only over the default one, and put back after.
    """
    import signal
    import threading

    from ..outputs import COMPLETE_HOOKS

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    installed = own_process or previous == signal.SIG_DFL
    if installed:
        signal.signal(signal.SIGTERM, _raise_terminated)
    # A stop signal handled while Python runs a callback it cannot raise from (a weakref
    # callback during garbage collection, a __del__, a ctypes callback) is only reported there
    # ("Exception ignored in: ...") and the run would go on: send it again, to be handled at the
    # next instruction of ordinary code.
    previous_hook = sys.unraisablehook

    def redeliver(unraisable):
        exc = unraisable.exc_value
        stop = (signal.SIGTERM if isinstance(exc, Terminated)
                else signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None)
        if stop is None:
            previous_hook(unraisable)
            return
        # a moment later, from another thread: raised at once, it would land in this hook again
        resend = threading.Timer(0.05, os.kill, args=(os.getpid(), stop))
        resend.daemon = True
        resend.start()

    sys.unraisablehook = redeliver
    if own_process:
        COMPLETE_HOOKS.append(_ignore_stop_signals)
        if hasattr(signal, "pthread_sigmask"):  # held back by run_backtest.py (POSIX)
            signal.pthread_sigmask(signal.SIG_UNBLOCK,
                                   {getattr(signal, n) for n in _STOP_SIGNALS})
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        if own_process:
            _ignore_stop_signals()
            with contextlib.suppress(ValueError):
                COMPLETE_HOOKS.remove(_ignore_stop_signals)
        elif installed:
            signal.signal(signal.SIGTERM, previous)


def _interrupted(exc: BaseException) -> int:
    """The one line and exit status of a run ended by Ctrl-C (130) or SIGTERM (143)."""
    if isinstance(exc, Terminated):
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return 143
    print("error: interrupted", file=sys.stderr)
    return 130


#: Library hints that speak Python, and the command line's words for them.
_PYTHON_HINTS = (
    (re.compile(r" / [A-Za-z_]+=[^,)]*"), ""),  # "(--lenient / lenient=True)" -> "(--lenient)"
    (re.compile(r"pass spec=None|spec=None"), "--contract none"),
    (re.compile(r"lenient=True"), "--lenient"),
    (re.compile(r"snap_to_tick=True"), "--snap-to-tick"),
    (re.compile(r"(?<![\w-])tz="), "--tz "),
    (re.compile(r"(?<![\w-])fmt="), "--format "),
)


def cli_message(message: str) -> str:
    """A library error message in the command line's words: its flags, not Python arguments.

    >>> cli_message("skip the checks (--contract none / spec=None) or pass tz='UTC'")
    "skip the checks (--contract none) or pass --tz 'UTC'"
    >>> cli_message("check fmt/tz (--format / fmt=, --tz / tz=)")
    'check fmt/tz (--format, --tz)'
    """
    for pattern, words in _PYTHON_HINTS:
        message = pattern.sub(words, message)
    return " ".join(message.split())  # one line


@contextlib.contextmanager
def _checked_out(argv: list[str]):
    """Check a subcommand's ``--out`` (or ``results``) can be written before it loads any data;
    a folder made only for the check and left empty is removed again."""
    if {"-h", "--help", "--status"} & set(argv):
        yield
        return
    from ..outputs import check_writable

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--out")
    known, _ = pre.parse_known_args(argv)
    folder = Path(known.out) if known.out else Path("results")
    created = not folder.exists()
    check_writable(folder)
    try:
        yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def _stdout_closed() -> bool:
    """True when nobody reads our stdout any more (the pipe's reader has exited)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real stdout
        return True


def _quiet_stdout() -> None:
    """After a closed pipe (``| head``): send what is left to /dev/null, so that the
    interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def exit_now(status: int) -> None:
    """End the process with ``status`` once :func:`main` has returned: the exit handlers run
    (worker processes stopped, logs flushed) and the output streams are flushed, but the
    interpreter's own teardown of the two thousand modules a run imports (numba, pandas,
    bokeh, optuna: about a second, longer than many a study's trials) is skipped. With a
    thread of ours still running it is not skipped: Python's exit waits for the thread."""
    import atexit
    import os
    import threading

    if threading.active_count() > 1 or not isinstance(status, int):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 2 a user's mistake or an output that
    cannot be written, 130 interrupted, 143 terminated; see README "Guarantees").

    Without ``argv`` this is the process's own command line (``sys.argv``): SIGTERM is handled
    like Ctrl-C from the start, and a signal that comes once the outputs are complete is
    ignored (the run exits normally).
    """
    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    status = None
    try:
        with _signals_of_the_run(own_process):
            status = _dispatch(argv)
    except (KeyboardInterrupt, Terminated) as exc:
        if status is not None:  # came after the run ended: what it did stands
            return status
        return _interrupted(exc)
    except SystemError as exc:  # a signal inside compiled code (numba): still an interrupt
        stop = interrupt_behind(exc)
        if stop is None:
            raise
        return status if status is not None else _interrupted(stop)
    return status


def _dispatch(argv: list[str]) -> int:
    try:
        if argv and argv[0] in SUBCOMMANDS:
            sub, rest = argv[0], argv[1:]
            with _checked_out(rest):
                if sub == "live":
                    from .live import live_main

                    return live_main(rest)
                from . import optimize as cli_optimize

                return (cli_optimize.optimize_main if sub == "optimize"
                        else cli_optimize.walkforward_main)(rest)
        return backtest_main(argv)
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # a socket or a worker's pipe, not our reader: a real failure
        # the reader went away (``--list-strategies | head -1``): what it wanted it has
        _quiet_stdout()
        return 0
    except M2KError as exc:
        print(f"error: {cli_message(str(exc))}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    except OSError as exc:
        address = _dask_address(argv)
        if address is None:
            raise
        # the scheduler went away mid-study (killed, its machine down): not a bug of ours
        why = cli_message(str(exc)) or type(exc).__name__
        print(f"error: lost the Dask scheduler {address} during the study ({why}); run the "
              f"same command again to resume the study", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        return _interrupted(exc)


def _dask_address(argv: list[str]) -> str | None:
    """The ``--dask`` address of an ``optimize`` or ``walkforward`` command, else ``None``."""
    if not argv or argv[0] not in ("optimize", "walkforward"):
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dask")
    known, _ = pre.parse_known_args(argv[1:])
    return known.dask
