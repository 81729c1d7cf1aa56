"""PLISM robustness metrics, exact and fast (PROTOCOLS.md 1.3 and 1.4; the seed paper's Appendix 7.3).

For a slide pair (S1, S2) holding the same ``n`` tiles in the same order, with features
L2-normalised in float32 (``a_i`` from S1, ``b_i`` from S2):

- cosine similarity: ``mean_i <a_i, b_i>``;
- top-k accuracy S1 -> S2: the fraction of queries ``a_i`` with ``rank_i <= k``, where
  ``rank_i = |{t in S1 u S2, t != a_i : <a_i, t> >= <a_i, b_i>}|`` (``b_i`` itself included,
  ties count against the model); the pair's value is the mean of both directions.

How the engine computes this exactly, without a 2n x 2n matrix:

- ``rank_i = 1 + cross_i + self_i`` with ``cross_i`` the tiles ``b_j, j != i`` and ``self_i``
  the tiles ``a_j, j != i`` at or above the threshold. A hit needs ``rank_i <= k <= K``
  (``K = max(ks)``), so both counts are only needed up to ``K``: a count of ``K`` is a miss.
- ``self_i`` needs only slide S1: each slide's top ``K + 1`` neighbours (itself excluded)
  are computed once and reused for all its pairs (a list that cannot settle a count,
  because its last entry is still close to the threshold, is recounted on the whole
  slide); ``cross`` needs one ``n x n`` block per unordered pair, whose rows serve
  S1 -> S2 and whose columns serve S2 -> S1. Work: (slides + pairs) blocks of n x n x d.
- Ties: the threshold ``<a_i, b_i>`` and every score that could be tied with it are
  decided in float64 by one routine (:func:`exact_dots`: exact products of the float32
  features, summed in float64), so bitwise-equal operand pairs give bitwise-equal scores
  and an exact tie always counts. The float32 products only sort candidates into
  "surely above", "surely below" and "within the float32 error bound of the threshold";
  only the last are recomputed. All backends therefore give identical results.

Memory stays bounded: features are a mapping ``slide_id -> array-like`` (``np.memmap``
works) and a slide is read, checked and normalised only when needed, with a small
least-recently-used cache of normalised slides (``cache_bytes``, 2 GiB by default).
Similarity blocks hold about 64 MiB. One pair at PLISM's full size (16,278 tiles x 2,560
dims, memory-mapped) peaked at 1.3 GB resident; 91 slides add at most the cache and
their neighbour lists (about 0.2 GB).
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathbench import retrieval
from pathbench.errors import DataError, PathbenchError

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)
GROUPS: tuple[str, ...] = ("all", "inter-scanner", "inter-staining", "inter-scanner & inter-staining")
COSINE = "cosine_similarity"
# Twin cosine minus the mean cosine between the non-twin tiles of the same two slides: a
# constant (or near-constant) embedding scores 1 on the cosine but 0 here. Not plismbench's.
MARGIN = "cosine_margin"

# Rows converted to float64 at a time when normalising or computing exact dots (small
# enough for the temporaries to stay in cache).
_CHUNK_ROWS = 512


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """Column names of the per-pair metrics: ``cosine_similarity``, then ``top_<k>_accuracy``."""
    return [COSINE] + [f"top_{k}_accuracy" for k in ks]


# ----------------------------------------------------------------------------- features


def normalise(features: Any, *, what: str = "features") -> np.ndarray:
    """L2-normalise each row.

    Args:
        features: ``(n, dim)`` array-like of real numbers: an array, a tensor, or anything with
            ``shape``, ``dtype`` and row slicing (``np.memmap``, h5py), read in chunks.
        what: how error messages name the array (e.g. ``"slide 'GMH_S60_to_GMH_S60'"``).

    Returns:
        ``(n, dim)`` float32, C-contiguous; each row divided by its norm, computed in float64.

    Raises:
        DataError: a non-finite value (NaN, inf) or an all-zero row.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    # Array-likes with a shape and a dtype (np.memmap, h5py datasets) are read chunk by chunk.
    array = features if hasattr(features, "shape") and hasattr(features, "dtype") else np.asarray(features)
    if len(array.shape) != 2:
        raise DataError(f"{what} must be a 2-D (n_tiles, dim) array; got shape {tuple(array.shape)}.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{what} must hold real numbers; got dtype {array.dtype}.")
    n, dim = array.shape
    out = np.empty((n, dim), dtype=np.float32)
    for r0 in range(0, n, _CHUNK_ROWS):
        chunk = np.asarray(array[r0 : r0 + _CHUNK_ROWS], dtype=np.float64)
        finite = np.isfinite(chunk)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise DataError(
                f"{what} holds a non-finite value ({chunk[row, col]}) at tile row {r0 + row}, column {col}: "
                "features must be finite; re-extract them (a NaN often means an fp16 overflow, try --precision fp32)."
            )
        norms = np.sqrt((chunk * chunk).sum(axis=1))
        if not (norms > 0).all():
            row = int(np.flatnonzero(~(norms > 0))[0])
            raise DataError(
                f"{what} has an all-zero feature vector at tile row {r0 + row}: its cosine similarity is "
                "undefined; check the extraction of that tile."
            )
        out[r0 : r0 + chunk.shape[0]] = chunk / norms[:, None]
    return out


def exact_dots(x: np.ndarray, y: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``<x[rows[p]], y[cols[p]]>`` for each p, in float64.

    The float32 inputs are multiplied exactly in float64 and each product vector is summed
    by the same routine, whatever its position, so equal operands give equal results.

    Args:
        x: ``(n, dim)`` float32. y: ``(m, dim)`` float32. rows, cols: ``(p,)`` int indices.

    Returns:
        ``(p,)`` float64.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    out = np.empty(rows.shape[0], dtype=np.float64)
    for p0 in range(0, rows.shape[0], _CHUNK_ROWS):
        p1 = min(p0 + _CHUNK_ROWS, rows.shape[0])
        out[p0:p1] = _dot_rows(x[rows[p0:p1]], y[cols[p0:p1]])
    return out


def aligned_dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``<x[i], y[i]>`` for every row, in float64: :func:`exact_dots` of ``(i, i)``, without the gathers."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for p0 in range(0, x.shape[0], _CHUNK_ROWS):
        out[p0 : p0 + _CHUNK_ROWS] = _dot_rows(x[p0 : p0 + _CHUNK_ROWS], y[p0 : p0 + _CHUNK_ROWS])
    return out


def _dot_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # float32 x float32 is exact in float64; each row of products is then summed by the
    # same pairwise routine, so the result depends only on the two rows.
    return np.multiply(x, y, dtype=np.float64).sum(axis=1)


@dataclass
class _Slide:
    host: np.ndarray  # (n, dim) float32, normalised
    device: torch.Tensor | None  # the same on the GPU, or None on the CPU

    def on(self, device: torch.device) -> np.ndarray | torch.Tensor:
        return self.host if self.device is None else self.device


class _SlideCache:
    """Normalised slides, least recently used evicted first once over ``budget`` bytes."""

    def __init__(self, features: Mapping[str, Any], device: torch.device, budget: int) -> None:
        self.features = features
        self.device = device
        self.budget = budget
        self.slides: OrderedDict[str, _Slide] = OrderedDict()

    def get(self, slide_id: str) -> _Slide:
        if slide_id in self.slides:
            self.slides.move_to_end(slide_id)
            return self.slides[slide_id]
        host = normalise(self.features[slide_id], what=f"slide {slide_id!r}")
        on_device = None if self.device.type == "cpu" else torch.from_numpy(host).to(self.device)
        slide = _Slide(host, on_device)
        self.slides[slide_id] = slide
        while len(self.slides) > 2 and sum(s.host.nbytes for s in self.slides.values()) > self.budget:
            self.slides.popitem(last=False)
        return slide


def _check_inputs(features: Mapping[str, Any], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Check the pairs and the slides' shapes without reading features; return the slides in first-use order."""
    slides: list[str] = []
    seen: set[str] = set()
    for pair in pairs:
        if len(pair) != 2:
            raise PathbenchError(f"a slide pair must be (slide_a, slide_b); got {pair!r}.")
        a, b = pair
        if a == b:
            raise PathbenchError(f"slide pair ({a!r}, {b!r}) pairs a slide with itself; pairs need two slides.")
        for slide in (a, b):
            if slide not in seen:
                if slide not in features:
                    raise DataError(
                        f"slide {slide!r} is in the slide pairs but has no features ({len(features)} slides "
                        "have features); extract it or drop it from the selection (--stainings / --scanners)."
                    )
                seen.add(slide)
                slides.append(slide)
    reference = None
    for slide in slides:
        shape = getattr(features[slide], "shape", None)
        if shape is None:
            shape = np.shape(features[slide])
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise DataError(f"slide {slide!r}: expected features of shape (n_tiles, dim); got {shape}.")
        if reference is None:
            reference = (slide, shape)
            continue
        ref_slide, ref_shape = reference
        if shape[0] != ref_shape[0]:
            raise DataError(
                f"slide {slide!r} has {shape[0]} tiles but slide {ref_slide!r} has {ref_shape[0]}: every slide "
                "must hold the same tiles in the same order; use the same tile subset (--n-tiles) for all."
            )
        if shape[1] != ref_shape[1]:
            raise DataError(
                f"slide {slide!r} has {shape[1]}-dimensional features but slide {ref_slide!r} has "
                f"{ref_shape[1]}: all slides must come from the same model and pooling."
            )
    return slides


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(k) for k in ks)
    if not values or any(k < 1 for k in values) or len(set(values)) != len(values):
        raise PathbenchError(f"ks must be distinct positive integers, e.g. (1, 3, 5, 10); got {tuple(ks)!r}.")
    return tuple(sorted(values))


# ----------------------------------------------------------------------------- counting


def _threshold_bounds(thresholds: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(lo, hi)``: a float32 score ``>= hi`` is surely ``>= t`` exactly, one ``< lo`` surely not."""
    eps = retrieval.float32_error_bound(dim)
    lo = np.nextafter((thresholds - eps).astype(np.float32), np.float32(-np.inf))
    hi = np.nextafter((thresholds + eps).astype(np.float32), np.float32(np.inf))
    return lo, hi


def _resolve(
    pairs: np.ndarray, x: np.ndarray, y: np.ndarray, thresholds: np.ndarray, by: int, n: int
) -> np.ndarray:
    """Per index ``pairs[:, by]``, how many pairs have an exact ``<x_i, y_j> >= threshold``."""
    if pairs.shape[0] == 0:
        return np.zeros(n, dtype=np.int64)
    scores = exact_dots(x, y, pairs[:, 0], pairs[:, 1])
    owner = pairs[:, by]
    return np.bincount(owner[scores >= thresholds[owner]], minlength=n).astype(np.int64)


def _list_counts(
    values: np.ndarray,
    ids: np.ndarray,
    thresholds: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    queries: _Slide,
    database: _Slide,
    cap: int,
    device: torch.device,
    block_rows: int | None,
) -> np.ndarray:
    """``min(cap, |{j != i : <q_i, d_j> >= t_i}|)`` from each query's top ``cap + 1`` list.

    ``values``/``ids`` are ``(n, cap + 1)`` top lists of ``database`` for each query with the
    query's own index excluded. Entries beyond a list are no larger than its last entry;
    when that one could still reach the threshold and the list alone does not reach
    ``cap``, the row is recounted against the whole database.
    """
    n = thresholds.shape[0]
    sure = (values >= hi[:, None]).sum(axis=1).astype(np.int64)
    band = (values >= lo[:, None]) & (values < hi[:, None]) & (ids >= 0)
    rows, slots = np.nonzero(band)
    counts = sure + _resolve(np.stack([rows, ids[rows, slots]], axis=1), queries.host, database.host, thresholds, 0, n)
    open_rows = np.flatnonzero((values[:, -1] >= lo) & (counts < cap))
    if open_rows.size:
        q = queries.host[open_rows] if queries.device is None else queries.device[torch.from_numpy(open_rows).to(device)]
        tc = retrieval.threshold_counts(
            q, database.on(device), lo[open_rows], hi[open_rows],
            exclude_ids=open_rows, device=device, block_rows=block_rows,
        )
        pairs = tc.row_ambiguous.copy()
        pairs[:, 0] = open_rows[pairs[:, 0]]
        resolved = _resolve(pairs, queries.host, database.host, thresholds, 0, n)
        counts[open_rows] = tc.row_sure + resolved[open_rows]
    return np.minimum(counts, cap)


@dataclass
class _Neighbours:
    values: np.ndarray  # (n, cap + 1) float32, decreasing
    ids: np.ndarray  # (n, cap + 1) int64, -1 for padding


def _self_neighbours(
    slide: _Slide, cap: int, backend: str, device: torch.device, block_rows: int | None
) -> _Neighbours:
    n = slide.host.shape[0]
    values, ids = retrieval.topk(
        slide.on(device), slide.on(device), cap + 1,
        exclude_ids=np.arange(n), backend=backend, device=device, block_rows=block_rows,
    )
    return _Neighbours(values, ids)


def _pair_metrics(
    a: _Slide,
    b: _Slide,
    self_a: _Neighbours,
    self_b: _Neighbours,
    ks: tuple[int, ...],
    backend: str,
    device: torch.device,
    block_rows: int | None,
) -> dict[str, float]:
    n, dim = a.host.shape
    cap = max(ks)
    everyone = np.arange(n)
    thresholds = aligned_dots(a.host, b.host)
    lo, hi = _threshold_bounds(thresholds, dim)
    if backend == "faiss":
        cross_ab = _list_counts(
            *retrieval.topk(a.host, b.host, cap + 1, exclude_ids=everyone, backend=backend, device=device,
                          block_rows=block_rows),
            thresholds, lo, hi, a, b, cap, device, block_rows,
        )
        cross_ba = _list_counts(
            *retrieval.topk(b.host, a.host, cap + 1, exclude_ids=everyone, backend=backend, device=device,
                          block_rows=block_rows),
            thresholds, lo, hi, b, a, cap, device, block_rows,
        )
    else:
        tc = retrieval.threshold_counts(
            a.on(device), b.on(device), lo, hi,
            exclude_ids=everyone, column_lo=lo, column_hi=hi, cap=cap, device=device, block_rows=block_rows,
        )
        cross_ab = np.minimum(tc.row_sure + _resolve(tc.row_ambiguous, a.host, b.host, thresholds, 0, n), cap)
        cross_ba = np.minimum(tc.col_sure + _resolve(tc.col_ambiguous, a.host, b.host, thresholds, 1, n), cap)
    own_a = _list_counts(self_a.values, self_a.ids, thresholds, lo, hi, a, a, cap, device, block_rows)
    own_b = _list_counts(self_b.values, self_b.ids, thresholds, lo, hi, b, b, cap, device, block_rows)
    rank_ab = 1 + cross_ab + own_a
    rank_ba = 1 + cross_ba + own_b
    row: dict[str, float] = {COSINE: float(thresholds.mean())}
    for k in ks:
        row[f"top_{k}_accuracy"] = float(0.5 * ((rank_ab <= k).mean() + (rank_ba <= k).mean()))
    row[MARGIN] = cosine_margin(a.host, b.host, thresholds)
    return row


def cosine_margin(a: np.ndarray, b: np.ndarray, twins: np.ndarray | None = None) -> float:
    """Mean twin cosine minus the mean cosine of the non-twin tiles of the same two slides.

    ``a``, ``b``: ``(n, dim)`` L2-normalised rows, row i of both the same tissue. The sum over
    every ``i != j`` of ``a_i . b_j`` is ``(sum a) . (sum b) - sum_i a_i . b_i``, so the whole
    margin costs O(n dim) (float64 sums). NaN for fewer than two tiles.
    """
    n = a.shape[0]
    if n < 2:
        return float("nan")
    twins = np.einsum("ij,ij->i", a, b, dtype=np.float64) if twins is None else np.asarray(twins, np.float64)
    total = float(a.sum(axis=0, dtype=np.float64) @ b.sum(axis=0, dtype=np.float64))
    non_twin = (total - float(twins.sum())) / (n * (n - 1))
    return float(twins.mean() - non_twin)


def iter_pair_metrics(
    features: Mapping[str, Any],
    pairs: Sequence[tuple[str, str]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache_bytes: int = 2 << 30,
    block_rows: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Compute the PLISM metrics of each slide pair, yielding one row per pair in order.

    Every slide named in ``pairs`` is first read, checked (shape, finite values, no zero
    vector) and its own neighbour list computed, so bad input fails before the first row
    is yielded. Then one similarity block per pair gives both directions.

    Args:
        features: ``slide_id -> (n_tiles, dim)`` array-like (``np.memmap`` is fine), rows
            aligned across slides (row i is the same tile in every slide); not normalised.
        pairs: ``(slide_a, slide_b)`` unordered pairs, e.g. :func:`all_pairs`; may be a
            subset (a resumed run passes only the pairs it still lacks).
        ks: the k of the top-k accuracies.
        backend: ``"auto"``, ``"torch"`` or ``"faiss"`` (see :mod:`pathbench.retrieval`);
            all give identical results.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        progress: show tqdm progress bars.
        cache_bytes: normalised slides kept in host memory (at least two are always kept).
        block_rows: query rows per similarity block (default: blocks of about 64 MiB).

    Yields:
        dicts with ``slide_a``, ``slide_b``, ``cosine_similarity``, ``top_<k>_accuracy``
        for each k and ``cosine_margin`` (see :func:`cosine_margin`).

    Raises:
        DataError: a missing slide, mismatched tile counts or dimensions, NaN/inf features.
    """
    from tqdm.auto import tqdm

    ks = _check_ks(ks)
    resolved_device = retrieval.resolve_device(device)
    # Self lists are top-k searches with the backend asked for. The pair blocks use FAISS
    # only when asked for by name: one block of products serves both directions, where
    # FAISS needs two searches.
    topk_backend = retrieval.resolve_backend(backend, resolved_device)
    pair_backend = "faiss" if backend == "faiss" else "torch"
    pairs = [tuple(p) for p in pairs]
    slides = _check_inputs(features, pairs)
    cache = _SlideCache(features, resolved_device, cache_bytes)
    neighbours: dict[str, _Neighbours] = {}
    for slide_id in tqdm(slides, desc="PLISM self neighbours", unit="slide", disable=not progress):
        neighbours[slide_id] = _self_neighbours(
            cache.get(slide_id), max(ks), topk_backend, resolved_device, block_rows
        )
    for slide_a, slide_b in tqdm(pairs, desc="PLISM slide pairs", unit="pair", disable=not progress):
        a, b = cache.get(slide_a), cache.get(slide_b)
        row = _pair_metrics(
            a, b, neighbours[slide_a], neighbours[slide_b], ks, pair_backend, resolved_device, block_rows
        )
        yield {"slide_a": slide_a, "slide_b": slide_b, **row}


def pair_metrics(
    features: Mapping[str, Any], pairs: Sequence[tuple[str, str]], **kwargs: Any
) -> pd.DataFrame:
    """All of :func:`iter_pair_metrics` as a DataFrame (one row per pair)."""
    return pd.DataFrame(list(iter_pair_metrics(features, pairs, **kwargs)))


# ----------------------------------------------------------------------------- slides and groups

_SLIDE_ID = re.compile(r"^(?P<staining>[A-Za-z0-9]+)_(?P<scanner>[A-Za-z0-9]+)(?:_to_[A-Za-z0-9_]+)?$")


def parse_slide_id(slide_id: str) -> tuple[str, str]:
    """``"GMH_S60_to_GMH_S60"`` (or ``"GMH_S60"``) -> ``("GMH", "S60")``: (staining, scanner)."""
    match = _SLIDE_ID.match(slide_id)
    if match is None:
        raise DataError(
            f"slide id {slide_id!r} is not of the form <STAINING>_<SCANNER>_to_<REFERENCE> "
            "(e.g. GMH_S60_to_GMH_S60)."
        )
    return match["staining"], match["scanner"]


def pair_group(staining_a: str, scanner_a: str, staining_b: str, scanner_b: str) -> str | None:
    """The PLISM pair group of two slides (every pair is also in ``"all"``).

    Returns ``"inter-scanner"`` (same staining, different scanner), ``"inter-staining"``
    (same scanner, different staining), ``"inter-scanner & inter-staining"`` (both differ)
    or None (same staining and scanner).
    """
    same_staining = staining_a == staining_b
    same_scanner = scanner_a == scanner_b
    if same_staining and same_scanner:
        return None
    if same_staining:
        return "inter-scanner"
    if same_scanner:
        return "inter-staining"
    return "inter-scanner & inter-staining"


def all_pairs(slide_ids: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of distinct slides, ``C(n, 2)`` of them, in sorted order.

    The slide ids are sorted first, so the order (and which slide is ``slide_a``) does not
    depend on the order they were given in.
    """
    ids = list(slide_ids)
    duplicates = sorted({s for s in ids if ids.count(s) > 1})
    if duplicates:
        raise PathbenchError(f"slide ids must be distinct; repeated: {', '.join(duplicates)}.")
    return list(itertools.combinations(sorted(ids), 2))


# ----------------------------------------------------------------------------- aggregation


def _groups_of(pairs_df: pd.DataFrame) -> pd.Series:
    def group(row: pd.Series) -> str | None:
        if {"staining_a", "scanner_a", "staining_b", "scanner_b"} <= set(row.index):
            parts = (row["staining_a"], row["scanner_a"], row["staining_b"], row["scanner_b"])
        else:
            parts = (*parse_slide_id(row["slide_a"]), *parse_slide_id(row["slide_b"]))
        return pair_group(*parts)

    if pairs_df.empty:
        return pd.Series([], dtype=object)
    return pairs_df.apply(group, axis=1)


def summarise(pairs_df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate per-pair metrics by pair group.

    Args:
        pairs_df: one row per pair with ``slide_a``, ``slide_b`` (or ``staining_a``,
            ``scanner_a``, ``staining_b``, ``scanner_b``) and metric columns
            ``cosine_similarity`` / ``top_<k>_accuracy``.

    Returns:
        One row per (group, metric), groups in the order of :data:`GROUPS`, with columns
        ``group, metric, mean, std, median, iqr, n_pairs``; ``std`` is the population std
        (ddof=0), ``iqr`` is ``q75 - q25`` with NumPy's default linear quantiles. An empty
        group gets ``n_pairs = 0`` and NaN statistics.
    """
    metrics = [c for c in pairs_df.columns if c == COSINE or re.fullmatch(r"top_\d+_accuracy", str(c))]
    metrics.sort(key=lambda c: -1 if c == COSINE else int(str(c).split("_")[1]))
    metrics += [c for c in pairs_df.columns if c == MARGIN]
    if not metrics:
        raise PathbenchError(
            f"no metric columns in the pair table (expected {COSINE} and top_<k>_accuracy); "
            f"found {list(pairs_df.columns)}."
        )
    groups = _groups_of(pairs_df)
    rows = []
    for group in GROUPS:
        selected = pairs_df if group == "all" else pairs_df[(groups == group).to_numpy()]
        for metric in metrics:
            values = selected[metric].to_numpy(dtype=np.float64)
            if values.size:
                q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
                stats = (float(values.mean()), float(values.std(ddof=0)), float(median), float(q75 - q25))
            else:
                stats = (np.nan, np.nan, np.nan, np.nan)
            rows.append((group, metric, *stats, int(values.size)))
    return pd.DataFrame(rows, columns=["group", "metric", "mean", "std", "median", "iqr", "n_pairs"])


LEADERBOARD_TERMS: tuple[tuple[str, str], ...] = (
    ("all", COSINE),
    ("inter-scanner", "top_10_accuracy"),
    ("inter-staining", "top_10_accuracy"),
    ("inter-scanner & inter-staining", "top_10_accuracy"),
)


def leaderboard_score(summary_df: pd.DataFrame) -> float:
    """plismbench's leaderboard score: the mean of four medians.

    Cosine similarity over all pairs and top-10 accuracy over the inter-scanner,
    inter-staining and inter-scanner & inter-staining pairs. NaN when a term is missing
    or its group is empty (e.g. a selection with a single staining).
    """
    medians = []
    for group, metric in LEADERBOARD_TERMS:
        match = summary_df[(summary_df["group"] == group) & (summary_df["metric"] == metric)]
        if match.empty:
            return float("nan")
        medians.append(float(match["median"].iloc[0]))
    return float(np.mean(medians))
