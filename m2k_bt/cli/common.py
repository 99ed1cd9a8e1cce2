"""Command-line pieces every job shares: the argument parser, the common flags, loading
``--data`` into bars and a config, the default output folder and the terminal progress bar.

Used by :mod:`m2k_bt.cli.backtest` (the backtest and the dispatcher), :mod:`m2k_bt.cli.live` and
:mod:`m2k_bt.cli.optimize`. No library module imports this (or any ``cli*``) module: the
library reports progress through a plain ``progress(done, total)`` callback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import re
import sys
from pathlib import Path

from ..errors import ConfigError, DataFeedError, ParameterError

__all__ = [
    "DEFAULT_DATA",
    "ArgParser",
    "ProgressBar",
    "add_common_args",
    "config_from_args",
    "default_out",
    "load_data",
    "no_contract",
    "parse_kv",
]

ROOT = Path(__file__).resolve().parents[2]
#: The bundled default series (synthetic, see datafeeds/README.md).
DEFAULT_DATA = ROOT / "datafeeds" / "m2k_5min.csv.gz"


class ArgParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message):
        raise ConfigError(f"{message} (see {self.prog} --help)")


class ProgressBar:
    """A tqdm progress bar on stderr fed by ``progress(done, total)`` callbacks.

    The library reports progress through such a callback (``run_backtest(..., progress=)``,
    ``optimize(..., progress=)``); the command line passes this one. Silent when ``stream``
    (def: stderr) is not a terminal or ``enabled`` is False; ``label`` names the unit.
    """

    def __init__(self, label: str = "bars", enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty is not None and isatty())
        self.label = label
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            # no monitor thread: a study forks its backtesters and its cerebro check only
            # from a process of one thread (the monitor only tunes slow iterations)
            tqdm.monitor_interval = 0
            self._bar = tqdm(total=total or None, unit=f" {self.label}", file=self.stream,
                             mininterval=0.2, dynamic_ncols=True, leave=True)
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.update(max(done - self._bar.n, 0))
        if total and done >= total:
            self.close()

    def close(self) -> None:
        """End the bar (its line stays on the terminal)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def parse_kv(items: list[str] | None, flag: str) -> dict:
    """``["fast=10", "slow=30"]`` -> ``{"fast": "10", "slow": "30"}``.

    >>> parse_kv(["fast=10"], "--param")
    {'fast': '10'}
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The flags every job shares (data, contract, strategy, sizer, costs, dates, outputs)."""
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", metavar="PATH",
                   help="bar file (repeat for per-contract files, spliced at the rolls); "
                   f"default: {DEFAULT_DATA.relative_to(ROOT)}")
    g.add_argument("--format", dest="fmt", metavar="FMT",
                   help="generic|yahoo|ninjatrader|databento|backtrader (default: detect)")
    g.add_argument("--tz", help="timezone of naive timestamps in the file (default: New York)")
    g.add_argument("--date-format", dest="date_format", metavar="ORDER",
                   help="order of numeric dates like 05/03/2024: dmy (day first) or mdy (month "
                   "first); default: settled by the file (a day above 12), else an error")
    g.add_argument("--lenient", action="store_true",
                   help="repair or drop bad rows (each listed in the report) instead of failing")
    g.add_argument("--snap-to-tick", action="store_true",
                   help="round prices off the contract's tick grid to the nearest tick (one "
                   "report line per repaired price); other checks stay strict")
    g.add_argument("--roll", choices=["calendar", "volume"], default="calendar",
                   help="roll rule for per-contract files (default: calendar)")
    g.add_argument("--adjust", choices=["add", "ratio", "none"], default="add",
                   help="back-adjustment for per-contract files (default: add)")
    g.add_argument("--start", help="first date to trade, YYYY-MM-DD")
    g.add_argument("--end", help="last date to trade, YYYY-MM-DD")
    g.add_argument("--resample", metavar="RULE", help="bar size to trade: 5min, 15min, 1h, 1d")
    g.add_argument("--rth-only", action="store_true",
                   help="enter trades only in regular hours, 09:30-16:00 New York")

    g = p.add_argument_group("events and signals (README: Event calendar and signals)")
    g.add_argument("--avoid-events", metavar="KINDS",
                   help="no entries around these events: fomc,cpi,nfp,russell_recon,expiry "
                   "or kinds from --events")
    g.add_argument("--event-window", metavar="BEFORE,AFTER",
                   help="minutes before and after each event (default 30,60)")
    g.add_argument("--flat-before-event", action="store_true",
                   help="also close open positions before each avoided event")
    g.add_argument("--events", metavar="FILE",
                   help="CSV of your own events (time,kind,description)")
    g.add_argument("--signal", metavar="FILE[:COLUMN]",
                   help="external series (time,value or a named column), used as of each bar")
    g.add_argument("--signal-min", type=float, help="enter only while the signal is >= X")
    g.add_argument("--signal-max", type=float, help="enter only while the signal is <= Y")
    g.add_argument("--signal-max-age", metavar="AGE",
                   help="after AGE without a new value (e.g. 3D, 90min) the signal is unknown")

    g = p.add_argument_group("contract and costs")
    g.add_argument("--contract", default="M2K",
                   help="M2K (default) or RTY, or a registered root; 'none' loads data that is "
                   "not on a futures tick grid (e.g. the RUT cash index) without the tick and "
                   "session checks and trades it as M2K")
    g.add_argument("--cash", type=float, default=25_000.0, help="starting equity, $ (25000)")
    g.add_argument("--commission", type=float, help="$ per contract per side (spec: 0.62)")
    g.add_argument("--margin", type=float, help="initial margin $ per contract (spec: 770)")
    g.add_argument("--maintenance-margin", type=float,
                   help="maintenance margin $ per contract (spec: 700)")
    g.add_argument("--intraday-margin", type=float,
                   help="intraday margin $ per contract, 09:30-15:45 New York (default: none)")
    g.add_argument("--slippage-ticks", type=float, default=0.0,
                   help="ticks of slippage per market/stop fill (0)")

    g = p.add_argument_group("strategy and sizing")
    g.add_argument("--strategy", default="sma",
                   help="sma (default), bollinger, adaptive, or your own: FILE.py:NAME or "
                        "MODULE:NAME (a signal function or a strategy class)")
    g.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="strategy parameter (repeatable); see --list-strategies")
    g.add_argument("--no-lookahead-check", action="store_true",
                   help="skip the proof that a signal strategy does not look ahead (it "
                        "recomputes the signal on the data cut at 8 points before the run)")
    g.add_argument("--sizer", default="kelly", help="kelly (default) or fixed")
    g.add_argument("--sizer-param", action="append", metavar="KEY=VALUE",
                   help="sizer parameter (repeatable), e.g. kelly_scale=0.25, contracts=2")

    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR",
                   help="output folder (default: results/<time>-<strategy>)")
    g.add_argument("--no-plot", action="store_true",
                   help="skip report.html, plot.png and equity.png")
    g.add_argument("--quiet", action="store_true", help="no progress bar, no summary table")
    g.add_argument("--seed", type=int, help="random seed, recorded in the report")


def _symbol_of(path: str, df) -> str:
    if "contract" in df.columns and df["contract"].nunique() == 1:
        return str(df["contract"].iloc[0])
    m = re.search(r"([A-Z0-9]{2,4}[FGHJKMNQUVXZ]\d{1,2})(?=[^A-Za-z0-9]|$)", Path(path).name)
    if not m:
        raise DataFeedError(
            f"{path}: cannot tell which contract this file holds; name it like M2KH5_1min.csv or "
            f"give it a 'contract' column"
        )
    return m.group(1)


#: Report line of a run on data loaded with ``--contract none``.
NO_CONTRACT_NOTE = ("loaded with --contract none: no tick-grid or Globex-session checks; "
                    "traded as M2K ($5 per point, 0.10 tick)")


def no_contract(args) -> bool:
    return str(getattr(args, "contract", "") or "").strip().lower() == "none"


def load_data(args):
    """Load ``--data`` (one file, or per-contract files spliced into a continuous series)."""
    from ..contracts import get_spec
    from ..feeds.loaders import load_bars

    checks = None if no_contract(args) else get_spec(args.contract)
    spec = checks or get_spec("M2K")
    paths = args.data or [str(DEFAULT_DATA)]
    frames = {}
    for path in paths:
        if not Path(path).exists():
            raise DataFeedError(f"data file not found: {path} (check the --data path)")
        df = load_bars(path, fmt=args.fmt, tz=args.tz, spec=checks, lenient=args.lenient,
                       snap_to_tick=bool(getattr(args, "snap_to_tick", False)),
                       date_format=getattr(args, "date_format", None))
        frames[path] = df
    if len(frames) == 1:
        (df,) = frames.values()
        df.attrs["path"] = paths[0]
        if checks is None:
            df.attrs["report"] = [*(df.attrs.get("report") or []), NO_CONTRACT_NOTE]
        return df
    from ..feeds.continuous import build_continuous

    by_symbol = {}
    report = []
    for path, df in frames.items():
        sym = _symbol_of(path, df)
        if sym in by_symbol:
            raise DataFeedError(f"two files hold contract {sym}: {path} and another --data file")
        by_symbol[sym] = df
        report.extend(df.attrs.get("report", []) or [])
    out = build_continuous(by_symbol, spec=spec, roll=args.roll, adjust=args.adjust)
    out.attrs["report"] = report + list(out.attrs.get("report", []) or [])
    if checks is None:
        out.attrs["report"].append(NO_CONTRACT_NOTE)
    out.attrs["path"] = ", ".join(paths)
    return out


def _event_signal_args(args) -> dict:
    """BacktestConfig fields of the events-and-signals flags."""
    out = {}
    window = getattr(args, "event_window", None)
    if window is not None:
        parts = [x.strip() for x in window.split(",")]
        try:
            before, after = (float(x) for x in parts)
            if not (before >= 0 and after >= 0):
                raise ValueError
        except ValueError:
            raise ConfigError(f"--event-window takes BEFORE,AFTER minutes >= 0, e.g. 30,60; "
                              f"got {window!r}") from None
        out.update(event_before=before, event_after=after)
    for flag, key in (("avoid_events", "avoid_events"), ("events", "events"),
                      ("signal", "signal"), ("signal_min", "signal_min"),
                      ("signal_max", "signal_max"), ("signal_max_age", "signal_max_age")):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    if getattr(args, "flat_before_event", False):
        out["flat_before_event"] = True
    if out.get("events") is not None and not Path(out["events"]).is_file():
        raise DataFeedError(f"--events file not found: {out['events']}")
    return out


def check_cash(cash) -> None:
    """``--cash``: dollars above 0, finite and at most ``MAX_CASH`` (checked before any data
    is loaded)."""
    from ..engine.config import MAX_CASH

    if cash is None or not (math.isfinite(cash) and 0 < cash <= MAX_CASH):
        raise ConfigError(f"--cash must be a positive number of dollars, at most "
                          f"{MAX_CASH:,.0f}; got {cash}")


def _strategy_first(args, params: dict) -> None:
    """Look the strategy up before any data is loaded (a file that does not exist, a name not
    in it: said at once), and apply ``--no-lookahead-check`` to ``params``."""
    from ..strategies import SignalStrategy, resolve_strategy

    cls = resolve_strategy(args.strategy)
    if getattr(args, "no_lookahead_check", False):
        if not (isinstance(cls, type) and issubclass(cls, SignalStrategy)):
            raise ConfigError(f"--no-lookahead-check applies to signal strategies; "
                              f"{args.strategy} ({cls.__name__}) is a per-bar strategy")
        params["lookahead_check"] = False


def config_from_args(args):
    """(bars DataFrame, BacktestConfig) from parsed common args."""
    from ..contracts import get_spec
    from ..engine import BacktestConfig

    check_cash(args.cash)
    spec = get_spec("M2K" if no_contract(args) else args.contract)
    params = parse_kv(args.param, "--param")
    _strategy_first(args, params)
    bars = load_data(args)
    config = BacktestConfig(
        strategy=args.strategy,
        params=params,
        sizer=args.sizer,
        sizer_params=parse_kv(args.sizer_param, "--sizer-param"),
        spec=spec,
        cash=args.cash,
        commission=args.commission,
        margin=args.margin,
        maintenance_margin=args.maintenance_margin,
        intraday_margin=args.intraday_margin,
        slippage_ticks=args.slippage_ticks,
        start=args.start,
        end=args.end,
        resample=args.resample,
        rth_only=args.rth_only,
        **_event_signal_args(args),
        seed=args.seed,
        plot=not args.no_plot,
        data_path=bars.attrs.get("path"),
        data_rows=len(bars),
        data_options={"paths": [str(Path(p).resolve()) for p in args.data or [DEFAULT_DATA]],
                      "format": args.fmt, "tz": args.tz, "lenient": args.lenient,
                      "roll": args.roll, "adjust": args.adjust,
                      **({"date_format": args.date_format}
                         if getattr(args, "date_format", None) else {})},
    )
    return bars, config


def default_out(strategy: str, prefix: str = "") -> Path:
    """``results/<time>-<prefix><strategy>``; a ``FILE.py:NAME`` strategy is named by
    ``NAME``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = str(strategy).rpartition(":")[2] or "strategy"
    return Path("results") / f"{stamp}-{prefix}{name}"



