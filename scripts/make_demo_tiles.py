"""Cut the demo tissue tiles shipped in ``pathbench/data/assets/``.

One-off script: it reads the CC0 slide ``CMU-1-Small-Region.svs`` (OpenSlide test data,
Carnegie Mellon University), cuts it into a non-overlapping grid of 224 x 224 tiles at its
only full-resolution level (0.499 um/px), keeps the tiles that are mostly tissue, and
stores them JPEG-encoded in one ``.npz`` file:

- ``jpeg``: uint8, every tile's JPEG bytes concatenated;
- ``offsets``: int64 ``(n_tiles + 1,)``, tile ``i`` is ``jpeg[offsets[i]:offsets[i + 1]]``;
- ``col``, ``row``: int64 ``(n_tiles,)``, the tile's position in the 224-pixel grid;
- ``tissue_fraction``: float32 ``(n_tiles,)``.

Usage::

    python scripts/make_demo_tiles.py /path/to/CMU-1-Small-Region.svs \
        pathbench/data/assets/cmu_small_region_tiles.npz
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathbench._io import atomic_write

TILE_SIZE = 224


def tissue_fraction(tile: np.ndarray) -> float:
    """Fraction of pixels that look like stained tissue: coloured and not bright background."""
    rgb = tile.astype(np.float32)
    brightest = rgb.max(axis=-1)
    saturation = (brightest - rgb.min(axis=-1)) / np.maximum(brightest, 1.0)
    return float(((saturation > 0.08) & (rgb.mean(axis=-1) < 225.0)).mean())


def cut_tiles(image: np.ndarray, min_tissue: float) -> list[tuple[int, int, float, np.ndarray]]:
    """Return ``(col, row, tissue_fraction, tile)`` for every grid tile with enough tissue."""
    kept = []
    n_rows, n_cols = image.shape[0] // TILE_SIZE, image.shape[1] // TILE_SIZE
    for row in range(n_rows):
        for col in range(n_cols):
            tile = image[row * TILE_SIZE : (row + 1) * TILE_SIZE, col * TILE_SIZE : (col + 1) * TILE_SIZE]
            fraction = tissue_fraction(tile)
            if fraction >= min_tissue:
                kept.append((col, row, fraction, np.ascontiguousarray(tile)))
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("svs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--min-tissue", type=float, default=0.5)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()

    image = tifffile.imread(args.svs, key=0)
    tiles = cut_tiles(image, args.min_tissue)
    blobs = []
    for _, _, _, tile in tiles:
        buffer = io.BytesIO()
        Image.fromarray(tile).save(buffer, format="JPEG", quality=args.quality)
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    with atomic_write(args.out, "wb") as handle:
        np.savez(
            handle,
            jpeg=np.concatenate(blobs),
            offsets=offsets,
            col=np.array([t[0] for t in tiles], dtype=np.int64),
            row=np.array([t[1] for t in tiles], dtype=np.int64),
            tissue_fraction=np.array([t[2] for t in tiles], dtype=np.float32),
        )
    print(f"wrote {len(tiles)} tiles ({offsets[-1] / 1e6:.2f} MB) to {args.out}")


if __name__ == "__main__":
    main()
