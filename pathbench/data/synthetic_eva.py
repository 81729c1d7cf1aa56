"""Small synthetic datasets in eva's four patch-classification layouts, for tests and the demo.

Each class has its own look: a stain colour (a point between haematoxylin purple and eosin
pink, with its own lightness), a density of dark "nuclei" and a stripe orientation and
frequency of the stroma-like texture. Every image jitters colour, density and phase and
adds pixel noise, so the classes overlap a little: the task is learnable from the pixels
but not trivial. Everything is a deterministic function of the seed.

Layouts (see :mod:`pathbench.data.eva`):

- ``bach/ICIAR2018_BACH_Challenge/Photos/<class>/*.tif``: 400 images (100 per class, as
  eva's fixed index split requires), small and not square, so the resize-and-crop matters;
- ``crc/NCT-CRC-HE-100K/<9 classes>/*.tif`` and ``crc/CRC-VAL-HE-7K/<9 classes>/*.tif``;
- ``mhist/images/*.png`` and ``mhist/annotations.csv``;
- ``patch_camelyon/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` (96x96 tiles).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from pathbench._io import write_csv
from pathbench.data.eva import BACH_CLASSES, CRC_CLASSES, CRC_SPLIT_DIRS, MHIST_CLASSES, TASK_DATA
from pathbench.data.synthetic import write_task_folder

GENERATOR_VERSION = 4

# Items per class and split. BACH must have 100 per class (eva's split is fixed).
DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "bach": {"all": 100},
    "crc": {"train": 6, "val": 3},
    "mhist": {"train": 20, "test": 10},
    "pcam": {"train": 32, "valid": 16, "test": 16},
}

_HEMATOXYLIN = np.array([0.36, 0.22, 0.55])
_EOSIN = np.array([0.93, 0.55, 0.72])


def _class_style(class_index: int, n_classes: int, spread: float) -> dict[str, float]:
    """Look of a class: each feature moves from a shared middle value by ``spread`` of its range."""

    def level(multiplier: int) -> float:
        position = ((class_index * multiplier) % n_classes) / max(n_classes - 1, 1)
        return 0.5 + spread * (position - 0.5)

    return {
        "mix": 0.15 + 0.7 * level(1),  # share of eosin in the background colour
        "lightness": 0.75 + 0.2 * level(7),
        "nuclei": 0.02 + 0.10 * level(3),
        "angle": np.pi * (0.5 + spread * (class_index / n_classes - 0.5)),
        "frequency": 0.15 + 0.35 * level(5),
    }


def render_tile(class_index: int, n_classes: int, rng: np.random.Generator, height: int, width: int,
                spread: float = 1.0) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 image of class ``class_index``.

    ``spread`` in (0, 1] sets how far apart the classes look (1: as far as possible).
    """
    style = _class_style(class_index, n_classes, spread)
    mix = np.clip(style["mix"] + rng.normal(0, 0.05), 0, 1)
    colour = (1 - mix) * _HEMATOXYLIN + mix * _EOSIN
    colour = np.clip(colour * (style["lightness"] + rng.normal(0, 0.03)) / 0.85, 0, 1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = style["angle"] + rng.normal(0, 0.1)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(style["frequency"] * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    image = colour[None, None, :] * (0.85 + 0.15 * stripes[..., None])
    density = max(style["nuclei"] + rng.normal(0, 0.01), 0.0)
    nuclei = rng.random((height, width)) < density
    image[nuclei] = _HEMATOXYLIN * 0.6
    image = image + rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _write_bach(folder: Path, rng: np.random.Generator, sizes: dict[str, int]) -> None:
    photos = folder / "ICIAR2018_BACH_Challenge" / "Photos"
    prefixes = {"Benign": "b", "InSitu": "is", "Invasive": "iv", "Normal": "n"}
    for c, name in enumerate(BACH_CLASSES):
        (photos / name).mkdir(parents=True, exist_ok=True)
        for i in range(sizes["all"]):
            tile = render_tile(c, len(BACH_CLASSES), rng, 48, 64, spread=0.6)  # 4:3 like the real photos
            Image.fromarray(tile).save(photos / name / f"{prefixes[name]}{i + 1:03d}.tif")


def _write_crc(folder: Path, rng: np.random.Generator, sizes: dict[str, int]) -> None:
    for split, dirname in CRC_SPLIT_DIRS.items():
        for c, name in enumerate(CRC_CLASSES):
            (folder / dirname / name).mkdir(parents=True, exist_ok=True)
            for i in range(sizes[split]):
                tile = render_tile(c, len(CRC_CLASSES), rng, 56, 56)
                Image.fromarray(tile).save(folder / dirname / name / f"{name}-{split.upper()}{i:04d}.tif")


def _write_mhist(folder: Path, rng: np.random.Generator, sizes: dict[str, int]) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    counter = 0
    for split in ("train", "test"):
        for c, name in enumerate(MHIST_CLASSES):
            for _ in range(sizes[split]):
                image_name = f"MHIST_{counter:04d}.png"
                counter += 1
                tile = render_tile(c, len(MHIST_CLASSES), rng, 56, 56, spread=0.15)
                Image.fromarray(tile).save(folder / "images" / image_name)
                votes = int(rng.integers(4, 8)) if name == "SSA" else int(rng.integers(0, 4))
                rows.append((image_name, name, votes, split))
    order = rng.permutation(len(rows))  # the real file is not grouped by class
    frame = pd.DataFrame([rows[i] for i in order], columns=[
        "Image Name", "Majority Vote Label", "Number of Annotators who Selected SSA (Out of 7)", "Partition"])
    write_csv(folder / "annotations.csv", frame)


def _write_pcam(folder: Path, rng: np.random.Generator, sizes: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        n = 2 * sizes[split]
        labels = rng.permutation(np.repeat([0, 1], sizes[split])).astype(np.uint8)
        tiles = np.stack([render_tile(int(c), 2, rng, 96, 96, spread=0.2) for c in labels])
        stem = f"camelyonpatch_level_2_split_{split}"
        with h5py.File(folder / f"{stem}_x.h5", "w") as handle:
            handle.create_dataset("x", data=tiles, chunks=(1, 96, 96, 3))
        with h5py.File(folder / f"{stem}_y.h5", "w") as handle:
            handle.create_dataset("y", data=labels.reshape(n, 1, 1, 1))


_WRITERS = {"bach": _write_bach, "crc": _write_crc, "mhist": _write_mhist, "pcam": _write_pcam}


def make_synthetic_eva(
    root: str | os.PathLike,
    tasks: tuple[str, ...] = ("bach", "crc", "mhist", "pcam"),
    seed: int = 0,
    sizes: dict[str, dict[str, int]] | None = None,
) -> Path:
    """Write synthetic eva datasets under ``root/<eva folder>`` and return ``root``.

    ``root`` then works as ``--data`` (and as eva's ``DATA_ROOT``). Each task folder is
    staged beside its final place and renamed in when complete; a task already present
    with the same parameters is kept, so a second call costs nothing.
    """
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        if task not in _WRITERS:
            raise ValueError(f"unknown eva task {task!r}; expected one of {', '.join(_WRITERS)}.")
        params = {"generator_version": GENERATOR_VERSION, "seed": seed, "task": task, "sizes": sizes[task]}
        rng = np.random.default_rng([seed, list(_WRITERS).index(task)])
        write_task_folder(root / TASK_DATA[task].eva_dir, params,
                          lambda staging, task=task, rng=rng: _WRITERS[task](staging, rng, sizes[task]))
    return root
