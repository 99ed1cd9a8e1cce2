"""The rulebook: each trading rule once, as small compiled functions both engines call.

The compiled loop (:mod:`m2k_bt.kernel.loop`) calls them inside its ``@njit`` bar loop (numba
compiles them into it); the backtrader classes (:class:`~m2k_bt.brokers.commission.M2KCommInfo`,
:class:`~m2k_bt.brokers.futures.FuturesBroker`, :class:`~m2k_bt.sizers.kelly.KellySizer`) call
the same functions with plain floats and ints. So a rule changes in one place, and the parity
tests guard the wiring, not two copies of the arithmetic.

- :mod:`.prices`: the tick grid, slippage in ticks, the fill of each order type on a bar.
- :mod:`.fees`: commission per contract per side.
- :mod:`.pnl`: P&L and the futures' cash adjustment, a fill's opening and closing parts, the
  average price, a paper trade's net.
- :mod:`.margin`: margin held, maintenance requirement, margin call, intraday regime and
  cut-back, free cash for an entry.
- :mod:`.kelly`: the Kelly estimate, the decision and its caps, the binding names.

- :mod:`.money`: money as integers (cents; the Kelly samples in 1/100 cent).

This layer imports only the facts below it, numpy and numba; never backtrader. The broker's
money is in dollars (floats, as backtrader keeps it), prices in index points; a trade's P&L and
every decision that compares money are taken on integers: prices as the cents one contract is
worth at them (:func:`.prices.to_units`), amounts in cents (:func:`.money.to_cents`).

Numba caches each compiled function on disk next to its module; a function that calls these is
cached with them compiled in, and numba does not notice when only the callee's file changes (a
documented limitation of its cache). After editing a rule, delete
``m2k_bt/kernel/__pycache__/loop.*.nb*`` (or touch ``kernel/loop.py``) before trusting the
kernel.
"""

from . import fees, kelly, margin, money, pnl, prices

__all__ = ["fees", "kelly", "margin", "money", "pnl", "prices"]
