"""Embedding-health diagnostics: is a model's embedding a near-constant or low-rank function?

A benchmark can be won by a model that says nothing about its input: PLISM's cosine between
the same tile under two stainings is 1 for a constant function. These diagnostics are
computed on the embeddings a benchmark already has, ``(n_items, dim) float32``, and flag
such models. Every quantity is a property of the set of embeddings, not of the labels.

Quantities
----------
- ``mean_cosine``: mean of ``cos(x_i, x_j)`` over all ordered pairs ``i != j`` of different
  items. Computed exactly in O(n d) from the unit vectors ``u_i``:
  ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2``. A zero vector has cosine 0 with
  everything (scikit-learn's convention) and is counted in ``zero_vectors``. Undefined (NaN)
  for fewer than 2 items.
- ``participation_ratio``: ``(sum l)^2 / sum l^2`` over the eigenvalues ``l`` of the
  embedding covariance; between 1 (all the variance along one direction) and
  ``min(n - 1, dim)`` (variance spread evenly).
- ``effective_rank``: ``exp(H(p))`` with ``p = l / sum l`` and ``H`` the Shannon entropy
  (Roy & Vetterli, 2007); same range. It is less dominated by the largest eigenvalue than the
  participation ratio. Both are 0 when the covariance is zero (every embedding identical).
- ``near_constant_fraction``: fraction of dimensions whose variance is below
  ``near_constant_share / dim`` of the total variance, i.e. below ``near_constant_share``
  (default 1e-3) times the variance of an average dimension. 1.0 when the total variance is 0.

Thresholds (``HealthThresholds``)
---------------------------------
An embedding is ``degenerate`` when any of these holds (with at least 2 items):

- every embedding is identical (total variance exactly 0);
- ``mean_cosine > 0.98``: different items point in nearly the same direction;
- ``effective_rank < 1.2``, checked only when ``min(n - 1, dim) >= 4``: the embeddings vary
  along essentially one direction;
- ``near_constant_fraction > 0.25``: a large share of the dimensions carries (almost) no variance;
- any value is NaN or infinite.

Measurements the thresholds were chosen from: the 44 real tissue tiles shipped with pathbench
(``cmu_small_region_tiles.npz``, 224 px) unless said; PR is the participation ratio.

==========================================================  ===========  ====  =====  ==========
embeddings                                                  mean cosine  PR    erank  near-const
==========================================================  ===========  ====  =====  ==========
``vit-tiny-random`` (random weights), ``cls``, 192-d        0.788        1.45  2.12   0.000
``vit-tiny-random``, ``mean``, 192-d                        0.718        1.23  1.61   0.000
``vit-tiny-random``, ``cls+mean``, 384-d                    0.762        1.38  2.01   0.000
``vit-tiny-random``, ``cls``, 396 simulated PLISM tiles     0.672        1.89  2.89   0.000
constant vector + N(0, 0.001) noise, 192-d                  1.0000       34.7  38.2   0.000
constant vector + N(0, 0.1) noise, 192-d                    0.9895       34.5  38.1   0.000
constant vector + N(0, 0.001) noise on 2 of 192 dims        1.0000       1.96  1.98   0.990
i.i.d. Gaussian, 192-d                                      -0.0008      35.1  38.4   0.000
old smoke student (fit-heads, 50 steps, EMA .994), ``cls``  0.9999       1.13  1.42   0.000
old smoke student, ``cls+mean``, 128-d                      0.811        1.39  2.12   0.445
smoke student (features, 100 steps, EMA 0.9), ``cls``       0.766        1.24  1.52   0.000
smoke student, ``cls+mean``, 128-d                          0.766        1.28  1.68   0.000
==========================================================  ===========  ====  =====  ==========

Why these values. The random-weight ViT is a floor that a trained model should clear and must
not be flagged: its mean cosine is 0.67-0.79 and its effective rank 1.6-2.9 (the tokens of an
untrained network on H&E tiles are dominated by one or two colour/intensity directions). A
near-constant function gives ``1 - O(noise / signal)``: 0.9999 for the old smoke student, 0.99
even with a noise-to-signal ratio of 0.1. 0.98 sits between the two. (The published pathology
models need weights that cannot be fetched offline and are not in this table; an embedding
whose mean cosine is high by design, e.g. a strong common offset, may need a looser
``max_mean_cosine``.) The effective-rank threshold is
low on purpose: the random network's patch mean already sits at 1.6, and a few high-variance
channels (massive activations) can concentrate the covariance of real ViTs without making
them useless; a constant plus isotropic noise keeps a high rank, which is why the cosine and
the rank are both checked. The near-constant share flags dead dimensions, and catches a dead
half in a concatenated embedding: the old smoke student's ``cls+mean`` had a near-constant
class token (44.5 % of its dimensions) beside a live patch mean, while every healthy embedding
measured has 0 %. ``tests/test_diagnostics.py`` re-measures the random ViT's rows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pathbench.errors import DataError

# Rows per block: the float64 copies of one block stay at a few tens of MB for dim 1536.
_BLOCK_ROWS = 4096


@dataclass(frozen=True)
class HealthThresholds:
    """When an embedding counts as degenerate (see the module docstring for the measurements)."""

    max_mean_cosine: float = 0.98
    min_effective_rank: float = 1.2
    min_rank_checked: int = 4  # below this many possible directions, a low rank says nothing
    max_near_constant_fraction: float = 0.25
    near_constant_share: float = 1e-3  # of the average dimension's variance

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EmbeddingHealth:
    """Diagnostics of one set of embeddings; ``degenerate`` is True when ``reasons`` is not empty."""

    n_items: int
    dim: int
    mean_cosine: float
    participation_ratio: float
    effective_rank: float
    near_constant_fraction: float
    zero_vectors: int
    non_finite: int
    degenerate: bool
    reasons: tuple[str, ...]
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (NaN becomes None)."""
        record = dataclasses.asdict(self)
        record["reasons"] = list(self.reasons)
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                record[key] = None
        return record

    def summary(self) -> str:
        """One line for a console: the numbers, and why the embedding is degenerate if it is."""
        numbers = (
            f"mean cosine between items {self.mean_cosine:.4f}, effective rank {self.effective_rank:.2f}, "
            f"participation ratio {self.participation_ratio:.2f}, "
            f"near-constant dimensions {100 * self.near_constant_fraction:.1f} %"
        )
        if not self.degenerate:
            return numbers
        return f"DEGENERATE embedding ({'; '.join(self.reasons)}): {numbers}"


def _as_matrix(embeddings: Any) -> np.ndarray:
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise DataError(
            f"embedding diagnostics expect a (n_items, dim) matrix, got an array of shape {array.shape}; "
            "pass one row per item."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"embedding diagnostics need at least one item and one dimension, got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise DataError(f"embeddings must be real numbers, got dtype {array.dtype}.")
    return array


def _blocks(array: np.ndarray):
    for start in range(0, array.shape[0], _BLOCK_ROWS):
        yield array[start : start + _BLOCK_ROWS].astype(np.float64)


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over all ordered pairs of different items, in O(n d).

    Args:
        embeddings: ``(n, dim)``; any real dtype (accumulated in float64).

    Returns NaN for ``n < 2``. Zero vectors have cosine 0 with every item.
    """
    array = _as_matrix(embeddings)
    n = array.shape[0]
    if n < 2:
        return float("nan")
    total = np.zeros(array.shape[1], dtype=np.float64)
    self_terms = 0.0
    for block in _blocks(array):
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        units = np.divide(block, norms, out=np.zeros_like(block), where=norms > 0)
        total += units.sum(axis=0)
        self_terms += float(np.einsum("ij,ij->", units, units))
    return (float(total @ total) - self_terms) / (n * (n - 1))


def covariance_eigenvalues(embeddings: np.ndarray) -> np.ndarray:
    """Eigenvalues of the covariance of the rows (ddof 0), descending, ``(min(n, dim),) float64``.

    The rows are shifted by the first row before any sum, so a near-constant embedding keeps its
    small spread instead of losing it to cancellation against a large mean (and identical rows
    give exactly 0).
    """
    array = _as_matrix(embeddings)
    n, dim = array.shape
    origin = array[0].astype(np.float64)
    if n <= dim:
        # Few items: the nonzero spectrum is that of the n x n Gram matrix of the centred rows.
        centred = array.astype(np.float64) - origin
        centred -= centred.mean(axis=0)
        eigenvalues = np.linalg.eigvalsh(centred @ centred.T) / n
    else:
        shifted_sum = np.zeros(dim, dtype=np.float64)
        scatter = np.zeros((dim, dim), dtype=np.float64)
        for block in _blocks(array):
            block -= origin
            shifted_sum += block.sum(axis=0)
            scatter += block.T @ block
        mean = shifted_sum / n
        eigenvalues = np.linalg.eigvalsh(scatter / n - np.outer(mean, mean))
    return np.clip(eigenvalues[::-1], 0.0, None)


def participation_ratio(eigenvalues: np.ndarray) -> float:
    """``(sum l)^2 / sum l^2`` of non-negative eigenvalues; 0 when they are all 0."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    total = float(eigenvalues.sum())
    if total <= 0.0:
        return 0.0
    # Dividing by the largest first keeps the squares of tiny spectra from underflowing.
    scaled = eigenvalues / eigenvalues.max()
    return float(scaled.sum() ** 2 / (scaled**2).sum())


def effective_rank(eigenvalues: np.ndarray) -> float:
    """``exp(entropy of l / sum l)`` (Roy & Vetterli, 2007); 0 when every eigenvalue is 0."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    total = float(eigenvalues.sum())
    if total <= 0.0:
        return 0.0
    p = eigenvalues[eigenvalues > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def dimension_variances(embeddings: np.ndarray) -> np.ndarray:
    """Variance of each dimension (ddof 0), ``(dim,) float64``, with the same shift as the covariance."""
    array = _as_matrix(embeddings)
    origin = array[0].astype(np.float64)
    shifted_sum = np.zeros(array.shape[1], dtype=np.float64)
    squares = np.zeros(array.shape[1], dtype=np.float64)
    for block in _blocks(array):
        block -= origin
        shifted_sum += block.sum(axis=0)
        squares += (block * block).sum(axis=0)
    mean = shifted_sum / array.shape[0]
    return np.clip(squares / array.shape[0] - mean * mean, 0.0, None)


def near_constant_fraction(embeddings: np.ndarray, share: float = HealthThresholds.near_constant_share) -> float:
    """Fraction of dimensions whose variance is below ``share`` times the average dimension's variance.

    1.0 when the total variance is 0 (every dimension is constant).
    """
    variances = dimension_variances(embeddings)
    total = float(variances.sum())
    if total <= 0.0:
        return 1.0
    return float(np.mean(variances < share * total / variances.size))


def embedding_health(embeddings: Any, thresholds: HealthThresholds | None = None) -> EmbeddingHealth:
    """Diagnostics of ``embeddings`` ``(n_items, dim)`` (float32 as benchmarks store them).

    Raises :class:`DataError` for an array that is not a non-empty 2-D real matrix. Non-finite
    values do not raise: the result is then degenerate with NaN metrics, so a benchmark run can
    still record it.
    """
    thresholds = thresholds or HealthThresholds()
    array = _as_matrix(embeddings)
    n, dim = array.shape
    non_finite = int(array.size - np.count_nonzero(np.isfinite(array)))
    if non_finite:
        nan = float("nan")
        return EmbeddingHealth(
            n, dim, nan, nan, nan, nan, 0, non_finite, True,
            (f"{non_finite} of {array.size} embedding values are NaN or infinite",), thresholds,
        )
    zero_vectors = int(np.count_nonzero(~array.any(axis=1)))
    cosine = mean_pairwise_cosine(array)
    eigenvalues = covariance_eigenvalues(array)
    pr, erank = participation_ratio(eigenvalues), effective_rank(eigenvalues)
    constant = near_constant_fraction(array, thresholds.near_constant_share)

    reasons: list[str] = []
    if n >= 2:
        if float(eigenvalues.sum()) == 0.0:
            reasons.append(f"all {n} embeddings are identical")
        else:
            if cosine > thresholds.max_mean_cosine:
                reasons.append(
                    f"different items are nearly parallel (mean cosine {cosine:.4f} > "
                    f"{thresholds.max_mean_cosine}): a near-constant function of the input"
                )
            if min(n - 1, dim) >= thresholds.min_rank_checked and erank < thresholds.min_effective_rank:
                reasons.append(
                    f"the embeddings vary along about one direction (effective rank {erank:.2f} < "
                    f"{thresholds.min_effective_rank})"
                )
            if constant > thresholds.max_near_constant_fraction:
                reasons.append(
                    f"{100 * constant:.1f} % of the {dim} dimensions are near constant "
                    f"(more than {100 * thresholds.max_near_constant_fraction:.0f} %)"
                )
    return EmbeddingHealth(
        n_items=n,
        dim=dim,
        mean_cosine=cosine,
        participation_ratio=pr,
        effective_rank=erank,
        near_constant_fraction=constant,
        zero_vectors=zero_vectors,
        non_finite=0,
        degenerate=bool(reasons),
        reasons=tuple(reasons),
        thresholds=thresholds,
    )
