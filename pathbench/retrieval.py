"""Exact inner-product retrieval: the one place pathbench talks to FAISS.

Two backends compute the same thing, exact (brute-force) inner products on float32
features that the caller has L2-normalised:

- ``"torch"``: blocked ``queries @ database.T`` (on a GPU with torch and cuBLAS, TF32
  disabled; on the CPU with NumPy's BLAS, which multiplied float32 about twice as fast
  as torch's on the 2-core machine of ``benchmarks/plism_metrics.py``), followed by a
  top-k or a threshold count per block, in NumPy on the CPU (several times faster than
  torch's element-wise kernels there) and in torch on a GPU.
- ``"faiss"``: ``faiss.IndexFlatIP`` (``GpuIndexFlatIP`` when faiss was built with GPU
  support and the device is a GPU). It offers top-k search only.

:func:`topk` runs on either. :func:`threshold_counts`, which serves both directions of
a slide pair from one block, exists only as blocked products; FAISS would need two
searches. ``backend="auto"`` (:func:`resolve_backend`) is the torch backend: it was
the faster (or as fast) top-k in ``benchmarks/plism_metrics.py --backends``.

:class:`InnerProductIndex` is a database built once and searched many times (the kNN
probe's training set): the normalised array for the torch backend, a FAISS flat index, or
a FAISS IVF index (approximate, inverted lists) for very large databases.

Results are exact in the sense the callers need: scores are float32 values whose
error against the exact inner product is bounded by :func:`float32_error_bound`, so a
caller that must decide ``score >= threshold`` exactly decides the few scores within
that bound of the threshold in float64 (see ``pathbench.benches.plism_metrics``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pathbench.errors import PathbenchError

BACKENDS = ("torch", "faiss")

# A similarity block holds about this many float32 values (64 MiB), whatever the sizes:
# large enough for the matrix product to run at full rate ...
_BLOCK_VALUES = 1 << 24
# ... and the per-block bookkeeping walks it in slices of about 4 MiB, which stay in cache.
_SLICE_VALUES = 1 << 20
# Queries per FAISS search call when the caller sets no block size.
_FAISS_QUERY_ROWS = 16384


FAISS_INSTALL_HINT = (
    "install pathbench's FAISS extra for this machine: pip install 'pathbench[cpu]' (faiss-cpu), or "
    "'pathbench[gpu]' (faiss-gpu-cu12) on a CUDA 12 machine; never both, they write the same faiss package"
)


def faiss_available() -> bool:
    """Whether the ``faiss`` module can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def import_faiss() -> Any:
    """The ``faiss`` module, or a :class:`PathbenchError` that names the extra to install."""
    try:
        import faiss
    except ImportError as err:
        raise PathbenchError(f"FAISS is not installed: {FAISS_INSTALL_HINT}.") from err
    return faiss


def installed_faiss_distributions() -> list[str]:
    """Names of the installed distributions that provide the ``faiss`` package (normally one)."""
    from importlib.metadata import packages_distributions

    return sorted(set(packages_distributions().get("faiss", [])))


def faiss_gpu_available() -> bool:
    """Whether faiss was built with GPU support and sees at least one GPU."""
    if not faiss_available():
        return False
    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` -> the first CUDA GPU if there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise PathbenchError(f"unknown device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PathbenchError(f"device {device!r} was asked for but torch sees no CUDA GPU: use --device cpu.")
    if resolved.type not in ("cpu", "cuda"):
        raise PathbenchError(f"device {device!r} is not supported for retrieval: use 'cpu' or 'cuda'.")
    return resolved


def resolve_backend(backend: str = "auto", device: str | torch.device = "cpu") -> str:
    """The top-k backend ``backend`` stands for on ``device``; checks that it is installed.

    ``"auto"`` is ``"torch"`` on every device. On the 2-core CPU of
    ``benchmarks/plism_metrics.py --backends`` its top-11 self search ran at about FAISS's
    rate for 2,000 x 768 features and faster for 4,000 x 1,536 and 8,139 x 768 (FAISS's
    flat search was not the 4x slower reported with torch's MKL products, because the
    torch backend multiplies with NumPy's BLAS on the CPU); on a GPU it keeps everything
    in one library, with FAISS needing a separate GPU build.
    """
    resolve_device(device)
    if backend == "auto":
        return "torch"
    if backend not in BACKENDS:
        raise PathbenchError(f"unknown retrieval backend {backend!r}: expected one of auto, {', '.join(BACKENDS)}.")
    if backend == "faiss":
        import_faiss()
    return backend


def float32_error_bound(dim: int) -> float:
    """Bound on ``|fl32(<x, y>) - <x, y>|`` for vectors of norm at most ``1 + 1e-6``.

    Any float32 summation order (blocked, pairwise, with or without FMA) satisfies
    ``|error| <= gamma_d * sum_k |x_k y_k| <= gamma_d * |x| |y|`` with
    ``gamma_d = d u / (1 - d u)`` and ``u = 2**-24``. The bound returned is twice that.
    """
    u = 2.0**-24
    gamma = dim * u / (1.0 - dim * u)
    return 2.0 * gamma * (1.0 + 1e-6) ** 2 + 1e-12


@contextlib.contextmanager
def _full_precision_matmul() -> Iterator[None]:
    """Keep float32 matrix products in float32 (no TF32, no bfloat16 shortcuts)."""
    previous_precision = torch.get_float32_matmul_precision()
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous_precision)
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def _as_tensor(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32).contiguous()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_pair(queries: Any, database: Any) -> tuple[int, int, int]:
    if len(queries.shape) != 2 or len(database.shape) != 2:
        raise PathbenchError(
            f"retrieval expects 2-D (n, dim) features; got queries {tuple(queries.shape)}, "
            f"database {tuple(database.shape)}."
        )
    if queries.shape[1] != database.shape[1]:
        raise PathbenchError(
            f"queries have dimension {queries.shape[1]} but the database has {database.shape[1]}: "
            "both must come from the same model and pooling."
        )
    return int(queries.shape[0]), int(database.shape[0]), int(queries.shape[1])


def _block_rows(n_database: int, block_rows: int | None) -> int:
    if block_rows is not None:
        if block_rows < 1:
            raise PathbenchError(f"block_rows must be at least 1, got {block_rows}.")
        return int(block_rows)
    return max(64, _BLOCK_VALUES // max(n_database, 1))


def _exclusions(exclude_ids: Any, n_queries: int) -> np.ndarray | None:
    if exclude_ids is None:
        return None
    ids = np.asarray(exclude_ids, dtype=np.int64).reshape(-1)
    if ids.shape[0] != n_queries:
        raise PathbenchError(f"exclude_ids has {ids.shape[0]} entries for {n_queries} queries.")
    return ids


def _mask_excluded(block: np.ndarray | torch.Tensor, excluded: np.ndarray | None, r0: int) -> None:
    """Set ``block[r, excluded[r0 + r]] = -inf`` in place (rows whose id is >= 0)."""
    if excluded is None:
        return
    ids = excluded[r0 : r0 + block.shape[0]]
    rows = np.flatnonzero(ids >= 0)
    if rows.size == 0:
        return
    if isinstance(block, np.ndarray):
        block[rows, ids[rows]] = -np.inf
    else:
        block[torch.from_numpy(rows).to(block.device), torch.from_numpy(ids[rows]).to(block.device)] = -torch.inf


def _similarity_blocks(
    queries: Any, database: Any, block_rows: int | None, device: torch.device
) -> Iterator[tuple[int, np.ndarray | torch.Tensor]]:
    """Yield ``(r0, queries[r0:r1] @ database.T)``: NumPy on the CPU, a tensor on a GPU.

    On the CPU each product block is handed out in cache-sized slices of rows, all views of
    one reused buffer: a consumer must be done with a slice before asking for the next.
    """
    n_queries, n_database, _ = _check_pair(queries, database)
    rows = _block_rows(n_database, block_rows)
    slice_rows = max(8, min(rows, _SLICE_VALUES // max(n_database, 1)))
    if device.type == "cpu":
        # NumPy's BLAS (OpenBLAS) ran float32 products about twice as fast as torch's on
        # the 2-core AMD machine benchmarks/plism_metrics.py was run on.
        q, db_t = _as_numpy(queries), _as_numpy(database).T
        out = np.empty((min(rows, n_queries), n_database), dtype=np.float32)
        for r0 in range(0, n_queries, rows):
            r1 = min(r0 + rows, n_queries)
            block = np.matmul(q[r0:r1], db_t, out=out[: r1 - r0])
            for s0 in range(0, r1 - r0, slice_rows):
                yield r0 + s0, block[s0 : s0 + slice_rows]
        return
    q = _as_tensor(queries, device)
    db_t = _as_tensor(database, device).T
    with _full_precision_matmul(), torch.no_grad():
        for r0 in range(0, n_queries, rows):
            yield r0, q[r0 : r0 + rows] @ db_t


def _nonzero_2d(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a C-contiguous 2-D mask; the flat version is an order of magnitude faster."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _topk_rows_numpy(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` (sorted, descending) of each row of a float32 block; ``k <= block.shape[1]``."""
    n_rows, n_cols = block.shape
    # Split each row into k groups: the smallest of the k group maxima is at most the
    # row's k-th largest value, so the entries at or above it (a few times k) contain the
    # top k. Two streaming passes, several times faster than a partition or a top-k.
    width = n_cols // k
    maxima = block[:, : k * width].reshape(n_rows, k, width).max(axis=2)
    if k * width < n_cols:
        maxima[:, -1] = np.maximum(maxima[:, -1], block[:, k * width :].max(axis=1))
    bound = maxima.min(axis=1)
    rows, cols = _nonzero_2d(block >= bound[:, None])
    values = block[rows, cols]
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    take = starts[:, None] + np.arange(k)[None, :]
    return values[take], cols[take].astype(np.int64)


def _topk_torch(
    queries: Any, database: Any, k: int, excluded: np.ndarray | None, block_rows: int | None, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    n_queries, n_database, _ = _check_pair(queries, database)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    ids = np.full((n_queries, k), -1, dtype=np.int64)
    kk = min(k, n_database)
    if kk == 0 or n_queries == 0:
        return scores, ids
    for r0, block in _similarity_blocks(queries, database, block_rows, device):
        r1 = r0 + block.shape[0]
        _mask_excluded(block, excluded, r0)
        if isinstance(block, np.ndarray):
            values, cols = _topk_rows_numpy(block, kk)
        else:
            top = torch.topk(block, kk, dim=1, sorted=True)
            values, cols = top.values.cpu().numpy(), top.indices.cpu().numpy()
        scores[r0:r1, :kk] = values
        ids[r0:r1, :kk] = cols
    ids[~np.isfinite(scores)] = -1
    scores[ids < 0] = -np.inf
    return scores, ids


_GPU_RESOURCES: dict[int, Any] = {}


def _faiss_index(database: np.ndarray, device: torch.device, ivf: tuple[int, int] | None = None) -> Any:
    """A FAISS inner-product index holding ``database``: flat, or IVF with ``ivf = (nlist, nprobe)``.

    The IVF coarse quantiser is trained on the database itself; FAISS subsamples at most
    256 points per list with its fixed clustering seed, so the index is reproducible.
    """
    faiss = import_faiss()
    dim = database.shape[1]
    if device.type == "cuda":
        if not faiss_gpu_available():
            installed = installed_faiss_distributions()
            raise PathbenchError(
                f"backend 'faiss' on a GPU needs a faiss build with GPU support; installed: "
                f"{', '.join(installed) or 'none'}. Use backend 'torch' or device 'cpu', or {FAISS_INSTALL_HINT}"
                + (" (uninstall the others first)." if len(installed) > 1 else ".")
            )
        gpu = device.index or 0
        if gpu not in _GPU_RESOURCES:  # must outlive every index built on it
            _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
        if ivf is None:
            config = faiss.GpuIndexFlatConfig()
            config.device = gpu
            index = faiss.GpuIndexFlatIP(_GPU_RESOURCES[gpu], dim, config)
        else:
            config = faiss.GpuIndexIVFFlatConfig()
            config.device = gpu
            index = faiss.GpuIndexIVFFlat(_GPU_RESOURCES[gpu], dim, ivf[0], faiss.METRIC_INNER_PRODUCT, config)
    elif ivf is None:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, ivf[0], faiss.METRIC_INNER_PRODUCT)
    if ivf is not None:
        index.train(database)
        index.nprobe = ivf[1]
    index.add(database)
    return index


def _topk_faiss(
    queries: Any, database: Any, k: int, excluded: np.ndarray | None, block_rows: int | None, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    db = _as_numpy(database)
    _check_pair(queries, db)
    index = _faiss_index(db, device) if min(db.shape[0], k + (excluded is not None)) > 0 else None
    return _search_faiss(index, queries, db.shape[0], k, excluded, block_rows)


def _search_faiss(
    index: Any, queries: Any, n_database: int, k: int, excluded: np.ndarray | None, block_rows: int | None
) -> tuple[np.ndarray, np.ndarray]:
    q = _as_numpy(queries)
    n_queries = q.shape[0]
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    ids = np.full((n_queries, k), -1, dtype=np.int64)
    extra = 0 if excluded is None else 1
    kk = min(k + extra, n_database)
    if kk == 0 or n_queries == 0:
        return scores, ids
    # FAISS blocks its products itself (4,096 queries x 1,024 entries on a CPU): handing it
    # more queries per call costs no memory beyond the results, and calls of the torch
    # backend's block size (167 queries at 100,000 entries) made it 3.5x slower
    # (benchmarks/knn_probe.py, 100,000 x 2,000 x 768: 14.1 s per search vs 4.1 s).
    rows = _FAISS_QUERY_ROWS if block_rows is None else _block_rows(n_database, block_rows)
    for r0 in range(0, n_queries, rows):
        r1 = min(r0 + rows, n_queries)
        values, cols = index.search(q[r0:r1], kk)
        cols = cols.astype(np.int64)
        if excluded is not None:
            drop = cols == excluded[r0:r1, None]
            # Stable: keeps the search order among the ids that stay.
            keep = np.argsort(drop, axis=1, kind="stable")
            values = np.take_along_axis(values, keep, axis=1)
            cols = np.take_along_axis(np.where(drop, -1, cols), keep, axis=1)
        width = min(k, cols.shape[1])
        scores[r0:r1, :width] = values[:, :width]
        ids[r0:r1, :width] = cols[:, :width]
    scores[ids < 0] = -np.inf
    ids[scores == -np.inf] = -1
    return scores, ids


def topk(
    queries: Any,
    database: Any,
    k: int,
    *,
    exclude_ids: Any = None,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search.

    Args:
        queries: ``(m, dim)`` float32 array or tensor, L2-normalised by the caller.
        database: ``(n, dim)`` float32, L2-normalised.
        k: neighbours per query.
        exclude_ids: optional ``(m,)`` int; database id ``exclude_ids[i]`` is never returned
            for query ``i`` (``-1``: nothing excluded). ``np.arange(m)`` with
            ``queries is database`` excludes each query itself.
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        block_rows: queries per block (default: blocks of about 64 MiB; FAISS: 16,384 queries per call).

    Returns:
        ``(scores, ids)``: ``(m, k)`` float32 sorted in decreasing order and ``(m, k)``
        int64 database ids. Where fewer than ``k`` candidates exist the rows are padded
        with ``-inf`` and ``-1``. Among tied scores the order of ids is unspecified.
    """
    if k < 0:
        raise PathbenchError(f"k must be non-negative, got {k}.")
    resolved_device = resolve_device(device)
    name = resolve_backend(backend, resolved_device)
    excluded = _exclusions(exclude_ids, int(queries.shape[0]))
    search = _topk_faiss if name == "faiss" else _topk_torch
    return search(queries, database, k, excluded, block_rows, resolved_device)


# Above this many database vectors an index of kind "auto" is IVF rather than flat: exact
# search over a million 768-d vectors costs about 1.5 GFLOP per query (seconds per thousand
# queries on a CPU), while IVF with the settings of ivf_settings scans about 1/16 of it. Below
# it, exact search is affordable and keeps results exact; every eva task is below it (the
# largest, PatchCamelyon, trains on 262,144 patches).
IVF_MIN_DATABASE = 1_000_000
INDEX_KINDS = ("auto", "flat", "ivf")


def ivf_settings(n_database: int) -> tuple[int, int]:
    """``(nlist, nprobe)`` of an IVF index over ``n_database`` vectors.

    ``nlist = 4 sqrt(n)`` inverted lists (the lower end of FAISS's guideline of 4 to 16
    sqrt(n)), ``nprobe = nlist / 16`` of them visited per query.
    """
    nlist = max(1, min(n_database, round(4 * math.sqrt(n_database))))
    return nlist, max(1, nlist // 16)


class InnerProductIndex:
    """A database built once and searched many times (exact flat search, or FAISS IVF).

    Args:
        database: ``(n, dim)`` float32 array or tensor, L2-normalised by the caller.
        backend: ``"auto"``, ``"torch"`` or ``"faiss"`` (:func:`resolve_backend`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        kind: ``"flat"`` (exact), ``"ivf"`` (FAISS only; approximate: a query sees the
            ``nprobe`` lists nearest to it) or ``"auto"`` (IVF from :data:`IVF_MIN_DATABASE`
            vectors when the backend is FAISS, else flat).
        nlist, nprobe: IVF settings (default :func:`ivf_settings`).

    Attributes:
        backend, device, kind: what was resolved. ``exact``: whether searches are exact.
        nlist, nprobe: the IVF settings (None for flat).
    """

    def __init__(self, database: Any, *, backend: str = "auto", device: str | torch.device = "cpu",
                 kind: str = "auto", nlist: int | None = None, nprobe: int | None = None) -> None:
        if len(database.shape) != 2:
            raise PathbenchError(f"a retrieval database must be 2-D (n, dim); got shape {tuple(database.shape)}.")
        if kind not in INDEX_KINDS:
            raise PathbenchError(f"unknown index kind {kind!r}: expected one of {', '.join(INDEX_KINDS)}.")
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.n_database, self.dim = int(database.shape[0]), int(database.shape[1])
        if kind == "auto":
            kind = "ivf" if self.backend == "faiss" and self.n_database >= IVF_MIN_DATABASE else "flat"
        if kind == "ivf" and self.backend != "faiss":
            raise PathbenchError("an IVF index needs the FAISS backend: use backend 'faiss' (and install "
                                 f"FAISS: {FAISS_INSTALL_HINT}) or index kind 'flat'.")
        self.kind = kind
        self.nlist = self.nprobe = None
        if kind == "ivf":
            self.nlist = int(nlist or ivf_settings(self.n_database)[0])
            self.nprobe = int(nprobe or max(1, self.nlist // 16))
            if not 1 <= self.nlist <= self.n_database or not 1 <= self.nprobe <= self.nlist:
                raise PathbenchError(f"IVF settings must satisfy 1 <= nprobe <= nlist <= {self.n_database} (the "
                                     f"database size); got nlist {self.nlist}, nprobe {self.nprobe}.")
        if self.backend == "faiss":
            host = _as_numpy(database)
            self._index = _faiss_index(host, self.device, None if kind == "flat" else (self.nlist, self.nprobe))
        else:
            # Kept where the products run: NumPy on the CPU, a tensor on the GPU (uploaded once).
            self._database = _as_numpy(database) if self.device.type == "cpu" else _as_tensor(database, self.device)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def search(self, queries: Any, k: int, *, block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` database entries of each query, as :func:`topk` returns them."""
        if k < 0:
            raise PathbenchError(f"k must be non-negative, got {k}.")
        if len(queries.shape) != 2 or queries.shape[1] != self.dim:
            raise PathbenchError(f"queries must be (m, {self.dim}) like the database; got {tuple(queries.shape)}.")
        if self.backend == "faiss":
            return _search_faiss(self._index, queries, self.n_database, k, None, block_rows)
        return _topk_torch(queries, self._database, k, None, block_rows, self.device)


@dataclass
class ThresholdCounts:
    """Counts of scores above per-query thresholds, and the scores too close to call.

    For query ``i`` with bounds ``lo[i] <= hi[i]``: a score ``>= hi[i]`` is surely above the
    exact threshold, a score ``< lo[i]`` surely below, and ``lo[i] <= score < hi[i]`` is
    ambiguous and listed for an exact decision by the caller.

    Attributes:
        row_sure: ``(m,)`` int64, per query row, the number of database entries ``>= hi``.
        row_ambiguous: ``(p, 2)`` int64 ``(query, database)`` index pairs in the band.
        col_sure: ``(n,)`` int64 per database entry, counted against the column bounds
            (the reverse direction), or None when no column bounds were given.
        col_ambiguous: ``(q, 2)`` int64 ``(query, database)`` pairs in the column band.
    """

    row_sure: np.ndarray
    row_ambiguous: np.ndarray
    col_sure: np.ndarray | None
    col_ambiguous: np.ndarray | None


def _mask_counts(mask: np.ndarray, axis: int) -> np.ndarray:
    """Row (axis 1) or column (axis 0) counts of a C-contiguous bool mask whose width is a multiple of 8.

    Eight mask bytes are added at once as one uint64 word; no byte lane can overflow
    because at most 255 words are added before the lanes are unpacked.
    """
    rows, width = mask.shape
    words = mask.view(np.uint64)
    if axis == 0:
        counts = np.zeros(width, dtype=np.int64)
        for g0 in range(0, rows, 255):
            counts += words[g0 : g0 + 255].sum(axis=0, dtype=np.uint64).view(np.uint8)
        return counts
    counts = np.zeros(rows, dtype=np.int64)
    for g0 in range(0, width // 8, 255):
        lanes = words[:, g0 : g0 + 255].sum(axis=1, dtype=np.uint64).view(np.uint8)
        counts += lanes.reshape(rows, 8).sum(axis=1, dtype=np.int64)
    return counts


def _count_ge(block: np.ndarray | torch.Tensor, bound: Any, axis: int, scratch: np.ndarray | None) -> np.ndarray:
    """Number of entries ``>= bound`` along ``axis`` (bound broadcast along the other axis).

    On the CPU ``scratch`` is a zeroed bool array at least as tall as ``block`` and as wide
    as its width rounded up to a multiple of 8.
    """
    shape = (-1, 1) if axis == 1 else (1, -1)
    if isinstance(block, np.ndarray):
        rows, width = block.shape
        mask = scratch[:rows]
        np.greater_equal(block, bound.reshape(shape), out=mask[:, :width])
        counts = _mask_counts(mask, axis)
        return counts if axis == 1 else counts[:width]
    return (block >= bound.reshape(shape)).sum(dim=axis).cpu().numpy()


def _band_pairs(
    block: np.ndarray | torch.Tensor, lo: Any, hi: Any, axis: int, select: np.ndarray
) -> np.ndarray:
    """``(row, col)`` pairs with ``lo <= value < hi``, only in the selected rows (axis 1) or columns (axis 0)."""
    if select.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if isinstance(block, np.ndarray):
        if axis == 1:
            sub = block[select]
            rows, cols = _nonzero_2d((sub >= lo[select, None]) & (sub < hi[select, None]))
            return np.stack([select[rows], cols], axis=1).astype(np.int64)
        sub = block[:, select]
        rows, cols = _nonzero_2d((sub >= lo[None, select]) & (sub < hi[None, select]))
        return np.stack([rows, select[cols]], axis=1).astype(np.int64)
    sel = torch.from_numpy(select).to(block.device)
    if axis == 1:
        sub = block[sel]
        hit = (sub >= lo[sel, None]) & (sub < hi[sel, None])
        pairs = torch.nonzero(hit).cpu().numpy()
        pairs[:, 0] = select[pairs[:, 0]]
    else:
        sub = block[:, sel]
        hit = (sub >= lo[None, sel]) & (sub < hi[None, sel])
        pairs = torch.nonzero(hit).cpu().numpy()
        pairs[:, 1] = select[pairs[:, 1]]
    return pairs.astype(np.int64).reshape(-1, 2)


def threshold_counts(
    queries: Any,
    database: Any,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    exclude_ids: Any = None,
    column_lo: np.ndarray | None = None,
    column_hi: np.ndarray | None = None,
    cap: int | None = None,
    device: str | torch.device = "cpu",
    block_rows: int | None = None,
) -> ThresholdCounts:
    """Count, per query, the database scores above a per-query threshold (torch backend).

    One pass of blocked ``queries @ database.T`` serves both directions: rows are counted
    against ``(lo, hi)`` (query ``i`` against every database entry) and, when column bounds
    are given, columns against ``(column_lo, column_hi)`` (database entry ``j`` as the
    query, every query row as a candidate), so a slide pair needs a single block.

    Args:
        queries: ``(m, dim)`` float32, L2-normalised. database: ``(n, dim)`` float32.
        lo, hi: ``(m,)`` float32 row bounds, see :class:`ThresholdCounts`.
        exclude_ids: ``(m,)`` int; entry ``(i, exclude_ids[i])`` is skipped in both directions.
        column_lo, column_hi: ``(n,)`` float32 column bounds, or None for rows only.
        cap: rows (columns) already holding ``cap`` sure counts need no ambiguous pairs.
        device: where the products run. block_rows: query rows per block.
    """
    resolved = resolve_device(device)
    m, n, _ = _check_pair(queries, database)
    excluded = _exclusions(exclude_ids, m)
    lo = np.asarray(lo, dtype=np.float32)
    hi = np.asarray(hi, dtype=np.float32)
    columns = column_lo is not None and column_hi is not None
    row_sure = np.zeros(m, dtype=np.int64)
    col_sure = np.zeros(n, dtype=np.int64) if columns else None
    row_pairs: list[np.ndarray] = []
    col_pairs: list[np.ndarray] = []
    limit = np.iinfo(np.int64).max if cap is None else cap

    def like(x: np.ndarray, block: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return x if isinstance(block, np.ndarray) else torch.from_numpy(x).to(block.device)

    if columns:
        col_lo = np.asarray(column_lo, dtype=np.float32)
        col_hi = np.asarray(column_hi, dtype=np.float32)
        col_lo_d = col_hi_d = None
    scratch = None
    for r0, block in _similarity_blocks(queries, database, block_rows, resolved):
        r1 = r0 + block.shape[0]
        if scratch is None and isinstance(block, np.ndarray):
            scratch = np.zeros((block.shape[0], -(-n // 8) * 8), dtype=bool)
        _mask_excluded(block, excluded, r0)
        lo_d, hi_d = like(lo[r0:r1], block), like(hi[r0:r1], block)
        sure = _count_ge(block, hi_d, 1, scratch)
        maybe = _count_ge(block, lo_d, 1, scratch)
        row_sure[r0:r1] = sure
        open_rows = np.flatnonzero((maybe > sure) & (sure < limit))
        if open_rows.size:
            pairs = _band_pairs(block, lo_d, hi_d, 1, open_rows)
            pairs[:, 0] += r0
            row_pairs.append(pairs)
        if columns:
            if col_lo_d is None:
                col_lo_d, col_hi_d = like(col_lo, block), like(col_hi, block)
            sure_c = _count_ge(block, col_hi_d, 0, scratch)
            maybe_c = _count_ge(block, col_lo_d, 0, scratch)
            col_sure += sure_c
            open_cols = np.flatnonzero((maybe_c > sure_c) & (col_sure < limit))
            if open_cols.size:
                pairs = _band_pairs(block, col_lo_d, col_hi_d, 0, open_cols)
                pairs[:, 0] += r0
                col_pairs.append(pairs)

    def stack(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    return ThresholdCounts(
        row_sure=row_sure,
        row_ambiguous=stack(row_pairs),
        col_sure=col_sure,
        col_ambiguous=stack(col_pairs) if columns else None,
    )
