"""Deterministic synthetic M2K-like bars (no vendor data may be shipped).

The model, per seed:

- an underlying Russell-2000-like level (start 1,850) whose daily volatility follows a
  GARCH(1,1) around 24% a year (clustered), with Student-t (5 d.f.) shocks;
- regimes that switch with 4% daily probability between trending (a drift of +-0.06% a day) and
  mean-reverting (pulled towards a 5-day moving anchor);
- intraday U-shaped variance and volume in regular hours (09:30-16:00 New York), quieter
  overnight, and a gap at each session open (larger after weekends and holidays);
- bars only inside Globex sessions (CME_Equity calendar: maintenance break, weekends,
  holidays, early closes, the old 16:15-16:30 halt before 2021-06-28);
- quarterly contracts priced at ``underlying x (1 + carry x days to expiry / 365)`` with
  ``carry`` 2% a year (a roll spread of about 10 points), all prices on the 0.10 tick; volume
  moves from the front to the next contract around the roll date.

Command line (writes the bundled files; same bytes for the same seed)::

    python -m m2k_bt.feeds.synth --seed 3 --outdir datafeeds

or one custom continuous file::

    python -m m2k_bt.feeds.synth --seed 1 --start 2024-01-02 --end 2024-03-29 --freq 1 \\
        --out x.csv.gz
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import io
import os
import sys

import numpy as np
import pandas as pd

from ..contracts import M2K, ContractMonth, ContractSpec
from ..errors import ConfigError, M2KError
from ..sessions import NY, globex_schedule, trade_dates
from .continuous import build_continuous

__all__ = [
    "session_index",
    "generate_underlying",
    "generate_contracts",
    "generate_continuous",
    "write_bars",
    "build_bundle",
    "main",
]

ANNUAL_VOL = 0.24  # target annualised volatility of the underlying
START_LEVEL = 1850.0  # index points
CARRY = 0.02  # a year: financing minus dividends, sets the roll spread
RTH_BAR_VOLUME_1MIN = 900.0  # mean contracts per RTH minute, front month (M2K-like)


def session_index(start, end, freq_minutes: int = 1) -> pd.DatetimeIndex:
    """Start times of every ``freq_minutes`` bar inside Globex sessions of trade dates
    [start, end] (New York, tz-aware); bins counted from each session's open.

    >>> idx = session_index("2025-03-10", "2025-03-10", 60)
    >>> len(idx), str(idx[0]), str(idx[-1])
    (23, '2025-03-09 18:00:00-04:00', '2025-03-10 16:00:00-04:00')
    """
    if not isinstance(freq_minutes, int) or freq_minutes <= 0:
        raise ConfigError(f"freq_minutes must be a positive whole number, got {freq_minutes!r}")
    sched = globex_schedule(start, end)
    step = freq_minutes * 60 * 10**9
    parts = []
    for o, bs, be, c in zip(*(sched[col] for col in sched.columns)):
        o, bs, be, c = (x.value for x in (o, bs, be, c))
        t = np.arange(o, c, step, dtype="int64")
        t = t[~((t >= bs) & (t < be))]
        parts.append(t)
    ns = np.concatenate(parts) if parts else np.array([], dtype="int64")
    return pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True)).tz_convert(NY).rename(
        "datetime"
    )


def _intraday_weight(idx: pd.DatetimeIndex) -> np.ndarray:
    """Relative variance (and volume) of each bar by time of day: U-shaped RTH, quiet night."""
    h = np.asarray(idx.hour + idx.minute / 60.0)
    w = np.full(len(idx), 0.18)
    rth = (h >= 9.5) & (h < 16.0)
    w[rth] = 1.0 + 2.5 * np.exp(-(h[rth] - 9.5) / 0.5) + 1.2 * np.exp(-(16.0 - h[rth]) / 0.4)
    w[(h >= 16.0) & (h < 17.0)] = 0.35
    w[(h >= 3.0) & (h < 9.5)] = 0.3  # Europe open
    return w


def generate_underlying(idx: pd.DatetimeIndex, seed: int) -> pd.DataFrame:
    """Underlying OHLC (floats, not rounded) and a volume activity factor on ``idx``."""
    rng = np.random.default_rng(seed)
    n = len(idx)
    tdates = trade_dates(idx)
    day_codes, days = pd.factorize(tdates)
    nd = len(days)
    weight = _intraday_weight(idx)
    wsum = np.bincount(day_codes, weights=weight, minlength=nd)
    wnorm = weight / wsum[day_codes]

    v_target = ANNUAL_VOL**2 / 252.0
    a, b = 0.08, 0.90
    omega = v_target * (1 - a - b)
    shocks_t = rng.standard_t(5, size=n) / np.sqrt(5 / 3)
    bar_var = np.empty(n)
    drift = np.empty(n)
    first = np.r_[True, day_codes[1:] != day_codes[:-1]]
    gaps_days = np.zeros(nd)
    gaps_days[1:] = np.diff(days.values).astype("timedelta64[D]").astype(float)
    day_var = v_target
    prev_ret = 0.0
    regime_trend = True
    trend_sign = 1.0
    logp = np.log(START_LEVEL)
    anchor = logp
    bounds = np.r_[np.flatnonzero(first), n]
    rets = np.empty(n)
    for d in range(nd):
        lo, hi = bounds[d], bounds[d + 1]
        day_var = omega + a * prev_ret**2 + b * day_var
        if rng.random() < 0.04:
            regime_trend = not regime_trend
            trend_sign = 1.0 if rng.random() < 0.5 else -1.0
        if regime_trend:
            mu = trend_sign * 0.0006
        else:
            mu = -0.35 * (logp - anchor)
        bar_var[lo:hi] = day_var * wnorm[lo:hi]
        drift[lo:hi] = mu * wnorm[lo:hi]
        r = drift[lo:hi] + np.sqrt(bar_var[lo:hi]) * shocks_t[lo:hi]
        # overnight/weekend gap folded into the session's first bar
        r[0] += np.sqrt(day_var * 0.04 * max(gaps_days[d], 1.0)) * rng.standard_normal()
        rets[lo:hi] = r
        prev_ret = float(r.sum())
        logp += prev_ret
        anchor += 0.2 * (logp - anchor)
    close = np.exp(np.log(START_LEVEL) + np.cumsum(rets))
    open_ = np.empty(n)
    open_[0] = START_LEVEL
    open_[1:] = close[:-1]
    sd = np.sqrt(bar_var) * close
    high = np.maximum(open_, close) + np.abs(rng.standard_normal(n)) * sd * 0.6
    low = np.minimum(open_, close) - np.abs(rng.standard_normal(n)) * sd * 0.6
    activity = weight * rng.gamma(4.0, 0.25, n) * (1.0 + 3.0 * np.abs(rets) / np.sqrt(bar_var))
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "activity": activity},
        index=idx,
    )


def _on_tick(x: np.ndarray, tick: float, how: str) -> np.ndarray:
    f = {"nearest": np.round, "up": np.ceil, "down": np.floor}[how]
    return np.round(f(np.round(x / tick, 6)) * tick, 2)


def generate_contracts(
    start, end, freq_minutes: int = 5, seed: int = 7, spec: ContractSpec = M2K
) -> dict[str, pd.DataFrame]:
    """Per-contract bars ``{symbol: frame}`` for trade dates [start, end].

    Each contract's file runs from 14 days before the previous contract's roll date to 7 days
    after its own (so the two contracts overlap around every roll).
    """
    idx = session_index(start, end, freq_minutes)
    if len(idx) == 0:
        raise ConfigError(f"no Globex sessions between {start} and {end}")
    under = generate_underlying(idx, seed)
    rng = np.random.default_rng(seed + 1)
    first_day = idx[0].date()
    last_day = idx[-1].date()
    c = ContractMonth(first_day.year, spec.month_numbers[0], spec)
    while c.roll() <= first_day:
        c = c.next()
    # previous contract's roll date (the start of c's active window)
    p = ContractMonth(c.year - 1, spec.month_numbers[0], spec)
    while p.next() != c:
        p = p.next()
    prev_roll = p.roll()
    tdates = trade_dates(idx)
    td = np.asarray(tdates.date)
    base_volume = RTH_BAR_VOLUME_1MIN * freq_minutes
    out: dict[str, pd.DataFrame] = {}
    while prev_roll <= last_day:
        roll = c.roll()
        lo = prev_roll - _dt.timedelta(days=14)
        hi = roll + _dt.timedelta(days=7)
        mask = (td >= lo) & (td <= hi)
        if mask.any():
            u = under[mask]
            tau = np.array(
                [(c.expiry - d).days for d in td[mask]], dtype=float
            )  # days to expiry
            noise = np.cumsum(rng.normal(0.0, 0.00002, mask.sum()))
            factor = 1.0 + CARRY * tau / 365.0 + noise - noise.mean()
            o = _on_tick(u["open"].to_numpy() * factor, spec.tick_size, "nearest")
            cl = _on_tick(u["close"].to_numpy() * factor, spec.tick_size, "nearest")
            hh = np.maximum(np.maximum(o, cl),
                            _on_tick(u["high"].to_numpy() * factor, spec.tick_size, "up"))
            ll = np.minimum(np.minimum(o, cl),
                            _on_tick(u["low"].to_numpy() * factor, spec.tick_size, "down"))
            # share of volume: the front before its window's roll, the next after
            days_to_roll = np.array([(roll - d).days for d in td[mask]], dtype=float)
            days_from_prev = np.array([(d - prev_roll).days for d in td[mask]], dtype=float)
            share = 1.0 / (1.0 + np.exp(-(days_to_roll - 0.5) / 1.2))
            share *= 1.0 / (1.0 + np.exp(-(days_from_prev + 0.5) / 1.2))
            vol = np.maximum(1.0, np.round(base_volume * u["activity"].to_numpy() * share))
            frame = pd.DataFrame(
                {"open": o, "high": hh, "low": ll, "close": cl, "volume": vol}, index=u.index
            )
            frame.index.name = "datetime"
            out[c.symbol] = frame
        prev_roll = roll
        c = c.next()
    return out


def generate_continuous(
    start, end, freq_minutes: int = 5, seed: int = 7, adjust: str = "add"
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A calendar-rolled continuous series and the contracts it was spliced from."""
    contracts = generate_contracts(start, end, freq_minutes, seed)
    cont = build_continuous(contracts, roll="calendar", adjust=adjust)
    return cont, contracts


def write_bars(df: pd.DataFrame, path: str) -> int:
    """Write ``df`` as generic CSV (ISO timestamps with UTC offset); gzip (mtime 0) when
    ``path`` ends in ``.gz``. Returns the bytes written."""
    frame = df.copy()
    frame.attrs = {}
    for col in ("volume", "openinterest"):
        if col in frame.columns:
            frame[col] = frame[col].round().astype("int64")
    buf = io.StringIO()
    frame.to_csv(buf, index_label="datetime", lineterminator="\n")
    data = buf.getvalue().encode()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".gz"):
        raw = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            gz.write(data)
        data = raw.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


#: The bundled files: (name, first trade date, last trade date, bar minutes, seed offset).
BUNDLE_5MIN = ("2023-01-03", "2024-12-31", 5)
BUNDLE_1MIN = ("2024-09-03", "2024-11-29", 1)
BUNDLE_CONTRACTS = ("M2KH4", "M2KM4", "M2KU4")


def build_bundle(outdir: str, seed: int = 3) -> dict[str, int]:
    """Write the bundled ``datafeeds/`` files; returns {path: rows}."""
    rows: dict[str, int] = {}
    start, end, freq = BUNDLE_5MIN
    cont, contracts = generate_continuous(start, end, freq, seed)
    path = os.path.join(outdir, "m2k_5min.csv.gz")
    write_bars(cont, path)
    rows[path] = len(cont)
    for sym in BUNDLE_CONTRACTS:
        path = os.path.join(outdir, "contracts", f"{sym}_5min.csv.gz")
        write_bars(contracts[sym], path)
        rows[path] = len(contracts[sym])
    start, end, freq = BUNDLE_1MIN
    cont1, _ = generate_continuous(start, end, freq, seed + 1000)
    path = os.path.join(outdir, "m2k_1min.csv.gz")
    write_bars(cont1, path)
    rows[path] = len(cont1)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m m2k_bt.feeds.synth", description="Write synthetic M2K-like bars."
    )
    parser.add_argument("--seed", type=int, default=3, help="random seed (default 3)")
    parser.add_argument("--outdir", default="datafeeds", help="bundle folder (default datafeeds)")
    parser.add_argument("--start", help="first trade date of a custom file, e.g. 2024-01-02")
    parser.add_argument("--end", help="last trade date of a custom file")
    parser.add_argument("--freq", type=int, default=5, help="bar minutes (default 5)")
    parser.add_argument("--adjust", default="add", help="none, add or ratio (default add)")
    parser.add_argument("--out", help="custom file path (.csv or .csv.gz)")
    args = parser.parse_args(argv)
    try:
        if args.out or args.start or args.end:
            if not (args.out and args.start and args.end):
                raise ConfigError("a custom file needs --start, --end and --out together")
            cont, _ = generate_continuous(args.start, args.end, args.freq, args.seed, args.adjust)
            write_bars(cont, args.out)
            print(f"{args.out}: {len(cont)} bars")
        else:
            for path, n in build_bundle(args.outdir, args.seed).items():
                print(f"{path}: {n} bars, {os.path.getsize(path):,} bytes")
    except M2KError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
