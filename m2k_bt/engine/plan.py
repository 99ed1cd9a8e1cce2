"""A configuration resolved once into the plan both engines run.

:func:`resolve` looks the strategy up, checks its parameters (with ``rth_only`` and the event and
signal settings), chooses the sizer, makes the commission scheme and loads the external signal,
once; cerebro (:func:`m2k_bt.engine.cerebro.run_backtest`) and the kernel
(:func:`m2k_bt.kernel.simulation.simulate`) both take the :class:`Plan`. A study resolves its
configuration once and swaps only the parameters per trial (:meth:`Plan.with_params`).

>>> plan = resolve(BacktestConfig(strategy="sma", sizer="fixed", params={"fast": "10"}))
>>> plan.strategy_cls.__name__, plan.params["fast"], plan.sizer_cls.__name__
('SmaCrossover', 10, 'FixedContracts')
>>> plan.with_params({"fast": 20, "slow": 50}).params["slow"]
50
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..brokers.commission import M2KCommInfo
from ..errors import ConfigError, ParameterError, check_known, did_you_mean
from ..strategies.registry import resolve_strategy
from .config import SIZERS, BacktestConfig, check_config, coerce

__all__ = [
    "Plan",
    "RUN_FIELDS",
    "resolve",
    "choose_sizer",
    "strategy_params",
    "comminfo_for",
    "event_signal_params",
    "select_bars",
    "check_bars",
    "check_slippage",
]

#: :class:`BacktestConfig` fields that change how a plan runs or what it records, not what it
#: resolves to; :meth:`Plan.replace` changes them without a new resolution.
RUN_FIELDS = ("start", "end", "resample", "runonce", "preload", "analyzers", "plot", "seed",
              "data_path", "data_rows", "data_options")


@dataclass(frozen=True)
class Plan:
    """One :class:`BacktestConfig` resolved: what an engine needs to run it, checked.

    - ``config``: the configuration (run modes, cash, slippage, contract, the bar selection
      ``start``/``end``/``resample``, provenance for the report).
    - ``strategy_cls``: the strategy class; ``params``: its checked parameters as the strategy
      receives them (``config.params`` with ``rth_only`` and :attr:`events`; every parameter
      with its value for an :class:`~m2k_bt.strategies.base.M2KStrategy`).
    - ``sizer_cls``, ``sizer_params``: the sizer and its parameters (the overrides, coerced).
    - ``comminfo``: the commission scheme (:func:`comminfo_for`). Read it; a cerebro gets its
      own copy, since the broker switches its intraday margin on and off.
    - ``events``: the strategy parameters that come from the event and signal settings
      (:func:`event_signal_params`; also in ``params``).
    - ``signal``: the external :class:`~m2k_bt.feeds.external.Signal`, or ``None``.

    Do not change the dicts in place: make a new plan with :meth:`with_params` or
    :meth:`replace`.
    """

    config: BacktestConfig
    strategy_cls: type
    params: dict
    sizer_cls: type
    sizer_params: dict
    comminfo: M2KCommInfo
    events: dict
    signal: Any = None

    # the bar selection, as select_bars reads it from a config
    @property
    def start(self):
        return self.config.start

    @property
    def end(self):
        return self.config.end

    @property
    def resample(self):
        return self.config.resample

    @property
    def filtered(self) -> bool:
        """Whether entries are filtered by events or the external signal (the run then adds
        the ``events`` analyzer)."""
        return bool(self.params.get("avoid_events")) or self.signal is not None

    def with_params(self, params: dict) -> Plan:
        """The plan of ``config.replace(params=params)``: only the strategy parameters are
        checked again; the strategy class, sizer, scheme, events and signal are kept."""
        config = self.config.replace(params=dict(params))
        return dataclasses.replace(
            self, config=config, params=strategy_params(self.strategy_cls, config, self.events))

    def replace(self, **changes) -> Plan:
        """The plan with some of the :data:`RUN_FIELDS` of its config changed (a run mode, the
        analyzers, the bar selection); any other field needs :func:`resolve`."""
        other = sorted(set(changes) - set(RUN_FIELDS))
        if other:
            raise ValueError(f"Plan.replace changes only {', '.join(RUN_FIELDS)}; resolve a new "
                             f"config for {', '.join(other)}")
        return dataclasses.replace(self, config=self.config.replace(**changes))


def resolve(config: BacktestConfig | Plan | None = None) -> Plan:
    """``config`` resolved into a :class:`Plan` (a plan is returned as it is); every user
    mistake raises an :class:`~m2k_bt.errors.M2KError` naming the setting."""
    if isinstance(config, Plan):
        return config
    config = config or BacktestConfig()
    from ..feeds.external import config_signal

    strategy_cls = resolve_strategy(config.strategy)
    events = event_signal_params(config, strategy_cls)
    params = strategy_params(strategy_cls, config, events)
    check_config(config)
    sizer_cls, sizer_params = choose_sizer(config)
    comminfo = comminfo_for(config)
    check_slippage(config.slippage_ticks, comminfo)
    return Plan(
        config=config,
        strategy_cls=strategy_cls,
        params=params,
        sizer_cls=sizer_cls,
        sizer_params=sizer_params,
        comminfo=comminfo,
        events=events,
        signal=config_signal(config),
    )


def strategy_params(strategy_cls: type, config: BacktestConfig, events: dict) -> dict:
    """The strategy's parameters for ``config``: ``config.params``, ``rth_only`` when set, and
    the event and signal ``events``, checked by the strategy's ``validate_params`` (a strategy
    without one gets them as they are)."""
    params = dict(config.params)
    if config.rth_only:
        params["rth_only"] = True
    params.update(events)
    validate = getattr(strategy_cls, "validate_params", None)
    return validate(params) if validate else params


def choose_sizer(config: BacktestConfig) -> tuple[type, dict]:
    """(sizer class, its parameters coerced to their defaults' types) for ``config``."""
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
        coerced[key] = coerce(value, default, f"{name} sizer parameter '{key}'")
    return cls, coerced


def comminfo_for(config: BacktestConfig) -> M2KCommInfo:
    """The commission scheme of ``config``: the spec's figures with the config's overrides.

    A margin override moves initial and maintenance consistently with CME's 110% rule. Both
    engines take their scheme from this one function (through :func:`resolve`).
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


def check_slippage(ticks: float, comminfo: M2KCommInfo) -> None:
    """Slippage must be a whole number of cents per contract (money is booked in cents):
    ``ticks`` x tick x multiplier x 100. For M2K (a tick is $0.50) any multiple of 0.02 tick.

    >>> check_slippage(0.25, comminfo_for(BacktestConfig()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m2k_bt.errors.ParameterError: slippage_ticks 0.25 is 0.25 x $0.5 = 12.5 cents per ...
    """
    if not ticks:
        return
    tick_cents = float(comminfo.p.tick_size) * float(comminfo.p.mult) * 100.0
    cents = float(ticks) * tick_cents
    if abs(cents - round(cents)) > 1e-6:
        from fractions import Fraction

        step = Fraction(1) / Fraction(repr(tick_cents)).limit_denominator(10**6)
        raise ParameterError(
            f"slippage_ticks {ticks!r} is {ticks!r} x ${tick_cents / 100:g} = {cents:g} cents per "
            f"contract; money is booked in whole cents: use a multiple of {float(step):g} tick")


def event_signal_params(config, strategy_cls: type | None = None) -> dict:
    """Strategy params for the event and signal settings of a ``BacktestConfig`` (only those
    set); a strategy without them (not an :class:`~m2k_bt.strategies.base.M2KStrategy`) is an
    error. ``strategy_cls``: the config's strategy class, when already looked up.
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
        cls = strategy_cls or resolve_strategy(config.strategy)
        missing = [k for k in out if k not in cls.params._getkeys()]
        if missing:
            raise ConfigError(f"strategy {cls.__name__} has no parameter '{missing[0]}': event "
                              f"and signal filters need an m2k_bt.strategies.base.M2KStrategy")
    return out


def check_bars(bars: pd.DataFrame) -> None:
    """The one check of a bar frame both engines run before selecting from it (the cerebro
    feed's own rules): a DataFrame with a ``DatetimeIndex``, every column of
    ``open high low close volume``, times strictly increasing (no duplicate, nothing
    reversed). Raises :class:`~m2k_bt.errors.ConfigError` for no bars,
    :class:`~m2k_bt.errors.ParameterError` otherwise, naming what to fix.

    >>> check_bars(pd.DataFrame({"close": [1.0]}, index=pd.DatetimeIndex(["2024-01-02"])))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m2k_bt.errors.ParameterError: the bars are missing column(s) open, high, low, volume; ...
    """
    from ..feeds.loaders import BAR_COLUMNS

    if not isinstance(bars, pd.DataFrame) or bars.empty:
        attrs = getattr(bars, "attrs", {}) or {}
        where = attrs.get("path") or attrs.get("source")
        raise ConfigError(f"no bars to backtest: {where or 'the data'} holds no bars")
    if not isinstance(bars.index, pd.DatetimeIndex):
        raise ParameterError(
            f"the bars must be a DataFrame with a DatetimeIndex (from load_bars), got an index "
            f"of {type(bars.index).__name__}")
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ParameterError(
            f"the bars are missing column(s) {', '.join(missing)}; "
            f"found: {', '.join(map(str, bars.columns))}")
    stamps = bars.index.asi8
    if len(stamps) > 1:
        steps = np.diff(stamps)
        bad = np.flatnonzero(steps <= 0)
        if len(bad):
            at = int(bad[0]) + 1
            what = "repeats" if steps[bad[0]] == 0 else "comes before"
            raise ParameterError(
                f"the bars' times must be strictly increasing: row {at} ({bars.index[at]}) "
                f"{what} row {at - 1} ({bars.index[at - 1]}); sort them and drop duplicates "
                f"(validate_bars(df) does both)")


def select_bars(bars: pd.DataFrame, config: BacktestConfig | Plan) -> pd.DataFrame:
    """The bars ``config`` (or a plan) selects: ``start``/``end`` (inclusive), then
    ``resample``; the bars are checked first (:func:`check_bars`); an empty selection is a
    :class:`~m2k_bt.errors.ConfigError`."""
    check_bars(bars)
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
