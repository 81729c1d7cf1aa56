"""Your runs: result folders read through the results schema (:mod:`pathbench.results`).

A run folder is ``<results>/<bench>/<model>/`` with a complete ``run.json`` and the
long-form ``results.csv``; everything the leaderboard shows is computed from those rows
by the benchmark's declared columns. Folders that are partial, corrupt or written by an
older pathbench are reported and skipped; result files are only ever read.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathbench.errors import PathbenchError
from pathbench.results import LONG_COLUMNS, RESULTS_FILE, RUN_FILE, read_csv_exact


@dataclasses.dataclass
class Run:
    """One complete run folder.

    Attributes:
        rows: the long-form results (task, unit, metric, value), values float64.
        run_json: the content of ``run.json``.
        boot_cache: bootstrap distributions already computed (per column and units).
    """

    bench: str
    model: str
    path: Path
    run_json: dict[str, Any]
    protocol: str
    protocol_detail: str
    data_id: str
    pooling: str
    precision: str
    rows: pd.DataFrame = dataclasses.field(repr=False)
    notes: list[str] = dataclasses.field(default_factory=list)
    boot_cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(self.rows["task"]))

    @property
    def params(self) -> float | None:
        """Parameter count recorded at evaluation time (None for precomputed embeddings)."""
        value = (self.run_json.get("model") or {}).get("params")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None

    @property
    def degenerate(self) -> list[str] | None:
        """Why the run's embedding diagnostics flag a degenerate model (None: not flagged)."""
        health = self.run_json.get("embedding_health") or {}
        if not (self.run_json.get("degenerate") or health.get("degenerate")):
            return None
        return list(health.get("reasons") or ["flagged by its embedding diagnostics"])

    @property
    def tiles_per_s(self) -> float | None:
        """Extraction throughput recorded at evaluation time, if any."""
        value = (self.run_json.get("model") or {}).get("tiles_per_s")
        return float(value) if isinstance(value, (int, float)) and value > 0 else None


@dataclasses.dataclass(frozen=True)
class SkippedRun:
    """A results folder that could not be used, and why (its files are left untouched)."""

    path: Path
    reason: str

    def describe(self) -> str:
        return f"skipped {self.path}: {self.reason}"


class RunReadError(PathbenchError):
    """A results folder that is partial or corrupt."""


def find_run_dirs(results: str | Path, bench: str) -> list[Path]:
    """Run folders for ``bench`` under ``results``: the results root
    (``<results>/<bench>/<model>/``), a benchmark folder or a single run folder."""
    results = Path(results)
    if not results.exists():
        return []
    if (results / bench).is_dir():
        return sorted(p for p in (results / bench).iterdir() if p.is_dir() and not p.name.startswith("."))
    if (results / RUN_FILE).exists() or (results / RESULTS_FILE).exists():
        return [results]
    if results.name == bench:
        return sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith("."))
    return []


def load_runs(results: str | Path, bench: str) -> tuple[list[Run], list[SkippedRun]]:
    """Read every run folder of ``bench`` under ``results``; partial or corrupt ones are
    returned as :class:`SkippedRun` with the reason (nothing is modified)."""
    runs: list[Run] = []
    skipped: list[SkippedRun] = []
    for path in find_run_dirs(results, bench):
        try:
            runs.append(read_run(path, bench))
        except RunReadError as error:
            skipped.append(SkippedRun(path, str(error)))
    return runs, skipped


def read_run(path: str | Path, bench: str) -> Run:
    """Read one run folder; raise :class:`RunReadError` saying what is missing or broken."""
    path = Path(path)
    run_json = _read_run_json(path)
    declared = run_json.get("bench")
    if isinstance(declared, str) and declared not in ("", bench):
        raise RunReadError(f"run.json says bench {declared!r}, not {bench}.")
    if run_json.get("complete") is not True:
        raise RunReadError("run.json does not mark the run as complete; rerun the same command to finish it.")
    if not (path / RESULTS_FILE).exists():
        raise RunReadError(f"{RESULTS_FILE} is missing: the folder was written by an older pathbench (or is "
                           "partial); rerun the evaluation to write the results schema.")
    try:
        rows = read_csv_exact(path / RESULTS_FILE, dtype={"task": str, "unit": str, "metric": str},
                              keep_default_na=False, na_values=[""])
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise RunReadError(f"{RESULTS_FILE} cannot be parsed ({error}).") from error
    missing = [c for c in LONG_COLUMNS if c not in rows.columns]
    if missing:
        raise RunReadError(f"{RESULTS_FILE} lacks the columns {missing} (found {list(rows.columns)}).")
    if rows.empty:
        raise RunReadError(f"{RESULTS_FILE} has no rows.")
    rows = rows.loc[:, list(LONG_COLUMNS)].copy()
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce").astype(np.float64)
    if np.isinf(rows["value"]).any():
        raise RunReadError(f"{RESULTS_FILE} holds infinite values.")
    if rows.duplicated(["task", "unit", "metric"]).any():
        raise RunReadError(f"{RESULTS_FILE} lists the same task, unit and metric twice.")
    if set(rows["bench"]) != {bench}:
        raise RunReadError(f"{RESULTS_FILE} holds rows of bench(es) {sorted(set(rows['bench']))}, not {bench}.")
    protocol = str(run_json.get("protocol") or "")
    if not protocol or set(rows["protocol"]) != {protocol}:
        raise RunReadError(f"{RESULTS_FILE} and run.json disagree on the protocol ({sorted(set(rows['protocol']))} "
                           f"vs {protocol!r}).")
    pooling = run_json.get("pooling")
    precision = (run_json.get("model") or {}).get("precision")
    return Run(bench=bench, model=str(run_json.get("model_name") or path.name), path=path, run_json=run_json,
               protocol=protocol, protocol_detail=str(run_json.get("protocol_detail") or protocol),
               data_id=str(run_json.get("data_id") or ""), pooling=str(pooling) if pooling else "from embeddings",
               precision=str(precision) if precision else "n/a", rows=rows)


def _read_run_json(path: Path) -> dict[str, Any]:
    file = path / RUN_FILE
    if not file.exists():
        present = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        raise RunReadError("run.json is missing, so the run did not finish (files present: "
                           f"{', '.join(present) or 'none'}); rerun the evaluation to complete it.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunReadError(f"run.json is not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise RunReadError(f"run.json should hold a JSON object, found {type(data).__name__}.")
    return data
