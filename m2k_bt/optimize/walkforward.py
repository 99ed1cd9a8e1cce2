"""Walk-forward analysis: optimise in sample, trade the best parameters out of sample, repeat.

Folds (:func:`split_folds`) are cut by calendar length (``"12M"``, ``"3M"``, ``"90D"``, ``"2W"``,
``"1Y"``) or by bar counts (``"20000b"``), rolling (the in-sample window slides by ``step``) or
anchored (the in-sample window always starts at the first bar and grows). Each fold's
out-of-sample window starts exactly where its in-sample window ends: windows are half-open
``[start, end)``, so no bar is in both and the optimiser never sees a bar it is judged on.

:func:`walk_forward` drives full engine backtests:

1. optimise the fold's in-sample bars with :func:`m2k_bt.optimize.study.optimize` (a study named
   ``<study_name>-fold<k>`` in the same storage, so an interrupted walk-forward resumes);
2. run the best parameters on the out-of-sample bars, starting with the equity the previous
   fold's out-of-sample run ended with (the first fold starts with ``config.cash``);
3. stitch the out-of-sample equity curves into one.

Decisions, stated:

- **Warm-up: indicators start cold.** Each out-of-sample run sees only its own bars, so a
  200-bar moving average trades from the 200th out-of-sample bar on. Nothing from in sample
  leaks into the out-of-sample result, at the price of a little idle time per fold (200 five-
  minute bars is under a day of a three-month window).
- **Positions do not cross folds.** An open position at the end of a window is marked to market
  in its final value (backtrader's ``broker.getvalue()``) and the next fold starts flat with
  that value as cash.
- **A partial last fold** is kept when its out-of-sample window holds at least half of its
  nominal calendar length (or bar count); shorter tails are left out and reported.
- **A fold with no feasible in-sample trial** (e.g. too few trades everywhere) does not trade
  out of sample: its equity stays flat and ``skipped`` says so.
- **Overfitting statistics** (DSR, PBO) are computed by :func:`m2k_bt.optimize.study.optimize` for a
  whole study; per fold they are left out (in-sample windows are short and the OOS result is
  the real test).
- **Walk-forward efficiency** per fold is the annualised out-of-sample return over the
  annualised in-sample return of the best trial (``None`` when the in-sample figure is <= 0);
  overall, the annualised return of the stitched out-of-sample curve over the mean annualised
  in-sample return. Annualised return = ``(final / start) ** (365.25 / days) - 1`` with ``days``
  the window's calendar length.
- **Parameter stability**: per parameter, the coefficient of variation (std / |mean|) of the
  best values across folds (numbers only) and the share of folds whose best value equals the
  most common one (any type).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..engine import run_backtest as run_in_cerebro
from ..errors import ConfigError, M2KError
from ..kernel import choose_engine, run_backtest_fast
from ..outputs import OutputFolder, atomic_open, atomic_path, atomic_write_text, jsonable
from ..report import write_walkforward_html
from .space import parse_space
from .storage import folder_storage_url
from .study import optimize, preselect

__all__ = [
    "Window",
    "Fold",
    "parse_window",
    "split_folds",
    "folds_for_count",
    "WalkForwardResult",
    "walk_forward",
    "annualised_return",
    "parameter_stability",
    "plot_oos_equity",
]

_WINDOW_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]+)\s*$")
_UNITS = {
    "b": "bars",
    "bar": "bars",
    "bars": "bars",
    "d": "days",
    "day": "days",
    "days": "days",
    "w": "weeks",
    "week": "weeks",
    "weeks": "weeks",
    "m": "months",
    "mo": "months",
    "month": "months",
    "months": "months",
    "y": "years",
    "year": "years",
    "years": "years",
}


@dataclass(frozen=True)
class Window:
    """A window length: ``count`` of ``unit`` (``bars``, ``days``, ``weeks``, ``months``,
    ``years``)."""

    count: int
    unit: str

    @property
    def is_bars(self) -> bool:
        return self.unit == "bars"

    def offset(self) -> pd.DateOffset:
        if self.is_bars:
            raise ConfigError("a bar-count window has no calendar offset")
        return pd.DateOffset(**{self.unit: self.count})

    def __str__(self) -> str:
        return f"{self.count}{'b' if self.is_bars else self.unit[0].upper()}"


def parse_window(text: str | int | Window, name: str = "window") -> Window:
    """``"12M"`` -> 12 months, ``"90D"`` -> 90 days, ``"20000b"`` (or an int) -> 20000 bars.

    Upper-case ``M`` and lower-case ``m`` both mean months (there are no minute windows).

    >>> parse_window("12M"), parse_window("20000b")
    (Window(count=12, unit='months'), Window(count=20000, unit='bars'))
    >>> str(parse_window(500)), str(parse_window("90d"))
    ('500b', '90D')
    """
    if isinstance(text, Window):
        return text
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        count, unit = int(text), "bars"
    else:
        m = _WINDOW_RE.match(str(text))
        unit = _UNITS.get(m.group(2).lower()) if m else None
        if not m or unit is None:
            raise ConfigError(
                f"{name} {text!r} is not a window length: use a count and a unit, e.g. 12M "
                f"(months), 90D (days), 2W (weeks), 1Y (years) or 20000b (bars)"
            )
        count = int(m.group(1))
    if count < 1:
        raise ConfigError(f"{name} {text!r} must be at least 1 {unit}")
    return Window(count, unit)


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold. Windows are half-open: ``[is_start, is_end)`` then
    ``[oos_start, oos_end)`` with ``oos_start == is_end``; positions index the bars.

    ``partial`` marks a last fold whose out-of-sample window runs past the data.
    """

    index: int
    is_start: pd.Timestamp
    is_end: pd.Timestamp
    oos_start: pd.Timestamp
    oos_end: pd.Timestamp
    is_slice: slice
    oos_slice: slice
    partial: bool = False

    @property
    def is_bars(self) -> int:
        return self.is_slice.stop - self.is_slice.start

    @property
    def oos_bars(self) -> int:
        return self.oos_slice.stop - self.oos_slice.start

    def as_dict(self) -> dict:
        return {
            "fold": self.index,
            "is_start": str(self.is_start),
            "is_end": str(self.is_end),
            "oos_start": str(self.oos_start),
            "oos_end": str(self.oos_end),
            "is_bars": self.is_bars,
            "oos_bars": self.oos_bars,
            "partial": self.partial,
        }


def split_folds(
    index: pd.DatetimeIndex | pd.DataFrame,
    in_sample: str | int | Window = "12M",
    out_of_sample: str | int | Window = "3M",
    step: str | int | Window | None = None,
    anchored: bool = False,
    folds: int | None = None,
) -> list[Fold]:
    """Cut a bar index into walk-forward folds.

    - ``index``: the bars' DatetimeIndex (or the bars DataFrame), sorted, no duplicates.
    - ``in_sample`` (def: ``"12M"``), ``out_of_sample`` (def: ``"3M"``): window lengths (see
      :func:`parse_window`); both calendar or both bar counts.
    - ``step`` (def: ``out_of_sample``): how far each fold moves on; with ``step`` equal to
      ``out_of_sample`` the out-of-sample windows tile the data without gaps or overlap.
    - ``anchored`` (def: ``False``): in-sample windows all start at the first bar.
    - ``folds`` (def: all that fit): keep the last ``folds`` folds; an error if fewer fit.

    >>> idx = pd.date_range("2024-01-01", periods=10, freq="D")
    >>> [(f.is_slice.start, f.is_slice.stop, f.oos_slice.stop) for f in split_folds(idx, 4, 2)]
    [(0, 4, 6), (2, 6, 8), (4, 8, 10)]
    """
    if isinstance(index, pd.DataFrame):
        index = index.index
    if not isinstance(index, pd.DatetimeIndex) or len(index) < 2:
        raise ConfigError("walk-forward needs bars with a DatetimeIndex of at least 2 bars")
    if not index.is_monotonic_increasing or index.has_duplicates:
        raise ConfigError("walk-forward needs bars sorted by time without duplicate timestamps")
    w_is = parse_window(in_sample, "in-sample window (--is)")
    w_oos = parse_window(out_of_sample, "out-of-sample window (--oos)")
    w_step = parse_window(step, "step (--step)") if step is not None else w_oos
    if len({w_is.is_bars, w_oos.is_bars, w_step.is_bars}) != 1:
        raise ConfigError(
            f"--is {w_is}, --oos {w_oos} and --step {w_step} must all be calendar lengths or "
            f"all bar counts (e.g. 12M/3M/3M or 40000b/10000b/10000b)"
        )
    n = len(index)
    out: list[Fold] = []
    k = 0
    while True:
        if w_is.is_bars:
            is_lo = 0 if anchored else k * w_step.count
            is_hi = k * w_step.count + w_is.count
            oos_hi_nominal = is_hi + w_oos.count
            if is_hi >= n:
                break
            oos_hi = min(oos_hi_nominal, n)
            if (oos_hi - is_hi) * 2 < w_oos.count:
                break
            is_start, is_end = index[is_lo], index[is_hi]
            oos_end = index[oos_hi] if oos_hi < n else index[-1] + (index[-1] - index[-2])
            partial = oos_hi < oos_hi_nominal
        else:
            t0 = index[0]
            shift = w_step.offset() * k if k else pd.DateOffset(0)
            is_start = t0 if anchored else t0 + shift
            is_end = t0 + shift + w_is.offset()
            oos_end = is_end + w_oos.offset()
            if is_end > index[-1]:
                break
            covered = index[-1] - is_end
            if covered * 2 < oos_end - is_end:
                break
            is_lo = int(index.searchsorted(is_start, "left"))
            is_hi = int(index.searchsorted(is_end, "left"))
            oos_hi = int(index.searchsorted(oos_end, "left"))
            partial = oos_end > index[-1]
        if is_hi - is_lo < 1 or oos_hi - is_hi < 1:
            k += 1
            continue
        out.append(
            Fold(
                index=len(out),
                is_start=pd.Timestamp(is_start),
                is_end=pd.Timestamp(is_end),
                oos_start=pd.Timestamp(is_end),
                oos_end=pd.Timestamp(oos_end),
                is_slice=slice(is_lo, is_hi),
                oos_slice=slice(is_hi, oos_hi),
                partial=bool(partial),
            )
        )
        k += 1
    if not out:
        span = f"{index[0]} to {index[-1]} ({n} bars)"
        raise ConfigError(
            f"no walk-forward fold fits: --is {w_is} + --oos {w_oos} is longer than the data, "
            f"{span}; shorten the windows"
        )
    if folds is not None:
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
            raise ConfigError(f"--folds must be a whole number >= 1, got {folds!r}")
        if folds > len(out):
            raise ConfigError(
                f"--folds {folds} asked but only {len(out)} fold(s) of --is {w_is} / --oos "
                f"{w_oos} / --step {w_step} fit in the data; shorten the windows or ask fewer"
            )
        out = [
            Fold(
                i, f.is_start, f.is_end, f.oos_start, f.oos_end, f.is_slice, f.oos_slice, f.partial
            )
            for i, f in enumerate(out[-folds:])
        ]
    return out


def folds_for_count(index: pd.DatetimeIndex, folds: int, ratio: int = 4) -> list[Fold]:
    """``folds`` rolling folds by bar count covering the whole index, in-sample ``ratio`` times
    as long as out-of-sample: ``oos = n // (folds + ratio)``, ``is = ratio x oos``."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ConfigError(f"--folds must be a whole number >= 1, got {folds!r}")
    oos = len(index) // (folds + ratio)
    if oos < 1:
        raise ConfigError(f"{len(index)} bars are too few for {folds} folds")
    return split_folds(index, ratio * oos, oos, oos, folds=folds)


# ---------------------------------------------------------------- metrics


def annualised_return(start_value: float, final_value: float, days: float) -> float | None:
    """``(final / start) ** (365.25 / days) - 1``; ``None`` when undefined.

    >>> round(annualised_return(25_000, 27_500, 365.25 / 4), 6)  # +10% in a quarter
    0.4641
    """
    if not (start_value and start_value > 0 and days and days > 0) or final_value is None:
        return None
    if final_value <= 0:
        return -1.0
    return (final_value / start_value) ** (365.25 / days) - 1.0


def parameter_stability(best_params: Sequence[dict]) -> dict[str, dict]:
    """Per parameter: ``mean``, ``std`` (population), ``cv`` (std / |mean|), ``mode`` and
    ``mode_share`` (share of folds whose best value equals the mode) across folds.

    >>> s = parameter_stability([{"fast": 10}, {"fast": 10}, {"fast": 20}, {"fast": 20}])
    >>> s["fast"]["mean"], s["fast"]["cv"], s["fast"]["mode"], s["fast"]["mode_share"]
    (15.0, 0.3333333333333333, 10, 0.5)
    """
    names = sorted({k for p in best_params for k in p})
    out: dict[str, dict] = {}
    for name in names:
        values = [p.get(name) for p in best_params]
        mode, count = Counter(map(_hashable, values)).most_common(1)[0]
        entry: dict = {"mode": mode, "mode_share": count / len(values), "values": values}
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(nums) == len(values):
            mean = float(np.mean(nums))
            std = float(np.std(nums))
            entry.update(mean=mean, std=std, cv=(std / abs(mean)) if mean else None)
        else:
            entry.update(mean=None, std=None, cv=None)
        out[name] = entry
    return out


def _hashable(v):
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)


# ---------------------------------------------------------------- driver


@dataclass
class WalkForwardResult:
    """What :func:`walk_forward` found.

    - ``folds``: one dict per fold: window, best params, in-sample and out-of-sample metrics,
      start and final equity of the out-of-sample run, annualised returns and efficiency.
    - ``oos_equity``: the stitched out-of-sample equity (columns ``value``, ``fold``).
    - ``efficiency``: overall walk-forward efficiency (see the module docstring).
    - ``stability``: :func:`parameter_stability` of the folds' best parameters.
    - ``start_value``, ``final_value``: of the stitched curve; ``oos_return_annualised``,
      ``is_return_annualised_mean``.
    - ``skipped``: notes on folds left out (nothing silently lost).
    """

    folds: list[dict]
    oos_equity: pd.DataFrame
    efficiency: float | None
    stability: dict
    start_value: float
    final_value: float
    oos_return_annualised: float | None
    is_return_annualised_mean: float | None
    settings: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    paths: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A plain-text table of the folds and the totals."""
        lines = [
            f"{'fold':>4} {'OOS window':<23} {'best params':<28} {'IS obj':>9} "
            f"{'OOS net $':>11} {'OOS ret%':>8} {'WFE':>6}"
        ]
        for f in self.folds:
            params = ",".join(f"{k}={_fmt(v)}" for k, v in f["best_params"].items())
            window = f"{f['oos_start'][:10]}..{f['oos_end'][:10]}"
            lines.append(
                f"{f['fold']:>4} {window:<23} {params[:28]:<28} {_fmt(f['is_objective']):>9} "
                f"{f['oos_net_profit']:>11,.2f} {f['oos_return_pct']:>8.2f} "
                f"{_fmt(f['efficiency']):>6}"
            )
        lines.append(
            f"stitched OOS: ${self.start_value:,.2f} -> ${self.final_value:,.2f}; "
            f"annualised OOS {_pct(self.oos_return_annualised)}, mean annualised IS "
            f"{_pct(self.is_return_annualised_mean)}, walk-forward efficiency "
            f"{_fmt(self.efficiency)}"
        )
        for name, s in self.stability.items():
            cv = "n/a" if s.get("cv") is None else f"{s['cv']:.2f}"
            lines.append(
                f"param {name}: mode {s['mode']} in {s['mode_share']:.0%} of folds, CV {cv}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "settings": self.settings,
            "folds": self.folds,
            "efficiency": self.efficiency,
            "oos_return_annualised": self.oos_return_annualised,
            "is_return_annualised_mean": self.is_return_annualised_mean,
            "start_value": self.start_value,
            "final_value": self.final_value,
            "stability": self.stability,
            "skipped": self.skipped,
        }


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def _days(first, last) -> float:
    return max((pd.Timestamp(last) - pd.Timestamp(first)).total_seconds() / 86400.0, 1e-9)


def walk_forward(
    bars: pd.DataFrame,
    config,
    space: dict | str | Sequence[str] | None = None,
    in_sample: str | int = "12M",
    out_of_sample: str | int = "3M",
    step: str | int | None = None,
    anchored: bool = False,
    folds: int | None = None,
    out: str | Path | None = None,
    plot: bool = True,
    run_backtest: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
    verify: str = "oos",
    **optimize_kwargs,
) -> WalkForwardResult:
    """Walk-forward analysis of ``config.strategy`` over ``bars``.

    - ``config``: a :class:`m2k_bt.engine.cerebro.BacktestConfig`; its ``params`` are the fixed
      parameters, ``space`` (see :func:`m2k_bt.optimize.space.parse_space`) the searched ones.
    - ``in_sample``, ``out_of_sample``, ``step``, ``anchored``, ``folds``: see
      :func:`split_folds`. ``folds`` alone (``in_sample=None``) cuts that many rolling folds by
      bar count with in-sample 4x out-of-sample.
    - ``out``: a folder for ``study.db``, ``walkforward.json``, ``folds.csv``,
      ``oos_equity.csv`` and ``oos_equity.png`` (def: nothing written; studies in memory).
    - ``run_backtest`` (def: :func:`m2k_bt.engine.cerebro.run_backtest`): the backtest function.
    - ``progress``: ``callback(done, total)`` called after each fold.
    - ``verify`` (def: ``"oos"``): when the kernel runs the trials (``engine="kernel"``, the
      default, for a configuration it models), each fold's chosen parameters are run on the
      out-of-sample window in the kernel (the reported result) and again in cerebro: final
      equity to the cent and the trade count must agree, or the run fails with both numbers.
      ``"all"`` also re-runs each fold's in-sample winner in cerebro (as ``optimize`` does).
      With cerebro trials, or a ``run_backtest`` of the caller's, the out-of-sample window
      is run once, by that engine.
    - ``optimize_kwargs``: passed to :func:`m2k_bt.optimize.study.optimize` (``trials``,
      ``objective``, ``sampler``, ``workers``, ``storage``, ``dask``, ``seed``, ``min_trades``,
      ``study_name``, ``quiet``...).
    """
    if verify not in ("oos", "all"):
        raise ConfigError(f"--verify must be 'oos' or 'all', got {verify!r}")
    trial_run = run_backtest  # None: optimize's engine (the kernel where it models config)
    in_kernel = False
    if run_backtest is None:
        run_backtest = run_in_cerebro  # out of sample: cerebro, or the kernel verified by it
        engine = optimize_kwargs.get("engine", "kernel")
        in_kernel = choose_engine(config, engine)[1]["engine"] == "kernel"
    bars, config = preselect(bars, config)  # --start/--end/--resample before cutting folds
    if in_sample is None:
        if folds is None:
            raise ConfigError("give window lengths (--is/--oos) or a number of folds (--folds)")
        fold_list = folds_for_count(bars.index, folds)
    else:
        fold_list = split_folds(bars.index, in_sample, out_of_sample, step, anchored, folds)
    space = parse_space(space, config.strategy) if not isinstance(space, dict) else space
    out_dir = Path(out) if out is not None else None
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            # one run per folder; an earlier run's outputs go before this one writes its own
            folder = stack.enter_context(OutputFolder(out_dir, marker="walkforward.json"))
            folder.clear(["folds.csv", "oos_equity.csv", "oos_equity.png", "walkforward.html"])
            if optimize_kwargs.get("storage") is None:
                optimize_kwargs["storage"] = folder_storage_url(out_dir)  # no symlink
                optimize_kwargs["private_storage"] = True  # under this folder's lock

        base_name = optimize_kwargs.pop("study_name", None) or "m2k-walkforward"
        optimize_kwargs.pop("quiet", None)  # the library prints no progress of its own

        verifier = stack.enter_context(contextlib.closing(_Verifier()))
        rows: list[dict] = []
        skipped: list[str] = []
        curves: list[pd.DataFrame] = []
        equity = float(config.cash)
        first_value = equity
        for fold in fold_list:
            is_bars = bars.iloc[fold.is_slice]
            oos_bars = bars.iloc[fold.oos_slice]
            assert is_bars.index[-1] < oos_bars.index[0], "look-ahead: in-sample overlaps OOS"
            try:
                opt = optimize(
                    is_bars,
                    config,
                    space,
                    run_backtest=trial_run,
                    study_name=f"{base_name}-fold{fold.index}",
                    out=None,
                    overfitting=False,
                    quiet=True,
                    progress=None,  # progress is reported per fold, through ``progress``
                    verify=verify == "all",
                    **optimize_kwargs,
                )
            except ConfigError as exc:
                if "no feasible trial" not in str(exc):
                    raise
                # nothing to trade: the fold stays flat, said so in the report
                skipped.append(
                    f"fold {fold.index}: no feasible in-sample trial, flat out of sample"
                )
                curve = pd.DataFrame({"value": equity, "fold": fold.index}, index=oos_bars.index)
                curves.append(curve)
                rows.append(_flat_row(fold, equity))
                if progress is not None:
                    progress(fold.index + 1, len(fold_list))
                continue
            params = {**dict(config.params), **opt.best_params}
            oos_cfg = _replace(config, params=params, cash=equity, start=None, end=None)
            if in_kernel:
                result = run_backtest_fast(oos_bars, oos_cfg)
            else:
                result = run_backtest(oos_bars, oos_cfg)
            is_attrs = opt.best_attrs
            is_ann = annualised_return(
                is_attrs.get("start_value"),
                is_attrs.get("final_value"),
                _days(fold.is_start, is_bars.index[-1]),
            )
            oos_days = _days(fold.oos_start, oos_bars.index[-1])
            oos_ann = annualised_return(result.start_value, result.final_value, oos_days)
            eff = oos_ann / is_ann if (is_ann and is_ann > 0 and oos_ann is not None) else None
            m = result.metrics
            rows.append(
                {
                    **fold.as_dict(),
                    "best_params": opt.best_params,
                    "objective": opt.objective,
                    "is_objective": opt.best_value,
                    "is_trials": opt.n_complete,
                    "is_metrics": {k: is_attrs.get("metrics", {}).get(k) for k in _SHOWN},
                    "is_return_annualised": is_ann,
                    "oos_metrics": {k: m.get(k) for k in _SHOWN},
                    "oos_start_value": result.start_value,
                    "oos_final_value": result.final_value,
                    "oos_net_profit": result.final_value - result.start_value,
                    "oos_return_pct": (result.final_value / result.start_value - 1) * 100,
                    "oos_return_annualised": oos_ann,
                    "efficiency": eff,
                    "oos_engine": getattr(result, "engine", "cerebro"),
                    "is_verified_in_cerebro": bool(
                        opt.settings.get("engine", {}).get("verified_in_cerebro")),
                }
            )
            if in_kernel:  # check() records cerebro's figure in the fold's row
                verifier.submit(fold.index, oos_bars, oos_cfg, result, rows[-1])
            curve = result.equity[["value"]].copy() if len(result.equity) else pd.DataFrame()
            if not curve.empty:
                curve["fold"] = fold.index
                curves.append(curve)
            equity = float(result.final_value)
            if progress is not None:
                progress(fold.index + 1, len(fold_list))

        verifier.check()  # before anything is written: engines that disagree fail the run
        stitched = pd.concat(curves) if curves else pd.DataFrame(columns=["value", "fold"])
        total_days = _days(fold_list[0].oos_start, bars.iloc[fold_list[-1].oos_slice].index[-1])
        oos_ann = annualised_return(first_value, equity, total_days)
        is_anns = [r["is_return_annualised"] for r in rows if r["is_return_annualised"] is not None]
        is_mean = float(np.mean(is_anns)) if is_anns else None
        eff = oos_ann / is_mean if (is_mean and is_mean > 0 and oos_ann is not None) else None
        settings = {
            "strategy": getattr(config, "strategy_name", None) or str(config.strategy),
            "space": {k: str(v) for k, v in space.items()},
            "in_sample": str(in_sample),
            "out_of_sample": str(out_of_sample),
            "step": str(step if step is not None else out_of_sample),
            "anchored": anchored,
            "folds": len(fold_list),
            "warmup": "cold: indicators start at each out-of-sample window's first bar",
            **{k: v for k, v in optimize_kwargs.items()
               if k not in ("storage", "private_storage")},
            "verify": (f"kernel trials; each fold's choice re-run in cerebro "
                       f"{'in and out of sample' if verify == 'all' else 'out of sample'}: "
                       f"engines agree") if in_kernel else "trials and out-of-sample runs "
                       "in one engine (no kernel)",
        }
        res = WalkForwardResult(
            folds=rows,
            oos_equity=stitched,
            efficiency=eff,
            stability=parameter_stability([r["best_params"] for r in rows]),
            start_value=first_value,
            final_value=equity,
            oos_return_annualised=oos_ann,
            is_return_annualised_mean=is_mean,
            settings=settings,
            skipped=skipped,
        )
        if out_dir is not None:
            res.paths = _write(res, out_dir, plot)
        return res


def _cerebro_final(oos_bars, oos_cfg) -> tuple:
    """(final equity, closed trades) of ``oos_cfg`` on ``oos_bars`` in cerebro, without
    analyzers or plots: what :class:`_Verifier` compares with the kernel's run."""
    res = run_in_cerebro(oos_bars, _replace(oos_cfg, analyzers=False, plot=False))
    return float(res.final_value), (res.metrics or {}).get("trades")


#: Seconds between the verifier's checks that the process that started it is alive.
PARENT_POLL = 0.5


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(1)  # the parent is gone (killed): nobody will read the result


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _stop_signals_held():
    """Ctrl-C and SIGTERM wait until the block ends (main thread, POSIX). Starting the verifier
    writes its start-up data down a pipe: a signal raised in the middle left a child that read
    half of it and printed a traceback onto the run's stderr. The child inherits the held
    signals; :func:`_verifier_init` lets them through again."""
    if not hasattr(signal, "pthread_sigmask") or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _verifier_init(parent: int) -> None:
    """Initializer of the verifier process: it dies with its parent and does not hold the
    parent's terminal or pipes.

    The run's stdin, stdout and stderr become ``/dev/null`` (its result and errors come back
    through the pool), so ``run_backtest.py walkforward ... | tee log`` ends when the run
    does, however it ends. On Linux the kernel kills it when the parent dies
    (``PR_SET_PDEATHSIG``; the pool is made and used by one thread, whose end is the run's);
    everywhere a thread checks the parent every ``PARENT_POLL`` seconds.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    if hasattr(signal, "pthread_sigmask"):  # held by the parent while it started this process
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    threading.Thread(target=_watch_parent, args=(parent,), name="m2k-parent-watch",
                     daemon=True).start()


class _Verifier:
    """Each fold's out-of-sample run is made in the kernel (the reported result) and again in
    cerebro, in one background process while the next folds are studied (inline on a
    single core); :meth:`check` waits for every cerebro run and fails, with both numbers,
    unless final equity agrees to the cent and the trade count exactly. The process dies with
    the run, even a killed one (:func:`_verifier_init`)."""

    def __init__(self):
        self.pool = None
        self.jobs: list = []

    def submit(self, fold: int, oos_bars, oos_cfg, fast, row: dict) -> None:
        if (os.cpu_count() or 1) < 2:
            job = cf.Future()
            job.set_result(_cerebro_final(oos_bars, oos_cfg))
        else:
            if self.pool is None:
                self.pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                                                   initializer=_verifier_init,
                                                   initargs=(os.getpid(),))
            with _stop_signals_held():  # the first submit starts the process
                job = self.pool.submit(_cerebro_final, oos_bars, oos_cfg)
        self.jobs.append((fold, dict(oos_cfg.params), fast, job, row))

    def check(self) -> None:
        for fold, params, fast, job, row in self.jobs:
            b, tb = job.result()
            a = float(fast.final_value)
            ta = (fast.metrics or {}).get("trades")
            if abs(a - b) >= 0.005 or ta != tb:
                raise M2KError(
                    f"kernel and cerebro disagree on fold {fold}'s out-of-sample run with "
                    f"{params}: final equity kernel {a!r} vs cerebro {b!r}, trades kernel "
                    f"{ta!r} vs cerebro {tb!r}; rerun with --engine cerebro and report this"
                )
            row.update(oos_final_value_cerebro=b, engines_agree=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _flat_row(fold: Fold, equity: float) -> dict:
    return {
        **fold.as_dict(),
        "best_params": {},
        "objective": None,
        "is_objective": None,
        "is_trials": 0,
        "is_metrics": {},
        "is_return_annualised": None,
        "oos_metrics": {},
        "oos_start_value": equity,
        "oos_final_value": equity,
        "oos_net_profit": 0.0,
        "oos_return_pct": 0.0,
        "oos_return_annualised": 0.0,
        "efficiency": None,
    }


_SHOWN = (
    "net_profit",
    "return_pct",
    "sharpe",
    "sqn",
    "profit_factor",
    "win_rate",
    "trades",
    "max_drawdown_pct",
)


def _replace(config, **changes):
    return dataclasses.replace(config, **changes)


def _write(res: WalkForwardResult, out: Path, plot: bool) -> dict:
    """Every file atomically (see :mod:`m2k_bt.outputs`); walkforward.json, the marker of a
    complete run, last."""
    paths = {}
    flat = []
    for r in res.folds:
        row = {k: v for k, v in r.items() if not isinstance(v, dict)}
        row.update({f"param_{k}": v for k, v in r["best_params"].items()})
        row.update({f"is_{k}": v for k, v in r["is_metrics"].items()})
        row.update({f"oos_{k}": v for k, v in r["oos_metrics"].items()})
        flat.append(row)
    p = out / "folds.csv"
    with atomic_open(p, "w", newline="") as fh:
        pd.DataFrame(flat).to_csv(fh, index=False)
    paths["folds.csv"] = p
    p = out / "oos_equity.csv"
    with atomic_open(p, "w", newline="") as fh:
        res.oos_equity.to_csv(fh, index_label="datetime")
    paths["oos_equity.csv"] = p
    db = out / "study.db"
    if db.exists():
        paths["study.db"] = db
    if plot and not res.oos_equity.empty:
        p = out / "oos_equity.png"
        with atomic_path(p) as tmp:
            plot_oos_equity(res, tmp, fmt="png")
        paths["oos_equity.png"] = p
    paths["walkforward.html"] = write_walkforward_html(res, out / "walkforward.html")
    p = out / "walkforward.json"
    atomic_write_text(p, json.dumps(jsonable(res.as_dict(), times=str), indent=2))
    paths["walkforward.json"] = p
    return paths


def plot_oos_equity(res: WalkForwardResult, path: str | Path, fmt: str | None = None) -> Path:
    """Save the stitched out-of-sample equity curve with dashed lines at fold boundaries."""
    # matplotlib (a second to import) only when a plot is drawn, its backend chosen first
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    eq = res.oos_equity
    x = eq.index.tz_localize(None) if getattr(eq.index, "tz", None) is not None else eq.index
    ax.plot(x, eq["value"].to_numpy(), lw=1.0, color="tab:blue", label="out-of-sample equity")
    for f in res.folds:
        t = pd.Timestamp(f["oos_start"])
        t = t.tz_localize(None) if t.tzinfo is not None else t
        ax.axvline(t, color="grey", ls="--", lw=0.8)
        ax.text(t, ax.get_ylim()[1], f" {f['fold']}", va="top", fontsize=8, color="grey")
    ax.axhline(res.start_value, color="black", lw=0.5)
    eff = _fmt(res.efficiency)
    ax.set_title(f"Walk-forward out-of-sample equity ({len(res.folds)} folds, WFE {eff})")
    ax.set_ylabel("account value, $")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format=fmt)
    plt.close(fig)
    return Path(path)
