"""Batched, resumable, content-keyed feature extraction, verified on every read.

Layout of one cache entry, ``<cache>/features/<key[:2]>/<key>/``:

- ``meta.json``: what the key stands for (extractor identity, dataset, item count);
- ``shard-00000.npy`` ...: float32 ``(rows, dim)`` blocks of ``shard_size`` items, each
  written atomically, then its ``shard-00000.json`` (rows, dim, size, sha256, mtime); a run
  killed at any moment loses at most the shard in flight;
- ``features.npy``, ``item_ids.json`` and ``manifest.json``: written when every shard
  exists (the manifest last, with the size and sha256 of both files and of every shard
  they were joined from), after which the shards are removed. An entry with a manifest is
  complete; an identical request then reads it back and runs no model at all.

What is verified, and when:

- every read of a complete entry checks, at the cost of a few ``stat`` calls and one
  header read: each file exists with the size the manifest records, ``features.npy``'s
  header says ``(n_items, dim)`` float32, and a file whose modification time changed is
  hashed (a rewrite of the same size is caught without hashing every time);
- the full check (sha256 of every file) runs when asked (``verify=True``, ``--verify``)
  and on the first read after a crash: a hidden marker ``.extracting-<host>-<pid>`` is
  written before extraction starts and removed once the manifest is written, so a
  complete entry that still holds a marker was written by a process that died around its
  last step, and is hashed before it is trusted (then the marker is removed);
- shards are hashed when they are joined (they are read then anyway), and a resumed
  run checks each kept shard's size, header and modification time against its record;
- an entry or shard that fails any check is recomputed, with one warning line
  (:class:`CacheWarning`); a wrong number is never returned. Entries written before
  checksums existed (manifest format 1) are recomputed once: hashing them now would
  bless whatever their files hold, which is the failure this verification exists for.

Under ``torchrun`` (``torch.distributed`` initialised) rank ``r`` of ``w`` extracts shards
``r, r + w, ...``; shards are cut and batched the same way whatever the world size, so
the result is the same as a single-process run. Rank 0 verifies, joins and writes the
manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader

from pathbench import _io
from pathbench.data.base import ids_digest
from pathbench.errors import DataError, PathbenchError
from pathbench.extractors.base import Extractor, resize_crop
from pathbench.extractors.spec import ModelSpec
from pathbench.settings import cache_root

# Version of what the cache key describes; the numbers in an entry depend on nothing else,
# so it stays 1 while the manifest format changes.
KEY_VERSION = 1
# Manifest format: 2 records the size, sha256 and mtime of every file; 1 recorded none.
MANIFEST_FORMAT = 2
_SHARD = re.compile(r"^shard-(\d{5,})\.npy$")
_MARKER = ".extracting-"
_DTYPE = np.dtype("<f4")
_DATA_FILES = ("features.npy", "item_ids.json")
_BLOCK = 1 << 22  # bytes read at a time when joining shards


class CacheWarning(UserWarning):
    """A feature cache entry (or shard) failed verification and is recomputed."""


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
        "format": KEY_VERSION,
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
    verify: bool = False,
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
        desc: label of the progress bar.
        verify: hash every file of a cached entry (sha256) before using it, instead of
            the cheap checks of sizes, header and modification times (module docstring).

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
    rank, world = rank_and_world()
    # Rank 0 alone verifies (and may discard) a complete entry; every rank follows its verdict.
    complete = rank == 0 and (entry / "manifest.json").is_file() and _verified(entry, full=verify)
    if _rank0_says(complete):
        return Features(item_ids=list(dataset.item_ids), key=key, path=entry)
    entry.mkdir(parents=True, exist_ok=True)
    if not (entry / "meta.json").is_file():
        _io.write_json(entry / "meta.json", description)
    _io.remove_stale_temporaries(entry)
    marker = entry / f"{_MARKER}{_io.owner_tag()}"
    _io.write_json(marker, {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    n_items = len(dataset)
    n_shards = max(1, -(-n_items // shard_size))
    started = time.perf_counter()
    dim = extractor.output_dim(pooling)
    mine = [s for s in range(n_shards) if s % world == rank]
    pending = [s for s in mine if not _shard_ok(entry, s, _shard_rows(s, n_items, shard_size), dim)]
    done_items = sum(_shard_rows(s, n_items, shard_size) for s in mine if s not in pending)

    def run(shards: list[int], done: int, total: int) -> None:
        _run_shards(
            extractor, dataset, entry, shards, pooling=pooling, batch_size=batch_size, shard_size=shard_size,
            num_workers=num_workers, progress=progress, done_items=done, total_items=total,
            desc=desc or f"{extractor.name} [{pooling}]",
        )

    if pending:
        run(pending, done_items, sum(_shard_rows(s, n_items, shard_size) for s in mine))
    computed = sum(_shard_rows(s, n_items, shard_size) for s in pending)
    barrier()
    if rank == 0:

        def join() -> list[int]:
            rate = computed / (time.perf_counter() - started) if computed else None
            return _finalise(entry, n_shards, n_items, shard_size, dim, dataset.item_ids, tiles_per_s=rate)

        bad = join()
        for _retry in range(2):  # rank 0 recomputes what failed verification (any rank's shards)
            if not bad:
                break
            rows = sum(_shard_rows(s, n_items, shard_size) for s in bad)
            run(bad, 0, rows)
            computed += rows
            bad = join()
        if bad:
            raise PathbenchError(f"shards {bad[:5]} of feature cache entry {entry} fail verification again right "
                                 "after being recomputed; check the disk (space, errors) and run again.")
    barrier()
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    if not _verified(entry, full=False):
        raise PathbenchError(f"feature cache entry {entry} fails verification right after it was written; "
                             "check the disk (space, errors) and run again.")
    features = Features(item_ids=list(dataset.item_ids), key=key, path=entry)
    features.computed, features.seconds = computed, time.perf_counter() - started
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
    width = extractor.output_dim(pooling)
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
            if embeddings.shape[1] != width:  # a plugin's ready Extractor whose spec misstates its width
                raise PathbenchError(
                    f"{extractor.name} gives embeddings of width {embeddings.shape[1]} with pooling {pooling}, "
                    f"but its spec (from {extractor.spec.origin}) declares embed_dim={extractor.spec.embed_dim}, "
                    f"hence {width}; fix embed_dim in the spec."
                )
            parts.append(embeddings)
            rows_needed -= len(embeddings)
            bar.update(len(embeddings))
            if rows_needed == 0:
                _write_shard(entry, shard, np.concatenate(parts))
                parts = []
                shard = next(shard_iter, -1)
                rows_needed = _shard_rows(shard, n_items, shard_size) if shard >= 0 else 0


def _shard_rows(shard: int, n_items: int, shard_size: int) -> int:
    return max(0, min(shard_size, n_items - shard * shard_size))


def _shard_paths(entry: Path, shard: int) -> tuple[Path, Path]:
    return entry / f"shard-{shard:05d}.npy", entry / f"shard-{shard:05d}.json"


def _write_shard(entry: Path, shard: int, array: np.ndarray) -> None:
    """The shard, then its record; a shard without a record is never trusted."""
    path, record = _shard_paths(entry, shard)
    digest = _io.save_npy(path, array.astype(_DTYPE, copy=False))
    _io.write_json(record, {"rows": len(array), "dim": int(array.shape[1]), "size": digest.size,
                            "sha256": digest.sha256, "mtime_ns": path.stat().st_mtime_ns})


def _drop_shard(entry: Path, shard: int) -> None:
    for path in _shard_paths(entry, shard):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _shard_ok(entry: Path, shard: int, rows: int, dim: int) -> bool:
    """Cheap check of a kept shard (record, size, header; hashed if its mtime changed); drops a bad one."""
    path, record_path = _shard_paths(entry, shard)
    try:
        record = _io.read_json(record_path)
        stat = path.stat()
        with open(path, "rb") as handle:
            shape, header = _npy_header(handle)
        ok = (record["rows"], record["dim"]) == (rows, dim) == shape
        ok = ok and stat.st_size == record["size"] == header + rows * dim * _DTYPE.itemsize
        if ok and stat.st_mtime_ns != record["mtime_ns"]:
            ok = _io.file_digest(path).sha256 == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        _drop_shard(entry, shard)
    return ok


def _copy_shard(entry: Path, shard: int, rows: int, dim: int, out: _io.HashingWriter | None) -> dict | None:
    """Stream a shard's float32 payload into ``out`` (when given) while hashing the whole file.

    Returns the shard's record when the file has the expected layout and its sha256 matches
    the record, else None (what was written to ``out`` is then to be discarded). Memory stays
    bounded by one block whatever the shard's size (token grids make shards of 100s of MB).
    """
    path, record_path = _shard_paths(entry, shard)
    try:
        record = _io.read_json(record_path)
        with open(path, "rb") as handle:
            shape, header = _npy_header(handle)
            size = os.fstat(handle.fileno()).st_size
            if shape != (rows, dim) or size != header + rows * dim * _DTYPE.itemsize or size != record["size"]:
                return None
            handle.seek(0)
            hasher = hashlib.sha256(handle.read(header))
            for block in iter(lambda: handle.read(_BLOCK), b""):
                hasher.update(block)
                if out is not None:
                    out.write(block)
        return record if hasher.hexdigest() == record["sha256"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _npy_header(handle: BinaryIO) -> tuple[tuple[int, ...], int]:
    """``(shape, header length in bytes)`` of a C-ordered little-endian float32 ``.npy``;
    ValueError for anything else."""
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy version {version}")
    shape, fortran, dtype = readers[version](handle)
    if fortran or dtype != _DTYPE:
        raise ValueError(f"expected C-ordered float32, found dtype {dtype}, fortran order {fortran}")
    return tuple(shape), handle.tell()


def _finalise(entry: Path, n_shards: int, n_items: int, shard_size: int, dim: int, item_ids: list[str],
              tiles_per_s: float | None = None) -> list[int]:
    """Join the shards into ``features.npy`` (streamed, hashed on the way), then write the manifest.

    Returns:
        The shards that are missing or fail verification (dropped; nothing is written), or
        ``[]`` once the entry is complete.
    """
    if (entry / "manifest.json").is_file():
        return []
    shards: dict[str, dict[str, Any]] = {}
    bad: list[int] = []

    class Abandon(Exception):
        pass

    try:
        with _io.atomic_write(entry / "features.npy", "wb") as handle:
            writer = _io.HashingWriter(handle)
            np.lib.format.write_array_header_1_0(
                writer, {"descr": _DTYPE.str, "fortran_order": False, "shape": (n_items, dim)}
            )
            for shard in range(n_shards):
                # After a bad shard the output is abandoned: the rest are only checked.
                record = _copy_shard(entry, shard, _shard_rows(shard, n_items, shard_size), dim,
                                     None if bad else writer)
                if record is None:
                    bad.append(shard)
                else:
                    shards[f"shard-{shard:05d}.npy"] = {"size": record["size"], "sha256": record["sha256"]}
            if bad:
                raise Abandon
    except Abandon:
        for shard in bad:
            _drop_shard(entry, shard)
        warnings.warn(
            f"feature cache entry {entry}: shards {bad[:5]}{' ...' if len(bad) > 5 else ''} are missing or fail "
            "their sha256 check; recomputing them.",
            CacheWarning, stacklevel=3,
        )
        return bad
    written = writer.digest()
    _io.write_json(entry / "item_ids.json", item_ids)
    files = {
        "features.npy": {"size": written.size, "sha256": written.sha256},
        "item_ids.json": dataclasses.asdict(_io.file_digest(entry / "item_ids.json")),
    }
    for name, record in files.items():
        record["mtime_ns"] = (entry / name).stat().st_mtime_ns
    _io.write_json(
        entry / "manifest.json",
        {"format": MANIFEST_FORMAT, "n_items": n_items, "dim": dim, "dtype": "float32",
         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "written_by": _io.owner_tag(),
         "tiles_per_s": tiles_per_s, "files": files, "shards": shards},
    )
    for shard in range(n_shards):
        _drop_shard(entry, shard)
    for marker in entry.glob(f"{_MARKER}*"):
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
    return []


def _verified(entry: Path, full: bool) -> bool:
    """Whether the complete entry passes its checks (module docstring); a failing entry is
    discarded with one warning line, so that it is recomputed."""
    problem = _entry_problem(entry, full)
    if problem is None:
        return True
    warnings.warn(f"feature cache entry {entry} {problem}; recomputing it.", CacheWarning, stacklevel=3)
    # The manifest goes first: from then on no reader trusts the entry.
    for name in ("manifest.json", *_DATA_FILES):
        with contextlib.suppress(FileNotFoundError):
            (entry / name).unlink()
    return False


def _entry_problem(entry: Path, full: bool) -> str | None:
    """What is wrong with a complete entry, in words, or None."""
    try:
        manifest = _io.read_json(entry / "manifest.json")
    except (OSError, ValueError) as exc:
        return f"has an unreadable manifest ({type(exc).__name__})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        return (f"was written without checksums (manifest format {found}, expected {MANIFEST_FORMAT}); "
                "its content cannot be verified")
    markers = list(entry.glob(f"{_MARKER}*"))
    full = full or bool(markers)
    try:
        files = {name: manifest["files"][name] for name in _DATA_FILES}
        shape = (int(manifest["n_items"]), int(manifest["dim"]))
    except (KeyError, TypeError, ValueError):
        return "has an incomplete manifest"
    moved = []
    for name, record in files.items():
        try:
            stat = (entry / name).stat()
        except FileNotFoundError:
            return f"has lost {name}"
        if stat.st_size != record.get("size"):
            return f"has a {name} of {stat.st_size} bytes where its manifest records {record.get('size')}"
        if stat.st_mtime_ns != record.get("mtime_ns"):
            moved.append(name)
    try:
        with open(entry / "features.npy", "rb") as handle:
            found, header = _npy_header(handle)
    except (OSError, ValueError) as exc:
        return f"has an unreadable features.npy header ({exc})"
    if found != shape or header + shape[0] * shape[1] * _DTYPE.itemsize != files["features.npy"]["size"]:
        return f"has a features.npy of shape {found} where its manifest records {shape}"
    for name in _DATA_FILES if full else moved:
        if _io.file_digest(entry / name).sha256 != files[name].get("sha256"):
            return f"has a {name} whose content changed since it was written (sha256 mismatch)"
    if moved:  # same bytes, new modification time (a copied cache): record it, to hash once only
        for name in moved:
            manifest["files"][name]["mtime_ns"] = (entry / name).stat().st_mtime_ns
        with contextlib.suppress(OSError):
            _io.write_json(entry / "manifest.json", manifest)
    for marker in markers:
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
    return None


def _dataset_fingerprint(dataset: Any) -> str:
    fingerprint = getattr(dataset, "fingerprint", None)
    if not fingerprint:
        raise PathbenchError(
            f"{type(dataset).__name__} has no fingerprint; a reader must say what its source is so the cache "
            "can tell datasets apart (see pathbench.data.base.TileDataset)."
        )
    return str(fingerprint)


_local_depth = 0


@contextlib.contextmanager
def local_extraction() -> Iterator[None]:
    """Within the block, :func:`extract_features` ignores ``torch.distributed``: each process
    embeds whole datasets on its own. The runner uses it to share whole slides between the
    ranks of a ``torchrun`` job (a bag is one small entry; splitting it into shards would
    leave every rank but one idle)."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def _distributed() -> bool:
    return not _local_depth and torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size of a ``torchrun`` job, else (0, 1)."""
    if _distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _rank0_says(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (the flag itself outside a distributed run)."""
    if not _distributed():
        return flag
    message = [flag]
    torch.distributed.broadcast_object_list(message, src=0)
    return bool(message[0])


def barrier() -> None:
    """Wait for every rank of a ``torchrun`` job (nothing outside one)."""
    if _distributed():
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
