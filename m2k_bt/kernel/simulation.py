"""The research engine: the pack's built-in strategies simulated by a compiled loop.

:func:`simulate` runs the same backtest as :func:`m2k_bt.engine.cerebro.run_backtest` for the same
:class:`~m2k_bt.engine.cerebro.BacktestConfig`, without cerebro: the indicators are computed once with
numpy (or, for ATR/ADX/RSI, with backtrader's own indicators in one pass), the bar loop is a
numba function (:mod:`m2k_bt.kernel.loop`, compiled once per machine and cached), and the
metrics come from the analyzers' own functions (:func:`~m2k_bt.analyzers.standard.returns_statistics`,
:func:`~m2k_bt.analyzers.standard.trade_statistics`). Parity with cerebro is the product: the trade log
has the same rows (times, sizes, reasons; prices and P&L equal to 1e-6) and the final equity
agrees to the cent; ``tests/test_kernel.py`` checks it on random configurations and data.

What it models: ``SmaCrossover`` (long/short, long-only, ADX filter), ``BollingerReversion``
and ``AdaptiveBollinger`` (exit middle/signal, ddof, RSI filter), ``FixedContracts`` and
``KellySizer`` (window, warm-up, scale, every cap, paper trades), ``M2KCommInfo`` fees and
margins, ``FuturesBroker`` initial-margin rejection (at submission and at the fill),
maintenance-margin calls with liquidation at the next open, negative-equity events, slippage
ticks clipped to the bar, bracket stops/targets (ticks or ATRs) with backtrader's fill rules,
``rth_only``, ``flat_before_close`` and rolls on the feed's ``roll`` marker. Anything else
(see :func:`supported`) is reported as unsupported, with the reason, and runs in cerebro.

>>> ok, why = supported(BacktestConfig(strategy="sma"))
>>> ok, why
(True, '')
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..analyzers.standard import (
    _periods,
    metrics_from,
    returns_statistics,
    trade_statistics,
)
from ..brokers.futures import MarginEvent
from ..contracts import ContractSpec
from ..engine.cerebro import (
    BacktestConfig,
    _check_enough_bars,
    _check_money,
    _sizer,
    collect_warnings,
    comminfo_for,
    resolve_strategy,
    select_bars,
)
from ..errors import ConfigError
from ..indicators.bands import AdaptiveBollingerBands, tick_counts, window_tick_sums
from ..sessions import date2num, num2datetime64, trade_dates64
from ..sizers.kelly import BINDINGS, FixedContracts, KellyDecision, KellySizer
from ..strategies.base import (
    EXIT_REASONS,
    GLOBEX_REOPEN,
    RTH_CLOSE,
    RTH_OPEN,
    AdaptiveBollinger,
    BollingerReversion,
    SmaCrossover,
)
from . import loop

__all__ = [
    "KernelResult",
    "KernelData",
    "KernelUnsupported",
    "KernelDiverged",
    "simulate",
    "simulate_many",
    "supported",
    "prepare",
    "KERNEL_EXIT_REASONS",
    "run_kernel_or_say_why",
    "run_backtest_fast",
]

_MINUTES, _DAYS = 4, 5  # bt.TimeFrame.Minutes, bt.TimeFrame.Days

#: Per-trial signal arrays a KernelData keeps (see ``KernelData._get_signal``).
SIGNALS_KEPT = 8
#: Windows whose tick sums a KernelData keeps (two int64 arrays of n bars each; a window is
#: recomputed in one O(n) pass when it comes back): a search over 100 windows of 1M bars
#: would otherwise hold 1.6 GB.
SUMS_KEPT = 32


def _recent(store: dict, key, make, limit: int):
    """``store[key]``, made if missing; the ``limit`` most recently used entries are kept."""
    value = store.pop(key, None)
    if value is None:
        value = make()
    store[key] = value  # most recent last
    while len(store) > limit:
        del store[next(iter(store))]
    return value

_KINDS = {SmaCrossover: "sma", BollingerReversion: "bollinger", AdaptiveBollinger: "adaptive"}

#: Strategy parameters the kernel models; any other parameter must keep its default.
_BASE_PARAMS = {"long_only", "stop_ticks", "target_ticks", "stop_atr", "target_atr",
                "atr_period", "rth_only", "flat_before_close"}
_BAND_PARAMS = {"devfactor", "ddof", "exit", "rsi_period", "rsi_oversold", "rsi_overbought"}
_KNOWN_PARAMS = {
    SmaCrossover: _BASE_PARAMS | {"fast", "slow", "adx_min", "adx_period"},
    BollingerReversion: _BASE_PARAMS | _BAND_PARAMS | {"period"},
    AdaptiveBollinger: _BASE_PARAMS | _BAND_PARAMS | {"period_high", "period_low",
                                                       "vol_lookback", "vol_threshold"},
}
#: BacktestConfig fields the kernel reads or that do not change the trades.
_KNOWN_FIELDS = {
    "strategy", "params", "sizer", "sizer_params", "spec", "cash", "commission", "margin",
    "maintenance_margin", "intraday_margin", "slippage_ticks", "start", "end", "resample",
    "rth_only", "runonce", "preload", "analyzers", "plot", "seed", "data_path", "data_rows",
    "data_options",  # provenance: how the bars were loaded (already loaded when we run)
}
_SIZER_PARAMS = {
    "fixed": set(FixedContracts.params._getkeys()),
    "kelly": set(KellySizer.params._getkeys()),
}


class KernelUnsupported(ConfigError):
    """The configuration uses something the kernel does not model; run it in cerebro."""


class KernelDiverged(ConfigError):
    """The simulation reached a state the kernel does not model (a partly filled order, a
    partly liquidated position to re-protect); the run must be made in cerebro."""


# ------------------------------------------------------------------------------ support
def _strategy_class(config: BacktestConfig):
    try:
        return resolve_strategy(config.strategy)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - an unknown object: not ours
        return None


def supported(config: BacktestConfig) -> tuple[bool, str]:
    """Whether :func:`simulate` models ``config`` exactly, and if not, why (one line).

    >>> supported(BacktestConfig(sizer="fixed", avoid_events="fomc"))[1]
    "config field avoid_events='fomc' is not modelled by the kernel"
    """
    cls = resolve_strategy(config.strategy)
    if cls not in _KINDS:
        return False, (f"strategy {getattr(cls, '__name__', cls)} is not a built-in strategy "
                       f"(sma, bollinger, adaptive)")
    sizer = str(config.sizer).lower()
    if sizer not in _SIZER_PARAMS:
        return False, f"sizer {config.sizer!r} is not modelled by the kernel (fixed, kelly)"
    extra = set(config.sizer_params) - _SIZER_PARAMS[sizer]
    if extra:
        return False, f"sizer parameter(s) {', '.join(sorted(extra))} not modelled by the kernel"
    defaults = {f.name: f for f in dataclasses.fields(BacktestConfig)}
    for name, f in defaults.items():
        if name in _KNOWN_FIELDS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if getattr(config, name, default) != default:
            return False, f"config field {name}={getattr(config, name)!r} is not modelled by " \
                          f"the kernel"
    values = cls.validate_params(dict(config.params))
    known = _KNOWN_PARAMS[cls]
    base = dict(cls.params._getitems())
    for name, value in values.items():
        if name not in known and value != base.get(name):
            return False, f"{cls.__name__} parameter {name}={value!r} is not modelled by the kernel"
    return True, ""


# ------------------------------------------------------------------------------ data
class KernelData:
    """One selected bar set with everything the kernel derives from it, computed once.

    Holds the price columns, tick counts, bar times and the indicator arrays already built
    (window tick sums by period, SMA signals by (fast, slow), band sides, ATR/ADX/RSI by
    period), so that every trial of a study on the same bars shares them. Made by
    :func:`prepare`; pass it to :func:`simulate` instead of the bars.
    """

    def __init__(self, selected: pd.DataFrame, tick: float, data_report: list) -> None:
        self.bars = selected
        self.tick = float(tick)
        self.data_report = data_report
        self.n = len(selected)
        self.open = selected["open"].to_numpy(dtype="float64")
        self.high = selected["high"].to_numpy(dtype="float64")
        self.low = selected["low"].to_numpy(dtype="float64")
        self.close = selected["close"].to_numpy(dtype="float64")
        roll = selected["roll"].to_numpy() if "roll" in selected.columns else None
        self.roll = (np.asarray(roll, dtype="float64") == 1.0) if roll is not None else \
            np.zeros(self.n, dtype=bool)

        idx = selected.index
        if idx.tz is not None:
            idx = idx.tz_convert("America/New_York").tz_localize(None)
        self.num = date2num(idx)  # backtrader's float times
        self.times = num2datetime64(self.num)  # bar times exactly as backtrader's
        self.tod = (self.times - self.times.astype("datetime64[D]")).astype("int64")  # us
        steps = np.diff(idx.as_unit("ns").asi8)
        spacing = float(np.median(steps)) / 60e9 if len(steps) else None
        self.intraday = spacing is not None and spacing < 1440
        self.compression = max(1, int(round(spacing))) if self.intraday else 1
        self.ct = tick_counts(self.close, tick)
        self._memo: dict = {}  # shared by trials: tick sums by window, ATR/ADX/RSI, windows
        self._signals: dict = {}  # per trial: the last SIGNALS_KEPT signals
        self._sums: dict = {}  # tick sums of the last SUMS_KEPT windows used
        self._per_date = None
        self._dtindex = None

    def per_date(self) -> list[int]:
        """Bars on each CME trade date (for the annualisation rule), computed once."""
        if self._per_date is None:
            _, counts = np.unique(trade_dates64(self.times), return_counts=True)
            self._per_date = counts.tolist()
        return self._per_date

    def dtindex(self) -> pd.DatetimeIndex:
        """The bar times as the equity curve's index (naive New York time), made once."""
        if self._dtindex is None:
            self._dtindex = pd.DatetimeIndex(self.times, name="datetime")
        return self._dtindex

    def intraday_window(self, start: str = "09:30", end: str = "15:45") -> np.ndarray:
        """Bars inside ``FuturesBroker``'s intraday-margin window, by its own rule (fraction
        of the day of backtrader's float time, plus 1e-7 day)."""
        key = ("window", start, end)

        def make():
            from ..rules.margin import day_fraction as _day_fraction

            lo = _day_fraction(_dt.time.fromisoformat(start))
            hi = _day_fraction(_dt.time.fromisoformat(end))
            frac = self.num % 1.0 + 1e-7
            return (lo <= frac) & (frac < hi)
        return self._get(key, make)

    def when(self, i: int) -> _dt.datetime:
        """Bar ``i``'s time as a naive ``datetime``, as backtrader's ``num2date`` gives it."""
        return self.times[i].item()

    def _get(self, key, make):
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = make()
        return value

    def _get_signal(self, key, make):
        """A trial's own signal (one per parameter set, so a study would otherwise keep one
        array of n bars per trial): only the last :data:`SIGNALS_KEPT` are kept."""
        return _recent(self._signals, key, make, SIGNALS_KEPT)

    def sums(self, period: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact tick sums of ``period`` closes (and squares) ending at each bar (0 before)."""
        def make():
            s = np.zeros(self.n, dtype="int64")
            q = np.zeros(self.n, dtype="int64")
            if self.n >= period:
                ws, wq = window_tick_sums(self.ct, period)
                s[period - 1:], q[period - 1:] = ws, wq
            return s, q
        return _recent(self._sums, ("sums", period), make, SUMS_KEPT)

    def sma_signal(self, fast: int, slow: int) -> np.ndarray:
        def make():
            sf, _ = self.sums(fast)
            ss, _ = self.sums(slow)
            return np.where(sf * slow > ss * fast, 1, -1).astype("int64")
        return self._get_signal(("sma", fast, slow), make)

    def band(self, period: int, devfactor: float, ddof: int) -> tuple[np.ndarray, np.ndarray]:
        """(band signal, middle side) per bar for fixed-window bands: signal +1 below the lower
        band, -1 above the upper, else 0; middle side = sign(n x close - sum)."""
        def make():
            s, q = self.sums(period)
            return _band_arrays(self.ct, s, q, np.full(self.n, period, dtype="int64"),
                                devfactor, ddof)
        return self._get_signal(("band", period, float(devfactor), int(ddof)), make)

    def adaptive_window(self, p) -> np.ndarray:
        key = ("adaptive", p["period_high"], p["period_low"], p["vol_lookback"],
               float(p["vol_threshold"]))

        def make():
            need = max(p["vol_lookback"] + 1, p["period_high"], p["period_low"])
            out = np.zeros(self.n, dtype="int64")
            if self.n >= need:
                fake = _Params(period_high=p["period_high"], period_low=p["period_low"],
                               vol_lookback=p["vol_lookback"], vol_threshold=p["vol_threshold"],
                               devfactor=2.0, ddof=1)
                values = AdaptiveBollingerBands._compute(fake, self.close, self.n - need + 1)
                out[need - 1:] = values[3].astype("int64")
            return out
        return self._get(key, make)

    def adaptive_band(self, p) -> tuple[np.ndarray, np.ndarray]:
        key = ("aband", p["period_high"], p["period_low"], p["vol_lookback"],
               float(p["vol_threshold"]), float(p["devfactor"]), int(p["ddof"]))

        def make():
            window = self.adaptive_window(p)
            sh, qh = self.sums(p["period_high"])
            sl, ql = self.sums(p["period_low"])
            high = window == p["period_high"]
            s = np.where(high, sh, sl)
            q = np.where(high, qh, ql)
            w = np.where(window > 0, window, p["period_low"])
            return _band_arrays(self.ct, s, q, w, p["devfactor"], p["ddof"])
        return self._get_signal(key, make)

    def indicator(self, kind: str, period: int) -> tuple[np.ndarray, int]:
        """backtrader's own ATR / ADX / RSI(safediv) values and minimum period, computed once
        in a cerebro pass (runonce) over these bars."""
        key = ("bt", kind, period)
        if key not in self._memo:
            missing = [k for k in self._pending_bt if ("bt", *k) not in self._memo]
            self._probe(sorted(set(missing) | {(kind, period)}))
        return self._memo[key]

    _pending_bt: tuple = ()

    def _probe(self, specs) -> None:
        import backtrader as bt

        from ..feeds.bars import BarsFeed

        class Probe(bt.Strategy):
            def __init__(self):
                self.made = {}
                for kind, period in specs:
                    if kind == "atr":
                        ind = bt.ind.ATR(self.data, period=period)
                    elif kind == "adx":
                        ind = bt.ind.ADX(self.data, period=period)
                    else:
                        ind = bt.ind.RSI(self.data.close, period=period, safediv=True)
                    self.made[(kind, period)] = ind

        cerebro = bt.Cerebro(runonce=True, preload=True, stdstats=False)
        cerebro.adddata(BarsFeed(dataname=self.bars))
        cerebro.addstrategy(Probe)
        strat = cerebro.run()[0]
        for spec, ind in strat.made.items():
            values = np.frombuffer(ind.lines[0].array, dtype="float64", count=self.n).copy() \
                if self.n else np.zeros(0)
            self._memo[("bt", *spec)] = (values, int(ind._minperiod))


class _Params:
    """A stand-in for an indicator's ``self`` holding only ``p`` (for ``_compute``)."""

    def __init__(self, **kw) -> None:
        self.p = type("P", (), kw)


def _band_arrays(ct, s, q, n, devfactor: float, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`m2k_bt.indicators.bands.band_side` and the middle-band side, vectorised, same ops."""
    d = s - n * ct
    spread = (n * (n * q - s * s)).astype("float64")
    lhs = (d * d * (n - ddof)).astype("float64")
    outside = (lhs > (devfactor * devfactor) * spread) & (d != 0)
    side = np.where(outside, np.where(d > 0, -1, 1), 0)
    return (-side).astype("int64"), np.sign(n * ct - s).astype("int64")


def prepare(bars: pd.DataFrame, config: BacktestConfig | None = None) -> KernelData:
    """The bars ``config`` selects (start, end, resample), ready for :func:`simulate`."""
    config = config or BacktestConfig()
    data_report = list(getattr(bars, "attrs", {}).get("report", []) or [])
    selected = select_bars(bars, config)
    return KernelData(selected, float(config.spec.tick_size), data_report)


# ------------------------------------------------------------------------------ result
@dataclass
class KernelResult:
    """What :func:`simulate` produced: the fields of :class:`~m2k_bt.engine.cerebro.BacktestResult`
    (so :func:`m2k_bt.report.summary.write_outputs` takes it as it is) plus the kernel's extras."""

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
    decisions: list = field(default_factory=list)
    order_rejections: dict = field(default_factory=dict)
    rolls: int = 0
    shadow_trades: int = 0
    elapsed: float = 0.0
    data_report: list = field(default_factory=list)
    engine: str = "kernel"
    cerebro: Any = None
    strategy: Any = None


#: Exit reasons the kernel produces, by the loop's reason code (all of ``EXIT_REASONS`` but
#: 'event': event filters are not modelled).
KERNEL_EXIT_REASONS = ("signal", "stop", "target", "session_close", "margin_call", "roll", "end")
assert set(KERNEL_EXIT_REASONS) <= set(EXIT_REASONS)
_REASONS = KERNEL_EXIT_REASONS


def _time_us(t: _dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def simulate(bars, config: BacktestConfig | None = None) -> KernelResult:
    """Run ``config`` on ``bars`` (a DataFrame as for ``run_backtest``, or a
    :class:`KernelData` from :func:`prepare`) in the kernel.

    Raises :class:`KernelUnsupported` for a configuration :func:`supported` refuses (run it in
    cerebro), and every error ``run_backtest`` raises for a bad configuration.
    """
    config = config or BacktestConfig()
    _check_money("cash", config.cash)
    _check_money("commission", config.commission, allow_zero=True)
    _check_money("margin", config.margin)
    _check_money("maintenance_margin", config.maintenance_margin)
    _check_money("intraday_margin", config.intraday_margin)
    _check_money("slippage_ticks", config.slippage_ticks, allow_zero=True)
    if not isinstance(config.spec, ContractSpec):
        raise ConfigError(f"spec must be a ContractSpec, got {config.spec!r}")
    ok, why = supported(config)
    if not ok:
        raise KernelUnsupported(f"the kernel cannot run this configuration: {why}; use cerebro")
    cls = resolve_strategy(config.strategy)
    params = dict(config.params)
    if config.rth_only:
        params["rth_only"] = True
    p = cls.validate_params(params)
    sizer_cls, sp = _sizer(config)
    sp = {**dict(sizer_cls.params._getitems()), **sp}
    if sizer_cls is FixedContracts:
        FixedContracts.__init__(_Params(**sp))  # the sizer's own checks
    else:
        _check_kelly(sp)
    ci = comminfo_for(config)
    data = bars if isinstance(bars, KernelData) else prepare(bars, config)
    _check_enough_bars(data.bars, config)  # the runner's error for a too short selection
    if abs(data.tick - float(ci.p.tick_size)) > 1e-12:
        data = KernelData(data.bars, float(ci.p.tick_size), data.data_report)
    t0 = time.perf_counter()
    n = data.n
    tick = float(ci.p.tick_size)
    mult = float(ci.p.mult)

    kind = _KINDS[cls]
    minperiods = [1]
    if kind == "sma":
        sig = data.sma_signal(p["fast"], p["slow"])
        mid = np.zeros(n, dtype="int64")
        minperiods.append(p["slow"])
    elif kind == "bollinger":
        sig, mid = data.band(p["period"], p["devfactor"], p["ddof"])
        minperiods.append(p["period"])
    else:
        sig, mid = data.adaptive_band(p)
        minperiods.append(max(p["vol_lookback"] + 1, p["period_high"], p["period_low"]))
    allow_long = np.ones(n, dtype=bool)
    allow_short = np.ones(n, dtype=bool)
    wants = []
    if p["stop_atr"] is not None or p["target_atr"] is not None:
        wants.append(("atr", p["atr_period"]))
    if kind == "sma" and p["adx_min"] is not None:
        wants.append(("adx", p["adx_period"]))
    if kind != "sma" and (p["rsi_oversold"] is not None or p["rsi_overbought"] is not None):
        wants.append(("rsi", p["rsi_period"]))
    data._pending_bt = tuple(wants)
    atr = None
    for what, period in wants:
        values, mp = data.indicator(what, period)
        minperiods.append(mp)
        if what == "atr":
            atr = values
        elif what == "adx":
            allow_long = allow_short = values >= p["adx_min"]
        else:
            low, high = p["rsi_oversold"], p["rsi_overbought"]
            allow_long = values < low if low is not None else np.ones(n, dtype=bool)
            allow_short = values > high if high is not None else np.ones(n, dtype=bool)
    first = max(minperiods) - 1

    stop_n = _distance_ticks(p["stop_ticks"], p["stop_atr"], atr, tick, n)
    target_n = _distance_ticks(p["target_ticks"], p["target_atr"], atr, tick, n)
    rth = (data.tod >= _time_us(RTH_OPEN)) & (data.tod < _time_us(RTH_CLOSE))
    flat = p["flat_before_close"]
    if flat:
        hh, mm = (int(x) for x in flat.strip().split(":"))
        flatw = (data.tod >= _time_us(_dt.time(hh, mm))) & (data.tod < _time_us(GLOBEX_REOPEN))
    else:
        flatw = np.zeros(n, dtype=bool)

    decimals = max(0, -int(np.floor(np.log10(tick))) + 2)
    st = float(config.slippage_ticks or 0.0)
    ip = np.zeros(loop.N_IP, dtype="int64")
    ip[loop.IP_KIND] = 0 if kind == "sma" else 1
    ip[loop.IP_EXIT_SIGNAL] = int(kind != "sma" and p["exit"] == "signal")
    ip[loop.IP_LONG_ONLY] = int(bool(p["long_only"]))
    ip[loop.IP_FIRST] = first
    ip[loop.IP_SIZER] = 0 if sizer_cls is FixedContracts else 1
    ip[loop.IP_FIXED] = int(sp.get("contracts", 1))
    ip[loop.IP_LOOKBACK] = int(sp.get("lookback", 1))
    ip[loop.IP_MIN_TRADES] = int(sp.get("min_trades", 1))
    ip[loop.IP_WARMUP] = int(sp.get("warmup_contracts", 0))
    ip[loop.IP_MAXC] = int(sp.get("max_contracts", 1))
    ip[loop.IP_PAPER] = int(bool(sp.get("paper_trades", True)))
    ip[loop.IP_RTH] = int(bool(p["rth_only"]))
    ip[loop.IP_FLAT] = int(bool(flat))
    ip[loop.IP_LIQUIDATE] = 1
    fp = np.zeros(loop.N_FP, dtype="float64")
    fp[loop.FP_CASH] = float(config.cash)
    fp[loop.FP_COMM] = float(ci.p.commission)
    fp[loop.FP_MULT] = mult
    fp[loop.FP_MARGIN] = float(ci.p.margin)
    fp[loop.FP_MAINT] = float(ci.p.maintenance_margin)
    fp[loop.FP_TICK] = tick
    fp[loop.FP_SLIP] = st * tick if st else 0.0
    fp[loop.FP_SHADOW_SLIP] = st * tick * mult
    fp[loop.FP_SCALE] = float(sp.get("kelly_scale", 0.5))
    fp[loop.FP_MAXFRAC] = float(sp.get("max_fraction", 0.2))
    fp[loop.FP_MAXEXP] = float(sp.get("max_exposure", 2.0))
    fp[loop.FP_P10] = 10.0 ** decimals

    im = ci.p.intraday_margin
    fp[loop.FP_INTRADAY] = float(im) if im is not None else np.nan
    inwin = data.intraday_window()
    value, cash, pos, trades, dec, mev, counters, costs, active = loop.run_loop(
        data.open, data.high, data.low, data.close, data.ct, sig, mid, allow_long, allow_short,
        rth, flatw, data.roll, stop_n, target_n, inwin, ip, fp)
    if counters[4]:
        what = {1: "a partly executed order", 2: "re-protecting a partly liquidated position",
                3: "too many bracket groups"}[int(counters[4])]
        raise KernelDiverged(f"the kernel reached {what}, which it does not model; run this "
                             f"configuration in cerebro")
    elapsed = time.perf_counter() - t0
    return _result(config, data, ci, value, cash, pos, trades, dec, mev, counters, costs,
                   active, elapsed)


def _check_kelly(sp: dict) -> None:
    fake = _Params(**sp)
    try:
        KellySizer.__init__(fake)
    except AttributeError:
        pass  # the checks ran before the sizer set its own attributes


def _distance_ticks(ticks, atrs, atr, tick: float, n: int) -> np.ndarray:
    """Whole ticks (>= 1) of a stop or target distance on each bar, as
    ``M2KStrategy._distance``; -1 where there is none."""
    if ticks is not None:
        points = np.full(n, ticks * tick)
    elif atrs is not None and atr is not None:
        points = atrs * atr
    else:
        return np.full(n, -1, dtype="int64")
    with np.errstate(invalid="ignore"):
        k = np.floor(points / tick + 1e-9)
    k = np.where(np.isnan(k), 1, k)
    return np.maximum(1, k).astype("int64")


def _none(x: float):
    return None if x != x else float(x)


def _trade_rows(trades, data: KernelData, config, tick: float, tick_value: float) -> tuple:
    """The trade log (``trades.csv`` rows) and the closed trades ``trade_statistics`` reads,
    from the loop's trade array: one column at a time as plain Python numbers (a numpy scalar
    per cell costs more than the backtest), the same values and roundings as the analyzers."""
    if not len(trades):
        return [], []
    col = trades.T
    entry_i = col[loop.T_ENTRY_I].astype("int64")
    exit_i = col[loop.T_EXIT_I].astype("int64")
    entry_dt = data.times[entry_i].tolist()  # datetime64[us] -> datetime, as .item() gives
    exit_dt = data.times[exit_i].tolist()
    dirs = col[loop.T_DIR].astype("int64").tolist()
    contracts = col[loop.T_CONTRACTS].tolist()
    entry, exit_ = col[loop.T_ENTRY_PX].tolist(), col[loop.T_EXIT_PX].tolist()
    gross, comm, net = (col[loop.T_GROSS].tolist(), col[loop.T_COMM].tolist(),
                        col[loop.T_NET].tolist())
    bars = col[loop.T_BARS].astype("int64").tolist()
    reasons = [_REASONS[k] for k in col[loop.T_REASON].astype("int64").tolist()]
    kp, kb, kf = ([None if x != x else x for x in col[j].tolist()]
                  for j in (loop.T_KP, loop.T_KB, loop.T_KF))
    ids = col[loop.T_ID].astype("int64").tolist()
    root = config.spec.root
    rows, closed = [], []
    for k in range(len(ids)):
        e, x, d, c = entry[k], exit_[k], dirs[k], contracts[k]
        rows.append({
            "entry_dt": entry_dt[k],
            "exit_dt": exit_dt[k],
            "direction": "long" if d > 0 else "short",
            "contracts": c,
            "entry_price": e,
            "exit_price": x,
            "gross_pnl": gross[k],
            "commission": comm[k],
            "net_pnl": net[k],
            "ticks": round((x - e) * d / tick, 6),
            "bars_held": bars[k],
            "exit_reason": reasons[k],
            "kelly_p": kp[k],
            "kelly_b": kb[k],
            "kelly_f": kf[k],
            "trade_id": ids[k],
        })
        if reasons[k] != "end":
            closed.append({
                "ref": len(closed) + 1,
                "data_name": root,
                "entry_dt": entry_dt[k],
                "exit_dt": exit_dt[k],
                "direction": "long" if d > 0 else "short",
                "contracts": c,
                "entry_price": round(e, 10),
                "exit_price": round(x, 10),
                "gross_pnl": round(gross[k], 10),
                "commission": round(comm[k], 10),
                "net_pnl": round(net[k], 10),
                "ticks": round(gross[k] / (c * tick_value), 6),
                "net_ticks": round(net[k] / (c * tick_value), 6),
                "bars_held": bars[k],
            })
    return rows, closed


def _result(config, data: KernelData, ci, value, cash, pos, trades, dec, mev, counters, costs,
            active, elapsed) -> KernelResult:
    tick = float(ci.p.tick_size)
    mult = float(ci.p.mult)
    tick_value = round(tick * mult, 10)
    times = data.times
    when = data.when
    rows, closed = _trade_rows(trades, data, config, tick, tick_value)
    tstats = trade_statistics(closed)
    tstats["open_trades"] = int(bool(rows) and rows[-1]["exit_reason"] == "end")
    start_value = float(config.cash)
    per_date = data.per_date()
    timeframe = _MINUTES if data.intraday else _DAYS
    periods = _periods(timeframe, data.compression, per_date)
    rstats = returns_statistics(start_value, value, periods)
    rstats["trade_dates"] = len(per_date)
    peak = np.maximum.accumulate(value) if len(value) else value
    np.maximum(peak, start_value, out=peak)
    drawdown = peak - value
    positive = peak > 0
    pct = np.divide(drawdown, peak, out=np.zeros_like(drawdown), where=positive) * 100.0
    pct[~positive] = np.nan
    equity_cols = {
        "datetime": times,
        "value": value,
        "cash": cash,
        "position": pos.astype("int64"),
        "close": data.close,
        "drawdown": drawdown,
        "drawdown_pct": pct,
    }
    analysis = {"returns": rstats, "trades": tstats, "equity": equity_cols}
    equity = pd.DataFrame({k: v for k, v in equity_cols.items() if k != "datetime"},
                          index=data.dtindex(), copy=False)

    events = []
    for r in mev:
        i, k = int(r[0]), int(r[1])
        size = int(r[4])
        if k == 0:
            events.append(MarginEvent(dt=when(i), kind="margin_call", equity=float(r[2]),
                                      requirement=float(r[3]), contracts=size,
                                      data_name=config.spec.root,
                                      action=f"liquidate {abs(size)} contracts at next open"))
        elif k == 2:
            allowed = max(0, int(np.floor(max(float(r[2]), 0.0) / float(ci.p.margin))))
            events.append(MarginEvent(
                dt=when(i), kind="intraday_cutback", equity=float(r[2]),
                requirement=float(r[3]), contracts=size, data_name=config.spec.root,
                action=f"cut back {abs(size) - allowed} contracts at next open (equity "
                       f"supports {allowed})"))
        else:
            events.append(MarginEvent(dt=when(i), kind="negative_equity", equity=float(r[2]),
                                      requirement=0.0, contracts=size,
                                      data_name=config.spec.root, action="equity below zero"))
    decisions = [
        KellyDecision(dt=when(int(d[0])), p=_none(d[1]), b=_none(d[2]), f_star=_none(d[3]),
                      f_used=_none(d[4]), equity=float(d[5]), risk_per_contract=_none(d[6]),
                      contracts=int(d[7]), binding=BINDINGS[int(d[8])], trades_used=int(d[9]))
        for d in dec
    ]
    if config.analyzers:
        final = float(value[-1]) if len(value) else start_value
        analysis["costs"] = _costs(costs, final - start_value)
        analysis["margin"] = _margin(data, ci, value, pos, events, active)
        analysis["kelly"] = _kelly_log(decisions, config)
        analysis = {k: analysis[k] for k in ("trades", "costs", "margin", "kelly", "returns",
                                              "equity")}
    rejections = {name: int(counters[j]) for name, j in (("Margin", 1), ("Rejected", 2),
                                                         ("Canceled", 3)) if counters[j]}
    from types import SimpleNamespace

    warnings = collect_warnings(SimpleNamespace(order_rejections=rejections),
                                SimpleNamespace(margin_events=events), data.data_report)
    final_value = float(value[-1]) if len(value) else start_value
    return KernelResult(
        config=config,
        start_value=start_value,
        final_value=final_value,
        bars=data.n,
        first_dt=data.bars.index[0],
        last_dt=data.bars.index[-1],
        analysis=analysis,
        metrics=metrics_from(analysis),
        trades=rows,
        equity=equity,
        margin_events=events,
        warnings=warnings,
        decisions=decisions,
        order_rejections=rejections,
        rolls=int(counters[0]),
        shadow_trades=int(counters[5]),
        elapsed=elapsed,
        data_report=data.data_report,
    )


def simulate_many(bars, configs) -> list[KernelResult]:
    """:func:`simulate` for many configurations on the same bars, sharing the indicators.

    Configurations that select the same bars (``start``, ``end``, ``resample``) share one
    :class:`KernelData`, so an SMA or band of a given window is computed once for all of them.
    """
    cache: dict = {}
    out = []
    for config in configs:
        if isinstance(bars, KernelData):
            data = bars
        else:
            key = (config.start, config.end, config.resample, float(config.spec.tick_size))
            data = cache.get(key)
            if data is None:
                data = cache[key] = prepare(bars, config)
        out.append(simulate(data, config))
    return out


def _costs(costs, change: float) -> dict:
    """:class:`~m2k_bt.analyzers.standard.CostAnalyzer`'s keys from the loop's fill sums."""
    from ..analyzers.standard import _div, _r

    fills, c, commission, slippage, slip_ticks = (float(x) for x in costs)
    total = commission + slippage
    gross = change + total

    def pct(x: float):
        return _r(100.0 * x / gross, 6) if gross > 0 else None

    return {
        "fills": int(fills),
        "contracts_traded": c,
        "commission": _r(commission),
        "commission_per_contract": _r(_div(commission, c)),
        "slippage": _r(slippage),
        "slippage_per_contract": _r(_div(slippage, c)),
        "slippage_ticks_per_contract": _r(_div(slip_ticks, c), 6),
        "total_costs": _r(total),
        "costs_per_contract": _r(_div(total, c)),
        "gross_profit": _r(gross),
        "commission_pct_of_gross": pct(commission),
        "slippage_pct_of_gross": pct(slippage),
        "costs_pct_of_gross": pct(total),
        "unpriced_fills": 0,
    }


def _margin(data: KernelData, ci, value, pos, events, active) -> dict:
    """:class:`~m2k_bt.analyzers.standard.MarginExposure`'s keys, from the equity curve."""
    from collections import Counter

    from ..analyzers.standard import _div, _r

    n = len(value)
    size = np.abs(pos)
    market = size != 0
    idx = np.flatnonzero(market)
    im = ci.p.intraday_margin
    on = active[idx] if im is not None else np.zeros(len(idx), dtype=bool)
    init = size[idx] * np.where(on, float(im or 0.0), float(ci.p.margin))
    maint = size[idx] * np.where(on, float(im or 0.0), float(ci.p.maintenance_margin))
    notional = size[idx] * data.close[idx] * float(ci.p.mult)
    equity = value[idx]
    out_low = low_i = None
    if len(idx):
        excess = equity - maint
        j = int(np.argmin(excess))
        out_low, low_i = float(excess[j]), int(idx[j])
    flat = np.flatnonzero(~market)
    if len(flat):
        j = int(np.argmin(value[flat]))
        v, i = float(value[flat][j]), int(flat[j])
        if out_low is None or v < out_low or (v == out_low and i < low_i):
            out_low, low_i = v, i
    peak_margin = peak_i = peak_pct = peak_notional = peak_lev = None
    if len(idx):
        j = int(np.argmax(init))
        peak_margin, peak_i = float(init[j]), int(idx[j])
        peak_notional = max(0.0, float(notional.max()))
        pos_eq = equity > 0
        if pos_eq.any():
            peak_pct = max(0.0, float((100.0 * init[pos_eq] / equity[pos_eq]).max()))
            peak_lev = max(0.0, float((notional[pos_eq] / equity[pos_eq]).max()))
    dicts = [dataclasses.asdict(e) for e in events]
    kinds = Counter(e["kind"] for e in dicts)
    in_market = len(idx)
    return {
        "peak_initial_margin": _r(peak_margin),
        "peak_initial_margin_dt": data.when(peak_i) if peak_i is not None else None,
        "peak_margin_pct_of_equity": _r(peak_pct, 6),
        "lowest_excess_equity": _r(out_low),
        "lowest_excess_equity_dt": data.when(low_i) if low_i is not None else None,
        "peak_notional": _r(peak_notional),
        "peak_leverage": _r(peak_lev, 6),
        "peak_contracts": max(0.0, float(size.max())) if n else 0.0,
        "bars": n,
        "bars_in_market": in_market,
        "time_in_market_pct": _r(_div(100.0 * in_market, n), 6),
        "nonpositive_equity_bars": int((equity <= 0).sum()),
        "margin_calls": kinds.get("margin_call", 0),
        "intraday_cutbacks": kinds.get("intraday_cutback", 0),
        "negative_equity_events": kinds.get("negative_equity", 0),
        "margin_events": dicts,
    }


def _kelly_log(decisions, config) -> dict:
    """:class:`~m2k_bt.analyzers.standard.KellyLog`'s keys from the sizer decisions."""
    from collections import Counter

    kelly = str(config.sizer).lower() == "kelly"
    rows = [dataclasses.asdict(d) for d in decisions]
    f_used = [d["f_used"] for d in rows if d.get("f_used") is not None]
    sizes = [d["contracts"] for d in rows if d.get("contracts") is not None]
    return {
        "sizer": "KellySizer" if kelly else "FixedContracts",
        "available": kelly,
        "decisions": rows,
        "count": len(rows),
        "zero_size": sum(1 for s in sizes if s == 0),
        "mean_f_used": sum(f_used) / len(f_used) if f_used else None,
        "last_f_used": f_used[-1] if f_used else None,
        "max_contracts": max(sizes) if sizes else None,
        "binding": dict(Counter(str(d.get("binding")) for d in rows if "binding" in d)),
    }


def run_kernel_or_say_why(bars, config: BacktestConfig) -> KernelResult | None:
    """:func:`simulate` when the kernel models ``config``; else ``None`` after one line on
    stderr saying why (the caller then runs cerebro). Used by ``run_backtest.py --engine
    kernel``."""
    import sys

    ok, why = supported(config)
    if ok:
        try:
            return simulate(bars, config)
        except KernelDiverged as exc:
            why = str(exc)
    print(f"note: running in cerebro: {why}", file=sys.stderr)
    return None


#: The bars object the kernel's indicators are kept for, and its KernelData by selection key.
#: One bars object at a time: a study uses one; walk-forward's folds come one after another; a
#: KernelData keeps its bars alive, so a cache keyed by more objects would never let them go.
_DATA_CACHE: dict = {"bars": None, "data": {}}


def _cached_data(bars: pd.DataFrame, config: BacktestConfig) -> KernelData:
    if _DATA_CACHE["bars"] is not bars:
        _DATA_CACHE["bars"], _DATA_CACHE["data"] = bars, {}
    key = (config.start, config.end, config.resample, float(config.spec.tick_size))
    data = _DATA_CACHE["data"].get(key)
    if data is None:
        data = _DATA_CACHE["data"][key] = prepare(bars, config)
    return data


def run_backtest_fast(bars: pd.DataFrame, config: BacktestConfig | None = None,
                      progress=None):
    """``run_backtest`` through the kernel where :func:`supported` says so, else cerebro.

    A drop-in for :func:`m2k_bt.engine.cerebro.run_backtest` (same signature, a result with the same
    fields), importable by name, e.g. as ``optimize(..., run_backtest=run_backtest_fast)``.
    Indicators are kept per bars object (while it lives) and bar selection, so the trials of a
    study on the same bars share them."""
    from ..engine.cerebro import run_backtest

    config = config or BacktestConfig()
    if supported(config)[0]:
        try:
            return simulate(_cached_data(bars, config), config)
        except KernelDiverged:
            pass
    return run_backtest(bars, config, progress=progress)
