"""eva's segmentation decoder: training steps per second from cached token grids versus online encoding.

Both protocols train the same ``ConvDecoderWithImage`` with eva's loss, optimiser and
batches on the same synthetic CoNSeP patches (250 x 250, resized to the input size):

- ``cached``: token grids and resized images computed once (timed separately), then each
  step only runs the decoder;
- ``online``: every step crops the batch from the source patches, normalises it and runs
  the frozen encoder before the decoder (eva's online protocol).

The default encoder is the random-weight ViT ``vit-tiny-random`` (2 blocks, ViT-Ti width), so
the ratio is the smallest it gets: a real ViT-B/L/g encoder costs far more per step. The
script also reports how far the two protocols' validation scores are apart (the
encoder's arithmetic on different batch compositions may differ in the last bits).

    python benchmarks/seg_decoder.py                                  # CPU-sized defaults
    python benchmarks/seg_decoder.py --batch-size 64 --steps 30 --n-train 2048 --device cuda
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from pathbench.data.consep import CoNSePDataset
from pathbench.data.synthetic_segmentation import make_synthetic_segmentation
from pathbench.extractors import load_extractor
from pathbench.heads import ProbeProtocol
from pathbench.heads.decoders import grid_from_tokens, tokens_to_grid
from pathbench.heads.segmentation import CachedSplit, CropSplit, normalise_images, train_segmentation


def make_encoder(extractor):
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        tokens = extractor.forward_tokens(pixels)
        patches = tokens.shape[1] - extractor.num_prefix_tokens
        return tokens_to_grid(tokens, extractor.num_prefix_tokens, grid_from_tokens(patches, pixels.shape[-2:]))

    return encode


def cache_split(split: CropSplit, encoder, mean, std, device, batch_size: int) -> CachedSplit:
    pairs = [split.crop_item(i, None) for i in range(len(split.images))]
    images = torch.from_numpy(np.stack([image.transpose(2, 0, 1) for image, _ in pairs]))
    grids = []
    for start in range(0, len(images), batch_size):
        pixels = normalise_images(images[start : start + batch_size].to(device), mean, std)
        grids.append(encoder(pixels).cpu())
    return CachedSplit(torch.cat(grids), np.stack([mask for _, mask in pairs]), images)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="input side (eva: 224; vit-tiny-random takes only 224)")
    parser.add_argument("--batch-size", type=int, default=8, help="eva: 64")
    parser.add_argument("--steps", type=int, default=8, help="timed optimiser steps per protocol")
    parser.add_argument("--n-train", type=int, default=128, help="training items (more than steps x batch: "
                        "no validation inside the timed steps)")
    parser.add_argument("--model", default="vit-tiny-random", help="encoder (any pathbench model taking 224 x 224)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        root = make_synthetic_segmentation(folder, tasks=("consep",))
        train_set = CoNSePDataset(root / "consep", "train", strict=False)
        val_set = CoNSePDataset(root / "consep", "val", strict=False)
        train_pairs = [train_set.item(i) for i in range(len(train_set))]
        val_pairs = [val_set.item(i) for i in range(4)]
    repeat = [train_pairs[i % len(train_pairs)] for i in range(args.n_train)]
    train = CropSplit([p[0] for p in repeat], [p[1] for p in repeat], "resize_and_crop", args.size)
    val = CropSplit([p[0] for p in val_pairs], [p[1] for p in val_pairs], "resize_and_crop", args.size)

    extractor = load_extractor(args.model, device=args.device)
    device = extractor.device
    encoder = make_encoder(extractor)
    mean, std = extractor.spec.mean, extractor.spec.std
    protocol = ProbeProtocol(lr=2e-3, batch_size=args.batch_size, max_steps=args.steps, patience=10**6, runs=1)
    common = dict(num_classes=5, protocol=protocol, mean=mean, std=std, device=device)

    # warm-up (kernels, allocator, lazy imports), not timed
    train_segmentation(train, val, encoder=encoder, **{**common, "protocol": ProbeProtocol(
        batch_size=args.batch_size, max_steps=2, runs=1)})

    synchronise(device)
    start = time.perf_counter()
    cached_train = cache_split(train, encoder, mean, std, device, args.batch_size)
    cached_val = cache_split(val, encoder, mean, std, device, args.batch_size)
    synchronise(device)
    encode_seconds = time.perf_counter() - start

    timings = {}
    rows = {}
    for name, (tr, va) in {"cached": (cached_train, cached_val), "online": (train, val)}.items():
        synchronise(device)
        start = time.perf_counter()
        rows[name] = train_segmentation(tr, va, encoder=encoder, **common)[0]
        synchronise(device)
        timings[name] = time.perf_counter() - start

    cached_rate = args.steps / timings["cached"]
    online_rate = args.steps / timings["online"]
    print(f"device {device}, torch threads {torch.get_num_threads()}, input {args.size} x {args.size}, "
          f"batch {args.batch_size}, {args.steps} steps, encoder {args.model}")
    print(f"cached: {cached_rate:8.2f} steps/s  ({timings['cached']:.1f} s; plus {encode_seconds:.1f} s once to "
          f"encode {args.n_train + len(val.images)} items)")
    print(f"online: {online_rate:8.2f} steps/s  ({timings['online']:.1f} s)")
    print(f"cached / online: {cached_rate / online_rate:.2f}x")
    print(f"validation Dice, cached {rows['cached']['val_dice']:.6f} vs online {rows['online']['val_dice']:.6f} "
          f"(|diff| {abs(rows['cached']['val_dice'] - rows['online']['val_dice']):.2e})")


if __name__ == "__main__":
    main()
