"""Extraction pipeline throughput against the bare model forward, in one process.

The pipeline (dataset -> DataLoader -> collate -> normalise -> forward -> pool -> shard
files) is timed on the same tiles as a bare loop over the model's forward on tensors that
were decoded and normalised beforehand. The ratio says how busy the pipeline keeps the
model (1.0 = no overhead).

    python benchmarks/extract_throughput.py [--model vit-tiny-random] [--tiles 512]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import numpy as np
import torch

from pathbench.data.base import ArrayTileDataset, TileDataset
from pathbench.data.images import decode_image
from pathbench.extractors import load_extractor, pool_tokens
from pathbench.features import extract_features


class PngDataset(TileDataset):
    """Tiles stored as PNG bytes, decoded on access (as the PLISM parquet shards are)."""

    def __init__(self, images: np.ndarray):
        from PIL import Image

        self.blobs = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            self.blobs.append(buffer.getvalue())
        self.item_ids = [str(i) for i in range(len(images))]
        self.fingerprint = f"bench-png-{len(images)}"

    def load(self, index: int) -> np.ndarray:
        return decode_image(self.blobs[index], f"tile {index}")


def bare_forward(extractor, images: np.ndarray, batch_size: int) -> float:
    batches = [extractor.preprocess(torch.from_numpy(images[i : i + batch_size]))
               for i in range(0, len(images), batch_size)]
    extractor.forward_tokens(batches[0])  # warm-up
    start = time.perf_counter()
    for pixels in batches:
        pool_tokens(extractor.forward_tokens(pixels), extractor.num_prefix_tokens, extractor.pooling).numpy()
    return len(images) / (time.perf_counter() - start)


def pipeline(extractor, dataset, batch_size: int, num_workers: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        extract_features(extractor, dataset, cache_dir=cache, batch_size=batch_size, shard_size=batch_size * 4,
                         num_workers=num_workers, progress=False)
        return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-tiny-random")
    parser.add_argument("--tiles", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    extractor = load_extractor(args.model, device="auto")
    images = np.random.default_rng(0).integers(0, 256, (args.tiles, 224, 224, 3), dtype=np.uint8)
    print(f"model {args.model} on {extractor.device}, {args.tiles} tiles, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    in_memory = ArrayTileDataset(images)
    png = PngDataset(images)
    bare_forward(extractor, images[: args.batch_size], args.batch_size)  # warm-up
    cases = (("decoded tiles, 0 workers", in_memory, 0), ("PNG tiles, 0 workers", png, 0),
             ("PNG tiles, 1 worker", png, 1))
    # Runs alternate bare / pipeline so that load from elsewhere hits both alike; each
    # ratio is taken within one pair of neighbouring runs and the median is reported.
    ratios: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    rates: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    bare_rates = []
    for repeat in range(args.repeats):
        for label, dataset, workers in cases:
            bare = bare_forward(extractor, images, args.batch_size)
            dataset.fingerprint = f"{label}#{repeat}-{time.time()}"  # never a cache hit
            rate = pipeline(extractor, dataset, args.batch_size, workers)
            bare_rates.append(bare)
            rates[label].append(rate)
            ratios[label].append(rate / bare)
    print(f"bare forward on pre-decoded tensors: {statistics.median(bare_rates):8.1f} tiles/s (median)")
    for label, _, _ in cases:
        print(f"pipeline, {label:<24}: {statistics.median(rates[label]):8.1f} tiles/s   "
              f"ratio to bare forward {statistics.median(ratios[label]):5.2f} "
              f"(runs: {', '.join(f'{r:.2f}' for r in ratios[label])})")


if __name__ == "__main__":
    main()
