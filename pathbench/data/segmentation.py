"""Segmentation datasets: the reader interface, eva's transforms, and the resized view that is cached.

A segmentation reader is a :class:`~pathbench.data.base.TileDataset` (``dataset[i]`` is the
image ``(H, W, 3)`` uint8 RGB, so the feature store reads it like any tile dataset) that
also gives each item's label mask:

- ``dataset.mask(i)``: ``(H, W)`` int64 class indices, the image's height and width;
- ``dataset.item(i)``: ``(image, mask)``, checked against each other;
- ``classes``: every label name, index = label value;
- ``num_classes``: how many classes a decoder predicts (labels ``0 .. num_classes - 1``);
- ``ignore_index``: the label of pixels that belong to no class (MoNuSAC's "Ambiguous"), or None.

eva's transforms, on uint8 pixels exactly as torchvision computes them:

- :func:`resize_and_crop_pair`: eva's ``ResizeAndCrop`` (shorter side to 224, bilinear and
  antialiased for the image, nearest for the mask, then a centre crop);
- :func:`random_resized_crop_pair`: torchvision's ``RandomResizedCrop(224)`` (scale 0.08-1,
  ratio 3/4-4/3), one crop box shared by image and mask, drawn from a given generator.

:class:`ResizedSegmentationDataset` is a reader after ``ResizeAndCrop``: the deterministic
view whose images (and token grids) the ``cached`` protocol stores once.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pathbench.data.base import TileDataset
from pathbench.data.eva import EVA_IMAGE_SIZE, resize_and_crop
from pathbench.errors import DataError

# torchvision RandomResizedCrop defaults, which eva's MoNuSAC training transform keeps.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class SegmentationDataset(TileDataset):
    """Base class: subclasses set ``item_ids``, ``fingerprint``, ``classes``, ``num_classes``,
    ``ignore_index`` and implement ``load`` (the image) and ``load_mask`` (the labels)."""

    classes: tuple[str, ...]
    num_classes: int
    ignore_index: int | None = None

    def load_mask(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def mask(self, index: int) -> np.ndarray:
        """Label mask of item ``index``: ``(H, W)`` int64."""
        return check_labels(self.load_mask(index), self.num_classes, self.ignore_index, self.describe(index))

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8, mask (H, W) int64)`` of item ``index``; a size mismatch is a DataError."""
        image = self[index]
        mask = self.mask(index)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{self.describe(index)}: the label mask is {mask.shape[0]} x {mask.shape[1]} pixels but the "
                f"image is {image.shape[0]} x {image.shape[1]}; each mask must cover its image pixel for pixel."
            )
        return image, mask


def check_labels(mask: np.ndarray, num_classes: int, ignore_index: int | None, where: str) -> np.ndarray:
    """Check that ``mask`` is a 2-D map of labels in ``[0, num_classes)`` or ``ignore_index``; return it as int64."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"{where}: expected a 2-D label mask, got shape {mask.shape}.")
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.bool_)):
        raise DataError(f"{where}: expected integer labels, got dtype {mask.dtype}.")
    mask = mask.astype(np.int64, copy=False)
    valid = (mask >= 0) & (mask < num_classes)
    if ignore_index is not None:
        valid |= mask == ignore_index
    if not valid.all():
        bad = np.unique(mask[~valid])[:5].tolist()
        allowed = f"0..{num_classes - 1}" + (f" or {ignore_index}" if ignore_index is not None else "")
        raise DataError(f"{where}: labels {bad} are outside {allowed}.")
    return mask


def files_digest(root: Path, paths: Sequence[Path], extra: str) -> str:
    """sha256 over each file's path relative to ``root`` and its bytes: the content identity of a split."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------------------
# eva's transforms on an (image, mask) pair


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(mask, dtype=np.int64))[None]  # (1, H, W), a writable copy


def resize_and_crop_pair(image: np.ndarray, mask: np.ndarray,
                         size: int = EVA_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """eva's ``ResizeAndCrop`` on an image and its mask.

    The image is resized (shorter side to ``size``, bilinear, antialiased, on uint8 as
    torchvision's ``Resize`` does) and centre-cropped; the mask gets the same geometry with
    nearest-neighbour sampling, as torchvision resizes a ``tv_tensors.Mask``.

    Args:
        image: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` integer labels.

    Returns:
        ``(size, size, 3)`` uint8 and ``(size, size)`` int64.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    resized = TF.resize(_mask_tensor(mask), [size], interpolation=InterpolationMode.NEAREST)
    resized = TF.center_crop(resized, [size, size])
    return resize_and_crop(image, size), resized[0].numpy()


def random_resized_crop_box(height: int, width: int, generator: torch.Generator,
                            scale: tuple[float, float] = RRC_SCALE,
                            ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """The crop box ``(top, left, crop_height, crop_width)`` of torchvision's ``RandomResizedCrop``.

    The same draws in the same order as torchvision (up to 10 tries of area and log-ratio,
    then the top-left corner; a centre crop when every try fails), taken from ``generator``
    instead of the global RNG so that every run owns its stream: with a generator seeded
    like the global RNG the boxes are torchvision's.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - crop_w + 1, size=(1,), generator=generator).item())
            return top, left, crop_h, crop_w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        crop_w, crop_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_h, crop_w = height, int(round(height * max(ratio)))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def resized_crop_pair(image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int],
                      size: int = EVA_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``box = (top, left, height, width)`` and resize it to ``size x size``, as ``RandomResizedCrop``
    does once it has drawn its box: bilinear with antialiasing on uint8 for the image, nearest for the mask.

    Returns:
        ``(size, size, 3)`` uint8 and ``(size, size)`` int64.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    top, left, crop_h, crop_w = box
    chw = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # a writable copy
    chw = TF.resized_crop(chw, top, left, crop_h, crop_w, [size, size],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)
    labels = TF.resized_crop(_mask_tensor(mask), top, left, crop_h, crop_w, [size, size],
                             interpolation=InterpolationMode.NEAREST)
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy()), labels[0].numpy()


def random_resized_crop_pair(image: np.ndarray, mask: np.ndarray, generator: torch.Generator,
                             size: int = EVA_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's ``RandomResizedCrop(size)`` on an image and its mask (eva's MoNuSAC training crop).

    One box from :func:`random_resized_crop_box`, applied by :func:`resized_crop_pair`.
    """
    box = random_resized_crop_box(image.shape[0], image.shape[1], generator)
    return resized_crop_pair(image, mask, box, size)


# --------------------------------------------------------------------------------------
# The deterministic view that the cached protocol stores


class ResizedSegmentationDataset(SegmentationDataset):
    """A segmentation reader after eva's ``ResizeAndCrop(size)``.

    ``dataset[i]`` is the ``(size, size, 3)`` uint8 image an encoder sees, ``mask(i)`` the
    ``(size, size)`` int64 labels a decoder is scored on. The item ids are the source's;
    the fingerprint adds the transform, so cached token grids of the two never mix.
    """

    def __init__(self, source: SegmentationDataset, size: int = EVA_IMAGE_SIZE) -> None:
        self.source = source
        self.size = int(size)
        self.item_ids = list(source.item_ids)
        self.fingerprint = f"{source.fingerprint}|resize_and_crop_{self.size}"
        self.classes = source.classes
        self.num_classes = source.num_classes
        self.ignore_index = source.ignore_index

    def load(self, index: int) -> np.ndarray:
        return resize_and_crop(self.source[index], self.size)

    def load_mask(self, index: int) -> np.ndarray:
        return self.item(index)[1]

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return resize_and_crop_pair(*self.source.item(index), size=self.size)

    def describe(self, index: int) -> str:
        return self.source.describe(index)


def stack_items(dataset: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
    """Every item of a fixed-size reader (e.g. :class:`ResizedSegmentationDataset`) in two arrays.

    Returns:
        images ``(N, 3, S, S)`` uint8 (channels first, as decoders take them) and masks
        ``(N, S, S)`` int64.
    """
    pairs = [dataset.item(i) for i in range(len(dataset))]
    shapes = {image.shape for image, _ in pairs}
    if len(shapes) != 1:
        raise DataError(f"expected items of one size to stack, found sizes {sorted(shapes)[:3]}; "
                        "stack a ResizedSegmentationDataset instead.")
    images = np.stack([image.transpose(2, 0, 1) for image, _ in pairs])
    masks = np.stack([mask for _, mask in pairs])
    return np.ascontiguousarray(images), masks


def check_root(root: str | os.PathLike, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what}: folder {root} does not exist; point the reader at the dataset's root folder.")
    return root
