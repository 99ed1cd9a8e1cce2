"""Signal strategies: a strategy written as a vectorised function of the bars, the article's
pandas style, executed by the pack (sizing, brackets, margin, sessions, rolls, reports) in
either engine.

A signal function takes the bars (a DataFrame with ``open high low close volume``, the index
the loader gave, ``attrs["tick_size"]`` set) and its parameters as keyword arguments, and
returns the wanted direction on every bar::

    def bollinger(bars, period=20, devs=2.0):
        mid = bars["close"].rolling(period).mean()
        width = devs * bars["close"].rolling(period).std()
        signal = np.where(bars["close"] < mid - width, 1, 0)
        return pd.Series(np.where(bars["close"] > mid + width, -1, signal), index=bars.index)

It returns a Series, an array or a DataFrame of the :data:`SIGNAL_COLUMNS` (its other
columns are drawn in report.html as indicators):

- ``direction`` (required; a DataFrame's ``signal`` or ``Signal`` column is taken as it): -1,
  0 or +1, decided at the bar's close and acted on at the next bar's open. NaN is no opinion:
  before the first value nothing is traded (the warm-up); after it, the position held is kept.
- ``stop`` / ``target``: distance in points from the deciding close to the stop / target of
  an entry made on that bar (NaN: none), rounded down to whole ticks, at least one.
- ``exit_long`` / ``exit_short``: on a bar without an opinion, close a long / short held.
- ``long_ok`` / ``short_ok``: new entries allowed on that bar (exits are never blocked).

:func:`signal_strategy` turns a function into a strategy class whose parameters are the
function's keyword arguments (so ``--param``, ``--space``, ``optimize`` and ``walkforward``
work on them); :class:`SignalStrategy` is the base for writing one as a class. In cerebro the
class reads the computed signal bar by bar; the kernel runs it at full speed; the two agree
to the cent. Before a run, :func:`check_lookahead` proves the function does not look ahead
(``lookahead_check=False`` skips it).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import time
import types
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..contracts import M2K
from ..errors import LookaheadError, ParameterError, SignalError
from .base import M2KStrategy

__all__ = [
    "SIGNAL_COLUMNS",
    "Signals",
    "SignalStrategy",
    "signal_strategy",
    "compute_signals",
    "check_lookahead",
    "signal_frame",
    "LOOKAHEAD_CUTS",
    "bt_indicator",
    "probing",
]

#: The columns a signal function may return (``direction`` required).
SIGNAL_COLUMNS = ("direction", "stop", "target", "exit_long", "exit_short", "long_ok",
                  "short_ok")
_BOOL_COLUMNS = ("exit_long", "exit_short", "long_ok", "short_ok")
#: Cut points of the default look-ahead check.
LOOKAHEAD_CUTS = 8


@dataclass(frozen=True)
class Signals:
    """A signal function's output, checked: one value per bar in numpy arrays.

    ``direction`` is float64 (-1, 0, +1, NaN); ``stop``/``target`` float64 points or ``None``
    when the function gave none; the boolean columns ``None`` when not given; ``first`` is the
    first bar with a direction (``n`` when there is none); ``indicators`` the function's other
    numeric columns, by name (drawn in report.html)."""

    direction: np.ndarray
    stop: np.ndarray | None = None
    target: np.ndarray | None = None
    exit_long: np.ndarray | None = None
    exit_short: np.ndarray | None = None
    long_ok: np.ndarray | None = None
    short_ok: np.ndarray | None = None
    indicators: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.direction)

    @property
    def first(self) -> int:
        known = np.flatnonzero(~np.isnan(self.direction))
        return int(known[0]) if len(known) else self.n

    def columns(self) -> dict[str, np.ndarray]:
        """The columns given (``direction`` first), by name."""
        return {k: getattr(self, k) for k in SIGNAL_COLUMNS if getattr(self, k) is not None}

    def head(self, k: int) -> Signals:
        """The first ``k`` bars."""
        return Signals(**{name: a[:k] for name, a in self.columns().items()})


def signal_frame(bars: pd.DataFrame, tick: float) -> pd.DataFrame:
    """The frame a signal function receives: ``bars`` (a shallow copy: the function may add
    columns) with ``attrs`` holding only ``tick_size``."""
    frame = bars.copy(deep=False)
    frame.attrs = {"tick_size": float(tick)}
    return frame


def _as_array(values, n: int, index, where: str, column: str) -> np.ndarray:
    if isinstance(values, pd.Series):
        if len(values) == n and not values.index.equals(index):
            raise SignalError(f"{where} returned a '{column}' series whose index is not the bars' "
                              f"index; return it on bars.index (or as a plain array)")
        values = values.to_numpy()
    a = np.asarray(values)
    if a.ndim != 1 or len(a) != n:
        shape = a.shape if a.ndim != 1 else f"{len(a)} values"
        raise SignalError(f"{where} returned {shape} for '{column}' on {n} bars; return one "
                          f"value per bar (a Series on bars.index)")
    return a


def _floats(a: np.ndarray, where: str, column: str) -> np.ndarray:
    if a.dtype == object or a.dtype.kind in "OSUM":
        try:
            return a.astype("float64")
        except (TypeError, ValueError):
            bad = next(v for v in a if not isinstance(v, (int, float, np.number, type(None))))
            raise SignalError(f"{where}: '{column}' holds {bad!r}, not a number") from None
    return a.astype("float64")


def normalise(out, index: pd.Index, where: str, indicators: bool = True) -> Signals:
    """``out`` (what a signal function returned for bars on ``index``) as :class:`Signals`;
    anything else raises :class:`~m2k_bt.errors.SignalError` naming the bar and value.
    ``indicators=False`` skips collecting the other columns (the look-ahead check's prefixes
    need only the signal)."""
    n = len(index)
    frame = out if isinstance(out, pd.DataFrame) else None
    if frame is None:
        if not isinstance(out, (pd.Series, np.ndarray, list, tuple)):
            raise SignalError(f"{where} returned {type(out).__name__}; return a Series of "
                              f"directions (-1, 0, +1, NaN) or a DataFrame with a 'direction' "
                              f"column")
        given = {"direction": out}
    else:
        names = {str(c).lower(): c for c in frame.columns}
        key = names.get("direction", names.get("signal"))
        if key is None:
            raise SignalError(f"{where} returned a DataFrame without a 'direction' column "
                              f"(columns: {', '.join(map(str, frame.columns))})")
        if len(frame) == n and not frame.index.equals(index):
            raise SignalError(f"{where} returned a DataFrame whose index is not the bars' "
                              f"index; return it on bars.index")
        given = {"direction": frame[key]}
        for name in SIGNAL_COLUMNS[1:]:
            if name in names:
                given[name] = frame[names[name]]
    arrays = {}
    for name, values in given.items():
        a = _as_array(values, n, index, where, name)
        if name in _BOOL_COLUMNS:
            if a.dtype != bool:
                f = _floats(a, where, name)
                bad = ~np.isnan(f) & (f != 0) & (f != 1)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise SignalError(f"{where}: '{name}' must be True/False, got {_show(a[i])} at "
                                      f"bar {i} ({index[i]})")
                a = f == 1
            arrays[name] = a.astype(bool)
            continue
        f = _floats(a, where, name)
        if name == "direction":
            bad = ~np.isnan(f) & (f != -1) & (f != 0) & (f != 1)
            what = "-1, 0, +1 or NaN"
        else:
            bad = ~np.isnan(f) & ~(np.isfinite(f) & (f > 0))
            what = "a distance in points > 0 (or NaN for none)"
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SignalError(f"{where}: '{name}' must be {what}, got {_show(a[i])} at bar {i} "
                              f"({index[i]})")
        arrays[name] = f
    extra = {}
    if frame is not None and indicators:
        taken = {str(c).lower() for c in given} | {"signal", "direction"}
        for col in frame.columns:
            if str(col).lower() in taken or str(col).lower() in (
                    "open", "high", "low", "close", "volume", "roll"):
                continue
            if pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(
                    frame[col]):
                extra[str(col)] = frame[col].to_numpy(dtype="float64")
    return Signals(**arrays, indicators=extra)


def _call(func, bars: pd.DataFrame, where: str):
    try:
        return func(bars)
    except SignalError:
        raise
    except Exception as exc:  # the user's code: one line naming it and the cause
        cols = ", ".join(map(str, bars.columns))
        raise SignalError(f"{where} failed: {type(exc).__name__}: {exc} (the bars have columns "
                          f"{cols})") from exc


def check_lookahead(compute, bars: pd.DataFrame, cuts: int = LOOKAHEAD_CUTS,
                    full: Signals | None = None, where: str = "the signal") -> dict:
    """Prove that ``compute`` (bars -> signal output) does not look ahead: compute it on the
    bars cut at ``cuts`` points and compare each prefix with the whole run, exactly (NaN equal
    to NaN). A difference raises :class:`~m2k_bt.errors.LookaheadError` naming the first bar
    whose value changed and the cut that changed it (``shift(-1)``, a centred window and a
    whole-sample normalisation all do). ``full``: the whole run's :class:`Signals`, when
    already computed. Returns ``{"cuts", "bars", "seconds"}``.

    >>> idx = pd.date_range("2024-01-02 09:30", periods=40, freq="5min", tz="America/New_York")
    >>> bars = pd.DataFrame({"close": np.arange(40.0)}, index=idx)
    >>> honest = lambda b: np.sign(b["close"].diff()).fillna(0)
    >>> check_lookahead(honest, bars)["cuts"]
    8
    >>> peeks = lambda b: np.sign(b["close"].shift(-1) - b["close"])
    >>> check_lookahead(peeks, bars)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m2k_bt.errors.LookaheadError: the signal looks ahead: 'direction' on bar 3 (2024-01-02 09:45...
    """
    t0 = time.perf_counter()
    n = len(bars)
    if full is None:
        full = normalise(_call(compute, bars, where), bars.index, where)
    points = sorted({int(round(n * j / (cuts + 1))) for j in range(1, cuts + 1)} - {0, n})
    for k in points:
        head = bars.iloc[:k]
        part = normalise(_call(compute, head, where), head.index, where, indicators=False)
        whole = full.head(k)
        for name, a in whole.columns().items():
            b = part.columns().get(name)
            if b is None:
                raise LookaheadError(f"{where} looks ahead: it returned '{name}' on all "
                                     f"{n} bars but not on the first {k}")
            same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
            if not same.all():
                i = int(np.flatnonzero(~same)[0])
                raise LookaheadError(
                    f"{where} looks ahead: '{name}' on bar {i} ({bars.index[i]}) is "
                    f"{_show(a[i])} with all {n} bars but {_show(b[i])} with only the first "
                    f"{k} (up to "
                    f"{bars.index[k - 1]}): a value may use only its own and earlier bars (no "
                    f"shift(-1), centred windows or whole-sample statistics); "
                    f"lookahead_check=False (--no-lookahead-check) skips this check")
    return {"cuts": len(points), "bars": n, "seconds": time.perf_counter() - t0}


def _show(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    try:
        value = float(value)
    except (TypeError, ValueError):
        return repr(value)
    return "NaN" if math.isnan(value) else f"{value:g}"


# ------------------------------------------------------------------------------ strategies
_PROBING = contextvars.ContextVar("m2k_signal_probing", default=False)


@contextlib.contextmanager
def probing():
    """Within this block signal strategies compute no signal: for a cerebro run that only
    measures the strategy's warm-up (:func:`m2k_bt.engine.cerebro.min_bars`)."""
    token = _PROBING.set(True)
    try:
        yield
    finally:
        _PROBING.reset(token)



class _Context:
    """What a signal method gets as ``self``: the parameters in ``p``, the ``tick``, and the
    class's other methods (helpers a signal calls), bound to this context."""

    def __init__(self, cls: type, params: dict, tick: float) -> None:
        self._cls = cls
        self.p = types.SimpleNamespace(**params)
        self.tick = tick

    def __getattr__(self, name: str):
        attr = getattr(self._cls, name)
        return types.MethodType(attr, self) if inspect.isfunction(attr) else attr


class SignalStrategy(M2KStrategy):
    """Base of the vectorised strategies: write :meth:`signal`, the pack does the rest.

    ``signal(self, bars)`` returns the directions for all ``bars`` at once (see the module
    doc for what it may return); ``self.p`` holds the parameters and ``self.tick`` the tick
    size. ``self`` is *not* the running strategy: the signal is computed once over the bars,
    in either engine, so it must not read ``self.data`` or the broker. In cerebro the
    strategy reads the computed signal bar by bar; in a live run (no preloaded data) it is
    computed again on the history up to the newest bar, so a bar's direction is the one a
    backtest on the bars so far gives.

    Params (besides :class:`~m2k_bt.strategies.base.M2KStrategy`'s):

    - ``lookahead_check`` (def: ``True``): prove before the run that :meth:`signal` does not
      look ahead (:func:`check_lookahead`); its cost is in ``lookahead``.
    """

    params = (("lookahead_check", True),)
    #: The parameters of the class's own signal (not the base's risk settings).
    signal_params: tuple[str, ...] = ()

    def signal(self, bars: pd.DataFrame):
        raise NotImplementedError(f"{type(self).__name__} must define signal(self, bars)")

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "signal_params" not in cls.__dict__:
            base = set(M2KStrategy.params._getkeys()) | {"lookahead_check"}
            cls.signal_params = tuple(k for k in cls.params._getkeys() if k not in base)

    @classmethod
    def _check_params(cls, v: dict) -> None:
        super()._check_params(v)
        v["lookahead_check"] = bool(v["lookahead_check"])

    # ------------------------------------------------------------------ cerebro
    def start(self) -> None:
        super().start()
        self._sig: Signals | None = None
        self._decided = False
        self.lookahead: dict | None = None
        self.signal_indicators: dict = {}
        # a DataFrame feed (BarsFeed, PandasData) holds the whole run: the signal is computed
        # on it once, as the kernel does; a preloaded feed of another kind, on its lines
        source = getattr(self.data.p, "dataname", None)
        n = self.data.buflen()
        if _PROBING.get():
            self._sig = normalise(np.full(max(n, 1), np.nan), pd.RangeIndex(max(n, 1)), "probe")
        elif isinstance(source, pd.DataFrame) and n in (0, len(source)):
            self._compute(source)
        elif n > 0:
            self._compute(self._frame(n))

    def _frame(self, n: int) -> pd.DataFrame:
        """The first ``n`` bars of the feed's lines as a frame (naive New York times)."""
        from ..sessions import num2datetime64

        d = self.data
        take = (lambda line: np.asarray(line.array[:n], dtype="float64")) if d.buflen() >= n \
            else (lambda line: np.asarray(line.get(size=n), dtype="float64"))
        index = pd.DatetimeIndex(num2datetime64(take(d.datetime)), name="datetime")
        cols = {name: take(getattr(d.lines, name)) for name in
                ("open", "high", "low", "close", "volume")}
        return pd.DataFrame(cols, index=index)

    def _compute(self, bars: pd.DataFrame) -> None:
        params = {k: getattr(self.p, k) for k in self.params._getkeys()}
        check = self.p.lookahead_check and self.lookahead is None
        self._sig, report = compute_signals(type(self), bars, params, self._tick, check=check)
        if report is not None:
            self.lookahead = report
        self.signal_indicators = self._sig.indicators

    def _index(self) -> int:
        i = len(self.data) - 1
        if self._sig is None or i >= self._sig.n:
            self._compute(self._frame(len(self.data)))  # live: the history up to this bar
        return i

    def direction(self) -> int | None:
        i = self._index()
        sig = self._sig
        d = sig.direction[i]
        if not math.isnan(d):
            return int(d)
        held = self._held()
        if (held > 0 and sig.exit_long is not None and sig.exit_long[i]) or (
                held < 0 and sig.exit_short is not None and sig.exit_short[i]):
            return 0
        return None

    def _confirm_entry(self, direction: int) -> bool:
        i = self._index()
        ok = self._sig.long_ok if direction > 0 else self._sig.short_ok
        return True if ok is None else bool(ok[i])

    def _distance(self, kind: str) -> float | None:
        points = getattr(self._sig, kind) if getattr(self, "_sig", None) is not None else None
        if points is None:
            return super()._distance(kind)
        value = points[self._index()]
        if math.isnan(value):
            return None
        from ..contracts import round_to_tick

        n = max(1, math.floor(value / self._tick + 1e-9))
        return round_to_tick(n * self._tick, self._tick)


def compute_signals(cls: type[SignalStrategy], bars: pd.DataFrame, params: dict,
                    tick: float | None = None, check: bool = False
                    ) -> tuple[Signals, dict | None]:
    """``cls``'s signal on ``bars`` with ``params`` (checked values, e.g. a plan's), as
    :class:`Signals`, and the look-ahead report when ``check`` (else ``None``).

    Both engines call this, so a kernel run and a cerebro run trade the same directions.
    A signal that gives stops or targets while ``stop_ticks``/``stop_atr`` (or the target
    ones) are set is an error: one source of distances per run."""
    tick = float(tick or M2K.tick_size)
    context = _Context(cls, params, tick)
    where = f"signal {cls.__name__}"

    def run(b):
        return cls.signal(context, signal_frame(b, tick))

    sig = normalise(_call(run, bars, where), bars.index, where)
    for kind in ("stop", "target"):
        if getattr(sig, kind) is not None and (params.get(f"{kind}_ticks") is not None
                                               or params.get(f"{kind}_atr") is not None):
            raise SignalError(f"{where} returns '{kind}' distances and {kind}_ticks/{kind}_atr "
                              f"is set too; use one of them")
    report = check_lookahead(run, bars, full=sig, where=where) if check else None
    return sig, report


# ------------------------------------------------------------------------------ functions
_TYPES = (bool, int, float, str)


@functools.cache
def signal_strategy(func) -> type[SignalStrategy]:
    """A :class:`SignalStrategy` class running ``func(bars, **params)``; its parameters are
    ``func``'s keyword arguments with their defaults (the default's type, or the annotation
    for a ``None`` default, converts text from a command line). The same function always gives
    the same class.

    >>> def crossing(bars, fast=50, slow=200):
    ...     return np.where(bars["close"].rolling(fast).mean()
    ...                     > bars["close"].rolling(slow).mean(), 1, -1)
    >>> cls = signal_strategy(crossing)
    >>> cls.__name__, cls.signal_params
    ('crossing', ('fast', 'slow'))
    >>> cls.validate_params({"fast": "20"})["fast"]
    20
    """
    name = getattr(func, "__name__", "signal")
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        raise ParameterError(f"{name!r} is not a function a signal strategy can call") from None
    args = list(sig.parameters.values())
    if not args or args[0].kind not in (args[0].POSITIONAL_ONLY, args[0].POSITIONAL_OR_KEYWORD):
        raise ParameterError(f"signal function {name} must take the bars as its first argument: "
                             f"def {name}(bars, ...)")
    taken = set(SignalStrategy.params._getkeys())
    params, optional = [], {}
    for p in args[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise ParameterError(f"signal function {name}: parameter '{p.name}' needs a default "
                                 f"(def {name}(bars, {p.name}=...)), which also gives its type")
        if p.name in taken:
            raise ParameterError(f"signal function {name}: parameter '{p.name}' is one of the "
                                 f"pack's own settings; rename it")
        if p.default is None:
            optional[p.name] = _annotated_type(p.annotation, func)
        elif not isinstance(p.default, _TYPES):
            raise ParameterError(f"signal function {name}: parameter '{p.name}' defaults to "
                                 f"{p.default!r}; defaults must be int, float, bool, str or "
                                 f"None")
        params.append((p.name, p.default))
    own = tuple(n for n, _ in params)

    def signal(self, bars):
        return func(bars, **{k: getattr(self.p, k) for k in own})

    namespace = {
        "params": tuple(params),
        "_optional_types": optional,
        "signal_params": own,
        "signal": signal,
        "signal_function": staticmethod(func),
        "__doc__": func.__doc__ or f"The signal function {name} as a strategy.",
        "__module__": getattr(func, "__module__", __name__),
    }
    return type(SignalStrategy)(name, (SignalStrategy,), namespace)


def _annotated_type(annotation, func) -> type:
    """The type of a ``None``-default parameter from its annotation (``int | None``,
    ``Optional[float]``, or a string of either); ``object`` when it says nothing usable."""
    if isinstance(annotation, str):
        for t in _TYPES:
            if t.__name__ in annotation.replace("None", "").replace("|", " ").split():
                return t
        return object
    for t in _TYPES:
        if annotation is t or t in getattr(annotation, "__args__", ()):
            return t
    return object


def bt_indicator(bars: pd.DataFrame, name: str, line: int | str = 0, **params) -> np.ndarray:
    """The values of backtrader's indicator ``bt.ind.<name>(data, **params)`` on every bar
    of ``bars`` (NaN during its warm-up), computed in one vectorised pass: the same numbers a
    per-bar strategy reads, for use in a signal function. ``line``: which line (index or
    name); ``source="close"`` (or another column) feeds that line instead of the whole bar.

    >>> idx = pd.date_range("2024-01-02 09:30", periods=5, freq="5min", tz="America/New_York")
    >>> bars = pd.DataFrame({c: [1.0, 2, 3, 4, 5] for c in ("open", "high", "low", "close",
    ...                                                      "volume")}, index=idx)
    >>> bt_indicator(bars, "SMA", period=3, source="close").tolist()
    [nan, nan, 2.0, 3.0, 4.0]
    """
    import backtrader as bt

    from ..feeds.bars import BarsFeed

    source = params.pop("source", None)
    kind = getattr(bt.ind, name, None)
    if kind is None:
        raise SignalError(f"backtrader has no indicator {name!r} (bt.ind.{name})")
    made = {}

    class _Probe(bt.Strategy):
        def __init__(self):
            data = getattr(self.data, source) if source else self.data
            made["ind"] = kind(data, **params)

    cerebro = bt.Cerebro(runonce=True, preload=True, stdstats=False)
    cerebro.adddata(BarsFeed(dataname=bars))
    cerebro.addstrategy(_Probe)
    cerebro.run()
    ind = made["ind"]
    which = getattr(ind.lines, line) if isinstance(line, str) else ind.lines[line]
    n = len(bars)
    values = np.frombuffer(which.array, dtype="float64", count=n).copy() if n else np.zeros(0)
    values[: max(0, int(ind._minperiod) - 1)] = np.nan
    return values
