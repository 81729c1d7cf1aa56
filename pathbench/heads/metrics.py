"""The classification metrics kaiko eva reports for its slide tasks, as torchmetrics computes them.

eva monitors and reports ``BinaryBalancedAccuracy`` (Camelyon16) and ``MulticlassAccuracy``
with ``average="macro"`` (PANDA). torchmetrics is not a dependency; its definitions are
written out here, including the corners where they differ from scikit-learn's
``balanced_accuracy_score``:

- binary: ``(TP / (TP + FN) + TN / (TN + FP)) / 2`` where an empty denominator gives 0
  (so a split without positives scores at most 0.5);
- multiclass macro: the mean of per-class recalls ``TP / (TP + FN)`` over the classes with
  ``TP + FP + FN > 0``; a class absent from the targets but predicted counts with recall 0;
- predictions of a binary head: per update (one evaluation batch of 32 slides), logits are
  passed through a sigmoid only if some value lies outside [0, 1]; if all lie inside they
  are taken as probabilities. The prediction is then ``value > 0.5`` (in float32);
- multiclass predictions are ``argmax`` over the logits (ties: the first class).
"""

from __future__ import annotations

import numpy as np
import torch

from pathbench.errors import PathbenchError

__all__ = [
    "binary_balanced_accuracy",
    "multiclass_macro_accuracy",
    "binary_predictions",
    "eva_scores_batched",
]


def binary_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """torchmetrics/eva ``BinaryBalancedAccuracy`` of 0/1 predictions, in float32 as torchmetrics computes it.

    Args:
        y_true: ``(N,)`` 0/1 targets.
        y_pred: ``(N,)`` 0/1 predictions.
    """
    y_true = np.asarray(y_true).ravel().astype(np.int64)
    y_pred = np.asarray(y_pred).ravel().astype(np.int64)
    if y_true.size == 0:
        raise PathbenchError("cannot compute a balanced accuracy on an empty split.")
    tp = int(np.sum((y_pred == 1) & (y_true == 1)))
    fn = int(np.sum((y_pred != 1) & (y_true == 1)))
    tn = int(np.sum((y_pred == 0) & (y_true == 0)))
    fp = int(np.sum((y_pred != 0) & (y_true == 0)))
    return _binary_from_counts(tp, fn, tn, fp)


def _binary_from_counts(tp: int, fn: int, tn: int, fp: int) -> float:
    # float32 like torchmetrics: the monitored value decides early stopping, and values that are
    # equal in exact arithmetic can differ in their last bit, so the rounding must be the same.
    sensitivity = np.float32(tp) / np.float32(tp + fn) if tp + fn else np.float32(0)
    specificity = np.float32(tn) / np.float32(tn + fp) if tn + fp else np.float32(0)
    return float(np.float32(0.5) * (sensitivity + specificity))


def multiclass_macro_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """torchmetrics/eva ``MulticlassAccuracy(average="macro")`` of class predictions (float32, its operations).

    Args:
        y_true: ``(N,)`` int targets in ``[0, num_classes)``.
        y_pred: ``(N,)`` int predictions in ``[0, num_classes)``.
    """
    y_true = np.asarray(y_true).ravel().astype(np.int64)
    y_pred = np.asarray(y_pred).ravel().astype(np.int64)
    if y_true.size == 0:
        raise PathbenchError("cannot compute an accuracy on an empty split.")
    tp = np.bincount(y_true[y_true == y_pred], minlength=num_classes)[:num_classes]
    support = np.bincount(y_true, minlength=num_classes)[:num_classes]
    predicted = np.bincount(y_pred, minlength=num_classes)[:num_classes]
    return _macro_from_counts(tp, support, predicted)


def _macro_from_counts(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> float:
    # torchmetrics' _accuracy_reduce + _adjust_weights_safe_divide with the same torch operations
    # on a (C,) float32 tensor, so the result is bit for bit the value eva monitors.
    tp_t = torch.as_tensor(np.asarray(tp, dtype=np.int64))
    support_t = torch.as_tensor(np.asarray(support, dtype=np.int64))
    fp_t = torch.as_tensor(np.asarray(predicted, dtype=np.int64)) - tp_t
    fn_t = support_t - tp_t
    denominator = (tp_t + fn_t).float()
    score = torch.where(denominator != 0, tp_t.float() / denominator, torch.zeros((), dtype=torch.float32))
    weights = torch.ones_like(score)
    weights[tp_t + fp_t + fn_t == 0] = 0.0
    total = weights.sum(-1, keepdim=True)
    ratio = torch.where(total != 0, (weights * score) / total, torch.zeros((), dtype=torch.float32))
    return float(ratio.sum(-1))


def binary_predictions(logits: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """0/1 predictions of a one-logit head as eva's metric derives them, batch by batch.

    Args:
        logits: ``(..., N)`` float logits in evaluation order (leading dimensions: runs).
        batch_size: eva's evaluation batch size; the sigmoid decision is taken per batch.

    Returns:
        ``(..., N)`` int64.
    """
    values = logits.to(torch.float32)
    out = torch.empty(values.shape, dtype=torch.int64, device=values.device)
    for start in range(0, values.shape[-1], batch_size):
        chunk = values[..., start : start + batch_size]
        inside = ((chunk >= 0) & (chunk <= 1)).all(dim=-1, keepdim=True)
        probabilities = torch.where(inside, chunk, torch.sigmoid(chunk))
        out[..., start : start + batch_size] = (probabilities > 0.5).long()
    return out


def eva_scores_batched(logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
                       batch_size: int = 32) -> np.ndarray:
    """eva's monitored metric for R runs at once.

    Args:
        logits: ``(R, N, 1)`` (binary) or ``(R, N, C)`` float.
        targets: ``(N,)`` int64.
        num_classes: 2 for a binary (one-logit) head, else C.
        batch_size: eva's evaluation batch size (binary decisions are per batch).

    Returns:
        ``(R,)`` float64 holding float32 values: balanced accuracy (binary) or macro accuracy.
    """
    runs = logits.shape[0]
    targets = targets.to(logits.device)
    preds = binary_predictions(logits[..., 0], batch_size) if num_classes == 2 else logits.argmax(dim=-1)
    hits = (preds == targets.unsqueeze(0)).long()  # (R, N)
    tp = torch.zeros(runs, num_classes, dtype=torch.long, device=logits.device)
    tp.scatter_add_(1, targets.unsqueeze(0).expand(runs, -1), hits)
    predicted = torch.zeros_like(tp).scatter_add_(1, preds, torch.ones_like(hits))
    support = torch.bincount(targets, minlength=num_classes)[:num_classes].cpu().numpy()
    tp, predicted = tp.cpu().numpy(), predicted.cpu().numpy()
    if num_classes == 2:  # class 1 recall = sensitivity, class 0 recall = specificity
        return np.array([_binary_from_counts(int(tp[r, 1]), int(support[1] - tp[r, 1]), int(tp[r, 0]),
                                             int(support[0] - tp[r, 0])) for r in range(runs)])
    return np.array([_macro_from_counts(tp[r], support, predicted[r]) for r in range(runs)])
