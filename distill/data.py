"""Training data: a folder of images, parquet shards, or a hub dataset (streaming).

Sampling is a pure function of the position of a sample in the global training stream:
global batch ``s`` holds positions ``s * batch .. (s + 1) * batch - 1``; process ``r`` of ``n``
takes the ``r``-th contiguous slice. For map-style sources, position ``p`` is image
``perm_e[p mod N]`` with ``perm_e`` a seeded permutation per pass ``e = p div N``; every
sample's augmentations come from a generator seeded by ``(seed, p)``. Hence the data seen at
step ``s`` do not depend on the number of processes or workers, and a resumed run sees
exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from distill.augment import MultiCrop, sample_rng
from distill.config import DataConfig
from pathbench.data.base import IMAGE_SUFFIXES, ArrayTileDataset, ImageFolderDataset, TileDataset
from pathbench.data.images import decode_image
from pathbench.data.parquet import RowGroupReader, parquet_file_identity
from pathbench.errors import DataError

logger = logging.getLogger("distill")


class ParquetImageDataset(TileDataset):
    """Images stored in one or more parquet files (one image per row, encoded bytes).

    ``column`` holds either binary image files or ``{"bytes", "path"}`` structs (the Hugging Face
    ``Image`` feature's on-disk format). Rows are read one row group at a time
    (:class:`pathbench.data.parquet.RowGroupReader`); each process keeps the few most recent
    row groups in memory.
    """

    def __init__(self, source: str | Path, column: str = "image", cache_groups: int = 4):
        import pyarrow.parquet as pq

        source = Path(source)
        files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source]
        if not files or not files[0].is_file():
            raise DataError(f"no parquet files found at {source}; expected a .parquet file or a folder of shards.")
        self.files = files
        self.column = column
        self._reader = RowGroupReader(column, cache_groups)
        self._groups: list[tuple[int, int, int]] = []  # (file index, row group, first row)
        starts = []
        total = 0
        digest = hashlib.sha256()
        for fi, path in enumerate(files):
            meta = pq.ParquetFile(path).metadata
            names = pq.ParquetFile(path).schema_arrow.names
            if column not in names:
                raise DataError(f"{path} has no column {column!r} (columns: {', '.join(names)}); set data.image_column.")
            for g in range(meta.num_row_groups):
                self._groups.append((fi, g, total))
                starts.append(total)
                total += meta.row_group(g).num_rows
            identity = parquet_file_identity(path)
            digest.update(f"{path.name}|{identity['size']}|{identity['mtime_ns']}|{identity['footer']}\0".encode())
        self._starts = np.asarray(starts, dtype=np.int64)
        self._n = total
        self.item_ids = [str(i) for i in range(total)]
        self.fingerprint = "parquet:" + digest.hexdigest()

    def __len__(self) -> int:
        return self._n

    def load(self, index: int) -> np.ndarray:
        gi = int(np.searchsorted(self._starts, index, side="right") - 1)
        fi, g, first = self._groups[gi]
        return decode_image(self._reader.cell(self.files[fi], g, index - first), self.describe(index))

    def describe(self, index: int) -> str:
        gi = int(np.searchsorted(self._starts, index, side="right") - 1)
        return f"{self.files[self._groups[gi][0]]} row {index - self._groups[gi][2]}"


def open_source(data: DataConfig) -> TileDataset | HubSource:
    """The configured data source: a map-style :class:`TileDataset` or a streaming :class:`HubSource`."""
    if not data.source:
        raise DataError("no training data: set data.source in the config or pass --data (a folder of images, "
                        "parquet shards, or hf:<dataset id>).")
    kind = data.kind
    source = str(data.source)
    if kind == "synthetic" or source.startswith("synthetic:"):
        count = source.removeprefix("synthetic:")
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"synthetic data are asked for as synthetic:<number of tiles>, got {source!r}.")
        return synthetic_tiles(int(count), seed=0)
    if kind == "auto":
        path = Path(source)
        if source.startswith("hf:"):
            kind = "hub"
        elif path.is_file() and path.suffix == ".parquet" or path.is_dir() and any(path.rglob("*.parquet")):
            kind = "parquet"
        elif path.is_dir():
            kind = "folder"
        else:
            raise DataError(f"data source {source!r} is neither a folder, a parquet file nor hf:<dataset id>.")
    if kind == "folder":
        return ImageFolderDataset(source)
    if kind == "parquet":
        return ParquetImageDataset(source, data.image_column)
    if kind == "hub":
        return HubSource(source.removeprefix("hf:"), split=data.split, column=data.image_column,
                         buffer_size=data.shuffle_buffer)
    raise DataError(f"data.kind must be auto, folder, parquet, hub or synthetic; got {kind!r}.")


def synthetic_tiles(n: int, size: int = 128, seed: int = 0) -> ArrayTileDataset:
    """``n`` pseudo-H&E tiles ``(size, size, 3)`` uint8: pink stroma with purple nuclei whose
    density, size and stain intensity vary from tile to tile (offline demos and tests)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    tiles = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        stain = rng.uniform(0.6, 1.2)
        eosin = np.array([235, 170, 200], np.float32) * rng.uniform(0.85, 1.05, 3)
        haem = np.array([90, 50, 140], np.float32) * rng.uniform(0.8, 1.2, 3)
        mask = np.zeros((size, size), np.float32)
        radius = rng.uniform(2.0, 7.0)
        for _ in range(int(rng.integers(3, 60))):
            cy, cx = rng.uniform(0, size, 2)
            r = radius * rng.uniform(0.6, 1.4)
            mask = np.maximum(mask, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
        fibres = 0.5 + 0.5 * np.sin(xx * rng.uniform(0.05, 0.3) + yy * rng.uniform(0.05, 0.3) + rng.uniform(0, 6))
        background = eosin[None, None] * (0.9 + 0.1 * fibres[..., None])
        image = background * (1 - stain * mask[..., None]) + haem[None, None] * stain * mask[..., None]
        image += rng.normal(0, 6, image.shape)
        tiles[i] = np.clip(image, 0, 255).astype(np.uint8)
    return ArrayTileDataset(tiles, fingerprint=f"synthetic:{n}:{size}:{seed}")


@contextlib.contextmanager
def single_thread():
    """Run per-image tensor ops on one thread: on tiles this small, several intra-op threads cost
    far more in synchronisation than they gain (data-loader workers already use one)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---- map-style sampling --------------------------------------------------------------------


def stream_index(position: int, n_items: int, seed: int) -> int:
    """Image index at ``position`` of the training stream (a fresh permutation per pass)."""
    epoch, offset = divmod(int(position), n_items)
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), epoch, 0x5EED])).permutation(n_items)
    return int(perm[offset])


class MultiCropSamples(Dataset):
    """Position in the training stream -> ``(globals (2, 3, G, G), locals (L, 3, l, l))``."""

    def __init__(self, tiles: TileDataset, crops: MultiCrop, seed: int):
        if len(tiles) == 0:
            raise DataError("the training data set is empty.")
        self.tiles = tiles
        self.crops = crops
        self.seed = seed
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:  # positions are unbounded; the batch sampler drives the loader
        return 2**62

    def index(self, position: int) -> int:
        n = len(self.tiles)
        epoch, offset = divmod(int(position), n)
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            perm = np.random.default_rng(np.random.SeedSequence([int(self.seed), epoch, 0x5EED])).permutation(n)
            self._perm_cache = (epoch, perm)
        return int(self._perm_cache[1][offset])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.tiles[self.index(position)]
        with single_thread():
            return self.crops(image, sample_rng(self.seed, position))


class StepBatches:
    """Batch sampler: the stream positions of this process for steps ``start .. stop - 1``."""

    def __init__(self, start: int, stop: int, global_batch: int, rank: int, world: int):
        if global_batch % world:
            raise DataError(f"optim.batch_size ({global_batch}) must be divisible by the number of processes ({world}).")
        self.start, self.stop, self.global_batch, self.rank, self.local = start, stop, global_batch, rank, global_batch // world

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            first = step * self.global_batch + self.rank * self.local
            yield list(range(first, first + self.local))


def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples -> crop-major batches ``(2, b, 3, G, G)`` and ``(L, b, 3, l, l)``."""
    globals_ = torch.stack([s[0] for s in samples], dim=1)
    locals_ = torch.stack([s[1] for s in samples], dim=1)
    return globals_, locals_


# ---- streaming hub datasets ----------------------------------------------------------------


class HubSource:
    """A Hugging Face dataset read in streaming mode (nothing is downloaded up front).

    ``dataset_id`` is a hub id, or a builder name such as ``"parquet"`` with ``data_files``.
    The stream is shuffled with a seeded buffer per pass; positions follow the stream order.
    """

    def __init__(self, dataset_id: str, split: str = "train", column: str = "image", buffer_size: int = 10000,
                 data_files: Any = None):
        self.dataset_id = dataset_id
        self.split = split
        self.column = column
        self.buffer_size = buffer_size
        self.data_files = data_files
        self.fingerprint = f"hf:{dataset_id}:{split}"
        self._dataset = None

    def stream(self, seed: int, epoch: int, skip: int = 0):
        """The rows of pass ``epoch`` (a seeded shuffle buffer that changes with the pass),
        without its first ``skip`` rows."""
        if self._dataset is None:
            import datasets

            kwargs = {"data_files": self.data_files} if self.data_files is not None else {}
            self._dataset = datasets.load_dataset(self.dataset_id, split=self.split, streaming=True, **kwargs)
        ds = self._dataset
        if hasattr(ds, "decode"):
            ds = ds.decode(False)  # image bytes only: rows skipped on the way are never decoded
        if self.buffer_size > 1:
            ds = ds.shuffle(seed=seed, buffer_size=self.buffer_size)
        if skip:
            ds = ds.skip(skip)
        ds.set_epoch(epoch)  # after skip(), which returns a dataset at epoch 0
        return ds

    def num_rows(self) -> int | None:
        """Rows in one pass when the dataset's metadata says so (lets a resumed run skip ahead)."""
        if self._dataset is None:
            self.stream(0, 0)
        splits = getattr(getattr(self._dataset, "info", None), "splits", None)
        try:
            return int(splits[self.split].num_examples) or None
        except (KeyError, TypeError, AttributeError):
            return None

    def __getstate__(self):  # data-loader workers open their own stream
        return {**self.__dict__, "_dataset": None}


class HubStreamSamples(IterableDataset):
    """Iterable over this process's batches of a :class:`HubSource` for steps ``start .. stop - 1``.

    Worker ``w`` of ``W`` (when iterated inside a data-loader worker) prepares the batches of
    steps ``s`` with ``s mod W == w``; the loader's round-robin over workers then yields the steps
    in order. :func:`make_loader` reads hub streams in the main process (see there).
    """

    def __init__(self, source: HubSource, crops: MultiCrop, seed: int, batches: StepBatches):
        self.source, self.crops, self.seed, self.batches = source, crops, seed, batches

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        wanted = {}
        for step, positions in zip(range(self.batches.start, self.batches.stop), self.batches, strict=True):
            if (step - self.batches.start) % n_workers == worker:
                wanted[step] = positions
        if not wanted:
            return
        first = min(p[0] for p in wanted.values())
        lookup = {p: s for s, ps in wanted.items() for p in ps}
        last = max(p[-1] for p in wanted.values())
        # Jump to the pass holding the first wanted position when the pass length is known;
        # otherwise read the stream from its start (rows are not decoded on the way).
        n_rows = self.source.num_rows()
        epoch, offset = divmod(first, n_rows) if n_rows else (0, 0)
        position, pending = epoch * (n_rows or 0), []
        while position <= last:
            produced = False
            rows = self.source.stream(self.seed, epoch, skip=offset)
            position, offset = position + offset, 0
            for row in rows:
                produced = True
                if position >= first and position in lookup:
                    image = decode_image(row[self.source.column], f"{self.source.fingerprint} row {position}")
                    with single_thread():
                        pending.append(self.crops(image, sample_rng(self.seed, position)))
                    step = lookup[position]
                    if len(pending) == len(wanted[step]):
                        yield collate(pending)
                        pending = []
                position += 1
                if position > last:
                    break
            if not produced:
                raise DataError(f"the hub dataset {self.source.dataset_id!r} split {self.source.split!r} is empty.")
            epoch += 1


def make_loader(
    source: TileDataset | HubSource,
    crops: MultiCrop,
    seed: int,
    batches: StepBatches,
    num_workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``(globals (2, b, 3, G, G), locals (L, b, 3, l, l))`` per step.

    Each new iterator draws a base seed; it comes from the loader's own generator, not from the
    global torch generator, whose state the checkpoint carries: otherwise a resumed run (one
    more iterator) would continue with a different global random state than an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(int(seed))
    if isinstance(source, HubSource):
        if num_workers:
            # Inside data-loader workers, datasets splits a stream's files among the workers,
            # which would make the rows a worker sees depend on the number of workers.
            logger.info("hub streams are read in the main process (data.num_workers ignored); for large runs, "
                        "download the dataset's parquet files and pass their folder to --data")
        return DataLoader(HubStreamSamples(source, crops, seed, batches), batch_size=None, num_workers=0,
                          pin_memory=pin_memory, generator=generator)
    return DataLoader(
        MultiCropSamples(source, crops, seed),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=generator,
    )


__all__ = [
    "IMAGE_SUFFIXES",
    "HubSource",
    "MultiCropSamples",
    "ParquetImageDataset",
    "StepBatches",
    "collate",
    "decode_image",
    "make_loader",
    "open_source",
    "stream_index",
    "synthetic_tiles",
]
