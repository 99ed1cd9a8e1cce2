"""``run_backtest.py optimize ...`` and ``run_backtest.py walkforward ...``.

Both take the single-backtest options (``--data``, ``--strategy``, ``--param``, ``--sizer``,
``--cash``, ``--start``, ``--end``, ``--resample``, ``--out``, ``--quiet``, ``--seed``...) and
these:

- ``--space NAME=LOW:HIGH[:STEP] ...`` (repeatable; ``fast=10:100:5``, ``devfactor=1.5:3.0:0.25``,
  ``exit=middle,signal``); def: the strategy's default space.
- ``--trials N`` (def: 50 for TPE, 20 per fold in walk-forward, the whole grid for a grid),
  ``--objective`` (def: sharpe), ``--sampler tpe|grid``, ``--min-trades N`` (def: 1).
- ``--engine kernel|cerebro`` (def: kernel), ``--workers N`` (def: 1 with the kernel, else
  one per core), ``--batch N`` (trials a Dask task runs; def: sized by the cluster with the
  kernel, at most 32, else 1),
  ``--storage URL``, ``--dask ADDRESS|local``, ``--study-name NAME``.
- walk-forward: ``--is 12M --oos 3M --step 3M`` (or bar counts ``40000b``), ``--anchored``,
  ``--folds N``, ``--verify oos|all`` (def: oos).

Outputs (in ``--out``, def: ``results/<time>-optimize-<strategy>``): ``study.db``,
``trials.csv``, ``optimize.json``; walk-forward: ``study.db``, ``walkforward.json``,
``folds.csv``, ``oos_equity.csv``, ``oos_equity.png``. A summary table goes to stdout, the
progress bar to stderr (only on a terminal, never with ``--quiet``).

Every user mistake raises an :class:`m2k_bt.errors.M2KError`; the dispatcher in
:mod:`m2k_bt.cli.backtest` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from ..optimize import (
    OBJECTIVES,
    format_status,
    optimize,
    study_status,
    study_storage_url,
    walk_forward,
)
from ..optimize.storage import DEFAULT_HEARTBEAT, DEFAULT_RECONNECT, storage_for
from ..optimize.study import check_study_settings
from .common import ArgParser, ProgressBar, add_common_args, config_from_args, default_out

__all__ = ["optimize_main", "walkforward_main", "build_optimize_parser", "build_walkforward_parser"]

#: Trials per fold when walk-forward is run with TPE and no --trials.
DEFAULT_WF_TRIALS = 20


def _add_search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search")
    g.add_argument("--engine", choices=("kernel", "cerebro"), default="kernel",
                   help="kernel (default where it models the configuration; the best "
                   "parameters are re-run in cerebro and must agree) or cerebro")
    g.add_argument(
        "--space",
        action="append",
        nargs="+",
        metavar="NAME=RANGE",
        help="searched parameter: fast=10:100:5 (int step), devfactor=1.5:3.0:0.25 (float), "
        "exit=middle,signal (choices); repeatable (default: the strategy's space)",
    )
    g.add_argument("--trials", type=int, help="finished trials wanted in the study")
    g.add_argument(
        "--objective",
        default="sharpe",
        help=f"metric to optimise: {', '.join(OBJECTIVES)} (default: sharpe)",
    )
    g.add_argument("--sampler", default="tpe", help="tpe (default) or grid")
    g.add_argument(
        "--min-trades", type=int, default=1, help="fewer round trips make a trial infeasible (1)"
    )
    g = p.add_argument_group("workers and storage")
    g.add_argument(
        "--workers", type=int,
        help=f"local worker processes (default: 1 with the kernel engine, whose trials take "
        f"milliseconds; {os.cpu_count()} with cerebro)"
    )
    g.add_argument(
        "--batch", type=int,
        help="trials one process claims together and one Dask task runs (default on Dask "
        "with the kernel engine: trials / (2 x worker threads), at most 32; else 1)",
    )
    g.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna RDB URL shared by all workers, e.g. postgresql://user:pw@host/db "
        "(default: sqlite study.db in --out)",
    )
    g.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run trials on a Dask cluster: 'local' (2 worker processes) or tcp://host:8786",
    )
    g.add_argument("--study-name", help="Optuna study name (default: m2k-<strategy>)")
    g.add_argument(
        "--heartbeat",
        type=int,
        default=DEFAULT_HEARTBEAT,
        metavar="S",
        help=f"seconds between a running trial's heartbeats; one silent for 3x as long is "
        f"re-queued (default: {DEFAULT_HEARTBEAT})",
    )
    g.add_argument(
        "--reconnect",
        type=float,
        default=DEFAULT_RECONNECT,
        metavar="S",
        help=f"seconds a lost storage connection is retried before giving up "
        f"(default: {DEFAULT_RECONNECT:g})",
    )


def build_optimize_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="run_backtest.py optimize",
        description="Search strategy parameters with Optuna (TPE or grid) on full backtests; "
        "reports the best parameters, the Deflated Sharpe Ratio and the PBO.",
    )
    add_common_args(p)
    _add_search_args(p)
    p.add_argument(
        "--status",
        action="store_true",
        help="print the progress of the study in --storage (or --out) and exit; runs nothing",
    )
    return p


def build_walkforward_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="run_backtest.py walkforward",
        description="Walk-forward analysis: optimise each in-sample window, trade the best "
        "parameters on the following out-of-sample window, carry equity forward.",
    )
    add_common_args(p)
    _add_search_args(p)
    g = p.add_argument_group("folds")
    g.add_argument(
        "--is",
        dest="in_sample",
        metavar="LEN",
        help="in-sample length: 12M, 90D, 2W, 1Y or bars 40000b (default: 12M)",
    )
    g.add_argument("--oos", metavar="LEN", help="out-of-sample length (default: 3M)")
    g.add_argument("--step", metavar="LEN", help="how far each fold moves (default: --oos)")
    g.add_argument(
        "--anchored", action="store_true", help="in-sample windows all start at the first bar"
    )
    g.add_argument(
        "--folds",
        type=int,
        help="keep the last N folds; alone (no --is/--oos): N rolling folds by bar count, "
        "in-sample 4x out-of-sample",
    )
    g.add_argument(
        "--verify", choices=("oos", "all"), default="oos",
        help="with the kernel engine, what is re-run in cerebro and must agree: each fold's "
        "chosen parameters on its out-of-sample window (oos, default), or also on its "
        "in-sample window (all)",
    )
    return p


def _space(args) -> list[str] | None:
    items = [item for group in (args.space or []) for item in group]
    return items or None


def _out(args, kind: str, strategy: str) -> Path:
    if args.out:
        return Path(args.out)
    d = default_out(strategy)
    return d.with_name(d.name.replace(f"-{strategy}", f"-{kind}-{strategy}", 1))


def _check_search_args(args) -> None:
    """The study's flags, checked before any data is loaded (one line, exit 2)."""
    check_study_settings(seed=args.seed, reconnect=args.reconnect, heartbeat=args.heartbeat,
                         study_name=args.study_name, dask=args.dask)


def _search_kwargs(args) -> dict:
    return dict(
        objective=args.objective,
        sampler=args.sampler,
        workers=args.workers,
        storage=args.storage,
        dask=args.dask,
        seed=args.seed,
        min_trades=args.min_trades,
        heartbeat=args.heartbeat,
        reconnect=args.reconnect,
        engine=args.engine,
        batch=args.batch,
    )


def optimize_main(argv: list[str]) -> int:
    """``run_backtest.py optimize ...``; returns the exit status."""
    args = build_optimize_parser().parse_args(argv)
    if args.status:
        return _status(args)
    _check_search_args(args)
    if args.storage:
        # a wrong URL or password is reported before the data loads
        storage_for(args.storage).engine.dispose()
    bars, config = config_from_args(args)
    out = _out(args, "optimize", config.strategy_name)
    res = optimize(
        bars,
        config,
        _space(args),
        trials=args.trials,
        study_name=args.study_name,
        out=out,
        quiet=args.quiet,
        progress=ProgressBar("trials", enabled=not args.quiet),
        **_search_kwargs(args),
    )
    if not args.quiet:
        print(res.summary())
        print(f"outputs: {out}{os.sep} ({', '.join(sorted(res.paths))})")
    return 0


def _status(args) -> int:
    if args.storage:
        url = args.storage
    elif args.out:
        if not (Path(args.out) / "study.db").is_file():
            raise ConfigError(f"--status: no study.db in {args.out}; "
                              f"give the run's --out or --storage")
        url = study_storage_url(args.out)
    else:
        raise ConfigError("--status needs the study's --storage URL or its --out folder")
    print(format_status(study_status(url, args.study_name)))
    return 0


def walkforward_main(argv: list[str]) -> int:
    """``run_backtest.py walkforward ...``; returns the exit status."""
    args = build_walkforward_parser().parse_args(argv)
    _check_search_args(args)
    bars, config = config_from_args(args)
    out = _out(args, "walkforward", config.strategy_name)
    by_count = args.folds is not None and not (args.in_sample or args.oos or args.step)
    trials = args.trials
    if trials is None and args.sampler == "tpe":
        trials = DEFAULT_WF_TRIALS
    res = walk_forward(
        bars,
        config,
        _space(args),
        in_sample=None if by_count else (args.in_sample or "12M"),
        out_of_sample=args.oos or "3M",
        step=args.step,
        anchored=args.anchored,
        folds=args.folds,
        out=out,
        plot=not args.no_plot,
        progress=ProgressBar("folds", enabled=not args.quiet),
        trials=trials,
        study_name=args.study_name,
        quiet=args.quiet,
        verify=args.verify,
        **_search_kwargs(args),
    )
    if not args.quiet:
        print(res.summary())
        for note in res.skipped:
            print(f"note: {note}")
        print(f"outputs: {out}{os.sep} ({', '.join(sorted(res.paths))})")
    return 0
