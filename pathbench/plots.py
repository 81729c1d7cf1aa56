"""Leaderboard plots as PNG bytes (matplotlib, Agg backend, no display needed).

- :func:`plism_figure1`: median top-5 accuracy vs median cosine similarity, one point per
  model (the seed paper's Figure 1), with the paper's Table 3 models as reference points.
- :func:`plism_figure4`: robustness to scanners vs to stainings (the paper's Figure 4 uses
  median top-1; its numbers exist only as a figure, so that panel shows your runs), and the
  same with top-10 where the plismbench README gives reference numbers.
- :func:`hest_task_bars`: Pearson r per HEST task, one bar per model.
- :func:`cost_vs_performance`: parameters, and measured tiles/s where a run recorded it,
  against the benchmark's ranking column.

Every function returns PNG bytes; :func:`leaderboard_plots` picks those that apply.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pathbench.leaderboard import (  # noqa: E402
    Entry,
    Leaderboard,
    Run,
    _zoo_params,
    available_references,
    load_references,
)

RUN_COLOR = "#d64545"
REFERENCE_COLOR = "#486581"
DPI = 110


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _scatter(ax: plt.Axes, points: Sequence[tuple[str, float, float]], color: str, marker: str, label: str) -> None:
    points = [p for p in points if np.isfinite(p[1]) and np.isfinite(p[2])]
    if not points:
        return
    ax.scatter([p[1] for p in points], [p[2] for p in points], c=color, marker=marker,
               s=150 if marker == "*" else 46, label=label,
               edgecolors="white", linewidths=0.6, zorder=3)
    for name, x, y in points:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7.5, color=color)


def _from_zero(ax: plt.Axes) -> None:
    """Axes from 0 to 25 % past the largest point, so labels beside points stay inside."""
    offsets = [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
    if not offsets:
        return
    points = np.concatenate(offsets)
    x_max, y_max = float(np.max(points[:, 0])), float(np.max(points[:, 1]))
    ax.set_xlim(0, x_max * 1.25 if x_max > 0 else 1)
    ax.set_ylim(0, y_max * 1.15 if y_max > 0 else 1)


def _run_label(run: Run) -> str:
    return f"{run.model} ({run.pooling})"


def plism_figure1(runs: Sequence[Run], references: Sequence[Entry] | None = None) -> bytes:
    """Median top-5 accuracy (y) vs median cosine similarity (x) over all slide pairs.

    Args:
        runs: your PLISM runs (values ``cosine_all`` and ``top5_all``).
        references: reference rows with those two values (default: the paper's Table 3).
    """
    if references is None:
        references = load_references("plism", "paper")
    figure, ax = plt.subplots(figsize=(7.2, 5.2))
    _scatter(ax, [(e.model, e.values.get("cosine_all", np.nan), e.values.get("top5_all", np.nan)) for e in references],
             REFERENCE_COLOR, "o", "published (seed paper Table 3: 21 slides, 16,278 tiles)")
    _scatter(ax, [(_run_label(r), r.values.get("cosine_all", np.nan), r.values.get("top5_all", np.nan)) for r in runs],
             RUN_COLOR, "*", "your runs")
    ax.set_xlabel("median cosine similarity (all pairs)")
    ax.set_ylabel("median top-5 accuracy (all pairs)")
    ax.set_title("PLISM robustness: retrieval vs cosine similarity")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    protocols = sorted({r.protocol for r in runs})
    if protocols:
        figure.text(0.01, -0.02, "your runs: " + "; ".join(protocols) + ". Points from different protocols are shown "
                    "together for orientation, not ranked.", fontsize=7, color="#616e7c")
    return _png(figure)


def plism_figure4(runs: Sequence[Run], references: Sequence[Entry] | None = None) -> bytes:
    """Robustness to scanners (x) vs to stainings (y): median top-1 (the paper's Figure 4)
    and median top-10 (with the plismbench README rows)."""
    if references is None:
        references = load_references("plism", "plismbench")
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    _scatter(left, [(_run_label(r), r.values.get("top1_inter_scanner", np.nan), r.values.get("top1_inter_staining", np.nan))
                    for r in runs], RUN_COLOR, "*", "your runs")
    left.set_title("median top-1 (the paper's Figure 4)")
    left.text(0.02, 0.98, "published only as a figure:\nno reference numbers", transform=left.transAxes, va="top",
              fontsize=7.5, color="#616e7c")
    _scatter(right, [(e.model, e.values.get("top10_inter_scanner", np.nan), e.values.get("top10_inter_staining", np.nan))
                     for e in references], REFERENCE_COLOR, "o", "published (plismbench README: 91 slides, 8,139 tiles)")
    _scatter(right, [(_run_label(r), r.values.get("top10_inter_scanner", np.nan), r.values.get("top10_inter_staining", np.nan))
                     for r in runs], RUN_COLOR, "*", "your runs")
    right.set_title("median top-10")
    for ax in (left, right):
        _from_zero(ax)
        ax.set_xlabel("robustness to scanners (inter-scanner pairs)")
        ax.set_ylabel("robustness to stainings (inter-staining pairs)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    figure.suptitle("PLISM: scanner vs staining robustness")
    return _png(figure)


def hest_task_bars(entries: Sequence[Entry], tasks: Sequence[str]) -> bytes:
    """Grouped bars: Pearson r per task (x), one bar per row that has the task; error bars
    are the bootstrap 95 % CI of your runs. A row keeps its colour across tasks."""
    from matplotlib.patches import Patch

    entries = [e for e in entries if any(np.isfinite(e.values.get(t, np.nan)) for t in tasks)]
    references = [e for e in entries if not e.is_run]
    runs = [e for e in entries if e.is_run]
    palette = plt.get_cmap("tab20")
    colors = {id(e): palette(i % 20) for i, e in enumerate(references)}
    run_palette = plt.get_cmap("autumn")
    colors.update({id(e): run_palette(0.15 + 0.6 * i / max(1, len(runs))) for i, e in enumerate(runs)})
    figure, ax = plt.subplots(figsize=(max(8.0, 1.2 * len(tasks) + 3), 5.2))
    for j, task in enumerate(tasks):
        present = [e for e in entries if np.isfinite(e.values.get(task, np.nan))]
        if not present:
            continue
        width = min(0.82 / len(present), 0.3)
        for i, entry in enumerate(present):
            height = entry.values[task]
            error = None
            if entry.is_run and task in entry.ci:
                low, high = entry.ci[task]
                error = np.array([[max(0.0, height - low)], [max(0.0, high - height)]])
            ax.bar(j - 0.41 + width * (i + 0.5), height, width * 0.95, color=colors[id(entry)],
                   edgecolor="#d64545" if entry.is_run else "none", linewidth=0.8,
                   yerr=error, capsize=2, error_kw={"elinewidth": 0.8})
    handles = [Patch(color=colors[id(e)], label=f"{e.model} ({'your run' if e.is_run else 'published'})")
               for e in runs + references]
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylabel("Pearson r (mean over genes, then folds)")
    ax.set_title("HEST: gene-expression prediction per task")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(figure)


def cost_vs_performance(entries: Sequence[Entry], column: str, column_label: str) -> bytes:
    """Score (y) against parameters (x, log scale) and, for runs that recorded it, against
    measured throughput in tiles/s."""
    with_speed = [e for e in entries if e.is_run and e.run.tiles_per_s and np.isfinite(e.values.get(column, np.nan))]
    panels = 2 if with_speed else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.8), squeeze=False)
    ax = axes[0, 0]
    points = [(e, entry_params(e), e.values.get(column, np.nan)) for e in entries if entry_params(e)]
    _scatter(ax, [(e.model, p, v) for e, p, v in points if not e.is_run], REFERENCE_COLOR, "o", "published")
    _scatter(ax, [(e.model, p, v) for e, p, v in points if e.is_run], RUN_COLOR, "*", "your runs")
    if points:
        ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(column_label)
    ax.set_title("score vs model size")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if with_speed:
        ax = axes[0, 1]
        _scatter(ax, [(e.model, e.run.tiles_per_s, e.values[column]) for e in with_speed], RUN_COLOR, "*", "your runs")
        ax.set_xscale("log")
        ax.set_xlabel("measured throughput (tiles/s, as recorded by the run)")
        ax.set_ylabel(column_label)
        ax.set_title("score vs speed")
        ax.grid(alpha=0.3, which="both")
    figure.suptitle("Cost vs performance (published rows: sizes as published in the seed paper, else the model zoo's count)",
                    fontsize=10)
    return _png(figure)


def entry_params(entry: Entry) -> float | None:
    """Parameters of a row: your run's (zoo count, else run.json); for a published row its
    published size, else the size another reference table publishes for the same model,
    else the model zoo's count."""
    if entry.is_run and entry.run.params:
        return entry.run.params
    if entry.params:
        return entry.params
    return published_sizes().get(entry.model_key) or _zoo_params(entry.model_key)


_SIZES: dict[str, float] = {}


def published_sizes() -> dict[str, float]:
    """model_key -> parameters, from every reference table that publishes a size."""
    if not _SIZES:
        for bench in ("hest", "eva", "plism"):
            for source in available_references(bench):
                for entry in load_references(bench, source):
                    if entry.params:
                        _SIZES.setdefault(entry.model_key, entry.params)
    return _SIZES


def leaderboard_plots(board: Leaderboard) -> dict[str, bytes]:
    """The plots that apply to ``board``, by name (see ``PLOT_CAPTIONS`` in the leaderboard module)."""
    plots: dict[str, bytes] = {}
    if board.bench == "plism":
        plots["plism_figure1"] = plism_figure1(board.runs)
        plots["plism_figure4"] = plism_figure4(board.runs)
    if board.bench == "hest":
        tasks = [c.key for c in board.columns if c.key != "average"]
        plots["hest_tasks"] = hest_task_bars(board.entries, tasks)
    primary = board.primary
    if any(entry_params(e) for e in board.entries):
        plots[f"{board.bench}_cost"] = cost_vs_performance(board.entries, primary.key, primary.label)
    return plots
