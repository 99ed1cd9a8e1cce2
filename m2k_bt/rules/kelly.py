"""The Kelly decision: from the closed trades' per-contract results to a number of contracts
and the rule that decided it.

Exact where money is compared: the samples are integers (a trade's net cents per contract in
1/100 cent, :func:`m2k_bt.rules.money.per_contract`), so a win is > 0 and a loss < 0 exactly;
the sign of f* is decided on integers (f* = w (W l - (n - w) L) / (n W l) for w wins summing
W and l losses summing L), so an f* of exactly 0 is "no_edge" in both engines; the exposure
and margin caps are integer divisions of cents. Only the contract count from f* (a ratio, not
money) is a double, made from these exact inputs by the same compiled code in both engines.

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
    """Winners and losers among ``count`` per-contract results (integers, 1/100 cent) of the
    ring buffer ``values`` from index ``start``: ``(wins, sum of wins, losses, sum of losses
    as a positive number)``, all integers."""
    wins = 0
    losses = 0
    won = 0
    lost = 0
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
    """``(p, b, f*, edge)`` from ``n`` trades (:func:`tally`'s integers): p = wins / n,
    b = average win / average loss, f* = (b p - q) / b = w (W l - (n - w) L) / (n W l);
    with winners and no loser f* = p (b unbounded). ``edge`` is the sign of f*, decided on
    integers (1, 0 or -1; -1 without a winner); an f* of exactly 0 is 0.0. ``NaN`` where
    undefined (b and f* without a winner)."""
    p = wins / n
    b = np.nan
    f_star = np.nan
    if wins == 0:
        return p, b, f_star, -1
    if losses:
        b = (won / wins) / (lost / losses)
        num = won * losses - (n - wins) * lost
        if num == 0:
            return p, b, 0.0, 0
        f_star = (np.float64(num) * wins) / (np.float64(n) * won * losses)
        return p, b, f_star, 1 if num > 0 else -1
    return p, b, p, 1


@njit(cache=True)
def stop_risk(points, mult):
    """Dollars at risk per contract with a stop ``points`` away (``NaN``: no stop)."""
    return points * mult if points > 0 else np.nan


@njit(cache=True)
def apply_caps(contracts, binding, equity, free_cash, value, margin, exp_num, exp_den,
               max_contracts):
    """``(contracts, binding)`` after the caps, each recorded when it binds, in integer
    cents: notional (``value``: one contract's worth at the price) within ``max_exposure`` =
    ``exp_num / exp_den`` x ``equity``, initial ``margin`` within ``free_cash`` (no cap when
    the margin is not positive), at most ``max_contracts``."""
    if value > 0:
        cap = (exp_num * max(equity, 0)) // (exp_den * value)
        if cap < contracts:
            contracts = cap
            binding = MAX_EXPOSURE
    if margin > 0:
        cap = max(free_cash, 0) // margin
        if cap < contracts:
            contracts = cap
            binding = MARGIN
    if max_contracts < contracts:
        contracts = max_contracts
        binding = MAX_CONTRACTS
    return contracts, binding


@njit(cache=True)
def decide(n, min_trades, warmup, wins, won, losses, lost, risk, equity, free_cash, value,
           margin, kelly_scale, max_fraction, exp_num, exp_den, max_contracts):
    """One sizing decision from ``n`` closed trades (their :func:`tally`), the stop's ``risk``
    per contract in dollars (``NaN``: no stop), and in integer cents equity, free cash, one
    contract's value at the entry price and its initial margin, and the sizer's parameters
    (``max_exposure`` as the fraction ``exp_num / exp_den``).

    Returns ``(contracts, binding, p, b, f_star, f_used, risk_per_contract)``.
    """
    p = np.nan
    b = np.nan
    f_star = np.nan
    f_used = np.nan
    contracts = warmup
    binding = WARMUP
    if n >= min_trades:
        p, b, f_star, edge = estimate(n, wins, won, losses, lost)
        if edge <= 0:
            return 0, NO_EDGE, p, b, f_star, f_used, risk
        if not risk > 0:  # no stop: the average loss per contract ($), if one was measured
            risk = (lost / losses) / 10_000.0 if losses else np.nan
        if not np.isnan(risk):
            f_used = kelly_scale * f_star
            binding = KELLY
            if f_used > max_fraction:
                f_used = max_fraction
                binding = MAX_FRACTION
            contracts = int(math.floor(f_used * (max(equity, 0) / 100.0) / risk
                                       + FLOOR_EPSILON))
            if contracts <= 0:
                return 0, ZERO, p, b, f_star, f_used, risk
        # else no stop and no loss measured: cannot size on risk yet, the warm-up size
    contracts, binding = apply_caps(contracts, binding, equity, free_cash, value, margin,
                                    exp_num, exp_den, max_contracts)
    return max(0, contracts), binding, p, b, f_star, f_used, risk
