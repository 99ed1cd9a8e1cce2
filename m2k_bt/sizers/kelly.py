"""Position sizers for M2K: a fixed count and a futures-aware fractional Kelly sizer.

Both plug in with one line: ``cerebro.addsizer(KellySizer)`` or
``cerebro.addsizer(FixedContracts, contracts=2)``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import heapq
import math
from dataclasses import dataclass

import backtrader as bt
import numpy as np

from ..errors import ParameterError
from ..rules import kelly as rules
from ..rules import margin as margin_rules
from ..rules import money, prices
from ..rules.kelly import BINDINGS

__all__ = ["kelly_fraction", "signal_trades", "FixedContracts", "KellySizer", "KellyDecision",
           "BINDINGS", "exposure_ratio", "kelly_samples"]

#: Largest denominator of ``max_exposure`` as an exact fraction (:func:`exposure_ratio`).
EXPOSURE_DENOMINATOR = 10**6


@functools.lru_cache(maxsize=256)  # a study's trials ask for the same cap again and again
def exposure_ratio(max_exposure: float) -> tuple[int, int]:
    """``max_exposure`` as the exact fraction (numerator, denominator) its decimal digits say,
    for the integer exposure cap (the nearest fraction with a denominator <= 10**6 when it has
    more digits).

    >>> exposure_ratio(2.0), exposure_ratio(0.3)
    ((2, 1), (3, 10))
    """
    from fractions import Fraction

    f = Fraction(repr(float(max_exposure))).limit_denominator(EXPOSURE_DENOMINATOR)
    return f.numerator, f.denominator


def kelly_samples(trades: list[dict]) -> np.ndarray:
    """The Kelly samples of closed trades: each one's net cents per contract, in 1/100 cent
    (:func:`m2k_bt.rules.money.per_contract`), in order; trades without contracts are left
    out.

    >>> kelly_samples([{"net_pnl": 1.0, "contracts": 3}, {"net_pnl": -0.5, "contracts": 1}])
    array([ 3333, -5000])
    """
    return np.array([money.per_contract(money.to_cents(t["net_pnl"]), int(t["contracts"]))
                     for t in trades if t["contracts"]], np.int64)



def kelly_fraction(p: float, b: float) -> float:
    """Kelly's optimal fraction f* = (b*p - q) / b, with q = 1 - p.

    ``p`` is the probability of winning and ``b`` the ratio of the average win to the average
    loss. A result <= 0 means the bet has no edge: do not trade.

    >>> round(kelly_fraction(0.55, 1.5), 12)   # (1.5*0.55 - 0.45) / 1.5
    0.25
    >>> kelly_fraction(0.5, 1.0)
    0.0
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ParameterError(f"kelly_fraction: p (win probability) must be in [0, 1], got {p!r}")
    if (isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b)
            or b <= 0.0):
        raise ParameterError(
            f"kelly_fraction: b (average win / average loss) must be a finite number > 0, "
            f"got {b!r}"
        )
    return rules.kelly_fraction(p, b)


def signal_trades(log: list[dict], last: int | None = None,
                  open_trade_id: int | None = None) -> list[dict]:
    """The closed signal trades of a strategy's ``trade_log``: the legs of a rolled position
    (rows sharing a ``trade_id``) merged into one, P&L and costs summed.

    A merged trade has the first leg's ``entry_dt`` and ``contracts``, the last leg's
    ``exit_dt`` and ``exit_reason``, and ``gross_pnl``, ``commission``, ``net_pnl`` summed over
    the legs (so the roll's commission and slippage are in it), with ``legs`` = the number of
    rows merged. Trades still open are left out: a last leg with reason ``'end'`` (open when the
    data ended), and a last leg with reason ``'roll'`` whose ``trade_id`` is ``open_trade_id``
    (the position the roll reopened, still held). Rows without a ``trade_id`` are one trade
    each. ``last``: only the last ``last`` trades are built (the log is read from its end).

    >>> log = [
    ...     {"trade_id": 1, "net_pnl": -10.0, "gross_pnl": -8.76, "commission": 1.24,
    ...      "contracts": 2, "exit_reason": "roll", "entry_dt": 1, "exit_dt": 2},
    ...     {"trade_id": 1, "net_pnl": 30.0, "gross_pnl": 31.24, "commission": 1.24,
    ...      "contracts": 2, "exit_reason": "signal", "entry_dt": 2, "exit_dt": 3},
    ... ]
    >>> [(t["net_pnl"], t["commission"], t["legs"]) for t in signal_trades(log)]
    [(20.0, 2.48, 2)]
    """
    groups: list[list[dict]] = []
    for row in reversed(log):
        tid = row.get("trade_id")
        if groups and tid is not None and groups[-1][0].get("trade_id") == tid:
            groups[-1].insert(0, row)
            continue
        if last is not None and len(groups) > last:
            break
        groups.append([row])
    out = []
    for legs in reversed(groups):
        end = legs[-1]
        reason = end.get("exit_reason")
        if reason == "end" or (reason == "roll" and end.get("trade_id") is not None
                               and end.get("trade_id") == open_trade_id):
            continue
        if len(legs) == 1:
            out.append({**end, "legs": 1})
            continue
        merged = {**legs[0], "exit_dt": end.get("exit_dt"), "exit_reason": reason,
                  "legs": len(legs)}
        for key in ("gross_pnl", "commission", "net_pnl"):
            merged[key] = sum(float(leg.get(key) or 0.0) for leg in legs)
        out.append(merged)
    return out if last is None else out[-last:]


def _check_int(owner: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ParameterError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")


def _check_pos(owner: str, name: str, value, high: float | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f" and <= {high}" if high is not None else ""
        raise ParameterError(f"{owner}: {name} must be a number > 0{bound}, got {value!r}")


class FixedContracts(bt.Sizer):
    """Always the same number of contracts.

    Params:

    - ``contracts`` (def: ``1``): contracts per entry.
    """

    params = (("contracts", 1),)

    def __init__(self) -> None:
        _check_int("FixedContracts", "contracts", self.p.contracts, 1)

    def _getsizing(self, comminfo, cash, data, isbuy) -> int:
        return self.p.contracts


@dataclass(frozen=True)
class KellyDecision:
    """One sizing decision of :class:`KellySizer`.

    ``p``, ``b`` and ``f_star`` are ``None`` during warm-up (and ``b``/``f_star`` when the
    window holds no winner or no loser). ``f_used`` is the fraction of equity risked after
    scaling and the ``max_fraction`` cap. ``risk_per_contract`` is in dollars. ``binding`` names
    what decided ``contracts`` (see :data:`BINDINGS`); ``trades_used`` is how many closed trades
    the estimate saw.
    """

    dt: _dt.datetime | None
    p: float | None
    b: float | None
    f_star: float | None
    f_used: float | None
    equity: float
    risk_per_contract: float | None
    contracts: int
    binding: str
    trades_used: int


class KellySizer(bt.Sizer):
    """Fractional Kelly sizing in contracts, from the strategy's own closed trades.

    On every entry it takes the last ``lookback`` trades the strategy has closed (its
    ``trade_log``, net of commission and slippage; so no trade that closes later can inform the
    size), one sample per signal trade: the legs of a rolled position are merged, their P&L and
    the roll's costs summed (:func:`signal_trades`), and per contract estimates ``p`` = share of
    winning trades and ``b`` = average win / average loss. Then:

    1. Fewer than ``min_trades`` trades: ``warmup_contracts`` (binding ``'warmup'``).
    2. f* = :func:`kelly_fraction`\\ (p, b); f* <= 0 (or no winner at all): no trade
       (``'no_edge'``).
    3. f = min(``kelly_scale`` x f*, ``max_fraction``) (``'kelly'`` or ``'max_fraction'``).
    4. contracts = floor(f x equity / risk per contract), where the risk is the strategy's stop
       distance x the multiplier when it has a stop (``strategy.stop_distance(data)``), else the
       average losing trade per contract. Zero contracts here is ``'zero'``.
    5. Caps, each recorded when it binds: notional (price x multiplier x contracts) within
       ``max_exposure`` x equity (``'max_exposure'``); initial margin within free cash
       (``'margin'``); at most ``max_contracts`` (``'max_contracts'``). The warm-up size is
       capped the same way.

    Equity is ``broker.getvalue()`` (cash plus margin held, marked to market), free cash
    ``broker.getcash()`` plus the margin a reversal's closing order is about to release; prices
    are the signal bar's close (the order fills at the next open). A window with winners but no
    loser has f* = p = 1 and no measured loss: without a stop the warm-up size is used.

    Every decision is appended to ``decisions`` (:class:`KellyDecision`). Strategies without a
    ``trade_log`` can feed trades with :meth:`add_trade`.

    Declined entries keep informing the estimate: strategies of this pack follow them on paper
    (``shadow_log``), so a run of losses pauses trading until the signal shows an edge again
    instead of stopping it for good. The window then mixes real trades (per contract) and paper
    trades (one contract each), in the order they closed.

    Params:

    - ``lookback`` (def: ``50``): closed trades in the rolling estimate.
    - ``min_trades`` (def: ``20``): closed trades needed before Kelly is used.
    - ``warmup_contracts`` (def: ``1``): contracts per entry during warm-up.
    - ``kelly_scale`` (def: ``0.5``): fraction of full Kelly (0.5 = half Kelly).
    - ``max_fraction`` (def: ``0.2``): most equity risked on one trade after scaling.
    - ``max_exposure`` (def: ``2.0``): most notional exposure, as a multiple of equity.
    - ``max_contracts`` (def: ``50``): hard cap on contracts per entry.
    - ``paper_trades`` (def: ``True``): also learn from the strategy's ``shadow_log``, the
      signals this sizer declined, followed on paper with one contract net of costs (see
      :class:`~m2k_bt.strategies.base.M2KStrategy`). Without them, once the window shows no edge
      no new trade closes and the sizer never trades again.
    """

    params = (
        ("lookback", 50),
        ("min_trades", 20),
        ("warmup_contracts", 1),
        ("kelly_scale", 0.5),
        ("max_fraction", 0.2),
        ("max_exposure", 2.0),
        ("max_contracts", 50),
        ("paper_trades", True),
    )

    def __init__(self) -> None:
        p = self.p
        _check_int("KellySizer", "lookback", p.lookback, 1)
        _check_int("KellySizer", "min_trades", p.min_trades, 1)
        _check_int("KellySizer", "warmup_contracts", p.warmup_contracts, 0)
        _check_int("KellySizer", "max_contracts", p.max_contracts, 1)
        _check_pos("KellySizer", "kelly_scale", p.kelly_scale, 1.0)
        _check_pos("KellySizer", "max_fraction", p.max_fraction, 1.0)
        _check_pos("KellySizer", "max_exposure", p.max_exposure)
        if p.min_trades > p.lookback:
            raise ParameterError(
                f"KellySizer: min_trades ({p.min_trades}) must be <= lookback ({p.lookback}), "
                f"or the sizer never leaves warm-up"
            )
        self.decisions: list[KellyDecision] = []
        self._extra: list[dict] = []

    def add_trade(self, net_pnl: float, contracts: int, exit_dt=None) -> None:
        """Feed one closed trade (net of costs) when the strategy keeps no ``trade_log``."""
        self._extra.append({"net_pnl": float(net_pnl), "contracts": int(contracts),
                            "exit_dt": exit_dt})

    def _window(self) -> list[dict]:
        n = self.p.lookback
        log = getattr(self.strategy, "trade_log", None)
        # one sample per signal trade: a roll's legs are merged (see signal_trades)
        trades = (signal_trades(log, n, getattr(self.strategy, "open_trade_id", None)) if log
                  else self._extra)
        shadow = getattr(self.strategy, "shadow_log", None) if self.p.paper_trades else None
        if shadow:
            trades = list(heapq.merge(trades[-n:], shadow[-n:], key=lambda t: t["exit_dt"]))
        return trades[-n:]

    def _stop_points(self, data) -> float:
        stop_distance = getattr(self.strategy, "stop_distance", None)
        points = stop_distance(data) if callable(stop_distance) else None
        return float(points) if points else math.nan

    def _getsizing(self, comminfo, cash, data, isbuy) -> int:
        decision = self.decide(comminfo, data, isbuy)
        self.decisions.append(decision)
        return decision.contracts

    def decide(self, comminfo, data, isbuy: bool) -> KellyDecision:
        """Work out the contracts for an entry now, without recording the decision.

        The arithmetic is :func:`m2k_bt.rules.kelly.decide`'s, the same the compiled engine
        runs; this method gathers its inputs from the strategy, the broker and the data.
        """
        p = self.p
        price = float(data.close[0])
        mult = float(getattr(comminfo.p, "mult", 1.0) or 1.0)
        equity = float(self.broker.getvalue())
        margin = float(comminfo.get_margin(price) or price * mult)
        position = self.strategy.getposition(data).size
        # a reversal's close releases the position's margin first
        free_cash = margin_rules.free_cash(float(self.broker.getcash()), position, bool(isbuy),
                                           margin)
        dt = data.datetime.datetime(0) if len(data) else None
        trades = self._window()
        n = len(trades)
        wins, won, losses, lost = 0, 0, 0, 0
        if n >= p.min_trades:  # past warm-up: the per-contract results, in closing order
            samples = kelly_samples(trades)
            wins, won, losses, lost = rules.tally(samples, 0, len(samples))
        exp_num, exp_den = exposure_ratio(p.max_exposure)
        contracts, binding, kp, kb, f_star, f_used, risk = rules.decide(
            n, p.min_trades, p.warmup_contracts, wins, won, losses, lost,
            rules.stop_risk(self._stop_points(data), mult), money.to_cents(equity),
            money.to_cents(free_cash), prices.to_units(price, mult * 100.0),
            money.to_cents(margin), float(p.kelly_scale), float(p.max_fraction), exp_num,
            exp_den, p.max_contracts)
        return KellyDecision(dt=dt, p=_defined(kp), b=_defined(kb), f_star=_defined(f_star),
                             f_used=_defined(f_used), equity=equity,
                             risk_per_contract=_defined(risk), contracts=int(contracts),
                             binding=BINDINGS[binding], trades_used=n)


def _defined(x: float) -> float | None:
    """``None`` for the rulebook's NaN ("not defined")."""
    return None if math.isnan(x) else x
