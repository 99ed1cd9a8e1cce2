"""``--rerun REPORT_JSON``: the command-line arguments that repeat a recorded run.

A report.json records every effective input of a run (``inputs``, see
:mod:`m2k_bt.report.summary`); :func:`rerun_argv` turns them back into ``run_backtest.py``
flags, so only the command line needs to know its own flags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFeedError
from ..report.summary import file_sha256

__all__ = ["EVENT_PARAMS", "rerun_argv"]

#: Strategy params set from the recorded ``inputs.events`` (replayed by their own flags,
#: ``--avoid-events``, ``--event-window``..., not by ``--param``).
EVENT_PARAMS = ("avoid_events", "event_before", "event_after", "flat_before_event",
                "event_calendar", "signal_min", "signal_max")


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _arg(value: Any) -> str:
    """A parameter value as the command line writes it (read back by the engine's coercion)."""
    if value is None or isinstance(value, (bool, str, int)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise ConfigError(f"parameter value {value!r} cannot be given on the command line")


def rerun_argv(report_path: str | os.PathLike) -> list[str]:
    """The ``run_backtest.py`` arguments that repeat the run a report.json records.

    Every effective input is given explicitly (data files, roll and adjustment, contract,
    costs, margins, cash, dates, strategy and sizer with every parameter, seed), so a rerun
    does not depend on today's defaults. Raises :class:`~m2k_bt.errors.DataFeedError` when a
    data file is missing or its sha256 differs from the recorded one (the rerun could not
    reproduce the run), :class:`~m2k_bt.errors.ConfigError` for a file that is not a report.
    """
    path = Path(report_path)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--rerun {path}: cannot read a report.json ({exc})") from None
    if not isinstance(report, dict) or report.get("schema") != "m2k_bt/report":
        raise ConfigError(f"--rerun {path}: not an m2k_bt report.json")
    inp = report.get("inputs") or {}
    data = inp.get("data") or {}
    files = data.get("files")
    if not files:
        raise ConfigError(f"--rerun {path}: the report records no data files (schema "
                          f"{report.get('schema_version')}; reports from 1.1 on do)")
    argv: list[str] = []
    for f in files:
        digest = file_sha256(f["path"])
        if digest is None:
            raise DataFeedError(f"--rerun: data file {f['path']} is missing; the run cannot be "
                                "repeated without it")
        if f.get("sha256") and digest != f["sha256"]:
            raise DataFeedError(f"--rerun: data file {f['path']} changed since the report "
                                f"(sha256 {digest[:12]}... vs {f['sha256'][:12]}... recorded)")
        argv += ["--data", f["path"]]
    for flag, key in (("--format", "format"), ("--tz", "tz"), ("--roll", "roll"),
                      ("--adjust", "adjust"), ("--start", "start"), ("--end", "end"),
                      ("--resample", "resample")):
        if data.get(key) is not None:
            argv += [flag, str(data[key])]
    if data.get("lenient"):
        argv.append("--lenient")
    if data.get("rth_only"):
        argv.append("--rth-only")
    contract = inp.get("contract") or {}
    costs = inp.get("costs") or {}
    margins = inp.get("margins") or {}
    for flag, value in (("--contract", contract.get("root")), ("--cash", inp.get("cash")),
                        ("--commission", costs.get("commission")),
                        ("--slippage-ticks", costs.get("slippage_ticks")),
                        ("--margin", margins.get("initial")),
                        ("--maintenance-margin", margins.get("maintenance")),
                        ("--intraday-margin", margins.get("intraday")),
                        ("--seed", inp.get("seed"))):
        if value is not None:
            argv += [flag, _arg(value)]
    events = inp.get("events") or {}
    for key in ("events", "signal"):
        if str(events.get(key) or "").startswith("<"):
            raise ConfigError(f"--rerun {path}: the run's {key} came from Python, not a file")
    for flag, key in (("--avoid-events", "avoid_events"), ("--events", "events"),
                      ("--signal", "signal"), ("--signal-min", "signal_min"),
                      ("--signal-max", "signal_max"), ("--signal-max-age", "signal_max_age")):
        value = events.get(key)
        if value is not None:
            argv += [flag, ",".join(value) if isinstance(value, list) else _arg(value)]
    if events.get("event_before") is not None or events.get("event_after") is not None:
        params = (inp.get("strategy") or {}).get("params") or {}
        before = _first(events.get("event_before"), params.get("event_before"))
        after = _first(events.get("event_after"), params.get("event_after"))
        argv += ["--event-window", f"{_arg(before)},{_arg(after)}"]
    if events.get("flat_before_event"):
        argv.append("--flat-before-event")
    strategy = inp.get("strategy") or {}
    sizer = inp.get("sizer") or {}
    argv += ["--strategy", str(strategy.get("name")), "--sizer", str(sizer.get("name"))]
    for key, value in (strategy.get("params") or {}).items():
        if key not in EVENT_PARAMS:
            argv += ["--param", f"{key}={_arg(value)}"]
    for key, value in (sizer.get("params") or {}).items():
        argv += ["--sizer-param", f"{key}={_arg(value)}"]
    return argv
