"""The project's exceptions.

Every error a user can cause is an :class:`M2KError`. Each subclass is also a
:class:`ValueError`, so code that already catches ``ValueError`` keeps working.
The command line turns any of them into one line on stderr and exit status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "M2KError",
    "ContractSpecError",
    "DataFeedError",
    "ParameterError",
    "ConfigError",
    "OutputError",
    "NotEnoughBarsError",
    "did_you_mean",
    "check_known",
    "TRUE_WORDS",
    "FALSE_WORDS",
    "NONE_WORDS",
    "SignalError",
    "LookaheadError",
    "interrupt_behind",
    "parse_bool",
]


class M2KError(ValueError):
    """Root of every m2k_bt error caused by input or settings."""


class ContractSpecError(M2KError):
    """A contract specification, symbol, commission or margin setting is impossible."""


class DataFeedError(M2KError):
    """A data file or bar is missing, malformed or fails validation."""


class ParameterError(M2KError):
    """A strategy, sizer, analyzer or broker parameter is unknown or out of range."""


class ConfigError(M2KError):
    """A run, optimisation or walk-forward setting is impossible."""


class OutputError(ConfigError):
    """An output folder or file cannot be created, written or locked (names the path)."""


class SignalError(ParameterError):
    """A signal strategy's function failed or returned something that is not a signal (wrong
    length, values outside -1/0/+1, a stop that is not a positive distance)."""


class LookaheadError(SignalError):
    """A signal function's past values changed when later bars were removed: it looks ahead."""


class NotEnoughBarsError(ConfigError):
    """The selected bars are fewer than the strategy's indicators need (``need``, ``have``)."""

    def __init__(self, message: str, need: int = 0, have: int = 0):
        super().__init__(message)
        self.need = need
        self.have = have


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``.

    >>> did_you_mean("fsat", ["fast", "slow"])
    " (did you mean 'fast'?)"
    >>> did_you_mean("zzz", ["fast", "slow"])
    ''
    """
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_known(
    given: Iterable[str],
    allowed: Iterable[str],
    what: str,
    error: type[M2KError] = ParameterError,
) -> None:
    """Raise ``error`` naming the first key of ``given`` that is not in ``allowed``.

    >>> check_known(["fast"], ["fast", "slow"], "SmaCrossover parameter")
    >>> check_known(["fsat"], ["fast", "slow"], "parameter")
    Traceback (most recent call last):
    ...
    m2k_bt.errors.ParameterError: unknown parameter 'fsat' (did you mean 'fast'?); known: fast, slow
    """
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            raise error(
                f"unknown {what} '{key}'{did_you_mean(key, allowed)}; "
                f"known: {', '.join(sorted(allowed))}"
            )


#: Words read as yes / no / nothing in text input (command-line values, CSV cells), lower case.
TRUE_WORDS = frozenset({"true", "1", "yes", "on", "y", "t"})
FALSE_WORDS = frozenset({"false", "0", "no", "off", "n", "f"})
NONE_WORDS = frozenset({"none", "null", ""})


def parse_bool(text) -> bool | None:
    """``True`` or ``False`` for a word of :data:`TRUE_WORDS` or :data:`FALSE_WORDS` (any case,
    spaces around ignored); ``None`` for any other text, so the caller can say what it expected.

    >>> parse_bool(" Yes"), parse_bool("off"), parse_bool("maybe")
    (True, False, None)
    """
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def interrupt_behind(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM (an exception that is not an ``Exception``) that ``exc`` was
    raised while handling, else ``None``.

    A signal whose handler raises inside compiled code (numba's dispatcher returning the
    kernel's result, or loading it from the cache) surfaces as ``SystemError: ... returned a
    result with an exception set`` with the handler's ``KeyboardInterrupt`` as its cause or
    context: the run was interrupted, and ends as an interrupted run, not as a bug.

    >>> try:
    ...     try:
    ...         raise KeyboardInterrupt
    ...     except KeyboardInterrupt:
    ...         raise SystemError("returned a result with an exception set")
    ... except SystemError as exc:
    ...     type(interrupt_behind(exc)).__name__
    'KeyboardInterrupt'
    """
    seen = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, BaseException) and not isinstance(cause, Exception):
            return cause.with_traceback(None)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None

