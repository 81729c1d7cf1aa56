"""Weighted k-nearest-neighbour probe for patch classification (DINO's kNN evaluation).

The protocol of DINO (Caron et al. 2021, ``eval_knn.py``), the standard evaluation of
self-supervised features:

- train and query embeddings are L2-normalised; similarity is the cosine (inner product);
- each query takes its ``k = 20`` most similar training embeddings;
- neighbour ``j`` votes for its class with weight ``exp(sim_j / T)``, ``T = 0.07``;
- the class scores are the summed votes and the prediction is their argmax.

Nothing is trained and nothing is random: the probe is one deterministic "run".

Where pathbench pins down what DINO leaves open:

- **Similarity** is the float64 inner product of the float32-normalised embeddings. The
  search backends (FAISS or blocked products, :mod:`pathbench.retrieval`) compute float32
  scores, whose last bits depend on the library's summation order; the probe asks them for
  more candidates than it needs (``2k``), rescores the candidates in float64 and keeps a
  query's result only when the float32 error bound proves that no database entry outside
  the candidates can reach its k-th similarity. The other queries are searched again with
  four times as many candidates, and finally against the whole training set in float64.
  So every backend and device gives the same neighbours, not just the same accuracy.
- **Ties in similarity** are broken by the lower training index: among equally similar
  training embeddings, the one given first to :meth:`KnnProbe.fit` is the nearer.
- **Ties in class score** go to the lowest class index (``numpy.argmax``).
- **k larger than the training set** uses every training embedding (DINO's ``topk`` would fail).
- **Scores** (:meth:`KnnProbe.predict_scores`) are the summed votes divided by their total,
  so each row sums to 1 (DINO ranks the raw sums; the argmax is the same). The votes are
  computed as ``exp((sim - max sim) / T)``, the same shares without overflow.
- An **IVF index** (FAISS, for training sets from
  :data:`pathbench.retrieval.IVF_MIN_DATABASE` entries with ``index="auto"``) is
  approximate: its candidates are rescored the same way, but nothing proves that they hold
  the true neighbours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pathbench import retrieval
from pathbench.errors import PathbenchError

__all__ = ["KnnProbe", "knn_votes", "resolve_knn_backend"]

# Queries rescored per block: the gathered candidates (rows x candidates x dim float64) stay
# near 32 MiB at 40 candidates of 768 dimensions.
_RESCORE_ROWS = 128
# A query whose neighbours are still undecided with this many candidates is searched densely.
_MAX_CANDIDATES = 1024


def resolve_knn_backend(backend: str, device: torch.device, n_train: int = 0, index: str = "auto") -> str:
    """The search backend ``backend`` stands for in the kNN probe.

    ``"auto"`` is FAISS on a CPU when it is installed, and for an IVF index (``index="ivf"``,
    or ``"auto"`` from :data:`pathbench.retrieval.IVF_MIN_DATABASE` training embeddings)
    wherever FAISS can run; otherwise the torch backend. Measured with
    ``benchmarks/knn_probe.py`` on a 2-core CPU (D = 768, 40 candidates per query, both
    backends on the same data in one process, interleaved, best of 2), FAISS's flat search
    was the faster at every size: eva CRC's 100,000 train x 7,180 queries 5.9 s vs 8.6 s
    (1.45x; 1.15x with one thread each: 11.3 s vs 13.0 s), 30,000 x 3,000 0.71 s vs 0.81 s,
    10,000 x 1,000 0.08 s vs 0.11 s; the whole probe 1.06x to 1.23x. On a GPU the figures are
    still to be measured and exact search stays with torch, which needs no second library.
    Both engines are exact and the probe's neighbours do not depend on the engine, so the
    choice changes only the speed.
    """
    if backend == "auto":
        gpu = device.type == "cuda"
        if not retrieval.faiss_available() or (gpu and not retrieval.faiss_gpu_available()):
            return "torch"
        wants_ivf = index == "ivf" or (index == "auto" and n_train >= retrieval.IVF_MIN_DATABASE)
        return "faiss" if wants_ivf or not gpu else "torch"
    return retrieval.resolve_backend(backend, device)


def knn_votes(similarities: np.ndarray, labels: np.ndarray, num_classes: int, temperature: float) -> np.ndarray:
    """Class shares of DINO's weighted vote.

    Args:
        similarities: ``(m, k)`` float64 similarities of each query's neighbours, in the
            order of summation (nearest first); ``-inf`` marks a missing neighbour.
        labels: ``(m, k)`` int64 class of each neighbour (ignored where missing).
        num_classes: C.
        temperature: T of the vote weights ``exp(sim / T)``.

    Returns:
        ``(m, C)`` float64: each row's votes per class divided by their total (a row of
        zeros when a query has no neighbour).
    """
    m = similarities.shape[0]
    present = np.isfinite(similarities)
    top = np.max(similarities, axis=1, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0.0)[:, None]
    weights = np.exp((np.where(present, similarities, top) - top) / temperature)
    votes = np.zeros((m, num_classes), dtype=np.float64)
    rows = np.broadcast_to(np.arange(m)[:, None], labels.shape)
    # np.add.at accumulates in index order: the sums do not depend on the search backend.
    np.add.at(votes, (rows[present], labels[present]), weights[present])
    total = votes.sum(axis=1, keepdims=True)
    return np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)


class KnnProbe:
    """DINO's weighted kNN classifier on frozen embeddings (see the module docstring).

    Parameters follow scikit-learn: the constructor stores hyper-parameters, :meth:`fit`
    indexes the training set, fitted attributes end with ``_``.

    Args:
        num_classes: number of classes C (at least 2).
        k: neighbours per query (DINO: 20).
        temperature: T of the vote weights ``exp(sim / T)`` (DINO: 0.07).
        backend: ``"auto"`` (:func:`resolve_knn_backend`), ``"faiss"`` or ``"torch"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        index: ``"auto"``, ``"flat"`` (exact) or ``"ivf"`` (approximate, FAISS only); see
            :class:`pathbench.retrieval.InnerProductIndex`.
        block_rows: queries per similarity block of the search (default: about 64 MiB blocks).

    Fitted attributes:
        train_: ``(N, D)`` float32 L2-normalised training embeddings.
        train_labels_: ``(N,)`` int64 training classes.
        index_: the :class:`~pathbench.retrieval.InnerProductIndex` searched.
        backend_, device_: what ``backend`` and ``device`` resolved to.
    """

    def __init__(self, num_classes: int, k: int = 20, temperature: float = 0.07, backend: str = "auto",
                 device: str = "auto", index: str = "auto", block_rows: int | None = None) -> None:
        if int(num_classes) < 2:
            raise PathbenchError(f"a classification head needs at least 2 classes, got {num_classes}.")
        if int(k) < 1:
            raise PathbenchError(f"k must be a positive number of neighbours, got {k}.")
        if not float(temperature) > 0:
            raise PathbenchError(f"the vote temperature must be positive, got {temperature}.")
        self.num_classes = int(num_classes)
        self.k = int(k)
        self.temperature = float(temperature)
        self.backend = backend
        self.device = device
        self.index = index
        self.block_rows = block_rows

    def fit(self, train_x: Any, train_y: Any) -> KnnProbe:
        """Normalise and index the training embeddings.

        Args:
            train_x: ``(N, D)`` float embeddings (array or tensor), N >= 1.
            train_y: ``(N,)`` int classes in ``[0, num_classes)``.
        """
        x = self._normalise(train_x, "train")
        y = _labels(train_y, x.shape[0], self.num_classes, "train")
        self.device_ = retrieval.resolve_device(self.device)
        self.backend_ = resolve_knn_backend(self.backend, self.device_, x.shape[0], self.index)
        self.index_ = retrieval.InnerProductIndex(x, backend=self.backend_, device=self.device_, kind=self.index)
        self.train_, self.train_labels_ = x, y
        return self

    def kneighbors(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``min(k, N)`` nearest training embeddings.

        Args:
            x: ``(M, D)`` float query embeddings.

        Returns:
            ``(similarities, ids)``: ``(M, min(k, N))`` float64 cosine similarities in
            decreasing order (ties: lower training index first) and int64 training indices.
            An approximate (IVF) index can return fewer neighbours: ``-inf`` and ``-1``.
        """
        self._check_fitted()
        queries = self._normalise(x, "query", self.train_.shape[1])
        n_train = self.train_.shape[0]
        k = min(self.k, n_train)
        sims = np.full((queries.shape[0], k), -np.inf)
        ids = np.full((queries.shape[0], k), -1, dtype=np.int64)
        # A candidate outside the float32 top list is at most this far above the list's last score.
        slack = retrieval.float32_error_bound(self.train_.shape[1]) + self.train_.shape[1] * 2.0**-52
        pending = np.arange(queries.shape[0])
        candidates = min(n_train, max(2 * k, k + 16))
        most = max(candidates, _MAX_CANDIDATES)
        while pending.size:
            if candidates > most:
                sims[pending], ids[pending] = self._dense(queries[pending], k)
                break
            scores32, found = self.index_.search(queries[pending], candidates, block_rows=self.block_rows)
            cand_sims, cand_ids = self._rescore(queries[pending], found)
            sims[pending], ids[pending] = cand_sims[:, :k], cand_ids[:, :k]
            if not self.index_.exact or candidates >= n_train:
                break
            decided = cand_sims[:, k - 1] > scores32[:, -1].astype(np.float64) + slack
            pending = pending[~decided]
            candidates = min(n_train, 4 * candidates)
        return sims, ids

    def predict_scores(self, x: Any) -> np.ndarray:
        """Weighted-vote class shares: ``(M, C)`` float64, each row summing to 1."""
        sims, ids = self.kneighbors(x)
        labels = np.where(ids >= 0, self.train_labels_[np.maximum(ids, 0)], 0)
        return knn_votes(sims, labels, self.num_classes, self.temperature)

    def predict(self, x: Any) -> np.ndarray:
        """Predicted classes: ``(M,)`` int64 (class-score ties go to the lowest class)."""
        return np.argmax(self.predict_scores(x), axis=1).astype(np.int64)

    def score(self, x: Any, y: Any) -> float:
        """Balanced accuracy (binary) / macro accuracy (multiclass): the mean recall over the
        classes present in ``y``, as :func:`pathbench.heads.macro_accuracy` and the linear probe."""
        from pathbench.heads.linear import macro_accuracy

        predictions = self.predict(x)
        return macro_accuracy(_labels(y, predictions.shape[0], self.num_classes, "eval"), predictions)

    # ----------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise PathbenchError("the kNN probe is not fitted yet; call fit() first.")

    def _normalise(self, x: Any, split: str, dim: int | None = None) -> np.ndarray:
        from pathbench.benches.plism_metrics import normalise

        x = x if hasattr(x, "shape") else np.asarray(x)
        if len(x.shape) != 2 or x.shape[0] == 0:
            raise PathbenchError(f"{split}: expected a non-empty (N, D) array of embeddings, got shape "
                                 f"{tuple(x.shape)}.")
        if dim is not None and x.shape[1] != dim:
            raise PathbenchError(f"{split} embeddings have {x.shape[1]} dimensions but the probe was fitted on "
                                 f"{dim}: both must come from the same model and pooling.")
        return normalise(x, what=f"{split} embeddings")

    def _rescore(self, queries: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float64 similarities of the candidates, sorted by (decreasing similarity, index)."""
        sims = np.full(found.shape, -np.inf)
        for r0 in range(0, found.shape[0], _RESCORE_ROWS):
            ids = found[r0 : r0 + _RESCORE_ROWS]
            gathered = self.train_[np.maximum(ids, 0)].astype(np.float64)  # (rows, candidates, D)
            block = np.einsum("rd,rcd->rc", queries[r0 : r0 + _RESCORE_ROWS].astype(np.float64), gathered)
            sims[r0 : r0 + _RESCORE_ROWS] = np.where(ids >= 0, block, -np.inf)
        # Missing candidates (-1) sort last: their similarity is -inf and their key the largest.
        keys = np.where(found >= 0, found, np.iinfo(np.int64).max)
        order = np.lexsort((keys, -sims), axis=-1)
        return np.take_along_axis(sims, order, axis=1), np.take_along_axis(found, order, axis=1)

    def _dense(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by float64 similarity against the whole training set (ties: lower index)."""
        n_train = self.train_.shape[0]
        rows = max(1, (1 << 22) // n_train)
        sims = np.empty((queries.shape[0], k))
        ids = np.empty((queries.shape[0], k), dtype=np.int64)
        for r0 in range(0, queries.shape[0], rows):
            q = queries[r0 : r0 + rows].astype(np.float64)
            full = np.concatenate([q @ self.train_[c0 : c0 + 16384].T.astype(np.float64)
                                   for c0 in range(0, n_train, 16384)], axis=1)
            order = np.argsort(-full, axis=1, kind="stable")[:, :k]  # stable: lower index first on ties
            sims[r0 : r0 + rows] = np.take_along_axis(full, order, axis=1)
            ids[r0 : r0 + rows] = order
        return sims, ids


def _labels(y: Any, n: int, num_classes: int, split: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    labels = np.asarray(y)
    if labels.shape != (n,):
        raise PathbenchError(f"{split}: expected {n} labels (one per embedding), got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise PathbenchError(f"{split}: labels must be integer class indices, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise PathbenchError(f"{split}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}.")
    return labels
