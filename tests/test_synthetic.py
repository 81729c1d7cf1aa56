"""Every benchmark's synthetic data is written in a format its own reader accepts."""

from __future__ import annotations

import pytest

from pathbench.data.synthetic import write_synthetic
from pathbench.errors import PathbenchError


def test_plism_synthetic_is_read_back_by_the_plism_reader(tmp_path):
    import pyarrow.parquet as pq

    root = write_synthetic("plism", tmp_path / "plism")
    shards = sorted(root.rglob("*.parquet"))
    assert shards
    columns = set(pq.read_schema(shards[0]).names)
    assert {"stainer", "scanner", "slide_id", "tile_id", "png"} <= columns


def test_hest_synthetic_has_the_hest_bench_layout(tmp_path):
    root = write_synthetic("hest", tmp_path / "hest")
    task = next(p for p in root.iterdir() if p.is_dir())
    assert (task / "var_50genes.json").is_file()
    assert list((task / "splits").glob("train_*.csv")) and list((task / "patches").glob("*.h5"))
    assert list((task / "adata").glob("*.h5ad"))


def test_eva_synthetic_has_eva_layouts(tmp_path):
    root = write_synthetic("eva", tmp_path / "eva")
    assert (root / "ICIAR2018_BACH_Challenge" / "Photos").is_dir() or any(root.rglob("Photos"))
    assert any(root.rglob("camelyonpatch_level_2_split_test_x.h5"))


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(PathbenchError, match="expected one of plism, hest, eva"):
        write_synthetic("camelyon", tmp_path)
