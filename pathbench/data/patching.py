"""Patch sampling on whole-slide images with the semantics of kaiko eva's ``ForegroundGridSampler``.

What eva does for one slide (``eva/vision/data/wsi/patching``), and what this module does:

1. **Grid** at level 0: a patch of ``224`` pixels at ``target_mpp`` covers
   ``int(target_mpp / mpp * 224)`` level-0 pixels; grid cells of that size start at
   ``x = 0, s, 2s, ...`` while a whole cell fits (``x <= W - s``), same for ``y``, and are
   listed x-major (for each x, every y).
2. **Order**: the cell indices are shuffled by ``numpy.random.default_rng(seed)`` (seed 42).
3. **Foreground mask** on the coarsest level at which a patch still covers at least 3 x 3
   pixels: the whole level is read (transparent -> white), converted to HSV as OpenCV does
   for 8-bit images, and a pixel is foreground when its saturation is above 20 (no blur,
   no hole filling: eva's defaults).
4. **Foreground test** of a cell: its position and size are divided by the level's scale
   factors and truncated, and the mask pixels under it must be at least 35 % foreground.
5. **Cap**: cells are visited in the shuffled order and kept until ``max_samples`` are found.

The coordinates are what eva writes to ``coords_<split>.csv``: ``x_y`` are top-left
corners in level-0 pixels, ``width``/``height`` the region size at ``level_idx`` (the read
level, see :func:`pathbench.data.wsi.patch_geometry`).

OpenCV is not a dependency: its 8-bit RGB->HSV saturation is reproduced here with the same
fixed-point arithmetic (:func:`hsv_saturation`), identical on all 2^16 (max, min) pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pathbench.data.wsi import SlideReader, patch_geometry, scaled_size
from pathbench.errors import DataError

SATURATION_THRESHOLD = 20
MIN_MASK_PATCH_PIXELS = 3 * 3

_HSV_SHIFT = 12
# OpenCV's table for 8-bit saturation: round(255 * 2^12 / v), so s = round(255 * (v - min) / v).
_SATURATION_DIVISORS = np.array(
    [0] + [int(np.rint((255 << _HSV_SHIFT) / v)) for v in range(1, 256)], dtype=np.int64
)


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """The S channel of OpenCV's ``cvtColor(rgb, COLOR_RGB2HSV)`` for uint8 images.

    Args:
        rgb: ``(..., 3)`` uint8.

    Returns:
        ``(...)`` uint8 saturation in [0, 255].
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise DataError(f"expected (..., 3) uint8 RGB pixels, got {rgb.shape} {rgb.dtype}.")
    value = rgb.max(axis=-1).astype(np.int64)
    diff = value - rgb.min(axis=-1)
    return ((diff * _SATURATION_DIVISORS[value] + (1 << (_HSV_SHIFT - 1))) >> _HSV_SHIFT).astype(np.uint8)


def foreground_mask(rgb: np.ndarray, saturation_threshold: int = SATURATION_THRESHOLD) -> np.ndarray:
    """eva's foreground mask: ``(H, W)`` uint8, 1 where the HSV saturation exceeds the threshold."""
    return (hsv_saturation(rgb) > saturation_threshold).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Mask:
    """A foreground mask and how it maps to level 0.

    Attributes:
        array: ``(H_l, W_l)`` uint8, 1 = foreground, at slide level ``level``.
        level: the slide level the mask was computed on.
        scale_factors: ``(W_0 / W_l, H_0 / H_l)``.
    """

    array: np.ndarray
    level: int
    scale_factors: tuple[float, float]


def mask_level(level_mpps: Sequence[float], width: int, height: int, target_mpp: float,
               min_mask_patch_pixels: int = MIN_MASK_PATCH_PIXELS) -> int:
    """The coarsest level on which a ``width x height`` patch at ``target_mpp`` spans enough pixels.

    Raises:
        DataError: no level qualifies (the patch is smaller than a few pixels everywhere).
    """
    for level in range(len(level_mpps) - 1, -1, -1):
        w, h = scaled_size(width, target_mpp, level_mpps[level]), scaled_size(height, target_mpp, level_mpps[level])
        if w * h >= min_mask_patch_pixels:
            return level
    raise DataError(f"no slide level shows a {width}x{height} patch at {target_mpp} um/px with at least "
                    f"{min_mask_patch_pixels} pixels (level mpps {list(level_mpps)}).")


def slide_mask(reader: SlideReader, width: int, height: int, target_mpp: float) -> Mask:
    """eva's foreground mask of a slide (see the module docstring, step 3)."""
    level = mask_level(reader.level_mpps, width, height, target_mpp)
    array = foreground_mask(reader.read_level(level))
    (w0, h0), (wl, hl) = reader.level_dimensions[0], reader.level_dimensions[level]
    return Mask(array=array, level=level, scale_factors=(w0 / wl, h0 / hl))


def grid_coordinates(layer_shape: tuple[int, int], width: int, height: int,
                     overlap: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Top-left corners of the whole cells of a grid, x-major.

    Args:
        layer_shape: ``(W, H)`` of the layer.

    Returns:
        ``(n_cells, 2)`` int64 ``(x, y)``; row ``i * n_y + j`` is ``(x_i, y_j)``.
    """
    xs = np.arange(0, layer_shape[0] - width + 1, width - overlap[0], dtype=np.int64)
    ys = np.arange(0, layer_shape[1] - height + 1, height - overlap[1], dtype=np.int64)
    return np.stack([np.repeat(xs, len(ys)), np.tile(ys, len(xs))], axis=1).reshape(-1, 2)


def is_foreground(mask: Mask, x: int, y: int, width: int, height: int, min_foreground_ratio: float) -> bool:
    """Whether the level-0 box ``(x, y, width, height)`` is foreground enough on ``mask``.

    The box is mapped to the mask by dividing by the scale factors and truncating; a box
    that maps to no mask pixel is not foreground (eva's ratio would be 0/0).
    """
    sx, sy = mask.scale_factors
    x_, y_ = int(x / sx), int(y / sy)
    w_, h_ = int(width / sx), int(height / sy)
    window = mask.array[y_ : y_ + h_, x_ : x_ + w_]
    if window.size == 0:
        return False
    return bool(window.sum() / window.size >= min_foreground_ratio)


@dataclasses.dataclass(frozen=True)
class ForegroundGridSampler:
    """Grid cells with enough foreground, in a seeded random order, at most ``max_samples``.

    Defaults are eva's (``max_samples`` is set per task by its configs: 1,000 for
    Camelyon16-small, 200 for PANDA-small).
    """

    max_samples: int = 20
    overlap: tuple[int, int] = (0, 0)
    min_foreground_ratio: float = 0.35
    shuffle: bool = True
    seed: int = 42

    def sample(self, width: int, height: int, layer_shape: tuple[int, int], mask: Mask) -> list[tuple[int, int]]:
        """Top-left corners ``(x, y)`` of the kept cells, in visiting order.

        Raises:
            DataError: a cell is larger than the layer.
        """
        if width > layer_shape[0] or height > layer_shape[1]:
            raise DataError(f"a {width}x{height} patch does not fit in a layer of {layer_shape[0]}x{layer_shape[1]} "
                            "pixels; the slide is smaller than one patch at the target mpp.")
        cells = grid_coordinates(layer_shape, width, height, self.overlap)
        # default_rng(seed).permutation(n) is the permutation eva gets from
        # default_rng(seed).shuffle(list(range(n))) (same draws; checked by the tests).
        order = np.random.default_rng(self.seed).permutation(len(cells)) if self.shuffle else range(len(cells))
        kept: list[tuple[int, int]] = []
        for index in order:
            if len(kept) >= self.max_samples:
                break
            x, y = int(cells[index, 0]), int(cells[index, 1])
            if is_foreground(mask, x, y, width, height, self.min_foreground_ratio):
                kept.append((x, y))
        return kept


@dataclasses.dataclass(frozen=True)
class PatchCoordinates:
    """The sampled patches of one slide, in eva's convention.

    Attributes:
        x_y: top-left corners in level-0 pixels, in sampling order.
        width, height: region size in pixels of ``level_idx``.
        level_idx: the level patches are read from.
        mask_level: the level the foreground mask was computed on.
    """

    x_y: list[tuple[int, int]]
    width: int
    height: int
    level_idx: int
    mask_level: int

    def to_eva_row(self, file: str) -> dict[str, object]:
        """One row of eva's ``coords_<split>.csv``: ``file, x_y, width, height, level_idx``."""
        return {"file": file, "x_y": str([tuple(p) for p in self.x_y]), "width": self.width,
                "height": self.height, "level_idx": self.level_idx}


def sample_patches(reader: SlideReader, sampler: ForegroundGridSampler, target_mpp: float,
                   width: int = 224, height: int = 224) -> PatchCoordinates:
    """Sample a slide's patches as eva's ``PatchCoordinates.from_file`` with a foreground sampler.

    An empty ``x_y`` means the slide has no cell with enough foreground.
    """
    cell_w, cell_h = scaled_size(width, target_mpp, reader.mpp), scaled_size(height, target_mpp, reader.mpp)
    mask = slide_mask(reader, width, height, target_mpp)
    x_y = sampler.sample(cell_w, cell_h, reader.level_dimensions[0], mask)
    level, read_w, read_h = patch_geometry(reader, target_mpp, width, height)
    return PatchCoordinates(x_y=x_y, width=read_w, height=read_h, level_idx=level, mask_level=mask.level)
