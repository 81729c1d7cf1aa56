"""eva's segmentation tasks: CoNSeP and MoNuSAC with eva's decoder and MONAI's Dice.

The frozen model's last-layer patch tokens, as a ``(dim, h, w)`` grid per 224 x 224 image,
feed eva's ``ConvDecoderWithImage`` (or ``ConvDecoderMS``), trained 5 times with MONAI's
``DiceLoss`` and scored with eva's ``MonaiDiceScore`` (:mod:`pathbench.heads.segmentation`).

Two protocols, never ranked together:

- ``eva`` (exact): where eva's transforms are random (MoNuSAC's training crops) the encoder
  runs online at every step; deterministic crops (CoNSeP, every validation set) come from
  the feature cache, which is exact for them;
- ``cached``: every crop deterministic (eva's ``ResizeAndCrop``, as eva's offline MoNuSAC
  config), token grids stored once, so the runs train only the decoder.

For CoNSeP both protocols are the same computation. ``run.json`` and the protocol id record
which one ran. Finished runs are kept in the results folder, so an interrupted evaluation
resumes at the first run it had not finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pathbench.benches.base import DataRequest, Granularity, Inputs, RunContext
from pathbench.errors import PathbenchError

SEG_PROTOCOLS = ("eva", "cached")
DECODERS = ("conv_with_image", "conv_ms")
# (train split, reported split, eva's folder name under DATA_ROOT)
SPLITS = {"consep": ("train", "val", "consep"), "monusac": ("train", "test", "monusac")}


def _layout(task: str, folder: Path) -> bool:
    if task == "consep":
        return (folder / "Train" / "Images").is_dir()
    from pathbench.data.monusac import MONUSAC_SPLIT_FOLDERS

    return (folder / MONUSAC_SPLIT_FOLDERS["train"]).is_dir()


def find_root(task: str, data_root: str | os.PathLike) -> Path | None:
    root = Path(data_root)
    return next((c for c in (root / SPLITS[task][2], root) if c.is_dir() and _layout(task, c)), None)


def synthetic_root(cache_dir: str | None) -> Path:
    from pathbench.data.synthetic_segmentation import make_synthetic_segmentation, synthetic_segmentation_root

    return make_synthetic_segmentation(synthetic_segmentation_root(cache_dir))


def open_split(task: str, root: Path, split: str, strict: bool, cache_dir: str | None):
    """The reader of one split: the source images and masks, at their own size."""
    if task == "consep":
        from pathbench.data.consep import CoNSePDataset

        return CoNSePDataset(root, split, strict=strict)
    from pathbench.data.monusac import MoNuSACDataset

    return MoNuSACDataset(root, split, strict=strict, cache_dir=cache_dir)


def prepare(task: str, root: Path, seg_protocol: str, strict: bool,
            cache_dir: str | None) -> tuple[dict[str, DataRequest], dict[str, Any], bool]:
    """Grid requests of the resized splits; with the ``eva`` protocol MoNuSAC's training split
    is cropped at random each step and encoded online (no request, the encoder is wanted)."""
    from pathbench.data.segmentation import ResizedSegmentationDataset

    train, report, _ = SPLITS[task]
    online = task == "monusac" and seg_protocol == "eva"
    requests, sources = {}, {}
    for split in (train, report):
        source = open_split(task, root, split, strict, cache_dir)
        sources[split] = source
        if split == train and online:
            continue
        resized = ResizedSegmentationDataset(source)
        requests[f"{task}/{split}"] = DataRequest(resized, Granularity.GRID, desc=f"{task} {split}")
    return requests, {"sources": sources, "online": online}, online


def _cached_split(inputs: Inputs, key: str, need_images: bool):
    from pathbench.data.segmentation import stack_items
    from pathbench.heads.segmentation import CachedSplit

    dataset = inputs.requests[key].dataset
    images, masks = stack_items(dataset)
    grids = np.asarray(inputs.embeddings[key].array, dtype=np.float32)
    return CachedSplit(grids, masks, images if need_images else None)


def evaluate(task: str, inputs: Inputs, context: RunContext, *, seg_protocol: str, decoder: str,
             runs: int | None, max_steps: int | None, batch_size: int | None, seed: int) -> list[dict[str, Any]]:
    """eva's decoder protocol on one task: one row per run, kept as soon as it is finished."""
    from pathbench.heads.decoders import DECODERS as DECODER_SPECS
    from pathbench.heads.segmentation import CONSEP_PROTOCOL, MONUSAC_PROTOCOL, CropSplit, train_segmentation

    train_split, report_split, _ = SPLITS[task]
    state = inputs.context["segmentation"][task]
    protocol = CONSEP_PROTOCOL if task == "consep" else MONUSAC_PROTOCOL
    protocol = dataclasses.replace(protocol, runs=runs or protocol.runs, max_steps=max_steps or protocol.max_steps,
                                   batch_size=batch_size or protocol.batch_size, seed=seed)
    need_images = DECODER_SPECS[decoder].needs_images
    if state["online"]:
        train = CropSplit.from_dataset(state["sources"][train_split], crop="random_resized_crop")
    else:
        train = _cached_split(inputs, f"{task}/{train_split}", need_images)
    val = _cached_split(inputs, f"{task}/{report_split}", need_images)
    source = state["sources"][report_split]
    mean, std = inputs.normalisation or ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    settings = {"task": task, "protocol": seg_protocol, "decoder": decoder, "train": dataclasses.asdict(protocol),
                "grids": {k: e.key for k, e in inputs.embeddings.items() if k.startswith(f"{task}/")},
                "online": state["online"], "normalisation": [list(mean), list(std)]}
    progress_file = context.out_dir / f".{task}-partial-{_digest(settings)}.json"
    done = _read_progress(progress_file)
    rows = []
    for run in range(protocol.runs):
        if str(run) not in done:
            if state["online"] and inputs.encoder is None:
                raise PathbenchError(f"{task}: the eva protocol encodes MoNuSAC's random training crops online, so "
                                     "it needs a model (--model); precomputed grids take --seg-protocol cached.")
            row = train_segmentation(train, val, num_classes=5, ignore_index=source.ignore_index, decoder=decoder,
                                     protocol=protocol, encoder=inputs.encoder, mean=mean, std=std, runs=[run],
                                     class_names=list(source.classes), device=context.device,
                                     progress=context.progress)[0]
            done[str(run)] = _jsonable(row)
            _write_progress(progress_file, done)
        rows.append({"task": task, "run": run, "split": report_split, "metric": "dice", "value": done[str(run)]["val_dice"],
                     "protocol": seg_protocol, **{k: v for k, v in done[str(run)].items() if k not in ("run",)}})
    return rows


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _read_progress(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_progress(path: Path, done: dict[str, dict[str, Any]]) -> None:
    from pathbench._io import write_json

    write_json(path, done)
