"""The built-in strategies by the names the command line uses, and their parameters."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import backtrader as bt

from ..errors import ParameterError, did_you_mean
from .bands import AdaptiveBollinger, BollingerReversion
from .base import M2KStrategy
from .params import strategy_params
from .signals import signal_strategy
from .sma import SmaCrossover

__all__ = ["STRATEGIES", "resolve_strategy", "load_strategy", "strategy_params"]


#: Strategy name (as the command line spells it) -> class.
STRATEGIES: dict[str, type[M2KStrategy]] = {
    "sma": SmaCrossover,
    "bollinger": BollingerReversion,
    "adaptive": AdaptiveBollinger,
}


def resolve_strategy(strategy) -> type:
    """The strategy class for ``strategy``: a name of :data:`STRATEGIES`; ``"path/file.py:name"``
    or ``"module:name"`` (a signal function or a strategy class in that file or module, see
    :func:`load_strategy`); a ``bt.Strategy`` subclass; or a signal function (made a class by
    :func:`~m2k_bt.strategies.signals.signal_strategy`).

    >>> resolve_strategy("sma").__name__
    'SmaCrossover'
    >>> resolve_strategy("smaa")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m2k_bt.errors.ParameterError: unknown strategy 'smaa' (did you mean 'sma'?)...
    """
    if isinstance(strategy, str):
        if ":" in strategy:
            return load_strategy(strategy)
        key = strategy.lower()
        if key not in STRATEGIES:
            raise ParameterError(
                f"unknown strategy '{strategy}'{did_you_mean(key, STRATEGIES)}; "
                f"known: {', '.join(sorted(STRATEGIES))}, or FILE.py:NAME / MODULE:NAME for "
                f"one of your own (see --list-strategies)"
            )
        return STRATEGIES[key]
    if isinstance(strategy, type) and issubclass(strategy, bt.Strategy):
        return strategy
    if inspect.isfunction(strategy) or (callable(strategy) and not isinstance(strategy, type)):
        return signal_strategy(strategy)
    raise ParameterError(f"strategy must be a name, FILE.py:NAME, a bt.Strategy subclass or a "
                         f"signal function, got {strategy!r}")


def load_strategy(spec: str) -> type:
    """The strategy named by ``"path/to/file.py:name"`` or ``"package.module:name"``: a strategy
    class (a ``bt.Strategy`` subclass, e.g. an
    :class:`~m2k_bt.strategies.base.M2KStrategy` with ``direction()``) or a signal function.
    Every mistake (no such file or module, no such name, an error while importing it, an object
    that is neither) is one :class:`~m2k_bt.errors.ParameterError` naming it.

    >>> load_strategy("m2k_bt.strategies.vectorised:SmaSignal").__name__
    'SmaSignal'
    >>> load_strategy("no_such_file.py:mine")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    m2k_bt.errors.ParameterError: strategy file 'no_such_file.py' does not exist...
    """
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ParameterError(f"strategy {spec!r}: write FILE.py:NAME or MODULE:NAME, NAME being "
                             f"a function or class defined there")
    module = _load_module(where)
    obj = getattr(module, name, None)
    if obj is None:
        public = [k for k, v in vars(module).items() if not k.startswith("_")
                  and (inspect.isfunction(v) or isinstance(v, type))]
        raise ParameterError(f"{where} has no {name!r}{did_you_mean(name, public)}; it defines: "
                             f"{', '.join(public) or 'nothing usable'}")
    if isinstance(obj, type) and issubclass(obj, bt.Strategy):
        return obj
    if inspect.isfunction(obj):
        return signal_strategy(obj)
    raise ParameterError(f"{where}:{name} is a {type(obj).__name__}; give a signal function "
                         f"(bars, **params) -> directions or a bt.Strategy subclass")


_MODULES: dict = {}


def _load_module(where: str):
    """The module of a ``FILE.py`` path (loaded once per path and modification time) or of a
    dotted module name."""
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ParameterError(f"strategy file '{where}' does not exist (give FILE.py:NAME, "
                                 f"the path relative to the current folder)")
        key = (str(path), path.stat().st_mtime_ns)
        if key not in _MODULES:
            import hashlib

            unique = "m2k_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(unique, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module  # dataclasses and pickling look modules up here
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(unique, None)
                raise ParameterError(f"strategy file '{where}' failed to load: "
                                     f"{_one_line(exc)}") from exc
            _MODULES[key] = module
        return _MODULES[key]
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and where.startswith(exc.name):
            raise ParameterError(f"no module named {where!r} (give FILE.py:NAME for a file, or "
                                 f"a module importable from the current folder)") from None
        raise ParameterError(f"module {where!r} failed to load: {_one_line(exc)}") from exc
    except Exception as exc:
        raise ParameterError(f"module {where!r} failed to load: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, SyntaxError) and exc.lineno:
        text = f"{exc.msg} (line {exc.lineno})"
    return f"{type(exc).__name__}: {text}"
