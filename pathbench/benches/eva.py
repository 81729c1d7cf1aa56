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

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pathbench.benches.base import (
    Aggregate,
    Benchmark,
    BenchResult,
    Column,
    DataRequest,
    Inputs,
    LeaderboardSpec,
    Metric,
    RunContext,
    Task,
    option,
    result_rows,
)
from pathbench.data.eva import (
    EVA_IMAGE_SIZE,
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
    from pathbench.heads import ProbeProtocol

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
    from pathbench.heads import LinearProbe

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
    from pathbench.heads import summarise_runs

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


# --------------------------------------------------------------------------------------
# The benchmark


@dataclasses.dataclass
class EvaOptions:
    """eva's options (see ``pathbench evaluate --bench eva --help``)."""

    tasks: str | None = option(help="comma-separated eva tasks: bach, crc, mhist, pcam (default: every task "
                               "whose data is present); also --bench eva:TASKS")
    runs: int = option(5, help="independent probe runs per task (default 5)")
    max_steps: int | None = option(help=f"optimiser steps per run at most (default 12500, eva's; "
                                   f"{SYNTHETIC_MAX_STEPS} with --data synthetic)")
    probe_batch_size: int | None = option(help=f"linear-probe batch size (default 256, eva's; "
                                          f"{SYNTHETIC_PROBE_BATCH_SIZE} with --data synthetic, whose splits are tiny)")
    seed: int = option(0, help="run r uses seed + r (default 0)")
    embeddings_dir: str | None = option(help="evaluate embeddings eva wrote: a folder with <task>/manifest.csv "
                                        "(eva's EMBEDDINGS_ROOT/MODEL_NAME) or, for one task, the folder holding "
                                        "manifest.csv")

    def __post_init__(self) -> None:
        self.task_list = parse_tasks(self.tasks)
        # bad values fail before any work
        for name, value in (("runs", self.runs), ("max_steps", self.max_steps), ("probe_batch_size",
                                                                                 self.probe_batch_size)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise PathbenchError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}.")

    def probe_settings(self, synthetic: bool) -> tuple[int, int]:
        """(max_steps, batch size): eva's, or the small-data defaults of the synthetic demo."""
        return (self.max_steps or (SYNTHETIC_MAX_STEPS if synthetic else 12_500),
                self.probe_batch_size or (SYNTHETIC_PROBE_BATCH_SIZE if synthetic else 256))


def eva_protocol(synthetic: bool, max_steps: int, n_runs: int, batch: int) -> tuple[str, str]:
    """(protocol id, description): ``eva-2024`` is eva's linear probe on the eva datasets."""
    settings = []
    if max_steps != 12_500:
        settings.append(f"max {max_steps} steps")
    if n_runs != 5:
        settings.append(f"{n_runs} runs")
    if batch != 256:
        settings.append(f"batch {batch}")
    if not synthetic and not settings:
        return "eva-2024", "eva linear probe (eva 0.4 offline protocol), CLS embeddings by default"
    kind = "synthetic" if synthetic else "real"
    suffix = "-".join(s.replace(" ", "") for s in settings)
    protocol = f"eva-{kind}" + (f"-{suffix}" if suffix else "")
    detail = (f"{'synthetic eva data (not the eva datasets)' if synthetic else 'eva data'}, linear probe"
              + (f" ({', '.join(settings)})" if settings else ""))
    return protocol, detail


class EvaBenchmark(Benchmark):
    """eva-compatible patch classification with eva's linear-probe protocol."""

    name = "eva"
    protocol = "eva-v1"
    title = "EVA patch classification (linear probe)"
    description = ("kaiko eva's offline linear-probe protocol on BACH, CRC, MHIST and PatchCamelyon; "
                   "the average leaves BACH out, as the seed paper does.")
    Options = EvaOptions
    tasks = tuple(Task(t.name, t.label, t.metric, description=f"{t.num_classes} classes, reported on "
                       f"{t.report_split}") for t in TASKS.values())
    metrics = (Metric("balanced_accuracy", "balanced accuracy", unit="run",
                      description="binary balanced accuracy of one probe run"),
               Metric("macro_accuracy", "macro accuracy", unit="run",
                      description="multiclass macro-averaged accuracy (balanced accuracy) of one probe run"))
    data_sources = ("synthetic", "PATH")
    precomputed = ("embeddings_dir",)
    pooling = DEFAULT_POOLING
    inline_option = "tasks"
    export_formats = ("eva",)
    leaderboard = LeaderboardSpec(
        title="EVA",
        per_task=Column("task", "task", "eva metric on the task (balanced accuracy for binary, macro accuracy for "
                        "multiclass tasks; Dice for segmentation), mean over runs", statistic="mean", spread="std"),
        task_order=("BACH", "CRC", "MHIST", "PCam", "Cam16", "PANDA", "CoNSeP", "MoNuSAC"),
        aggregates=(Aggregate("average", "Average (w/o BACH)", "mean over the tasks present except BACH (the seed "
                              "paper's and eva's rule)", exclude=("BACH",)),),
        primary=("average",),
        default_reference="paper",
        decimals=3,
    )

    def check(self, options: EvaOptions, *, data: str | None, has_model: bool) -> None:
        if has_model and not data:
            raise PathbenchError("--bench eva needs --data PATH (folders in eva's layouts, as eva's DATA_ROOT), "
                                 "--data synthetic (offline demo data), or --embeddings-dir DIR.")
        if options.embeddings_dir and not Path(options.embeddings_dir).expanduser().is_dir():
            raise DataError(f"--embeddings-dir {options.embeddings_dir}: no such folder.")

    def prepare(self, options: EvaOptions, data: str | None, *, cache_dir: str | None = None,
                progress: bool = True) -> Inputs:
        data_root, task_roots = resolve_data(data, options.task_list, cache_dir)
        if progress:
            print("eva tasks: " + ", ".join(f"{TASKS[t].label} ({folder})" for t, folder in task_roots.items()))
        requests, labels, origins = {}, {}, {}
        for task, task_root in task_roots.items():
            for split in TASK_DATA[task].splits:
                dataset = open_split(task, task_root, split)
                requests[f"{task}/{split}"] = DataRequest(dataset, desc=f"{task} {split}")
                labels[f"{task}/{split}"] = np.asarray(dataset.labels)
                origins[f"{task}/{split}"] = list(dataset.origins)
        synthetic = data == "synthetic"
        record = {"kind": "synthetic" if synthetic else "local", "path": str(data_root), "synthetic": synthetic,
                  "task_roots": {t: str(f) for t, f in task_roots.items()}}
        return Inputs(requests=requests, context={"tasks": list(task_roots), "labels": labels, "origins": origins},
                      data=record, input_size=(EVA_IMAGE_SIZE, EVA_IMAGE_SIZE))

    def load_precomputed(self, options: EvaOptions, data: str | None, *, cache_dir: str | None = None,
                         progress: bool = True) -> Inputs:
        from pathbench.benches.base import EmbeddingSet

        tasks = options.task_list
        folder = Path(options.embeddings_dir).expanduser()
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
        embeddings, labels = {}, {}
        for task, task_folder in folders.items():
            for split, values in read_eva_embeddings(task_folder, progress=progress).items():
                embeddings[f"{task}/{split}"] = EmbeddingSet(list(values.origins), values.embeddings)
                labels[f"{task}/{split}"] = values.targets
        record = {"kind": "embeddings", "path": str(folder), "synthetic": False,
                  "folders": {t: str(f) for t, f in folders.items()}}
        return Inputs(embeddings=embeddings, context={"tasks": list(folders), "labels": labels}, data=record)

    def evaluate(self, inputs: Inputs, options: EvaOptions, context: RunContext) -> BenchResult:
        from pathbench.heads import summarise_runs

        synthetic = inputs.synthetic
        max_steps, probe_batch = options.probe_settings(synthetic)
        notes = []
        if (max_steps, probe_batch) != (12_500, 256):
            notes.append(f"linear probe with batch {probe_batch} and at most {max_steps} steps (eva's protocol: "
                         "batch 256, 12500 steps)" + (" for the tiny synthetic splits" if synthetic else ""))
        rows: list[dict[str, Any]] = []
        protocols = {}
        for task in [t for t in TASKS if t in inputs.context["tasks"]]:
            splits = {key.split("/", 1)[1]: (np.asarray(emb.array, dtype=np.float32), inputs.context["labels"][key])
                      for key, emb in inputs.embeddings.items() if key.split("/", 1)[0] == task}
            protocol = protocol_for(TASKS[task], runs=options.runs, max_steps=max_steps, seed=options.seed,
                                    batch_size=probe_batch)
            protocols[task] = dataclasses.asdict(protocol)
            task_started = time.time()
            task_rows = evaluate_task(task, splits, protocol, device=context.device, progress=context.progress)
            rows.extend(task_rows)
            mean, std = summarise_runs([r["value"] for r in task_rows])
            if context.progress:
                print(f"{TASKS[task].label}: {task_rows[0]['metric']} on {TASKS[task].report_split} = {mean:.4f} ± "
                      f"{std:.4f} ({options.runs} runs, {time.time() - task_started:.1f} s)")
        summary = summarise(rows)
        average = average_without_bach(summary)
        average = None if average is None or math.isnan(average) else average
        protocol_id, detail = eva_protocol(synthetic, max_steps, options.runs, probe_batch)
        record = {"tasks": list(summary["task"]), "average_without_bach": average,
                  "settings": {"runs": options.runs, "max_steps": max_steps, "probe_batch_size": probe_batch,
                               "seed": options.seed},
                  "probe": {"name": "eva linear probe (offline patch classification)",
                            "eva_defaults": max_steps == 12_500 and probe_batch == 256, "per_task": protocols},
                  "summary": summary.to_dict(orient="records")}
        long_rows = result_rows({"task": r["task"], "unit": r["run"], "metric": r["metric"], "value": r["value"]}
                                for r in rows)
        return BenchResult(rows=long_rows, tables={"runs.csv": pd.DataFrame(rows), "summary.csv": summary},
                           summary=summary, headline={"average": average}, protocol=protocol_id,
                           protocol_detail=detail, record=record, report="\n" + format_table(context.model_name, summary),
                           notes=notes)

    def export(self, inputs: Inputs, out: Path, fmt: str, *, progress: bool = True) -> list[Path]:
        """eva's offline format: ``out/<eva task folder>/manifest.csv`` and one ``.pt`` per image."""
        written = []
        for task in inputs.context["tasks"]:
            keys = [f"{task}/{split}" for split in TASK_DATA[task].splits]
            embeddings = np.concatenate([np.asarray(inputs.embeddings[k].array) for k in keys])
            targets = np.concatenate([inputs.context["labels"][k] for k in keys])
            origins = [o for k in keys for o in inputs.context["origins"][k]]
            splits = [k.split("/", 1)[1] for k in keys for _ in range(len(inputs.embeddings[k]))]
            manifest = write_eva_embeddings(Path(out) / TASK_DATA[task].eva_dir, embeddings, targets, origins, splits,
                                            progress=progress)
            print(f"{TASKS[task].label}: eva embeddings and manifest in {manifest.parent}")
            written.append(manifest)
        return written
