"""The sampled patches of one slide as a tile dataset, and the settings of eva's two slide tasks.

:func:`bag_for_slide` opens a slide, samples its patches as eva's ``ForegroundGridSampler``
does (:mod:`pathbench.data.patching`) and returns a :class:`SlidePatchDataset`: a
:class:`~pathbench.data.base.TileDataset` whose items are the sampled patches, read at the
task's resolution and brought to 224 x 224 as eva's transform does. So
``pathbench.features.extract_features(extractor, bag)`` embeds one slide's bag, cached
and resumable per slide like any tile dataset.

A slide that cannot be used (unreadable or corrupt file, no microns per pixel in its
metadata, smaller than one patch, no foreground) raises :class:`SlideSkipError`;
:func:`open_bags` turns these into :class:`SkippedSlide` records so one bad slide never
stops a run. eva itself fails on the first three and silently drops a slide without
foreground (it has no patch, so no row in the embeddings manifest).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable

import numpy as np

from pathbench.data.base import TileDataset
from pathbench.data.patching import ForegroundGridSampler, PatchCoordinates, sample_patches
from pathbench.data.slides import Slide, camelyon16_slides, panda_slides
from pathbench.data.wsi import SlideReader, open_slide, read_patch
from pathbench.errors import DataError

GEOMETRY_VERSION = 1


class SlideSkipError(DataError):
    """A slide that cannot be turned into a bag of patches (the message says why)."""


@dataclasses.dataclass(frozen=True)
class SlideTaskSettings:
    """How eva turns the slides of a task into bags.

    Attributes:
        name: pathbench task name (``cam16-small``, ``panda-small``).
        label: column title in tables.
        num_classes: 2 (one logit, BCE) or 6.
        target_mpp: resolution of the patches, microns per pixel.
        max_samples: at most this many patches per slide (eva pads bags to it).
        patch_size: patch side in pixels at ``target_mpp`` (224).
        seed: the sampler's shuffling seed (eva's 42).
        min_foreground_ratio: foreground share a grid cell needs (eva's 0.35).
        backend: the :mod:`pathbench.data.wsi` reader.
    """

    name: str
    label: str
    num_classes: int
    target_mpp: float
    max_samples: int
    patch_size: int = 224
    seed: int = 42
    min_foreground_ratio: float = 0.35
    backend: str = "openslide"

    def sampler(self) -> ForegroundGridSampler:
        return ForegroundGridSampler(max_samples=self.max_samples, min_foreground_ratio=self.min_foreground_ratio,
                                     seed=self.seed)

    def identity(self) -> dict[str, object]:
        """What determines the patches' pixels (part of each bag's fingerprint)."""
        return {**dataclasses.asdict(self), "geometry_version": GEOMETRY_VERSION}


CAM16_SMALL = SlideTaskSettings("cam16-small", "Camelyon16-small", num_classes=2, target_mpp=0.25, max_samples=1000)
PANDA_SMALL = SlideTaskSettings("panda-small", "PANDA-small", num_classes=6, target_mpp=0.5, max_samples=200)
SLIDE_TASKS: dict[str, SlideTaskSettings] = {s.name: s for s in (CAM16_SMALL, PANDA_SMALL)}


def slides_for_task(task: str, root: str | os.PathLike, panda_labels: str | os.PathLike | None = None,
                    split: str | None = None) -> list[Slide]:
    """The slides of ``task`` (``cam16-small`` or ``panda-small``) under ``root``, as eva lists them.

    Args:
        root: the Camelyon16 folder (``training/``, ``testing/``) or the PANDA folder (``train_images/``).
        panda_labels: PANDA's label table (``train_with_noisy_labels.csv``); required for PANDA.
        split: ``train``, ``val``, ``test`` or None (every slide a split uses).
    """
    if task == CAM16_SMALL.name:
        return camelyon16_slides(root, split)
    if task == PANDA_SMALL.name:
        return panda_slides(root, panda_labels, split, small=True)
    raise DataError(f"unknown slide task {task!r}; expected one of {', '.join(SLIDE_TASKS)}.")


def item_id(slide_id: str, x: int, y: int) -> str:
    """The item id of the patch whose level-0 top-left corner is ``(x, y)``: ``"<slide_id>/<x>_<y>"``."""
    return f"{slide_id}/{int(x)}_{int(y)}"


def parse_item_id(value: str) -> tuple[str, int, int]:
    """``(slide_id, x, y)`` from :func:`item_id`."""
    slide_id, _, corner = value.rpartition("/")
    x, _, y = corner.partition("_")
    return slide_id, int(x), int(y)


class SlidePatchDataset(TileDataset):
    """The sampled patches of one slide: ``(patch_size, patch_size, 3)`` uint8 RGB items.

    Attributes:
        slide: the :class:`~pathbench.data.slides.Slide`.
        settings: the task's :class:`SlideTaskSettings`.
        coords: the sampled :class:`~pathbench.data.patching.PatchCoordinates` (eva's convention).
        item_ids: ``"<slide_id>/<x>_<y>"`` in sampling order.
        fingerprint: slide content hash + task settings + read geometry.
    """

    def __init__(self, slide: Slide, settings: SlideTaskSettings, coords: PatchCoordinates, content_hash: str,
                 reader: SlideReader | None = None) -> None:
        self.slide = slide
        self.settings = settings
        self.coords = coords
        self.item_ids = [item_id(slide.slide_id, x, y) for x, y in coords.x_y]
        description = {"slide": content_hash, "settings": settings.identity(), "level": coords.level_idx,
                       "read_size": [coords.width, coords.height]}
        self.fingerprint = "slide:" + hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
        self._reader = reader

    @property
    def target(self) -> int:
        return self.slide.label

    def _open(self) -> SlideReader:
        if self._reader is None:
            self._reader = open_slide(self.slide.path, self.settings.backend)
        return self._reader

    def load(self, index: int) -> np.ndarray:
        x, y = self.coords.x_y[index]
        return read_patch(self._open(), (x, y), self.coords.level_idx, (self.coords.width, self.coords.height),
                          self.settings.patch_size)

    def describe(self, index: int) -> str:
        x, y = self.coords.x_y[index]
        return f"{self.slide.path} patch at ({x}, {y})"

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __getstate__(self) -> dict:
        # OpenSlide handles do not cross process boundaries: DataLoader workers reopen the slide.
        state = self.__dict__.copy()
        state["_reader"] = None
        return state


def bag_for_slide(slide: Slide, settings: SlideTaskSettings) -> SlidePatchDataset:
    """Open ``slide`` and sample its patches with the task's settings.

    Raises:
        SlideSkipError: the slide is unreadable, has no mpp, is smaller than one patch, or
            has no grid cell with enough foreground.
    """
    try:
        reader = open_slide(slide.path, settings.backend)
    except DataError as exc:
        raise SlideSkipError(str(exc)) from exc
    try:
        coords = sample_patches(reader, settings.sampler(), settings.target_mpp, settings.patch_size,
                                settings.patch_size)
        content_hash = reader.content_hash()
    except DataError as exc:
        raise SlideSkipError(str(exc)) from exc
    finally:
        # the bag reopens the slide when it is read: many bags must not hold many open slides
        reader.close()
    if not coords.x_y:
        raise SlideSkipError(
            f"{slide.path}: no {settings.patch_size}x{settings.patch_size} grid cell at {settings.target_mpp} um/px "
            f"has {settings.min_foreground_ratio:.0%} foreground (saturation above 20 on the mask level "
            f"{coords.mask_level}); the slide is blank or not an H&E scan. eva leaves such a slide out too."
        )
    return SlidePatchDataset(slide, settings, coords, content_hash)


@dataclasses.dataclass(frozen=True)
class SkippedSlide:
    """A slide left out of a run, and why."""

    slide_id: str
    split: str
    origin: str
    reason: str


def open_bags(slides: Iterable[Slide], settings: SlideTaskSettings,
              on_error: str = "skip") -> tuple[list[SlidePatchDataset], list[SkippedSlide]]:
    """:func:`bag_for_slide` for many slides.

    Args:
        on_error: ``"skip"`` records unusable slides and goes on; ``"raise"`` stops at the first.

    Returns:
        ``(bags, skipped)`` in the order of ``slides``.
    """
    if on_error not in ("skip", "raise"):
        raise DataError(f"on_error must be 'skip' or 'raise', got {on_error!r}.")
    bags, skipped = [], []
    for slide in slides:
        try:
            bags.append(bag_for_slide(slide, settings))
        except SlideSkipError as exc:
            if on_error == "raise":
                raise
            skipped.append(SkippedSlide(slide.slide_id, slide.split, slide.origin, str(exc)))
    return bags, skipped
