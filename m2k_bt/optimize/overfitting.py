"""Overfitting statistics for a study of many backtests: Deflated Sharpe Ratio and PBO.

Units. Every Sharpe ratio in this module is **per period and not annualised**: the mean of the
period returns divided by their sample standard deviation (``ddof=1``), with a zero risk-free
rate. With daily returns, multiply by ``sqrt(252)`` only for display. Kurtosis is the ordinary
(Pearson) kurtosis, 3 for a normal distribution, not the excess kurtosis.

- :func:`probabilistic_sharpe_ratio` (PSR): the probability that the true Sharpe ratio exceeds a
  benchmark ``sr_benchmark``, given ``n_obs`` returns with skewness ``skew`` and kurtosis
  ``kurtosis`` (Bailey and Lopez de Prado, 2012)::

      PSR(SR*) = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2))

- :func:`expected_max_sharpe`: the Sharpe ratio ``SR*`` that the best of ``n_trials``
  independent skill-less trials reaches by luck alone, when their Sharpe ratios have variance
  ``sr_variance``::

      SR* = sqrt(V[SR_n]) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))

- :func:`deflated_sharpe_ratio` (DSR, Bailey and Lopez de Prado, 2014): PSR against that
  ``SR*``. A DSR of 0.95 says: 95% probability that the selected strategy's true Sharpe ratio is
  above what the search would have found by luck.
- :func:`probability_of_backtest_overfitting` (PBO, Bailey, Borwein, Lopez de Prado and Zhu,
  2015): combinatorially symmetric cross-validation (CSCV) on a T x N matrix of period returns
  (T periods, N trials). The share of in-sample/out-of-sample splits in which the in-sample best
  trial ranks at or below the out-of-sample median.

The paper's worked example (N=100 trials, 5 years of daily returns, annualised SR 2.5, annualised
variance of the trials' Sharpe ratios 0.5, skewness -3, kurtosis 10; 250 days a year):

>>> round(deflated_sharpe_ratio(2.5 / 250**0.5, n_obs=1250, n_trials=100,
...                             sr_variance=0.5 / 250, skew=-3, kurtosis=10), 4)
0.9004
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from statistics import NormalDist

import numpy as np
import pandas as pd
from numba import njit

from ..errors import ConfigError

__all__ = [
    "EULER_GAMMA",
    "sharpe_ratio",
    "probabilistic_sharpe_ratio",
    "expected_max_sharpe",
    "deflated_sharpe_ratio",
    "DeflatedSharpe",
    "deflated_sharpe_from_returns",
    "PBOResult",
    "probability_of_backtest_overfitting",
    "daily_returns",
]

#: Euler-Mascheroni constant, used by :func:`expected_max_sharpe`.
EULER_GAMMA = 0.5772156649015329


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_ppf(p: float) -> float:
    # the standard library's (Wichura's AS241, accurate to double precision): scipy.stats
    # takes most of a second to import, and every study computes the DSR
    return NormalDist().inv_cdf(p)


def sharpe_ratio(returns) -> float:
    """Per-period Sharpe ratio: ``mean / std`` (``ddof=1``), risk-free rate 0.

    Returns ``nan`` with fewer than two returns, ``0.0`` when every return is 0, and +/-``inf``
    when the returns are constant and non-zero.

    >>> sharpe_ratio([0.01, 0.03])
    1.4142135623730951
    """
    r = np.asarray(returns, dtype=float)
    r = r[~np.isnan(r)]
    if r.size < 2:
        return float("nan")
    mean = float(r.mean())
    std = float(r.std(ddof=1))
    if std == 0.0 or std < 1e-14 * max(1.0, abs(mean)):
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / std


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def probabilistic_sharpe_ratio(
    sr: float,
    sr_benchmark: float,
    n_obs: int,
    skew: float = 0.0,
    kurtosis: float = 3.0,
) -> float:
    """Probability that the true per-period Sharpe ratio exceeds ``sr_benchmark``.

    - ``sr``: the observed per-period (not annualised) Sharpe ratio.
    - ``sr_benchmark``: the per-period Sharpe ratio to beat (``SR*``).
    - ``n_obs``: number of returns ``T`` the Sharpe ratio was estimated on (at least 2).
    - ``skew``: skewness of the returns (def: ``0``, normal).
    - ``kurtosis``: Pearson kurtosis of the returns (def: ``3``, normal; not excess kurtosis).

    With normal returns and a benchmark of 0, a per-period SR of 0.1 over 101 returns gives
    ``Phi(0.1 x 10 / sqrt(1 + 0.5 x 0.01))``:

    >>> round(probabilistic_sharpe_ratio(0.1, 0.0, 101), 6)
    0.840741
    """
    n_obs = _check_positive_int(n_obs, "n_obs", 2)
    denom = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if not denom > 0:
        raise ConfigError(
            f"PSR undefined: 1 - skew*SR + (kurtosis-1)/4*SR^2 = {denom:.4g} <= 0 for SR={sr}, "
            f"skew={skew}, kurtosis={kurtosis}; check that SR is per period, not annualised"
        )
    z = (sr - sr_benchmark) * math.sqrt(n_obs - 1) / math.sqrt(denom)
    return _norm_cdf(z)


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """``SR*``: the expected maximum per-period Sharpe ratio of ``n_trials`` skill-less trials.

    ``sr_variance`` is the variance across trials of their per-period Sharpe ratios. One trial
    has no selection bias: ``SR* = 0``.

    >>> expected_max_sharpe(1, 0.01)
    0.0
    >>> round(expected_max_sharpe(100, 1.0), 4)
    2.5306
    """
    n_trials = _check_positive_int(n_trials, "n_trials")
    if not (sr_variance >= 0 and math.isfinite(sr_variance)):
        raise ConfigError(f"sr_variance must be a finite number >= 0, got {sr_variance!r}")
    if n_trials == 1:
        return 0.0
    g = EULER_GAMMA
    return math.sqrt(sr_variance) * (
        (1 - g) * _norm_ppf(1 - 1 / n_trials) + g * _norm_ppf(1 - 1 / (n_trials * math.e))
    )


def deflated_sharpe_ratio(
    sr: float,
    n_obs: int,
    n_trials: int,
    sr_variance: float,
    skew: float = 0.0,
    kurtosis: float = 3.0,
) -> float:
    """DSR: :func:`probabilistic_sharpe_ratio` against :func:`expected_max_sharpe`.

    All Sharpe figures per period (see the module docstring); ``sr`` is the selected (best)
    trial's, ``skew`` and ``kurtosis`` are of its returns, ``sr_variance`` is across the trials.
    """
    sr_star = expected_max_sharpe(n_trials, sr_variance)
    return probabilistic_sharpe_ratio(sr, sr_star, n_obs, skew, kurtosis)


@dataclass
class DeflatedSharpe:
    """What :func:`deflated_sharpe_from_returns` found. Sharpe figures are per period.

    - ``dsr``: the deflated Sharpe ratio, a probability in [0, 1].
    - ``psr``: PSR of the best trial against 0 (no deflation), for comparison.
    - ``best``: column label of the best trial; ``sr``: its Sharpe ratio.
    - ``sr_star``: the deflating benchmark; ``sr_variance``: variance of the trials' Sharpes.
    - ``n_trials``, ``n_obs``, ``skew``, ``kurtosis``: the other inputs.
    """

    dsr: float
    psr: float
    best: object
    sr: float
    sr_star: float
    sr_variance: float
    n_trials: int
    n_obs: int
    skew: float
    kurtosis: float

    def as_dict(self) -> dict:
        return {
            k: (v if not isinstance(v, np.generic) else v.item()) for k, v in vars(self).items()
        }


def deflated_sharpe_from_returns(
    returns: pd.DataFrame | np.ndarray, n_trials: int | None = None, selected=None
) -> DeflatedSharpe:
    """DSR of the best column of a T x N matrix of period returns (one column per trial).

    ``selected`` (def: the column with the highest Sharpe ratio): the label of the trial the
    study picked, e.g. the best by another objective; it is deflated by all columns' variance.

    ``n_trials`` (def: the number of columns) may be larger, when the study tried more
    configurations than it kept. Columns with fewer than two returns or an undefined Sharpe
    ratio are dropped. Missing returns (NaN) are ignored per column.
    """
    frame = pd.DataFrame(returns).astype(float)
    columns = list(frame.columns)
    every = _sharpe_ignoring_nan(frame.to_numpy())
    srs = {c: float(v) for c, v in zip(columns, every) if math.isfinite(v)}
    if not srs:
        raise ConfigError(
            "DSR needs at least one trial with two or more non-constant returns; got none"
        )
    n = len(srs) if n_trials is None else _check_positive_int(n_trials, "n_trials")
    if n < len(srs):
        raise ConfigError(f"n_trials={n} is below the {len(srs)} trials given")
    best = max(srs, key=lambda c: srs[c]) if selected is None else selected
    if best not in srs:
        raise ConfigError(f"selected trial {selected!r} has no defined Sharpe ratio")
    values = np.array(list(srs.values()))
    variance = float(values.var(ddof=1)) if values.size > 1 else 0.0
    r = frame[best].dropna().to_numpy()
    skew, kurt = _skew_kurtosis(r)
    sr = srs[best]
    sr_star = expected_max_sharpe(n, variance)
    return DeflatedSharpe(
        dsr=probabilistic_sharpe_ratio(sr, sr_star, r.size, skew, kurt),
        psr=probabilistic_sharpe_ratio(sr, 0.0, r.size, skew, kurt),
        best=best,
        sr=sr,
        sr_star=sr_star,
        sr_variance=variance,
        n_trials=n,
        n_obs=int(r.size),
        skew=skew,
        kurtosis=kurt,
    )


def _sharpe_ignoring_nan(m: np.ndarray) -> np.ndarray:
    """:func:`sharpe_ratio` of every column of ``m`` (T x N), each without its NaNs, at once.

    The same two passes as :func:`sharpe_ratio` (the mean, then the deviations from it), so
    equal columns get equal ratios."""
    m = np.asarray(m, dtype=float).reshape(len(m), -1)
    ok = ~np.isnan(m)
    count = ok.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(ok, m, 0.0).sum(axis=0) / count
        dev = np.where(ok, m - mean, 0.0)
        std = np.sqrt((dev * dev).sum(axis=0) / (count - 1))
        flat = (std == 0) | (std < 1e-14 * np.maximum(1.0, np.abs(mean)))
        out = np.where(flat, np.sign(mean) * np.inf, mean / std)
    out[flat & (mean == 0)] = 0.0
    out[count < 2] = np.nan
    return out


def _skew_kurtosis(r: np.ndarray) -> tuple[float, float]:
    """Skewness and Pearson kurtosis of ``r`` (biased moments, as ``scipy.stats.skew`` and
    ``kurtosis(fisher=False)`` with ``bias=True``; NaN when the variance is zero)."""
    mean = r.mean()
    d = r - mean
    d2 = d * d
    m2, m3, m4 = d2.mean(), (d2 * d).mean(), (d2 * d2).mean()
    if m2 <= (np.finfo(float).eps * mean) ** 2:
        return math.nan, math.nan
    return float(m3 / m2**1.5), float(m4 / m2**2)


@dataclass
class PBOResult:
    """What :func:`probability_of_backtest_overfitting` found.

    - ``pbo``: share of the splits whose logit is <= 0 (in-sample best at or below the
      out-of-sample median).
    - ``logits``: one ``lambda = ln(w / (1 - w))`` per split, ``w`` the relative OOS rank.
    - ``n_splits`` (S), ``n_combinations`` (C(S, S/2)), ``n_trials`` (N), ``n_periods`` (T).
    - ``is_best``: per split, the in-sample best trial's column position.
    - ``is_performance``, ``oos_performance``: per split, that trial's metric in and out of
      sample (the pairs behind the paper's performance-degradation plot).
    - ``prob_oos_loss``: share of splits whose selected trial's OOS metric is < 0.
    """

    pbo: float
    logits: list[float]
    n_splits: int
    n_combinations: int
    n_trials: int
    n_periods: int
    is_best: list[int] = field(repr=False)
    is_performance: list[float] = field(repr=False)
    oos_performance: list[float] = field(repr=False)
    prob_oos_loss: float = 0.0

    def as_dict(self) -> dict:
        return dict(vars(self))


def _metric_fn(metric: str | Callable) -> Callable[[np.ndarray], np.ndarray]:
    if callable(metric):
        return lambda m: np.array([metric(m[:, j]) for j in range(m.shape[1])], dtype=float)
    if metric == "mean":
        return lambda m: m.mean(axis=0)
    if metric == "total":
        return lambda m: m.sum(axis=0)
    if metric == "sharpe":
        return _sharpe_columns
    raise ConfigError(f"metric must be 'sharpe', 'mean', 'total' or a callable, got {metric!r}")


def _sharpe_columns(m: np.ndarray) -> np.ndarray:
    """:func:`sharpe_ratio` of every column at once (same edge cases)."""
    mean = m.mean(axis=0)
    std = m.std(axis=0, ddof=1) if m.shape[0] > 1 else np.full(m.shape[1], np.nan)
    flat = (std == 0) | (std < 1e-14 * np.maximum(1.0, np.abs(mean)))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(flat, np.sign(mean) * np.inf, mean / std)
    out[flat & (mean == 0)] = 0.0
    return out


def probability_of_backtest_overfitting(
    returns: pd.DataFrame | np.ndarray,
    n_splits: int = 16,
    metric: str | Callable = "sharpe",
) -> PBOResult:
    """PBO by combinatorially symmetric cross-validation (CSCV).

    - ``returns``: T x N matrix of period returns, one column per trial, same periods for all.
      Missing returns are treated as 0 (no position).
    - ``n_splits`` (def: ``16``): S, an even number >= 2 of consecutive row blocks. Every one of
      the C(S, S/2) ways to pick S/2 blocks is one in-sample set; the other blocks are its
      out-of-sample set. When T is not a multiple of S the first ``T mod S`` blocks get one row
      more (``numpy.array_split``); no row is dropped.
    - ``metric`` (def: ``"sharpe"``): per-period Sharpe ratio, ``"mean"``, ``"total"``, or a
      callable of one column of returns.

    For each split the in-sample best trial ``n*`` (first column on ties) gets its rank among the
    N out-of-sample metrics (1 = worst, N = best, ties averaged), ``w = rank / (N + 1)`` and
    ``lambda = ln(w / (1 - w))``; PBO is the share of splits with ``lambda <= 0``.

    >>> import numpy as np
    >>> r = np.tile([[0.02, 0.01, 0.0]], (8, 1)) + np.array([[0.001], [-0.001]] * 4)
    >>> probability_of_backtest_overfitting(r, n_splits=4).pbo  # column 0 always best
    0.0
    """
    frame = pd.DataFrame(returns)
    m = frame.to_numpy(dtype=float)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ConfigError(f"PBO needs a T x N matrix with N >= 2 trials, got shape {m.shape}")
    s = _check_positive_int(n_splits, "n_splits", 2)
    if s % 2:
        raise ConfigError(f"n_splits must be even (S/2 blocks in sample), got {s}")
    t, n = m.shape
    if t < s:
        raise ConfigError(
            f"PBO with n_splits={s} needs at least {s} periods, got {t}; lower n_splits"
        )
    m = np.nan_to_num(m, nan=0.0)
    if callable(metric):
        logits, best, is_perf, oos_perf = _cscv_rows(m, s, _metric_fn(metric))
    else:
        _metric_fn(metric)  # checks the name
        logits, best, is_perf, oos_perf = _cscv_sums(m, s, metric)
    lam = np.array(logits)
    return PBOResult(
        pbo=float(np.mean(lam <= 0)),
        logits=logits,
        n_splits=s,
        n_combinations=len(logits),
        n_trials=n,
        n_periods=t,
        is_best=best,
        is_performance=is_perf,
        oos_performance=oos_perf,
        prob_oos_loss=float(np.mean(np.array(oos_perf) < 0)),
    )


def _cscv_rows(m: np.ndarray, s: int, perf: Callable):
    """CSCV for a metric of the rows themselves (a callable): each split's rows gathered."""
    t, n = m.shape
    blocks = np.array_split(np.arange(t), s)
    logits, best, is_perf, oos_perf = [], [], [], []
    for chosen in combinations(range(s), s // 2):
        is_rows = np.concatenate([blocks[i] for i in chosen])
        oos_rows = np.concatenate([blocks[i] for i in range(s) if i not in chosen])
        r_is = np.nan_to_num(perf(m[is_rows]), nan=-np.inf)
        r_oos = np.nan_to_num(perf(m[oos_rows]), nan=-np.inf)
        n_star = int(np.argmax(r_is))
        # its rank among the out-of-sample metrics, ties averaged (scipy's rankdata
        # "average" for one element, without ranking all N 12,870 times)
        v = r_oos[n_star]
        rank = float(np.count_nonzero(r_oos < v)) + (np.count_nonzero(r_oos == v) + 1) / 2
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
        best.append(n_star)
        is_perf.append(float(r_is[n_star]))
        oos_perf.append(float(r_oos[n_star]))
    return logits, best, is_perf, oos_perf


#: Trial metrics a CSCV chunk holds at once (splits x trials): about 8 MB an array.
_CSCV_CHUNK = 1 << 20
#: A one-pass variance below this share of the squared mean is rounding noise: a column
#: constant over the rows, as the two-pass ``std`` of :func:`sharpe_ratio` finds it.
_ONE_PASS_NOISE = 1e-12


def _subset_sums(parts: np.ndarray) -> np.ndarray:
    """The sums of every subset of the rows of ``parts`` (k x N), row ``mask`` holding the
    subset whose bits ``mask`` sets; each one addition from a smaller subset."""
    out = np.zeros((1 << len(parts),) + parts.shape[1:])
    for mask in range(1, len(out)):
        low = mask & -mask
        out[mask] = out[mask ^ low] + parts[low.bit_length() - 1]
    return out


def _sums_metric(total, squares, count, metric: str) -> np.ndarray:
    """``metric`` of every column from its sum, sum of squares and row count (2-D arrays of
    splits x trials; ``count`` per split): the edge cases of :func:`_sharpe_columns`."""
    if metric == "total":
        return total
    mean = total / count
    if metric == "mean":
        return mean
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.maximum(squares - total * mean, 0.0) / (count - 1)
        std = np.sqrt(var)
        flat = ((std == 0) | (std < 1e-14 * np.maximum(1.0, np.abs(mean)))
                | (var <= _ONE_PASS_NOISE * mean * mean))
        out = np.where(flat, np.sign(mean) * np.inf, mean / std)
    out[flat & (mean == 0)] = 0.0
    return out


def _cscv_sums(m: np.ndarray, s: int, metric: str):
    """CSCV for a metric of column sums ("sharpe", "mean", "total"), every split at once.

    A split's in-sample sums are those of S/2 blocks: the blocks' sums are added up per half
    of the blocks for every subset of that half (2 x 2^(S/2) rows), so that a split costs one
    addition per trial (its subset of the first half plus its subset of the second), and its
    out-of-sample sums are the complementary subsets'. Additions are elementwise, so equal
    trials get equal metrics (their ties stay ties). A split and its complement are done
    together: each subset's metrics are computed once."""
    t, n = m.shape
    half = s // 2
    starts = np.array([b[0] for b in np.array_split(np.arange(t), s)])
    sums = np.add.reduceat(m, starts, axis=0)
    squares = np.add.reduceat(m * m, starts, axis=0)
    rows = np.diff(np.append(starts, t)).astype(float)[:, None]
    lo, hi = slice(0, half), slice(half, s)
    sa, sb = _subset_sums(sums[lo]), _subset_sums(sums[hi])
    qa, qb = _subset_sums(squares[lo]), _subset_sums(squares[hi])
    na, nb = _subset_sums(rows[lo])[:, 0], _subset_sums(rows[hi])[:, 0]
    splits = list(combinations(range(s), half))
    mask_a = np.array([sum(1 << i for i in c if i < half) for c in splits])
    mask_b = np.array([sum(1 << (i - half) for i in c if i >= half) for c in splits])

    def metric_of(ma, mb):
        count = (na[ma] + nb[mb])[:, None]
        return np.nan_to_num(_sums_metric(sa[ma] + sb[mb], qa[ma] + qb[mb], count, metric),
                             nan=-np.inf)

    # the complement of the i-th of the C(S, S/2) splits in itertools' order is the
    # (C-1-i)-th: each subset's metrics serve once in sample and once out of sample
    total = len(splits)
    ratio, best = np.empty(total), np.empty(total, dtype=np.int64)
    is_perf, oos_perf = np.empty(total), np.empty(total)
    if n * total >= _COMPILED_FROM:  # one compiled pass per split pair, no split x N arrays
        _cscv_compiled(sa, sb, qa, qb, na, nb, mask_a, mask_b, _METRIC_CODES[metric],
                       ratio, best, is_perf, oos_perf)
        return ([math.log(x) for x in ratio.tolist()], best.tolist(), is_perf.tolist(),
                oos_perf.tolist())
    step = max(1, _CSCV_CHUNK // n)
    for k in range(0, total // 2, step):
        first = np.arange(k, min(k + step, total // 2))
        last = total - 1 - first
        r_first = metric_of(mask_a[first], mask_b[first])
        r_last = metric_of(mask_a[last], mask_b[last])
        at = np.arange(len(first))
        for rows, r_is, r_oos in ((first, r_first, r_last), (last, r_last, r_first)):
            n_star = np.argmax(r_is, axis=1)
            v = r_oos[at, n_star]
            # the OOS rank of the in-sample best, ties averaged (scipy's rankdata "average")
            rank = (np.count_nonzero(r_oos < v[:, None], axis=1)
                    + (np.count_nonzero(r_oos == v[:, None], axis=1) + 1) / 2)
            w = rank / (n + 1)
            ratio[rows] = w / (1 - w)
            best[rows] = n_star
            is_perf[rows] = r_is[at, n_star]
            oos_perf[rows] = v
    return ([math.log(x) for x in ratio.tolist()], best.tolist(), is_perf.tolist(),
            oos_perf.tolist())


#: Splits x trials from which :func:`_cscv_sums` runs compiled (below, numpy's arrays cost
#: less than loading the compiled function).
_COMPILED_FROM = 1 << 18
_METRIC_CODES = {"total": 0, "mean": 1, "sharpe": 2}
_BIG = float(np.finfo(np.float64).max)


@njit(cache=True)
def _metric_row(ta, tb, sqa, sqb, count, code, out):
    """:func:`_sums_metric` of one split's columns (the same operations, element by element,
    so the same numbers), then ``np.nan_to_num(nan=-inf)``'s replacements."""
    for j in range(ta.shape[0]):
        total = ta[j] + tb[j]
        if code == 0:
            x = total
        else:
            mean = total / count
            if code == 1:
                x = mean
            else:
                var = (sqa[j] + sqb[j]) - total * mean
                if var < 0.0:
                    var = 0.0
                var = var / (count - 1)
                std = math.sqrt(var)
                a = abs(mean)
                big = a if (a > 1.0 or a != a) else 1.0
                flat = (std == 0) or (std < 1e-14 * big) or (var <= _ONE_PASS_NOISE * mean * mean)
                if flat:
                    if mean > 0:
                        x = np.inf
                    elif mean < 0:
                        x = -np.inf
                    elif mean == 0:
                        x = 0.0
                    else:
                        x = np.nan
                else:
                    x = mean / std
        # as np.nan_to_num(x, nan=-inf): NaN -inf, +-inf the largest finite floats
        if x != x:
            x = -np.inf
        elif x == np.inf:
            x = _BIG
        elif x == -np.inf:
            x = -_BIG
        out[j] = x


@njit(cache=True)
def _oos_rank(r_is, r_oos):
    """The in-sample best (first on ties), its in-sample value, out-of-sample value and
    out-of-sample rank among all trials (1 = worst, ties averaged)."""
    n_star = 0
    top = r_is[0]
    for j in range(1, r_is.shape[0]):
        if r_is[j] > top:
            top, n_star = r_is[j], j
    v = r_oos[n_star]
    less = 0
    same = 0
    for j in range(r_oos.shape[0]):
        if r_oos[j] < v:
            less += 1
        elif r_oos[j] == v:
            same += 1
    return n_star, top, v, less + (same + 1) / 2


@njit(cache=True)
def _cscv_compiled(sa, sb, qa, qb, na, nb, mask_a, mask_b, code, ratio, best, is_perf,
                   oos_perf):
    """:func:`_cscv_sums`' splits in compiled code: for each split and its complement, the
    metrics of every trial, the in-sample best and its out-of-sample rank."""
    total = mask_a.shape[0]
    n = sa.shape[1]
    r_first = np.empty(n)
    r_last = np.empty(n)
    for k in range(total // 2):
        last = total - 1 - k
        _metric_row(sa[mask_a[k]], sb[mask_b[k]], qa[mask_a[k]], qb[mask_b[k]],
                    na[mask_a[k]] + nb[mask_b[k]], code, r_first)
        _metric_row(sa[mask_a[last]], sb[mask_b[last]], qa[mask_a[last]], qb[mask_b[last]],
                    na[mask_a[last]] + nb[mask_b[last]], code, r_last)
        for row, r_is, r_oos in ((k, r_first, r_last), (last, r_last, r_first)):
            n_star, top, v, rank = _oos_rank(r_is, r_oos)
            w = rank / (n + 1)
            ratio[row] = w / (1 - w)
            best[row] = n_star
            is_perf[row] = top
            oos_perf[row] = v


def daily_returns(equity: pd.Series, start_value: float | None = None) -> pd.Series:
    """Returns per CME trade date from a per-bar account value series.

    The trade date of a bar stamped at or after 18:00 New York time is the next calendar day
    (the Globex session convention of :func:`m2k_bt.contracts.trade_date`). Each day's return is
    its last value over the previous day's last value, minus 1; the first day's is against
    ``start_value`` (def: the first bar's value). Naive timestamps are read as New York time.

    >>> import pandas as pd
    >>> idx = pd.to_datetime(["2024-01-02 10:00", "2024-01-02 18:00", "2024-01-03 09:00"])
    >>> r = daily_returns(pd.Series([100.0, 110.0, 121.0], index=idx), start_value=100.0)
    >>> [str(d.date()) for d in r.index], r.round(4).tolist()
    (['2024-01-02', '2024-01-03'], [0.0, 0.21])
    """
    if not isinstance(equity, pd.Series) or not isinstance(equity.index, pd.DatetimeIndex):
        raise ConfigError("daily_returns needs a pandas Series indexed by datetime")
    if equity.empty:
        return pd.Series(dtype=float)
    values = equity.to_numpy(dtype=float)
    days = _trade_days(equity.index)
    if days is None or np.isnan(values).any():
        return _daily_returns_by_groupby(equity, start_value)
    last_rows, dates = days
    last = values[last_rows]
    prev = np.empty_like(last)
    prev[0] = values[0] if start_value is None else float(start_value)
    prev[1:] = last[:-1]
    return pd.Series(last / prev - 1.0, index=dates)


#: The trade days of the last few bar indexes seen: every trial of a study has the same bars.
_TRADE_DAYS: list = []
_TRADE_DAYS_KEPT = 4


def _trade_days(idx: pd.DatetimeIndex):
    """``(row of each trade date's last bar, the dates)`` of a sorted bar index, remembered for
    the last :data:`_TRADE_DAYS_KEPT` indexes; None for an unsorted one."""
    for held, found in _TRADE_DAYS:
        if held is idx or (len(held) == len(idx) and held.equals(idx)):
            return found
    if not idx.is_monotonic_increasing:
        return None
    local = idx.tz_convert("America/New_York").tz_localize(None) if idx.tz is not None else idx
    day = (local + pd.Timedelta(hours=6)).normalize()
    codes = day.asi8
    last_rows = np.flatnonzero(np.append(codes[1:] != codes[:-1], True))
    found = (last_rows, pd.DatetimeIndex(day[last_rows].date, name=None))
    _TRADE_DAYS.insert(0, (idx, found))
    del _TRADE_DAYS[_TRADE_DAYS_KEPT:]
    return found


def _daily_returns_by_groupby(equity: pd.Series, start_value: float | None) -> pd.Series:
    """:func:`daily_returns` for any index (unsorted bars, missing values): by pandas'
    groupby, whose ``last`` skips a missing value."""
    idx = equity.index
    if idx.tz is not None:
        idx = idx.tz_convert("America/New_York").tz_localize(None)
    day = (idx + pd.Timedelta(hours=6)).normalize()
    last = pd.Series(equity.to_numpy(dtype=float), index=day).groupby(level=0).last()
    first = float(equity.iloc[0]) if start_value is None else float(start_value)
    prev = last.shift(1)
    prev.iloc[0] = first
    out = last / prev - 1.0
    out.index = pd.DatetimeIndex(out.index.date, name=None)
    return out
