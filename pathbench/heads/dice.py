"""eva's Dice loss and Dice score for semantic segmentation, on MONAI's implementations.

Loss (``eva.vision.losses.DiceLoss(softmax=True, batch=True, ignore_index=...)``): MONAI's
``DiceLoss`` with softmax over the class logits, Dice computed over the whole batch at once
(``batch=True``), every class including background, smoothing 1e-5, mean over classes.
Integer targets are one-hot encoded with ``monai.networks.one_hot``. eva's ignore index is
not an exclusion: at ignored pixels the target becomes background (0) and the logits are
multiplied by zero (a uniform softmax), and those pixels then count like any other.

Score (``eva.vision.metrics.MonaiDiceScore``, the metric eva monitors, selects checkpoints on
and reports as ``val/MonaiDiceScore``): predictions are the argmax classes. Per image and per
foreground class (``include_background=False``), Dice = 2|P n T| / (|P| + |T|), NaN when the
class is absent from that image's target (``ignore_empty=True``, whatever was predicted);
MONAI's ``"mean"`` reduction averages each image over its non-NaN classes, then averages the
images that have at least one. With an ignore index ``k`` eva one-hot encodes predictions and
targets over ``num_classes`` channels, zeroes the target at pixels *predicted* as ``k`` and
drops channel ``k`` from both; pixels whose target is ``k`` therefore belong to no class, and
a foreground prediction there counts as a false positive of that class. (With MoNuSAC's
5-output decoder no pixel is ever predicted as 5, so the first step never applies.) This
module does the same on label maps, which MONAI's ``DiceMetric`` takes with ``num_classes``,
instead of one-hot tensors: the per-image values are identical (the tests check both).

eva also logs per-class scores (``ClasswiseWrapper`` around ``MonaiDiceScore`` with
``include_background=True, reduction="none"``): the mean over images of each class's Dice,
NaN images skipped; :meth:`MonaiDiceScore.compute` gives them with ``reduction="none"``.
"""

from __future__ import annotations

import numpy as np
import torch

from pathbench.errors import PathbenchError


class EvaDiceLoss(torch.nn.Module):
    """eva's ``DiceLoss(softmax=True, batch=True)``, optionally with its ``ignore_index``.

    ``forward(logits (B, K, H, W) float, targets (B, H, W) int64) -> ()`` scalar loss.
    """

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.ignore_index = ignore_index
        self.dice = DiceLoss(softmax=True, batch=True)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from monai.networks import one_hot

        if self.ignore_index is not None:
            keep = targets != self.ignore_index
            targets = targets * keep
            logits = logits * keep.unsqueeze(1)
        return self.dice(logits, one_hot(targets.unsqueeze(1), num_classes=logits.shape[1]))


def eva_label_maps(preds: torch.Tensor, targets: torch.Tensor, num_classes: int,
                   ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """eva's ignore-index handling of ``MonaiDiceScore``, on label maps.

    Args:
        preds, targets: ``(B, H, W)`` integer labels in ``[0, num_classes)``.
        num_classes: the metric's number of classes (including the ignored one).

    Returns:
        ``(preds, targets, n)``: ``(B, 1, H, W)`` int64 label maps over ``n`` classes (``n =
        num_classes - 1`` with an ignore index: labels above it move down by one, and the
        value ``n`` marks a pixel that belongs to no class).
    """
    preds = preds.long()
    targets = targets.long()
    if ignore_index is None:
        return preds.unsqueeze(1), targets.unsqueeze(1), num_classes
    none = num_classes - 1
    predicted_ignored = preds == ignore_index
    targets = torch.where(predicted_ignored | (targets == ignore_index), none, targets - (targets > ignore_index).long())
    preds = torch.where(predicted_ignored, none, preds - (preds > ignore_index).long())
    return preds.unsqueeze(1), targets.unsqueeze(1), num_classes - 1


class MonaiDiceScore:
    """eva's ``MonaiDiceScore`` accumulated over batches (MONAI ``DiceMetric`` underneath).

    Args:
        num_classes: number of label values, the ignored one included (CoNSeP 5, MoNuSAC 6).
        include_background: score class 0 too (eva's monitored score: False; an ignore
            index of 0 forces True, as in eva, since channel 0 is then dropped).
        ignore_index: eva's ignore index, or None.
        ignore_empty: NaN (skipped) for a class absent from an image's target (eva: True).
        reduction: ``"mean"`` (a scalar, eva's score) or ``"none"`` (one value per class,
            the mean over images with NaN skipped, as eva's per-class logs).
    """

    def __init__(self, num_classes: int, include_background: bool = False, ignore_index: int | None = None,
                 ignore_empty: bool = True, reduction: str = "mean") -> None:
        from monai.metrics import DiceMetric

        if reduction not in ("mean", "none"):
            raise PathbenchError(f"unknown reduction {reduction!r}; expected 'mean' or 'none'.")
        scored = num_classes - (ignore_index is not None)
        if scored < 2:
            raise PathbenchError(f"a Dice score needs at least 2 classes besides the ignored one, got {scored}.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self._metric = DiceMetric(include_background=include_background or ignore_index == 0,
                                  reduction=reduction, ignore_empty=ignore_empty, num_classes=scored)

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``preds`` and ``targets`` ``(B, H, W)`` integer labels."""
        if preds.shape != targets.shape or preds.ndim != 3:
            raise PathbenchError(f"expected predictions and targets of one shape (B, H, W), "
                                 f"got {tuple(preds.shape)} and {tuple(targets.shape)}.")
        y_pred, y, _ = eva_label_maps(preds, targets, self.num_classes, self.ignore_index)
        self._metric(y_pred=y_pred, y=y)

    def per_image(self) -> torch.Tensor:
        """The accumulated per-image, per-class values ``(N, classes scored)`` float32 (NaN: skipped)."""
        return self._metric.get_buffer().clone()

    def compute(self) -> torch.Tensor:
        """The score: a 0-d tensor (``"mean"``) or ``(classes scored,)`` (``"none"``)."""
        result = self._metric.aggregate()
        if self.reduction == "none" and len(result) > 1:
            result = result.nanmean(dim=0)
        return result

    def reset(self) -> None:
        self._metric.reset()


def monai_dice_score(preds, targets, num_classes: int, ignore_index: int | None = None,
                     include_background: bool = False, ignore_empty: bool = True) -> float:
    """eva's ``MonaiDiceScore`` of one set of predictions: ``(N, H, W)`` integer labels each."""
    metric = MonaiDiceScore(num_classes, include_background, ignore_index, ignore_empty)
    metric.update(torch.as_tensor(np.asarray(preds)), torch.as_tensor(np.asarray(targets)))
    return float(metric.compute())
