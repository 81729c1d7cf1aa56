"""PLISM from the Hugging Face hub: the asked slides of ``owkin/plism-dataset-tiles`` (parquet
shards, streamed into the cache) or of ``owkin/plism-dataset`` (one ``.h5`` per slide).

Only the slides asked for are fetched; what is already in the cache is not fetched again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pathbench._io import atomic_write
from pathbench.data.plism import (
    HUB_H5_REPO,
    HUB_TILES_REPO,
    PARQUET_COLUMNS,
    SCANNERS,
    STAININGS,
    canonical_slide_id,
    slide_id_for,
)
from pathbench.errors import DataError, PathbenchError
from pathbench.settings import cache_root


def download_h5_slides(slide_ids: Sequence[str], local_dir: str | os.PathLike | None = None) -> Path:
    """Download only the asked slides of ``owkin/plism-dataset`` (about 2.5 GB each).

    Uses ``huggingface_hub.snapshot_download`` with ``allow_patterns``, so the user's hub
    cache, token and ``HF_HUB_OFFLINE`` apply. Returns the folder holding the ``.h5`` files.
    """
    from huggingface_hub import snapshot_download

    patterns = [f"*{canonical_slide_id(s)}.tif.h5" for s in slide_ids]
    try:
        folder = snapshot_download(
            repo_id=HUB_H5_REPO,
            repo_type="dataset",
            allow_patterns=patterns,
            local_dir=None if local_dir is None else str(local_dir),
        )
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"could not download {len(patterns)} slide(s) of {HUB_H5_REPO} ({exc}). Check the network "
            "and your hub login, or download the .h5 files yourself and pass --data FOLDER."
        ) from exc
    return Path(folder)


def shards_holding_slides(
    slide_ids: Sequence[str], fs: Any = None, root: str = f"datasets/{HUB_TILES_REPO}/data"
) -> list[str] | None:
    """The parquet shards under ``root`` whose rows can belong to the asked slides.

    Reads only each shard's footer (the min/max statistics of ``slide_id`` per row group),
    so picking 21 of 91 slides streams about a quarter of the dataset instead of all of it.
    ``fs`` is an fsspec filesystem (default: ``huggingface_hub.HfFileSystem``). Returns
    the shard paths in order, or ``None`` when a shard lacks statistics.
    """
    import pyarrow.parquet as pq

    if fs is None:
        from huggingface_hub import HfFileSystem

        fs = HfFileSystem()
    wanted = set()
    for slide in slide_ids:
        wanted.update({canonical_slide_id(slide), f"{canonical_slide_id(slide)}.tif"})
    selected = []
    for path in sorted(fs.glob(f"{root.rstrip('/')}/*.parquet")):
        with fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
        for row_group in range(metadata.num_row_groups):
            group = metadata.row_group(row_group)
            column = next(
                (
                    group.column(j)
                    for j in range(group.num_columns)
                    if group.column(j).path_in_schema == "slide_id"
                ),
                None,
            )
            stats = None if column is None else column.statistics
            if stats is None or not stats.has_min_max:
                return None
            low, high = str(stats.min), str(stats.max)
            if any(low <= slide <= high for slide in wanted):
                selected.append(path)
                break
    return selected


def plism_hub_rows(slide_ids: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream the rows of ``owkin/plism-dataset-tiles`` with ``datasets`` (``png`` as bytes).

    With ``slide_ids``, only the shards that can hold them are streamed (see
    :func:`shards_holding_slides`); if that cannot be decided, every shard is.
    """
    import datasets

    data_files = None
    if slide_ids:
        try:
            shards = shards_holding_slides(slide_ids)
        except Exception:  # noqa: BLE001 - an optimisation only: fall back to the whole stream
            shards = None
        if shards:
            data_files = [f"data/{Path(p).name}" for p in shards]
    stream = datasets.load_dataset(HUB_TILES_REPO, split="train", streaming=True, data_files=data_files)
    stream = stream.cast_column("png", datasets.Image(decode=False))
    yield from stream


def materialise_slides(
    rows: Iterable[Mapping[str, Any]],
    slide_ids: Sequence[str],
    out_dir: str | os.PathLike,
    progress: bool = True,
) -> Path:
    """Write the asked slides of a row stream to ``out_dir/<slide_id>.parquet``, one file each.

    ``rows`` is a stream in the hub dataset's schema, grouped by slide (as the hub dataset
    is). Each slide's file is written atomically once all its rows were seen, so an
    interrupted download resumes at the first missing slide; the stream stops as soon as
    every asked slide is on disk. Returns ``out_dir``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    wanted = {canonical_slide_id(s) for s in slide_ids}
    todo = {s for s in wanted if not (out_dir / f"{s}.parquet").is_file()}
    if not todo:
        return out_dir
    buffers: dict[str, dict[str, list[Any]]] = {}
    bar = tqdm(total=len(todo), desc="PLISM slides downloaded", unit="slide", disable=not progress)

    def flush(slide: str) -> None:
        columns = buffers.pop(slide)
        table = pa.table(
            {
                **{name: pa.array(columns[name], pa.string()) for name in PARQUET_COLUMNS[:-1]},
                "png": pa.array(columns["png"], pa.binary()),
            }
        )
        with atomic_write(out_dir / f"{slide}.parquet", "wb") as handle:
            pq.write_table(table, handle, row_group_size=1024)
        todo.discard(slide)
        bar.update(1)

    current: str | None = None
    for row in rows:
        slide = canonical_slide_id(row["slide_id"])
        if current is not None and slide != current and current in buffers:
            flush(current)
            if not todo:
                break
        current = slide
        if slide not in todo:
            continue
        columns = buffers.setdefault(slide, {name: [] for name in PARQUET_COLUMNS})
        for name in PARQUET_COLUMNS[:-1]:
            columns[name].append(str(row.get(name, "")))
        png = row["png"]
        columns["png"].append(png["bytes"] if isinstance(png, Mapping) else png)
    for slide in list(buffers):
        flush(slide)
    bar.close()
    if todo:
        raise DataError(
            f"the stream of {HUB_TILES_REPO} ended without slide(s) {', '.join(sorted(todo))}; "
            "check the slide ids (--stainings / --scanners)."
        )
    return out_dir


def download_tile_slides(
    slide_ids: Sequence[str], cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """The asked slides of ``owkin/plism-dataset-tiles``, streamed once into the pathbench cache."""
    out_dir = cache_root(cache_dir) / "plism" / "hub-tiles"
    if all((out_dir / f"{canonical_slide_id(s)}.parquet").is_file() for s in slide_ids):
        return out_dir
    try:
        return materialise_slides(plism_hub_rows(slide_ids), slide_ids, out_dir, progress=progress)
    except PathbenchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"could not stream {HUB_TILES_REPO} ({exc}). Check the network, or download its parquet "
            "shards (or the .h5 files of owkin/plism-dataset) and pass --data FOLDER."
        ) from exc


def hub_slide_ids() -> list[str]:
    """All 91 PLISM slide ids (13 stainings x 7 scanners), canonical form."""
    return [slide_id_for(st, sc) for st in STAININGS for sc in SCANNERS]


