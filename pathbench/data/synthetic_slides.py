"""Small synthetic Camelyon16 and PANDA datasets in eva's on-disk layouts, as real pyramidal TIFFs.

Each slide is a tiled, JPEG-compressed, pyramidal TIFF (levels 1, 4 and 16 times smaller)
with its resolution in the TIFF tags, which OpenSlide reads as a generic TIFF with
``openslide.mpp-x/y``. The tissue is the real CC0 H&E tissue shipped in
``pathbench/data/assets/cmu_small_region_tiles.npz`` (see its NOTICE): tiles are laid on a
canvas inside a random tissue outline, on a near-white background that eva's foreground
mask rejects. Every slide gets its own mild stain variation; what depends on the label is
a share of "lesion" tiles re-stained in HED space, so an ABMIL can learn the label from its
patches (on the shipped tiles, a logistic regression on the CLS embeddings of a randomly
initialised ViT-Ti tells Camelyon16 lesion tiles from normal ones with 97 % accuracy):

- Camelyon16: a ``tumor`` slide has one contiguous, hyperchromatic lesion (haematoxylin x2.5,
  eosin x0.3) covering 35-60 % of its tissue, a ``normal`` slide none. Slides alternate
  between 0.243 and 0.226 um/px at level 0 (the two Camelyon16 scanners), so patches at
  0.25 um/px are read as 230 or 247 pixels and resized. Names follow eva: ``normal_010``,
  ``tumor_001`` ... are in eva's validation list (train 6, val 4, test 4 slides).
- PANDA: the ISUP grade sets the lesion's share of the tissue (0 %, then 50 % to 70 %) and
  its stain (:data:`PANDA_LESION_STAIN`); level 0 is 0.486 um/px (patches at 0.5 um/px are
  read as 230 pixels). The label table has analokmaus' columns (``image_id,
  data_provider, isup_grade, gleason_score, ..., noise_ratio_10, ...``); two images are
  flagged as noisy (``noise_ratio_10 = 0``) and dropped by eva's filter, and three images
  per grade survive it, so eva's PANDA-small split (ratios 0.1 / 0.05 / 0.05, at least one
  slide per grade) puts one slide of every grade in each of train, val and test.

Layout under ``root`` (each task folder is built beside its place and renamed in):

    camelyon16/training/{normal,tumor}/*.tif, camelyon16/testing/images/*.tif,
    camelyon16/testing/reference.csv
    panda/prostate-cancer-grade-assessment/train_images/<image_id>.tiff,
    panda/train_with_noisy_labels.csv

The data is a deterministic function of the seed and is NOT Camelyon16 or PANDA: numbers
measured on it only show that the pipeline runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pathbench._io import write_csv
from pathbench.data.synthetic import write_task_folder
from pathbench.data.synthetic_plism import hed_to_rgb, load_demo_tiles, rgb_to_hed

GENERATOR_VERSION = 1
TILE = 224
LEVEL_DOWNSAMPLES = (1, 4, 16)
TASK_FOLDERS = {"camelyon16": "camelyon16", "panda": "panda"}
PANDA_IMAGES = "prostate-cancer-grade-assessment"
PANDA_LABELS = "train_with_noisy_labels.csv"

# (slide name, split it falls in under eva's lists). The val names are in eva's validation list.
CAMELYON16_TRAINING = ("normal_001", "normal_002", "normal_003", "tumor_002", "tumor_003", "tumor_004",
                       "normal_010", "normal_013", "tumor_001", "tumor_005")
CAMELYON16_TEST = (("test_001", "Tumor"), ("test_002", "Normal"), ("test_003", "Tumor"), ("test_004", "Normal"))
CAMELYON16_MPPS = (0.243, 0.226)
PANDA_MPP = 0.486
PANDA_KEPT_PER_GRADE = 3
PANDA_NOISY = (1, 4)  # grades of the images flagged as noisy
# Each grade's lesion: its share of the tissue and its (H, E, residual) concentration scales.
PANDA_LESION_SHARE = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7)
PANDA_LESION_STAIN = ((1.0, 1.0, 1.0), (1.6, 1.0, 0.6), (1.0, 0.4, 1.8), (2.2, 0.5, 1.0), (0.6, 1.6, 1.6),
                      (2.8, 0.3, 1.5))
_GLEASON = {0: "0+0", 1: "3+3", 2: "3+4", 3: "4+3", 4: "4+4", 5: "4+5"}


def write_pyramidal_tiff(path: str | os.PathLike, rgb: np.ndarray, mpp: float | None,
                         downsamples: tuple[int, ...] = LEVEL_DOWNSAMPLES, quality: int = 70) -> None:
    """Write ``(H, W, 3) uint8`` as a tiled JPEG pyramidal TIFF that OpenSlide opens.

    Args:
        mpp: microns per pixel of level 0, stored as TIFF resolution in pixels per
            centimetre; ``None`` writes no resolution (a slide without mpp).
        downsamples: level sizes relative to level 0 (box-filtered).
    """
    import tifffile

    image = Image.fromarray(rgb)
    with tifffile.TiffWriter(path) as writer:
        for i, factor in enumerate(downsamples):
            size = (max(1, rgb.shape[1] // factor), max(1, rgb.shape[0] // factor))
            level = np.asarray(image.resize(size, Image.Resampling.BOX)) if factor > 1 else rgb
            resolution = {} if mpp is None else {"resolution": (1e4 / (mpp * factor), 1e4 / (mpp * factor)),
                                                 "resolutionunit": "CENTIMETER"}
            writer.write(level, tile=(256, 256), photometric="rgb", compression="jpeg",
                         compressionargs={"level": quality}, subfiletype=0 if i == 0 else 1, **resolution)


def _tissue_outline(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """``(rows, cols)`` bool: an irregular blob of tissue tiles touching no more than the canvas."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy, cx = (rows - 1) / 2 + rng.uniform(-0.3, 0.3), (cols - 1) / 2 + rng.uniform(-0.3, 0.3)
    radius = ((yy - cy) / (rows / 2)) ** 2 + ((xx - cx) / (cols / 2)) ** 2
    outline = radius + rng.uniform(-0.25, 0.25, size=radius.shape) < 0.95
    outline[int(round(cy)), int(round(cx))] = True
    return outline


def _lesion(outline: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """The ``share`` of tissue tiles closest to a random tissue tile (one contiguous lesion)."""
    tissue = np.argwhere(outline)
    count = int(round(share * len(tissue)))
    lesion = np.zeros_like(outline)
    if count == 0:
        return lesion
    centre = tissue[rng.integers(len(tissue))]
    distance = np.abs(tissue - centre).sum(axis=1) + rng.uniform(0, 0.5, len(tissue))
    chosen = tissue[np.argsort(distance)[:count]]
    lesion[chosen[:, 0], chosen[:, 1]] = True
    return lesion


def _restain(tile: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Scale the haematoxylin / eosin / residual concentrations of a tile."""
    return hed_to_rgb(rgb_to_hed(tile) * scale.astype(np.float32))


def render_slide(tiles: np.ndarray, rows: int, cols: int, lesion_share: float, lesion_scale: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """One slide canvas ``(rows * 224, cols * 224, 3)`` uint8: tissue tiles, a lesion, white background."""
    outline = _tissue_outline(rows, cols, rng)
    lesion = _lesion(outline, lesion_share, rng)
    slide_stain = 1.0 + rng.normal(0, 0.06, size=3)  # the slide's own staining
    canvas = np.clip(rng.normal(242, 2.0, size=(rows * TILE, cols * TILE, 3)), 0, 255).astype(np.uint8)
    for r, c in np.argwhere(outline):
        tile = tiles[rng.integers(len(tiles))]
        tile = np.rot90(tile, int(rng.integers(4)))
        scale = slide_stain * (lesion_scale if lesion[r, c] else 1.0)
        canvas[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = _restain(tile, scale)
    return canvas


def _write_camelyon16(folder: Path, tiles: np.ndarray, rng: np.random.Generator) -> None:
    tumour_scale = np.array([2.5, 0.3, 1.5])
    slides = [(name, f"training/{name.split('_')[0]}/{name}.tif", name.startswith("tumor"))
              for name in CAMELYON16_TRAINING]
    slides += [(name, f"testing/images/{name}.tif", label == "Tumor") for name, label in CAMELYON16_TEST]
    for i, (_, relative, tumour) in enumerate(slides):
        share = rng.uniform(0.35, 0.6) if tumour else 0.0
        canvas = render_slide(tiles, 4, 5, share, tumour_scale, rng)
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        write_pyramidal_tiff(folder / relative, canvas, CAMELYON16_MPPS[i % 2])
    reference = pd.DataFrame([(name, label, "Macro" if label == "Tumor" else "", "Primary" if label == "Tumor" else "")
                              for name, label in CAMELYON16_TEST])
    write_csv(folder / "testing" / "reference.csv", reference, header=False)


def panda_image_id(index: int, seed: int) -> str:
    """A 32-hex-digit image id like PANDA's, deterministic in (index, seed)."""
    return hashlib.md5(f"synthetic-panda-{seed}-{index}".encode(), usedforsecurity=False).hexdigest()


def _write_panda(folder: Path, tiles: np.ndarray, rng: np.random.Generator, seed: int) -> None:
    images = folder / PANDA_IMAGES / "train_images"
    images.mkdir(parents=True, exist_ok=True)
    grades = [g for g in range(6) for _ in range(PANDA_KEPT_PER_GRADE)] + list(PANDA_NOISY)
    rows = []
    for index, grade in enumerate(grades):
        image_id = panda_image_id(index, seed)
        canvas = render_slide(tiles, 4, 4, PANDA_LESION_SHARE[grade], np.array(PANDA_LESION_STAIN[grade]), rng)
        write_pyramidal_tiff(images / f"{image_id}.tiff", canvas, PANDA_MPP)
        noisy = index >= PANDA_KEPT_PER_GRADE * 6
        provider = "karolinska" if index % 2 else "radboud"
        gleason = "negative" if grade == 0 and provider == "radboud" else _GLEASON[grade]
        flag = 0 if noisy else 1
        rows.append({"image_id": image_id, "data_provider": provider, "isup_grade": grade, "gleason_score": gleason,
                     "loss_rank": float(index), "weight": 1.0, "weight2": 1.0, "noise_ratio_5": flag,
                     "noise_ratio_10": flag, "noise_ratio_15": flag, "noise_ratio_20": flag})
    order = rng.permutation(len(rows))  # the real table is sorted by image id, not by grade
    frame = pd.DataFrame([rows[i] for i in order]).sort_values("image_id").reset_index(drop=True)
    write_csv(folder / PANDA_LABELS, frame, index=True)


def make_synthetic_slides(root: str | os.PathLike, tasks: tuple[str, ...] = ("camelyon16", "panda"),
                          seed: int = 0) -> Path:
    """Write the synthetic slide datasets under ``root`` (see the module docstring) and return ``root``.

    A task folder already written with the same generator version and seed is kept.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tiles, _ = load_demo_tiles()
    for task in tasks:
        if task not in TASK_FOLDERS:
            raise ValueError(f"unknown slide task {task!r}; expected one of {', '.join(TASK_FOLDERS)}.")
        params = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "task": task}
        rng = np.random.default_rng([int(seed), list(TASK_FOLDERS).index(task)])

        def write(staging: Path, task: str = task, rng: np.random.Generator = rng) -> None:
            if task == "camelyon16":
                _write_camelyon16(staging, tiles, rng)
            else:
                _write_panda(staging, tiles, rng, seed)

        write_task_folder(root / TASK_FOLDERS[task], params, write)
    return root


def synthetic_slides_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the demo keeps them: ``<pathbench cache>/datasets/synthetic-eva-slides-v<N>``."""
    from pathbench.settings import cache_root

    return cache_root(cache_dir) / "datasets" / f"synthetic-eva-slides-v{GENERATOR_VERSION}"


def synthetic_task_paths(root: str | os.PathLike) -> dict[str, Path]:
    """The paths a reader needs: ``camelyon16`` root, ``panda`` images root, ``panda_labels`` table."""
    root = Path(root)
    return {"camelyon16": root / TASK_FOLDERS["camelyon16"],
            "panda": root / TASK_FOLDERS["panda"] / PANDA_IMAGES,
            "panda_labels": root / TASK_FOLDERS["panda"] / PANDA_LABELS}
