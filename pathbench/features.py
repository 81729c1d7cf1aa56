"""Batched, resumable, content-keyed feature extraction.

Layout of one cache entry, ``<cache>/features/<key[:2]>/<key>/``:

- ``meta.json``: what the key stands for (extractor identity, dataset, item count);
- ``shard-00000.npy`` ...: float32 ``(rows, dim)`` blocks of ``shard_size`` items, each
  written atomically; a run killed at any moment loses at most the shard in flight;
- ``features.npy`` and ``manifest.json``: written when every shard exists (the manifest
  last), after which the shards are removed. An entry with a manifest is complete; an
  identical request then reads it back and runs no model at all.

Under ``torchrun`` (``torch.distributed`` initialised) rank ``r`` of ``w`` extracts shards
``r, r + w, ...``; shards are cut and batched the same way whatever the world size, so
the result is the same as a single-process run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pathbench import _io
from pathbench.data.base import ids_digest
from pathbench.errors import DataError, PathbenchError
from pathbench.extractors.base import Extractor, resize_crop
from pathbench.extractors.spec import ModelSpec
from pathbench.settings import cache_root

FORMAT_VERSION = 1
_SHARD = re.compile(r"^shard-(\d{5,})\.npy$")


@dataclasses.dataclass
class Features:
    """Embeddings of one dataset, read back from the cache.

    Attributes:
        item_ids: the dataset's item ids, in order.
        key: the cache key.
        path: the cache entry's folder.
    """

    item_ids: list[str]
    key: str
    path: Path
    computed: int = 0
    seconds: float = 0.0

    @property
    def tiles_per_s(self) -> float | None:
        """Throughput of the extraction that filled this entry: this call's when it computed
        anything, else the one recorded in the entry's manifest (None when unknown)."""
        if self.computed and self.seconds > 0:
            return self.computed / self.seconds
        recorded = _io.read_json(self.path / "manifest.json").get("tiles_per_s")
        return float(recorded) if recorded else None

    @cached_property
    def array(self) -> np.ndarray:
        """``(n_items, dim)`` float32, memory-mapped read-only from ``features.npy``."""
        return np.load(self.path / "features.npy", mmap_mode="r")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = np.asarray(self.array)
        return array.astype(dtype) if dtype is not None else array

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def feature_key(extractor: Extractor, dataset: Any, pooling: str, shard_size: int) -> tuple[str, dict[str, Any]]:
    """The cache key of ``dataset`` embedded by ``extractor`` with ``pooling``, and what it stands for."""
    description = {
        "format": FORMAT_VERSION,
        "extractor": extractor.identity(pooling),
        "dataset": {
            "fingerprint": _dataset_fingerprint(dataset),
            "n_items": len(dataset.item_ids),
            "item_ids_sha256": ids_digest(dataset.item_ids),
        },
        "shard_size": shard_size,
    }
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return key, description


def extract_features(
    extractor: Extractor,
    dataset: Any,
    *,
    pooling: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    shard_size: int = 1024,
    progress: bool = True,
    desc: str | None = None,
) -> Features:
    """Embed every item of ``dataset`` with ``extractor``, through the cache.

    Args:
        extractor: a loaded :class:`Extractor`.
        dataset: a reader with ``item_ids``, ``fingerprint`` and ``__getitem__ -> (H, W, 3) uint8``.
        pooling: ``cls``, ``mean`` or ``cls+mean`` (default: the extractor's).
        cache_dir: cache root (default :func:`cache_root`).
        batch_size: tiles per forward pass; ``shard_size`` must be a multiple of it.
        num_workers: DataLoader worker processes decoding tiles (default: 0 on the CPU,
            where workers would compete with the model for cores; else up to 8).
        shard_size: items per shard file (the unit of resumption and of distribution).
        progress: show a progress bar with tiles/s.

    Returns:
        :class:`Features` with ``array`` of shape ``(len(dataset), extractor.output_dim(pooling))``.
    """
    pooling = pooling or extractor.pooling
    if batch_size < 1 or shard_size < batch_size or shard_size % batch_size:
        raise PathbenchError(
            f"shard_size ({shard_size}) must be a positive multiple of batch_size ({batch_size}) so that "
            "batches never straddle shards (this is what makes resumed and distributed runs identical)."
        )
    if len(dataset.item_ids) != len(dataset):
        raise DataError(f"dataset has {len(dataset)} items but {len(dataset.item_ids)} item ids.")
    if len(set(dataset.item_ids)) != len(dataset.item_ids):
        raise DataError("dataset item ids are not unique; each item needs its own id.")
    key, description = feature_key(extractor, dataset, pooling, shard_size)
    entry = cache_root(cache_dir) / "features" / key[:2] / key
    if (entry / "manifest.json").is_file():
        return _read_complete(entry, key, dataset.item_ids)
    entry.mkdir(parents=True, exist_ok=True)
    if not (entry / "meta.json").is_file():
        _io.write_json(entry / "meta.json", description)

    n_items = len(dataset)
    n_shards = max(1, -(-n_items // shard_size))
    rank, world = _rank_and_world()
    started = time.perf_counter()
    dim = extractor.output_dim(pooling)
    mine = [s for s in range(n_shards) if s % world == rank]
    pending = [s for s in mine if not _valid_shard(entry, s, _shard_rows(s, n_items, shard_size), dim)]
    done_items = sum(_shard_rows(s, n_items, shard_size) for s in mine if s not in pending)
    if pending:
        _run_shards(
            extractor, dataset, entry, pending, pooling=pooling, batch_size=batch_size, shard_size=shard_size,
            num_workers=num_workers, progress=progress, done_items=done_items,
            total_items=sum(_shard_rows(s, n_items, shard_size) for s in mine),
            desc=desc or f"{extractor.name} [{pooling}]",
        )
    computed = sum(_shard_rows(s, n_items, shard_size) for s in pending)
    seconds = time.perf_counter() - started
    _barrier()
    if rank == 0:
        rate = computed / seconds if computed and seconds > 0 else None
        _finalise(entry, n_shards, n_items, shard_size, dim, dataset.item_ids, tiles_per_s=rate)
    _barrier()
    features = _read_complete(entry, key, dataset.item_ids)
    features.computed, features.seconds = computed, seconds
    return features


class _TileCollate:
    """Runs in DataLoader workers: HWC uint8 tiles -> one ``(B, 3, crop, crop)`` uint8 batch."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def __call__(self, tiles: Sequence[np.ndarray]) -> torch.Tensor:
        first = tiles[0].shape
        if all(t.shape == first for t in tiles) and first[:2] == (self.spec.crop, self.spec.crop):
            batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
            return resize_crop(batch, self.spec)
        # torch.tensor copies: readers may hand out read-only arrays (PIL views, memory maps).
        return torch.stack([resize_crop(torch.tensor(t).permute(2, 0, 1), self.spec) for t in tiles])


def _shard_batches(shards: Sequence[int], n_items: int, shard_size: int, batch_size: int) -> Iterator[list[int]]:
    for shard in shards:
        start = shard * shard_size
        stop = min(start + shard_size, n_items)
        for batch_start in range(start, stop, batch_size):
            yield list(range(batch_start, min(batch_start + batch_size, stop)))


def _run_shards(
    extractor: Extractor,
    dataset: Any,
    entry: Path,
    shards: list[int],
    *,
    pooling: str,
    batch_size: int,
    shard_size: int,
    num_workers: int | None,
    progress: bool,
    done_items: int,
    total_items: int,
    desc: str,
) -> None:
    from tqdm.auto import tqdm

    n_items = len(dataset)
    if num_workers is None:
        num_workers = 0 if extractor.device.type == "cpu" else min(8, os.cpu_count() or 1)
    loader = DataLoader(
        dataset,
        batch_sampler=list(_shard_batches(shards, n_items, shard_size, batch_size)),
        num_workers=num_workers,
        collate_fn=_TileCollate(extractor.spec),
        pin_memory=extractor.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
    )
    bar = tqdm(total=total_items, initial=done_items, unit="tile", desc=desc, disable=not progress, smoothing=0.1)
    shard_iter = iter(shards)
    shard = next(shard_iter)
    rows_needed = _shard_rows(shard, n_items, shard_size)
    parts: list[np.ndarray] = []
    with bar:
        for batch in loader:
            pixels = extractor.preprocess(batch)
            embeddings = extractor.embed_pixels(pixels, pooling).cpu().numpy()
            if not np.isfinite(embeddings).all():
                raise DataError(
                    f"{extractor.name} produced NaN or infinite embeddings in shard {shard} of {entry}; "
                    "try --precision fp32, or check the weights."
                )
            parts.append(embeddings)
            rows_needed -= len(embeddings)
            bar.update(len(embeddings))
            if rows_needed == 0:
                _io.save_npy(entry / f"shard-{shard:05d}.npy", np.concatenate(parts))
                parts = []
                shard = next(shard_iter, -1)
                rows_needed = _shard_rows(shard, n_items, shard_size) if shard >= 0 else 0


def _shard_rows(shard: int, n_items: int, shard_size: int) -> int:
    return max(0, min(shard_size, n_items - shard * shard_size))


def _valid_shard(entry: Path, shard: int, rows: int, dim: int) -> bool:
    path = entry / f"shard-{shard:05d}.npy"
    if not path.is_file():
        return False
    try:
        array = np.load(path, mmap_mode="r")
        ok = array.shape == (rows, dim) and array.dtype == np.float32
    except (ValueError, OSError):
        ok = False
    if not ok:  # never trust a shard of the wrong shape: recompute it
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return ok


def _finalise(entry: Path, n_shards: int, n_items: int, shard_size: int, dim: int, item_ids: list[str],
              tiles_per_s: float | None = None) -> None:
    """Join the shards into ``features.npy`` (streamed, bounded memory), then write the manifest."""
    if (entry / "manifest.json").is_file():
        return
    missing = [s for s in range(n_shards) if not (entry / f"shard-{s:05d}.npy").is_file()]
    if missing:
        raise PathbenchError(f"feature cache {entry} is missing shards {missing[:5]} after extraction.")
    tmp = entry / f".features.npy.{os.getpid()}.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_items, dim))
    for shard in range(n_shards):
        start = shard * shard_size
        block = np.load(entry / f"shard-{shard:05d}.npy")
        out[start : start + len(block)] = block
    out.flush()
    del out
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, entry / "features.npy")
    _io.write_json(entry / "item_ids.json", item_ids)
    _io.write_json(
        entry / "manifest.json",
        {"format": FORMAT_VERSION, "n_items": n_items, "dim": dim, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "tiles_per_s": tiles_per_s},
    )
    for shard in range(n_shards):
        with contextlib.suppress(FileNotFoundError):
            (entry / f"shard-{shard:05d}.npy").unlink()


def _read_complete(entry: Path, key: str, item_ids: list[str]) -> Features:
    manifest = _io.read_json(entry / "manifest.json")
    features = Features(item_ids=list(item_ids), key=key, path=entry)
    if features.array.shape != (manifest["n_items"], manifest["dim"]):
        raise PathbenchError(
            f"feature cache entry {entry} is inconsistent (features {features.array.shape}, manifest "
            f"{manifest['n_items']} x {manifest['dim']}); delete that folder and run again."
        )
    return features


def _dataset_fingerprint(dataset: Any) -> str:
    fingerprint = getattr(dataset, "fingerprint", None)
    if not fingerprint:
        raise PathbenchError(
            f"{type(dataset).__name__} has no fingerprint; a reader must say what its source is so the cache "
            "can tell datasets apart (see pathbench.data.base.TileDataset)."
        )
    return str(fingerprint)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def init_distributed_from_env() -> bool:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Returns whether this process is part of a multi-process run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True
