"""Column values, spreads, bootstrap intervals and paired tests, from long-form rows.

A column summarises the unit values of one metric over some tasks (median, mean, or a
nested mean, e.g. genes within folds); an aggregate is the mean of columns. Units are
keyed ``<task>|<unit>``. The bootstrap resamples units within their task (and within
their outer group for nested means), with one shared resample for every part of an
aggregate, so an aggregate's interval keeps the parts' correlation. Two runs measured on
the same units get the same resamples, so their distributions subtract into a paired one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from pathbench import stats
from pathbench.leaderboard.runs import Run


@dataclasses.dataclass(frozen=True)
class ColumnDef:
    """A leaderboard column resolved for one table.

    ``kind`` is ``column`` (summarises units) or ``aggregate`` (mean of ``parts``).
    ``tasks`` holds task names or labels (None: every task). ``metric`` None means each
    task's own headline metric.
    """

    key: str
    label: str
    description: str = ""
    kind: str = "column"
    metric: str | None = None
    tasks: tuple[str, ...] | None = None
    statistic: str = "mean"
    spread: str | None = None
    parts: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    primary: bool = False
    per_task: bool = False

    @property
    def is_aggregate(self) -> bool:
        return self.kind == "aggregate"


# Resolves a run task name to (label, headline metric or None); supplied by the table builder.
TaskInfo = Callable[[str], tuple[str, str | None]]


def column_units(run: Run, column: ColumnDef, task_info: TaskInfo) -> pd.Series:
    """Finite unit values of ``column`` in ``run``: a float Series indexed by ``task|unit``."""
    cache_key = ("units", column.key, column.metric, column.tasks)
    if cache_key in run.boot_cache:
        return run.boot_cache[cache_key]
    rows = run.rows
    selected = []
    for task, frame in rows.groupby("task", sort=False):
        label, headline = task_info(str(task))
        if column.tasks is not None and str(task) not in column.tasks and label not in column.tasks:
            continue
        metric = column.metric or headline
        if metric is None:
            present = list(dict.fromkeys(frame["metric"]))
            metric = present[0] if len(present) == 1 else None
        if metric is None:
            continue
        part = frame[frame["metric"] == metric]
        part = part[np.isfinite(part["value"].to_numpy(np.float64))]
        selected.append(pd.Series(part["value"].to_numpy(np.float64),
                                  index=(str(task) + "|" + part["unit"].astype(str)).to_numpy()))
    series = pd.concat(selected) if selected else pd.Series([], dtype=np.float64)
    series = series[~series.index.duplicated()]
    run.boot_cache[cache_key] = series
    return series


def strata_of(keys: np.ndarray, nested: bool) -> np.ndarray:
    """Resampling strata of unit keys: the task, or task|outer for nested means."""
    parts = [k.split("|") for k in keys]
    if nested:
        return np.array(["|".join(p[:2]) for p in parts], dtype=object)
    return np.array([p[0] for p in parts], dtype=object)


def _statistic(column: ColumnDef, values: np.ndarray, index: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """(B,) statistic of ``column`` on resamples ``index`` (B, m) of ``values``."""
    if column.statistic == "median":
        return stats.resampled_medians(values, index)
    picked = values[index]
    if column.statistic == "mean":
        return picked.mean(axis=1)
    # nested mean: mean within each outer group (positions keep their group), then over groups
    groups = [np.flatnonzero(strata == label) for label in dict.fromkeys(strata.tolist())]
    return np.stack([picked[:, g].mean(axis=1) for g in groups], axis=1).mean(axis=1)


def point_value(column: ColumnDef, units: pd.Series) -> float:
    """The column's value on exactly these units (no resampling)."""
    if len(units) == 0:
        return float("nan")
    keys = units.index.to_numpy()
    strata = strata_of(keys, column.statistic == "nested-mean")
    values = units.to_numpy(np.float64)
    return float(_statistic(column, values, np.arange(len(values))[None, :], strata)[0])


def spread_text(column: ColumnDef, units: pd.Series, decimals: int) -> str:
    """The spread shown after a run's value: IQR, std over outer groups, or sample std."""
    values = units.to_numpy(np.float64)
    if column.spread is None or len(values) == 0:
        return ""
    if column.spread == "iqr":
        q75, q25 = np.quantile(values, [0.75, 0.25])
        return f"{q75 - q25:.{decimals}f}"
    if column.spread == "outer-std":
        strata = strata_of(units.index.to_numpy(), True)
        means = [values[strata == label].mean() for label in dict.fromkeys(strata.tolist())]
        return f"± {np.std(means, ddof=0):.{decimals}f}"
    if len(values) < 2:
        return ""
    return f"± {np.std(values, ddof=1):.{decimals}f}"


def distribution(run: Run, parts: Sequence[ColumnDef], task_info: TaskInfo, *, ids: np.ndarray | None = None,
                 n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) bootstrap distribution of the mean of ``parts`` (one part: the column itself).

    Units are the union of the parts' units (restricted to ``ids`` when given); every part
    is computed on the same resample of them, drawn within strata.
    """
    units = [column_units(run, p, task_info) for p in parts]
    keys = pd.Index(sorted(set().union(*[u.index for u in units])))
    if ids is not None:
        keys = keys.intersection(pd.Index(ids))
    digest = hashlib.sha1("\n".join(keys).encode()).hexdigest()
    cache_key = ("boot", tuple(p.key for p in parts), n_boot, seed, digest)
    if cache_key in run.boot_cache:
        return run.boot_cache[cache_key]
    nested = any(p.statistic == "nested-mean" for p in parts)
    all_strata = strata_of(keys.to_numpy(), nested)
    index = stats.resample_index(len(keys), n_boot, seed, all_strata) if len(keys) else None
    results = []
    for part, part_units in zip(parts, units, strict=True):
        positions = np.flatnonzero(keys.isin(part_units.index))
        if index is None or len(positions) == 0:
            results.append(np.full(n_boot, np.nan))
            continue
        values = np.zeros(len(keys))
        values[positions] = part_units.loc[keys[positions]].to_numpy(np.float64)
        strata = strata_of(keys[positions].to_numpy(), part.statistic == "nested-mean")
        results.append(_statistic(part, values, index[:, positions], strata))
    dist = np.mean(results, axis=0)
    run.boot_cache[cache_key] = dist
    return dist


def point_on(run: Run, parts: Sequence[ColumnDef], task_info: TaskInfo, ids: np.ndarray) -> float:
    """The mean of ``parts`` computed on the units ``ids`` only."""
    values = []
    for part in parts:
        units = column_units(run, part, task_info)
        values.append(point_value(part, units[units.index.isin(ids)]))
    return float(np.mean(values))


@dataclasses.dataclass
class Comparison:
    """A paired comparison of two runs on one column (``better`` is the column's best run)."""

    column: str
    protocol: str
    better: str
    other: str
    n_units: int
    difference: float
    ci_low: float
    ci_high: float
    test: str
    pvalue: float
    p_holm: float = float("nan")
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.p_holm) and self.p_holm < self.alpha)


def compare(best: Run, other: Run, column: ColumnDef, parts: Sequence[ColumnDef], task_info: TaskInfo, *,
            protocol: str, names: tuple[str, str], n_boot: int, seed: int) -> Comparison | None:
    """Paired comparison of ``best`` and ``other`` on the units both have.

    A column with per-unit values gets a Wilcoxon signed-rank test; an aggregate (a mean
    of summaries, with no per-unit value) a paired bootstrap test.
    """
    shared = None
    for part in parts:
        a, b = column_units(best, part, task_info), column_units(other, part, task_info)
        keys = a.index.intersection(b.index)
        shared = keys if shared is None else shared.union(keys)
    if shared is None or len(shared) == 0:
        return None
    ids = shared.to_numpy()
    low, high, boot_p = stats.paired_interval(
        distribution(best, parts, task_info, ids=ids, n_boot=n_boot, seed=seed),
        distribution(other, parts, task_info, ids=ids, n_boot=n_boot, seed=seed))
    difference = point_on(best, parts, task_info, ids) - point_on(other, parts, task_info, ids)
    if column.is_aggregate:
        test, pvalue = "paired bootstrap (units resampled within tasks)", boot_p
    else:
        a = column_units(best, column, task_info).loc[shared].to_numpy(np.float64)
        b = column_units(other, column, task_info).loc[shared].to_numpy(np.float64)
        result = stats.wilcoxon_signed_rank(a, b)
        test, pvalue = f"Wilcoxon signed-rank ({result.method})", result.pvalue
    return Comparison(column.key, protocol, names[0], names[1], len(ids), difference, low, high, test, pvalue)
