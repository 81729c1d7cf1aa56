"""EVA: kaiko eva's eight pathology tasks, as the seed paper's Table 2 runs them.

- patch classification (:mod:`.eva_patch`): BACH, CRC, MHIST, PatchCamelyon with eva's
  linear probe (5 runs);
- slide classification (:mod:`.eva_slide`): Camelyon16-small and PANDA-small with eva's
  ABMIL on bags of patch embeddings (20 runs);
- segmentation (:mod:`.eva_seg`): CoNSeP and MoNuSAC with eva's decoder on the frozen
  model's patch-token grids, MONAI's Dice (5 runs).

Every task reports eva's metric (balanced accuracy for binary, macro accuracy for
multiclass tasks, Dice for segmentation) as the mean and sample std over runs; the
average leaves BACH out, as the paper does.

Examples::

    pathbench evaluate --model h0-mini --bench eva --data /data/eva            # every task found
    pathbench evaluate --model h0-mini --bench eva:crc,cam16-small --data /data/eva
    pathbench evaluate --model h0-mini --bench eva:panda-small --data /data/eva --panda-labels labels.csv
    pathbench evaluate --model vit-tiny-random --bench eva --data synthetic    # offline demo
    pathbench evaluate --bench eva:mhist --embeddings-dir DIR --model-name NAME  # eva's own embeddings

``--data PATH`` is eva's DATA_ROOT: one folder per task (``bach/``, ``crc/``, ``mhist/``,
``patch_camelyon/``, ``camelyon16/``, ``panda/``, ``consep/``, ``monusac/``) in eva's layouts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathbench.benches import eva_patch, eva_seg, eva_slide
from pathbench.benches.base import (
    Aggregate,
    Benchmark,
    BenchResult,
    Column,
    Granularity,
    Inputs,
    LeaderboardSpec,
    Metric,
    RunContext,
    Task,
    option,
    result_rows,
)
from pathbench.benches.eva_patch import (  # the patch tasks' public names stay importable from here
    DEFAULT_POOLING,
    SYNTHETIC_MAX_STEPS,
    SYNTHETIC_PROBE_BATCH_SIZE,
    TASKS,
    EvaTask,
    evaluate_task,
    find_manifest,
    protocol_for,
    resolve_data,
    synthetic_root,
)
from pathbench.data.eva import EVA_IMAGE_SIZE, TASK_DATA
from pathbench.errors import DataError, PathbenchError

__all__ = ["DEFAULT_POOLING", "TASKS", "EvaBenchmark", "EvaOptions", "EvaTask", "evaluate_task", "find_manifest",
           "protocol_for", "resolve_data", "synthetic_root"]

# name -> (label, headline metric, granularity); the patch tasks come first, in the paper's order
ALL_TASKS: dict[str, tuple[str, str, Granularity]] = {
    **{t.name: (t.label, t.metric, Granularity.TILE) for t in TASKS.values()},
    "cam16-small": ("Cam16", "balanced_accuracy", Granularity.BAG),
    "panda-small": ("PANDA", "macro_accuracy", Granularity.BAG),
    "consep": ("CoNSeP", "dice", Granularity.GRID),
    "monusac": ("MoNuSAC", "dice", Granularity.GRID),
}
ALIASES = {"patch_camelyon": "pcam", "patchcamelyon": "pcam", "camelyon16": "cam16-small",
           "camelyon16_small": "cam16-small", "camelyon16-small": "cam16-small", "cam16": "cam16-small",
           "panda": "panda-small", "panda_small": "panda-small"}
SLIDE_RUNS, SEG_RUNS = 20, 5
# The synthetic segmentation sets hold a few dozen crops; eva's 2,000 steps of batch 64 on a
# full-resolution decoder would take an hour on a CPU, so the demo trains a few steps.
SYNTHETIC_SEG = {"runs": 5, "max_steps": 4, "batch_size": 8}
# Resolution of each task's images, where eva fixes it (the patch tasks' vary by source).
TASK_MPP = {"cam16-small": 0.25, "panda-small": 0.5, "consep": 0.25}


def kind(task: str) -> Granularity:
    return ALL_TASKS[task][2]


def parse_tasks(options: str | None) -> list[str] | None:
    """``"bach,crc,cam16"`` -> ``["bach", "crc", "cam16-small"]``; None: every task whose data exist."""
    if not options:
        return None
    tasks = []
    for raw in options.split(","):
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if not name:
            continue
        if name not in ALL_TASKS:
            raise PathbenchError(f"unknown eva task {raw!r}; expected any of {', '.join(ALL_TASKS)} "
                                 "(e.g. --bench eva:bach,crc,mhist,pcam).")
        tasks.append(name)
    return list(dict.fromkeys(tasks))


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
    tasks = [t for t in ALL_TASKS if t in set(summary["task"])]
    cells = {row.task: f"{row.mean:.3f} ± {row.std:.3f}" for row in summary.itertuples()}
    header = ["Model"] + [ALL_TASKS[t][0] for t in tasks] + ["Average (w/o BACH)"]
    average = average_without_bach(summary)
    body = [model] + [cells[t] for t in tasks] + [f"{average:.3f}" if average is not None else "n/a"]
    widths = [max(len(h), len(b)) for h, b in zip(header, body, strict=True)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    rule = "-+-".join("-" * w for w in widths)
    values = " | ".join(b.ljust(w) for b, w in zip(body, widths, strict=True))
    metric_note = ("balanced accuracy (binary) / macro accuracy (multiclass) / Dice (segmentation); on the test "
                   "split where eva has one, else on val")
    return f"{line}\n{rule}\n{values}\n({metric_note})"


@dataclasses.dataclass
class EvaOptions:
    """eva's options (see ``pathbench evaluate --bench eva --help``)."""

    tasks: str | None = option(help="comma-separated eva tasks: bach, crc, mhist, pcam, cam16-small, panda-small, "
                               "consep, monusac (default: every task whose data is present); also --bench eva:TASKS")
    runs: int | None = option(help=f"independent runs per task (default eva's: 5 for patch tasks and segmentation, "
                              f"{SLIDE_RUNS} for slide tasks)")
    max_steps: int | None = option(help=f"linear-probe steps per run at most (default 12500, eva's; "
                                   f"{SYNTHETIC_MAX_STEPS} with --data synthetic)")
    probe_batch_size: int | None = option(help=f"linear-probe batch size (default 256, eva's; "
                                          f"{SYNTHETIC_PROBE_BATCH_SIZE} with --data synthetic, whose splits are tiny)")
    seed: int = option(0, help="run r uses seed + r (default 0)")
    head: str = option("linear", choices=("linear", "knn"),
                       help="patch tasks: linear (eva's linear probe, default) or knn (DINO's weighted kNN, k 20, "
                            "T 0.07: its own protocol, never ranked with the linear probe)")
    knn_k: int = option(20, help="kNN: neighbours that vote (default 20, DINO's)")
    knn_temperature: float = option(0.07, help="kNN: vote weight exp(similarity / T) (default 0.07, DINO's)")
    embeddings_dir: str | None = option(help="evaluate embeddings eva wrote: a folder with <task>/manifest.csv "
                                        "(eva's EMBEDDINGS_ROOT/MODEL_NAME) or, for one task, the folder holding "
                                        "manifest.csv")
    panda_labels: str | None = option(help="PANDA's label table train_with_noisy_labels.csv (eva downloads it at "
                                      "run time; pathbench reads it from here)")
    seg_protocol: str = option("eva", choices=eva_seg.SEG_PROTOCOLS,
                               help="segmentation: eva (exact; MoNuSAC's random training crops encoded online) or "
                                    "cached (deterministic crops, token grids cached); never ranked together")
    decoder: str = option("conv_with_image", choices=eva_seg.DECODERS,
                          help="segmentation decoder: conv_with_image (eva's online configs, its leaderboard) or "
                               "conv_ms (eva's offline configs)")
    seg_max_steps: int | None = option(help=f"segmentation steps per run at most (default 2000, eva's; "
                                       f"{SYNTHETIC_SEG['max_steps']} with --data synthetic)")
    seg_batch_size: int | None = option(help=f"segmentation batch size (default 64, eva's; "
                                        f"{SYNTHETIC_SEG['batch_size']} with --data synthetic)")

    def __post_init__(self) -> None:
        self.task_list = parse_tasks(self.tasks)
        for name in ("runs", "max_steps", "probe_batch_size", "seg_max_steps", "seg_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise PathbenchError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}.")
        if self.seg_protocol not in eva_seg.SEG_PROTOCOLS:
            raise PathbenchError(f"--seg-protocol must be eva or cached; got {self.seg_protocol!r}.")
        if self.head not in ("linear", "knn"):
            raise PathbenchError(f"--head must be linear or knn; got {self.head!r}.")
        if not isinstance(self.knn_k, int) or self.knn_k < 1 or not self.knn_temperature > 0:
            raise PathbenchError(f"--knn-k must be a positive integer and --knn-temperature positive; got "
                                 f"{self.knn_k!r} and {self.knn_temperature!r}.")
        if self.decoder not in eva_seg.DECODERS:
            raise PathbenchError(f"--decoder must be one of {', '.join(eva_seg.DECODERS)}; got {self.decoder!r}.")

    def probe_settings(self, synthetic: bool) -> tuple[int, int]:
        """(max_steps, batch size): eva's, or the small-data defaults of the synthetic demo."""
        return (self.max_steps or (SYNTHETIC_MAX_STEPS if synthetic else 12_500),
                self.probe_batch_size or (SYNTHETIC_PROBE_BATCH_SIZE if synthetic else 256))

    def seg_settings(self, synthetic: bool) -> dict[str, int | None]:
        small = SYNTHETIC_SEG if synthetic else {}
        return {"runs": self.runs or small.get("runs"), "max_steps": self.seg_max_steps or small.get("max_steps"),
                "batch_size": self.seg_batch_size or small.get("batch_size")}


def eva_protocol(synthetic: bool, max_steps: int, n_runs: int, batch: int, extra: list[str] | None = None,
                 head: str = "") -> tuple[str, str]:
    """(protocol id, description): ``eva-2024`` is eva's protocol on the eva datasets; any other
    setting (probe steps, runs, batch, cached segmentation, another decoder) gets its own id."""
    settings = []
    if max_steps != 12_500:
        settings.append(f"max {max_steps} steps")
    if n_runs != 5:
        settings.append(f"{n_runs} runs")
    if batch != 256:
        settings.append(f"batch {batch}")
    settings += extra or []
    suffix = "-".join(s.replace(" ", "") for s in settings)
    if head:  # another head for the patch tasks: its own protocol family (eva-knn20, ...)
        protocol = f"eva-{head}" + ("-synthetic" if synthetic else "") + (f"-{suffix}" if suffix else "")
        detail = (f"{'synthetic eva data (not the eva datasets)' if synthetic else 'eva data'}, patch tasks "
                  f"scored with {head}" + (f" ({', '.join(settings)})" if settings else ""))
        return protocol, detail
    if not synthetic and not settings:
        return "eva-2024", "eva's protocol (linear probe, ABMIL, segmentation decoder), CLS embeddings by default"
    kind_name = "synthetic" if synthetic else "real"
    protocol = f"eva-{kind_name}" + (f"-{suffix}" if suffix else "")
    detail = (f"{'synthetic eva data (not the eva datasets)' if synthetic else 'eva data'}, eva's heads"
              + (f" ({', '.join(settings)})" if settings else ""))
    return protocol, detail


class EvaBenchmark(Benchmark):
    """kaiko eva's patch, slide and segmentation tasks (the seed paper's Table 2)."""

    name = "eva"
    protocol = "eva-v2"
    title = "EVA (patch, slide and segmentation tasks)"
    description = ("kaiko eva's protocols: linear probe on BACH, CRC, MHIST and PatchCamelyon; ABMIL on "
                   "Camelyon16-small and PANDA-small; a decoder on CoNSeP and MoNuSAC. The average leaves BACH out.")
    Options = EvaOptions
    tasks = tuple(Task(name, label, metric, granularity) for name, (label, metric, granularity) in ALL_TASKS.items())
    metrics = (Metric("balanced_accuracy", "balanced accuracy", unit="run",
                      description="binary balanced accuracy of one run"),
               Metric("macro_accuracy", "macro accuracy", unit="run",
                      description="multiclass macro-averaged accuracy (balanced accuracy) of one run"),
               Metric("dice", "Dice", unit="run", description="eva's MonaiDiceScore of one run (foreground classes)"))
    data_sources = ("synthetic", "PATH")
    precomputed = ("embeddings_dir",)
    pooling = DEFAULT_POOLING
    inline_option = "tasks"
    export_formats = ("eva",)
    leaderboard = LeaderboardSpec(
        title="EVA",
        per_task=Column("task", "task", "eva metric on the task (balanced accuracy for binary, macro accuracy for "
                        "multiclass tasks; Dice for segmentation), mean over runs", statistic="mean", spread="std"),
        task_order=tuple(label for label, _, _ in ALL_TASKS.values()),
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
        if options.panda_labels and not Path(options.panda_labels).expanduser().is_file():
            raise DataError(f"--panda-labels {options.panda_labels}: no such file; expected PANDA's "
                            "train_with_noisy_labels.csv.")

    # -- data ------------------------------------------------------------------------
    def _task_roots(self, options: EvaOptions, data: str, cache_dir: str | None) -> tuple[Path, dict[str, Path], str]:
        wanted = options.task_list or list(ALL_TASKS)
        patch = [t for t in wanted if kind(t) is Granularity.TILE]
        roots: dict[str, Path] = {}
        labels = options.panda_labels
        if data == "hf":
            raise PathbenchError("eva's datasets are not on the Hugging Face hub in eva's layout; download them as "
                                 "eva's docs describe (or with eva's `download: true`) and pass --data PATH.")
        if data == "synthetic":
            data_root = synthetic_root(cache_dir)
            if patch:
                roots.update(resolve_data(data, patch, cache_dir)[1])
            if any(kind(t) is Granularity.BAG for t in wanted):
                slide_roots = eva_slide.synthetic_roots(cache_dir)
                labels = labels or str(slide_roots["panda_labels"])
                roots.update({t: slide_roots[t] for t in wanted if kind(t) is Granularity.BAG})
            if any(kind(t) is Granularity.GRID for t in wanted):
                seg_root = eva_seg.synthetic_root(cache_dir)
                roots.update({t: seg_root / eva_seg.SPLITS[t][2] for t in wanted if kind(t) is Granularity.GRID})
            return data_root, roots, labels
        data_root = Path(data).expanduser()
        if data_root.is_file():
            raise DataError(f"--data {data} is a file; eva's DATA_ROOT is a folder of task folders.")
        if not data_root.is_dir():
            raise DataError(f"--data {data}: no such folder; expected eva's DATA_ROOT, a folder holding its task "
                            "folders (bach/, crc/, mhist/, patch_camelyon/, camelyon16/, panda/, consep/, monusac/).")
        finders = {Granularity.TILE: eva_patch.find_task_root, Granularity.BAG: eva_slide.find_root,
                   Granularity.GRID: eva_seg.find_root}
        found = {t: finders[kind(t)](t, data_root) for t in wanted}
        missing = [t for t, folder in found.items() if folder is None]
        if options.task_list and missing:
            raise DataError(f"--data {data_root}: no data for {', '.join(missing)} in eva's layout; expected e.g. "
                            f"{data_root}/crc/NCT-CRC-HE-100K, {data_root}/camelyon16/training/tumor, "
                            f"{data_root}/panda/train_images, {data_root}/consep/Train/Images.")
        roots = {t: f for t, f in found.items() if f is not None}
        if not roots:
            raise DataError(f"--data {data_root}: none of the eva tasks ({', '.join(ALL_TASKS)}) was found in eva's "
                            "layout.")
        return data_root, roots, labels

    def prepare(self, options: EvaOptions, data: str | None, *, cache_dir: str | None = None,
                progress: bool = True) -> Inputs:
        data_root, roots, panda_labels = self._task_roots(options, data, cache_dir)
        synthetic = data == "synthetic"
        if progress:
            print("eva tasks: " + ", ".join(f"{ALL_TASKS[t][0]} ({folder})" for t, folder in roots.items()))
        inputs = Inputs(data={"kind": "synthetic" if synthetic else "local", "path": str(data_root),
                              "synthetic": synthetic, "task_roots": {t: str(f) for t, f in roots.items()}},
                        context={"tasks": list(roots), "labels": {}, "origins": {}, "slides": {}, "skipped": {},
                                 "segmentation": {}},
                        input_size=(EVA_IMAGE_SIZE, EVA_IMAGE_SIZE))
        for task, root in roots.items():
            if kind(task) is Granularity.TILE:
                requests, labels, origins = eva_patch.prepare(task, root)
                inputs.context["labels"].update(labels)
                inputs.context["origins"].update(origins)
            elif kind(task) is Granularity.BAG:
                requests, context = eva_slide.prepare(task, root, panda_labels)
                inputs.context["slides"].update(context["slides"])
                inputs.context["skipped"][task] = context["skipped"]
            else:
                requests, context, online = eva_seg.prepare(task, root, options.seg_protocol, strict=not synthetic,
                                                            cache_dir=cache_dir)
                inputs.context["segmentation"][task] = context
                inputs.wants_encoder = inputs.wants_encoder or online
            inputs.requests.update(requests)
        resolutions = {TASK_MPP.get(t) for t in roots}
        if len(resolutions) == 1:  # one known resolution for the whole run: compared with the model's
            inputs.mpp = resolutions.pop()
        return inputs

    def load_precomputed(self, options: EvaOptions, data: str | None, *, cache_dir: str | None = None,
                         progress: bool = True) -> Inputs:
        tasks = options.task_list
        folder = Path(options.embeddings_dir).expanduser()
        dense = [t for t in tasks or [] if kind(t) is Granularity.GRID]
        if dense:
            raise PathbenchError(f"--embeddings-dir holds no token grids: the segmentation tasks ({', '.join(dense)}) "
                                 "need a model (--model NAME --data PATH).")
        wanted = tasks or [t for t in ALL_TASKS if kind(t) is not Granularity.GRID]
        single = bool(tasks) and len(tasks) == 1
        folders = {t: (find_manifest(t, folder, single) if kind(t) is Granularity.TILE
                       else _slide_manifest(t, folder, single)) for t in wanted}
        missing = [t for t, f in folders.items() if f is None]
        if tasks and missing:
            raise DataError(f"--embeddings-dir {folder}: no eva manifest for {', '.join(missing)}; expected "
                            f"{folder}/<task folder>/manifest.csv (e.g. "
                            f"{'|'.join(_eva_dir(t) for t in missing)})"
                            + (" or a manifest.csv in the folder itself." if single else "."))
        folders = {t: f for t, f in folders.items() if f is not None}
        if not folders:
            raise DataError(f"--embeddings-dir {folder}: no eva task folder with a manifest.csv "
                            f"({', '.join(_eva_dir(t) for t in ALL_TASKS if kind(t) is not Granularity.GRID)}).")
        inputs = Inputs(data={"kind": "embeddings", "path": str(folder), "synthetic": False,
                              "folders": {t: str(f) for t, f in folders.items()}},
                        context={"tasks": list(folders), "labels": {}, "targets": {}, "skipped": {}})
        for task, task_folder in folders.items():
            if kind(task) is Granularity.TILE:
                embeddings, labels = eva_patch.load_precomputed(task, task_folder, progress)
                inputs.context["labels"].update(labels)
            else:
                embeddings, context = eva_slide.load_precomputed(task, task_folder)
                inputs.context["targets"].update(context["targets"])
            inputs.embeddings.update(embeddings)
        return inputs

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, inputs: Inputs, options: EvaOptions, context: RunContext) -> BenchResult:
        from pathbench.heads import summarise_runs

        synthetic = inputs.synthetic
        tasks = [t for t in ALL_TASKS if t in inputs.context["tasks"]]
        max_steps, probe_batch = options.probe_settings(synthetic)
        seg = options.seg_settings(synthetic)
        notes, extra, rows, protocols = [], [], [], {}
        patch = any(kind(t) is Granularity.TILE for t in tasks)
        knn_head = ""
        if patch and options.head == "knn":
            knn_head = f"knn{options.knn_k}" + (f"-T{options.knn_temperature:g}" if options.knn_temperature != 0.07
                                                else "")
        if patch and options.head == "linear" and (max_steps, probe_batch) != (12_500, 256):
            notes.append(f"linear probe with batch {probe_batch} and at most {max_steps} steps (eva's protocol: "
                         "batch 256, 12500 steps)" + (" for the tiny synthetic splits" if synthetic else ""))
        for task in tasks:
            started = time.time()
            if kind(task) is Granularity.TILE:
                splits = {k.split("/", 1)[1]: (np.asarray(e.array, dtype=np.float32), inputs.context["labels"][k])
                          for k, e in inputs.embeddings.items() if k.split("/", 1)[0] == task}
                protocol = protocol_for(TASKS[task], runs=options.runs or 5, max_steps=max_steps, seed=options.seed,
                                        batch_size=probe_batch)
                protocols[task] = dataclasses.asdict(protocol)
                task_rows = evaluate_task(task, splits, protocol, device=context.device, progress=context.progress,
                                          head=options.head,
                                          knn={"k": options.knn_k, "temperature": options.knn_temperature})
            elif kind(task) is Granularity.BAG:
                task_rows = eva_slide.evaluate(task, inputs, inputs.context, runs=options.runs, seed=options.seed,
                                               device=context.device, progress=context.progress)
                for skip in inputs.context["skipped"].get(task, []):
                    notes.append(f"{task}: slide {skip['slide_id']} ({skip['split']}) skipped: {skip['reason']}")
            else:
                task_rows = eva_seg.evaluate(task, inputs, context, seg_protocol=options.seg_protocol,
                                             decoder=options.decoder, seed=options.seed, **seg)
            rows.extend(task_rows)
            mean, std = summarise_runs([r["value"] for r in task_rows])
            if context.progress:
                print(f"{ALL_TASKS[task][0]}: {task_rows[0]['metric']} on {task_rows[0]['split']} = {mean:.4f} ± "
                      f"{std:.4f} ({len(task_rows)} runs, {time.time() - started:.1f} s)")
        if any(kind(t) is Granularity.BAG for t in tasks) and (options.runs or SLIDE_RUNS) != SLIDE_RUNS:
            extra.append(f"ABMIL {options.runs} runs")
        if any(kind(t) is Granularity.GRID for t in tasks):
            if "monusac" in tasks and options.seg_protocol == "cached":
                extra.append("segmentation cached")
            if options.decoder != "conv_with_image":
                extra.append(f"decoder {options.decoder.replace('_', '')}")
            if any(seg[k] for k in seg) and synthetic:
                extra.append(f"segmentation {seg['max_steps']} steps")
            elif any(seg[k] for k in seg):
                extra.append("segmentation non-default")
        linear = patch and options.head == "linear"
        protocol_id, detail = eva_protocol(synthetic, max_steps if linear else 12_500,
                                           (options.runs or 5) if linear else 5, probe_batch if linear else 256, extra,
                                           head=knn_head)
        summary = summarise(rows)
        average = average_without_bach(summary)
        average = None if average is None or math.isnan(average) else average
        record = {"tasks": list(summary["task"]), "average_without_bach": average,
                  "settings": {"runs": options.runs, "max_steps": max_steps, "probe_batch_size": probe_batch,
                               "seed": options.seed, "segmentation": {**seg, "protocol": options.seg_protocol,
                                                                      "decoder": options.decoder}},
                  "probe": {"name": "eva linear probe (offline patch classification)",
                            "eva_defaults": max_steps == 12_500 and probe_batch == 256, "per_task": protocols},
                  "skipped_slides": inputs.context.get("skipped", {}),
                  "summary": summary.to_dict(orient="records")}
        long_rows = result_rows(_long_rows(rows))
        return BenchResult(rows=long_rows, tables={"runs.csv": pd.DataFrame(rows), "summary.csv": summary},
                           summary=summary, headline={"average": average}, protocol=protocol_id,
                           protocol_detail=detail, record=record,
                           report="\n" + format_table(context.model_name, summary), notes=notes)

    def export(self, inputs: Inputs, out: Path, fmt: str, *, progress: bool = True) -> list[Path]:
        """eva's offline formats: patch tasks (one ``.pt`` per image) and slide tasks (one per slide)."""
        written = []
        for task in inputs.context["tasks"]:
            if kind(task) is Granularity.TILE:
                manifest = eva_patch.export(task, inputs.embeddings, inputs.context["labels"],
                                            inputs.context["origins"], Path(out), progress=progress)
            elif kind(task) is Granularity.BAG:
                manifest = eva_slide.export(task, inputs, inputs.context, Path(out), progress=progress)
            else:
                raise PathbenchError(f"{task}: eva has no offline embedding format for segmentation; export the "
                                     "patch and slide tasks only.")
            print(f"{ALL_TASKS[task][0]}: eva embeddings and manifest in {manifest.parent}")
            written.append(manifest)
        return written


FULL_METRICS = ("loss", "auroc", "accuracy", "balanced_accuracy", "f1", "precision", "recall")


def _long_rows(rows: list[dict[str, Any]]):
    """The headline metric of every run, then eva's full set per split (``<split>_<metric>``)."""
    for row in rows:
        yield {"task": row["task"], "unit": row["run"], "metric": row["metric"], "value": row["value"]}
        for key, value in row.items():
            if key.partition("_")[2] in FULL_METRICS and key.split("_", 1)[0] in ("train", "val", "test"):
                yield {"task": row["task"], "unit": row["run"], "metric": key, "value": value}


def _eva_dir(task: str) -> str:
    return TASK_DATA[task].eva_dir if kind(task) is Granularity.TILE else eva_slide.FOLDERS[task][1]


def _slide_manifest(task: str, folder: Path, single: bool) -> Path | None:
    for name in (*eva_slide.FOLDERS[task], task):
        if (folder / name / "manifest.csv").is_file():
            return folder / name
    if single and (folder / "manifest.csv").is_file():
        return folder
    return None
