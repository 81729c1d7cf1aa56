"""eva's patch-classification tasks: BACH, CRC, MHIST and PatchCamelyon with eva's linear probe.

A frozen backbone embeds every image (eva's 224 x 224 crops, CLS token by default), then a
linear head is trained 5 times per task with eva's protocol (:mod:`pathbench.heads.linear`)
and the best-validation checkpoint of each run is scored: balanced accuracy (binary) or
macro accuracy (multiclass), on the test split where eva has one (PCam) and on the
validation split otherwise. Embeddings eva wrote itself are read from its manifests.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pathbench.benches.base import DataRequest, EmbeddingSet
from pathbench.data.eva import (
    TASK_DATA,
    find_task_root,
    open_split,
    read_eva_embeddings,
    write_eva_embeddings,
)
from pathbench.errors import DataError, PathbenchError

if TYPE_CHECKING:
    from pathbench.heads import ProbeProtocol

DEFAULT_POOLING = "cls"


@dataclasses.dataclass(frozen=True)
class EvaTask:
    """One patch-classification task as eva runs it.

    Attributes:
        name: pathbench name (``bach``, ``crc``, ``mhist``, ``pcam``).
        label: column title in tables.
        num_classes: number of classes (2: binary head, one logit + BCE).
        patience: early-stopping patience in epochs (eva's config).
        train_split, val_split: eva split names used to train and to early-stop/select.
        report_split: the split whose score eva reports (test where one exists, else val).
    """

    name: str
    label: str
    num_classes: int
    patience: int
    train_split: str
    val_split: str
    report_split: str

    @property
    def metric(self) -> str:
        return "balanced_accuracy" if self.num_classes == 2 else "macro_accuracy"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.train_split, self.val_split, self.report_split)))


TASKS: dict[str, EvaTask] = {
    "bach": EvaTask("bach", "BACH", 4, 1250, "train", "val", "val"),
    "crc": EvaTask("crc", "CRC", 9, 7, "train", "val", "val"),
    # eva validates (and reports) MHIST on the partition its annotations call "test".
    "mhist": EvaTask("mhist", "MHIST", 2, 278, "train", "test", "test"),
    "pcam": EvaTask("pcam", "PCam", 2, 3, "train", "val", "test"),
}
TASK_ALIASES = {"patch_camelyon": "pcam", "patchcamelyon": "pcam"}


def protocol_for(task: EvaTask, runs: int = 5, max_steps: int = 12_500, seed: int = 0,
                 batch_size: int = 256) -> ProbeProtocol:
    """eva's linear-probe protocol for ``task`` (its patience, 5 runs, 12,500 steps, batch 256)."""
    from pathbench.heads import ProbeProtocol

    return ProbeProtocol(patience=task.patience, runs=runs, max_steps=max_steps, seed=seed, batch_size=batch_size)


# eva's protocol is sized for tens of thousands of embeddings; the synthetic splits hold tens.
# With batch 256 an epoch would be one step and CRC's and PCam's patience (7 and 3 epochs)
# would stop every run before it learns anything, so synthetic data trains with smaller
# batches and fewer steps unless --probe-batch-size / --max-steps say otherwise.
SYNTHETIC_PROBE_BATCH_SIZE = 2
SYNTHETIC_MAX_STEPS = 1_000


def evaluate_task(
    task: str | EvaTask,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    protocol: ProbeProtocol | None = None,
    device: str = "auto",
    progress: bool = False,
    head: str = "linear",
    knn: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train and score the head of one task on embeddings.

    Args:
        task: task name or :class:`EvaTask`.
        splits: ``{split: (embeddings (N, D) float32, targets (N,) int)}`` with at least the
            task's train, val and reported splits (eva's names).
        protocol: defaults to :func:`protocol_for` the task (linear probe).
        device: where the head runs (``auto``: CUDA when available).
        head: ``linear`` (eva's linear probe, ``protocol.runs`` runs) or ``knn`` (DINO's
            weighted kNN on the train split, one deterministic run; ``knn`` holds ``k`` and
            ``temperature``).

    Returns:
        One row per run: ``task, run, split, metric, value`` (the headline metric on the
        reported split), ``val_value``, the head's own details, and eva's full metric set on
        both splits (``<split>_loss``, ``_auroc``, ``_accuracy``, ``_balanced_accuracy``,
        ``_f1``, ``_precision``, ``_recall``; the kNN has no loss).
    """
    from pathbench.heads.eva_metrics import classification_metrics, run_metrics

    task = TASKS[task] if isinstance(task, str) else task
    for split in task.splits:
        if split not in splits:
            raise DataError(f"{task.label}: split {split!r} is missing (found {', '.join(splits) or 'none'}); "
                            f"eva's {task.label} needs {', '.join(task.splits)}.")
    train_x, train_y = splits[task.train_split]
    val_x, val_y = splits[task.val_split]
    report_x, report_y = splits[task.report_split]
    reported = dict.fromkeys((task.val_split, task.report_split))
    if head == "knn":
        from pathbench.heads.knn import KnnProbe

        settings = {"k": 20, "temperature": 0.07, **(knn or {})}
        probe = KnnProbe(task.num_classes, k=settings["k"], temperature=settings["temperature"],
                         device=device).fit(train_x, train_y)
        row = {"task": task.name, "run": 0, "split": task.report_split, "metric": task.metric,
               "value": float(probe.score(report_x, report_y)), "val_value": float(probe.score(val_x, val_y)),
               "knn_backend": probe.backend_}
        for split in reported:
            x, y = splits[split]
            metrics = classification_metrics(probe.predict_scores(x), y, task.num_classes, kind="probabilities")
            row.update({f"{split}_{name}": value for name, value in metrics.items()})
        return [row]
    if head != "linear":
        raise PathbenchError(f"unknown eva head {head!r}: expected linear or knn.")
    from pathbench.heads import LinearProbe

    protocol = protocol or protocol_for(task)
    probe = LinearProbe(task.num_classes, protocol, device=device, progress=progress)
    probe.fit(train_x, train_y, val_x, val_y)
    values = probe.score(report_x, report_y)
    val_values = probe.score(val_x, val_y)
    full = {split: run_metrics(probe.predict_logits(splits[split][0]), splits[split][1], task.num_classes,
                               loss_batch_size=protocol.batch_size) for split in reported}
    rows = []
    for run in range(protocol.runs):
        row = {"task": task.name, "run": run, "split": task.report_split, "metric": task.metric,
               "value": float(values[run]), "best_step": int(probe.best_step_[run]),
               "val_value": float(val_values[run]), "best_epoch": int(probe.best_epoch_[run]),
               "stop_step": int(probe.stop_step_[run])}
        for split, per_run in full.items():
            row.update({f"{split}_{name}": value for name, value in per_run[run].items()})
        rows.append(row)
    return rows


def synthetic_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where ``--data synthetic`` writes its datasets: ``<pathbench cache>/datasets/synthetic-eva-v<N>``."""
    from pathbench.data.synthetic_eva import GENERATOR_VERSION
    from pathbench.settings import cache_root

    return cache_root(cache_dir) / "datasets" / f"synthetic-eva-v{GENERATOR_VERSION}"


def resolve_data(data: str | None, tasks: list[str] | None, cache_dir: str | None) -> tuple[Path, dict[str, Path]]:
    """(data root, {task: task folder}) for ``--data PATH|synthetic`` and the requested tasks."""
    if not data:
        raise PathbenchError("--bench eva needs --data PATH (folders in eva's layouts, as eva's DATA_ROOT), "
                             "--data synthetic (offline demo data), or --embeddings-dir DIR.")
    if data == "synthetic":
        from pathbench.data.synthetic_eva import make_synthetic_eva

        root = make_synthetic_eva(synthetic_root(cache_dir), tasks=tuple(tasks or TASKS))
    elif data == "hf":
        raise PathbenchError("eva's datasets are not on the Hugging Face hub in eva's layout; download them as "
                             "eva's docs describe (or with eva's `download: true`) and pass --data PATH.")
    else:
        root = Path(data).expanduser()
        if not root.is_dir():
            raise DataError(f"--data {data}: no such folder; expected a folder holding eva's task folders "
                            f"(bach/, crc/, mhist/, patch_camelyon/) or one task's own layout.")
    found = {t: find_task_root(t, root) for t in (tasks or TASKS)}
    missing = [t for t, folder in found.items() if folder is None]
    if tasks and missing:
        raise DataError(f"--data {root}: no data for {', '.join(missing)} in eva's layout; expected e.g. "
                        f"{root}/bach/ICIAR2018_BACH_Challenge/Photos, {root}/crc/NCT-CRC-HE-100K, "
                        f"{root}/mhist/annotations.csv, {root}/patch_camelyon/camelyonpatch_level_2_split_*_x.h5.")
    present = {t: f for t, f in found.items() if f is not None}
    if not present:
        raise DataError(f"--data {root}: none of the eva tasks ({', '.join(TASKS)}) was found in eva's layout.")
    return root, present


def find_manifest(task: str, embeddings_dir: Path, single: bool) -> Path | None:
    """The eva folder of ``task`` under ``embeddings_dir`` (``DIR/<eva folder>``, ``DIR/<task>``, or
    ``DIR`` itself when only one task is evaluated)."""
    for name in dict.fromkeys((TASK_DATA[task].eva_dir, task)):
        if (embeddings_dir / name / "manifest.csv").is_file():
            return embeddings_dir / name
    if single and (embeddings_dir / "manifest.csv").is_file():
        return embeddings_dir
    return None




def prepare(task: str, task_root: Path) -> tuple[dict[str, DataRequest], dict[str, Any], dict[str, Any]]:
    """Requests for every split of ``task``, with the labels and origins of each image."""
    requests, labels, origins = {}, {}, {}
    for split in TASK_DATA[task].splits:
        dataset = open_split(task, task_root, split)
        requests[f"{task}/{split}"] = DataRequest(dataset, desc=f"{task} {split}")
        labels[f"{task}/{split}"] = np.asarray(dataset.labels)
        origins[f"{task}/{split}"] = list(dataset.origins)
    return requests, labels, origins


def load_precomputed(task: str, folder: Path, progress: bool) -> tuple[dict[str, EmbeddingSet], dict[str, Any]]:
    """Embeddings and labels of every split from an eva manifest folder."""
    embeddings, labels = {}, {}
    for split, values in read_eva_embeddings(folder, progress=progress).items():
        embeddings[f"{task}/{split}"] = EmbeddingSet(list(values.origins), values.embeddings)
        labels[f"{task}/{split}"] = values.targets
    return embeddings, labels


def export(task: str, embeddings: dict[str, EmbeddingSet], labels: dict[str, Any], origins: dict[str, Any],
           out: Path, progress: bool = True) -> Path:
    """eva's offline format: ``out/<eva task folder>/manifest.csv`` and one ``.pt`` per image."""
    keys = [f"{task}/{split}" for split in TASK_DATA[task].splits]
    array = np.concatenate([np.asarray(embeddings[k].array) for k in keys])
    targets = np.concatenate([labels[k] for k in keys])
    names = [o for k in keys for o in origins[k]]
    splits = [k.split("/", 1)[1] for k in keys for _ in range(len(embeddings[k]))]
    return write_eva_embeddings(Path(out) / TASK_DATA[task].eva_dir, array, targets, names, splits,
                                progress=progress)
