"""Commission and margin for CME equity index futures, as a backtrader ``CommInfoBase``.

One line in an existing cerebro script gives M2K's economics::

    cerebro.broker.addcommissioninfo(M2KCommInfo())

P&L per contract is points x $5; commission is a fixed dollar amount per contract per side; cash
moves with the mark to market every bar, exactly as backtrader does for futures.

backtrader traps this class avoids: ``stocklike`` and ``commtype`` are set explicitly (a
``margin=None`` never silently turns the contract stock-like), no parameter is written after
construction, and the percentage commission (which ignores the multiplier) is never used.
"""

from __future__ import annotations

import math

import backtrader as bt

from ..contracts import M2K, ContractSpec, round_to_tick
from ..errors import ContractSpecError, check_known
from ..rules import fees, pnl
from ..rules import margin as margin_rules

__all__ = ["M2KCommInfo", "slippage_points"]


def _positive(name: str, value, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ContractSpecError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


class M2KCommInfo(bt.CommInfoBase):
    """Futures commission and margin scheme, defaults for M2K.

    Params:

    - ``commission`` (def: ``0.62``): all-in dollars per contract per side (IBKR $0.25 + CME
      exchange fee $0.35 + NFA $0.02, as of 2025); a whole number of cents.
    - ``mult`` (def: ``5.0``): dollars per index point.
    - ``margin`` (def: ``770.0``): initial (overnight) margin, dollars per contract. Orders whose
      margin does not fit in free cash are rejected with status ``Margin``.
    - ``maintenance_margin`` (def: ``700.0``): dollars per contract; ``FuturesBroker`` liquidates
      when equity falls below it.
    - ``intraday_margin`` (def: ``None``): dollars per contract inside ``FuturesBroker``'s
      intraday window; ``None`` means the overnight margins apply all day.
    - ``tick_size`` (def: ``0.10``): minimum price increment in index points.
    - ``stocklike`` (def: ``False``) and ``commtype`` (def: ``COMM_FIXED``): fixed, set so
      backtrader's legacy rules never switch the scheme.

    Example: long 2 contracts from 2000.0 to 2010.5 nets
    2 x 10.5 pts x $5 - 4 sides x $0.62 = $102.52.

    >>> ci = M2KCommInfo()
    >>> ci.profitandloss(2, 2000.0, 2010.5) - ci.getcommission(2, 2000.0) * 2
    102.52
    """

    params = (
        ("stocklike", False),
        ("commtype", bt.CommInfoBase.COMM_FIXED),
        ("commission", M2K.commission),
        ("mult", M2K.multiplier),
        ("margin", M2K.initial_margin),
        ("maintenance_margin", M2K.maintenance_margin),
        ("intraday_margin", M2K.intraday_margin),
        ("tick_size", M2K.tick_size),
    )

    def __init__(self, **unknown):
        if unknown:
            check_known(unknown, self.params._getkeys(), "M2KCommInfo parameter", ContractSpecError)
        p = self.p
        if p.stocklike or p.commtype != bt.CommInfoBase.COMM_FIXED:
            raise ContractSpecError(
                "M2KCommInfo is a futures scheme: leave stocklike=False and commtype=COMM_FIXED"
            )
        _positive("commission", p.commission, allow_zero=True)
        if abs(p.commission * 100 - round(p.commission * 100)) > 1e-6:
            raise ContractSpecError(
                f"commission {p.commission!r} is not a whole number of cents; money is booked "
                f"in cents: give dollars and cents per contract per side, e.g. 0.62")
        _positive("mult", p.mult)
        if p.margin is None:
            raise ContractSpecError(
                "margin (initial margin, $ per contract) must be set; None would make backtrader "
                "treat the contract as stock-like"
            )
        _positive("margin", p.margin)
        _positive("maintenance_margin", p.maintenance_margin)
        _positive("tick_size", p.tick_size)
        if p.maintenance_margin > p.margin:
            raise ContractSpecError(
                f"maintenance_margin {p.maintenance_margin} is above the initial margin "
                f"{p.margin}; initial must be >= maintenance"
            )
        if p.intraday_margin is not None:
            _positive("intraday_margin", p.intraday_margin)
            if p.intraday_margin > p.margin:
                raise ContractSpecError(
                    f"intraday_margin {p.intraday_margin} is above the initial margin {p.margin}"
                )
        super().__init__()
        self._intraday_active = False

    @classmethod
    def from_spec(cls, spec: ContractSpec, **overrides) -> M2KCommInfo:
        """A scheme with ``spec``'s multiplier, tick, fees and margins, then ``overrides``.

        >>> from m2k_bt.contracts import RTY
        >>> M2KCommInfo.from_spec(RTY).p.mult
        50.0
        """
        if not isinstance(spec, ContractSpec):
            raise ContractSpecError(f"from_spec needs a ContractSpec, got {type(spec).__name__}")
        check_known(overrides, cls.params._getkeys(), "M2KCommInfo parameter", ContractSpecError)
        kwargs = dict(
            commission=spec.commission,
            mult=spec.multiplier,
            margin=spec.initial_margin,
            maintenance_margin=spec.maintenance_margin,
            intraday_margin=spec.intraday_margin,
            tick_size=spec.tick_size,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- the rulebook's answers to backtrader's questions ----------------------------------
    def _getcommission(self, size, price, pseudoexec) -> float:
        """Commission: |size| x ``commission`` (:func:`m2k_bt.rules.fees.commission`)."""
        return fees.commission(size, self.p.commission)

    def profitandloss(self, size, price, newprice) -> float:
        """P&L of ``size`` contracts from ``price`` to ``newprice``: size x move x ``mult``."""
        return pnl.pnl(size, price, newprice, self.p.mult)

    def cashadjust(self, size, price, newprice) -> float:
        """The futures' daily cash adjustment: the P&L of the move, paid or received in cash."""
        return pnl.pnl(size, price, newprice, self.p.mult)

    def getoperationcost(self, size, price) -> float:
        """Cash an order needs: its initial margin (:func:`m2k_bt.rules.margin.margin_held`)."""
        return margin_rules.margin_held(size, self.get_margin(price))

    def getvaluesize(self, size, price) -> float:
        """Value of ``size`` contracts: the initial margin they hold."""
        return margin_rules.margin_held(size, self.get_margin(price))

    def getvalue(self, position, price) -> float:
        """Value of a position: the initial margin it holds."""
        return margin_rules.margin_held(position.size, self.get_margin(price))

    # -- margins ---------------------------------------------------------------------------
    def _intraday(self) -> float:
        im = self.p.intraday_margin
        return math.nan if im is None else float(im)

    def get_margin(self, price: float) -> float:
        """Initial margin per contract now: the intraday margin while ``FuturesBroker`` has the
        intraday window open and one is set, else the overnight ``margin``."""
        return margin_rules.regime_margin(self._intraday_active, float(self.p.margin),
                                          self._intraday())

    def maintenance_per_contract(self) -> float:
        """Maintenance requirement per contract now (intraday margin inside the window)."""
        return margin_rules.regime_margin(self._intraday_active,
                                          float(self.p.maintenance_margin), self._intraday())

    @property
    def intraday_active(self) -> bool:
        """True while the broker applies the intraday margin."""
        return self._intraday_active

    def set_intraday(self, active: bool) -> None:
        """Switch the intraday regime; called by ``FuturesBroker``, which rebases cash."""
        self._intraday_active = bool(active) and self.p.intraday_margin is not None

    # -- prices ----------------------------------------------------------------------------
    def round_price(self, price: float, mode: str = "nearest") -> float:
        """Snap ``price`` to this contract's tick grid.

        >>> M2KCommInfo().round_price(2000.04)
        2000.0
        """
        return round_to_tick(price, self.p.tick_size, mode)

    @property
    def tick_value(self) -> float:
        """Dollars per tick per contract."""
        return round(self.p.tick_size * self.p.mult, 10)


def slippage_points(ticks: float, tick_size: float = M2K.tick_size) -> float:
    """Fixed slippage expressed in ticks, as index points.

    >>> slippage_points(1)
    0.1
    """
    _positive("slippage ticks", ticks, allow_zero=True)
    return round(ticks * tick_size, 10)
