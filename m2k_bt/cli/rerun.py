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
from ..feeds.cache import file_sha256

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


def _part(parent: dict, key: str, where: str, path: Path, kind: type = dict) -> Any:
    """``parent[key]`` when it is a ``kind`` (an empty one when missing), else one error
    naming the report and the entry."""
    value = parent.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        what = "an object" if kind is dict else "a list"
        raise ConfigError(f"--rerun {path}: {where} should be {what}, got "
                          f"{type(value).__name__} {value!r:.40}; the report was edited or "
                          f"damaged")
    return value


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
    inp = _part(report, "inputs", "inputs", path)
    data = _part(inp, "data", "inputs.data", path)
    files = _part(data, "files", "inputs.data.files", path, list)
    if not files:
        raise ConfigError(f"--rerun {path}: the report records no data files (schema "
                          f"{report.get('schema_version')}; reports from 1.1 on do)")
    argv: list[str] = []
    for f in files:
        if not (isinstance(f, dict) and isinstance(f.get("path"), str)):
            raise ConfigError(f"--rerun {path}: inputs.data.files should list objects with a "
                              f"path, got {f!r:.40}; the report was edited or damaged")
        digest = file_sha256(f["path"])
        if digest is None:
            raise DataFeedError(f"--rerun: data file {f['path']} is missing; the run cannot be "
                                "repeated without it")
        recorded = str(f.get("sha256") or "")
        if recorded and digest != recorded:
            raise DataFeedError(f"--rerun: data file {f['path']} changed since the report "
                                f"(sha256 {digest[:12]}... vs {recorded[:12]}... recorded)")
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
    contract = _part(inp, "contract", "inputs.contract", path)
    costs = _part(inp, "costs", "inputs.costs", path)
    margins = _part(inp, "margins", "inputs.margins", path)
    for flag, value in (("--contract", contract.get("root")), ("--cash", inp.get("cash")),
                        ("--commission", costs.get("commission")),
                        ("--slippage-ticks", costs.get("slippage_ticks")),
                        ("--margin", margins.get("initial")),
                        ("--maintenance-margin", margins.get("maintenance")),
                        ("--intraday-margin", margins.get("intraday")),
                        ("--seed", inp.get("seed"))):
        if value is not None:
            argv += [flag, _arg(value)]
    events = _part(inp, "events", "inputs.events", path)
    strategy = _part(inp, "strategy", "inputs.strategy", path)
    sizer = _part(inp, "sizer", "inputs.sizer", path)
    params = _part(strategy, "params", "inputs.strategy.params", path)
    sizer_params = _part(sizer, "params", "inputs.sizer.params", path)
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
        before = _first(events.get("event_before"), params.get("event_before"))
        after = _first(events.get("event_after"), params.get("event_after"))
        argv += ["--event-window", f"{_arg(before)},{_arg(after)}"]
    if events.get("flat_before_event"):
        argv.append("--flat-before-event")
    argv += ["--strategy", str(strategy.get("name")), "--sizer", str(sizer.get("name"))]
    for key, value in params.items():
        if key not in EVENT_PARAMS:
            argv += ["--param", f"{key}={_arg(value)}"]
    for key, value in sizer_params.items():
        argv += ["--sizer-param", f"{key}={_arg(value)}"]
    return argv
