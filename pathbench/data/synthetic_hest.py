"""A small synthetic dataset in the hest-bench layout, for tests and the demo.

Each spot has three hidden tissue variables in [0, 1] that vary smoothly over its slide:
nuclear density, eosin intensity and the fraction of empty (fat-like) space. The tile
image is drawn from them (purple nuclei on a pink background with white holes) and the
raw counts of each gene follow a Poisson law whose log-mean is a linear function of the
same variables. Expression therefore really depends on what the tile shows, and an
extractor that sees the tiles better predicts it better.

The layout is exactly hest-bench's (see :mod:`pathbench.data.hest`): per task
``splits/{train,test}_<i>.csv``, ``patches/<sample_id>.h5`` (``img`` (N, 224, 224, 3)
uint8, ``barcode`` (N,) bytes, ``coords`` (N, 2) int64), ``adata/<sample_id>.h5ad``
(raw counts, spots in an order different from the patch file, a few spots without a
patch, more genes than the 50 of the benchmark) and ``var_50genes.json``. Everything is
a deterministic function of the seed.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pathbench._io import atomic_directory, read_json, write_csv, write_json

GENERATOR_VERSION = 2
TILE_SIZE = 224
N_BENCH_GENES = 50


@dataclass(frozen=True)
class SyntheticTask:
    """One synthetic task: its samples and its folds (test sample indices per fold)."""

    name: str
    n_samples: int
    test_folds: tuple[tuple[int, ...], ...]


# 7 samples, 5 folds, 336 spots with the defaults: a few seconds of tiny-ViT extraction.
DEFAULT_TASKS: tuple[SyntheticTask, ...] = (
    SyntheticTask("SYN_A", 3, ((0,), (1,), (2,))),
    SyntheticTask("SYN_B", 4, ((0, 1), (2, 3))),
)


def _barcodes(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ACGT"))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        code = "".join(rng.choice(letters, 16)) + "-1"
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def _smooth_field(rng: np.random.Generator, size: int, n_fields: int, cells: int = 4) -> np.ndarray:
    """(n_fields, size, size) smooth values in [0, 1]: bilinear upsampling of a coarse grid."""
    coarse = rng.random((n_fields, cells + 1, cells + 1))
    pos = np.linspace(0, cells, size)
    i0 = np.minimum(np.floor(pos).astype(int), cells - 1)
    f = pos - i0
    rows = coarse[:, i0, :] * (1 - f)[None, :, None] + coarse[:, i0 + 1, :] * f[None, :, None]
    return rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]


_PINK_LIGHT = np.array([236.0, 190.0, 214.0])
_PINK_DARK = np.array([200.0, 90.0, 150.0])
_NUCLEUS = np.array([70.0, 40.0, 120.0])
_WHITE = np.array([246.0, 244.0, 248.0])
# nucleus footprints: discs of radius 2.5 to 6.5 px in a 15 x 15 window
_DISCS = [np.add.outer(np.arange(-7, 8) ** 2, np.arange(-7, 8) ** 2) <= r**2 for r in np.linspace(2.5, 6.5, 9)]


def render_tile(latent: np.ndarray, rng: np.random.Generator, size: int = TILE_SIZE) -> np.ndarray:
    """Draw one tile from its hidden variables.

    latent: (3,) float in [0, 1]: nuclear density, eosin intensity, empty fraction.
    Returns (size, size, 3) uint8 RGB.
    """
    density, eosin, empty = (float(v) for v in latent)
    base = _PINK_LIGHT + (_PINK_DARK - _PINK_LIGHT) * eosin
    image = np.broadcast_to(base.astype(np.float32), (size, size, 3)).copy()
    holes = _smooth_field(rng, size, 1, cells=6)[0]
    threshold = np.quantile(holes, 1.0 - 0.6 * empty) if empty > 0.02 else np.inf
    image[holes > threshold] = _WHITE
    n_nuclei = int(round(8 + 140 * density))
    centres = rng.integers(7, size - 7, (n_nuclei, 2))
    radii = rng.integers(0, len(_DISCS), n_nuclei)
    colours = _NUCLEUS + rng.normal(0, 12, (n_nuclei, 3))
    for (cy, cx), r, colour in zip(centres, radii, colours, strict=True):
        image[cy - 7 : cy + 8, cx - 7 : cx + 8][_DISCS[r]] = colour
    image += rng.standard_normal(image.shape, dtype=np.float32) * 6
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_sample(task_dir: Path, sample_id: str, rng: np.random.Generator, spots: int,
                  gene_names: list[str], gene_base: np.ndarray, gene_weights: np.ndarray) -> None:
    side = int(np.ceil(np.sqrt(spots)))
    field = _smooth_field(rng, side, 3, cells=2)                     # (3, side, side)
    grid = [(r, c) for r in range(side) for c in range(side)][:spots]
    latent = np.stack([field[:, r, c] for r, c in grid])             # (spots, 3)
    barcodes = _barcodes(rng, spots + 4)                             # 4 spots without a patch
    images = np.stack([render_tile(z, rng) for z in latent])
    coords = np.array([(c * 2 * TILE_SIZE, r * 2 * TILE_SIZE) for r, c in grid], dtype=np.int64)

    extra_latent = rng.random((4, 3))
    all_latent = np.concatenate([latent, extra_latent])
    log_mean = gene_base[None, :] + (all_latent - 0.5) @ gene_weights.T
    counts = rng.poisson(np.exp(log_mean)).astype(np.float32)       # (spots + 4, n_genes) raw counts

    with h5py.File(task_dir / "patches" / f"{sample_id}.h5", "w") as handle:
        handle.create_dataset("img", data=images)
        handle.create_dataset("barcode", data=np.array([b.encode() for b in barcodes[:spots]], dtype="S"))
        handle.create_dataset("coords", data=coords)

    import anndata  # slow import, only when writing

    order = rng.permutation(len(barcodes))                           # h5ad spots in another order
    adata = anndata.AnnData(
        X=counts[order],
        obs=pd.DataFrame(index=pd.Index([barcodes[i] for i in order], name="barcode")),
        var=pd.DataFrame(index=pd.Index(gene_names, name="gene")),
    )
    adata.write_h5ad(task_dir / "adata" / f"{sample_id}.h5ad")


def _write_task(task_dir: Path, task: SyntheticTask, rng: np.random.Generator, spots_per_sample: int,
                n_genes_total: int) -> None:
    for sub in ("splits", "patches", "adata"):
        (task_dir / sub).mkdir(parents=True, exist_ok=True)
    gene_names = [f"GENE{g:03d}" for g in range(n_genes_total)]
    gene_base = rng.uniform(0.5, 3.0, n_genes_total)
    gene_weights = rng.normal(0, 1.6, (n_genes_total, 3))
    # genes past the first 50 of the h5ad carry no signal; the benchmark list is a shuffled subset
    gene_weights[N_BENCH_GENES:] = 0.0
    bench_genes = [gene_names[i] for i in rng.permutation(N_BENCH_GENES)]
    sample_ids = [f"{task.name}_S{i}" for i in range(task.n_samples)]
    for sample_id in sample_ids:
        _write_sample(task_dir, sample_id, rng, spots_per_sample, gene_names, gene_base, gene_weights)
    for fold, test in enumerate(task.test_folds):
        for split, members in (("train", [i for i in range(task.n_samples) if i not in test]), ("test", list(test))):
            frame = pd.DataFrame({
                "sample_id": [sample_ids[i] for i in members],
                "patches_path": [f"patches/{sample_ids[i]}.h5" for i in members],
                "expr_path": [f"adata/{sample_ids[i]}.h5ad" for i in members],
            })
            write_csv(task_dir / "splits" / f"{split}_{fold}.csv", frame)
    write_json(task_dir / "var_50genes.json", {"genes": bench_genes})


def make_synthetic_hest(
    root: str | os.PathLike,
    seed: int = 0,
    tasks: tuple[SyntheticTask, ...] = DEFAULT_TASKS,
    spots_per_sample: int = 48,
    n_genes_total: int = 60,
) -> Path:
    """Write a synthetic hest-bench dataset under ``root`` and return ``root``.

    Deterministic in all its arguments. Each task folder is written beside its final
    place and renamed into it when complete; a task already there with the same
    parameters is kept, so calling this twice costs nothing the second time.
    """
    if n_genes_total < N_BENCH_GENES:
        raise ValueError(f"n_genes_total must be at least {N_BENCH_GENES}; got {n_genes_total}.")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        params = {"generator_version": GENERATOR_VERSION, "seed": seed, "task": task.name,
                  "n_samples": task.n_samples, "test_folds": [list(f) for f in task.test_folds],
                  "spots_per_sample": spots_per_sample, "n_genes_total": n_genes_total}
        task_dir = root / task.name
        marker = task_dir / "synthetic.json"
        if marker.is_file() and read_json(marker) == params:
            continue
        # seeded by the task's name, so a task is the same whichever other tasks are written
        rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
        with atomic_directory(task_dir) as staging:
            _write_task(staging, task, rng, spots_per_sample, n_genes_total)
            write_json(staging / "synthetic.json", params)
    return root


def describe(root: str | os.PathLike) -> str:
    """One line per task: samples, folds and spots, for logs."""
    lines = []
    for task_dir in sorted(Path(root).iterdir()):
        if (task_dir / "var_50genes.json").is_file():
            n_samples = len(list((task_dir / "patches").glob("*.h5")))
            n_folds = len(list((task_dir / "splits").glob("test_*.csv")))
            genes = json.loads((task_dir / "var_50genes.json").read_text())["genes"]
            lines.append(f"{task_dir.name}: {n_samples} samples, {n_folds} folds, {len(genes)} genes")
    return "\n".join(lines)
