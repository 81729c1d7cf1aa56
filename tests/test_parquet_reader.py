"""The one parquet row-group reader, its cache, and the identity of a parquet file."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pathbench.data.parquet import RowGroupReader, footer_sha256, parquet_file_identity
from pathbench.errors import DataError


def write_values(path, values, row_group_size=3):
    pq.write_table(pa.table({"value": pa.array(values, pa.binary()), "n": list(range(len(values)))}), path,
                   row_group_size=row_group_size)


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "a.parquet"
    write_values(path, [f"v{i}".encode() for i in range(10)])  # row groups of 3, 3, 3, 1
    return path


@pytest.fixture
def read_count(monkeypatch):
    calls = []
    original = pq.ParquetFile.read_row_group

    def counting(self, index, *args, **kwargs):
        calls.append(index)
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    return calls


def test_walking_the_rows_in_storage_order_reads_each_row_group_once(shard, read_count):
    reader = RowGroupReader("value")
    values = [reader.cell(shard, i // 3, i % 3) for i in range(10)]
    assert values == [f"v{i}".encode() for i in range(10)]
    assert read_count == [0, 1, 2, 3]


def test_the_cache_keeps_the_most_recently_used_row_groups(shard, read_count):
    reader = RowGroupReader("value", max_row_groups=2)
    for group in (0, 1, 0, 2, 0, 1):
        reader.row_group(shard, group)
    # 0, 1 read; 0 hit (now most recent); 2 read, evicts 1; 0 hit; 1 read again
    assert read_count == [0, 1, 2, 1]


def test_a_pickled_reader_starts_with_an_empty_cache_and_reads_the_same(shard):
    reader = RowGroupReader("value")
    reader.row_group(shard, 0)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._cache == {} and len(reader._cache) == 1
    assert clone.cell(shard, 1, 2) == b"v5"


def test_a_truncated_shard_is_a_clear_error(shard, tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot read row group 0 of .*broken.parquet.*download it again"):
        RowGroupReader("value").row_group(broken, 0)
    with pytest.raises(DataError, match="does not end with a parquet footer"):
        footer_sha256(broken)


def test_the_identity_changes_with_the_content_and_not_with_a_copy(shard, tmp_path):
    identity = parquet_file_identity(shard)
    assert set(identity) == {"name", "size", "mtime_ns", "footer"}
    copy = tmp_path / "copy" / "a.parquet"
    copy.parent.mkdir()
    copy.write_bytes(shard.read_bytes())
    assert footer_sha256(copy) == identity["footer"]
    stat = shard.stat()
    write_values(shard, [f"v{i}".encode() for i in range(9)] + [b"changed value"])
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert parquet_file_identity(shard)["footer"] != identity["footer"]  # statistics and sizes changed


def test_distillation_parquet_data_uses_the_same_reader_and_identity(tmp_path):
    from distill.data import ParquetImageDataset

    tiles = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)

    def png(tile):
        buffer = io.BytesIO()
        Image.fromarray(tile).save(buffer, "PNG")
        return buffer.getvalue()

    path = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image": [png(t) for t in tiles]}), path, row_group_size=2)
    dataset = ParquetImageDataset(path)
    assert isinstance(dataset._reader, RowGroupReader)
    np.testing.assert_array_equal(dataset[3], tiles[3])
    before = dataset.fingerprint
    stat = path.stat()
    pq.write_table(pa.table({"image": [png(t) for t in tiles[::-1]]}), path, row_group_size=2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert ParquetImageDataset(path).fingerprint != before
