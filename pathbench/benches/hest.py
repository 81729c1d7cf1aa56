"""HEST-Benchmark: predict the expression of 50 genes per spot from tile embeddings.

``pathbench evaluate --model M --bench hest`` reproduces HEST-Benchmark's default protocol
(see ``docs/hest.md`` and :mod:`pathbench.benches.hest_protocol`):

- targets: the h5ad aligned to the patch barcodes, the task's 50 genes, ``log1p``;
- per fold: StandardScaler + PCA(256) fit on the train fold, lsqr ridge with
  ``alpha = 100 / (256 * 50)`` and no intercept, Pearson r per gene over the pooled test
  spots, mean over the genes;
- per task: mean and population std over folds; the benchmark average is the plain mean
  over the tasks run.

Embeddings come from the shared feature cache (one extraction per sample, whatever the
number of folds or heads) or from HEST's own embedding files (``--embeddings-dir``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

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
from pathbench.benches.hest_protocol import (
    DEFAULT_HEAD,
    DEFAULT_N_COMPONENTS,
    DEFAULT_SEED,
    HEADS,
    aggregate_folds,
    log1p_counts,
    make_head,
    pearson_per_gene,
)
from pathbench.data.hest import (
    HEST_REPO_ID,
    HEST_TASKS,
    HestSample,
    HestTask,
    download_hest_bench,
    find_hest_embeddings,
    load_task,
    read_expression,
    read_hest_embeddings,
    tasks_fingerprint,
)
from pathbench.errors import DataError, PathbenchError

FOLD_COLUMNS = ["task", "fold", "pearson_mean", "n_genes", "n_train_spots", "n_test_spots",
                "n_excluded_genes", "n_components", "alpha"]
GENE_COLUMNS = ["task", "fold", "gene", "pearson", "excluded"]
SAMPLE_COLUMNS = ["task", "fold", "sample_id", "pearson_mean", "n_genes", "n_spots"]
SUMMARY_COLUMNS = ["task", "pearson_mean", "pearson_std", "n_folds"]
PROTOCOL_DESCRIPTIONS = {
    "ridge-pca": "HEST-Benchmark default: log1p, StandardScaler + PCA(256) + lsqr ridge "
                 "(alpha 100 / (n_components * n_genes), no intercept), Pearson per gene on pooled test spots",
    "ridge": "HEST-Benchmark without dimension reduction: log1p, lsqr ridge on raw embeddings "
             "(alpha 100 / (dim * n_genes), no intercept), Pearson per gene on pooled test spots",
    "ridge-cv": "log1p, StandardScaler + PCA(256) + lsqr ridge with alpha by inner CV on the train fold "
                "(not HEST's), Pearson per gene on pooled test spots",
}
_SINGLE_THREAD_BELOW = 2_000_000   # elements of the training matrix
# How the seed paper's Table 1 names HEST's task folders.
PAPER_TASK_NAMES = {"CCRCC": "ccRCC", "LUNG": "LUAD", "LYMPH_IDC": "LYMPH_IDC"}

# (barcodes, embeddings (n_spots, dim) float32) for one sample of one task.
EmbeddingSource = Callable[[HestTask, HestSample], tuple[Sequence[str], np.ndarray]]


class HestWarning(UserWarning):
    """A gene excluded from a fold's mean, or another result worth a second look."""


@dataclass
class HestResult:
    """Tidy results of a HEST run (columns documented in ``docs/hest.md``)."""

    folds: pd.DataFrame
    genes: pd.DataFrame
    summary: pd.DataFrame
    samples: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SAMPLE_COLUMNS))
    notes: list[str] = field(default_factory=list)

    @property
    def average(self) -> float:
        """Plain mean of the task scores (the leaderboard's "Average")."""
        return float(self.summary.loc[self.summary["task"] == "average", "pearson_mean"].iloc[0])


# ---------------------------------------------------------------------------------------
# Python API


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]


def evaluate_task(
    task: HestTask,
    embed: EmbeddingSource,
    head: str = DEFAULT_HEAD,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """Run every fold of ``task``; return (fold rows, gene rows, sample rows, notes).

    Sample rows score each test sample alone (the mean over genes of the Pearson r over
    that sample's spots, genes constant within it left out); the fold score stays HEST's,
    over the pooled test spots. Each sample is embedded (``embed``) and its expression read once, however many folds
    use it. Samples are pooled in the order of the split csv, spots in the order of the
    embedding source, and targets are matched to spots by barcode.
    """
    embeddings: dict[str, np.ndarray] = {}
    targets: dict[str, np.ndarray] = {}
    for sample_id in task.sample_ids:
        sample = task.samples[sample_id]
        barcodes, array = embed(task, sample)
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != len(barcodes):
            raise DataError(f"embeddings of sample {sample_id} ({task.name}) have shape {array.shape} for "
                            f"{len(barcodes)} barcodes; expected (n_barcodes, dim).")
        if len(set(barcodes)) != len(barcodes):
            raise DataError(f"sample {sample_id} ({task.name}) has duplicate barcodes in its embeddings.")
        embeddings[sample_id] = array
        targets[sample_id] = log1p_counts(read_expression(sample.expr_path, task.genes, list(barcodes), sample_id))

    fold_rows: list[dict] = []
    gene_rows: list[dict] = []
    sample_rows: list[dict] = []
    notes: list[str] = []
    capped: list[str] = []
    for fold in tqdm(task.folds, desc=f"{task.name} folds ({head})", unit="fold", disable=not progress):
        x_train = _concat([embeddings[s] for s in fold.train])
        y_train = _concat([targets[s] for s in fold.train])
        groups = np.concatenate([np.full(len(embeddings[s]), i) for i, s in enumerate(fold.train)])
        x_test = _concat([embeddings[s] for s in fold.test])
        y_test = _concat([targets[s] for s in fold.test])
        if x_train.shape[1] != x_test.shape[1]:
            raise DataError(f"{task.name} fold {fold.index}: train embeddings have dimension {x_train.shape[1]}, "
                            f"test embeddings {x_test.shape[1]}.")
        # Multi-threaded BLAS only pays on large folds; on small ones its spinning threads
        # are many times slower than one thread (and the numbers agree to float precision).
        threads = 1 if x_train.size < _SINGLE_THREAD_BELOW else None
        with threadpool_limits(limits=threads, user_api="blas"):
            estimator = make_head(head, seed=seed).fit(x_train, y_train, groups=groups)
            predictions = estimator.predict(x_test)
        correlations = pearson_per_gene(y_test, predictions)
        if correlations.n_valid == 0:
            raise DataError(f"{task.name} fold {fold.index}: no gene has a Pearson r (every gene is constant in "
                            f"the test spots or predicted constant); the fold cannot be scored.")
        n_components = estimator.n_components_
        if n_components is not None and n_components < estimator.n_components:
            capped.append(f"{fold.index} ({n_components})")
        for gene, r, reason in zip(task.genes, correlations.r, correlations.excluded, strict=True):
            gene_rows.append({"task": task.name, "fold": fold.index, "gene": gene,
                              "pearson": float(r), "excluded": reason})
            if reason:
                message = (f"{task.name} fold {fold.index}: gene {gene} excluded from the fold mean ({reason}; "
                           "Pearson r undefined).")
                notes.append(message)
                warnings.warn(message, HestWarning, stacklevel=2)
        start = 0
        for sample_id in fold.test:
            stop = start + len(embeddings[sample_id])
            alone = (pearson_per_gene(y_test[start:stop], predictions[start:stop]) if stop - start >= 2 else None)
            sample_rows.append({"task": task.name, "fold": fold.index, "sample_id": sample_id,
                                "pearson_mean": alone.mean if alone else math.nan,
                                "n_genes": alone.n_valid if alone else 0, "n_spots": stop - start})
            start = stop
        fold_rows.append({
            "task": task.name, "fold": fold.index, "pearson_mean": correlations.mean,
            "n_genes": correlations.n_valid, "n_train_spots": int(x_train.shape[0]),
            "n_test_spots": int(x_test.shape[0]), "n_excluded_genes": len(task.genes) - correlations.n_valid,
            "n_components": n_components, "alpha": float(estimator.alpha_),
        })
    if capped:
        notes.append(f"{task.name}: PCA kept fewer than {DEFAULT_N_COMPONENTS} components, min(training spots, "
                     f"features), in fold(s) {', '.join(capped)}; see n_components in folds.csv.")
    return fold_rows, gene_rows, sample_rows, notes


def summarize(folds: pd.DataFrame) -> pd.DataFrame:
    """Per task: mean and population std of the fold scores, number of folds; then an
    ``average`` row (plain mean over tasks; its ``pearson_std`` is the population std of the
    task means and ``n_folds`` the total number of folds)."""
    rows = []
    for task, group in folds.groupby("task", sort=False):
        mean, std = aggregate_folds(group["pearson_mean"].to_numpy())
        rows.append({"task": task, "pearson_mean": mean, "pearson_std": std, "n_folds": len(group)})
    task_means = np.array([r["pearson_mean"] for r in rows])
    rows.append({"task": "average", "pearson_mean": float(task_means.mean()),
                 "pearson_std": float(task_means.std(ddof=0)), "n_folds": int(sum(r["n_folds"] for r in rows))})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def evaluate_hest(
    tasks: Sequence[HestTask],
    embed: EmbeddingSource,
    head: str = DEFAULT_HEAD,
    seed: int = DEFAULT_SEED,
    progress: bool = False,
) -> HestResult:
    """Evaluate embeddings on HEST tasks with HEST's protocol; see :func:`evaluate_task`."""
    if not tasks:
        raise PathbenchError("no HEST task to evaluate.")
    if head not in HEADS:
        raise PathbenchError(f"unknown HEST head {head!r}: expected one of {', '.join(HEADS)}.")
    fold_rows: list[dict] = []
    gene_rows: list[dict] = []
    sample_rows: list[dict] = []
    notes: list[str] = []
    for task in tasks:
        f, g, s, n = evaluate_task(task, embed, head=head, seed=seed, progress=progress)
        fold_rows += f
        gene_rows += g
        sample_rows += s
        notes += n
    folds = pd.DataFrame(fold_rows, columns=FOLD_COLUMNS)
    return HestResult(folds=folds, genes=pd.DataFrame(gene_rows, columns=GENE_COLUMNS),
                      summary=summarize(folds), samples=pd.DataFrame(sample_rows, columns=SAMPLE_COLUMNS),
                      notes=notes)


def hest_cache_embeddings(embeddings_dir: str | os.PathLike, model_name: str | None = None) -> EmbeddingSource:
    """An embedding source reading HEST's embedding files (``<dir>/<TASK>[/<model>]/<sample_id>.h5``)."""

    def embed(task: HestTask, sample: HestSample) -> tuple[Sequence[str], np.ndarray]:
        return read_hest_embeddings(find_hest_embeddings(embeddings_dir, task.name, sample.sample_id, model_name))

    return embed


# ---------------------------------------------------------------------------------------
# Console table


def format_table(summary: pd.DataFrame, model: str) -> str:
    """The summary as one row shaped like the seed paper's Table 1 (tasks, then Average)."""
    tasks = [t for t in summary["task"] if t != "average"]
    by_task = summary.set_index("task")
    headers = ["Model"] + [PAPER_TASK_NAMES.get(t, t) for t in tasks] + ["Average"]
    cells = [model] + [f"{by_task.loc[t, 'pearson_mean']:.4f} ± {by_task.loc[t, 'pearson_std']:.4f}" for t in tasks]
    cells.append(f"{by_task.loc['average', 'pearson_mean']:.4f}")
    widths = [max(len(h), len(c)) for h, c in zip(headers, cells, strict=True)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    row = "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    return "\n".join([line, rule, row])


# ---------------------------------------------------------------------------------------
# Command line


def parse_tasks(value: str | None) -> list[str] | None:
    """``"IDC, prad"`` -> ``["IDC", "PRAD"]``; None or empty -> None."""
    if not value:
        return None
    tasks = [t.strip().upper() for t in value.split(",") if t.strip()]
    return tasks or None


def synthetic_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where ``--data synthetic`` writes its dataset: ``<pathbench cache>/datasets/synthetic-hest``."""
    from pathbench.data.synthetic_hest import GENERATOR_VERSION
    from pathbench.settings import cache_root

    return cache_root(cache_dir) / "datasets" / f"synthetic-hest-v{GENERATOR_VERSION}"


def data_source(data: str | None) -> str:
    """``hf:MahmoodLab/hest-bench``, ``synthetic`` or ``local`` for a ``--data`` value."""
    if not data or data == "hf":
        return f"hf:{HEST_REPO_ID}"
    return "synthetic" if data == "synthetic" else "local"


def resolve_data(data: str | None, tasks: list[str] | None, cache_dir: str | os.PathLike | None,
                 need_patches: bool = True) -> tuple[Path, list[str]]:
    """(root folder, task names) for ``--data hf|synthetic|PATH`` and ``--tasks``.

    ``need_patches=False`` (precomputed embeddings) skips the patch files in a download.
    """
    data = data or "hf"
    if data == "synthetic":
        from pathbench.data.synthetic_hest import DEFAULT_TASKS, make_synthetic_hest

        known = {t.name: t for t in DEFAULT_TASKS}
        unknown = [t for t in tasks or [] if t not in known]
        if unknown:
            raise DataError(f"synthetic HEST has no task {', '.join(unknown)}; its tasks are {', '.join(known)}.")
        chosen = tuple(known[t] for t in tasks) if tasks else DEFAULT_TASKS
        return make_synthetic_hest(synthetic_root(cache_dir), tasks=chosen), [t.name for t in chosen]
    if data == "hf":
        tasks = tasks or list(HEST_TASKS)
        return download_hest_bench(tasks, include_patches=need_patches), tasks
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"--data {data}: no such folder; expected hf, synthetic, or a folder holding "
                        "hest-bench task folders (<TASK>/splits, patches, adata, var_50genes.json).")
    if tasks:
        return root, tasks
    present = [t for t in HEST_TASKS if (root / t / "splits").is_dir()]
    if not present:
        present = sorted(p.name for p in root.iterdir() if (p / "splits").is_dir())
    if not present:
        raise DataError(f"{root} holds no HEST task folder (<TASK>/splits/...); pass the hest-bench root.")
    return root, present


HEST_MPP = 0.5  # HEST-Benchmark patches are 224 x 224 pixels at 0.5 um/px


@dataclass
class HestOptions:
    """HEST's options (see ``pathbench evaluate --bench hest --help``)."""

    tasks: str | None = option(help="comma-separated HEST tasks (default: the nine leaderboard tasks "
                               f"{','.join(HEST_TASKS)}; with --data synthetic, every synthetic task)")
    head: str = option(DEFAULT_HEAD, choices=HEADS,
                       help="regression head: ridge-pca (HEST default: StandardScaler + PCA(256) + ridge), "
                            "ridge (raw embeddings), ridge-cv (alpha by inner CV on the train fold)")
    embeddings_dir: str | None = option(help="evaluate HEST's own embedding files <DIR>/<TASK>[/<model>]/"
                                        "<sample_id>.h5 instead of running a model (name the run with --model-name)")
    seed: int = option(DEFAULT_SEED, help="random_state of PCA and ridge (HEST: 1)")

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise PathbenchError(f"unknown HEST head {self.head!r}: expected one of {', '.join(HEADS)}.")


def _pearson_column() -> Column:
    return Column("task", "task", "Pearson r per gene on the pooled test spots of a fold, mean over genes, then "
                  "over folds", metric="pearson", statistic="nested-mean", spread="outer-std")


class HestBenchmark(Benchmark):
    """HEST-Benchmark: gene-expression prediction from tile embeddings."""

    name = "hest"
    protocol = "hest-v1"
    title = "HEST gene-expression prediction"
    description = "Predict the expression of 50 genes per spot with HEST-Benchmark's ridge protocol (Pearson r)."
    Options = HestOptions
    tasks = tuple(Task(t, t, "pearson", description=f"HEST-Benchmark task {t}") for t in HEST_TASKS)
    metrics = (Metric("pearson", "Pearson r", unit="gene",
                      description="Pearson r of one gene over the pooled test spots of one fold (unit fold|gene)"),)
    data_sources = ("hf", "synthetic", "PATH")
    precomputed = ("embeddings_dir",)
    inline_option = "tasks"
    leaderboard = LeaderboardSpec(
        title="HEST gene expression (Pearson r)",
        per_task=_pearson_column(),
        task_order=tuple(HEST_TASKS),
        aggregates=(Aggregate("average", "Average", "plain mean over the tasks of the row's task means"),),
        primary=("average",),
        default_reference="paper",
        decimals=4,
        task_bars=True,
        task_bars_caption="HEST: Pearson r per task (bars), reference rows and your runs "
                          "(error bars: bootstrap 95 % CI).",
    )

    def check(self, options: HestOptions, *, data: str | None, has_model: bool) -> None:
        if options.embeddings_dir and not Path(options.embeddings_dir).is_dir():
            raise DataError(f"--embeddings-dir {options.embeddings_dir}: no such folder; expected HEST embedding "
                            "files <DIR>/<TASK>/<sample_id>.h5 or <DIR>/<TASK>/<model>/<sample_id>.h5.")

    def _tasks(self, options: HestOptions, data: str | None, cache_dir: str | None,
               need_patches: bool) -> tuple[Path, list[HestTask]]:
        root, names = resolve_data(data, parse_tasks(options.tasks), cache_dir, need_patches=need_patches)
        return root, [load_task(root, name) for name in names]

    def _data_record(self, data: str | None, root: Path, tasks: list[HestTask]) -> dict:
        source = data_source(data)
        kind = "synthetic" if source == "synthetic" else ("hub" if source.startswith("hf:") else "local")
        return {"source": source, "kind": kind, "path": str(root), "synthetic": source == "synthetic",
                "fingerprint": tasks_fingerprint(tasks)}

    def prepare(self, options: HestOptions, data: str | None, *, cache_dir: str | None = None,
                progress: bool = True) -> Inputs:
        from pathbench.data.hest import HestPatchDataset

        root, tasks = self._tasks(options, data, cache_dir, need_patches=True)
        requests = {}
        for task in tasks:
            for sample_id in task.sample_ids:
                sample = task.samples[sample_id]
                dataset = HestPatchDataset(sample.patches_path, sample_id=sample_id)
                # the expression of every spot is checked before any model runs (missing h5ad, a
                # barcode or gene it lacks): a bad sample is said now, not after the extraction
                read_expression(sample.expr_path, task.genes, dataset.item_ids, sample_id)
                requests[f"{task.name}/{sample_id}"] = DataRequest(dataset, desc=f"{task.name}/{sample_id}")
        return Inputs(requests=requests, context={"tasks": tasks, "root": root},
                      data=self._data_record(data, root, tasks), mpp=HEST_MPP)

    def load_precomputed(self, options: HestOptions, data: str | None, *, cache_dir: str | None = None,
                         progress: bool = True) -> Inputs:
        root, tasks = self._tasks(options, data, cache_dir, need_patches=False)
        return Inputs(context={"tasks": tasks, "root": root, "embeddings_dir": options.embeddings_dir},
                      data=self._data_record(data, root, tasks), mpp=HEST_MPP)

    def evaluate(self, inputs: Inputs, options: HestOptions, context: RunContext) -> BenchResult:
        tasks: list[HestTask] = inputs.context["tasks"]
        if inputs.context.get("embeddings_dir"):
            embed = hest_cache_embeddings(inputs.context["embeddings_dir"], context.model_name)
        else:
            def embed(task: HestTask, sample: HestSample) -> tuple[Sequence[str], np.ndarray]:
                found = inputs.embeddings[f"{task.name}/{sample.sample_id}"]
                return found.item_ids, np.asarray(found.array, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HestWarning)   # printed once, with the results
            result = evaluate_hest(tasks, embed, head=options.head, seed=options.seed, progress=context.progress)
        synthetic = inputs.synthetic
        if not synthetic and options.head == "ridge-pca":
            protocol = "hest-ridge-pca256"
            detail = ("HEST-Benchmark default: log1p targets, 50 genes, StandardScaler + PCA(256) + ridge, "
                      "Pearson per gene, mean over folds")
        else:
            kind = "synthetic" if synthetic else "real"
            protocol = f"hest-{kind}-{options.head}"
            detail = (f"{'synthetic HEST (not HEST data)' if synthetic else 'HEST data'}, head {options.head}, "
                      "Pearson per gene, mean over folds")
        record = {"head": options.head, "seed": options.seed, "tasks": [t.name for t in tasks],
                  "data_fingerprint": tasks_fingerprint(tasks), "hest_protocol": PROTOCOL_DESCRIPTIONS[options.head],
                  "embeddings_dir": str(inputs.context.get("embeddings_dir") or "") or None,
                  "n_components": DEFAULT_N_COMPONENTS if options.head != "ridge" else None,
                  "alpha": "100 / (n_features * n_genes)" if options.head != "ridge-cv" else "inner cross-validation",
                  "average_pearson": result.average}
        genes = result.genes
        rows = result_rows({"task": g.task, "unit": f"{g.fold}|{g.gene}", "metric": "pearson",
                            "value": float("nan") if g.excluded else g.pearson} for g in genes.itertuples())
        header = (f"HEST ({options.head}, seed {options.seed}): Pearson r, mean ± std over folds")
        return BenchResult(rows=rows, tables={"folds.csv": result.folds, "genes.csv": result.genes,
                                              "summary.csv": result.summary, "samples.csv": result.samples},
                           summary=result.summary, headline={"average": result.average}, protocol=protocol,
                           protocol_detail=detail, record=record,
                           report=header + "\n" + format_table(result.summary, context.model_name),
                           notes=list(result.notes))
