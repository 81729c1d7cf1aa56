"""Leaderboard plots as PNG bytes (matplotlib, Agg backend, no display needed).

Every plot is drawn from declarations, never from a benchmark name:

- the scatter figures a benchmark declares (:class:`~pathbench.benches.base.Plot`): one
  column against another, your runs and a published source's rows;
- per-task bars when the benchmark asks for them (one bar per row and task, with your
  runs' bootstrap 95 % intervals);
- cost vs performance: parameters (and measured tiles/s where a run recorded it) against
  the ranking column.

:func:`leaderboard_plots` returns ``{name: (png bytes, caption)}``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pathbench.benches.base import Panel, Plot  # noqa: E402
from pathbench.leaderboard.build import Entry, Leaderboard  # noqa: E402
from pathbench.leaderboard.references import load_references, published_sizes  # noqa: E402

RUN_COLOR = "#d64545"
REFERENCE_COLOR = "#486581"
DPI = 110
COST_CAPTION = ("Cost vs performance: parameters (and measured tiles/s where a run recorded it) against the "
                "benchmark's ranking column.")


def _png(figure: plt.Figure) -> bytes:
    declutter(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _scatter(ax: plt.Axes, points: Sequence[tuple[str, float, float]], color: str, marker: str, label: str) -> None:
    points = [p for p in points if np.isfinite(p[1]) and np.isfinite(p[2])]
    if not points:
        return
    ax.scatter([p[1] for p in points], [p[2] for p in points], c=color, marker=marker,
               s=150 if marker == "*" else 46, label=label, edgecolors="white", linewidths=0.6, zorder=3)
    for name, x, y in sorted(points, key=lambda p: (p[1], p[2])):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7.5, color=color)


def declutter(figure: plt.Figure, steps: int = 60) -> int:
    """Move point labels apart until no two overlap (or ``steps`` passes): each label that
    overlaps an earlier one moves down by its own height. Returns the overlaps left."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    left = 0
    for ax in figure.axes:
        labels = [t for t in ax.texts if hasattr(t, "xyann")]
        for _ in range(steps):
            boxes = [t.get_window_extent(renderer).expanded(1.02, 1.1) for t in labels]
            moved = False
            for i in range(1, len(labels)):
                if any(boxes[i].overlaps(boxes[j]) for j in range(i)):
                    x, y = labels[i].xyann
                    labels[i].xyann = (x, y - 0.8 * boxes[i].height * 72 / figure.dpi)
                    boxes[i] = labels[i].get_window_extent(renderer).expanded(1.02, 1.1)
                    moved = True
            if not moved:
                break
        boxes = [t.get_window_extent(renderer) for t in labels]
        left += sum(boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i))
    return left


def _from_zero(ax: plt.Axes) -> None:
    """Axes from 0 to 25 % past the largest point, so labels beside points stay inside."""
    offsets = [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
    if not offsets:
        return
    points = np.concatenate(offsets)
    x_max, y_max = float(np.max(points[:, 0])), float(np.max(points[:, 1]))
    ax.set_xlim(0, x_max * 1.25 if x_max > 0 else 1)
    ax.set_ylim(0, y_max * 1.15 if y_max > 0 else 1)


def _legend_below(ax: plt.Axes) -> None:
    """The legend beside the axes, where it can never cover a point."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


def _run_label(entry: Entry) -> str:
    return f"{entry.model} ({entry.pooling})"


def scatter_figure(board: Leaderboard, plot: Plot) -> bytes:
    """One declared figure: each panel plots column ``x`` against column ``y``."""
    runs = [e for e in board.entries if e.is_run]
    figure, axes = plt.subplots(1, len(plot.panels), figsize=(6.6 * len(plot.panels), 5.4), squeeze=False)
    for ax, panel in zip(axes[0], plot.panels, strict=True):
        _panel(ax, board, panel, runs)
    figure.suptitle(plot.title)
    protocols = sorted({e.protocol for e in runs})
    if protocols:
        figure.text(0.01, -0.04, "your runs: " + "; ".join(protocols) + ". Points from different protocols are shown "
                    "together for orientation, not ranked.", fontsize=7, color="#616e7c")
    return _png(figure)


def _panel(ax: plt.Axes, board: Leaderboard, panel: Panel, runs: Sequence[Entry]) -> None:
    if panel.reference:
        references = load_references(board.bench, panel.reference)
        _scatter(ax, [(r.model, r.values.get(panel.x, np.nan), r.values.get(panel.y, np.nan)) for r in references],
                 REFERENCE_COLOR, "o", panel.reference_label)
    _scatter(ax, [(_run_label(e), e.values.get(panel.x, np.nan), e.values.get(panel.y, np.nan)) for e in runs],
             RUN_COLOR, "*", "your runs")
    labels = {c.key: c.label for c in board.columns}
    ax.set_xlabel(panel.xlabel or labels.get(panel.x, panel.x))
    ax.set_ylabel(panel.ylabel or labels.get(panel.y, panel.y))
    if panel.title:
        ax.set_title(panel.title)
    if panel.note:
        ax.text(0.02, 0.98, panel.note, transform=ax.transAxes, va="top", fontsize=7.5, color="#616e7c")
    if panel.from_zero:
        _from_zero(ax)
    else:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _legend_below(ax)


def task_bars(board: Leaderboard) -> bytes:
    """Grouped bars: the value per task (x), one bar per row that has the task; error bars
    are your runs' bootstrap 95 % CI. A row keeps its colour across tasks."""
    from matplotlib.patches import Patch

    tasks = [c.key for c in board.columns if c.per_task]
    entries = [e for e in board.entries if any(np.isfinite(e.values.get(t, np.nan)) for t in tasks)]
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
                   edgecolor=RUN_COLOR if entry.is_run else "none", linewidth=0.8,
                   yerr=error, capsize=2, error_kw={"elinewidth": 0.8})
    handles = [Patch(color=colors[id(e)], label=f"{e.model} ({'your run' if e.is_run else 'published'})")
               for e in runs + references]
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylabel(_task_metric_label(board))
    ax.set_title(f"{board.title}: per task")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(figure)


def _task_metric_label(board: Leaderboard) -> str:
    benchmark = board.benchmark
    if benchmark is None:
        return "value"
    metrics = {t.metric for t in benchmark.tasks}
    labels = {m.name: m.label or m.name for m in benchmark.metrics}
    return labels.get(next(iter(metrics)), "value") if len(metrics) == 1 else "value"


def cost_vs_performance(board: Leaderboard) -> bytes:
    """Score (y) against parameters (x, log scale) and, for runs that recorded it, against
    measured throughput in tiles/s."""
    column, label = board.primary.key, board.primary.label
    entries = board.entries
    with_speed = [e for e in entries if e.is_run and e.run.tiles_per_s and np.isfinite(e.values.get(column, np.nan))]
    panels = 2 if with_speed else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 5.0), squeeze=False)
    ax = axes[0, 0]
    points = [(e, entry_params(e), e.values.get(column, np.nan)) for e in entries if entry_params(e)]
    _scatter(ax, [(e.model, p, v) for e, p, v in points if not e.is_run], REFERENCE_COLOR, "o", "published")
    _scatter(ax, [(e.model, p, v) for e, p, v in points if e.is_run], RUN_COLOR, "*", "your runs")
    if points:
        ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(label)
    ax.set_title("score vs model size")
    ax.grid(alpha=0.3, which="both")
    _legend_below(ax)
    if with_speed:
        ax = axes[0, 1]
        _scatter(ax, [(e.model, e.run.tiles_per_s, e.values[column]) for e in with_speed], RUN_COLOR, "*", "your runs")
        ax.set_xscale("log")
        ax.set_xlabel("measured throughput (tiles/s, as recorded by the run)")
        ax.set_ylabel(label)
        ax.set_title("score vs speed")
        ax.grid(alpha=0.3, which="both")
    figure.suptitle("Cost vs performance (published rows: sizes as published, else as another reference table "
                    "publishes them; your runs: as recorded at evaluation)", fontsize=10)
    return _png(figure)


def entry_params(entry: Entry) -> float | None:
    """Parameters of a row: your run's as recorded in run.json; a published row's published
    size, else the size another reference table publishes for the same model."""
    if entry.params:
        return entry.params
    return published_sizes().get(entry.model_key)


def leaderboard_plots(board: Leaderboard) -> dict[str, tuple[bytes, str]]:
    """The plots that apply to ``board``: ``{name: (png, caption)}``."""
    spec = board.benchmark.leaderboard if board.benchmark is not None else None
    plots: dict[str, tuple[bytes, str]] = {}
    for plot in spec.plots if spec else ():
        plots[plot.name] = (scatter_figure(board, plot), plot.caption)
    if spec and spec.task_bars and any(c.per_task for c in board.columns):
        plots[f"{board.bench}_tasks"] = (task_bars(board), spec.task_bars_caption or f"{board.title}: per task.")
    if any(entry_params(e) for e in board.entries):
        plots[f"{board.bench}_cost"] = (cost_vs_performance(board), COST_CAPTION)
    return plots
