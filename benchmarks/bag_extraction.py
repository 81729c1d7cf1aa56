"""Bag extraction throughput (slide tasks): read -> sample -> embed against the bare forward.

Times, in one process and on the same slides, (1) eva's foreground-grid sampling of each
slide, (2) the whole pipeline the eva benchmark runs per slide (open the slide, read each
sampled patch at the target resolution, resize, embed through the feature cache), and
(3) the bare model forward on the same patches read and normalised beforehand. The ratio
(2)/(3) says how much of the time goes to reading whole-slide images rather than the model.

    python benchmarks/bag_extraction.py [--model vit-tiny-random] [--task cam16-small] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from pathbench.data.slide_bags import SLIDE_TASKS, bag_for_slide, slides_for_task
from pathbench.data.synthetic_slides import make_synthetic_slides, synthetic_task_paths
from pathbench.extractors import load_extractor
from pathbench.features import extract_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit-tiny-random")
    parser.add_argument("--task", default="cam16-small", choices=sorted(SLIDE_TASKS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as scratch:
        paths = synthetic_task_paths(make_synthetic_slides(scratch))
        root = paths["camelyon16"] if args.task == "cam16-small" else paths["panda"]
        slides = slides_for_task(args.task, root, paths["panda_labels"])
        settings = SLIDE_TASKS[args.task]
        extractor = load_extractor(args.model, device="cpu").with_input_size(224, 224)

        sampling, pipeline, bare = [], [], []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            bags = [bag_for_slide(slide, settings) for slide in slides]
            sampling.append(time.perf_counter() - start)
            n_patches = sum(len(bag) for bag in bags)
            with tempfile.TemporaryDirectory() as cache:
                start = time.perf_counter()
                for bag in bags:
                    extract_features(extractor, bag, cache_dir=cache, batch_size=args.batch_size,
                                     shard_size=args.batch_size * 4, progress=False)
                    bag.close()
                pipeline.append(time.perf_counter() - start)
            patches = np.stack([bag[i] for bag in bags for i in range(len(bag))])
            for bag in bags:
                bag.close()
            batches = [extractor.preprocess(torch.from_numpy(patches[i : i + args.batch_size]))
                       for i in range(0, len(patches), args.batch_size)]
            if repeat == 0:
                extractor.embed_pixels(batches[0])  # warm-up
            start = time.perf_counter()
            for pixels in batches:
                extractor.embed_pixels(pixels).numpy()
            bare.append(time.perf_counter() - start)

    sample_s, pipe_s, bare_s = (statistics.median(v) for v in (sampling, pipeline, bare))
    print(f"{args.task}: {len(slides)} slides, {n_patches} patches, model {args.model}, batch {args.batch_size}, "
          f"median of {args.repeats}")
    print(f"  sampling (foreground grid):       {sample_s:7.2f} s")
    print(f"  read + resize + embed (pipeline): {pipe_s:7.2f} s  {n_patches / pipe_s:8.1f} patches/s")
    print(f"  bare forward on the same patches: {bare_s:7.2f} s  {n_patches / bare_s:8.1f} patches/s")
    print(f"  pipeline / bare forward: {pipe_s / bare_s:.2f}x the time")


if __name__ == "__main__":
    main()
