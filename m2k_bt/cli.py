"""The ``run_backtest.py`` command line.

``python run_backtest.py`` runs the default backtest on the bundled data; ``python run_backtest.py
optimize|walkforward|live ...`` run the other jobs. A user's mistake prints one line on stderr and
exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .cli_common import (
    DEFAULT_DATA,
    ProgressBar,
    _Parser,
    add_common_args,
    config_from_args,
    default_out,
    load_data,
    parse_kv,
)
from .errors import M2KError

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
    from .strategies import STRATEGIES, strategy_params

    lines = []
    for name, cls in sorted(STRATEGIES.items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"{name:<10} {cls.__name__}: {doc[0] if doc else ''}")
        for key, default in strategy_params(cls).items():
            lines.append(f"    {key} = {default!r}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    return p


def backtest_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.rerun:
        from .report import rerun_argv

        rest = [a for i, a in enumerate(argv) if a != "--rerun" and argv[i - 1 : i] != ["--rerun"]
                and not a.startswith("--rerun=")]
        args = build_parser().parse_args(rerun_argv(args.rerun) + rest)
    if args.list_strategies:
        print(_list_strategies())
        return 0
    from .engine import run_backtest
    from .report import format_summary, write_outputs

    bars, config = config_from_args(args)
    out = Path(args.out) if args.out else default_out(config.strategy_name)
    progress = ProgressBar("bars", enabled=not args.quiet)
    result = None
    if args.engine == "kernel":
        from .kernel import run_kernel_or_say_why

        result = run_kernel_or_say_why(bars, config)
    if result is None:
        result = run_backtest(bars, config, progress=progress if progress.enabled else None)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            sub, rest = argv[0], argv[1:]
            if sub == "live":
                from .cli_live import live_main

                return live_main(rest)
            from . import cli_optimize

            return (cli_optimize.optimize_main if sub == "optimize"
                    else cli_optimize.walkforward_main)(rest)
        return backtest_main(argv)
    except M2KError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
