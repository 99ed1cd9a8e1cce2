"""Continuous contracts from per-contract bars, and roll helpers for ``cerebro.rolloverdata``.

:func:`build_continuous` splices quarterly contracts (``M2KH5``, ``M2KM5``, ...) into one series:

- ``roll="calendar"`` (default): contract *c* is used from the trade date on which the previous
  contract rolls (:func:`m2k_bt.contracts.roll_date`, 8 calendar days before expiry) up to its
  own roll date; the roll takes effect at the open of that trade date's session (18:00 New York
  the evening before).
- ``roll="volume"``: the next contract takes over from the trade date after the first trade date
  on which its volume exceeded the current contract's (known only at that day's end, so no
  look-ahead); at the latest on the current contract's calendar roll date.

``adjust`` back-adjusts older prices so the series has no jump at a roll: the gap is measured on
the last bar of the old contract, ``new close - old close`` at that same time (the new contract's
latest bar at or before it). ``"add"`` adds the sum of all later gaps to every earlier price;
``"ratio"`` multiplies by the product of later ``new/old`` ratios and rounds to the tick;
``"none"`` leaves the real prices (a strategy sees the jump).

The result has load_bars' columns plus ``contract`` (str) and ``roll`` (bool, True on the first
bar of each new contract); ``df.attrs["rolls"]`` lists each roll as a dict with ``date`` (trade
date), ``time`` (first bar of the new contract), ``from``, ``to``, ``old_close``, ``new_close``,
``gap`` and ``ratio``.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from ..contracts import (
    DEFAULT_ROLL_DAYS,
    M2K,
    ContractMonth,
    ContractSpec,
    parse_symbol,
    trade_date,
)
from ..errors import ConfigError, ContractSpecError, DataFeedError, did_you_mean
from ..sessions import NY, trade_dates

__all__ = [
    "ROLL_RULES",
    "ADJUST_METHODS",
    "build_continuous",
    "calendar_checkdate",
    "volume_checkcondition",
    "always_checkcondition",
]

ROLL_RULES = ("calendar", "volume")
ADJUST_METHODS = ("none", "add", "ratio")


def _choice(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not known{did_you_mean(str(value), allowed)}; "
            f"use one of: {', '.join(allowed)}"
        )
    return value


def _contracts(frames: Mapping[str, pd.DataFrame], spec: ContractSpec):
    out = []
    for symbol, df in frames.items():
        if not isinstance(df, pd.DataFrame) or not isinstance(df.index, pd.DatetimeIndex):
            raise DataFeedError(f"{symbol}: expected a bar DataFrame from load_bars")
        for col in ("open", "high", "low", "close", "volume"):
            if col not in df.columns:
                raise DataFeedError(f"{symbol}: missing column '{col}'")
        if len(df) == 0:
            raise DataFeedError(f"{symbol}: no bars; drop it from frames_by_symbol")
        idx = df.index.tz_localize(NY) if df.index.tz is None else df.index.tz_convert(NY)
        try:
            cm = parse_symbol(symbol, ref_year=idx[-1].year)
        except ContractSpecError as exc:
            raise DataFeedError(f"frames_by_symbol key {symbol!r}: {exc}") from exc
        if cm.spec.root != spec.root:
            raise DataFeedError(
                f"{symbol}: root {cm.spec.root} does not match spec {spec.root}; "
                f"pass spec={cm.spec.root} or the right frames"
            )
        frame = df.copy()
        frame.index = idx
        frame.index.name = "datetime"
        out.append((cm, str(symbol), frame))
    out.sort(key=lambda t: t[0])
    for (a, sa, _), (b, sb, _) in zip(out, out[1:]):
        if a == b:
            raise DataFeedError(f"{sa} and {sb} are the same contract; give each once")
    return out


def _daily_volume(df: pd.DataFrame) -> pd.Series:
    return df["volume"].groupby(trade_dates(df.index)).sum()


def build_continuous(
    frames_by_symbol: Mapping[str, pd.DataFrame],
    spec: ContractSpec = M2K,
    roll: str = "calendar",
    adjust: str = "none",
    roll_days: int = DEFAULT_ROLL_DAYS,
) -> pd.DataFrame:
    """Splice per-contract frames into one back-adjusted series (see the module docstring).

    - ``frames_by_symbol``: ``{"M2KH5": df, "M2KM5": df, ...}`` as returned by ``load_bars``.
    - ``spec`` (def: ``M2K``): contract; symbols must carry its root.
    - ``roll`` (def: ``"calendar"``): ``"calendar"`` or ``"volume"``.
    - ``adjust`` (def: ``"none"``): ``"none"``, ``"add"`` or ``"ratio"``.
    - ``roll_days`` (def: ``8``): calendar days before expiry of the calendar roll.
    """
    _choice(roll, ROLL_RULES, "roll")
    _choice(adjust, ADJUST_METHODS, "adjust")
    if not frames_by_symbol:
        raise DataFeedError("frames_by_symbol is empty; give at least one contract's bars")
    items = _contracts(frames_by_symbol, spec)

    # trade date from which each contract is used (the first: from its first bar)
    starts: list[_dt.date] = [trade_date(items[0][2].index[0].to_pydatetime())]
    for k in range(1, len(items)):
        prev_cm, _, prev_df = items[k - 1]
        cal = prev_cm.roll(roll_days)
        if roll == "volume":
            cur_df = items[k][2]
            a, b = _daily_volume(prev_df), _daily_volume(cur_df)
            both = a.index.intersection(b.index)
            after = both[both.date >= starts[-1]] if len(both) else both
            over = [d for d in after if b[d] > a[d]]
            switch = (over[0] + pd.Timedelta(days=1)).date() if over else cal
            start = min(switch, cal)
        else:
            start = cal
        starts.append(max(start, starts[-1]))

    pieces = []
    for k, (_cm, symbol, df) in enumerate(items):
        td = trade_dates(df.index).date
        keep = td >= starts[k]
        if k + 1 < len(items):
            keep &= td < starts[k + 1]
        piece = df[keep]
        if len(piece) == 0:
            continue
        cols = [c for c in ("open", "high", "low", "close", "volume", "openinterest")
                if c in piece.columns]  # fmt: skip
        piece = piece[cols].copy()
        piece["contract"] = symbol
        pieces.append((symbol, df, piece))
    if not pieces:
        raise DataFeedError("no bars fall in any contract's active window; check the symbols")

    rolls = []
    for j in range(1, len(pieces)):
        old_sym, _old_df, old_piece = pieces[j - 1]
        new_sym, new_df, new_piece = pieces[j]
        t_old = old_piece.index[-1]
        old_close = float(old_piece["close"].iloc[-1])
        before = new_df.loc[:t_old, "close"]
        if len(before):
            new_close = float(before.iloc[-1])
        else:
            new_close = float(new_piece["open"].iloc[0])  # no overlap: the new contract's open
        rolls.append(
            {
                "date": trade_date(new_piece.index[0].to_pydatetime()),
                "time": new_piece.index[0],
                "from": old_sym,
                "to": new_sym,
                "old_close": old_close,
                "new_close": new_close,
                "gap": spec.round_price(new_close - old_close),
                "ratio": new_close / old_close,
            }
        )

    # back-adjust: piece j gets the gaps (ratios) of all later rolls
    tick = spec.tick_size
    decimals = max(0, -math.floor(math.log10(tick)) + 2)
    out_pieces = []
    for j, (_sym, _df, piece) in enumerate(pieces):
        later = rolls[j:]
        if adjust == "add" and later:
            shift = round(sum(r["gap"] for r in later), decimals)
            for col in ("open", "high", "low", "close"):
                piece[col] = np.round(piece[col].to_numpy() + shift, decimals)
        elif adjust == "ratio" and later:
            factor = float(np.prod([r["ratio"] for r in later]))
            for col in ("open", "high", "low", "close"):
                piece[col] = np.round(np.round(piece[col].to_numpy() * factor / tick) * tick,
                                      decimals)  # fmt: skip
        piece["roll"] = False
        if j > 0:
            piece.iloc[0, piece.columns.get_loc("roll")] = True
        out_pieces.append(piece)
    for r in rolls:
        r["adjust"] = adjust
    out = pd.concat(out_pieces)
    out.index.name = "datetime"
    if (out[["open", "high", "low", "close"]] <= 0).any().any():
        raise DataFeedError(
            "back-adjusted prices fell to zero or below (adjust='add' over a long history); "
            "use adjust='ratio' or a shorter span"
        )
    out.attrs = {"rolls": rolls, "roll_rule": roll, "adjust": adjust}
    return out


# --------------------------------------------------------------------------- rolloverdata helpers


def _contract_of(d, spec: ContractSpec, ref_year: int) -> ContractMonth:
    name = getattr(d, "_name", "") or getattr(getattr(d, "p", None), "name", "") or ""
    try:
        return parse_symbol(name, ref_year=ref_year)
    except ContractSpecError as exc:
        raise DataFeedError(
            f"rollover data named {name!r}: name each contract's feed with its symbol, e.g. "
            f"cerebro.rolloverdata(BarsFeed(dataname=df, name='M2KH5'), ...) ({exc})"
        ) from exc


def calendar_checkdate(
    spec: ContractSpec = M2K, roll_days: int = DEFAULT_ROLL_DAYS
) -> Callable[..., bool]:
    """A ``checkdate(dt, d)`` for ``cerebro.rolloverdata``: True from the contract's calendar
    roll date on (trade date of ``dt``), reading the contract from the feed's ``name``.

    >>> import datetime as dt
    >>> class Feed:  # stands in for a backtrader feed named after its contract
    ...     _name = "M2KZ5"
    >>> check = calendar_checkdate()
    >>> check(dt.datetime(2025, 12, 10, 17, 0), Feed())  # Z5 rolls on trade date 12-11
    False
    >>> check(dt.datetime(2025, 12, 10, 18, 0), Feed())  # the 12-11 session has opened
    True
    """

    def checkdate(dt, d) -> bool:
        cm = _contract_of(d, spec, dt.year)
        return trade_date(dt) >= cm.roll(roll_days)

    return checkdate


def volume_checkcondition(d0, d1) -> bool:
    """``checkcondition(d0, d1)`` for ``cerebro.rolloverdata``: roll when the next contract's
    bar volume exceeds the expiring one's."""
    return d1.volume[0] > d0.volume[0]


def always_checkcondition(d0, d1) -> bool:
    """``checkcondition`` that rolls as soon as ``checkdate`` says so (pure calendar roll)."""
    return True
