"""The research engine: the pack's built-in strategies simulated by a compiled loop.

:func:`simulate` runs the same backtest as :func:`m2k_bt.engine.cerebro.run_backtest` for the
same :class:`~m2k_bt.engine.config.BacktestConfig` (or its :class:`~m2k_bt.engine.plan.Plan`),
without cerebro: the indicators are computed once with numpy (or, for ATR/ADX/RSI, with
backtrader's own indicators in one pass; :mod:`m2k_bt.kernel.data`), the bar loop is a numba
function (:mod:`m2k_bt.kernel.loop`, compiled once per machine and cached), and the result is
made from the loop's arrays (:mod:`m2k_bt.kernel.analysis`) by the engine's own builder, the
metrics by the analyzers' own functions. Parity with cerebro is the product: the trade log has
the same rows (times, sizes, reasons; prices and P&L to the last bit, money being integer cents
in both engines, see :mod:`m2k_bt.rules.money`) and the final equity agrees to the cent;
``tests/test_kernel.py`` and ``tests/test_exact_parity.py`` check it on random configurations
and data.
What it models: every signal strategy (:mod:`m2k_bt.strategies.signals`: directions, exit
masks, entry filters, stop and target distances, through :mod:`m2k_bt.kernel.directions`),
``SmaCrossover`` (long/short, long-only, ADX filter), ``BollingerReversion``
and ``AdaptiveBollinger`` (exit middle/signal, ddof, RSI filter) and subclasses that override
none of their methods, ``FixedContracts`` and
``KellySizer`` (window, warm-up, scale, every cap, paper trades), ``M2KCommInfo`` fees and
margins, ``FuturesBroker`` initial-margin rejection (at submission and at the fill),
maintenance-margin calls with liquidation at the next open, negative-equity events, slippage
ticks clipped to the bar, bracket stops/targets (ticks or ATRs) with backtrader's fill rules,
``rth_only``, ``flat_before_close``, rolls on the feed's ``roll`` marker, event windows
(``avoid_events``, ``flat_before_event``) and the external-series filter (``signal_min``/
``signal_max``; :mod:`m2k_bt.kernel.filters`). Anything else (a per-bar strategy of one's own,
see :func:`supported`) is reported as unsupported, with the reason, and runs in cerebro.

>>> ok, why = supported(BacktestConfig(strategy="sma"))
>>> ok, why
(True, '')
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import gc
import time

import numpy as np
import pandas as pd
from numba import njit

from ..engine import BacktestConfig, BacktestResult, Plan, check_enough_bars, resolve
from ..engine.cerebro import run_backtest
from ..errors import ConfigError
from ..sessions import GLOBEX_REOPEN, RTH_END, RTH_START
from ..sizers.kelly import FixedContracts, KellySizer, exposure_ratio
from ..strategies import resolve_strategy
from . import loop
from .analysis import KERNEL_EXIT_REASONS, kernel_result
from .data import SIGNALS_KEPT, SUMS_BYTES, SUMS_KEPT, KernelData, ParamsStandIn, prepare
from .directions import directions, strategy_kind
from .figures import block_figures, daily_rows, figures_from
from .filters import filters

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
    "SIGNALS_KEPT",
    "SUMS_KEPT",
    "SUMS_BYTES",
    "run_kernel_or_say_why",
    "run_backtest_fast",
    "run_figures_fast",
    "run_figures_many",
    "shared_bars",
]

#: A kernel run's result: a :class:`~m2k_bt.engine.result.BacktestResult` with ``engine`` set
#: to ``"kernel"`` and the kernel's extras in ``kernel`` (the name of 0.1's own class).
KernelResult = BacktestResult

#: Strategy parameters the kernel models; any other parameter must keep its default.
_BASE_PARAMS = {"long_only", "stop_ticks", "target_ticks", "stop_atr", "target_atr",
                "atr_period", "rth_only", "flat_before_close", "avoid_events", "event_before",
                "event_after", "flat_before_event", "event_calendar", "signal_min",
                "signal_max"}
_BAND_PARAMS = {"devfactor", "ddof", "exit", "rsi_period", "rsi_oversold", "rsi_overbought"}
_KNOWN_PARAMS = {
    "sma": _BASE_PARAMS | {"fast", "slow", "adx_min", "adx_period"},
    "bollinger": _BASE_PARAMS | _BAND_PARAMS | {"period"},
    "adaptive": _BASE_PARAMS | _BAND_PARAMS | {"period_high", "period_low", "vol_lookback",
                                               "vol_threshold"},
    "signal": _BASE_PARAMS,
}
#: BacktestConfig fields the kernel reads or that do not change the trades.
_KNOWN_FIELDS = {
    "strategy", "params", "sizer", "sizer_params", "spec", "cash", "commission", "margin",
    "maintenance_margin", "intraday_margin", "slippage_ticks", "start", "end", "resample",
    "rth_only", "runonce", "preload", "analyzers", "plot", "seed", "data_path", "data_rows",
    "data_options",  # provenance: how the bars were loaded (already loaded when we run)
    "avoid_events", "event_before", "event_after", "flat_before_event", "events", "signal",
    "signal_min", "signal_max", "signal_max_age",  # kernel.filters
}
_SIZER_PARAMS = {
    "fixed": set(FixedContracts.params._getkeys()),
    "kelly": set(KellySizer.params._getkeys()),
}


class KernelUnsupported(ConfigError):
    """The configuration uses something the kernel does not model; run it in cerebro."""


class KernelDiverged(ConfigError):
    """The simulation reached a state the kernel does not model (more bracket groups than it
    holds); the run must be made in cerebro."""


# ------------------------------------------------------------------------------ support
def supported(config: BacktestConfig | Plan) -> tuple[bool, str]:
    """Whether :func:`simulate` models ``config`` (or its plan) exactly, and if not, why (one
    line).

    >>> supported(BacktestConfig(sizer="fixed", sizer_params={"contracts": 2}))
    (True, '')
    >>> supported(BacktestConfig(sizer="fixed", avoid_events="fomc", signal_min=None))
    (True, '')
    """
    plan = config if isinstance(config, Plan) else None
    if plan is not None:
        config, cls = plan.config, plan.strategy_cls
    else:
        cls = resolve_strategy(config.strategy)
    kind, why = strategy_kind(cls)
    if kind is None:
        return False, why
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
    values = plan.params if plan is not None else cls.validate_params(dict(config.params))
    known = _KNOWN_PARAMS[kind] | set(getattr(cls, "signal_params", ())) | {"lookahead_check"}
    base = dict(cls.params._getitems())
    for name, value in values.items():
        if name not in known and value != base.get(name):
            return False, f"{cls.__name__} parameter {name}={value!r} is not modelled by the kernel"
    return True, ""




# ------------------------------------------------------------------------------ run
def _time_us(t: _dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def simulate(bars, config: BacktestConfig | Plan | None = None) -> BacktestResult:
    """Run ``config`` (or its plan) on ``bars`` (a DataFrame as for ``run_backtest``, or a
    :class:`KernelData` from :func:`prepare`) in the kernel.

    Raises :class:`KernelUnsupported` for a configuration :func:`supported` refuses (run it in
    cerebro), and every error ``run_backtest`` raises for a bad configuration.
    """
    with _no_collection():
        run = _run(bars, config)
        return kernel_result(run.plan, run.data, *run.out[:9], run.elapsed, run.lookahead,
                             run.gates.report(run.out[9]), run.indicators)


@contextlib.contextmanager
def _no_collection():
    """Python's cyclic garbage collector paused for the block (and resumed as it was): a
    result's trade log is thousands of dicts, and each 700 of them would otherwise start a
    collection that walks the young objects (about a tenth of :func:`simulate` on 1M bars).
    Only collection waits: what the block drops is freed by reference counting as always,
    and a cycle it leaves (if any) goes at the first collection after it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclasses.dataclass
class _Run:
    """One run of the loop: its plan, data, its signal's look-ahead check and indicators
    (``lookahead``, ``indicators``), filters (``gates``), the loop's output arrays (``out``,
    as :func:`m2k_bt.kernel.loop.run_loop` returns them) and the time it took. The signal's
    per-bar arrays are not kept: nothing reads them after the loop."""

    plan: Plan
    data: KernelData
    lookahead: object
    indicators: object
    gates: object
    out: tuple
    elapsed: float


def _run(bars, config) -> _Run:
    """Check ``config``, build the loop's inputs and run it (:func:`simulate`; a study
    trial's figures run the same inputs, :func:`_inputs`, in :func:`run_figures_many`).

    Bars given as a DataFrame make data of this run's own: its kept tick sums and signal
    (for a later run on the same data) are dropped after the loop, so that they are not held
    while the result is built (16-20 bytes a bar less at the peak)."""
    ready = _inputs(bars, config)
    t0 = time.perf_counter()
    out = loop.run_loop(*ready.args)
    _check_diverged(out[6][4])
    elapsed = ready.prep + time.perf_counter() - t0
    if not isinstance(bars, KernelData):
        ready.data.forget_signals()
    return _Run(ready.plan, ready.data, ready.way.lookahead, ready.way.indicators, ready.gates,
                out, elapsed)


def _check_diverged(code) -> None:
    """Raise :class:`KernelDiverged` for the loop's divergence counter ``code`` (0: none)."""
    if code:
        what = {2: "re-protecting a partly liquidated position",
                3: "too many bracket groups"}[int(code)]
        raise KernelDiverged(f"the kernel reached {what}, which it does not model; run this "
                             f"configuration in cerebro")


@dataclasses.dataclass
class _Inputs:
    """What :func:`m2k_bt.kernel.loop.run_loop` is called with (``args``, in its order) for one
    configuration, with the plan, data, signal and filters they came from and the seconds
    spent making them after the checks (``prep``)."""

    plan: Plan
    data: KernelData
    way: object
    gates: object
    args: tuple
    prep: float


def _inputs(bars, config, checked: bool = False) -> _Inputs:
    """Check ``config`` (unless ``checked``: :func:`supported` already said yes to this plan)
    and build the loop's inputs for it on ``bars``."""
    plan = resolve(config)
    ok, why = (True, "") if checked else supported(plan)
    if not ok:
        raise KernelUnsupported(f"the kernel cannot run this configuration: {why}; use cerebro")
    config, cls, p, ci = plan.config, plan.strategy_cls, plan.params, plan.comminfo
    sizer_cls = plan.sizer_cls
    sp = {**dict(sizer_cls.params._getitems()), **plan.sizer_params}
    _check_sizer(sizer_cls, sp)
    data = bars if isinstance(bars, KernelData) else prepare(bars, plan)
    check_enough_bars(data.bars, plan)  # the runner's error for a too short selection
    if abs(data.tick - float(ci.p.tick_size)) > 1e-12:
        data = KernelData(data.bars, float(ci.p.tick_size), data.data_report)
    t0 = time.perf_counter()
    n = data.n
    tick = float(ci.p.tick_size)
    mult = float(ci.p.mult)

    kind, _ = strategy_kind(cls)
    wants = []
    if p["stop_atr"] is not None or p["target_atr"] is not None:
        wants.append(("atr", p["atr_period"]))
    if kind == "sma" and p["adx_min"] is not None:
        wants.append(("adx", p["adx_period"]))
    if kind in ("bollinger", "adaptive") and (p["rsi_oversold"] is not None
                                              or p["rsi_overbought"] is not None):
        wants.append(("rsi", p["rsi_period"]))
    data._pending_bt = tuple(wants)  # one backtrader pass for all of them
    way = directions(kind, cls, p, data, tick)
    first = way.first
    atr = None
    if wants and wants[0][0] == "atr":
        atr, mp = data.indicator("atr", p["atr_period"])
        first = max(first, mp - 1)
    first = min(first, n)
    # the bar cerebro first calls next() on (a signal strategy's is before its first opinion)
    next_first = first if kind != "signal" else (mp - 1 if atr is not None else 0)
    gates = filters(plan, data, min(next_first, n))

    none = data.minus_ones()  # no distance (read only)
    stop_n = _distance_ticks(p["stop_ticks"], p["stop_atr"], atr, tick, n, way.stop_pts, none)
    target_n = _distance_ticks(p["target_ticks"], p["target_atr"], atr, tick, n,
                               way.target_pts, none)
    no_bar = data._get(("flat",), lambda: np.zeros(n, dtype=bool))  # shared, read only
    # the loop reads the RTH mask only for rth_only (else one shared array of False)
    rth = data._get(("rth",), lambda: _between(data, RTH_START, RTH_END)) \
        if p["rth_only"] else no_bar
    flat = p["flat_before_close"]
    if flat:
        hh, mm = (int(x) for x in flat.strip().split(":"))
        flatw = data._get(("flat", hh, mm),
                          lambda: _between(data, _dt.time(hh, mm), GLOBEX_REOPEN))
    else:
        flatw = no_bar

    decimals = max(0, -int(np.floor(np.log10(tick))) + 2)
    st = float(config.slippage_ticks or 0.0)
    ip = np.zeros(loop.N_IP, dtype="int64")
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
    ip[loop.IP_EXP_NUM], ip[loop.IP_EXP_DEN] = exposure_ratio(sp.get("max_exposure", 2.0))
    ip[loop.IP_EVENTS] = int(gates.gate is not None)
    ip[loop.IP_FLAT_EVENT] = int(bool(p["flat_before_event"]))
    ip[loop.IP_EXTERNAL] = int(gates.external)
    fp = np.zeros(loop.N_FP, dtype="float64")
    fp[loop.FP_CASH] = float(config.cash)
    fp[loop.FP_COMM] = float(ci.p.commission)
    fp[loop.FP_MULT] = mult
    fp[loop.FP_MARGIN] = float(ci.p.margin)
    fp[loop.FP_MAINT] = float(ci.p.maintenance_margin)
    fp[loop.FP_TICK] = tick
    fp[loop.FP_SLIP] = st  # ticks; the loop makes them cents (rules.prices.slip_cents)
    fp[loop.FP_SCALE] = float(sp.get("kelly_scale", 0.5))
    fp[loop.FP_MAXFRAC] = float(sp.get("max_fraction", 0.2))
    fp[loop.FP_P10] = 10.0 ** decimals

    im = ci.p.intraday_margin
    fp[loop.FP_INTRADAY] = float(im) if im is not None else np.nan
    inwin = data.intraday_window()
    args = (data.open, data.high, data.low, data.close, data.ct, way.sig, way.exit_long,
            way.exit_short, way.allow_long, way.allow_short, rth, flatw, data.roll, stop_n,
            target_n, inwin, gates.ev, gates.ext_ok, ip, fp)
    return _Inputs(plan, data, way, gates, args, time.perf_counter() - t0)


def _between(data: KernelData, start: _dt.time, end: _dt.time) -> np.ndarray:
    """Bars of ``data`` whose time of day is in ``[start, end)``."""
    return _tod_between(data.times.view("int64"), _time_us(start), _time_us(end))


@njit(cache=True)
def _tod_between(times, lo, hi):
    """``lo <= times % day < hi`` (microseconds): the bars whose time of day is in
    ``[lo, hi)``, in one pass, without a time-of-day array."""
    out = np.empty(len(times), np.bool_)
    for i in range(len(times)):
        tod = times[i] % 86_400_000_000
        out[i] = lo <= tod < hi
    return out


#: Sizer settings already checked (a study's trials share them): ``(class, items)``.
_SIZERS_CHECKED: set = set()


def _check_sizer(sizer_cls, sp: dict) -> None:
    """The sizer's own checks of its settings ``sp``, once per distinct settings."""
    try:
        key = (sizer_cls, tuple(sorted(sp.items())))
        if key in _SIZERS_CHECKED:
            return
    except TypeError:  # a setting that cannot be hashed: checked every time
        key = None
    if sizer_cls is FixedContracts:
        FixedContracts.__init__(ParamsStandIn(**sp))  # the sizer's own checks
    else:
        _check_kelly(sp)
    if key is not None:
        if len(_SIZERS_CHECKED) > 1024:
            _SIZERS_CHECKED.clear()
        _SIZERS_CHECKED.add(key)


def _check_kelly(sp: dict) -> None:
    fake = ParamsStandIn(**sp)
    try:
        KellySizer.__init__(fake)
    except AttributeError:
        pass  # the checks ran before the sizer set its own attributes


def _distance_ticks(ticks, atrs, atr, tick: float, n: int, points=None,
                    none: np.ndarray | None = None) -> np.ndarray:
    """Whole ticks (>= 1) of a stop or target distance on each bar, as
    ``M2KStrategy._distance`` (``points``: a signal's own distances, NaN none); -1 where there
    is none (``none``: an array of -1s to return when there is no distance at all)."""
    if points is not None:
        with np.errstate(invalid="ignore"):
            k = np.floor(points / tick + 1e-9)
        return np.where(np.isnan(k), -1, np.maximum(1, np.nan_to_num(k))).astype("int64")
    if ticks is not None:
        points = np.full(n, ticks * tick)
    elif atrs is not None and atr is not None:
        points = atrs * atr
    else:
        return none if none is not None else np.full(n, -1, dtype="int64")
    with np.errstate(invalid="ignore"):
        k = np.floor(points / tick + 1e-9)
    k = np.where(np.isnan(k), 1, k)
    return np.maximum(1, k).astype("int64")


def simulate_many(bars, configs) -> list[BacktestResult]:
    """:func:`simulate` for many configurations (or plans) on the same bars, sharing the
    indicators.

    Configurations that select the same bars (``start``, ``end``, ``resample``) share one
    :class:`KernelData`, so an SMA or band of a given window is computed once for all of them.
    """
    cache: dict = {}
    out = []
    for config in configs:
        plan = resolve(config)
        if isinstance(bars, KernelData):
            data = bars
        else:
            key = _selection_key(plan)
            data = cache.get(key)
            if data is None:
                data = cache[key] = prepare(bars, plan)
        out.append(simulate(data, plan))
    return out


def _selection_key(plan: Plan) -> tuple:
    """What a :class:`KernelData` depends on: the bar selection and the tick size."""
    return plan.start, plan.end, plan.resample, float(plan.config.spec.tick_size)


def run_kernel_or_say_why(bars, config: BacktestConfig | Plan) -> BacktestResult | None:
    """:func:`simulate` when the kernel models ``config``; else ``None`` after one line on
    stderr saying why (the caller then runs cerebro). Used by ``run_backtest.py --engine
    kernel``."""
    import sys

    plan = resolve(config)
    ok, why = supported(plan)
    if ok:
        try:
            return simulate(bars, plan)
        except KernelDiverged as exc:
            why = str(exc)
    print(f"note: running in cerebro: {why}", file=sys.stderr)
    return None


#: The bars the kernel's indicators are kept for, and their KernelData by selection key. One
#: bars object at a time: a study uses one; walk-forward's folds come one after another; a
#: KernelData keeps its bars alive, so a cache keyed by more objects would never let them go.
#: The entry is keyed by the object *and its content* (``snapshot``: a copy of the index and
#: the columns the kernel reads): a frame edited in place is a new entry, never a stale one.
_DATA_CACHE: dict = {"bars": None, "snapshot": None, "data": {}}

#: The columns a KernelData is made from (with the index).
_CONTENT = ("open", "high", "low", "close", "volume", "roll")


def _snapshot(bars: pd.DataFrame) -> tuple:
    """A copy of what the kernel reads of ``bars``: the index and :data:`_CONTENT` (about
    1 ms per 100k bars to compare)."""
    cols = tuple(c for c in _CONTENT if c in bars.columns)
    return (bars.index.asi8.copy(), str(bars.index.tz), cols,
            tuple(bars[c].to_numpy(copy=True) for c in cols))


def _same_content(snap: tuple, bars: pd.DataFrame) -> bool:
    stamps, tz, cols, values = snap
    if str(bars.index.tz) != tz or tuple(c for c in _CONTENT if c in bars.columns) != cols:
        return False
    if not np.array_equal(stamps, bars.index.asi8):
        return False
    return all(np.array_equal(v, bars[c].to_numpy(), equal_nan=v.dtype.kind == "f")
               for c, v in zip(cols, values))


#: Set by :func:`shared_bars`: ``[bars, checked]`` while a study runs its trials on ``bars``.
_SHARED: contextvars.ContextVar = contextvars.ContextVar("m2k_shared_bars", default=None)


@contextlib.contextmanager
def shared_bars(bars: pd.DataFrame):
    """Within the block, ``bars`` is not edited (a study's own selection of the bars, which
    its trials share): their content is compared with the kept snapshot at the first trial
    only, not at every trial (about 1 ms per 20k bars saved a trial)."""
    held = _SHARED.get()
    if held is not None and held[0] is bars:
        yield  # already inside a block for these bars (a batch within a study)
        return
    token = _SHARED.set([bars, False])
    try:
        yield
    finally:
        _SHARED.reset(token)


def _cached_data(bars: pd.DataFrame, plan: Plan) -> KernelData:
    shared = _SHARED.get()
    mine = shared is not None and shared[0] is bars
    if _DATA_CACHE["bars"] is not bars or not (mine and shared[1]) and not _same_content(
            _DATA_CACHE["snapshot"], bars):
        _DATA_CACHE.update(bars=bars, snapshot=_snapshot(bars), data={})
    if mine:
        shared[1] = True
    key = _selection_key(plan)
    data = _DATA_CACHE["data"].get(key)
    if data is None:
        data = _DATA_CACHE["data"][key] = prepare(bars, plan)
    return data


def run_backtest_fast(bars: pd.DataFrame, config: BacktestConfig | Plan | None = None,
                      progress=None) -> BacktestResult:
    """``run_backtest`` through the kernel where :func:`supported` says so, else cerebro.

    A drop-in for :func:`m2k_bt.engine.cerebro.run_backtest` (same signature, the same
    result), importable by name, e.g. as ``optimize(..., run_backtest=run_backtest_fast)``.
    Indicators are kept per bars object (while it lives) and bar selection, so the trials of a
    study on the same bars share them."""
    plan = resolve(config)
    if supported(plan)[0]:
        try:
            return simulate(_cached_data(bars, plan), plan)
        except KernelDiverged:
            pass
    return run_backtest(bars, plan, progress=progress)


def run_figures_fast(bars: pd.DataFrame, config: BacktestConfig | Plan) -> dict | None:
    """A study trial in the kernel, its figures only (:func:`m2k_bt.kernel.figures.
    trial_figures`: ``metrics``, ``final_value``, ``returns``, with ``start_value``,
    ``first_dt``, ``last_dt`` and ``elapsed``), no result object; None when the kernel does
    not model ``config`` (the caller then runs :func:`run_backtest_fast`, which says so and
    runs cerebro). A block of one :func:`run_figures_many` (one compiled function for a
    study's trials, loaded once)."""
    return run_figures_many(bars, [config])[0]


#: Positions in :func:`m2k_bt.kernel.loop.run_loop`'s arguments of the bar set's own arrays
#: (the same for every run on it) and of the per-run ones (stacked per block).
_DATA_ARGS = (0, 1, 2, 3, 4, 12, 15)
_RUN_ARGS = (5, 6, 7, 8, 9, 10, 11, 13, 14, 16, 17)


def run_figures_many(bars: pd.DataFrame, configs) -> list[dict | None]:
    """:func:`run_figures_fast` for each of ``configs`` (or plans) on the same ``bars``, with
    the loops of all those the kernel models run in one compiled call per bar selection
    (:func:`m2k_bt.kernel.figures.block_figures`): no Python between one run and the next,
    and each distinct input array (an SMA signal, a filter mask) handed over once. The
    figures are :func:`run_figures_fast`'s, exactly (``tests/test_figures.py``); ``elapsed``
    is the block's time shared equally by its runs. None for a configuration the kernel does
    not model or whose run diverges (the caller runs it as :func:`run_figures_fast`'s
    callers do); a configuration error is raised as :func:`run_figures_fast` raises it."""
    out: list = [None] * len(configs)
    groups: dict = {}
    t0 = time.perf_counter()
    for i, config in enumerate(configs):
        plan = resolve(config)
        if not supported(plan)[0]:
            continue
        ready = _inputs(_cached_data(bars, plan), plan, checked=True)
        sig = (id(ready.data), tuple(ready.args[j].dtype.str for j in _RUN_ARGS))
        groups.setdefault(sig, []).append((i, ready))
    done = 0
    for members in groups.values():
        data = members[0][1].data
        shared = [members[0][1].args[j] for j in _DATA_ARGS]
        per_run = []
        for j in _RUN_ARGS:
            distinct: dict = {}  # id -> (row in the stack, array)
            index = np.array([distinct.setdefault(id(ready.args[j]),
                                                  (len(distinct), ready.args[j]))[0]
                              for _, ready in members], dtype=np.int64)
            arrays = [a for _, a in distinct.values()]
            one = arrays[0]
            if len(arrays) == 1 and one.flags.c_contiguous and one.flags.writeable:
                stacked = one.reshape(1, -1)  # one array for the whole block: a view
            else:
                stacked = np.stack(arrays)
            per_run += [stacked, index]
        ip = np.stack([ready.args[18] for _, ready in members])
        fp = np.stack([ready.args[19] for _, ready in members])
        starts = np.array([float(ready.plan.config.cash) for _, ready in members])
        rows, _ = daily_rows(data)
        moments, day_values, nets, offsets, codes = block_figures(
            *shared, *per_run, ip, fp, starts, np.asarray(rows, dtype=np.int64))
        first, last = data._get(("span",), lambda d=data: (str(d.bars.index[0]),
                                                            str(d.bars.index[-1])))
        for m, (i, _) in enumerate(members):
            if codes[m]:
                continue  # diverged: the caller runs it elsewhere, as run_figures_fast's do
            fig = figures_from(data, starts[m], moments[m], data.n,
                               nets[offsets[m]:offsets[m + 1]], day_values[m])
            fig.update(start_value=float(starts[m]), first_dt=first, last_dt=last)
            out[i] = fig
            done += 1
    share = (time.perf_counter() - t0) / max(1, done)
    for fig in out:
        if fig is not None:
            fig["elapsed"] = share
    return out
