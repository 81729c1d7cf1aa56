"""eva's full metric set for classification heads: loss, AUROC, accuracy, balanced accuracy, F1,
precision and recall, for one run on one split.

eva (kaiko-eva 0.4, ``eva/core/metrics/defaults/classification/``) logs, for val and test,
``AverageLoss`` and either ``BinaryClassificationMetrics`` (``BinaryAUROC``,
``BinaryAccuracy``, ``BinaryBalancedAccuracy``, ``BinaryF1Score``, ``BinaryPrecision``,
``BinaryRecall``, threshold 0.5 on probabilities) or ``MulticlassClassificationMetrics``
(``MulticlassAUROC``, ``MulticlassAccuracy``, ``MulticlassF1Score``, ``MulticlassPrecision``,
``MulticlassRecall``, all ``average="macro"``). :func:`classification_metrics` returns the
same set under one set of names for both kinds of task:

========================  ==========================================  =====================================
key                       binary (one logit ``z``)                    multiclass (C scores)
========================  ==========================================  =====================================
``loss``                  BCE-with-logits, mean over items            cross-entropy, mean over items
``auroc``                 ROC AUC of ``z`` (eva: BinaryAUROC)         mean one-vs-rest ROC AUC of the
                                                                      softmax, over classes present
                                                                      (eva: MulticlassAUROC, macro)
``accuracy``              fraction correct (eva: BinaryAccuracy)      fraction correct (eva reports none)
``balanced_accuracy``     mean recall over the classes present        same (eva: MulticlassAccuracy, macro):
                          (eva: BinaryBalancedAccuracy)               the headline of both probes
``f1``                    F1 of class 1 (eva: BinaryF1Score)          macro F1 (eva: MulticlassF1Score)
``precision``             precision of class 1 (BinaryPrecision)      macro precision (MulticlassPrecision)
``recall``                recall of class 1 (BinaryRecall)            macro recall (MulticlassRecall)
========================  ==========================================  =====================================

Decisions: a binary item is positive when its logit is > 0 (``sigmoid(z) > 0.5``), a
multiclass item is the argmax (lowest class on ties). torchmetrics, which eva uses, takes a
batch of binary logits that all lie in [0, 1] for probabilities and thresholds them at 0.5
(``docs/eva.md``); pathbench does not reproduce that.

Where the numbers come from, and where they differ from eva's on edge cases:

- ``auroc``: ``sklearn.metrics.roc_auc_score`` on each class's scores (trapezoids over the
  distinct thresholds, ties counted half, as torchmetrics' exact ``thresholds=None`` mode).
  A class absent from the targets has no ROC curve: pathbench leaves it out of the mean
  (torchmetrics counts it as 0); NaN when no class can be scored (one class in the targets).
- ``balanced_accuracy``: :func:`pathbench.heads.macro_accuracy` (equal to
  ``sklearn.metrics.balanced_accuracy_score``), the mean recall over the classes present in
  the targets; it is what ``LinearProbe.score`` and ``KnnProbe.score`` return. torchmetrics
  also averages in a predicted class absent from the targets (as 0); real eva splits hold
  every class.
- ``f1``, ``precision``, ``recall``: ``sklearn.metrics`` with ``zero_division=0``; for a
  multiclass task macro-averaged over the classes present in the targets or the
  predictions: torchmetrics' ``average="macro"`` rule exactly (a class in neither has
  ``tp + fp + fn = 0`` and is left out; 0/0 counts as 0).
- ``loss``: ``torch.nn.functional.cross_entropy`` / ``binary_cross_entropy_with_logits``
  (eva's criteria) in float64, the mean over items. eva's ``AverageLoss`` averages the
  per-batch mean losses of its validation loader: ``loss_batch_size=256`` gives that (the
  same number unless the last batch is short). Scores that are probabilities (the kNN
  probe's vote shares) have no training loss: ``loss`` is then absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from pathbench.errors import PathbenchError

__all__ = ["METRIC_NAMES", "classification_metrics", "run_metrics"]

METRIC_NAMES = ("loss", "auroc", "accuracy", "balanced_accuracy", "f1", "precision", "recall")


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _targets(targets: Any, n: int, num_classes: int) -> np.ndarray:
    raw = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if raw.shape != (n,):
        raise PathbenchError(f"expected {n} targets (one per item), got shape {raw.shape}.")
    if not np.issubdtype(raw.dtype, np.integer) and not np.all(raw == np.round(raw)):
        raise PathbenchError(f"targets must be integer class indices, got dtype {raw.dtype}.")
    y = raw.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise PathbenchError(f"targets must lie in [0, {num_classes}), found {y.min()}..{y.max()}.")
    return y


def _binary_inputs(scores: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(ranking score of class 1, decision) of a binary task."""
    if kind == "logits":
        if scores.ndim == 2 and scores.shape[1] == 2:
            z = scores[:, 1] - scores[:, 0]  # a two-logit softmax is the sigmoid of the difference
        elif scores.ndim == 1 or scores.shape[1] == 1:
            z = scores.reshape(-1)
        else:
            raise PathbenchError(f"binary logits must be (N,), (N, 1) or (N, 2); got {scores.shape}.")
        return z, (z > 0).astype(np.int64)
    if scores.ndim == 2 and scores.shape[1] == 2:
        return scores[:, 1], np.argmax(scores, axis=1).astype(np.int64)
    if scores.ndim == 1 or scores.shape[1] == 1:
        p = scores.reshape(-1)
        return p, (p > 0.5).astype(np.int64)
    raise PathbenchError(f"binary probabilities must be (N,), (N, 1) or (N, 2); got {scores.shape}.")


def _loss(scores: np.ndarray, y: np.ndarray, binary: bool, batch_size: int | None) -> float:
    logits = torch.from_numpy(scores)
    target = torch.from_numpy(y)
    if binary:
        item = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    else:
        item = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    item = item.numpy()
    if batch_size is None:
        return float(item.mean())
    return float(np.mean([item[i : i + batch_size].mean() for i in range(0, item.shape[0], batch_size)]))


def _auroc(y: np.ndarray, class_scores: np.ndarray, classes: Sequence[int]) -> float:
    from sklearn.metrics import roc_auc_score

    values = [roc_auc_score(y == c, class_scores[:, i]) for i, c in enumerate(classes)
              if 0 < np.count_nonzero(y == c) < y.shape[0]]
    return float(np.mean(values)) if values else float("nan")


def classification_metrics(
    logits_or_scores: Any,
    targets: Any,
    num_classes: int,
    *,
    kind: Literal["logits", "probabilities"] = "logits",
    loss_batch_size: int | None = None,
) -> dict[str, float]:
    """eva's metric set for one run on one split (see the module docstring for each definition).

    Args:
        logits_or_scores: float array or tensor. ``kind="logits"``: a head's logits,
            ``(N,)`` or ``(N, 1)`` for a binary task (pathbench's one-logit head; ``(N, 2)``
            also works), ``(N, C)`` for a multiclass task. ``kind="probabilities"``:
            ``(N, C)`` class probabilities such as the kNN probe's vote shares (``(N,)``:
            probability of class 1 for a binary task).
        targets: ``(N,)`` int classes in ``[0, num_classes)``.
        num_classes: C; 2 is a binary task.
        kind: what the scores are.
        loss_batch_size: average the loss per batch of this many items first, as eva's
            ``AverageLoss`` over its validation loader (256); None: the mean over items.

    Returns:
        ``{name: value}`` with the keys of :data:`METRIC_NAMES` (``loss`` only for logits);
        ``auroc`` is NaN when the targets hold a single class.
    """
    from sklearn.metrics import f1_score, precision_score, recall_score

    from pathbench.heads.linear import macro_accuracy

    if kind not in ("logits", "probabilities"):
        raise PathbenchError(f"kind must be 'logits' or 'probabilities', got {kind!r}.")
    if int(num_classes) < 2:
        raise PathbenchError(f"a classification task needs at least 2 classes, got {num_classes}.")
    if loss_batch_size is not None and loss_batch_size < 1:
        raise PathbenchError(f"loss_batch_size must be a positive number of items, got {loss_batch_size}.")
    scores = _to_numpy(logits_or_scores, np.float64)
    if scores.ndim not in (1, 2) or scores.shape[0] == 0:
        raise PathbenchError(f"expected non-empty (N,) or (N, C) scores, got shape {scores.shape}.")
    if not np.isfinite(scores).all():
        raise PathbenchError("the scores contain NaN or infinite values: check the head's training.")
    y = _targets(targets, scores.shape[0], num_classes)
    binary = num_classes == 2
    out: dict[str, float] = {}
    if binary:
        ranking, predicted = _binary_inputs(scores, kind)
        if kind == "logits":
            out["loss"] = _loss(ranking, y, True, loss_batch_size)
        out["auroc"] = _auroc(y, ranking[:, None], [1])
        average = "binary"
    else:
        if scores.ndim != 2 or scores.shape[1] != num_classes:
            raise PathbenchError(f"multiclass scores must be (N, {num_classes}); got {scores.shape}.")
        predicted = np.argmax(scores, axis=1).astype(np.int64)
        if kind == "logits":
            out["loss"] = _loss(scores, y, False, loss_batch_size)
            from scipy.special import softmax

            probabilities = softmax(scores, axis=1)
        else:
            probabilities = scores
        out["auroc"] = _auroc(y, probabilities, range(num_classes))
        average = "macro"
    out["accuracy"] = float(np.mean(predicted == y))
    out["balanced_accuracy"] = macro_accuracy(y, predicted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division=0 is the intended rule, not a surprise
        for name, metric in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
            out[name] = float(metric(y, predicted, average=average, zero_division=0))
    return {name: out[name] for name in METRIC_NAMES if name in out}


def run_metrics(
    logits: Any,
    targets: Any,
    num_classes: int,
    *,
    kind: Literal["logits", "probabilities"] = "logits",
    loss_batch_size: int | None = None,
) -> list[dict[str, float]]:
    """:func:`classification_metrics` of each run: ``logits`` is ``(R, N, C_out)``, for
    example ``LinearProbe.predict_logits(x)``; returns one dict per run."""
    stacked = _to_numpy(logits, np.float64)
    if stacked.ndim != 3:
        raise PathbenchError(f"expected (runs, N, C) logits, got shape {stacked.shape}.")
    return [classification_metrics(run, targets, num_classes, kind=kind, loss_batch_size=loss_batch_size)
            for run in stacked]
