"""One configured backtest: data + contract + broker + strategy + sizer + analyzers.

The command line, the optimiser, walk-forward and the benchmarks all run backtests through
:func:`run_backtest`, so a trial in a study is exactly the backtest the runner would print.

>>> from m2k_bt.engine.cerebro import BacktestConfig
>>> BacktestConfig(strategy="sma", params={"fast": 10, "slow": 30}).cash
25000.0
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import backtrader as bt
import pandas as pd

from ..brokers.commission import M2KCommInfo
from ..brokers.futures import FuturesBroker
from ..contracts import M2K, ContractSpec
from ..errors import ConfigError, NotEnoughBarsError, ParameterError, check_known, did_you_mean
from ..strategies.base import resolve_strategy

__all__ = [
    "BacktestConfig",
    "BacktestResult",
    "SIZERS",
    "build_cerebro",
    "run_backtest",
    "resolve_strategy",
    "select_bars",
    "min_bars",
    "collect_analysis",
    "collect_warnings",
    "equity_from",
    "plain",
]

#: Sizer names accepted by :class:`BacktestConfig` and the command line.
SIZERS = ("kelly", "fixed")


@dataclass
class BacktestConfig:
    """Everything that defines a backtest besides the bars.

    - ``strategy``: a key of ``m2k_bt.strategies.base.STRATEGIES`` (``"sma"``, ``"bollinger"``,
      ``"adaptive"``) or a ``bt.Strategy`` subclass.
    - ``params``: strategy parameters (validated; unknown names are errors).
    - ``sizer``: ``"kelly"`` (default) or ``"fixed"``; ``sizer_params`` its parameters.
    - ``spec``: the contract (default M2K); ``commission``, ``margin`` (initial),
      ``maintenance_margin``, ``intraday_margin`` override the spec's dated defaults
      (dollars per contract; setting only one of margin/maintenance keeps initial >= maint.).
    - ``cash``: starting equity, dollars. ``slippage_ticks``: per market/stop fill.
    - ``start``/``end``: date filter (inclusive, New York time). ``resample``: ``"5min"``,
      ``"1h"``, ``"1d"``... ``rth_only``: enter only 09:30-16:00 New York.
    - ``runonce``/``preload``: backtrader engine modes. ``analyzers``: ``False`` keeps only the
      analyzers an optimisation trial needs. ``plot``: add the observers backtrader's plot
      shows (buy/sell marks, account value); they cost a little per bar, so only when a plot
      will be drawn. ``seed``: recorded in the report.
    - ``data_path``/``data_rows``: provenance for the report (set by the loader);
      ``data_options``: how the data was loaded (``paths``, ``format``, ``tz``, ``lenient``,
      ``roll``, ``adjust``), recorded in report.json so ``--rerun`` can load it again.
    - Events and signals (:mod:`m2k_bt.feeds.events`, :mod:`m2k_bt.feeds.external`; passed to the strategy's
      params and the feed, so optimisation and walk-forward use them too): ``avoid_events``
      (kinds, ``"fomc,cpi"``), ``event_before``/``event_after`` (minutes; ``None`` keeps the
      strategy's 30/60), ``flat_before_event``, ``events`` (a CSV of your own events or an
      ``EventCalendar``), ``signal`` (``"FILE[:column]"`` or a ``Signal``), ``signal_min``,
      ``signal_max``, ``signal_max_age`` (``"3D"``, ``"90min"``; ``None`` = no limit).
    """

    strategy: Any = "sma"
    params: dict = field(default_factory=dict)
    sizer: str = "kelly"
    sizer_params: dict = field(default_factory=dict)
    spec: ContractSpec = M2K
    cash: float = 25_000.0
    commission: float | None = None
    margin: float | None = None
    maintenance_margin: float | None = None
    intraday_margin: float | None = None
    slippage_ticks: float = 0.0
    start: str | None = None
    end: str | None = None
    resample: str | None = None
    rth_only: bool = False
    runonce: bool = True
    preload: bool = True
    analyzers: bool = True
    plot: bool = False
    seed: int | None = None
    data_path: str | None = None
    data_rows: int | None = None
    data_options: dict = field(default_factory=dict)
    avoid_events: Any = None
    event_before: float | None = None
    event_after: float | None = None
    flat_before_event: bool = False
    events: Any = None
    signal: Any = None
    signal_min: float | None = None
    signal_max: float | None = None
    signal_max_age: Any = None

    def replace(self, **changes) -> BacktestConfig:
        return dataclasses.replace(self, **changes)

    @property
    def strategy_name(self) -> str:
        if isinstance(self.strategy, str):
            return self.strategy
        return getattr(self.strategy, "__name__", str(self.strategy))


@dataclass
class BacktestResult:
    """What a backtest produced; see README "Report fields" for every key."""

    config: BacktestConfig
    start_value: float
    final_value: float
    bars: int
    first_dt: Any
    last_dt: Any
    analysis: dict
    metrics: dict
    trades: list
    equity: pd.DataFrame
    margin_events: list
    warnings: list
    cerebro: Any = None
    strategy: Any = None
    elapsed: float = 0.0
    data_report: list = field(default_factory=list)


def _sizer(config: BacktestConfig):
    from ..sizers.kelly import FixedContracts, KellySizer

    name = str(config.sizer).lower()
    if name not in SIZERS:
        raise ParameterError(
            f"unknown sizer '{config.sizer}'{did_you_mean(name, SIZERS)}; known: kelly, fixed"
        )
    cls = KellySizer if name == "kelly" else FixedContracts
    params = dict(config.sizer_params)
    check_known(params, cls.params._getkeys(), f"{name} sizer parameter")
    coerced = {}
    for key, value in params.items():
        default = getattr(cls.params, key)
        coerced[key] = _coerce(value, default, f"{name} sizer parameter '{key}'")
    return cls, coerced


def _coerce(value, default, what: str):
    """Turn a command-line string into the type of ``default``."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:
            if text.lower() == "none":
                return None
            try:
                return int(text)
            except ValueError:
                return float(text)
    except ValueError:
        kind = ("true or false" if isinstance(default, bool) else "a whole number"
                if isinstance(default, int) else "a number")
        raise ParameterError(f"{what} must be {kind}, got {value!r}") from None
    return text


def _check_money(name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a number {bound}, got {value!r}")


def select_bars(bars: pd.DataFrame, config: BacktestConfig) -> pd.DataFrame:
    if not isinstance(bars, pd.DataFrame) or bars.empty:
        attrs = getattr(bars, "attrs", {}) or {}
        where = attrs.get("path") or attrs.get("source")
        raise ConfigError(f"no bars to backtest: {where or 'the data'} holds no bars")
    out = bars
    tz = out.index.tz
    for name in ("start", "end"):
        value = getattr(config, name)
        if value is None:
            continue
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{name} {value!r} is not a date (use YYYY-MM-DD)") from None
        if tz is not None and ts.tzinfo is None:
            ts = ts.tz_localize(tz)
        if name == "start":
            out = out[out.index >= ts]
        else:
            if ts == ts.normalize() and len(str(value)) <= 10:
                ts = ts + pd.Timedelta(days=1)
                out = out[out.index < ts]
            else:
                out = out[out.index <= ts]
    if config.start and config.end and pd.Timestamp(config.start) > pd.Timestamp(config.end):
        raise ConfigError(f"start {config.start} is after end {config.end}")
    if config.resample:
        from ..feeds.bars import resample_bars

        out = resample_bars(out, config.resample)
    if out.empty:
        raise ConfigError(
            f"no bars between start={config.start} and end={config.end}; the data covers "
            f"{bars.index[0]} to {bars.index[-1]}"
        )
    return out


def _strategy_settings(config: BacktestConfig) -> dict:
    """The strategy's effective parameters: its defaults, overridden by ``config.params``."""
    cls = resolve_strategy(config.strategy)
    params = dict(config.params)
    validate = getattr(cls, "validate_params", None)
    params = validate(params) if validate else params
    return {**dict(cls.params._getitems()), **params}


def min_bars(bars: pd.DataFrame, config: BacktestConfig) -> int:
    """Bars the strategy of ``config`` needs before its indicators give a first value.

    This is backtrader's own minimum period of the strategy (the longest of its indicators'
    warm-up, e.g. ``slow`` for an SMA crossover, ``2 * adx_period`` with the ADX filter),
    measured by building the strategy on the first two of ``bars`` in backtrader's bar-by-bar
    mode, which accepts data shorter than the warm-up.
    """
    probe = config.replace(runonce=False, preload=True, plot=False, analyzers=False)
    cerebro, _ = build_cerebro(bars.iloc[:2], probe)
    strategy = cerebro.run()[0]
    return max(int(getattr(strategy, "_minperiod", 1)), 1)


def _check_enough_bars(selected: pd.DataFrame, config: BacktestConfig, always: bool = False):
    """Raise :class:`NotEnoughBarsError` when ``selected`` is shorter than the warm-up."""
    settings = _strategy_settings(config)
    lengths = {k: v for k, v in settings.items()
               if isinstance(v, int) and not isinstance(v, bool) and v > 1}
    # indicators need at most about twice their longest length (the ADX): more bars than
    # that cannot be too few, and the probe is skipped on the usual long run
    if not always and len(selected) > 3 * max(lengths.values(), default=1) + 10:
        return
    need = min_bars(selected, config)
    have = len(selected)
    if have >= need:
        return

    def fit(item):  # the parameter that explains the warm-up: need = k * value + c
        value = item[1]
        return (min(abs(need - (k * value + c)) for k in (1, 2) for c in (0, 1)), -value)

    culprit = min(lengths.items(), key=fit, default=None)
    what = (f"{culprit[0]}={culprit[1]}" if culprit is not None and fit(culprit)[0] <= 2
            else f"strategy {resolve_strategy(config.strategy).__name__}")
    span = ""
    if have:
        first, last = (f"{t:%Y-%m-%d %H:%M}" for t in (selected.index[0], selected.index[-1]))
        span = f" ({first} to {last})"
    fix = f"a smaller {culprit[0]}" if "=" in what else "another strategy setting"
    raise NotEnoughBarsError(
        f"need at least {need} bars for {what}, the selection has {have}{span}; "
        f"widen the date range (start/end) or choose {fix}",
        need=need, have=have,
    )


class _Progress(bt.Analyzer):
    """Calls ``callback(done, total)`` every ``every`` bars."""

    params = (("callback", None), ("total", 0), ("every", 500))

    def start(self):
        self._n = 0

    def next(self):
        self._n += 1
        if self._n % self.p.every == 0:
            self.p.callback(self._n, self.p.total)

    def stop(self):
        self.p.callback(self._n, self.p.total)

    def get_analysis(self):
        return {}


def comminfo_for(config: BacktestConfig) -> M2KCommInfo:
    """The commission scheme of ``config``: the spec's figures with the config's overrides.

    A margin override moves initial and maintenance consistently with CME's 110% rule. Both
    engines (cerebro here, :mod:`m2k_bt.kernel.simulation`) take their scheme from this one function.
    """
    overrides = {
        k: v
        for k, v in (
            ("commission", config.commission),
            ("margin", config.margin),
            ("maintenance_margin", config.maintenance_margin),
            ("intraday_margin", config.intraday_margin),
        )
        if v is not None
    }
    spec = config.spec
    if "margin" in overrides and "maintenance_margin" not in overrides:
        overrides["maintenance_margin"] = min(spec.maintenance_margin, overrides["margin"])
    if "maintenance_margin" in overrides and "margin" not in overrides:
        overrides["margin"] = max(spec.initial_margin, overrides["maintenance_margin"])
    return M2KCommInfo.from_spec(spec, **overrides)


def build_cerebro(bars: pd.DataFrame | None, config: BacktestConfig, progress=None, feed=None):
    """A ready cerebro for ``config``; returns (cerebro, feed).

    The feed is ``BarsFeed(dataname=bars)`` (bars already selected), or ``feed`` when given (a
    live ``QueueFeed``, say): everything else is the same, so a live run trades what a backtest
    tests."""
    from ..analyzers.standard import add_analyzers
    from ..feeds.bars import BarsFeed

    _check_money("cash", config.cash)
    _check_money("commission", config.commission, allow_zero=True)
    _check_money("margin", config.margin)
    _check_money("maintenance_margin", config.maintenance_margin)
    _check_money("intraday_margin", config.intraday_margin)
    _check_money("slippage_ticks", config.slippage_ticks, allow_zero=True)
    if not isinstance(config.spec, ContractSpec):
        raise ConfigError(f"spec must be a ContractSpec, got {config.spec!r}")

    strat_cls = resolve_strategy(config.strategy)
    params = dict(config.params)
    if config.rth_only:
        params["rth_only"] = True
    from ..feeds.external import config_signal

    params.update(event_signal_params(config))
    validate = getattr(strat_cls, "validate_params", None)
    params = validate(params) if validate else params
    sizer_cls, sizer_params = _sizer(config)

    comminfo = comminfo_for(config)

    cerebro = bt.Cerebro(runonce=config.runonce, preload=config.preload, stdstats=False)
    signal = config_signal(config)
    if feed is None:
        if signal is not None:
            from ..feeds.external import SignalFeed

            feed = SignalFeed(dataname=bars, signal=signal)
        else:
            feed = BarsFeed(dataname=bars)
    cerebro.adddata(feed, name=config.spec.root)
    cerebro.broker = FuturesBroker(cash=float(config.cash), slippage_ticks=config.slippage_ticks)
    cerebro.broker.addcommissioninfo(comminfo)
    cerebro.addstrategy(strat_cls, **params)
    cerebro.addsizer(sizer_cls, **sizer_params)
    add_analyzers(cerebro, minimal=not config.analyzers)
    filtered = bool(params.get("avoid_events")) or signal is not None
    if filtered:
        from ..feeds.events import EventActions

        cerebro.addanalyzer(EventActions, _name="events")
    if config.plot:
        cerebro.addobserver(bt.observers.BuySell, barplot=True, bardist=0.002)
        cerebro.addobserver(bt.observers.Value)
        if filtered:
            from ..feeds.events import EventMarks

            cerebro.addobserver(EventMarks)
    if progress is not None:
        total = len(bars) if bars is not None else 0
        cerebro.addanalyzer(_Progress, _name="_progress", callback=progress, total=total)
    return cerebro, feed


def collect_warnings(strategy, broker, data_report) -> list[str]:
    out = []
    for entry in data_report or []:
        if isinstance(entry, dict):
            out.append(
                "data: line {line} {timestamp}: {problem} -> {action}".format(
                    **{k: entry.get(k) for k in ("line", "timestamp", "problem", "action")}
                )
            )
        else:
            out.append(f"data: {entry}")
    for ev in getattr(broker, "margin_events", []):
        out.append(
            f"{ev.kind} at {ev.dt}: equity ${ev.equity:,.2f} vs requirement "
            f"${ev.requirement:,.2f} with {ev.contracts} contracts: {ev.action}"
        )
    for status, count in sorted(getattr(strategy, "order_rejections", {}).items()):
        if count:
            out.append(f"orders: {count} {status}")
    out.extend(getattr(strategy, "event_warnings", None) or [])
    return out


def run_backtest(
    bars: pd.DataFrame,
    config: BacktestConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BacktestResult:
    """Run one backtest; every user mistake raises an ``M2KError``."""
    from ..analyzers.standard import metrics_from

    config = config or BacktestConfig()
    data_report = list(getattr(bars, "attrs", {}).get("report", []) or [])
    selected = select_bars(bars, config)
    _check_enough_bars(selected, config)
    cerebro, feed = build_cerebro(selected, config, progress)
    t0 = time.perf_counter()
    try:
        strategy = cerebro.run()[0]
    except (IndexError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        # a strategy whose parameters do not tell its indicators' lengths: measure, then say
        _check_enough_bars(selected, config, always=True)
        raise
    elapsed = time.perf_counter() - t0

    analysis = collect_analysis(strategy)
    equity = equity_from(analysis)
    broker = cerebro.broker
    return BacktestResult(
        config=config,
        start_value=float(config.cash),
        final_value=float(broker.getvalue()),
        bars=len(selected),
        first_dt=selected.index[0],
        last_dt=selected.index[-1],
        analysis=analysis,
        metrics=metrics_from(analysis),
        trades=list(getattr(strategy, "trade_log", [])),
        equity=equity,
        margin_events=list(getattr(broker, "margin_events", [])),
        warnings=collect_warnings(strategy, broker, data_report),
        cerebro=cerebro,
        strategy=strategy,
        elapsed=elapsed,
        data_report=data_report,
    )


def collect_analysis(strategy) -> dict:
    """Every analyzer's output by name, as plain dicts (names starting with ``_`` skipped)."""
    return {
        name: plain(strategy.analyzers.getbyname(name).get_analysis())
        for name in strategy.analyzers.getnames()
        if not name.startswith("_")
    }


def equity_from(analysis: dict) -> pd.DataFrame:
    from ..analyzers.standard import equity_frame

    if "equity" in analysis:
        return equity_frame(analysis["equity"])
    return pd.DataFrame(columns=["value", "cash", "position", "drawdown", "drawdown_pct"])


def plain(obj):
    """Analyzer output as plain dicts/lists (backtrader's AutoOrderedDict included)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if obj and not isinstance(obj[0], (dict, list, tuple)):
            return list(obj)  # a column of scalars (an equity curve): no per-item walk
        return [plain(v) for v in obj]
    return obj


def event_signal_params(config) -> dict:
    """Strategy params for the event and signal settings of a ``BacktestConfig`` (only those
    set); a strategy without them (not an :class:`~m2k_bt.strategies.base.M2KStrategy`) is an error.
    """
    out = {}
    if getattr(config, "avoid_events", None):
        out["avoid_events"] = config.avoid_events
        if config.event_before is not None:
            out["event_before"] = config.event_before
        if config.event_after is not None:
            out["event_after"] = config.event_after
        if config.flat_before_event:
            out["flat_before_event"] = True
        if config.events is not None:
            out["event_calendar"] = config.events
    elif getattr(config, "flat_before_event", False) or getattr(config, "events", None):
        raise ConfigError("events / flat_before_event need avoid_events (which kinds to avoid, "
                          "e.g. --avoid-events fomc,cpi)")
    for key in ("signal_min", "signal_max"):
        if getattr(config, key, None) is not None:
            out[key] = getattr(config, key)
    if out:
        cls = resolve_strategy(config.strategy)
        missing = [k for k in out if k not in cls.params._getkeys()]
        if missing:
                raise ConfigError(f"strategy {cls.__name__} has no parameter '{missing[0]}': event "
                              f"and signal filters need an m2k_bt.strategies.base.M2KStrategy")
    return out
