"""Paired statistics for leaderboards: Wilcoxon signed-rank, Holm correction, bootstrap CIs.

- :func:`wilcoxon_signed_rank` runs ``scipy.stats.wilcoxon`` with scipy's defaults
  (``zero_method="wilcox"``, no continuity correction, two-sided) and the method that
  scipy's ``method="auto"`` would pick, named explicitly so the result can say which one ran:
  the exact null distribution when there are at most 50 differences and neither ties nor
  zeros, exhaustive sign flips when ties or zeros are present and there are at most 13
  differences (zeros included), and the normal approximation with tie correction otherwise.
- :func:`holm` is the Holm (1979) step-down adjustment.
- :func:`bootstrap_ci` and :func:`paired_bootstrap` are percentile bootstraps with a
  seeded generator, so a leaderboard is reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

from pathbench.errors import PathbenchError

EXACT_MAX_N = 50
PERMUTATION_MAX_N = 13  # 2**13 sign flips < scipy's 9999 resamples: the permutation test is exhaustive


@dataclass(frozen=True)
class WilcoxonResult:
    """Outcome of a two-sided Wilcoxon signed-rank test on paired differences.

    Attributes:
        statistic: min(T+, T-), the smaller signed-rank sum (scipy's ``statistic``).
        pvalue: two-sided p-value; 1.0 when no non-zero difference is left.
        n: number of non-zero, finite differences that entered the test.
        method: ``"exact"``, ``"permutation"``, ``"asymptotic"`` or ``"none"``.
    """

    statistic: float
    pvalue: float
    n: int
    method: str


def wilcoxon_signed_rank(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray | None = None) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of ``x - y`` (or of ``x`` when ``y`` is None).

    Pairs where either value is NaN are dropped; zero differences are dropped
    (``zero_method="wilcox"``).

    Args:
        x: (n,) values of the first model on n shared units (slide pairs, genes, runs).
        y: (n,) values of the second model on the same units, in the same order.
    """
    x = np.asarray(x, dtype=np.float64)
    d = x if y is None else x - np.asarray(y, dtype=np.float64)
    if d.ndim != 1:
        raise PathbenchError(f"wilcoxon_signed_rank expects 1-D paired values, got shape {d.shape}.")
    d = d[np.isfinite(d)]
    nonzero = np.abs(d[d != 0])
    n = len(nonzero)
    if n == 0:
        return WilcoxonResult(statistic=float("nan"), pvalue=1.0, n=0, method="none")
    has_ties_or_zeros = len(np.unique(nonzero)) < n or n < len(d)
    # scipy's "auto" rule; it counts zeros in n because it decides before dropping them
    if not has_ties_or_zeros and n <= EXACT_MAX_N:
        method, scipy_method = "exact", "exact"
    elif has_ties_or_zeros and len(d) <= PERMUTATION_MAX_N:
        method, scipy_method = "permutation", scipy.stats.PermutationMethod()
    else:
        method, scipy_method = "asymptotic", "asymptotic"
    result = scipy.stats.wilcoxon(d, method=scipy_method)
    return WilcoxonResult(statistic=float(result.statistic), pvalue=float(min(1.0, result.pvalue)), n=n,
                          method=method)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order.

    With p sorted ascending, p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j)) (1-based).
    NaN p-values are left NaN and do not count towards m.

    Args:
        pvalues: (m,) raw p-values.
    Returns:
        (m,) float64 adjusted p-values.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = len(valid)
    if m == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="mergesort")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        adjusted[idx] = running
    return adjusted


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | str,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic(values)``.

    Args:
        values: (n,) or (n, k) float array; rows are resampled with replacement.
        statistic: maps a (B, n) or (B, n, k) batch of resamples to (B,) statistics.
        strata: optional (n,) labels; rows are resampled within each stratum, keeping
            stratum sizes and positions (used when a column averages over groups).
    Returns:
        (low, high) at ``level``.
    """
    distribution = bootstrap_distribution(values, statistic, n_boot=n_boot, seed=seed, strata=strata)
    return percentile_interval(distribution, level)


def bootstrap_distribution(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """(B,) values of ``statistic`` on B resamples of ``values`` (see :func:`bootstrap_ci`);
    ``statistic="median"`` uses :func:`resampled_medians`.

    The resamples depend only on (n, n_boot, seed, strata), so two models measured on the
    same units get the same resamples: their distributions can be subtracted to bootstrap
    the paired difference (:func:`paired_interval`).
    """
    values = np.asarray(values, dtype=np.float64)
    index = resample_index(len(values), n_boot, seed, strata)
    if isinstance(statistic, str):
        if statistic != "median":
            raise PathbenchError(f"unknown bootstrap statistic {statistic!r}: pass a function or 'median'.")
        return resampled_medians(values, index)
    return np.asarray(statistic(values[index]), dtype=np.float64)


def resampled_medians(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``np.median(values[index], axis=1)`` without sorting every resample.

    Each resample is turned into counts over the sorted values; its median is read off the
    cumulative counts (the mean of the two middle order statistics when the resample size is
    even, as numpy does). O(B n) and about twice as fast as partitioning each row.

    Args:
        values: (n,) float values of the units.
        index: (B, m) int unit indices of B resamples of size m.
    Returns:
        (B,) float64 medians.
    """
    values = np.asarray(values, dtype=np.float64)
    index = np.asarray(index)
    n_boot, m = index.shape
    n = len(values)
    order = np.argsort(values, kind="stable")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    flat = (position[index] + (np.arange(n_boot, dtype=np.int64) * n)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)
    cumulative = np.cumsum(counts, axis=1, dtype=np.int32)
    low = np.argmax(cumulative >= (m + 1) // 2, axis=1)
    high = np.argmax(cumulative >= m // 2 + 1, axis=1)
    ordered = values[order]
    return (ordered[low] + ordered[high]) / 2.0


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | str,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Bootstrap of ``statistic(a) - statistic(b)`` resampling the shared units together.

    Returns:
        (low, high, pvalue): the percentile interval of the difference and a two-sided
        bootstrap p-value, 2 * (min(#(diff <= 0), #(diff >= 0)) + 1) / (B + 1), clipped to 1.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise PathbenchError(f"paired_bootstrap needs values on the same units, got shapes {a.shape} and {b.shape}.")
    boot_a = bootstrap_distribution(a, statistic, n_boot=n_boot, seed=seed, strata=strata)
    boot_b = bootstrap_distribution(b, statistic, n_boot=n_boot, seed=seed, strata=strata)
    return paired_interval(boot_a, boot_b, level)


def paired_interval(boot_a: np.ndarray, boot_b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Interval and two-sided p-value of the difference of two bootstrap distributions
    computed on the same resamples (see :func:`paired_bootstrap`)."""
    diff = np.asarray(boot_a, dtype=np.float64) - np.asarray(boot_b, dtype=np.float64)
    low, high = percentile_interval(diff, level)
    finite = diff[np.isfinite(diff)]
    if len(finite) == 0:
        return low, high, float("nan")
    # (k + 1) / (B + 1): a bootstrap p-value is never exactly zero
    below, above = np.sum(finite <= 0), np.sum(finite >= 0)
    pvalue = min(1.0, 2.0 * (min(below, above) + 1) / (len(finite) + 1))
    return low, high, float(pvalue)


_INDEX_CACHE: dict[tuple, np.ndarray] = {}
_INDEX_CACHE_SIZE = 16


def resample_index(n: int, n_boot: int, seed: int = 0, strata: np.ndarray | None = None) -> np.ndarray:
    """(n_boot, n) int64 bootstrap indices, drawn with ``numpy.random.default_rng(seed)``.

    With ``strata``, position j always holds a unit of the same stratum as unit j. The
    result is cached (read-only): a leaderboard asks for the same resamples many times.
    """
    if n == 0:
        raise PathbenchError("cannot bootstrap an empty set of values.")
    strata_key = None if strata is None else hashlib.sha1(np.asarray(strata).astype(str).tobytes()).hexdigest()
    key = (n, n_boot, seed, strata_key)
    if key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    rng = np.random.default_rng(seed)
    if strata is None:
        index = rng.integers(0, n, size=(n_boot, n))
    else:
        strata = np.asarray(strata)
        index = np.empty((n_boot, n), dtype=np.int64)
        for label in np.unique(strata):
            members = np.flatnonzero(strata == label)
            picks = rng.integers(0, len(members), size=(n_boot, len(members)))
            index[:, members] = members[picks]
    index.flags.writeable = False
    if len(_INDEX_CACHE) >= _INDEX_CACHE_SIZE:
        _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
    _INDEX_CACHE[key] = index
    return index


def percentile_interval(distribution: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` interval of a bootstrap distribution (NaNs ignored)."""
    distribution = np.asarray(distribution, dtype=np.float64)
    distribution = distribution[np.isfinite(distribution)]
    if len(distribution) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(distribution, [alpha, 1.0 - alpha])
    return float(low), float(high)
