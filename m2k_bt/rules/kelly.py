"""The Kelly decision: from the closed trades' per-contract results to a number of contracts
and the rule that decided it.

:class:`~m2k_bt.sizers.kelly.KellySizer` (``decide``) and the compiled loop both size their
entries with :func:`decide`; the steps and caps are documented on the sizer. Binding codes are
positions in :data:`BINDINGS`. ``NaN`` stands for "not defined" (the sizer reports ``None``).

>>> round(kelly_fraction(0.55, 1.5), 12)   # (1.5 x 0.55 - 0.45) / 1.5
0.25
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["BINDINGS", "WARMUP", "NO_EDGE", "KELLY", "MAX_FRACTION", "ZERO", "MAX_EXPOSURE",
           "MARGIN", "MAX_CONTRACTS", "kelly_fraction", "tally", "estimate", "stop_risk",
           "apply_caps", "decide"]

#: What decided a decision's contract count, in the order the rules are applied.
BINDINGS = ("warmup", "no_edge", "kelly", "max_fraction", "zero", "max_exposure", "margin",
            "max_contracts")
#: The binding codes: ``BINDINGS[code]`` is the name.
WARMUP, NO_EDGE, KELLY, MAX_FRACTION, ZERO, MAX_EXPOSURE, MARGIN, MAX_CONTRACTS = range(8)

#: Added before flooring a contract count, so that a ratio a hair below a whole number
#: (float noise, e.g. 11.999999999999998) counts as that number.
FLOOR_EPSILON = 1e-9


@njit(cache=True)
def kelly_fraction(p, b):
    """Kelly's optimal fraction f* = (b p - q) / b, q = 1 - p (no checks; see
    :func:`m2k_bt.sizers.kelly.kelly_fraction` for the checked one)."""
    return (b * p - (1.0 - p)) / b


@njit(cache=True)
def tally(values, start, count):
    """Winners and losers among ``count`` per-contract results of the ring buffer ``values``
    from index ``start``: ``(wins, sum of wins, losses, sum of losses as a positive number)``,
    summed in order."""
    wins = 0
    losses = 0
    won = 0.0
    lost = 0.0
    size = values.shape[0]
    for q in range(count):
        x = values[(start + q) % size]
        if x > 0:
            wins += 1
            won += x
        elif x < 0:
            losses += 1
            lost += -x
    return wins, won, losses, lost


@njit(cache=True)
def estimate(n, wins, won, losses, lost):
    """``(p, b, f*)`` from ``n`` trades: p = wins / n, b = average win / average loss,
    f* = :func:`kelly_fraction` (p, b); with winners and no loser f* = p (b unbounded).
    ``NaN`` where undefined (b and f* without a winner)."""
    p = wins / n
    b = np.nan
    f_star = np.nan
    if wins == 0:
        return p, b, f_star
    if losses:
        b = (won / wins) / (lost / losses)
        f_star = kelly_fraction(p, b)
    else:
        f_star = p
    return p, b, f_star


@njit(cache=True)
def stop_risk(points, mult):
    """Dollars at risk per contract with a stop ``points`` away (``NaN``: no stop)."""
    return points * mult if points > 0 else np.nan


@njit(cache=True)
def apply_caps(contracts, binding, equity, free_cash, price, mult, margin, max_exposure,
               max_contracts):
    """``(contracts, binding)`` after the caps, each recorded when it binds: notional
    within ``max_exposure`` x equity, initial ``margin`` within free cash (no cap when the
    margin is not positive), at most ``max_contracts``."""
    cap = int(math.floor(max_exposure * max(equity, 0.0) / (price * mult) + FLOOR_EPSILON))
    if cap < contracts:
        contracts = cap
        binding = MAX_EXPOSURE
    if margin > 0:
        cap = int(math.floor(max(free_cash, 0.0) / margin + FLOOR_EPSILON))
        if cap < contracts:
            contracts = cap
            binding = MARGIN
    if max_contracts < contracts:
        contracts = max_contracts
        binding = MAX_CONTRACTS
    return contracts, binding


@njit(cache=True)
def decide(n, min_trades, warmup, wins, won, losses, lost, risk, equity, free_cash, price, mult,
           margin, kelly_scale, max_fraction, max_exposure, max_contracts):
    """One sizing decision from ``n`` closed trades (their :func:`tally`), the stop's ``risk``
    per contract (``NaN``: no stop), equity, free cash, the entry price, the multiplier and the
    initial margin per contract, and the sizer's parameters.

    Returns ``(contracts, binding, p, b, f_star, f_used, risk_per_contract)``.
    """
    p = np.nan
    b = np.nan
    f_star = np.nan
    f_used = np.nan
    contracts = warmup
    binding = WARMUP
    if n >= min_trades:
        p, b, f_star = estimate(n, wins, won, losses, lost)
        if wins == 0 or f_star <= 0:
            return 0, NO_EDGE, p, b, f_star, f_used, risk
        if not risk > 0:  # no stop: the average loss per contract, if one was measured
            risk = lost / losses if losses else np.nan
        if not np.isnan(risk):
            f_used = kelly_scale * f_star
            binding = KELLY
            if f_used > max_fraction:
                f_used = max_fraction
                binding = MAX_FRACTION
            contracts = int(math.floor(f_used * max(equity, 0.0) / risk + FLOOR_EPSILON))
            if contracts <= 0:
                return 0, ZERO, p, b, f_star, f_used, risk
        # else no stop and no loss measured: cannot size on risk yet, the warm-up size
    contracts, binding = apply_caps(contracts, binding, equity, free_cash, price, mult, margin,
                                    max_exposure, max_contracts)
    return max(0, contracts), binding, p, b, f_star, f_used, risk
