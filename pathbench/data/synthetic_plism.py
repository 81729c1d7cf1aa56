"""A small PLISM-like demo dataset, simulated from real H&E tissue. It is NOT PLISM.

PLISM shows the same tissue under 13 stainings and 7 scanners. This module imitates that
structure so the whole PLISM pipeline can run offline in seconds: it takes the real tissue
tiles shipped in ``pathbench/data/assets/cmu_small_region_tiles.npz`` (cut from the CC0 slide
``CMU-1-Small-Region.svs``, see the NOTICE there) and renders each "slide" as the same tiles
after

- a simulated staining: the tile is unmixed into haematoxylin / eosin / residual
  concentrations (Ruifrok-Johnston colour deconvolution, written here with numpy), the
  stain vectors are perturbed and the concentrations rescaled, then the tile is
  recomposed; a shift of a few pixels stands in for the different tissue cut of each
  staining;
- a simulated scanner: Gaussian blur, gamma, a per-channel colour cast, sensor noise and
  JPEG compression.

Every parameter is drawn from a generator seeded by ``(seed, staining code)`` and
``(seed, scanner code)``, so the data is identical from run to run and machine to machine
(up to the PIL build's JPEG and PNG encoders). Slides use real PLISM staining and scanner
codes so pair groups (inter-scanner, inter-staining, both) work as on PLISM. The output is
written in the schema of ``owkin/plism-dataset-tiles`` (columns ``__key__``, ``stainer``,
``scanner``, ``slide_id``, ``tile_id``, ``png``), so the same reader reads both.

Numbers measured on this data say how a model reacts to these simulated perturbations;
they are not PLISM results and must not be compared with published PLISM numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from pathbench._io import atomic_write, write_json
from pathbench.data.images import decode_image
from pathbench.data.plism import HUB_TILES_REPO, SCANNERS, STAININGS, slide_id_for
from pathbench.settings import cache_root

DEMO_STAININGS: tuple[str, ...] = ("GMH", "GIV", "HR")
DEMO_SCANNERS: tuple[str, ...] = ("S60", "AT2", "GT450")
DEMO_N_TILES: int | None = None  # None: every shipped tile (44)
GENERATOR_VERSION = 1
TILE_SIZE = 224
_ASSET = "cmu_small_region_tiles.npz"

# Ruifrok & Johnston (2001) optical-density vectors of haematoxylin, eosin and DAB; the
# rows are unit-normalised below. In H&E the third channel holds the residual.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
    dtype=np.float64,
)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)


def load_demo_tiles() -> tuple[np.ndarray, np.ndarray]:
    """The shipped real tissue tiles: ``(n, 224, 224, 3) uint8`` and their grid ``(n, 2) int64`` (col, row)."""
    with resources.files("pathbench.data").joinpath("assets").joinpath(_ASSET).open("rb") as handle:
        data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        blob, offsets = data["jpeg"], data["offsets"]
        grid = np.stack([data["col"], data["row"]], axis=1).astype(np.int64)
    tiles = np.stack(
        [
            decode_image(blob[offsets[i] : offsets[i + 1]].tobytes(), f"demo tile {i} of {_ASSET}")
            for i in range(len(offsets) - 1)
        ]
    )
    return tiles, grid


_OD_LUT = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)


def rgb_to_hed(rgb: np.ndarray, stain_matrix: np.ndarray = _RGB_FROM_HED) -> np.ndarray:
    """``(..., 3) uint8`` RGB -> ``(..., 3) float32`` stain concentrations (optical-density units)."""
    optical_density = _OD_LUT.astype(np.float32)[rgb]
    return optical_density @ np.linalg.inv(stain_matrix).astype(np.float32)


def hed_to_rgb(hed: np.ndarray, stain_matrix: np.ndarray = _RGB_FROM_HED) -> np.ndarray:
    """Inverse of :func:`rgb_to_hed`: ``(..., 3)`` concentrations -> ``(..., 3) uint8`` RGB."""
    optical_density = hed.astype(np.float32) @ stain_matrix.astype(np.float32)
    rgb = 256.0 * np.exp(-optical_density) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator keyed by the seed and names, stable across processes (no ``hash()``)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(n.encode()) for n in names)])


def staining_parameters(staining: str, seed: int = 0) -> dict[str, Any]:
    """The simulated staining of one code: stain matrix, concentration scale/shift, tissue shift."""
    rng = _rng(seed, "staining", staining)
    matrix = _RGB_FROM_HED + rng.normal(0.0, 0.06, size=(3, 3))
    matrix = np.abs(matrix) / np.linalg.norm(matrix, axis=1, keepdims=True)
    return {
        "stain_matrix": matrix,
        "scale": rng.uniform(0.7, 1.3, size=3),
        "shift": rng.uniform(-0.05, 0.05, size=3),
        "offset": rng.integers(-3, 4, size=2),
    }


def scanner_parameters(scanner: str, seed: int = 0) -> dict[str, Any]:
    """The simulated scanner of one code: blur, gamma, colour cast, noise and JPEG quality."""
    rng = _rng(seed, "scanner", scanner)
    return {
        "blur_sigma": float(rng.uniform(0.2, 1.2)),
        "gamma": float(rng.uniform(0.8, 1.25)),
        "cast": rng.uniform(0.92, 1.08, size=3),
        "noise_sd": float(rng.uniform(0.5, 3.0)),
        "jpeg_quality": int(rng.integers(55, 92)),
    }


def apply_staining(tile: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Re-stain one ``(H, W, 3) uint8`` tile: unmix, rescale concentrations, remix with perturbed stains."""
    dy, dx = (int(v) for v in params["offset"])
    pad = max(abs(dy), abs(dx))
    if pad:
        padded = np.pad(tile, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        tile = padded[pad + dy : pad + dy + tile.shape[0], pad + dx : pad + dx + tile.shape[1]]
    concentrations = rgb_to_hed(tile)
    concentrations = concentrations * params["scale"] + params["shift"]
    return hed_to_rgb(concentrations, params["stain_matrix"])


def apply_scanner(tile: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Scan one ``(H, W, 3) uint8`` tile: blur, gamma, colour cast, noise, JPEG round trip."""
    blurred = np.asarray(Image.fromarray(tile).filter(ImageFilter.GaussianBlur(params["blur_sigma"])))
    # gamma and colour cast act per value, so one 256-entry table per channel does both
    levels = (np.arange(256, dtype=np.float64) / 255.0) ** params["gamma"]
    tables = (levels[None, :] * np.asarray(params["cast"])[:, None] * 255.0).astype(np.float32)
    values = np.stack([tables[c][blurred[..., c]] for c in range(3)], axis=-1)
    values += rng.standard_normal(values.shape, dtype=np.float32) * np.float32(params["noise_sd"])
    scanned = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(scanned).save(buffer, format="JPEG", quality=params["jpeg_quality"])
    return decode_image(buffer.getvalue(), "a simulated scan")


def stain_tiles(tiles: np.ndarray, staining: str, seed: int = 0) -> np.ndarray:
    """Every tile after the simulated staining ``staining``: ``(n, H, W, 3) uint8``."""
    params = staining_parameters(staining, seed)
    return np.stack([apply_staining(tile, params) for tile in tiles])


def scan_tiles(stained: np.ndarray, staining: str, scanner: str, seed: int = 0) -> np.ndarray:
    """Already stained tiles after the simulated scanner ``scanner``: ``(n, H, W, 3) uint8``."""
    params = scanner_parameters(scanner, seed)
    noise = _rng(seed, "noise", staining, scanner)
    return np.stack([apply_scanner(tile, params, noise) for tile in stained])


def render_slide(tiles: np.ndarray, staining: str, scanner: str, seed: int = 0) -> np.ndarray:
    """The same tissue as slide ``<staining>_<scanner>``: ``(n, H, W, 3) uint8``, deterministic."""
    return scan_tiles(stain_tiles(tiles, staining, seed), staining, scanner, seed)


def generator_key(stainings: Sequence[str], scanners: Sequence[str], n_tiles: int | None, seed: int) -> str:
    """Content key of a generated dataset: changes whenever its pixels could change."""
    asset = resources.files("pathbench.data").joinpath("assets").joinpath(_ASSET).read_bytes()
    payload = {
        "version": GENERATOR_VERSION,
        "stainings": list(stainings),
        "scanners": list(scanners),
        "n_tiles": n_tiles,
        "seed": int(seed),
        "asset_sha256": hashlib.sha256(asset).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def write_synthetic_plism(
    out_dir: str | os.PathLike,
    stainings: Sequence[str] = DEMO_STAININGS,
    scanners: Sequence[str] = DEMO_SCANNERS,
    n_tiles: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write the simulated dataset to ``out_dir/data/*.parquet``, one shard per slide.

    ``n_tiles`` keeps the first tiles of the shipped set (``None``: all of them). The shards
    follow ``owkin/plism-dataset-tiles``: ``png`` is the hub's image struct ``{bytes, path}``
    holding PNG bytes, rows are grouped by slide and stored in (row, col) grid order, which
    is not the canonical (x, y) order, as readers must sort. ``synthetic_plism.json`` is
    written last and marks the folder complete. Returns ``out_dir``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    unknown = [s for s in stainings if s not in STAININGS] + [s for s in scanners if s not in SCANNERS]
    if unknown:
        raise ValueError(f"unknown PLISM codes {unknown}: stainings {STAININGS}, scanners {SCANNERS}")
    out_dir = Path(out_dir)
    tiles, grid = load_demo_tiles()
    if n_tiles is not None:
        tiles, grid = tiles[:n_tiles], grid[:n_tiles]
    storage_order = np.lexsort((grid[:, 0], grid[:, 1]))  # by row, then col
    tile_ids = [f"tile_0_{int(col)}_{int(row)}" for col, row in grid]
    features = {
        "__key__": {"dtype": "string", "_type": "Value"},
        "stainer": {"dtype": "string", "_type": "Value"},
        "scanner": {"dtype": "string", "_type": "Value"},
        "slide_id": {"dtype": "string", "_type": "Value"},
        "tile_id": {"dtype": "string", "_type": "Value"},
        "png": {"_type": "Image"},
    }
    png_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [(name, pa.string()) for name in ("__key__", "stainer", "scanner", "slide_id", "tile_id")]
        + [("png", png_type)],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    combos = [(st, sc) for st in stainings for sc in scanners]
    bar = tqdm(total=len(combos), desc="simulating PLISM slides", unit="slide", disable=not progress)
    index = 0
    for staining in stainings:
        stained = stain_tiles(tiles, staining, seed)
        for scanner in scanners:
            slide_id = f"{slide_id_for(staining, scanner)}.tif"
            rendered = scan_tiles(stained, staining, scanner, seed)
            pngs = []
            for i in storage_order:
                buffer = io.BytesIO()
                Image.fromarray(rendered[i]).save(buffer, format="PNG", compress_level=1)
                pngs.append({"bytes": buffer.getvalue(), "path": None})
            ids = [tile_ids[i] for i in storage_order]
            table = pa.table(
                {
                    "__key__": [f"{slide_id}/{t}" for t in ids],
                    "stainer": [staining] * len(ids),
                    "scanner": [scanner] * len(ids),
                    "slide_id": [slide_id] * len(ids),
                    "tile_id": ids,
                    "png": pa.array(pngs, type=png_type),
                },
                schema=schema,
            )
            shard = out_dir / "data" / f"train-{index:05d}-of-{len(combos):05d}.parquet"
            with atomic_write(shard, "wb") as handle:
                pq.write_table(table, handle, row_group_size=16)
            index += 1
            bar.update(1)
    bar.close()
    write_json(
        out_dir / "synthetic_plism.json",
        {
            "key": generator_key(stainings, scanners, n_tiles, seed),
            "what": "simulated PLISM-like demo data built from real H&E tissue; NOT the PLISM dataset",
            "schema_of": HUB_TILES_REPO,
            "stainings": list(stainings),
            "scanners": list(scanners),
            "n_tiles": int(len(tiles)),
            "seed": int(seed),
            "generator_version": GENERATOR_VERSION,
        },
    )
    return out_dir


def ensure_synthetic_plism(
    cache_dir: str | os.PathLike | None = None,
    stainings: Sequence[str] | None = None,
    scanners: Sequence[str] | None = None,
    n_tiles: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """The demo dataset in the pathbench cache, generated on first use (a few seconds).

    ``None`` means the demo defaults :data:`DEMO_STAININGS` x :data:`DEMO_SCANNERS` with
    every shipped tile (:data:`DEMO_N_TILES`).
    """
    stainings = tuple(DEMO_STAININGS if stainings is None else stainings)
    scanners = tuple(DEMO_SCANNERS if scanners is None else scanners)
    n_tiles = DEMO_N_TILES if n_tiles is None else n_tiles
    key = generator_key(stainings, scanners, n_tiles, seed)
    out_dir = cache_root(cache_dir) / "plism" / f"synthetic-{key}"
    if not (out_dir / "synthetic_plism.json").is_file():
        write_synthetic_plism(out_dir, stainings, scanners, n_tiles, seed, progress)
    return out_dir
