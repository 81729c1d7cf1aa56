"""What it costs to identify a PLISM parquet slide: footer identity versus hashing the file.

Builds one slide file in ``owkin/plism-dataset-tiles``' schema (``png`` as ``{bytes, path}``
structs, 1,024 rows per row group, as ``materialise_slides`` writes it) from 224 x 224 PNG
tiles cut from a real H&E slide, then times, on the same file:

- ``parquet_file_identity`` (name, size, modification time, footer sha256), what the
  fingerprint of a slide uses;
- a full sha256 of the file (what a per-file content hash would cost on every run);
- indexing the folder with ``open_parquet_folder`` (reads the id columns and the identities);
- reading and decoding every tile through the slide dataset, the work a feature extraction
  does anyway, for scale.

The file is read once before timing, so the numbers are for a file in the page cache; a
cold read adds the disk's time to the full hash and the decode, not to the footer.

    .venv/bin/python benchmarks/plism_fingerprint.py                 # 4,096 tiles
    .venv/bin/python benchmarks/plism_fingerprint.py --tiles 16278   # one full PLISM slide
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pathbench.data.parquet import parquet_file_identity
from pathbench.data.plism import NUM_TILES_PER_SLIDE, PARQUET_COLUMNS, open_parquet_folder

SLIDE = "GMH_S60_to_GMH_S60"


def real_tiles(svs: Path, n: int, size: int = 224, seed: int = 0) -> list[bytes]:
    """``n`` PNG tiles cut at random positions of the slide's full-resolution level."""
    import tifffile

    level = tifffile.imread(svs, key=0)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, level.shape[0] - size, n)
    cols = rng.integers(0, level.shape[1] - size, n)
    tiles = []
    for r, c in zip(rows, cols, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(level[r : r + size, c : c + size]).save(buffer, format="PNG")
        tiles.append(buffer.getvalue())
    return tiles


def write_slide(path: Path, tiles: list[bytes]) -> None:
    tile_ids = [f"tile_16_{224 * (i % 128)}_{224 * (i // 128)}" for i in range(len(tiles))]
    columns = {
        "__key__": [f"{SLIDE}/{t}" for t in tile_ids],
        "stainer": ["GMH"] * len(tiles),
        "scanner": ["S60"] * len(tiles),
        "slide_id": [f"{SLIDE}.tif"] * len(tiles),
        "tile_id": tile_ids,
    }
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({**{k: pa.array(v, pa.string()) for k, v in columns.items()},
                      "png": pa.array([{"bytes": t, "path": None} for t in tiles], struct)})
    assert table.column_names == list(PARQUET_COLUMNS)
    pq.write_table(table, path, row_group_size=1024)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--svs", type=Path, default=Path("/work/shared/data/real-he/CMU-1-Small-Region.svs"))
    parser.add_argument("--tiles", type=int, default=4096)
    parser.add_argument("--decode-tiles", type=int, default=1024, help="tiles decoded for the scale figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        path = folder / f"{SLIDE}.parquet"
        write_slide(path, real_tiles(args.svs, args.tiles))
        size_mb = path.stat().st_size / 1e6
        print(f"slide file: {args.tiles} PNG tiles of 224 x 224, {size_mb:.1f} MB "
              f"({size_mb / args.tiles * 1e3:.1f} kB per tile), built in {time.perf_counter() - start:.0f} s")
        sha256_file(path)  # into the page cache
        identity_s = best_of(20, lambda: parquet_file_identity(path))
        hash_s = best_of(3, lambda: sha256_file(path))
        index_s = best_of(3, lambda: open_parquet_folder(folder))
        dataset = open_parquet_folder(folder)[SLIDE]
        n_decode = min(args.decode_tiles, len(dataset))
        decode_s = best_of(1, lambda: [dataset[i] for i in range(n_decode)]) * len(dataset) / n_decode
        scale = NUM_TILES_PER_SLIDE / args.tiles
        print(f"footer identity (name, size, mtime, footer sha256): {identity_s * 1e3:8.3f} ms per file")
        print(f"full sha256 of the file:                            {hash_s * 1e3:8.1f} ms per file "
              f"({size_mb / hash_s:.0f} MB/s)")
        print(f"open_parquet_folder (ids + identity):               {index_s * 1e3:8.1f} ms")
        print(f"read + decode every tile:                           {decode_s * 1e3:8.1f} ms "
              f"(from {n_decode} tiles)")
        print(f"for 91 PLISM slides of {NUM_TILES_PER_SLIDE} tiles (x{scale:.2f} per slide): footer identity "
              f"{91 * identity_s * 1e3:.1f} ms, full hash {91 * hash_s * scale:.0f} s, "
              f"decode {91 * decode_s * scale:.0f} s")


if __name__ == "__main__":
    main()
