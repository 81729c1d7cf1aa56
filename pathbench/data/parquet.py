"""Parquet shards of images: one row-group reader with its cache, and the identity of a file.

Image datasets in parquet (``owkin/plism-dataset-tiles``, Hugging Face ``Image`` columns)
hold one encoded image per row. Reading one cell with ``pyarrow`` means reading its whole
row group, so :class:`RowGroupReader` keeps the last few row groups of one column in memory:
a reader that walks the rows in storage order reads each row group once.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pathbench.errors import DataError

DEFAULT_CACHED_ROW_GROUPS = 4


class RowGroupReader:
    """One column of parquet files, read a row group at a time, the most recent ones cached.

    The cache belongs to the process: a pickled copy (a DataLoader worker) starts empty.

    Args:
        column: the column to read (image bytes, or ``{"bytes", "path"}`` structs).
        max_row_groups: how many decoded row groups to keep.
    """

    def __init__(self, column: str, max_row_groups: int = DEFAULT_CACHED_ROW_GROUPS) -> None:
        self.column = column
        self.max_row_groups = int(max_row_groups)
        self._cache: OrderedDict[tuple[str, int], list[Any]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict()}

    def row_group(self, file: str | os.PathLike, row_group: int) -> list[Any]:
        """The column's values in row group ``row_group`` of ``file`` (Python objects)."""
        key = (str(file), int(row_group))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(key[0]).read_row_group(key[1], columns=[self.column])
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for broken files
            raise DataError(f"cannot read row group {row_group} of {file} ({exc}). The shard is probably "
                            "truncated: download it again.") from exc
        values = table.column(self.column).to_pylist()
        self._cache[key] = values
        while len(self._cache) > self.max_row_groups:
            self._cache.popitem(last=False)
        return values

    def cell(self, file: str | os.PathLike, row_group: int, row: int) -> Any:
        """The value of the column in row ``row`` of row group ``row_group`` of ``file``."""
        return self.row_group(file, row_group)[row]


def footer_sha256(path: str | os.PathLike) -> str:
    """sha256 of a parquet file's footer (its schema and every row group's sizes and statistics).

    Two reads of a few kilobytes at the end of the file, whatever its size.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size < 12:
            raise DataError(f"{path} is too short to be a parquet file ({size} bytes); download it again.")
        handle.seek(size - 8)
        tail = handle.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length > size - 12:
            raise DataError(f"{path} does not end with a parquet footer; the file is truncated or not parquet.")
        handle.seek(size - 8 - length)
        return hashlib.sha256(handle.read(length)).hexdigest()


def parquet_file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a parquet file's content, cheaply: name, size, modification time, footer.

    Rewriting a file changes its modification time; a change in the number, size or
    statistics of its row groups changes the footer even when the time is preserved. Hashing
    the whole file instead costs a full read (``benchmarks/plism_fingerprint.py`` measures both).
    """
    path = Path(path)
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "footer": footer_sha256(path)}


__all__ = ["DEFAULT_CACHED_ROW_GROUPS", "RowGroupReader", "footer_sha256", "parquet_file_identity"]
