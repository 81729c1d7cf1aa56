"""The dataset interface every reader implements, and two generic readers.

A reader is a map-style dataset (what ``torch.utils.data.DataLoader`` takes) of uint8 RGB tiles ``(H, W, 3)`` that also has
``item_ids`` (one stable identifier per item, in order) and ``fingerprint`` (the identity
of the source). Together with the extractor's identity they key the feature cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pathbench.data.images import as_rgb_uint8, decode_image
from pathbench.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


class TileDataset:
    """Base class: subclasses set ``item_ids`` and ``fingerprint`` and implement ``load``."""

    item_ids: list[str]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, index: int) -> np.ndarray:
        image = self.load(index)
        return as_rgb_uint8(image, self.describe(index))

    def load(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where item ``index`` comes from, for error messages."""
        return f"item {self.item_ids[index]!r}"


def ids_digest(item_ids: Sequence[str]) -> str:
    """sha256 of the item ids in order."""
    digest = hashlib.sha256()
    for item_id in item_ids:
        digest.update(item_id.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class ArrayTileDataset(TileDataset):
    """In-memory tiles.

    Args:
        images: ``(N, H, W, 3)`` uint8.
        item_ids: N identifiers (default ``"0"``, ``"1"``, ...).
        fingerprint: identity of the source; by default the sha256 of the pixels.
    """

    def __init__(self, images: np.ndarray, item_ids: Sequence[str] | None = None, fingerprint: str | None = None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"expected tiles of shape (N, H, W, 3) uint8, got {images.shape} {images.dtype}.")
        self.images = images
        self.item_ids = [str(i) for i in (item_ids if item_ids is not None else range(len(images)))]
        if len(self.item_ids) != len(images):
            raise DataError(f"got {len(images)} tiles but {len(self.item_ids)} item ids.")
        self.fingerprint = fingerprint or "sha256:" + hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


class ImageFolderDataset(TileDataset):
    """Every image file under ``root`` (recursively, sorted); item ids are relative paths.

    The fingerprint covers each file's relative path, size and modification time, so an
    edited or replaced image invalidates the cached features.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist; expected a folder of image files.")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.paths:
            raise DataError(
                f"no images found under {self.root}; expected files ending in {', '.join(IMAGE_SUFFIXES)}."
            )
        self.item_ids = [p.relative_to(self.root).as_posix() for p in self.paths]
        digest = hashlib.sha256()
        for path, item_id in zip(self.paths, self.item_ids, strict=True):
            stat = path.stat()
            digest.update(f"{item_id}|{stat.st_size}|{stat.st_mtime_ns}\0".encode())
        self.fingerprint = "files:" + digest.hexdigest()

    def load(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])

    def describe(self, index: int) -> str:
        return str(self.paths[index])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (:func:`pathbench.data.images.decode_image`);
    unreadable files raise :class:`DataError`."""
    return decode_image(Path(path), str(path))


__all__ = ["IMAGE_SUFFIXES", "ArrayTileDataset", "ImageFolderDataset", "TileDataset", "as_rgb_uint8", "ids_digest",
           "read_image"]
