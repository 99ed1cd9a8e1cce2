"""Contract facts and the quarterly calendar of CME equity index futures.

Contract facts are frozen data with a source and a date. Values that change (margins, fees)
are fields with an "as of" comment, so they can be overridden per run without touching logic.

Sources (see ``shared/reference/m2k-contract-facts.md`` in the project's steering notes):

- multiplier and tick: CME M2K and RTY contract specification pages.
- expiry: 3rd Friday of March, June, September and December, trading stops 09:30 ET.
- roll: CME's roll convention, 8 calendar days before expiry (the Thursday before expiration week).
- trade date: the Globex session that opens at 18:00 New York time belongs to the next day.

Define another contract without subclassing:

>>> from m2k_bt.contracts import ContractSpec, contract_symbol
>>> MES = ContractSpec(root="MES", description="Micro E-mini S&P 500", multiplier=5.0,
...                    tick_size=0.25, maintenance_margin=1500.0, initial_margin=1650.0,
...                    commission=0.62)
>>> MES.tick_value
1.25
>>> contract_symbol(MES, 2025, 12)
'MESZ5'
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import math
import re
from dataclasses import dataclass

from .errors import ContractSpecError, did_you_mean
from .sessions import GLOBEX_REOPEN

__all__ = [
    "ContractSpec",
    "ContractMonth",
    "M2K",
    "RTY",
    "MONTH_CODES",
    "DEFAULT_ROLL_DAYS",
    "register_spec",
    "get_spec",
    "known_specs",
    "round_to_tick",
    "is_on_tick",
    "expiry_date",
    "roll_date",
    "contract_symbol",
    "parse_symbol",
    "contract_months",
    "next_contract",
    "front_contract",
    "trade_date",
    "exchange_holidays",
]

#: Futures month codes, January to December.
MONTH_CODES = "FGHJKMNQUVXZ"

#: CME roll convention: calendar days between the roll date and the expiry date.
DEFAULT_ROLL_DAYS = 8

#: Relative tolerance used to decide that a float price sits on the tick grid.
TICK_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ContractSpec:
    """The economics of one futures contract.

    - ``root`` (e.g. ``"M2K"``): the Globex symbol root.
    - ``description``: a human name.
    - ``multiplier``: dollars per index point per contract.
    - ``tick_size``: minimum price increment in index points; ``tick_value`` is derived.
    - ``months`` (def: ``"HMUZ"``): listed contract months as month codes.
    - ``exchange`` (def: ``"CME"``), ``currency`` (def: ``"USD"``).
    - ``commission``: all-in dollars per contract per side (broker + exchange + NFA).
    - ``maintenance_margin``, ``initial_margin``: dollars per contract, overnight.
    - ``intraday_margin`` (def: ``None``): dollars per contract for day trades, if the broker
      offers one.
    - ``first_trade`` (def: ``None``): the contract's launch date, for information.
    """

    root: str
    description: str
    multiplier: float
    tick_size: float
    maintenance_margin: float
    initial_margin: float
    commission: float
    intraday_margin: float | None = None
    months: str = "HMUZ"
    exchange: str = "CME"
    currency: str = "USD"
    first_trade: _dt.date | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z0-9]{1,6}", self.root or ""):
            raise ContractSpecError(
                f"root {self.root!r} must be 1-6 upper-case letters or digits, e.g. 'M2K'"
            )
        for name in ("multiplier", "tick_size", "maintenance_margin", "initial_margin"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ContractSpecError(
                    f"{self.root}: {name} must be a positive number, got {value!r}"
                )
        if not isinstance(self.commission, (int, float)) or self.commission < 0:
            raise ContractSpecError(
                f"{self.root}: commission must be >= 0 dollars per contract per side, "
                f"got {self.commission!r}"
            )
        if self.initial_margin < self.maintenance_margin:
            raise ContractSpecError(
                f"{self.root}: initial_margin {self.initial_margin} is below "
                f"maintenance_margin {self.maintenance_margin}; initial must be >= maintenance"
            )
        if self.intraday_margin is not None and not (
            0 < self.intraday_margin <= self.initial_margin
        ):
            raise ContractSpecError(
                f"{self.root}: intraday_margin must be > 0 and <= initial_margin "
                f"({self.initial_margin}), got {self.intraday_margin!r}"
            )
        if not self.months or any(m not in MONTH_CODES for m in self.months):
            raise ContractSpecError(
                f"{self.root}: months {self.months!r} must be month codes from {MONTH_CODES}"
            )

    @property
    def tick_value(self) -> float:
        """Dollars per tick per contract (``multiplier x tick_size``)."""
        return round(self.multiplier * self.tick_size, 10)

    @property
    def month_numbers(self) -> tuple[int, ...]:
        """The listed months as numbers 1-12, in calendar order."""
        return tuple(sorted(MONTH_CODES.index(c) + 1 for c in self.months))

    def round_price(self, price: float, mode: str = "nearest") -> float:
        """Snap ``price`` to this contract's tick grid (see :func:`round_to_tick`)."""
        return round_to_tick(price, self.tick_size, mode)

    def replace(self, **changes) -> ContractSpec:
        """A copy with some fields changed, validated again.

        >>> M2K.replace(commission=0.85).commission
        0.85
        """
        fields = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in fields:
                raise ContractSpecError(
                    f"ContractSpec has no field '{key}'{did_you_mean(key, fields)}"
                )
        return dataclasses.replace(self, **changes)


# Margins change often: these are dated defaults, override them per run.
# Maintenance $700 (as of 2025): CME M2K maintenance has run $550-700 since 2022
# (CME clearing margins, LEAN's M2K.csv 2022-01-07 $550, directaccessusa 2023-05-23 $620).
# Initial = 110% of maintenance for speculative accounts (CME clearing advisory 23-376, Dec 2023).
# Commission $0.62 per side (as of 2025): IBKR $0.25 + CME exchange fee $0.35 + NFA fee $0.02.
M2K = ContractSpec(
    root="M2K",
    description="Micro E-mini Russell 2000 Index futures",
    multiplier=5.0,  # $ per index point (CME M2K spec)
    tick_size=0.10,  # index points, = $0.50 (CME M2K spec)
    maintenance_margin=700.0,  # $ per contract, as of 2025
    initial_margin=770.0,  # $ per contract, 110% of maintenance, as of 2025
    commission=0.62,  # $ per contract per side, as of 2025
    first_trade=_dt.date(2019, 5, 6),  # CME launch (CME Q2-2019 recap)
)

# RTY: $50 per point; maintenance about $7,000 (2023-25 range $6,000-7,500); initial 110%.
# Commission $2.25 per side (as of 2025): IBKR $0.85 + CME $1.38 + NFA $0.02.
RTY = ContractSpec(
    root="RTY",
    description="E-mini Russell 2000 Index futures",
    multiplier=50.0,  # $ per index point (CME RTY spec)
    tick_size=0.10,  # index points, = $5.00 (CME RTY spec)
    maintenance_margin=7000.0,  # $ per contract, as of 2025
    initial_margin=7700.0,  # $ per contract, 110% of maintenance, as of 2025
    commission=2.25,  # $ per contract per side, as of 2025
    first_trade=_dt.date(2017, 7, 10),  # relaunch on CME
)

_REGISTRY: dict[str, ContractSpec] = {"M2K": M2K, "RTY": RTY}


def register_spec(spec: ContractSpec) -> ContractSpec:
    """Make ``spec`` known to :func:`get_spec`, :func:`parse_symbol` and the command line."""
    if not isinstance(spec, ContractSpec):
        raise ContractSpecError(f"register_spec needs a ContractSpec, got {type(spec).__name__}")
    _REGISTRY[spec.root] = spec
    return spec


def get_spec(root: str) -> ContractSpec:
    """Return the registered spec for ``root`` (case-insensitive).

    >>> get_spec("m2k").multiplier
    5.0
    """
    key = str(root).upper()
    if key not in _REGISTRY:
        raise ContractSpecError(
            f"unknown contract '{root}'{did_you_mean(key, _REGISTRY)}; "
            f"known: {', '.join(sorted(_REGISTRY))} (register others with register_spec)"
        )
    return _REGISTRY[key]


def known_specs() -> dict[str, ContractSpec]:
    """A copy of the registry: root -> spec."""
    return dict(_REGISTRY)


def round_to_tick(price: float, tick_size: float, mode: str = "nearest") -> float:
    """Snap ``price`` to a multiple of ``tick_size``.

    ``mode`` is ``"nearest"``, ``"up"`` (towards +inf) or ``"down"`` (towards -inf). Stops and
    limits for a buy are usually rounded up, for a sell down, so that rounding never makes the
    order more aggressive than asked.

    >>> round_to_tick(2000.04, 0.1)
    2000.0
    >>> round_to_tick(2000.01, 0.1, "up")
    2000.1
    >>> round_to_tick(1999.99, 0.1, "down")
    1999.9
    """
    if tick_size <= 0:
        raise ContractSpecError(f"tick_size must be > 0, got {tick_size!r}")
    ticks = price / tick_size
    nearest = round(ticks)
    if abs(ticks - nearest) <= TICK_TOLERANCE * max(1.0, abs(ticks)):
        n = nearest  # already on the grid, up to float noise
    elif mode == "nearest":
        n = nearest
    elif mode == "up":
        n = math.ceil(ticks)
    elif mode == "down":
        n = math.floor(ticks)
    else:
        raise ContractSpecError(f"round mode must be 'nearest', 'up' or 'down', got {mode!r}")
    decimals = max(0, -math.floor(math.log10(tick_size)) + 2)
    return round(n * tick_size, decimals)


def is_on_tick(price: float, tick_size: float) -> bool:
    """True when ``price`` is a multiple of ``tick_size`` up to float noise.

    >>> is_on_tick(2000.1, 0.1), is_on_tick(2000.05, 0.1)
    (True, False)
    """
    ticks = price / tick_size
    return abs(ticks - round(ticks)) <= TICK_TOLERANCE * max(1.0, abs(ticks))


@functools.lru_cache(maxsize=1)
def exchange_holidays() -> frozenset[_dt.date]:
    """Full-day NYSE closures, 1990-2100, from ``pandas_market_calendars``.

    Equity index futures settle to the Special Opening Quotation of the cash index, which needs
    the stock market open: an expiry that falls on an NYSE holiday (Good Friday 2008-03-21,
    Juneteenth 2026-06-19) moves to the business day before.
    """
    import pandas_market_calendars as mcal

    cal = mcal.get_calendar("NYSE")
    days = cal.holidays().holidays
    return frozenset(
        d.astype("datetime64[D]").item() for d in days if 1990 <= d.astype(object).year <= 2100
    )


def _is_business_day(day: _dt.date) -> bool:
    return day.weekday() < 5 and day not in exchange_holidays()


def _previous_business_day(day: _dt.date) -> _dt.date:
    while not _is_business_day(day):
        day -= _dt.timedelta(days=1)
    return day


def _check_month(spec: ContractSpec, year: int, month: int) -> None:
    if not isinstance(year, int) or not 1900 <= year <= 2200:
        raise ContractSpecError(f"year must be a 4-digit year, got {year!r}")
    if month not in spec.month_numbers:
        listed = ", ".join(str(m) for m in spec.month_numbers)
        raise ContractSpecError(
            f"{spec.root} lists no contract in month {month!r}; listed months: {listed}"
        )


def expiry_date(spec: ContractSpec, year: int, month: int) -> _dt.date:
    """Last trading day: the 3rd Friday of the month, or the business day before it when that
    Friday is an exchange holiday.

    >>> expiry_date(M2K, 2025, 12)
    datetime.date(2025, 12, 19)
    >>> expiry_date(M2K, 2026, 6)  # Juneteenth falls on the 3rd Friday
    datetime.date(2026, 6, 18)
    """
    _check_month(spec, year, month)
    first = _dt.date(year, month, 1)
    first_friday = first + _dt.timedelta(days=(4 - first.weekday()) % 7)
    third_friday = first_friday + _dt.timedelta(days=14)
    return _previous_business_day(third_friday)


def roll_date(
    spec: ContractSpec, year: int, month: int, days_before: int = DEFAULT_ROLL_DAYS
) -> _dt.date:
    """Trade date on which positions move to the next contract.

    Default: ``days_before=8`` calendar days before :func:`expiry_date`, CME's convention (the
    Thursday before expiration week); moved to the business day before if that day is a holiday.
    The roll happens at the open of that trade date's session (18:00 New York the evening before).

    >>> roll_date(M2K, 2025, 12)
    datetime.date(2025, 12, 11)
    >>> roll_date(M2K, 2024, 3)
    datetime.date(2024, 3, 7)
    """
    if not isinstance(days_before, int) or not 0 <= days_before <= 60:
        raise ContractSpecError(f"days_before must be a whole number 0-60, got {days_before!r}")
    expiry = expiry_date(spec, year, month)
    return _previous_business_day(expiry - _dt.timedelta(days=days_before))


def contract_symbol(spec: ContractSpec, year: int, month: int, year_digits: int = 1) -> str:
    """Globex symbol: root, month code, last 1 (default) or 2 digits of the year.

    >>> contract_symbol(M2K, 2025, 12), contract_symbol(M2K, 2025, 12, year_digits=2)
    ('M2KZ5', 'M2KZ25')
    """
    _check_month(spec, year, month)
    if year_digits not in (1, 2):
        raise ContractSpecError(f"year_digits must be 1 or 2, got {year_digits!r}")
    return f"{spec.root}{MONTH_CODES[month - 1]}{year % 10 ** year_digits:0{year_digits}d}"


@dataclass(frozen=True, order=True)
class ContractMonth:
    """One listed contract: ``year``, ``month`` and its ``spec``."""

    year: int
    month: int
    spec: ContractSpec = dataclasses.field(compare=False)

    @property
    def symbol(self) -> str:
        """One-digit-year Globex symbol, e.g. ``M2KZ5``."""
        return contract_symbol(self.spec, self.year, self.month)

    @property
    def expiry(self) -> _dt.date:
        return expiry_date(self.spec, self.year, self.month)

    def roll(self, days_before: int = DEFAULT_ROLL_DAYS) -> _dt.date:
        return roll_date(self.spec, self.year, self.month, days_before)

    def next(self) -> ContractMonth:
        return next_contract(self.spec, self.year, self.month)

    def __str__(self) -> str:
        return self.symbol


_SYMBOL_RE = re.compile(r"^([A-Z0-9]+?)([FGHJKMNQUVXZ])(\d{1,2})$")


def parse_symbol(symbol: str, ref_year: int | None = None) -> ContractMonth:
    """Parse ``"M2KZ5"`` or ``"M2KZ25"`` into a :class:`ContractMonth`.

    A one-digit year is read as the latest year with that last digit that is no later than
    ``ref_year + 1`` (``ref_year`` defaults to this year), since contracts are listed about five
    quarters ahead.

    >>> parse_symbol("M2KZ25").year, parse_symbol("M2KZ25").month
    (2025, 12)
    >>> parse_symbol("RTYH9", ref_year=2026).year
    2019
    """
    text = str(symbol).strip().upper()
    m = _SYMBOL_RE.match(text)
    if not m:
        raise ContractSpecError(
            f"cannot parse contract symbol {symbol!r}: expected root + month code + year, "
            f"e.g. 'M2KZ5' or 'M2KZ25'"
        )
    root, code, digits = m.groups()
    spec = get_spec(root)
    month = MONTH_CODES.index(code) + 1
    if len(digits) == 2:
        year = 2000 + int(digits)
    else:
        ref = ref_year if ref_year is not None else _dt.date.today().year
        year = (ref + 1) - ((ref + 1 - int(digits)) % 10)
    _check_month(spec, year, month)
    return ContractMonth(year, month, spec)


def next_contract(spec: ContractSpec, year: int, month: int) -> ContractMonth:
    """The listed contract after (year, month).

    >>> str(next_contract(M2K, 2025, 12))
    'M2KH6'
    """
    for m in spec.month_numbers:
        if m > month:
            return ContractMonth(year, m, spec)
    return ContractMonth(year + 1, spec.month_numbers[0], spec)


def contract_months(spec: ContractSpec, start: _dt.date, end: _dt.date) -> list[ContractMonth]:
    """Every listed contract whose expiry falls in [start, end]."""
    out = []
    c = ContractMonth(start.year, spec.month_numbers[0], spec)
    while c.expiry <= end:
        if c.expiry >= start:
            out.append(c)
        c = c.next()
    return out


def trade_date(when) -> _dt.date:
    """CME trade date of a moment: from 18:00 New York time on, it is the next day's.

    Naive datetimes are New York time; aware ones are converted. A plain date is returned as is.

    >>> trade_date(_dt.datetime(2025, 12, 10, 18, 0))
    datetime.date(2025, 12, 11)
    >>> trade_date(_dt.datetime(2025, 12, 10, 17, 59))
    datetime.date(2025, 12, 10)
    """
    if isinstance(when, _dt.datetime):
        if when.tzinfo is not None:
            from zoneinfo import ZoneInfo

            when = when.astimezone(ZoneInfo("America/New_York"))
        day = when.date()
        return day + _dt.timedelta(days=1) if when.hour >= GLOBEX_REOPEN.hour else day
    if isinstance(when, _dt.date):
        return when
    raise ContractSpecError(f"expected a date or datetime, got {type(when).__name__}")


def front_contract(
    spec: ContractSpec, when, days_before: int = DEFAULT_ROLL_DAYS
) -> ContractMonth:
    """The contract to trade at ``when`` under the roll rule.

    Positions move to the next contract from the session that opens 18:00 New York time on the
    evening before the roll date, i.e. from trade date :func:`roll_date` on.

    >>> str(front_contract(M2K, _dt.date(2025, 12, 10)))
    'M2KZ5'
    >>> str(front_contract(M2K, _dt.datetime(2025, 12, 10, 18, 0)))  # roll session has opened
    'M2KH6'
    """
    day = trade_date(when)
    c = ContractMonth(day.year, spec.month_numbers[0], spec)
    # first listed contract of the year whose roll date is after the trade date
    while day >= c.roll(days_before):
        c = c.next()
    return c
