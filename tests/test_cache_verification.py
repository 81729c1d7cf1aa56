"""The feature cache is verified, not trusted: corrupt or truncated files are recomputed, never used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from pathbench import _io
from pathbench.data.base import ArrayTileDataset
from pathbench.features import CacheWarning, extract_features


class CountingDataset(ArrayTileDataset):
    """Counts reads; optionally crashes after ``crash_after`` reads (a simulated kill)."""

    def __init__(self, images, crash_after=None):
        super().__init__(images, fingerprint="test:verification")
        self.reads = 0
        self.crash_after = crash_after

    def load(self, index):
        if self.crash_after is not None and self.reads >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        self.reads += 1
        return super().load(index)


def _extract(extractor, dataset, cache, **kwargs):
    return extract_features(extractor, dataset, cache_dir=cache, progress=False, batch_size=4, shard_size=8, **kwargs)


@pytest.fixture
def cached(tiny_extractor, random_tiles, tmp_path):
    """A complete entry of 12 tiles: (images, its folder, the true embeddings)."""
    images = random_tiles[:12]
    features = _extract(tiny_extractor, CountingDataset(images), tmp_path)
    return images, features.path, np.asarray(features).copy()


def _read_again(extractor, images, cache, **kwargs):
    """Extract again, returning (embeddings, reads, CacheWarning messages)."""
    dataset = CountingDataset(images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = _extract(extractor, dataset, cache, **kwargs)
    notices = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    return np.asarray(features).copy(), dataset.reads, notices


def _flip_a_byte_keeping_size_and_mtime(path, offset=-5):
    """Silent corruption: the same size and modification time, one byte different."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_garbage_of_the_same_size_in_features_npy_is_recomputed_not_scored(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    np.save(entry / "features.npy", np.ones_like(truth))  # a constant model would score perfectly
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    np.testing.assert_array_equal(again, truth)
    assert reads == 12
    assert len(notices) == 1 and "features.npy" in notices[0] and "recomputing" in notices[0]
    assert "\n" not in notices[0]


def test_a_truncated_features_npy_is_recomputed_with_one_notice(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    path = entry / "features.npy"
    path.write_bytes(path.read_bytes()[:1000])
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    np.testing.assert_array_equal(again, truth)
    assert reads == 12 and len(notices) == 1 and "bytes" in notices[0]


def test_a_truncated_item_ids_file_is_recomputed(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    (entry / "item_ids.json").write_text('["0", "1"')
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    np.testing.assert_array_equal(again, truth)
    assert reads == 12 and len(notices) == 1 and "item_ids.json" in notices[0]


def test_a_sound_entry_is_read_without_work_or_notice(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path, verify=True)
    np.testing.assert_array_equal(again, truth)
    assert reads == 0 and notices == []


def test_silent_corruption_is_caught_by_verify_only(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    _flip_a_byte_keeping_size_and_mtime(entry / "features.npy")
    _, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    assert reads == 0 and notices == []  # the cheap checks cannot see it (documented)
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path, verify=True)
    np.testing.assert_array_equal(again, truth)
    assert reads == 12 and len(notices) == 1 and "sha256" in notices[0]


def test_the_first_read_after_a_crash_hashes_everything(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    _flip_a_byte_keeping_size_and_mtime(entry / "features.npy")
    marker = entry / f".extracting-{_io.owner_tag().rsplit('-', 1)[0]}-{_dead_pid()}"
    _io.write_json(marker, {})  # the process died after writing the manifest
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    np.testing.assert_array_equal(again, truth)
    assert reads == 12 and len(notices) == 1 and "sha256" in notices[0]
    assert not list(entry.glob(".extracting-*"))


def test_a_sound_entry_left_by_a_crash_is_kept_and_its_marker_removed(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    _io.write_json(entry / ".extracting-otherhost-1", {})
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    np.testing.assert_array_equal(again, truth)
    assert reads == 0 and notices == []
    assert not list(entry.glob(".extracting-*"))


def test_a_copied_entry_is_hashed_once_and_trusted(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    path = entry / "features.npy"
    path.write_bytes(path.read_bytes())  # same bytes, new mtime: what `cp` without -p does
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    np.testing.assert_array_equal(again, truth)
    assert reads == 0 and notices == []
    assert _io.read_json(entry / "manifest.json")["files"]["features.npy"]["mtime_ns"] == path.stat().st_mtime_ns


def test_the_manifest_records_size_and_sha256_of_every_file(cached):
    _, entry, _ = cached
    manifest = _io.read_json(entry / "manifest.json")
    assert manifest["format"] == 2
    for name in ("features.npy", "item_ids.json"):
        digest = _io.file_digest(entry / name)
        assert manifest["files"][name]["size"] == digest.size
        assert manifest["files"][name]["sha256"] == digest.sha256
    assert sorted(manifest["shards"]) == ["shard-00000.npy", "shard-00001.npy"]
    assert all(len(record["sha256"]) == 64 and record["size"] > 0 for record in manifest["shards"].values())
    assert json.loads((entry / "item_ids.json").read_text()) == [str(i) for i in range(12)]


def test_an_entry_without_checksums_is_recomputed_once(tiny_extractor, cached, tmp_path):
    images, entry, truth = cached
    old = _io.read_json(entry / "manifest.json")
    _io.write_json(entry / "manifest.json", {"format": 1, "n_items": old["n_items"], "dim": old["dim"]})
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    np.testing.assert_array_equal(again, truth)
    assert reads == 12 and len(notices) == 1 and "without checksums" in notices[0]
    _, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    assert reads == 0 and notices == []


def test_a_silently_corrupt_shard_is_recomputed_when_joined(tiny_extractor, random_tiles, tmp_path):
    images = random_tiles[:20]  # shards of 8, 8, 4
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_extractor, CountingDataset(images, crash_after=17), tmp_path)
    entry = next((tmp_path / "features").glob("*/*"))
    assert (entry / "shard-00001.json").is_file()
    _flip_a_byte_keeping_size_and_mtime(entry / "shard-00001.npy")
    again, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    fresh = np.array(_extract(tiny_extractor, ArrayTileDataset(images, fingerprint="fresh"), tmp_path / "fresh"))
    np.testing.assert_array_equal(again, fresh)
    assert reads == 4 + 8  # the missing shard, then the corrupt one
    assert len(notices) == 1 and "[1]" in notices[0]


def test_a_shard_without_its_record_is_not_trusted(tiny_extractor, random_tiles, tmp_path):
    images = random_tiles[:16]
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_extractor, CountingDataset(images, crash_after=12), tmp_path)
    entry = next((tmp_path / "features").glob("*/*"))
    (entry / "shard-00000.json").unlink()  # killed between the shard and its record
    _, reads, notices = _read_again(tiny_extractor, images, tmp_path)
    assert reads == 16 and notices == []


def test_a_resumed_run_sweeps_temporaries_of_dead_writers_only(tiny_extractor, random_tiles, tmp_path):
    images = random_tiles[:16]
    with pytest.raises(KeyboardInterrupt):
        _extract(tiny_extractor, CountingDataset(images, crash_after=12), tmp_path)
    entry = next((tmp_path / "features").glob("*/*"))
    host = _io.owner_tag().rsplit("-", 1)[0]
    dead = entry / f".shard-00001.npy.k3j2h1g0.{host}-{_dead_pid()}.tmp"
    live = entry / f".shard-00001.npy.a1b2c3d4.{host}-{os.getppid()}.tmp"
    for path in (dead, live):
        path.write_bytes(b"\x93NUMPY half a shard")
    _read_again(tiny_extractor, images, tmp_path)
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in entry.iterdir() if p != live) == [
        "features.npy", "item_ids.json", "manifest.json", "meta.json"]


def test_a_disk_that_keeps_corrupting_shards_is_an_error_not_a_loop(tiny_extractor, random_tiles, tmp_path,
                                                                     monkeypatch):
    import pathbench.features as features_module
    from pathbench.errors import PathbenchError

    monkeypatch.setattr(features_module, "_copy_shard", lambda *args: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        with pytest.raises(PathbenchError, match="fail verification again.*check the disk"):
            _extract(tiny_extractor, CountingDataset(random_tiles[:8]), tmp_path)
    assert not list((tmp_path / "features").glob("*/*/manifest.json"))
