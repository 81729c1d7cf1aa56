"""What verifying a feature cache entry costs, on an entry of realistic size.

Writes the shards of a ``(n_items, dim)`` float32 entry (default 100,000 x 1536, 614 MB:
a 100k-tile benchmark embedded by a ViT-L with cls+mean pooling), then times:

- joining them into ``features.npy`` (every shard hashed on the way, the output hashed
  as it is written) against a plain read of the same bytes;
- the cheap check every read does (sizes, header, modification times);
- the full check (sha256 of every file: ``verify=True`` and the first read after a crash),
  with the file in the page cache (``warm``), which is what a read right after extraction
  sees; a cold read adds the disk's own read time;
- ``np.load`` of the whole array, for scale.

    python benchmarks/cache_verification.py [--items 100000] [--dim 1536] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pathbench import _io
from pathbench.features import _entry_problem, _finalise, _shard_rows, _write_shard


def _timed(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where to write the entry (default: a temporary folder)")
    args = parser.parse_args()
    entry = Path(tempfile.mkdtemp(prefix="pathbench-cache-bench-", dir=args.dir))
    try:
        rng = np.random.default_rng(0)
        n_shards = -(-args.items // args.shard_size)
        block = rng.standard_normal((args.shard_size, args.dim), dtype=np.float32)
        for shard in range(n_shards):
            _write_shard(entry, shard, block[: _shard_rows(shard, args.items, args.shard_size)])
        item_ids = [f"tile-{i:07d}" for i in range(args.items)]
        started = time.perf_counter()
        assert _finalise(entry, n_shards, args.items, args.shard_size, args.dim, item_ids) == []
        join = time.perf_counter() - started
        features = entry / "features.npy"
        size_mb = features.stat().st_size / 1e6

        def read_plain() -> None:
            with open(features, "rb") as handle:
                while handle.read(1 << 22):
                    pass

        results = {
            "join shards (hashing in and out)": join,
            "plain read of features.npy": _timed(read_plain),
            "cheap check (every read)": _timed(lambda: _entry_problem(entry, full=False), repeats=20),
            "full check, warm (sha256 of every file)": _timed(lambda: _entry_problem(entry, full=True)),
            "np.load of the whole array": _timed(lambda: np.load(features)),
        }
        print(f"entry: {args.items} x {args.dim} float32, features.npy {size_mb:.0f} MB, {n_shards} shards")
        for name, seconds in results.items():
            rate = f"  ({size_mb / seconds:,.0f} MB/s)" if seconds > 0.01 else ""
            print(f"{name:45s} {seconds * 1e3:10.1f} ms{rate}")
        assert _entry_problem(entry, full=True) is None
        assert _io.read_json(entry / "manifest.json")["files"]["features.npy"]["size"] == features.stat().st_size
    finally:
        shutil.rmtree(entry, ignore_errors=True)


if __name__ == "__main__":
    main()
