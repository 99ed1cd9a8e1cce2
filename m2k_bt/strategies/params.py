"""Strategy parameters given as text (a command line, a config file) turned into values.

:meth:`m2k_bt.strategies.base.M2KStrategy.validate_params` uses these for every strategy of the
pack: :func:`coerce_param` converts one value to its parameter's type, :func:`parse_hhmm` reads a
New York clock time, :func:`strategy_params` lists a class's parameters.
"""

from __future__ import annotations

import datetime as _dt

from ..errors import NONE_WORDS, ParameterError, parse_bool

__all__ = ["strategy_params", "coerce_param", "parse_hhmm"]


def strategy_params(cls) -> dict:
    """Every parameter of a strategy class with its default, in declaration order.

    >>> from m2k_bt.strategies import SmaCrossover
    >>> strategy_params(SmaCrossover)["fast"]
    50
    """
    return dict(cls.params._getitems())


def coerce_param(where: str, value, default, optional_type: type | None = None):
    """``value`` as the type of ``default`` (``optional_type`` when the default is ``None``).

    Text converts (``"50"`` -> 50, ``"true"`` -> True, ``"none"`` -> None when the default is
    ``None``); a value that does not fit raises :class:`~m2k_bt.errors.ParameterError` naming
    ``where`` (e.g. "SmaCrossover parameter 'fast'"). An ``optional_type`` of ``object`` (or a
    default of another type) passes the value through for the caller's own checks.

    >>> coerce_param("p", "20", 50), coerce_param("p", "off", False), coerce_param("p", "", None)
    (20, False, None)
    >>> coerce_param("SmaCrossover parameter 'fast'", "2.5", 50)
    Traceback (most recent call last):
    ...
    m2k_bt.errors.ParameterError: SmaCrossover parameter 'fast' must be an int, got '2.5'
    """
    kind = optional_type if default is None else type(default)
    if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
        if default is None:
            return None
        raise ParameterError(f"{where} cannot be None; give a {kind.__name__} "
                             f"(default {default!r})")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            flag = parse_bool(value)
            if flag is None:
                raise ValueError
            return flag
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value.strip()
    except (TypeError, ValueError):
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        raise ParameterError(
            f"{where} must be {article} {kind.__name__}, got {value!r}"
        ) from None
    return value


def parse_hhmm(value: str) -> _dt.time:
    """A clock time from ``"HH:MM"``; anything else raises ``ValueError``.

    >>> parse_hhmm(" 15:55")
    datetime.time(15, 55)
    """
    hh, mm = value.strip().split(":")
    return _dt.time(int(hh), int(mm))
