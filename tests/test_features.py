"""The feature store: cache hits, resume after a crash, corrupt shards, distributed runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from pathbench.data.base import ArrayTileDataset, ImageFolderDataset
from pathbench.errors import DataError, PathbenchError
from pathbench.features import cache_root, extract_features


class CountingDataset(ArrayTileDataset):
    """Counts reads; optionally crashes after ``crash_after`` reads (a simulated kill)."""

    def __init__(self, images, crash_after=None):
        super().__init__(images, fingerprint="test:counting")
        self.reads = 0
        self.crash_after = crash_after

    def load(self, index):
        if self.crash_after is not None and self.reads >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        self.reads += 1
        return super().load(index)


def _extract(extractor, dataset, cache, **kwargs):
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("shard_size", 8)
    return extract_features(extractor, dataset, cache_dir=cache, progress=False, **kwargs)


def test_features_equal_the_extractors_own_embeddings(tiny_extractor, random_tiles, tmp_path):
    features = _extract(tiny_extractor, ArrayTileDataset(random_tiles[:10]), tmp_path, pooling="cls+mean")
    expected = tiny_extractor.embed(torch.from_numpy(random_tiles[:10]), pooling="cls+mean").numpy()
    assert features.shape == (10, 384)
    np.testing.assert_allclose(np.asarray(features), expected, atol=1e-5)
    assert features.item_ids == [str(i) for i in range(10)]


def test_an_identical_run_does_no_work(tiny_extractor, random_tiles, tmp_path):
    first = _extract(tiny_extractor, CountingDataset(random_tiles[:12]), tmp_path)
    again = CountingDataset(random_tiles[:12])
    second = _extract(tiny_extractor, again, tmp_path)
    assert again.reads == 0
    assert second.key == first.key
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_the_key_changes_with_pooling_precision_and_items(tiny_extractor, random_tiles, tmp_path):
    base = _extract(tiny_extractor, ArrayTileDataset(random_tiles[:8]), tmp_path)
    other_pooling = _extract(tiny_extractor, ArrayTileDataset(random_tiles[:8]), tmp_path, pooling="mean")
    other_items = _extract(tiny_extractor, ArrayTileDataset(random_tiles[:8], item_ids=list("abcdefgh")), tmp_path)
    other_pixels = _extract(tiny_extractor, ArrayTileDataset(random_tiles[8:16]), tmp_path)
    assert len({base.key, other_pooling.key, other_items.key, other_pixels.key}) == 4


def test_a_crashed_run_resumes_losing_at_most_the_shard_in_flight(tiny_extractor, random_tiles, tmp_path):
    images = random_tiles[:30]  # 4 shards of 8, the last one short
    crashing = CountingDataset(images, crash_after=19)  # dies inside the third shard
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_extractor, crashing, tmp_path)
    entry = next((tmp_path / "features").glob("*/*"))
    assert sorted(p.name for p in entry.glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    assert not (entry / "manifest.json").exists() and not (entry / "features.npy").exists()
    # a half-written temporary file left by the kill is never read back
    (entry / ".shard-00002.npy.abc.tmp").write_bytes(b"\x93NUMPY garbage")
    resumed = CountingDataset(images)
    features = _extract(tiny_extractor, resumed, tmp_path)
    assert resumed.reads == 30 - 16
    fresh = _extract(tiny_extractor, ArrayTileDataset(images, fingerprint="other"), tmp_path / "fresh")
    np.testing.assert_array_equal(np.asarray(features), np.asarray(fresh))
    assert not list(entry.glob("shard-*.npy"))


def test_a_corrupt_shard_is_recomputed_not_trusted(tiny_extractor, random_tiles, tmp_path):
    images = random_tiles[:16]
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_extractor, CountingDataset(images, crash_after=12), tmp_path)
    entry = next((tmp_path / "features").glob("*/*"))
    np.save(entry / "shard-00000.npy", np.zeros((3, 5), dtype=np.float32))  # wrong shape
    resumed = CountingDataset(images)
    features = _extract(tiny_extractor, resumed, tmp_path)
    assert resumed.reads == 16
    expected = tiny_extractor.embed(torch.from_numpy(images[:4])).numpy()
    np.testing.assert_allclose(np.asarray(features)[:4], expected, atol=1e-5)


def test_shard_size_must_be_a_multiple_of_batch_size(tiny_extractor, random_tiles, tmp_path):
    with pytest.raises(PathbenchError, match="multiple of batch_size"):
        _extract(tiny_extractor, ArrayTileDataset(random_tiles[:4]), tmp_path, batch_size=3, shard_size=8)


def test_duplicate_item_ids_are_refused(tiny_extractor, random_tiles, tmp_path):
    with pytest.raises(DataError, match="not unique"):
        _extract(tiny_extractor, ArrayTileDataset(random_tiles[:2], item_ids=["a", "a"]), tmp_path)


def test_image_folder_reader_reads_files_and_reports_bad_ones(tmp_path):
    from PIL import Image

    folder = tmp_path / "tiles"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (50, 40), (10, 20, 30)).save(folder / "a.png")
    Image.new("L", (50, 40), 7).save(folder / "sub" / "b.jpg")
    (folder / "sub" / "c.png").write_bytes(b"not a png")
    dataset = ImageFolderDataset(folder)
    assert dataset.item_ids == ["a.png", "sub/b.jpg", "sub/c.png"]
    assert dataset[0].shape == (40, 50, 3) and dataset[0].dtype == np.uint8
    assert dataset[1].shape == (40, 50, 3)
    with pytest.raises(DataError, match=r"cannot read image .*c\.png"):
        dataset[2]
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")


def test_cache_root_honours_flag_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHBENCH_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"


DISTRIBUTED_SCRIPT = r"""
import os, sys
import numpy as np, torch
import torch.distributed as dist
from pathbench.data.base import ArrayTileDataset
from pathbench.extractors import load_extractor
from pathbench.features import extract_features, init_distributed_from_env

torch.set_num_threads(1)
init_distributed_from_env()
images = np.random.default_rng(0).integers(0, 256, (22, 224, 224, 3), dtype=np.uint8)
extractor = load_extractor("vit-tiny-random", device="cpu")
features = extract_features(extractor, ArrayTileDataset(images), cache_dir=sys.argv[1], batch_size=2,
                            shard_size=4, progress=False)
if dist.get_rank() == 0:
    np.save(sys.argv[2], np.asarray(features))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_give_the_same_features_as_one(tmp_path):
    script = tmp_path / "dist_extract.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "cache2"), str(tmp_path / "two.npy")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with socket.socket() as probe:  # a free port: another test run may hold any fixed one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    init = f"dist.init_process_group('gloo', rank=0, world_size=1, init_method='tcp://127.0.0.1:{port}')"
    single = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED_SCRIPT.replace("init_distributed_from_env()", init),
         str(tmp_path / "cache1"), str(tmp_path / "one.npy")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"))
