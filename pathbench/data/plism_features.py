"""Features extracted in plismbench's layout: ``<dir>/<slide_id>/features.npy`` of shape
``(n_tiles, 3 + dim)`` (deep-zoom level, x, y, then the features), read and written."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathbench._io import save_npy
from pathbench.data.plism import (
    apply_tile_subset,
    canonical_slide_id,
    check_alignment,
    coords_order,
    parse_tile_id,
    select_slides,
    slide_staining_scanner,
    tile_id_from_coords,
)
from pathbench.errors import DataError


class PlismbenchFeatures(Mapping[str, np.ndarray]):
    """Features extracted in plismbench's layout, loaded one slide at a time.

    ``<root>/<slide_id>/features.npy``: ``(n_tiles, 3 + dim)``, columns deep-zoom level, x, y,
    then the features. The files are memory-mapped; ``self[slide_id]`` returns that slide's
    ``(n_rows, dim) float32`` features for the kept rows, in ``(x, y)`` order. The slides are
    checked to hold the same coordinates at construction, so every ``self[...]`` is aligned.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        stainings: Sequence[str] | None = None,
        scanners: Sequence[str] | None = None,
        tile_subset: np.ndarray | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"--features-dir {self.root}: no such folder.")
        found: dict[str, Path] = {}
        for path in sorted(self.root.glob("*/features.npy")):
            slide = canonical_slide_id(path.parent.name)
            try:
                slide_staining_scanner(slide)
            except DataError:
                continue
            found[slide] = path
        if not found:
            raise DataError(
                f"no <slide_id>/features.npy under {self.root}: expected plismbench's layout, e.g. "
                f"{self.root}/GIVH_AT2_to_GMH_S60.tif/features.npy."
            )
        self.slide_ids = select_slides(found, stainings, scanners)
        self.paths = {s: found[s] for s in self.slide_ids}
        self._orders: dict[str, np.ndarray] = {}
        reference: tuple[str, np.ndarray] | None = None
        for slide in self.slide_ids:
            array = self._open(slide)
            coords = np.asarray(array[:, :3]).astype(np.int64)
            order = coords_order(coords[:, 1], coords[:, 2])
            coords = coords[order]
            self._orders[slide] = order
            if reference is None:
                reference = (slide, coords)
            elif not np.array_equal(reference[1], coords):
                ids = {
                    reference[0]: [tile_id_from_coords(*c) for c in reference[1]],
                    slide: [tile_id_from_coords(*c) for c in coords],
                }
                check_alignment(ids)
        self.dim = int(self._open(self.slide_ids[0]).shape[1] - 3)
        assert reference is not None
        self.n_rows_total = len(reference[1])
        self.rows = apply_tile_subset(self.n_rows_total, tile_subset)
        self.tile_ids = [tile_id_from_coords(*reference[1][i]) for i in self.rows]

    def _open(self, slide: str) -> np.ndarray:
        path = self.paths[slide]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read {path} as a .npy array ({exc}).") from exc
        if array.ndim != 2 or array.shape[1] < 4:
            raise DataError(
                f"{path} has shape {array.shape}; expected (n_tiles, 3 + dim): level, x, y, then the features."
            )
        return array

    def __getitem__(self, slide: str) -> np.ndarray:
        array = self._open(slide)
        rows = self._orders[slide][self.rows]
        return np.asarray(array[rows, 3:], dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self.slide_ids)

    def __len__(self) -> int:
        return len(self.slide_ids)

    def check_finite(self, chunk_rows: int = 4096) -> None:
        """Raise :class:`DataError` if a kept feature is NaN or infinite (bounded memory)."""
        for slide in self.slide_ids:
            array = self._open(slide)
            rows = np.sort(self._orders[slide][self.rows])
            for start in range(0, len(rows), chunk_rows):
                block = np.asarray(array[rows[start : start + chunk_rows], 3:])
                if not np.isfinite(block).all():
                    raise DataError(
                        f"features of slide {slide} ({self.paths[slide]}) hold NaN or infinite values; "
                        "re-extract them (check the model's precision and weights)."
                    )

    def identity(self) -> dict[str, Any]:
        """Which files these features are: path, size and modification time of each."""
        files = {}
        for slide, path in self.paths.items():
            stat = path.stat()
            files[slide] = [str(path), stat.st_size, stat.st_mtime_ns]
        return {"features_dir": str(self.root), "files": files}


def write_plismbench_features(
    root: str | os.PathLike, slide_id: str, tile_ids: Sequence[str], features: np.ndarray
) -> Path:
    """Write one slide's features in plismbench's layout (``(n, 3 + dim) float32``, (x, y) order)."""
    coords = np.array([parse_tile_id(t) for t in tile_ids], dtype=np.float32)
    stacked = np.concatenate([coords, np.asarray(features, dtype=np.float32)], axis=1)
    order = coords_order(coords[:, 1], coords[:, 2])
    path = Path(root) / f"{canonical_slide_id(slide_id)}.tif" / "features.npy"
    save_npy(path, stacked[order])
    return path
