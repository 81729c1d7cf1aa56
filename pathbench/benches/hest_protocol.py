"""HEST-Benchmark's regression protocol: heads, per-gene Pearson r and aggregation.

Pure computation on arrays, no files and no models. The default head reproduces
HEST-Benchmark's default (``bench_config.yaml`` with ``dimreduce: PCA``):

1. ``StandardScaler`` then ``PCA(n_components=256, random_state=seed)``, both fit on the
   training spots of the fold only (no whitening); training spots are transformed with
   ``fit_transform`` and test spots with ``transform``; HEST wraps the result in
   ``torch.Tensor`` (float32), which scikit-learn then converts to float64, so the PCA
   output is rounded to float32 and the ridge runs in float64;
2. ``Ridge(solver="lsqr", alpha=100 / (n_features * n_targets), fit_intercept=False,
   max_iter=1000, random_state=seed)`` where ``n_features`` is counted after PCA;
3. Pearson r per gene over all test spots of the fold pooled, then the mean over genes.

Heads follow scikit-learn's estimator style: the constructor only stores
hyper-parameters, :meth:`fit` learns, attributes ending in ``_`` hold what was learnt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold, KFold
from sklearn.preprocessing import StandardScaler

from pathbench.errors import PathbenchError

HEADS = ("ridge-pca", "ridge", "ridge-cv")
DEFAULT_HEAD = "ridge-pca"
DEFAULT_N_COMPONENTS = 256
DEFAULT_SEED = 1
DEFAULT_MAX_ITER = 1000
DEFAULT_CV_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def hest_alpha(n_features: int, n_targets: int) -> float:
    """HEST's ridge penalty: ``100 / (n_features * n_targets)`` (features counted after PCA)."""
    return 100.0 / (n_features * n_targets)


def log1p_counts(counts: np.ndarray) -> np.ndarray:
    """HEST's target transform: ``log1p`` of raw counts, nothing else.

    counts: (n_spots, n_genes), any numeric dtype. Returns (n_spots, n_genes) float64.
    """
    return np.log1p(np.asarray(counts, dtype=np.float64))


def _as_float32_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise PathbenchError(f"{name} must be a 2-D array (n_spots, n_features); found shape {x.shape}.")
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_targets(y: np.ndarray, n_rows: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n_rows:
        raise PathbenchError(f"targets must have shape ({n_rows}, n_genes); found {y.shape}.")
    return y


def _hest_ridge(alpha: float, seed: int, max_iter: int) -> Ridge:
    return Ridge(solver="lsqr", alpha=alpha, fit_intercept=False, max_iter=max_iter, random_state=seed)


def _hest_pca_output(z: np.ndarray) -> np.ndarray:
    """PCA output as HEST's ridge sees it: ``torch.Tensor(z)`` (float32) read back by
    scikit-learn as float64. Rounding to float32 and fitting in float32 instead moves
    per-gene Pearson r by 4e-4 to 4e-3 on synthetic 512-dimensional tasks."""
    return np.asarray(z, dtype=np.float32).astype(np.float64)


class _ScalerPCA:
    """StandardScaler + PCA fit on one set of spots; records the number of components used.

    Outputs are (n_spots, n_components_) float64 holding float32 values (HEST's path)."""

    def __init__(self, n_components: int, seed: int) -> None:
        self.n_components = n_components
        self.seed = seed

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        # HEST asks for 256 components; scikit-learn refuses more than min(n_samples,
        # n_features), so small folds (and tiny test data) are capped there and recorded.
        self.n_components_ = int(min(self.n_components, x.shape[0], x.shape[1]))
        self.scaler_ = StandardScaler()
        self.pca_ = PCA(n_components=self.n_components_, random_state=self.seed)
        return _hest_pca_output(self.pca_.fit_transform(self.scaler_.fit_transform(x)))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return _hest_pca_output(self.pca_.transform(self.scaler_.transform(x)))


class RidgePCAHead:
    """HEST's default head: StandardScaler + PCA(256) + lsqr ridge without intercept.

    Parameters
    ----------
    n_components: PCA components (HEST: 256); capped at ``min(n_samples, n_features)`` of
        the training spots, the value used is ``n_components_``.
    alpha: ridge penalty; ``None`` (default) means HEST's ``100 / (n_components_ * n_genes)``.
    seed: ``random_state`` of PCA and Ridge (HEST: 1).
    max_iter: lsqr iterations (HEST: 1000).
    """

    name = "ridge-pca"

    def __init__(
        self,
        n_components: int = DEFAULT_N_COMPONENTS,
        alpha: float | None = None,
        seed: int = DEFAULT_SEED,
        max_iter: int = DEFAULT_MAX_ITER,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.seed = seed
        self.max_iter = max_iter

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> RidgePCAHead:
        """Fit on training spots. x: (n, d) embeddings; y: (n, n_genes) log1p targets."""
        x = _as_float32_2d(x, "embeddings")
        y = _as_targets(y, x.shape[0])
        self.reducer_ = _ScalerPCA(self.n_components, self.seed)
        z = self.reducer_.fit_transform(x)
        self.n_components_ = self.reducer_.n_components_
        self.alpha_ = float(self.alpha) if self.alpha is not None else hest_alpha(z.shape[1], y.shape[1])
        self.ridge_ = _hest_ridge(self.alpha_, self.seed, self.max_iter).fit(z, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict (n, n_genes) log1p expression from (n, d) embeddings."""
        return self.ridge_.predict(self.reducer_.transform(_as_float32_2d(x, "embeddings")))


class RidgeHead:
    """Ridge on the raw embeddings, HEST's ``dimreduce: None`` (no scaling, no PCA).

    HEST hands the float32 embeddings to the ridge as a numpy array here, so this ridge
    runs in float32, as HEST's does.

    ``alpha=None`` means ``100 / (n_features * n_genes)`` with the embedding dimension.
    """

    name = "ridge"

    def __init__(self, alpha: float | None = None, seed: int = DEFAULT_SEED, max_iter: int = DEFAULT_MAX_ITER) -> None:
        self.alpha = alpha
        self.seed = seed
        self.max_iter = max_iter

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> RidgeHead:
        """Fit on training spots. x: (n, d) embeddings; y: (n, n_genes) log1p targets."""
        x = _as_float32_2d(x, "embeddings")
        y = _as_targets(y, x.shape[0])
        self.n_components_ = None
        self.alpha_ = float(self.alpha) if self.alpha is not None else hest_alpha(x.shape[1], y.shape[1])
        self.ridge_ = _hest_ridge(self.alpha_, self.seed, self.max_iter).fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict (n, n_genes) log1p expression from (n, d) embeddings."""
        return self.ridge_.predict(_as_float32_2d(x, "embeddings"))


class RidgeCVHead:
    """StandardScaler + PCA + ridge with alpha chosen by inner cross-validation.

    The inner cross-validation runs on the training spots of the outer fold only. Inner
    folds keep each sample (slide) whole when ``groups`` names at least two samples
    (``GroupKFold``), otherwise they are shuffled ``KFold`` splits of spots. In every inner
    fold the scaler and PCA are refit on the inner training spots; the score is the mean
    Pearson r over genes on the pooled held-out spots, as in the outer protocol. The
    alpha with the best mean inner score is refit on all training spots (ties: the larger
    alpha). ``cv_scores_`` maps each alpha to its mean inner score.
    """

    name = "ridge-cv"

    def __init__(
        self,
        alphas: tuple[float, ...] = DEFAULT_CV_ALPHAS,
        n_components: int = DEFAULT_N_COMPONENTS,
        cv: int = 5,
        seed: int = DEFAULT_SEED,
        max_iter: int = DEFAULT_MAX_ITER,
    ) -> None:
        self.alphas = alphas
        self.n_components = n_components
        self.cv = cv
        self.seed = seed
        self.max_iter = max_iter

    def _inner_splits(self, n: int, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        if groups is not None and len(np.unique(groups)) >= 2:
            n_splits = min(self.cv, len(np.unique(groups)))
            return list(GroupKFold(n_splits=n_splits).split(np.zeros(n), groups=groups))
        n_splits = min(self.cv, n)
        if n_splits < 2:
            raise PathbenchError(f"ridge-cv needs at least 2 training spots for inner cross-validation; found {n}.")
        return list(KFold(n_splits=n_splits, shuffle=True, random_state=self.seed).split(np.zeros(n)))

    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> RidgeCVHead:
        """Fit on training spots. x: (n, d); y: (n, n_genes); groups: (n,) sample ids or None."""
        x = _as_float32_2d(x, "embeddings")
        y = _as_targets(y, x.shape[0])
        if len(self.alphas) == 0:
            raise PathbenchError("ridge-cv needs at least one candidate alpha.")
        scores: dict[float, list[float]] = {float(a): [] for a in self.alphas}
        for inner_train, inner_val in self._inner_splits(x.shape[0], None if groups is None else np.asarray(groups)):
            reducer = _ScalerPCA(self.n_components, self.seed)
            z_train = reducer.fit_transform(x[inner_train])
            z_val = reducer.transform(x[inner_val])
            for alpha in scores:
                ridge = _hest_ridge(alpha, self.seed, self.max_iter).fit(z_train, y[inner_train])
                result = pearson_per_gene(y[inner_val], ridge.predict(z_val))
                if result.n_valid:
                    scores[alpha].append(result.mean)
        self.cv_scores_ = {a: (float(np.mean(s)) if s else -math.inf) for a, s in scores.items()}
        self.alpha_ = max(self.cv_scores_, key=lambda a: (self.cv_scores_[a], a))
        self.reducer_ = _ScalerPCA(self.n_components, self.seed)
        z = self.reducer_.fit_transform(x)
        self.n_components_ = self.reducer_.n_components_
        self.ridge_ = _hest_ridge(self.alpha_, self.seed, self.max_iter).fit(z, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predict (n, n_genes) log1p expression from (n, d) embeddings."""
        return self.ridge_.predict(self.reducer_.transform(_as_float32_2d(x, "embeddings")))


def make_head(name: str, seed: int = DEFAULT_SEED) -> RidgePCAHead | RidgeHead | RidgeCVHead:
    """The head called ``name`` (one of :data:`HEADS`) with HEST's defaults and ``seed``."""
    if name == "ridge-pca":
        return RidgePCAHead(seed=seed)
    if name == "ridge":
        return RidgeHead(seed=seed)
    if name == "ridge-cv":
        return RidgeCVHead(seed=seed)
    raise PathbenchError(f"unknown HEST head {name!r}: expected one of {', '.join(HEADS)} (e.g. --head ridge-pca).")


# ---------------------------------------------------------------------------------------
# Pearson r per gene


CONSTANT_TARGET = "constant expression in test fold"
CONSTANT_PREDICTION = "constant prediction"


@dataclass
class GeneCorrelations:
    """Pearson r per gene for one fold.

    r: (n_genes,) float64, NaN where undefined; excluded: reason per gene ("" when r is
    defined); mean: mean of the defined values (NaN when none); n_valid: how many.
    """

    r: np.ndarray
    excluded: list[str] = field(default_factory=list)

    @property
    def valid(self) -> np.ndarray:
        return np.array([reason == "" for reason in self.excluded], dtype=bool)

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def mean(self) -> float:
        return float(np.mean(self.r[self.valid])) if self.n_valid else math.nan


def pearson_per_gene(y_true: np.ndarray, y_pred: np.ndarray) -> GeneCorrelations:
    """Pearson r between each column of ``y_true`` and ``y_pred``, in float64.

    y_true, y_pred: (n_spots, n_genes). A column whose values are all equal (in the
    targets, or in the predictions) has no Pearson r: it gets NaN and an exclusion reason
    instead of silently poisoning the mean (scipy's ``pearsonr`` returns NaN there too).
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim == 1:
        t, p = t[:, None], p.reshape(-1, 1)
    if t.shape != p.shape:
        raise PathbenchError(f"targets {t.shape} and predictions {p.shape} must have the same shape.")
    if t.shape[0] < 2:
        raise PathbenchError(f"Pearson r needs at least 2 test spots; found {t.shape[0]}.")
    n_genes = t.shape[1]
    r = np.full(n_genes, np.nan)
    excluded = []
    for g in range(n_genes):
        tg, pg = t[:, g], p[:, g]
        if np.all(tg == tg[0]):
            excluded.append(CONSTANT_TARGET)
            continue
        if np.all(pg == pg[0]):
            excluded.append(CONSTANT_PREDICTION)
            continue
        tc, pc = tg - tg.mean(), pg - pg.mean()
        # normalise first so the products cannot overflow or underflow
        tc /= np.linalg.norm(tc)
        pc /= np.linalg.norm(pc)
        r[g] = float(np.clip(np.dot(tc, pc), -1.0, 1.0))
        excluded.append("")
    return GeneCorrelations(r=r, excluded=excluded)


def aggregate_folds(fold_means: list[float] | np.ndarray) -> tuple[float, float]:
    """Task score from fold scores: (mean, population std with ddof=0), as HEST reports them."""
    values = np.asarray(fold_means, dtype=np.float64)
    if values.size == 0:
        raise PathbenchError("cannot aggregate a task with no folds.")
    return float(values.mean()), float(values.std(ddof=0))
