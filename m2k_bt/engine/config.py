"""What defines a backtest besides the bars (:class:`BacktestConfig`), and its checks.

A configuration is plain data: :func:`m2k_bt.engine.plan.resolve` turns it into the plan both
engines run, checking it on the way (:func:`check_config` for the money and the contract).

>>> BacktestConfig(strategy="sma", params={"fast": 10, "slow": 30}).cash
25000.0
>>> check_money("cash", -5.0)
Traceback (most recent call last):
...
m2k_bt.errors.ConfigError: cash must be a number > 0, got -5.0
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..contracts import M2K, ContractSpec
from ..errors import ConfigError, ParameterError

__all__ = ["BacktestConfig", "MAX_CASH", "SIZERS", "check_config", "check_money", "coerce"]

#: Sizer names accepted by :class:`BacktestConfig` and the command line.
SIZERS = ("kelly", "fixed")

#: Largest starting equity, $ (one trillion): float64 keeps every cent of account values up to
#: about 9e13 dollars, and contract counts stay whole numbers the sizers can hold.
MAX_CASH = 1e12


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
    - Events and signals (:mod:`m2k_bt.feeds.events`, :mod:`m2k_bt.feeds.external`; passed to
      the strategy's params and the feed, so optimisation and walk-forward use them too):
      ``avoid_events``
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


def check_money(name: str, value, allow_zero: bool = False, most: float | None = None) -> None:
    """Raise :class:`~m2k_bt.errors.ConfigError` unless ``value`` is ``None`` or a finite
    number above 0 (at or above 0 with ``allow_zero``), and at most ``most`` when given.

    >>> check_money("cash", 1e308, most=MAX_CASH)
    Traceback (most recent call last):
    ...
    m2k_bt.errors.ConfigError: cash must be a number > 0 and at most 1e+12, got 1e+308
    """
    if value is None:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (most is None or value <= most)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        if most is not None:
            bound += f" and at most {most:g}"
        raise ConfigError(f"{name} must be a number {bound}, got {value!r}")


def check_config(config: BacktestConfig) -> None:
    """The checks of ``config``'s own fields: cash, fees, margins and slippage are numbers in
    range, ``spec`` is a :class:`~m2k_bt.contracts.ContractSpec`."""
    check_money("cash", config.cash, most=MAX_CASH)
    check_money("commission", config.commission, allow_zero=True)
    check_money("margin", config.margin)
    check_money("maintenance_margin", config.maintenance_margin)
    check_money("intraday_margin", config.intraday_margin)
    check_money("slippage_ticks", config.slippage_ticks, allow_zero=True)
    if not isinstance(config.spec, ContractSpec):
        raise ConfigError(f"spec must be a ContractSpec, got {config.spec!r}")


def coerce(value, default, what: str):
    """Turn a command-line string into the type of ``default`` (other values pass as they are).

    >>> coerce("3", 1, "fixed sizer parameter 'contracts'")
    3
    """
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
