"""Search spaces: what a study searches, parsed from ``--space`` text, and the grid's points.

``fast=10:100:5`` (integers 10 to 100 step 5), ``devfactor=1.5:3.0:0.25`` (floats on a step;
``1.5:3.0`` is continuous, TPE only), ``exit=middle,signal`` (choices), ``period=20`` (fixed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..engine import resolve_strategy
from ..errors import ConfigError, ParameterError, did_you_mean

__all__ = [
    "DEFAULT_SPACES",
    "SPACE_SYNTAX",
    "ParamRange",
    "parse_space",
    "parse_scalar",
    "grid_size",
    "grid_points",
    "point_key",
    "params_key",
    "strategy_class",
]

#: Search spaces used when none is given, per strategy name.
DEFAULT_SPACES = {
    "sma": ("fast=10:100:5", "slow=50:300:10"),
    "bollinger": ("period=10:60:5", "devfactor=1.5:3.0:0.25"),
    "adaptive": ("period_high=16:40:4", "period_low=8:14:2", "devfactor=1.5:3.0:0.25"),
}


@dataclass(frozen=True)
class ParamRange:
    """One searched parameter: ``kind`` ``"int"``, ``"float"`` or ``"choice"``.

    >>> r = parse_space(["fast=10:30:10"])["fast"]
    >>> r.kind, list(r.grid())
    ('int', [10, 20, 30])
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step))
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step)
        return trial.suggest_categorical(self.name, list(self.choices))

    def grid(self) -> Sequence:
        """The values a grid walks, as a lazy sequence: ``fast=1:1000000000`` costs no memory."""
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None:
            raise ConfigError(
                f"--space {self}: a grid needs a step for every float range, e.g. "
                f"{self.name}={self.low}:{self.high}:0.25"
            )
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        if self.kind == "int":
            return range(int(self.low), int(self.low) + n * int(self.step), int(self.step))
        return _FloatSteps(float(self.low), float(self.step), n)

    def draw(self, rng: np.random.Generator):
        """One value drawn uniformly from the range (no list is built)."""
        if self.kind == "float" and self.step is None:
            return float(rng.uniform(self.low, self.high))
        values = self.grid()
        return values[int(rng.integers(len(values)))]

    def __str__(self) -> str:
        if self.kind == "choice":
            return f"{self.name}={','.join(map(str, self.choices))}"
        num = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: repr(float(v)))
        step = "" if self.step is None else f":{num(self.step)}"
        return f"{self.name}={num(self.low)}:{num(self.high)}{step}"


class _FloatSteps(Sequence):
    """``low, low + step, ...`` (``n`` values, rounded to 10 decimals) without a list."""

    def __init__(self, low: float, step: float, n: int):
        self.low, self.step, self.n = low, step, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return round(self.low + i * self.step, 10)


def grid_size(space: dict) -> int:
    """The number of points of the grid over ``space`` (a float range needs a step).

    >>> grid_size(parse_space(["fast=10:30:10", "exit=middle,signal"]))
    6
    """
    return math.prod(len(r.grid()) for r in space.values())


def grid_points(space: dict):
    """Grid points in ``itertools.product`` order, decoded one at a time from their index
    (``itertools.product`` would first copy every range into a tuple).

    >>> list(grid_points(parse_space(["a=1:2", "b=x,y"])))
    [{'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
    """
    names = list(space)
    grids = [space[n].grid() for n in names]
    sizes = [len(g) for g in grids]
    for index in range(math.prod(sizes)):
        point, rest = {}, index
        for name, grid, size in zip(reversed(names), reversed(grids), reversed(sizes)):
            rest, i = divmod(rest, size)
            point[name] = grid[i]
        yield {n: point[n] for n in names}


def parse_scalar(text: str):
    """``"20"`` -> 20, ``"2.5"`` -> 2.5, ``"true"`` -> True, anything else the stripped text.

    >>> parse_scalar(" 20 "), parse_scalar("2.5"), parse_scalar("True"), parse_scalar("middle")
    (20, 2.5, True, 'middle')
    """
    t = text.strip()
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return t


#: How a --space item is written, for error messages.
SPACE_SYNTAX = (
    "the syntax is name=lo:hi:step or name=a,b,c (e.g. fast=10:100:5, devfactor=1.5:3.0:0.25, "
    "exit=middle,signal)"
)
_RANGE_TYPO = re.compile(r"^[-+]?\d+(\.\d*)?\s*(-|\.\.|to|~)\s*[-+]?\d+(\.\d*)?$")


def _parse_one(item: str) -> ParamRange:
    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ConfigError(f"--space {item!r}: {SPACE_SYNTAX}")
    if _RANGE_TYPO.match(value):
        raise ConfigError(f"--space {item!r} is not a range: {SPACE_SYNTAX}")
    if ":" in value:
        parts = value.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"--space {item!r}: a range is LOW:HIGH or LOW:HIGH:STEP")
        nums = [parse_scalar(p) for p in parts]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in nums):
            raise ConfigError(f"--space {item!r}: range bounds and step must be numbers")
        if any(not math.isfinite(x) for x in nums):
            raise ConfigError(f"--space {item!r}: range bounds and step must be finite")
        is_int = all(isinstance(x, int) for x in nums)
        low, high = nums[0], nums[1]
        step = nums[2] if len(nums) == 3 else (1 if is_int else None)
        if low > high:
            raise ConfigError(f"--space {item!r}: low {low} is above high {high}")
        if step is not None and step <= 0:
            raise ConfigError(f"--space {item!r}: step must be > 0, got {step}")
        return ParamRange(name, "int" if is_int else "float", low, high, step)
    choices = tuple(parse_scalar(c) for c in value.split(",") if c.strip())
    if not choices:
        raise ConfigError(f"--space {item!r}: no choices")
    return ParamRange(name, "choice", choices=choices)


def parse_space(
    spec: str | Sequence[str] | dict | None = None, strategy=None
) -> dict[str, ParamRange]:
    """Parse ``["fast=10:100:5", "slow=50:300:10"]`` (or one string separated by spaces or
    semicolons) into :class:`ParamRange` objects; ``None`` gives the strategy's
    :data:`DEFAULT_SPACES`. Names are checked against the strategy's parameters when the
    strategy can be resolved.

    >>> sorted(parse_space("fast=10:100:5 slow=50:300:10"))
    ['fast', 'slow']
    >>> parse_space(["devfactor=1.5:3.0:0.25"])["devfactor"].grid()[:3]
    [1.5, 1.75, 2.0]
    """
    if isinstance(spec, dict):
        space = {
            k: (v if isinstance(v, ParamRange) else _parse_one(f"{k}={v}")) for k, v in spec.items()
        }
    else:
        if spec is None:
            key = strategy.lower() if isinstance(strategy, str) else None
            if key not in DEFAULT_SPACES:
                raise ConfigError(
                    f"no default search space for strategy {strategy!r}; give --space, e.g. "
                    f"--space period=10:60:5 devfactor=1.5:3.0:0.25"
                )
            spec = DEFAULT_SPACES[key]
        items = spec.replace(";", " ").split() if isinstance(spec, str) else list(spec)
        space = {}
        for item in items:
            r = _parse_one(item)
            if r.name in space:
                raise ConfigError(f"--space names '{r.name}' twice")
            space[r.name] = r
    if not space:
        raise ConfigError("the search space is empty; give --space NAME=LOW:HIGH[:STEP]")
    known = _strategy_param_names(strategy)
    if known is not None:
        for name in space:
            if name not in known:
                raise ParameterError(
                    f"--space: unknown parameter '{name}' of strategy {_strategy_label(strategy)}"
                    f"{did_you_mean(name, known)}; known: {', '.join(sorted(known))}"
                )
        defaults = _strategy_defaults(strategy)
        for name, r in space.items():
            numeric = isinstance(defaults.get(name), (int, float)) and not isinstance(
                defaults.get(name), bool
            )
            if numeric and r.kind == "choice" and any(isinstance(c, str) for c in r.choices):
                raise ConfigError(
                    f"--space {r}: {name} takes numbers (default {defaults[name]!r}); "
                    f"{SPACE_SYNTAX}"
                )
            if r.kind == "choice":
                _check_choices(strategy, r)
    return space


def _check_choices(strategy, r: ParamRange) -> None:
    """Each word among ``r``'s choices is a value the strategy takes (checked on its own, the
    other parameters at their defaults: numbers may depend on each other, words do not)."""
    validate = getattr(strategy_class(strategy), "validate_params", None)
    if validate is None:
        return
    for choice in r.choices:
        if not isinstance(choice, str):
            continue
        try:
            validate({r.name: choice})
        except ParameterError as exc:
            raise ConfigError(f"--space {r}: {choice!r} is not a value of {r.name}: {exc}") \
                from None


def strategy_class(strategy):
    """The strategy class of ``strategy`` (a class, or a name the engine resolves), or None
    when there is none or it cannot be imported."""
    if strategy is None:
        return None
    if isinstance(strategy, type):
        return strategy
    try:
        return resolve_strategy(strategy)
    except ImportError:
        return None


def _strategy_param_names(strategy) -> list[str] | None:
    cls = strategy_class(strategy)
    params = getattr(cls, "params", None)
    getkeys = getattr(params, "_getkeys", None)
    return list(getkeys()) if getkeys else None


def _strategy_defaults(strategy) -> dict:
    cls = strategy_class(strategy)
    params = getattr(cls, "params", None)
    items = getattr(params, "_getitems", None)
    return dict(items()) if items else {}


def _strategy_label(strategy) -> str:
    return strategy.__name__ if isinstance(strategy, type) else repr(strategy)


def point_key(params: dict, names) -> tuple:
    """The values of ``names`` in ``params``, as a key that finds equal parameter sets."""
    return tuple(_hashable(params.get(n)) for n in names)


def params_key(params: dict) -> tuple:
    """All of ``params`` as a key, whatever their order: one per distinct parameter set."""
    return tuple(sorted((k, _hashable(v)) for k, v in params.items()))


def _hashable(v):
    if isinstance(v, float) and v.is_integer():
        return v  # 2.0 == 2 hashes alike
    return v
