"""Training eva's segmentation decoders on a frozen encoder, from cached token grids or online crops.

Training (eva's ``SemanticSegmentationModule`` under Lightning, as its online configs set it):
``EvaDiceLoss`` (MONAI ``DiceLoss(softmax=True, batch=True)``), ``torch.optim.AdamW(lr=0.002)``
(weight decay 0.01), the module's default ``ConstantLR`` (lr / 3 during the first 5 epochs,
stepped per epoch), batch 64 over shuffled items (the last batch of an epoch may be smaller),
at most 2,000 optimiser steps, validation after every complete epoch with eva's
``MonaiDiceScore``, early stopping with patience 200 (CoNSeP) or 100 (MoNuSAC) validations,
the best-validation decoder kept and scored, 5 independent runs (run ``r`` is seeded with
``seed + r``: decoder initialisation, shuffling and random crops). The decoders are in
:mod:`pathbench.heads.decoders`.

Two ways to feed it, never to be ranked together:

- :class:`CachedSplit` (the ``cached`` protocol): token grids, resized images and masks of a
  deterministic transform, stored once; only the decoder runs per step;
- :class:`CropSplit` (the ``eva`` protocol): source images and masks, cropped per step
  (``RandomResizedCrop`` for eva's MoNuSAC training split) and encoded online by ``encoder``.
  A validation split is always deterministic in eva, so it is encoded once.
For CoNSeP, whose eva transforms are all deterministic, both give the same numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pathbench.errors import PathbenchError
from pathbench.heads.decoders import DECODERS, Decoder2D, build_decoder
from pathbench.heads.dice import EvaDiceLoss, MonaiDiceScore
from pathbench.heads.linear import BatchedEarlyStopping, ProbeProtocol, epoch_learning_rate, epoch_permutation

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # eva's NORMALIZE_MEAN / NORMALIZE_STD defaults
IMAGENET_STD = (0.229, 0.224, 0.225)

# eva's online segmentation configs: lr 0.002, batch 64, 2,000 steps, 5 runs; patience in validations.
CONSEP_PROTOCOL = ProbeProtocol(lr=2e-3, batch_size=64, max_steps=2_000, patience=200, runs=5)
MONUSAC_PROTOCOL = dataclasses.replace(CONSEP_PROTOCOL, patience=100)


# --------------------------------------------------------------------------------------
# Training inputs


@dataclasses.dataclass
class CachedSplit:
    """A split whose encoder outputs are stored (the ``cached`` protocol).

    Attributes:
        grids: ``(N, C, h, w)`` float32 token grids of the transformed images.
        masks: ``(N, S, S)`` int64 labels after the same transform.
        images: ``(N, 3, S, S)`` uint8 transformed images (``None`` for ``conv_ms``, which does
            not see them).
    """

    grids: Any
    masks: Any
    images: Any = None


@dataclasses.dataclass
class CropSplit:
    """A split cropped from its source images at every step and encoded online (the ``eva`` protocol).

    Attributes:
        images: source images, each ``(H, W, 3)`` uint8 (sizes may differ).
        masks: their labels, each ``(H, W)`` integer.
        crop: ``"resize_and_crop"`` (eva's ``ResizeAndCrop``) or ``"random_resized_crop"``
            (torchvision's ``RandomResizedCrop``, eva's MoNuSAC training transform).
        size: output side in pixels (224 in eva).
    """

    images: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    crop: str = "resize_and_crop"
    size: int = 224

    @classmethod
    def from_dataset(cls, dataset, crop: str = "resize_and_crop", size: int = 224) -> CropSplit:
        """Load every item of a :class:`~pathbench.data.segmentation.SegmentationDataset`."""
        pairs = [dataset.item(i) for i in range(len(dataset))]
        return cls([p[0] for p in pairs], [p[1] for p in pairs], crop, size)

    def crop_boxes(self, indices: Sequence[int], generator: torch.Generator) -> list[tuple[int, int, int, int] | None]:
        """The random crop box of each item, drawn in order from ``generator`` (``None``: deterministic crop)."""
        from pathbench.data.segmentation import random_resized_crop_box

        if self.crop == "resize_and_crop":
            return [None] * len(indices)
        if self.crop == "random_resized_crop":
            return [random_resized_crop_box(*self.images[i].shape[:2], generator) for i in indices]
        raise PathbenchError(f"unknown crop {self.crop!r}; expected 'resize_and_crop' or 'random_resized_crop'.")

    def crop_item(self, index: int, box: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` cropped to ``(size, size)``: in ``box`` (random crops) or by ``ResizeAndCrop``."""
        from pathbench.data.segmentation import resize_and_crop_pair, resized_crop_pair

        if box is None:
            return resize_and_crop_pair(self.images[index], self.masks[index], self.size)
        return resized_crop_pair(self.images[index], self.masks[index], box, self.size)


def normalise_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """eva's ``ToDtype(float32, scale=True)`` then ``Normalize(mean, std)``: ``(B, 3, H, W)`` uint8 -> float32."""
    from torchvision.transforms.v2 import functional as TF

    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(mean), list(std))


@dataclasses.dataclass
class _Tensors:
    grids: torch.Tensor  # (N, C, h, w) float32
    masks: torch.Tensor  # (N, S, S) int64
    images: torch.Tensor | None  # (N, 3, S, S) float32, normalised


def _as_tensor(x, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    array = np.asarray(x)
    if not array.flags.writeable:  # e.g. a read-only memory map of the feature cache
        array = array.copy()
    return torch.as_tensor(array).to(device=device, dtype=dtype)


def _dtype_name(x) -> str:
    return str(x.dtype).removeprefix("torch.") if isinstance(x, torch.Tensor) else str(np.asarray(x).dtype)


def _encode(encoder: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        grids = encoder(pixels)
    if not isinstance(grids, torch.Tensor) or grids.ndim != 4 or grids.shape[0] != pixels.shape[0]:
        shape = tuple(grids.shape) if isinstance(grids, torch.Tensor) else type(grids).__name__
        raise PathbenchError(f"the encoder must map (B, 3, H, W) images to (B, C, h, w) grids, got {shape}.")
    # inference-mode outputs cannot enter autograd; a plain copy can
    return grids.clone() if grids.is_inference() else grids.detach()


class _Inputs:
    """Batches of (grids, images, masks) for one split, from cache or cropped and encoded online."""

    def __init__(self, split: CachedSplit | CropSplit, *, encoder, mean, std, num_classes: int,
                 ignore_index: int | None, need_images: bool, device: torch.device, batch_size: int,
                 name: str) -> None:
        self.device, self.encoder, self.mean, self.std = device, encoder, mean, std
        self.need_images = need_images
        self.online = isinstance(split, CropSplit)
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        if self.online and encoder is None:
            raise PathbenchError(f"the {name} split is cropped online (CropSplit) and needs an encoder.")
        if not isinstance(split, (CachedSplit, CropSplit)):
            raise PathbenchError(f"{name}: expected a CachedSplit or a CropSplit, got {type(split).__name__}.")
        if self.online:
            self.split = split
            self.n = len(split.images)
            if len(split.masks) != self.n:
                raise PathbenchError(f"{name}: {self.n} images but {len(split.masks)} masks.")
            masks = [np.asarray(m) for m in split.masks]
        else:
            if need_images and split.images is not None and _dtype_name(split.images) != "uint8":
                raise PathbenchError(f"{name}: CachedSplit images must be uint8 pixels (N, 3, S, S), got "
                                     f"{_dtype_name(split.images)}; they are normalised here, as eva does.")
            self.tensors = _Tensors(
                _as_tensor(split.grids, torch.float32, device),
                _as_tensor(split.masks, torch.int64, device),
                None if split.images is None or not need_images else
                normalise_images(_as_tensor(split.images, torch.uint8, device), mean, std),
            )
            self.n = self.tensors.grids.shape[0]
            self._check_cached()
            masks = [self.tensors.masks.cpu().numpy()]
        if self.n == 0:
            raise PathbenchError(f"the {name} split is empty.")
        for m in masks:
            _check_mask_values(m, num_classes, ignore_index, name)

    def _check_cached(self) -> None:
        t = self.tensors
        if t.grids.ndim != 4 or t.masks.ndim != 3 or t.masks.shape[0] != self.n:
            raise PathbenchError(f"{self.name}: expected grids (N, C, h, w) and masks (N, S, S), "
                                 f"got {tuple(t.grids.shape)} and {tuple(t.masks.shape)}.")
        if self.need_images:
            if t.images is None:
                raise PathbenchError(f"{self.name}: the conv_with_image decoder needs the images of a CachedSplit.")
            if t.images.shape[0] != self.n or tuple(t.images.shape[2:]) != tuple(t.masks.shape[1:]):
                raise PathbenchError(f"{self.name}: images {tuple(t.images.shape)} do not match masks "
                                     f"{tuple(t.masks.shape)}; expected (N, 3, S, S) and (N, S, S).")
        if not torch.isfinite(t.grids).all():
            raise PathbenchError(f"{self.name}: token grids contain NaN or infinite values.")

    def batch(self, index: torch.Tensor, generator: torch.Generator | None = None):
        """``(grids, images or None, masks)`` of the items ``index`` on the device."""
        if not self.online:
            idx = index.to(self.device)
            t = self.tensors
            return t.grids[idx], None if t.images is None else t.images[idx], t.masks[idx]
        items = [int(i) for i in index]
        boxes = self.split.crop_boxes(items, generator)  # drawn in order: the same boxes whatever the threads
        # resizing 64 crops of up to 2,000 x 2,000 pixels costs a few ms each on one core, more than a GPU
        # decoder step; torchvision releases the GIL, so threads overlap them
        pairs = list(self._pool().map(self.split.crop_item, items, boxes))
        pixels = torch.from_numpy(np.stack([image.transpose(2, 0, 1) for image, _ in pairs])).to(self.device)
        masks = torch.from_numpy(np.stack([mask for _, mask in pairs]).astype(np.int64)).to(self.device)
        images = normalise_images(pixels, self.mean, self.std)
        return _encode(self.encoder, images), images if self.need_images else None, masks

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def cached(self, batch_size: int) -> _Inputs:
        """This split with deterministic crops encoded once (validation needs nothing else)."""
        if not self.online:
            return self
        if self.split.crop != "resize_and_crop":
            raise PathbenchError(f"the {self.name} split must use the deterministic 'resize_and_crop'.")
        parts = [self.batch(torch.arange(s, min(s + batch_size, self.n))) for s in range(0, self.n, batch_size)]
        self.close()
        other = copy.copy(self)
        other.online = False
        other.tensors = _Tensors(torch.cat([p[0] for p in parts]),
                                 torch.cat([p[2] for p in parts]),
                                 torch.cat([p[1] for p in parts]) if self.need_images else None)
        return other

    def in_features(self, generator: torch.Generator) -> int:
        if not self.online:
            return int(self.tensors.grids.shape[1])
        return int(self.batch(torch.arange(1), generator)[0].shape[1])


def _check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int | None, name: str) -> None:
    valid = (mask >= 0) & (mask < num_classes)
    if ignore_index is not None:
        valid |= mask == ignore_index
    if not valid.all():
        bad = np.unique(mask[~valid])[:5].tolist()
        raise PathbenchError(f"{name}: mask labels {bad} are outside 0..{num_classes - 1}"
                             + (f" and the ignore index {ignore_index}." if ignore_index is not None else "."))


# --------------------------------------------------------------------------------------
# Training


def _metric_classes(num_classes: int, ignore_index: int | None) -> int:
    return num_classes if ignore_index is None else max(num_classes, ignore_index + 1)


@torch.no_grad()
def _evaluate(decoder: Decoder2D, data: _Inputs, num_classes: int, ignore_index: int | None,
                     batch_size: int, per_class: bool = True) -> tuple[float, np.ndarray | None]:
    """eva's score of a decoder on a (cached) split: ``(MonaiDiceScore, per-class Dice incl. background)``.

    The per-class values (``per_class=True``) are eva's ``ClasswiseWrapper`` logs: one per
    class left after dropping the ignored one; ``None`` otherwise.
    """
    decoder.eval()
    classes = _metric_classes(num_classes, ignore_index)
    score = MonaiDiceScore(classes, include_background=False, ignore_index=ignore_index)
    classwise = MonaiDiceScore(classes, include_background=True, ignore_index=ignore_index, reduction="none")
    for start in range(0, data.n, batch_size):
        grids, images, masks = data.batch(torch.arange(start, min(start + batch_size, data.n)))
        preds = decoder(grids, tuple(masks.shape[-2:]), images).argmax(dim=1)
        score.update(preds, masks)
        if per_class:
            classwise.update(preds, masks)
    values = classwise.compute().cpu().numpy().astype(np.float64) if per_class else None
    return float(score.compute()), values


def _crop_generator(seed: int) -> torch.Generator:
    # a stream of its own, so that random crops never change the shuffling
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))


def _fit_run(run: int, train: _Inputs, val: _Inputs, *, in_features: int, num_classes: int,
                    ignore_index: int | None, decoder: str, protocol: ProbeProtocol, device: torch.device,
                    progress: bool = False) -> tuple[dict[str, Any], Decoder2D]:
    """One run of eva's protocol; returns its row and the best-validation decoder (in eval mode)."""
    p = protocol
    seed = p.seed + run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_decoder(decoder, in_features, num_classes)
    model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=epoch_learning_rate(p, 0), betas=p.betas, eps=p.eps,
                                  weight_decay=p.weight_decay)
    loss_fn = EvaDiceLoss(ignore_index)
    shuffle, crops = torch.Generator().manual_seed(seed), _crop_generator(seed)
    stopper = BatchedEarlyStopping(1, p.patience)
    steps_per_epoch = math.ceil(train.n / p.batch_size)
    best_state, best_step, best_epoch = None, -1, -1
    step = epoch = 0
    bar = tqdm(total=p.max_steps, desc=f"decoder run {run}", unit="step", disable=not progress, leave=False)
    while step < p.max_steps:
        for group in optimiser.param_groups:
            group["lr"] = epoch_learning_rate(p, epoch)
        order = epoch_permutation(shuffle, train.n)
        completed = True
        model.train()
        for b in range(steps_per_epoch):
            grids, images, masks = train.batch(order[b * p.batch_size : (b + 1) * p.batch_size], crops)
            loss = loss_fn(model(grids, tuple(masks.shape[-2:]), images), masks)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            bar.update(1)
            if step >= p.max_steps:
                completed = b == steps_per_epoch - 1
                break
        if not completed:
            break  # Lightning does not validate an epoch cut short by max_steps
        score, _ = _evaluate(model, val, num_classes, ignore_index, p.batch_size, per_class=False)
        improved, stop = stopper.update([0], [score])
        if improved[0]:
            best_state = copy.deepcopy(model.state_dict())
            best_step, best_epoch = step, epoch
        if stop[0]:
            break
        epoch += 1
    bar.close()
    if best_state is not None:  # never validated (max_steps shorter than one epoch): the last state
        model.load_state_dict(best_state)
    else:
        best_step = step
    val_dice, per_class = _evaluate(model, val, num_classes, ignore_index, p.batch_size)
    row = {
        "run": run,
        "seed": seed,
        "inputs": "online" if train.online else "cached",
        "decoder": decoder,
        "val_dice": val_dice,
        "best_val_score": float(stopper.best[0]),
        "best_step": best_step,
        "best_epoch": best_epoch,
        "stop_step": step,
        "steps_per_epoch": steps_per_epoch,
        "per_class_dice": per_class,
    }
    return row, model


def train_segmentation(
    train: CachedSplit | CropSplit,
    val: CachedSplit | CropSplit,
    *,
    num_classes: int,
    ignore_index: int | None = None,
    decoder: str = "conv_with_image",
    protocol: ProbeProtocol = CONSEP_PROTOCOL,
    encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    runs: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train eva's decoder ``protocol.runs`` times and score each best-validation checkpoint.

    Args:
        train, val: :class:`CachedSplit` or :class:`CropSplit` (a ``CropSplit`` needs ``encoder``;
            a validation ``CropSplit`` must be ``resize_and_crop`` and is encoded once).
        num_classes: decoder outputs (CoNSeP 5, MoNuSAC 5); mask labels lie in
            ``[0, num_classes)`` or equal ``ignore_index``.
        ignore_index: eva's ignore index (MoNuSAC: 5), or None.
        decoder: ``"conv_with_image"`` (eva's online configs) or ``"conv_ms"`` (offline configs).
        protocol: :data:`CONSEP_PROTOCOL` or :data:`MONUSAC_PROTOCOL` (or smaller, for demos).
        encoder: ``(B, 3, H, W)`` normalised float32 images on the device -> ``(B, C, h, w)``
            token grids; called without gradients.
        mean, std: image normalisation (the model's; eva's default is ImageNet's); the decoder
            sees the normalised images, as in eva.
        runs: which run indices to train (default all ``protocol.runs``); run ``r`` always gives
            the same row, so runs can be trained and saved one at a time.
        class_names: names for the per-class columns (default ``class_0``, ...).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...

    Returns:
        One row per run: ``run``, ``seed``, ``inputs`` (``cached``/``online``), ``decoder``,
        ``val_dice`` (eva's ``MonaiDiceScore`` of the best checkpoint), ``best_val_score``,
        ``best_step``, ``best_epoch``, ``stop_step``, ``steps_per_epoch`` and ``dice_<class>``
        for every class (eva's per-class logs, background included; NaN for a class never present).
    """
    from pathbench.extractors.base import resolve_device

    device = resolve_device(device)
    if decoder not in DECODERS:
        raise PathbenchError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}.")
    need_images = DECODERS[decoder].needs_images
    common = dict(encoder=encoder, mean=mean, std=std, num_classes=num_classes, ignore_index=ignore_index,
                  need_images=need_images, device=device, batch_size=protocol.batch_size)
    train_inputs = _Inputs(train, name="train", **common)
    val_inputs = _Inputs(val, name="val", **common).cached(protocol.batch_size)
    in_features = train_inputs.in_features(torch.Generator().manual_seed(protocol.seed))
    if in_features != val_inputs.in_features(torch.Generator()):
        raise PathbenchError(f"train grids have {in_features} channels, val grids "
                             f"{val_inputs.in_features(torch.Generator())}; they must come from one encoder.")
    metric_classes = _metric_classes(num_classes, ignore_index)
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(metric_classes)]
    rows = []
    try:
        for run in (range(protocol.runs) if runs is None else runs):
            row, _ = _fit_run(run, train_inputs, val_inputs, in_features=in_features, num_classes=num_classes,
                              ignore_index=ignore_index, decoder=decoder, protocol=protocol, device=device,
                              progress=progress)
            rows.append(_with_class_columns(row, names[:metric_classes], ignore_index))
    finally:
        train_inputs.close()
    return rows


def _with_class_columns(row: dict[str, Any], names: Sequence[str], ignore_index: int | None) -> dict[str, Any]:
    per_class = row.pop("per_class_dice")
    # eva drops the ignored channel; its per-class values name the remaining classes in order
    kept = [name for i, name in enumerate(names) if i != ignore_index]
    row.update({f"dice_{name}": float(value) for name, value in zip(kept, per_class, strict=False)})
    return row
