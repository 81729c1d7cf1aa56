"""eva's slide-level tasks: Camelyon16-small and PANDA-small with eva's ABMIL.

Each slide becomes a bag: eva's ``ForegroundGridSampler`` picks up to 1,000 (Camelyon16,
0.25 um/px) or 200 (PANDA, 0.5 um/px) patches of 224 x 224 (:mod:`pathbench.data.slide_bags`);
the runner embeds every bag through the feature cache (one entry per slide, resumable and
shared between runs); ABMIL is trained 20 times with eva's protocol
(:mod:`pathbench.heads.abmil`) and each run's best-validation checkpoint is scored on the
test split: binary balanced accuracy (Camelyon16), macro accuracy (PANDA).

Slides that cannot be used (unreadable, no resolution in their metadata, no foreground) are
recorded as skips in ``run.json`` and the notes, never a crash of the whole run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from pathbench.benches.base import DataRequest, EmbeddingSet, Granularity, Inputs
from pathbench.errors import DataError, PathbenchError

SPLITS = ("train", "val", "test")
# eva's folder layout under DATA_ROOT, and each task's own layout markers
FOLDERS = {"cam16-small": ("camelyon16", "camelyon16_small"), "panda-small": ("panda", "panda_small")}


def settings(task: str):
    from pathbench.data.slide_bags import SLIDE_TASKS

    return SLIDE_TASKS[task]


def _is_layout(task: str, folder: Path) -> bool:
    if task == "cam16-small":
        return (folder / "training").is_dir() and (folder / "testing").is_dir()
    return (folder / "train_images").is_dir()


def find_root(task: str, data_root: str | os.PathLike) -> Path | None:
    """The task's own folder under eva's DATA_ROOT (``camelyon16/``, ``panda/``), or the root itself."""
    root = Path(data_root)
    candidates = [root / name for name in FOLDERS[task]] + [root]
    candidates += [c / "prostate-cancer-grade-assessment" for c in candidates if task == "panda-small"]
    return next((c for c in candidates if c.is_dir() and _is_layout(task, c)), None)


def synthetic_roots(cache_dir: str | None) -> dict[str, Path]:
    """``--data synthetic``: the generated slide sets (pyramidal TIFFs in eva's layouts)."""
    from pathbench.data.synthetic_slides import (
        make_synthetic_slides,
        synthetic_slides_root,
        synthetic_task_paths,
    )

    paths = synthetic_task_paths(make_synthetic_slides(synthetic_slides_root(cache_dir)))
    return {"cam16-small": paths["camelyon16"], "panda-small": paths["panda"],
            "panda_labels": paths["panda_labels"]}


def prepare(task: str, root: Path, panda_labels: str | None) -> tuple[dict[str, DataRequest], dict[str, Any]]:
    """One bag request per usable slide, keyed ``<task>/<split>/<slide_id>``; skips recorded."""
    from pathbench.data.slide_bags import open_bags, slides_for_task

    if task == "panda-small" and not panda_labels:
        from pathbench.data.slides import PANDA_LABELS_URL

        raise DataError("--bench eva:panda-small needs PANDA's label table (eva downloads it at run time): pass "
                        f"--panda-labels PATH (train_with_noisy_labels.csv, from {PANDA_LABELS_URL}).")
    slides = slides_for_task(task, root, panda_labels)
    bags, skipped = open_bags(slides, settings(task))
    requests = {f"{task}/{bag.slide.split}/{bag.slide.slide_id}": DataRequest(bag, Granularity.BAG,
                                                                             desc=f"{task} {bag.slide.slide_id}")
                for bag in bags}
    context = {"slides": {key: request.dataset.slide for key, request in requests.items()},
               "skipped": [dataclasses.asdict(s) for s in skipped]}
    return requests, context


def load_precomputed(task: str, folder: Path) -> tuple[dict[str, EmbeddingSet], dict[str, Any]]:
    """Bags eva wrote (``manifest.csv`` with ``wsi_id``, one ``.pt`` list per slide)."""
    from pathbench.data.eva_slides import read_eva_slide_embeddings

    embeddings, targets = {}, {}
    for split, values in read_eva_slide_embeddings(folder).items():
        for slide_id, bag, target in zip(values.slide_ids, values.bags, values.targets, strict=True):
            key = f"{task}/{split}/{slide_id}"
            embeddings[key] = EmbeddingSet([f"{slide_id}/{i}" for i in range(len(bag))], np.asarray(bag))
            targets[key] = int(target)
    return embeddings, {"targets": targets, "skipped": []}


def _split_bags(task: str, inputs: Inputs, context: dict[str, Any], split: str):
    keys = [k for k in inputs.embeddings if k.startswith(f"{task}/{split}/")]
    if "slides" in context:
        targets = [context["slides"][k].label for k in keys]
    else:
        targets = [context["targets"][k] for k in keys]
    return [np.array(inputs.embeddings[k].array, dtype=np.float32) for k in keys], targets  # owned, writable


def evaluate(task: str, inputs: Inputs, context: dict[str, Any], *, runs: int | None, seed: int, device: str,
             progress: bool) -> list[dict[str, Any]]:
    """eva's ABMIL protocol on the task's bags: one row per run (the test split's score)."""
    from pathbench.heads.abmil import AbmilProtocol, train_abmil

    splits = {split: _split_bags(task, inputs, context, split) for split in SPLITS}
    for split in ("train", "val"):
        if not splits[split][0]:
            raise DataError(f"{task}: no usable slide in the {split} split "
                            f"({len(context.get('skipped', []))} skipped); ABMIL needs train and val slides.")
    protocol = AbmilProtocol(runs=runs or AbmilProtocol().runs, seed=seed)
    test = splits["test"] if splits["test"][0] else None
    rows = train_abmil(splits["train"], splits["val"], test, num_classes=settings(task).num_classes,
                       protocol=protocol, device=device, progress=progress, task=task)
    for row in rows:
        row["n_slides"] = len((test or splits["val"])[0])
    return rows


def export(task: str, inputs: Inputs, context: dict[str, Any], out: Path, progress: bool = True) -> Path:
    """eva's slide-level offline format: one ``.pt`` per slide, manifest with ``wsi_id``, coords."""
    from pathbench.data.eva_slides import write_eva_slide_embeddings

    keys = [k for k in inputs.embeddings if k.startswith(f"{task}/")]
    if not keys:
        raise PathbenchError(f"{task}: nothing to export (every slide was skipped).")
    slides = [context["slides"][k] for k in keys]
    embeddings = [np.asarray(inputs.embeddings[k].array, dtype=np.float32) for k in keys]
    coords = [inputs.embeddings[k].coords for k in keys]
    return write_eva_slide_embeddings(out / FOLDERS[task][1], slides, embeddings, coords)
