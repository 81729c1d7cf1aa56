"""Building a leaderboard: columns, rows, protocol groups, ranks, marks and tests.

Rules the table follows:

- Every row carries the protocol that produced it. Rows are grouped by protocol; ranks and
  best / second-best marks are computed inside a group only (:func:`rank_entries` refuses
  rows of different protocols).
- A model that is both in your runs and in the reference table (same protocol) is one row:
  your value, then the published value and the difference.
- For your runs on the same protocol and data, every column gets a paired comparison of
  each run with the column's best run, Holm-corrected across the table, and bootstrap 95 %
  confidence intervals.
- Which columns exist, how they summarise the units and how the headline averages them
  come from the benchmark's :class:`~pathbench.benches.base.LeaderboardSpec`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathbench import stats
from pathbench.benches import get_benchmark
from pathbench.benches.base import Benchmark
from pathbench.errors import PathbenchError
from pathbench.leaderboard import statistics
from pathbench.leaderboard.references import (
    AverageCheck,
    ReferenceRow,
    check_reference_averages,
    load_references,
    normalise,
)
from pathbench.leaderboard.runs import Run, SkippedRun, load_runs
from pathbench.leaderboard.statistics import ColumnDef, Comparison
from pathbench.settings import DEFAULT_RESULTS

ALPHA = 0.05
N_BOOT = 2000
MARK_BEST, MARK_SECOND = "best", "second"
DEGENERATE_MARK = "⚠"


@dataclasses.dataclass
class Entry:
    """One row of a leaderboard: a reference row, a run, or a run merged with its reference row."""

    model: str
    model_key: str
    origin: str  # "reference", "run" or "run+reference"
    protocol: str
    protocol_detail: str
    pooling: str
    values: dict[str, float]
    text: dict[str, str] = dataclasses.field(default_factory=dict)
    extras: dict[str, str] = dataclasses.field(default_factory=dict)
    published: dict[str, float] = dataclasses.field(default_factory=dict)
    published_text: dict[str, str] = dataclasses.field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    cell_notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    run: Run | None = None
    rank: int | None = None
    marks: dict[str, str] = dataclasses.field(default_factory=dict)
    significance: dict[str, Comparison] = dataclasses.field(default_factory=dict)
    params: float | None = None
    computed: set[str] = dataclasses.field(default_factory=set)
    degenerate: list[str] | None = None

    @property
    def is_run(self) -> bool:
        return self.run is not None

    @property
    def label(self) -> str:
        """The model's name as tables print it: a degenerate model carries a warning sign."""
        return f"{self.model} {DEGENERATE_MARK}" if self.degenerate else self.model


@dataclasses.dataclass
class Group:
    """Rows produced by one protocol: ranked and marked among themselves only."""

    protocol: str
    protocol_detail: str
    entries: list[Entry]
    averages: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Leaderboard:
    bench: str
    title: str
    reference: str
    columns: list[ColumnDef]
    groups: list[Group]
    comparisons: list[Comparison]
    skipped: list[SkippedRun]
    checks: list[AverageCheck]
    runs: list[Run]
    footnotes: list[str]
    decimals: int = 3
    benchmark: Benchmark | None = dataclasses.field(default=None, repr=False)

    @property
    def entries(self) -> list[Entry]:
        return [e for g in self.groups for e in g.entries]

    @property
    def primary(self) -> ColumnDef:
        return next(c for c in self.columns if c.primary)


# --------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------
def columns_for(benchmark: Benchmark, references: Sequence[ReferenceRow], runs: Sequence[Run]) -> list[ColumnDef]:
    """The table's columns from the benchmark's declaration, the reference and the runs."""
    spec = benchmark.leaderboard
    aggregates = {a.key: a for a in spec.aggregates}
    ref_keys: list[str] = []
    for row in references:
        ref_keys += [k for k in row.values if k not in ref_keys]
    columns: list[ColumnDef] = []
    if spec.per_task is None:
        fixed = {c.key: c for c in spec.columns}
        keys = ([k for k in ref_keys if k in fixed or k in aggregates] if references
                else list(spec.default_columns or [*fixed, *aggregates]))
        keys += [k for k in spec.always_columns if k not in keys]
        for key in keys:
            if key in fixed:
                c = fixed[key]
                columns.append(ColumnDef(c.key, c.label, c.description, metric=c.metric, tasks=c.tasks,
                                         statistic=c.statistic, spread=c.spread))
    else:
        template = spec.per_task
        labels = [k for k in ref_keys if k not in aggregates]
        run_labels = [benchmark.task_label(t) for run in runs for t in run.tasks]
        order = list(spec.task_order)
        for label in sorted(dict.fromkeys(run_labels), key=lambda t: (order.index(t) if t in order else len(order), t)):
            if label not in labels:
                labels.append(label)
        for label in labels:
            task = benchmark.task(label)
            description = template.description + (f" ({task.description})" if task and task.description else "")
            columns.append(ColumnDef(label, label, description, metric=template.metric, tasks=(label,),
                                     statistic=template.statistic, spread=template.spread, per_task=True))
        keys = [*labels, *aggregates]
    shown = {c.key for c in columns}
    for aggregate in spec.aggregates:
        if aggregate.key in keys and (aggregate.parts is None or all(p in shown for p in aggregate.parts)):
            columns.append(ColumnDef(aggregate.key, aggregate.label, aggregate.description, kind="aggregate",
                                     parts=aggregate.parts, exclude=aggregate.exclude))
            shown.add(aggregate.key)
    primary = next((k for k in spec.primary if k in shown), columns[-1].key if columns else None)
    if primary is None:
        raise PathbenchError(f"the {benchmark.name} leaderboard has no column to show.")
    return [dataclasses.replace(c, primary=c.key == primary) for c in columns]


def _task_info(benchmark: Benchmark):
    def info(name: str) -> tuple[str, str | None]:
        task = benchmark.task(name)
        return (task.title, task.metric or None) if task else (name, None)
    return info


# --------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------
def rank_entries(entries: Sequence[Entry], column: str) -> list[Entry]:
    """Sort ``entries`` by ``column`` (higher first) and set competition ranks (1, 2, 2, 4).

    Rows without a value come last, unranked. Raises :class:`PathbenchError` when the rows
    come from more than one protocol: those numbers are not comparable.
    """
    protocols = sorted({e.protocol for e in entries})
    if len(protocols) > 1:
        raise PathbenchError(f"refusing to rank rows from different protocols together ({', '.join(protocols)}): "
                             "their numbers are not comparable. Rank each protocol separately "
                             "(build_leaderboard groups them for you).")

    def key(entry: Entry) -> tuple:
        value = entry.values.get(column, float("nan"))
        return (0 if np.isfinite(value) else 1, -value if np.isfinite(value) else 0.0, entry.model.lower())

    ordered = sorted(entries, key=key)
    previous, rank = None, 0
    for position, entry in enumerate(ordered, start=1):
        value = entry.values.get(column, float("nan"))
        if not np.isfinite(value):
            entry.rank = None
            continue
        if previous is None or value != previous:
            rank = position
        entry.rank = rank
        previous = value
    return ordered


def mark_best(entries: Sequence[Entry], columns: Sequence[str]) -> None:
    """Mark the best (bold) and second-best (underlined) value of each column; ties share.
    A column with fewer than two values gets no mark."""
    for column in columns:
        present = [v for v in (e.values.get(column, float("nan")) for e in entries) if np.isfinite(v)]
        values = sorted(set(present), reverse=True)
        for entry in entries:
            value = entry.values.get(column, float("nan"))
            entry.marks.pop(column, None)
            if len(present) < 2:
                continue
            if value == values[0]:
                entry.marks[column] = MARK_BEST
            elif len(values) > 1 and value == values[1]:
                entry.marks[column] = MARK_SECOND


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------
def build_leaderboard(bench: str, results: str | Path = DEFAULT_RESULTS, reference: str | None = None,
                      n_boot: int = N_BOOT, seed: int = 0) -> Leaderboard:
    """Merge runs with a reference table, group by protocol, rank, mark, and test.

    Args:
        bench: a registered benchmark name.
        results: results root (``<results>/<bench>/<model>/``), a benchmark folder or a run folder.
        reference: reference source (``paper``, ...) or ``none``; default:
            the benchmark's.
    """
    benchmark = get_benchmark(bench)
    spec = benchmark.leaderboard
    reference = reference or spec.default_reference
    references = load_references(benchmark.name, reference)
    runs, skipped = load_runs(results, benchmark.name)
    columns = columns_for(benchmark, references, runs)
    by_key = {c.key: c for c in columns}
    keys = [c.key for c in columns]
    info = _task_info(benchmark)
    checks = check_reference_averages()
    footnotes: list[str] = list(spec.notes)

    ref_entries = [_reference_entry(row, keys) for row in references]
    for entry, row in zip(ref_entries, references, strict=True):
        for check in checks:
            if (not check.ok and check.model == entry.model and check.source_file in row.provenance.get("file", "")
                    and check.column in keys):
                note = f"published {check.column} {check.published:.4f}; the mean of its values is {check.recomputed:.4f}"
                entry.cell_notes.setdefault(check.column, []).append(note)

    spread_keys = [k for k in keys if not spec.spread_with_reference or not references
                   or any(k in r.extras for r in references)]
    # runs get every declared column's value (plots may draw columns the table does not show)
    hidden = [ColumnDef(c.key, c.label, c.description, metric=c.metric, tasks=c.tasks, statistic=c.statistic,
                        spread=c.spread) for c in spec.columns if c.key not in keys]
    run_entries = [_run_entry(run, [*columns, *hidden], info, spread_keys, spec.decimals) for run in runs]
    _disambiguate(run_entries)
    by_protocol: dict[str, list[Entry]] = {}
    for entry in run_entries:
        by_protocol.setdefault(entry.protocol, []).append(entry)
    for entry in ref_entries:
        matches = [r for r in by_protocol.get(entry.protocol, []) if _same_model(r, entry)]
        if not matches:
            by_protocol.setdefault(entry.protocol, []).append(entry)
        for match in matches:
            _merge_reference(match, entry, keys)

    groups = []
    run_protocols = [p for p in by_protocol if any(e.is_run for e in by_protocol[p])]
    for protocol in run_protocols + [p for p in by_protocol if p not in run_protocols]:
        entries = by_protocol[protocol]
        averages = _fill_aggregates(entries, columns, by_key)
        ranked = rank_entries(entries, next(c.key for c in columns if c.primary))
        mark_best(ranked, keys)
        groups.append(Group(protocol, ranked[0].protocol_detail, ranked, averages))

    comparisons = _compare_runs(groups, columns, info, n_boot=n_boot, seed=seed)
    for entry in (e for g in groups for e in g.entries if e.is_run):
        _confidence_intervals(entry, columns, info, groups, n_boot=n_boot, seed=seed)
    shown_files = {r.provenance.get("file", "").rsplit("/", 1)[-1] for r in references}
    for check in checks:
        if not check.ok and check.source_file in shown_files and check.column in keys:
            footnotes.append(check.describe())
    return Leaderboard(benchmark.name, spec.title, reference, columns, groups, comparisons, skipped, checks, runs,
                       footnotes, spec.decimals, benchmark)


def _reference_entry(row: ReferenceRow, keys: Sequence[str]) -> Entry:
    entry = Entry(model=row.model, model_key=row.model_key, origin="reference", protocol=row.protocol,
                  protocol_detail=row.protocol_detail, pooling=row.pooling, values=dict(row.values),
                  text=dict(row.text), extras={k: v for k, v in row.extras.items() if k in keys},
                  provenance=dict(row.provenance), params=row.params)
    if row.note:
        entry.notes.append(row.note)
    return entry


def _run_entry(run: Run, columns: Sequence[ColumnDef], info, spread_keys: Sequence[str], decimals: int) -> Entry:
    values: dict[str, float] = {}
    extras: dict[str, str] = {}
    for column in columns:
        if column.is_aggregate:
            continue
        units = statistics.column_units(run, column, info)
        values[column.key] = statistics.point_value(column, units)
        if column.key in spread_keys and len(units):
            extras[column.key] = statistics.spread_text(column, units, decimals)
    entry = Entry(model=run.model, model_key=normalise(run.model), origin="run", protocol=run.protocol,
                  protocol_detail=run.protocol_detail, pooling=run.pooling, values=values,
                  extras={k: v for k, v in extras.items() if v}, run=run, params=run.params)
    entry.provenance = {"source": "your run", "run_dir": str(run.path), "precision": run.precision,
                        "created": run.run_json.get("created", ""), "protocol": run.protocol}
    weights = (run.run_json.get("model") or {}).get("weights_fingerprint")
    for key, value in (("weights_fingerprint", weights), ("command", run.run_json.get("command"))):
        if value:
            entry.provenance[key] = str(value)
    versions = run.run_json.get("versions")
    if isinstance(versions, dict) and versions.get("pathbench"):
        entry.provenance["pathbench"] = str(versions["pathbench"])
    entry.notes.extend(run.notes)
    entry.degenerate = run.degenerate
    if entry.degenerate:
        entry.notes.append("degenerate embeddings (" + "; ".join(entry.degenerate) + "): its scores say nothing about "
                           "robustness or quality")
    return entry


def _disambiguate(entries: Sequence[Entry]) -> None:
    """Runs of one model under one protocol (other pooling, other folder) get distinct names."""
    by_name: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        by_name.setdefault((entry.protocol, entry.model), []).append(entry)
    for (_, model), same in by_name.items():
        if len(same) < 2:
            continue
        poolings = [e.pooling for e in same]
        for entry in same:
            tag = entry.pooling if len(set(poolings)) == len(poolings) else entry.run.path.name
            entry.model = f"{model} [{tag}]"
            entry.model_key = normalise(model)


def _same_model(run_entry: Entry, reference: Entry) -> bool:
    name = normalise(run_entry.run.model if run_entry.run is not None else run_entry.model)
    return name in (normalise(reference.model_key), normalise(reference.model))


def _merge_reference(run_entry: Entry, reference: Entry, keys: Sequence[str]) -> None:
    run_entry.origin = "run+reference"
    run_entry.published = {k: v for k, v in reference.values.items() if k in keys and np.isfinite(v)}
    run_entry.published_text = {k: v for k, v in reference.text.items() if k in keys}
    run_entry.provenance["reference"] = (f"{reference.provenance.get('source', '')} "
                                         f"{reference.provenance.get('table', '')} "
                                         f"({reference.provenance.get('date', '')}): {reference.model}").strip()
    if reference.pooling not in ("", "not stated") and reference.pooling != run_entry.pooling:
        run_entry.notes.append(f"published with pooling {reference.pooling}, this run used {run_entry.pooling}")
    for column, notes in reference.cell_notes.items():
        run_entry.cell_notes.setdefault(column, []).extend(f"reference: {n}" for n in notes)
    if not run_entry.params:
        run_entry.params = reference.params


def aggregate_parts(column: ColumnDef, entries: Sequence[Entry], columns: Sequence[ColumnDef]) -> tuple[str, ...]:
    """The columns an aggregate averages in one protocol group: its declared parts, else
    the per-task columns (minus the excluded ones) that the group's runs have, or, in a
    group without runs, that any row has."""
    if column.parts is not None:
        return tuple(column.parts)
    candidates = [c.key for c in columns if c.per_task and c.key not in column.exclude]
    holders = [e for e in entries if e.is_run] or list(entries)
    return tuple(k for k in candidates if any(np.isfinite(e.values.get(k, np.nan)) for e in holders))


def _fill_aggregates(entries: list[Entry], columns: Sequence[ColumnDef],
                     by_key: dict[str, ColumnDef]) -> dict[str, tuple[str, ...]]:
    """Compute every aggregate of every row of a group; a row missing a part gets none."""
    averages: dict[str, tuple[str, ...]] = {}
    for column in (c for c in columns if c.is_aggregate):
        parts = aggregate_parts(column, entries, columns)
        averages[column.key] = parts
        for entry in entries:
            have = [p for p in parts if np.isfinite(entry.values.get(p, np.nan))]
            published = entry.text.get(column.key)
            if not entry.is_run and published is not None and (column.parts is not None or _covers_all(entry, column,
                                                                                                    columns, parts)):
                continue  # the published average over the same columns stays as published
            if parts and len(have) == len(parts):
                entry.values[column.key] = float(np.mean([entry.values[p] for p in parts]))
                entry.text.pop(column.key, None)
                if not entry.is_run:
                    entry.computed.add(column.key)
            else:
                if entry.is_run and parts:
                    entry.notes.append(f"{column.label}: has {len(have)} of the {len(parts)} columns this protocol "
                                       f"averages ({', '.join(parts)}); not ranked")
                entry.values[column.key] = float("nan")
                entry.text.pop(column.key, None)
    return averages


def _covers_all(entry: Entry, column: ColumnDef, columns: Sequence[ColumnDef], parts: tuple[str, ...]) -> bool:
    """Whether ``parts`` are exactly the columns the row's published average covers."""
    own = tuple(c.key for c in columns if c.per_task and c.key not in column.exclude
                and np.isfinite(entry.values.get(c.key, np.nan)))
    return own == parts


# --------------------------------------------------------------------------------------
# Statistics between runs
# --------------------------------------------------------------------------------------
def _parts(column: ColumnDef, columns: Sequence[ColumnDef], group: Group) -> list[ColumnDef]:
    if not column.is_aggregate:
        return [column]
    by_key = {c.key: c for c in columns}
    return [by_key[p] for p in group.averages.get(column.key, ()) if p in by_key]


def _compare_runs(groups: Sequence[Group], columns: Sequence[ColumnDef], info, *, n_boot: int,
                  seed: int) -> list[Comparison]:
    comparisons: list[Comparison] = []
    for group in groups:
        runs = [e for e in group.entries if e.is_run]
        by_data: dict[str, list[Entry]] = {}
        for entry in runs:
            by_data.setdefault(entry.run.data_id, []).append(entry)
        for same_data in by_data.values():
            if len(same_data) < 2:
                continue
            for column in columns:
                parts = _parts(column, columns, group)
                candidates = [e for e in same_data if parts and np.isfinite(e.values.get(column.key, np.nan))]
                if len(candidates) < 2:
                    continue
                best = max(candidates, key=lambda e: (e.values[column.key], e.model))
                for other in candidates:
                    if other is best:
                        continue
                    comparison = statistics.compare(best.run, other.run, column, parts, info, protocol=group.protocol,
                                                    names=(best.model, other.model), n_boot=n_boot, seed=seed)
                    if comparison is not None:
                        comparison.alpha = ALPHA
                        comparisons.append(comparison)
                        other.significance[column.key] = comparison
    adjusted = stats.holm([c.pvalue for c in comparisons])
    for comparison, p in zip(comparisons, adjusted, strict=True):
        comparison.p_holm = float(p)
    return comparisons


def _confidence_intervals(entry: Entry, columns: Sequence[ColumnDef], info, groups: Sequence[Group], *, n_boot: int,
                          seed: int) -> None:
    group = next(g for g in groups if entry in g.entries)
    for column in columns:
        if not np.isfinite(entry.values.get(column.key, np.nan)):
            continue
        parts = _parts(column, columns, group)
        if not parts:
            continue
        dist = statistics.distribution(entry.run, parts, info, n_boot=n_boot, seed=seed)
        entry.ci[column.key] = stats.percentile_interval(dist, 0.95)
