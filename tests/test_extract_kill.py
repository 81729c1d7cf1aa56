"""`pathbench extract` killed with SIGKILL at several points resumes to byte-identical outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
N_TILES, SHARD_SIZE = 24, 2

# The command line itself, with test-only changes the CLI has no flags for: shards of
# SHARD_SIZE tiles (so that a kill can land between shards of a small folder) and, with
# SLOW=1, a pause per tile and per fsync (a slow disk: every temporary file then lives
# long enough for the parent to kill the run in the middle of writing it).
SCRIPT = f"""
import os, sys, time
import torch
torch.set_num_threads(1)
import pathbench.data.base as base
import pathbench.features as features

extract_features = features.extract_features
features.extract_features = lambda *a, **k: extract_features(*a, **{{**k, "shard_size": {SHARD_SIZE}}})
if os.environ.get("SLOW") == "1":
    load, fsync = base.ImageFolderDataset.load, os.fsync
    def slow_load(self, index):
        time.sleep(0.03)
        return load(self, index)
    def slow_fsync(fd):
        time.sleep(0.1)
        fsync(fd)
    base.ImageFolderDataset.load, os.fsync = slow_load, slow_fsync
from pathbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _command(images: Path, cache: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", SCRIPT, "extract", "--model", "vit-tiny-random", "--data", str(images),
            "--out", str(out), "--cache-dir", str(cache), "--batch-size", "2", "--device", "cpu", "--no-progress"]


def _env(slow: bool = False) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "SLOW": "1" if slow else "0"}


def _temporaries(folder: Path, pattern: str = ".*.tmp") -> list[Path]:
    return list(folder.glob(pattern))


def _run_until_killed(command: list[str], ready: Callable[[], bool]) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()``."""
    process = subprocess.Popen(command, env=_env(slow=True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert alive, f"the run ended before the kill point: {stderr.decode()[-2000:]}"


@pytest.mark.slow
def test_extract_killed_at_several_points_resumes_to_identical_files(tmp_path):
    from PIL import Image

    images = tmp_path / "tiles"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_TILES):
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(images / f"tile-{i:02d}.png")

    reference = subprocess.run(_command(images, tmp_path / "cache-ref", tmp_path / "out-ref"), env=_env(),
                               capture_output=True, text=True, timeout=120)
    assert reference.returncode == 0, reference.stderr[-2000:]

    cache, out = tmp_path / "cache", tmp_path / "out"
    command = _command(images, cache, out)

    def entry() -> Path:
        return next(cache.glob("features/*/*"), tmp_path / "no-entry")

    def records() -> int:
        return len(_temporaries(entry(), "shard-*.json"))

    _run_until_killed(command, lambda: records() >= 2)  # between two shards
    _run_until_killed(command, lambda: records() >= 4 and bool(_temporaries(entry(), ".shard-*.tmp")))
    assert _temporaries(entry(), ".shard-*.tmp"), "the kill should land while a shard is written"
    _run_until_killed(command, lambda: bool(_temporaries(entry(), ".features.npy.*.tmp")))  # while joining
    assert not (entry() / "manifest.json").exists()
    _run_until_killed(command, lambda: bool(_temporaries(out)))  # while writing --out
    assert _temporaries(out) and (entry() / "manifest.json").exists()
    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    for name in ("embeddings.npy", "item_ids.txt"):
        assert (out / name).read_bytes() == (tmp_path / "out-ref" / name).read_bytes(), name
    assert sorted(p.name for p in entry().iterdir()) == ["features.npy", "item_ids.json", "manifest.json", "meta.json"]
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "item_ids.txt"]
