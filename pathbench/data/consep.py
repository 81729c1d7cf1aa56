"""CoNSeP, read as kaiko eva reads it (``eva.vision.datasets.CoNSeP`` with its ``GridSampler``).

Layout (HoVer-Net's release)::

    <root>/Train/Images/train_<n>.png    <root>/Train/Labels/train_<n>.mat   (27 images)
    <root>/Test/Images/test_<n>.png      <root>/Test/Labels/test_<n>.mat     (14 images)

Each ``.mat`` holds ``type_map``: an ``(H, W)`` map of nucleus types 0..7 (0 background,
1 miscellaneous, 2 inflammatory, 3 healthy epithelial, 4 dysplastic/malignant epithelial,
5 fibroblast, 6 muscle, 7 endothelial). As eva (after HoVer-Net), types 3 and 4 become
"epithelial" and 5, 6 and 7 "spindle-shaped": five classes ``background, other,
inflammatory, epithelial, spindle-shaped``. eva's "val" split is the official test set.

eva reads each 1000 x 1000 image (0.25 um/px, no rescaling) as a slide cut into 250 x 250
patches on a grid (``range(0, W - 250 + 1, 250)`` in x, then y), listed in the order of
eva's ``GridSampler`` (indices shuffled by ``numpy.random.default_rng(42)``); images are
taken in sorted path order. Each patch is an item; eva's ``ResizeAndCrop`` (see
:class:`~pathbench.data.segmentation.ResizedSegmentationDataset`) then brings it to 224.

Where eva would go on silently, this reader stops with a :class:`~pathbench.errors.DataError`:
a ``.mat`` that cannot be read or has no integer ``type_map``, a type outside 0..7 (eva would
call it spindle-shaped), or a map whose size differs from its image.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from pathbench.data.base import read_image
from pathbench.data.segmentation import SegmentationDataset, check_root, files_digest
from pathbench.errors import DataError

CONSEP_CLASSES = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")
CONSEP_SPLIT_FOLDERS = {"train": "Train", "val": "Test"}
CONSEP_EXPECTED_IMAGES = {"train": 27, "val": 14}
CONSEP_PATCH_SIZE = 250
GRID_SAMPLER_SEED = 42  # eva's GridSampler default

# type_map value (0..7) -> eva class: 3 and 4 merge into epithelial, 5, 6 and 7 into spindle-shaped.
_TYPE_TO_CLASS = np.array([0, 1, 2, 3, 3, 4, 4, 4], dtype=np.int64)


def merge_consep_classes(type_map: np.ndarray, where: str = "type_map") -> np.ndarray:
    """CoNSeP's nucleus types 0..7 -> eva's 5 classes, ``(H, W)`` int64.

    Equal to eva's ``np.where(a == 4, 3, a)`` then ``np.where(a > 4, 4, a)`` on valid maps;
    types outside 0..7 are an error here.
    """
    type_map = np.asarray(type_map)
    if type_map.size and (type_map.min() < 0 or type_map.max() > 7):
        bad = np.unique(type_map[(type_map < 0) | (type_map > 7)])[:5].tolist()
        raise DataError(f"{where}: nucleus types must be 0..7 (CoNSeP's seven types and background), found {bad}.")
    return _TYPE_TO_CLASS[type_map.astype(np.int64)]


def grid_patch_coords(width: int, height: int, patch_size: int = CONSEP_PATCH_SIZE,
                      seed: int = GRID_SAMPLER_SEED) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of eva's grid patches, in ``GridSampler(shuffle=True, seed=42)`` order."""
    if patch_size > width or patch_size > height:
        raise DataError(f"a {width} x {height} image is smaller than one {patch_size} x {patch_size} patch.")
    corners = [(x, y) for x in range(0, width - patch_size + 1, patch_size)
               for y in range(0, height - patch_size + 1, patch_size)]
    order = list(range(len(corners)))
    np.random.default_rng(seed).shuffle(order)
    return [corners[i] for i in order]


def read_type_map(path: Path) -> np.ndarray:
    """``type_map`` of a CoNSeP ``.mat`` file as ``(H, W)`` int64; unreadable or malformed files raise DataError."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"label file {path} is missing; every CoNSeP image needs Labels/<name>.mat.")
    try:
        content = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... on corrupt files
        raise DataError(f"cannot read {path} as a MATLAB file ({exc}); re-download the CoNSeP labels.") from exc
    if "type_map" not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataError(f"{path} has no 'type_map' array (found {found}); expected HoVer-Net's CoNSeP labels.")
    type_map = np.asarray(content["type_map"])
    if type_map.ndim != 2:
        raise DataError(f"{path}: 'type_map' must be a 2-D label map, got shape {type_map.shape}.")
    if not np.issubdtype(type_map.dtype, np.number) or not np.array_equal(type_map, np.round(type_map)):
        raise DataError(f"{path}: 'type_map' must hold integer nucleus types, got non-integer values.")
    return type_map.astype(np.int64)


class CoNSePDataset(SegmentationDataset):
    """CoNSeP grid patches with eva's 5 classes.

    Args:
        root: the folder holding ``Train/`` and ``Test/``.
        split: ``"train"`` (Train, 27 images) or ``"val"`` (Test, 14 images), eva's names.
        patch_size: patch side in pixels (eva: 250 at 0.25 um/px, the images' own resolution).
        strict: require the official number of images (27 / 14), as eva does; synthetic or
            partial copies are opened with ``strict=False``.

    Items: one per patch; ``dataset[i]`` is ``(patch_size, patch_size, 3)`` uint8, ``mask(i)``
    its labels. ``item_ids`` are ``"<Train|Test>/<image name>@<x>,<y>"``; the fingerprint
    hashes every image and label file of the split.
    """

    classes = CONSEP_CLASSES
    num_classes = len(CONSEP_CLASSES)
    ignore_index = None

    def __init__(self, root: str | os.PathLike, split: str, patch_size: int = CONSEP_PATCH_SIZE,
                 strict: bool = True) -> None:
        if split not in CONSEP_SPLIT_FOLDERS:
            raise DataError(f"unknown CoNSeP split {split!r}; expected 'train' or 'val' (the official test set).")
        self.root = check_root(root, "CoNSeP")
        self.split = split
        self.patch_size = int(patch_size)
        folder = CONSEP_SPLIT_FOLDERS[split]
        if not (self.root / folder / "Images").is_dir():
            raise DataError(f"CoNSeP: {self.root / folder / 'Images'} does not exist; expected "
                            f"<root>/{folder}/Images/*.png and <root>/{folder}/Labels/*.mat.")
        # eva globs every **/Images/*.png and keeps those whose grandparent folder is the split's
        paths = [p for p in glob.glob(os.path.join(self.root, "**", "Images", "*.png"), recursive=True)
                 if Path(p).parts[-3] == folder]
        self.image_paths = [Path(p) for p in sorted(paths)]
        expected = CONSEP_EXPECTED_IMAGES[split]
        if strict and len(self.image_paths) != expected:
            raise DataError(f"CoNSeP {split}: expected {expected} images under {self.root / folder / 'Images'}, "
                            f"found {len(self.image_paths)}; pass strict=False to use a partial copy.")
        if not self.image_paths:
            raise DataError(f"CoNSeP {split}: no .png images under {self.root / folder / 'Images'}.")
        self.label_paths = [p.parent.parent / "Labels" / f"{p.name.split('.')[0]}.mat" for p in self.image_paths]
        missing = [str(p) for p in self.label_paths if not p.is_file()]
        if missing:
            raise DataError(f"CoNSeP {split}: {len(missing)} label files are missing, e.g. {missing[0]}; "
                            "every image needs Labels/<name>.mat.")
        self.image_sizes = [_image_size(p) for p in self.image_paths]  # (width, height)
        self.patches: list[tuple[int, int, int]] = []  # (image index, x, y)
        for index, (width, height) in enumerate(self.image_sizes):
            self.patches += [(index, x, y) for x, y in grid_patch_coords(width, height, self.patch_size)]
        self.item_ids = [f"{folder}/{self.image_paths[i].name}@{x},{y}" for i, x, y in self.patches]
        self.fingerprint = files_digest(self.root, self.image_paths + self.label_paths,
                                        f"consep:{split}:grid{self.patch_size}:seed{GRID_SAMPLER_SEED}\0")
        self._last_image: tuple[int, np.ndarray] | None = None
        self._last_mask: tuple[int, np.ndarray] | None = None

    def _image(self, image_index: int) -> np.ndarray:
        # items are grouped by image, so keeping the last decoded image avoids decoding it per patch
        if self._last_image is None or self._last_image[0] != image_index:
            self._last_image = (image_index, read_image(self.image_paths[image_index]))
        return self._last_image[1]

    def _mask(self, image_index: int) -> np.ndarray:
        if self._last_mask is None or self._last_mask[0] != image_index:
            path = self.label_paths[image_index]
            type_map = read_type_map(path)
            width, height = self.image_sizes[image_index]
            if type_map.shape != (height, width):
                raise DataError(f"{path}: 'type_map' is {type_map.shape[0]} x {type_map.shape[1]} but its image "
                                f"{self.image_paths[image_index].name} is {height} x {width}; the label file "
                                "does not belong to this image.")
            self._last_mask = (image_index, merge_consep_classes(type_map, str(path)))
        return self._last_mask[1]

    def load(self, index: int) -> np.ndarray:
        image_index, x, y = self.patches[index]
        return self._image(image_index)[y : y + self.patch_size, x : x + self.patch_size]

    def load_mask(self, index: int) -> np.ndarray:
        image_index, x, y = self.patches[index]
        return self._mask(image_index)[y : y + self.patch_size, x : x + self.patch_size]

    def describe(self, index: int) -> str:
        image_index, x, y = self.patches[index]
        return f"{self.image_paths[image_index]} patch at x={x}, y={y}"


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}. Re-download or remove the file.") from exc
