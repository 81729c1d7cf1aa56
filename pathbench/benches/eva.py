"""EVA-compatible patch classification (kaiko eva's offline linear-probe protocol).

Tasks: BACH (4 classes), CRC (9), MHIST (2), PatchCamelyon (2). A frozen backbone embeds
every image (CLS token by default), then a linear head is trained 5 times per task with
eva's protocol (:mod:`pathbench.heads`) and the best-validation checkpoint of each run is
scored: balanced accuracy (binary) or macro accuracy (multiclass), on the test split where
eva has one (PCam) and on the validation split otherwise; mean and sample std over runs.
The average of the paper's Table 2 leaves BACH out.

Embeddings come from a pathbench model (``--model``, data in eva's layouts under
``--data PATH`` or ``--data synthetic``) or from folders eva wrote itself
(``--embeddings-dir DIR --model-name NAME``); :func:`export_eva_embeddings` writes
pathbench embeddings in eva's format so that ``eva fit`` trains on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathbench.data.eva import (
    EVA_IMAGE_SIZE,
    TASK_DATA,
    find_task_root,
    open_split,
    read_eva_embeddings,
    write_eva_embeddings,
)
from pathbench.errors import DataError, PathbenchError
from pathbench.extractors import Extractor
from pathbench.heads import LinearProbe, ProbeProtocol, summarise_runs

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


def parse_tasks(options: str | None) -> list[str] | None:
    """``"bach,crc"`` -> ``["bach", "crc"]``; ``None`` (all tasks whose data exist)."""
    if not options:
        return None
    tasks = []
    for raw in options.split(","):
        name = TASK_ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in TASKS:
            raise PathbenchError(f"unknown eva task {raw!r}; expected any of {', '.join(TASKS)} "
                                 f"(e.g. --bench eva:bach,crc,mhist,pcam).")
        tasks.append(name)
    return list(dict.fromkeys(tasks))


def protocol_for(task: EvaTask, runs: int = 5, max_steps: int = 12_500, seed: int = 0,
                 batch_size: int = 256) -> ProbeProtocol:
    """eva's linear-probe protocol for ``task`` (its patience, 5 runs, 12,500 steps, batch 256)."""
    return ProbeProtocol(patience=task.patience, runs=runs, max_steps=max_steps, seed=seed, batch_size=batch_size)


# eva's protocol is sized for tens of thousands of embeddings; the synthetic splits hold tens.
# With batch 256 an epoch would be one step and CRC's and PCam's patience (7 and 3 epochs)
# would stop every run before it learns anything, so synthetic data trains with smaller
# batches and fewer steps unless --probe-batch-size / --max-steps say otherwise.
SYNTHETIC_PROBE_BATCH_SIZE = 2
SYNTHETIC_MAX_STEPS = 1_000


# --------------------------------------------------------------------------------------
# Evaluation on embeddings (from anywhere)


def evaluate_task(
    task: str | EvaTask,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    protocol: ProbeProtocol | None = None,
    device: str = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train and score the linear probe of one task on embeddings.

    Args:
        task: task name or :class:`EvaTask`.
        splits: ``{split: (embeddings (N, D) float32, targets (N,) int)}`` with at least the
            task's train, val and reported splits (eva's names).
        protocol: defaults to :func:`protocol_for` the task.
        device: where the probe trains (``auto``: CUDA when available).

    Returns:
        One row per run: ``task, run, split, metric, value, best_step`` plus
        ``val_value, best_epoch, stop_step``.
    """
    task = TASKS[task] if isinstance(task, str) else task
    protocol = protocol or protocol_for(task)
    for split in task.splits:
        if split not in splits:
            raise DataError(f"{task.label}: split {split!r} is missing (found {', '.join(splits) or 'none'}); "
                            f"eva's {task.label} needs {', '.join(task.splits)}.")
    train_x, train_y = splits[task.train_split]
    val_x, val_y = splits[task.val_split]
    probe = LinearProbe(task.num_classes, protocol, device=device, progress=progress)
    probe.fit(train_x, train_y, val_x, val_y)
    report_x, report_y = splits[task.report_split]
    values = probe.score(report_x, report_y)
    val_values = probe.score(val_x, val_y)
    return [
        {
            "task": task.name,
            "run": run,
            "split": task.report_split,
            "metric": task.metric,
            "value": float(values[run]),
            "best_step": int(probe.best_step_[run]),
            "val_value": float(val_values[run]),
            "best_epoch": int(probe.best_epoch_[run]),
            "stop_step": int(probe.stop_step_[run]),
        }
        for run in range(protocol.runs)
    ]


def summarise(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-task mean and sample std over runs: ``task, metric, mean, std, n_runs, split``."""
    frame = pd.DataFrame(rows)
    out = []
    for task in dict.fromkeys(frame["task"]):
        part = frame[frame["task"] == task]
        mean, std = summarise_runs(part["value"].to_numpy())
        out.append({"task": task, "metric": part["metric"].iloc[0], "mean": mean, "std": std,
                    "n_runs": len(part), "split": part["split"].iloc[0]})
    return pd.DataFrame(out, columns=["task", "metric", "mean", "std", "n_runs", "split"])


def average_without_bach(summary: pd.DataFrame) -> float | None:
    """Mean of the task means leaving BACH out (the paper's and eva's average); None if nothing left."""
    means = summary.loc[summary["task"] != "bach", "mean"]
    return float(means.mean()) if len(means) else None


def format_table(model: str, summary: pd.DataFrame) -> str:
    """A console table shaped like the seed paper's Table 2 (mean ± std over runs)."""
    tasks = [t for t in TASKS if t in set(summary["task"])]
    cells = {row.task: f"{row.mean:.3f} ± {row.std:.3f}" for row in summary.itertuples()}
    header = ["Model"] + [TASKS[t].label for t in tasks] + ["Average (w/o BACH)"]
    average = average_without_bach(summary)
    body = [model] + [cells[t] for t in tasks] + [f"{average:.3f}" if average is not None else "n/a"]
    widths = [max(len(h), len(b)) for h, b in zip(header, body, strict=True)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    rule = "-+-".join("-" * w for w in widths)
    values = " | ".join(b.ljust(w) for b, w in zip(body, widths, strict=True))
    metric_note = "balanced accuracy (binary) / macro accuracy (multiclass); PCam on test, others on val"
    return f"{line}\n{rule}\n{values}\n({metric_note})"


# --------------------------------------------------------------------------------------
# Embeddings from a model, and export to eva's format


def synthetic_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where ``--data synthetic`` writes its datasets: ``<pathbench cache>/datasets/synthetic-eva-v<N>``."""
    from pathbench.data.synthetic_eva import GENERATOR_VERSION
    from pathbench.features import cache_root

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


def embed_task(extractor, task: str, task_root: Path, pooling: str = DEFAULT_POOLING,
               **extract_kwargs: Any) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Embed every split of ``task`` through the feature cache.

    Returns:
        ``{split: (embeddings (N, D) float32, targets (N,) int64, origins)}``.
    """
    from pathbench.features import extract_features

    out = {}
    for split in TASK_DATA[task].splits:
        dataset = open_split(task, task_root, split)
        features = extract_features(extractor, dataset, pooling=pooling, desc=f"{task} {split}", **extract_kwargs)
        out[split] = (np.asarray(features.array, dtype=np.float32), dataset.labels, list(dataset.origins))
    return out


def export_eva_embeddings(
    extractor,
    task: str,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    pooling: str = DEFAULT_POOLING,
    progress: bool = True,
    **extract_kwargs: Any,
) -> Path:
    """Embed ``task`` and write it in eva's offline format under ``out_dir/<eva task folder>``.

    ``out_dir`` plays eva's ``${EMBEDDINGS_ROOT}/${MODEL_NAME}``: the manifest lands in
    ``out_dir/bach``, ``out_dir/crc``, ``out_dir/mhist`` or ``out_dir/patch_camelyon``, where
    eva's offline configs look for it.

    Returns:
        The path of the written ``manifest.csv``.
    """
    task = TASK_ALIASES.get(task, task)
    if task not in TASK_DATA:
        raise PathbenchError(f"unknown eva task {task!r}; expected one of {', '.join(TASK_DATA)}.")
    task_root = find_task_root(task, data_root)
    if task_root is None:
        raise DataError(f"no {task} data in eva's layout under {data_root}.")
    embedded = embed_task(extractor, task, task_root, pooling=pooling, progress=progress, **extract_kwargs)
    embeddings = np.concatenate([e for e, _, _ in embedded.values()])
    targets = np.concatenate([t for _, t, _ in embedded.values()])
    origins = [o for _, _, os_ in embedded.values() for o in os_]
    splits = [s for s, (e, _, _) in embedded.items() for _ in range(len(e))]
    return write_eva_embeddings(Path(out_dir) / TASK_DATA[task].eva_dir, embeddings, targets, origins, splits,
                                progress=progress)


def extract_command(args: argparse.Namespace) -> int:
    """``pathbench extract --format eva``: write eva's offline embeddings for eva's tasks.

    ``--data`` is eva's ``DATA_ROOT`` (or ``synthetic``), ``--task`` a comma-separated list
    (default: every task found), ``--out`` eva's ``${EMBEDDINGS_ROOT}/${MODEL_NAME}``.
    """
    from pathbench import cli_common

    if not args.out:
        raise PathbenchError("pathbench extract --format eva needs --out EMBEDDINGS_ROOT/MODEL_NAME "
                             "(each task is written to <out>/<bach|crc|mhist|patch_camelyon>/).")
    tasks = parse_tasks(getattr(args, "task", None))
    data_root, task_roots = resolve_data(args.data, tasks, args.cache_dir)
    extractor = eva_extractor(args)
    pooling = args.pooling or DEFAULT_POOLING
    options = cli_common.extraction_options(args)
    for task in task_roots:
        manifest = export_eva_embeddings(extractor, task, data_root, args.out, pooling=pooling, **options)
        print(f"{TASKS[task].label}: eva embeddings ({pooling}) and manifest in {manifest.parent}")
    return 0


def eva_extractor(args: argparse.Namespace) -> Extractor:
    """The model of ``--model``, fed eva's 224 x 224 crops as they are (eva only normalises them)."""
    from pathbench import cli_common

    extractor = cli_common.extractor_from_args(args, bench="eva")
    return extractor.with_input_size(EVA_IMAGE_SIZE, EVA_IMAGE_SIZE)


def find_manifest(task: str, embeddings_dir: Path, single: bool) -> Path | None:
    """The eva folder of ``task`` under ``embeddings_dir`` (``DIR/<eva folder>``, ``DIR/<task>``, or
    ``DIR`` itself when only one task is evaluated)."""
    for name in dict.fromkeys((TASK_DATA[task].eva_dir, task)):
        if (embeddings_dir / name / "manifest.csv").is_file():
            return embeddings_dir / name
    if single and (embeddings_dir / "manifest.csv").is_file():
        return embeddings_dir
    return None


# --------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("eva")
    group.add_argument("--runs", type=int, default=5, help="independent probe runs per task (default 5)")
    group.add_argument("--max-steps", type=int, default=None,
                       help=f"optimiser steps per run at most (default 12500, eva's; {SYNTHETIC_MAX_STEPS} with "
                            "--data synthetic)")
    group.add_argument("--probe-batch-size", type=int, default=None,
                       help=f"linear-probe batch size (default 256, eva's; {SYNTHETIC_PROBE_BATCH_SIZE} with "
                            "--data synthetic, whose splits are tiny)")
    group.add_argument("--seed", type=int, default=0, help="run r uses seed + r (default 0)")
    group.add_argument("--embeddings-dir",
                       help="evaluate embeddings eva wrote: a folder with <task>/manifest.csv (eva's "
                            "EMBEDDINGS_ROOT/MODEL_NAME) or, for one task, the folder holding manifest.csv")


def _embeddings_from_eva_dir(args: argparse.Namespace, tasks: list[str] | None, progress: bool):
    """``{task: {split: (embeddings, targets)}}`` and a provenance record from ``--embeddings-dir``."""
    folder = Path(args.embeddings_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"--embeddings-dir {folder}: no such folder.")
    wanted = tasks or list(TASKS)
    folders = {t: find_manifest(t, folder, single=bool(tasks) and len(tasks) == 1) for t in wanted}
    missing = [t for t, f in folders.items() if f is None]
    if tasks and missing:
        raise DataError(f"--embeddings-dir {folder}: no eva manifest for {', '.join(missing)}; expected "
                        f"{folder}/<{'|'.join(TASK_DATA[t].eva_dir for t in missing)}>/manifest.csv"
                        + (" or a manifest.csv in the folder itself." if len(wanted) == 1 else "."))
    folders = {t: f for t, f in folders.items() if f is not None}
    if not folders:
        raise DataError(f"--embeddings-dir {folder}: no eva task folder with a manifest.csv "
                        f"({', '.join(d.eva_dir for d in TASK_DATA.values())}).")
    embeddings = {}
    for task, task_folder in folders.items():
        splits = read_eva_embeddings(task_folder, progress=progress)
        embeddings[task] = {s: (v.embeddings, v.targets) for s, v in splits.items()}
    return embeddings, {"embeddings_dir": str(folder), "folders": {t: str(f) for t, f in folders.items()}}


def _embeddings_from_model(args: argparse.Namespace, data_root: Path, task_roots: dict[str, Path], extractor,
                           pooling: str):
    """``{task: {split: (embeddings, targets)}}`` and a provenance record from ``--model`` and ``--data``."""
    from pathbench import cli_common

    print("eva tasks: " + ", ".join(f"{TASKS[t].label} ({folder})" for t, folder in task_roots.items()))
    options = cli_common.extraction_options(args)
    embeddings = {}
    for task, task_root in task_roots.items():
        embedded = embed_task(extractor, task, task_root, pooling=pooling, **options)
        embeddings[task] = {s: (e, t) for s, (e, t, _) in embedded.items()}
    return embeddings, {"data": str(data_root), "task_roots": {t: str(f) for t, f in task_roots.items()}}


def run(args: argparse.Namespace, bench_options: str | None) -> int:
    from pathbench import _io, cli_common
    from pathbench.provenance import provenance

    started = time.time()
    tasks = parse_tasks(bench_options)
    progress = not getattr(args, "no_progress", False)
    device = getattr(args, "device", "auto") or "auto"
    if device == "mps":  # the probe's batched steps run on CUDA or the CPU
        device = "cpu"
    synthetic = not args.embeddings_dir and args.data == "synthetic"
    max_steps = args.max_steps or (SYNTHETIC_MAX_STEPS if synthetic else 12_500)
    probe_batch = args.probe_batch_size or (SYNTHETIC_PROBE_BATCH_SIZE if synthetic else 256)
    ProbeProtocol(runs=args.runs, max_steps=max_steps, batch_size=probe_batch)  # bad flags fail before any work

    extractor = None
    pooling = None
    if args.embeddings_dir:
        model_name = cli_common.model_label(args)
        embeddings, source = _embeddings_from_eva_dir(args, tasks, progress)
    else:
        data_root, task_roots = resolve_data(args.data, tasks, args.cache_dir)  # before loading any weights
        extractor = eva_extractor(args)
        model_name = cli_common.model_label(args)
        pooling = args.pooling or DEFAULT_POOLING
        embeddings, source = _embeddings_from_model(args, data_root, task_roots, extractor, pooling)

    if (max_steps, probe_batch) != (12_500, 256):
        print(f"note: linear probe with batch {probe_batch} and at most {max_steps} steps "
              f"(eva's protocol: batch 256, 12500 steps)" + (" for the tiny synthetic splits" if synthetic else ""))
    rows: list[dict[str, Any]] = []
    protocols = {}
    for task in TASKS:
        if task not in embeddings:
            continue
        protocol = protocol_for(TASKS[task], runs=args.runs, max_steps=max_steps, seed=args.seed,
                                batch_size=probe_batch)
        protocols[task] = dataclasses.asdict(protocol)
        task_started = time.time()
        task_rows = evaluate_task(task, embeddings[task], protocol, device=device, progress=progress)
        rows.extend(task_rows)
        mean, std = summarise_runs([r["value"] for r in task_rows])
        print(f"{TASKS[task].label}: {task_rows[0]['metric']} on {TASKS[task].report_split} = {mean:.4f} ± {std:.4f} "
              f"({args.runs} runs, {time.time() - task_started:.1f} s)")

    summary = summarise(rows)
    out = cli_common.results_dir(args, "eva", model_name)
    _io.write_csv(out / "runs.csv", pd.DataFrame(rows))
    _io.write_csv(out / "summary.csv", summary)
    average = average_without_bach(summary)
    record = provenance(
        extractor,
        pooling,
        bench="eva",
        model_label=model_name,
        tasks=list(embeddings),
        settings={"data": "eva embeddings" if args.embeddings_dir else args.data, "runs": args.runs,
                  "max_steps": max_steps, "probe_batch_size": probe_batch, "seed": args.seed},
        protocol={"name": "eva linear probe (offline patch classification)",
                  "eva_defaults": max_steps == 12_500 and probe_batch == 256, "per_task": protocols},
        source=source,
        summary=summary.to_dict(orient="records"),
        average_without_bach=None if average is None or math.isnan(average) else average,
        seconds=round(time.time() - started, 2),
    )
    _io.write_json(out / "run.json", record)
    print()
    print(format_table(model_name, summary))
    print(f"\nresults in {out}/ (runs.csv, summary.csv, run.json)")
    return 0
