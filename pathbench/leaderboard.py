"""Leaderboards: your runs merged with published reference tables, ranked, with paired tests.

``pathbench leaderboard --bench plism|hest|eva`` reads the result folders written by
``pathbench evaluate`` (``<results>/<bench>/<model>/run.json`` plus the benchmark's CSV
files), adds the rows of a published reference table (``pathbench/leaderboards/*.csv``),
and prints or writes one table.

Rules the table follows:

- Every row carries the protocol that produced it. Rows are grouped by protocol; ranks and
  the best / second-best marks are computed inside a group only, so numbers produced under
  different protocols are never ranked against each other (:func:`rank_entries` refuses).
- A model that is both in your runs and in the reference table (same protocol) is one row:
  your value, then the published value and the difference.
- For models you ran on the same data, each column gets a paired comparison of every run
  with the column's best run (PLISM: Wilcoxon signed-rank over slide pairs; HEST: over
  (fold, gene) units; EVA: over runs), Holm-corrected across all comparisons shown, and
  bootstrap 95 % confidence intervals.
- A results folder that is partial (interrupted) or corrupt is reported and skipped; result
  files are only ever read.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import html
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathbench import stats
from pathbench.errors import PathbenchError

BENCHES = ("plism", "hest", "eva")
FORMATS = ("md", "csv", "latex", "html")
DEFAULT_REFERENCE = {"plism": "plismbench", "hest": "paper", "eva": "paper"}
DEFAULT_RESULTS = Path("pathbench-results")
AVERAGE_TOLERANCE = 0.0006
ALPHA = 0.05
N_BOOT = 2000
DECIMALS = {"plism": 3, "hest": 4, "eva": 3}

META_COLUMNS = ("bench", "model", "model_key", "size", "pooling", "source", "table", "protocol",
                "protocol_detail", "date", "note")
SOURCE_LABELS = {"paper": "seed paper", "plismbench": "plismbench"}

# PLISM pair groups and the columns built from them.
PLISM_GROUPS = ("all", "inter_scanner", "inter_staining", "both")
PLISM_METRICS = {"cosine": "cosine_similarity", "top1": "top_1_accuracy", "top3": "top_3_accuracy",
                 "top5": "top_5_accuracy", "top10": "top_10_accuracy"}
PLISM_SCORE_PARTS = ("cosine_all", "top10_inter_scanner", "top10_inter_staining", "top10_both")
PLISM_PAIR_COLUMNS = ("slide_a", "slide_b", "staining_a", "scanner_a", "staining_b", "scanner_b",
                      "cosine_similarity", "top_1_accuracy", "top_5_accuracy", "top_10_accuracy")
PLISM_OFFICIAL = {"plismbench-91x8139": (91, 8139), "plism-paper-21": (21, 16278)}

HEST_TASK_ORDER = ("IDC", "PRAD", "PAAD", "SKCM", "COAD", "READ", "CCRCC", "LUNG", "LYMPH_IDC")
EVA_TASK_ORDER = ("BACH", "CRC", "MHIST", "PCam", "Cam16", "PANDA", "CoNSeP", "MoNuSAC")
EVA_TASK_NAMES = {t.lower(): t for t in EVA_TASK_ORDER} | {"camelyon16": "Cam16", "camelyon16_small": "Cam16",
                                                          "panda_small": "PANDA", "monusac": "MoNuSAC"}
EVA_PATCH_AVERAGE = ("CRC", "MHIST", "PCam")
EVA_EXCLUDED_FROM_AVERAGE = ("BACH",)

MARK_BEST, MARK_SECOND = "best", "second"


# --------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Column:
    """One numeric column of a leaderboard.

    Attributes:
        key: column id (CSV header of the reference files, e.g. ``"top10_inter_scanner"``).
        label: header shown in tables.
        description: one sentence for the docs and the HTML report.
        primary: the column rows are ranked by.
        computed: for reference rows the value is computed from published values, not published.
    """

    key: str
    label: str
    description: str = ""
    primary: bool = False
    computed: bool = False


PLISM_COLUMN_INFO = {
    "cosine_all": ("Cosine (all)", "median over all slide pairs of the mean cosine similarity of matched tiles"),
    "top1_all": ("Top-1 (all)", "median over all slide pairs of the top-1 retrieval accuracy"),
    "top5_all": ("Top-5 (all)", "median over all slide pairs of the top-5 retrieval accuracy"),
    "top10_inter_scanner": ("Top-10 inter-scanner", "median top-10 accuracy over pairs with the same staining and different scanners"),
    "top10_inter_staining": ("Top-10 inter-staining", "median top-10 accuracy over pairs with the same scanner and different stainings"),
    "top10_both": ("Top-10 inter-scanner & inter-staining", "median top-10 accuracy over pairs where both staining and scanner differ"),
    "top1_inter_scanner": ("Top-1 inter-scanner", "median top-1 accuracy over inter-scanner pairs (the paper's Figure 4, x axis)"),
    "top1_inter_staining": ("Top-1 inter-staining", "median top-1 accuracy over inter-staining pairs (the paper's Figure 4, y axis)"),
    "leaderboard_score": ("Leaderboard score", "mean of cosine (all) and the three top-10 group medians (plismbench's score)"),
}
PLISM_DEFAULT_COLUMNS = ("cosine_all", "top1_all", "top5_all", "top10_inter_scanner", "top10_inter_staining",
                         "top10_both", "leaderboard_score")


def columns_for(bench: str, references: Sequence[Entry], runs: Sequence[Run]) -> list[Column]:
    """The table's columns: those of the reference table, else the benchmark's defaults,
    plus (HEST, EVA) every task your runs have; the last one is the ranking column."""
    ref_keys: list[str] = []
    for entry in references:
        for key in entry.values:
            if key not in ref_keys:
                ref_keys.append(key)
    if bench == "plism":
        keys = ref_keys or list(PLISM_DEFAULT_COLUMNS)
        primary = "leaderboard_score" if "leaderboard_score" in keys else ("top5_all" if "top5_all" in keys else keys[-1])
        return [Column(k, PLISM_COLUMN_INFO.get(k, (k, ""))[0], PLISM_COLUMN_INFO.get(k, (k, ""))[1],
                       primary=(k == primary)) for k in keys if not k.endswith("_iqr")]
    order = HEST_TASK_ORDER if bench == "hest" else EVA_TASK_ORDER
    tasks = [k for k in ref_keys if k not in ("average", "average_patch")]
    run_tasks = [t for run in runs for t in run.values if t not in ("average", "average_patch")]
    for task in sorted(set(run_tasks), key=lambda t: (order.index(t) if t in order else len(order), t)):
        if task not in tasks:
            tasks.append(task)
    if bench == "hest":
        cols = [Column(t, t, f"Pearson r on task {t}: mean over genes, then over folds") for t in tasks]
        cols.append(Column("average", "Average", "plain mean over the tasks of the row's task means", primary=True))
        return cols
    cols = [Column(t, t, f"eva metric on {t} (balanced accuracy for binary, macro accuracy for multiclass tasks; "
                         "Dice for segmentation), mean over runs") for t in tasks]
    if any("average" in e.values for e in references):
        cols.append(Column("average", "Average (published)", "the reference's published average over all its "
                                                              "tasks except BACH"))
    patch = [t for t in EVA_PATCH_AVERAGE if t in tasks] or [t for t in tasks if t not in EVA_EXCLUDED_FROM_AVERAGE]
    cols.append(Column("average_patch", f"Avg. {', '.join(patch)}",
                       f"mean over {', '.join(patch)} (the patch tasks pathbench runs, BACH excluded as eva does)",
                       primary=True, computed=True))
    return cols


# --------------------------------------------------------------------------------------
# Reference tables
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Entry:
    """One row of a leaderboard: a reference row, a run, or a run merged with its reference row.

    ``values`` maps a column key to its value (float, NaN when absent); ``text`` holds the
    exact published strings of reference values; ``published`` (merged rows) the reference
    values beside yours.
    """

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

    @property
    def is_run(self) -> bool:
        return self.run is not None


@dataclasses.dataclass(frozen=True)
class AverageCheck:
    """A published average recomputed from the same row's published values."""

    source_file: str
    model: str
    column: str
    published: float
    recomputed: float
    parts: tuple[str, ...]

    @property
    def difference(self) -> float:
        return self.published - self.recomputed

    @property
    def ok(self) -> bool:
        return abs(self.difference) <= AVERAGE_TOLERANCE

    def describe(self) -> str:
        return (f"{self.source_file}: {self.model} publishes {self.column} = {self.published:.4f}, but the mean of "
                f"its {len(self.parts)} values ({', '.join(self.parts)}) is {self.recomputed:.4f} "
                f"(difference {self.difference:+.4f}); the published number is kept.")


def reference_files() -> list[Path]:
    """The CSV files shipped in ``pathbench/leaderboards/``."""
    folder = resources.files("pathbench") / "leaderboards"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".csv"))


def read_reference_table(path: str | Path) -> pd.DataFrame:
    """Read one reference CSV as strings (published text is kept exactly) and validate it."""
    path = Path(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("bench", "model", "model_key", "source", "table", "protocol", "date") if c not in table]
    if missing:
        raise PathbenchError(f"reference table {path} lacks the columns {missing}; every reference row needs "
                             "bench, model, model_key, source, table, protocol and date (see docs/leaderboards.md).")
    for column in value_columns(table):
        bad = [v for v in table[column] if v not in ("", "-") and _to_float(v) is None]
        if bad:
            raise PathbenchError(f"reference table {path}: column {column} holds non-numeric values {bad[:3]}.")
    return table


def value_columns(table: pd.DataFrame) -> list[str]:
    """Numeric columns of a reference table (everything but provenance and ``*_iqr`` extras)."""
    return [c for c in table.columns if c not in META_COLUMNS and not c.endswith("_iqr")]


def available_references(bench: str) -> list[str]:
    """Reference sources (``paper``, ``plismbench``, ...) shipped for ``bench``."""
    sources: list[str] = []
    for path in reference_files():
        table = read_reference_table(path)
        for source in table.loc[table["bench"] == bench, "source"]:
            if source not in sources:
                sources.append(source)
    return sources


def load_references(bench: str, source: str) -> list[Entry]:
    """Reference rows of ``bench`` from ``source``, exactly as published."""
    if source == "none":
        return []
    entries: list[Entry] = []
    for path in reference_files():
        table = read_reference_table(path)
        rows = table[(table["bench"] == bench) & (table["source"] == source)]
        for _, row in rows.iterrows():
            entries.append(_reference_entry(bench, path, row, value_columns(table)))
    if not entries:
        known = available_references(bench)
        raise PathbenchError(f"no reference table {source!r} for --bench {bench}; available: "
                             f"{', '.join(known + ['none'])}.")
    return entries


def _reference_entry(bench: str, path: Path, row: pd.Series, columns: list[str]) -> Entry:
    values: dict[str, float] = {}
    text: dict[str, str] = {}
    extras: dict[str, str] = {}
    for column in columns:
        raw = row[column].strip()
        value = _to_float(raw)
        values[column] = float("nan") if value is None else value
        if value is not None:
            text[column] = raw
        if f"{column}_iqr" in row and row[f"{column}_iqr"].strip():
            extras[column] = row[f"{column}_iqr"].strip()
    if bench == "eva":
        parts = [values.get(t, float("nan")) for t in EVA_PATCH_AVERAGE]
        values["average_patch"] = float(np.mean(parts)) if all(np.isfinite(parts)) else float("nan")
    provenance = {k: row[k] for k in ("source", "table", "date", "protocol", "model_key", "size", "note")
                  if k in row and row[k]}
    provenance["file"] = f"pathbench/leaderboards/{path.name}"
    entry = Entry(model=row["model"], model_key=row["model_key"] or _normalise(row["model"]), origin="reference",
                  protocol=row["protocol"], protocol_detail=row.get("protocol_detail", "") or row["protocol"],
                  pooling=row.get("pooling", "") or "not stated", values=values, text=text, extras=extras,
                  provenance=provenance, params=_parse_size(row.get("size", "")))
    if row.get("note"):
        entry.notes.append(row["note"])
    return entry


def average_rule(bench: str, table_columns: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """How a source defines its averages: {average column: the columns it averages}."""
    if bench == "plism":
        if "leaderboard_score" in table_columns and all(c in table_columns for c in PLISM_SCORE_PARTS):
            return {"leaderboard_score": PLISM_SCORE_PARTS}
        return {}
    if "average" not in table_columns:
        return {}
    parts = tuple(c for c in table_columns if c not in ("average", "average_patch"))
    if bench == "eva":
        parts = tuple(c for c in parts if c not in EVA_EXCLUDED_FROM_AVERAGE)
    return {"average": parts}


def check_reference_averages(paths: Iterable[str | Path] | None = None) -> list[AverageCheck]:
    """Recompute every published average from the same row's published values.

    The HEST average is the mean over its tasks, the EVA average the mean over its tasks
    without BACH, the PLISM leaderboard score the mean of cosine (all) and the three top-10
    group medians. Returns one :class:`AverageCheck` per (row, average column); ``ok`` is
    False where the published number is off by more than ``AVERAGE_TOLERANCE``.
    """
    checks: list[AverageCheck] = []
    for path in paths if paths is not None else reference_files():
        path = Path(path)
        table = read_reference_table(path)
        for bench, rows in table.groupby("bench", sort=False):
            rule = average_rule(str(bench), value_columns(table))
            for column, parts in rule.items():
                for _, row in rows.iterrows():
                    published = _to_float(row[column])
                    values = [_to_float(row[p]) for p in parts]
                    if published is None or any(v is None for v in values):
                        continue
                    checks.append(AverageCheck(path.name, row["model"], column, published,
                                               float(np.mean(values)), tuple(parts)))
    return checks


# --------------------------------------------------------------------------------------
# Your runs
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """One results folder written by ``pathbench evaluate``.

    Attributes:
        values: column key -> value (every column the benchmark defines, not only the shown ones).
        units: column key -> per-unit values (pd.Series indexed by unit id) for paired tests.
        strata: column key -> (n_units,) labels of the nested groups the column averages over.
        extras: column key -> text shown after the value (e.g. the IQR).
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
    values: dict[str, float]
    units: dict[str, pd.Series] = dataclasses.field(default_factory=dict)
    extras: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    tasks: tuple[str, ...] = ()
    tiles_per_s: float | None = None
    pairs: pd.DataFrame | None = dataclasses.field(default=None, repr=False)  # PLISM: pairs.csv with pair ids
    boot_cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def params(self) -> float | None:
        """Parameter count: the model zoo's count for the model, else ``params`` from run.json
        (computed on first use: building the architecture on the meta device imports torch)."""
        if not hasattr(self, "_params"):
            self._params = _zoo_params(self.model)
            if self._params is None:
                value = _find_key(self.run_json, "params")
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    self._params = float(value)
        return self._params


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
    """Run folders for ``bench`` under ``results``.

    Accepts the results root (``<results>/<bench>/<model>/``), a benchmark folder
    (``<results>/<bench>/``) or a single run folder.
    """
    results = Path(results)
    if not results.exists():
        return []
    candidates = []
    if (results / bench).is_dir():
        candidates = sorted(p for p in (results / bench).iterdir() if p.is_dir() and not p.name.startswith("."))
    elif (results / "run.json").exists() or _looks_like_run(results, bench):
        candidates = [results]
    elif results.name == bench:
        candidates = sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith("."))
    return candidates


def _looks_like_run(path: Path, bench: str) -> bool:
    markers = {"plism": "pairs.csv", "hest": "folds.csv", "eva": "runs.csv"}
    return (path / markers[bench]).exists()


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
    declared = _setting(run_json, "bench", "benchmark")
    if isinstance(declared, str) and declared.split(":")[0] not in ("", bench):
        raise RunReadError(f"run.json says bench {declared!r}, not {bench}.")
    if run_json.get("complete") is False:
        raise RunReadError("run.json marks the run as incomplete; rerun the same command to finish it.")
    reader = {"plism": _read_plism, "hest": _read_hest, "eva": _read_eva}[bench]
    try:
        run = reader(path, run_json)
    except RunReadError:
        raise
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as error:
        raise RunReadError(f"unreadable result files ({type(error).__name__}: {error}).") from error
    run.tiles_per_s = _tiles_per_s(run.run_json)
    return run


def _read_run_json(path: Path) -> dict[str, Any]:
    file = path / "run.json"
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


def _read_csv(path: Path, required: Sequence[str], what: str) -> pd.DataFrame:
    if not path.exists():
        raise RunReadError(f"{path.name} is missing ({what}); the run is partial.")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RunReadError(f"{path.name} cannot be parsed ({error}).") from error
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise RunReadError(f"{path.name} lacks the columns {missing} (found {list(frame.columns)}).")
    if frame.empty:
        raise RunReadError(f"{path.name} has no rows.")
    return frame


def _model_name(path: Path, run_json: dict[str, Any]) -> str:
    model = run_json.get("model")
    if isinstance(model, dict) and model.get("name"):
        return str(model["name"])
    if isinstance(model, str) and model:
        return model
    for key in ("model_name", "model_label"):
        value = _find_key(run_json, key)
        if isinstance(value, str) and value:
            return value
    return path.name


def _setting(run_json: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = _find_key(run_json, key)
        if value is not None:
            return value
    return None


def _data_kind(run_json: dict[str, Any]) -> str:
    """``synthetic`` when the run used pathbench's simulated data, else ``real``."""
    for key in ("data", "data_source", "dataset"):
        value = _find_key(run_json, key)
        if isinstance(value, str) and "synthetic" in value.lower():
            return "synthetic"
        if isinstance(value, dict) and "synthetic" in json.dumps(value).lower():
            return "synthetic"
    command = run_json.get("command")
    if isinstance(command, str) and re.search(r"--data[ =]synthetic", command):
        return "synthetic"
    return "real"


def _data_id(run_json: dict[str, Any]) -> str:
    """What identifies the evaluated data: an explicit fingerprint, else the recorded data
    source and tile subset (paired tests only compare runs with the same data id)."""
    value = _setting(run_json, "data_fingerprint", "dataset_fingerprint")
    if value:
        return str(value)
    # tasks are left out: units (task|fold|gene, pairs, runs) are matched by id anyway
    parts = {key: _setting(run_json, key) for key in ("data", "tile_subset")}
    if isinstance(parts["data"], dict):
        parts["data"] = {k: v for k, v in parts["data"].items() if k != "path"}
    return json.dumps(parts, sort_keys=True, default=str)


def _pooling_precision(run_json: dict[str, Any]) -> tuple[str, str]:
    pooling = _setting(run_json, "pooling")
    precision = _setting(run_json, "precision")
    return (str(pooling) if pooling else "from embeddings"), (str(precision) if precision else "n/a")


def _read_plism(path: Path, run_json: dict[str, Any]) -> Run:
    pairs = _read_csv(path / "pairs.csv", PLISM_PAIR_COLUMNS, "one row per slide pair")
    numeric = [c for c in pairs.columns if c in PLISM_METRICS.values()]
    for column in numeric:
        pairs[column] = pd.to_numeric(pairs[column], errors="coerce")
    if pairs[numeric].isna().any().any() or not np.isfinite(pairs[numeric].to_numpy(dtype=float)).all():
        raise RunReadError("pairs.csv holds missing or non-finite metric values.")
    if not (path / "summary.csv").exists():
        raise RunReadError(f"summary.csv is missing; pairs.csv has {len(pairs)} pairs, so the run stopped before "
                           "it finished (rerun the same command to resume it).")
    slides = sorted(set(pairs["slide_a"]) | set(pairs["slide_b"]))
    expected = len(slides) * (len(slides) - 1) // 2
    declared = _setting(run_json, "slides")
    if isinstance(declared, list) and len(declared) >= 2:
        expected = len(declared) * (len(declared) - 1) // 2
    if len(pairs) < expected:
        raise RunReadError(f"pairs.csv has {len(pairs)} of the {expected} slide pairs; the run is partial.")
    if pairs.duplicated(["slide_a", "slide_b"]).any():
        raise RunReadError("pairs.csv lists the same slide pair twice.")

    pairs = pairs.assign(pair=[_pair_id(a, b) for a, b in zip(pairs["slide_a"], pairs["slide_b"], strict=True)])
    group = plism_pair_groups(pairs)
    values: dict[str, float] = {}
    units: dict[str, pd.Series] = {}
    extras: dict[str, str] = {}
    for short, metric in PLISM_METRICS.items():
        if metric not in pairs:
            continue
        for g in PLISM_GROUPS:
            mask = np.ones(len(pairs), bool) if g == "all" else (group == g)
            key = f"{short}_{g}"
            series = pd.Series(pairs.loc[mask, metric].to_numpy(float), index=pairs.loc[mask, "pair"].to_numpy())
            if len(series) == 0:
                values[key] = float("nan")
                continue
            values[key] = float(np.median(series.to_numpy()))
            q75, q25 = np.quantile(series.to_numpy(), [0.75, 0.25])
            extras[key] = f"{q75 - q25:.3f}"
            units[key] = series
    parts = [values.get(p, float("nan")) for p in PLISM_SCORE_PARTS]
    computed_score = float(np.mean(parts)) if np.all(np.isfinite(parts)) else float("nan")
    notes: list[str] = []
    published_score = _setting(run_json, "leaderboard_score")
    if isinstance(published_score, (int, float)) and math.isfinite(published_score):
        values["leaderboard_score"] = float(published_score)
        if math.isfinite(computed_score) and abs(published_score - computed_score) > 1e-6:
            notes.append(f"run.json records leaderboard score {published_score:.4f}, pairs.csv gives {computed_score:.4f}")
    else:
        values["leaderboard_score"] = computed_score
    # the score has no per-pair value; its "units" are the pairs (positions), resampled within groups
    units["leaderboard_score"] = pd.Series(np.arange(len(pairs), dtype=float), index=pairs["pair"].to_numpy())
    n_tiles = _plism_n_tiles(run_json)
    protocol, detail = _plism_protocol(run_json, len(slides), n_tiles)
    pooling, precision = _pooling_precision(run_json)
    run = Run(bench="plism", model=_model_name(path, run_json), path=path, run_json=run_json, protocol=protocol,
              protocol_detail=detail, data_id=_data_id(run_json), pooling=pooling, precision=precision,
              values=values, units=units, extras=extras, notes=notes, pairs=pairs)
    return run


def plism_pair_groups(pairs: pd.DataFrame) -> np.ndarray:
    """Pair group of each row of a ``pairs.csv`` frame: ``inter_scanner`` (same staining,
    different scanner), ``inter_staining`` (same scanner, different staining), ``both``,
    or ``same`` (identical conditions, not in any group but ``all``)."""
    same_stain = pairs["staining_a"].astype(str).to_numpy() == pairs["staining_b"].astype(str).to_numpy()
    same_scan = pairs["scanner_a"].astype(str).to_numpy() == pairs["scanner_b"].astype(str).to_numpy()
    return np.where(same_stain & ~same_scan, "inter_scanner",
                    np.where(~same_stain & same_scan, "inter_staining",
                             np.where(~same_stain & ~same_scan, "both", "same")))


def _plism_n_tiles(run_json: dict[str, Any]) -> int | None:
    for key in ("n_tiles_per_slide", "n_tiles", "tiles", "n_tiles_used", "tile_subset"):
        value = _find_key(run_json, key)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            return int(value)
        if isinstance(value, str) and value.isdigit():
            return int(value)
        if isinstance(value, dict):
            for sub in ("n_tiles", "n", "size", "count"):
                if isinstance(value.get(sub), (int, float)) and not isinstance(value.get(sub), bool):
                    return int(value[sub])
    return None


def _plism_protocol(run_json: dict[str, Any], n_slides: int, n_tiles: int | None) -> tuple[str, str]:
    kind = _data_kind(run_json)
    tiles = f"{n_tiles:,} tiles" if n_tiles else "tiles not recorded"
    if kind == "real":
        for key, (slides, tiles_official) in PLISM_OFFICIAL.items():
            if n_slides == slides and n_tiles == tiles_official:
                detail = ("plismbench: all 91 slides (4,095 pairs), official 8,139-tile subset; medians over pairs"
                          if slides == 91 else
                          "seed paper setting: 21 slides (210 pairs), all 16,278 tiles; median (IQR) over all pairs")
                return key, detail
        return (f"plism-{n_slides}x{n_tiles or 'na'}",
                f"PLISM, {n_slides} slides ({n_slides * (n_slides - 1) // 2:,} pairs), {tiles}")
    return (f"plism-synthetic-{n_slides}x{n_tiles or 'na'}",
            f"synthetic PLISM simulation (not PLISM): {n_slides} slides ({n_slides * (n_slides - 1) // 2:,} pairs), {tiles}")


def _pair_id(a: Any, b: Any) -> str:
    a, b = str(a), str(b)
    return f"{a}|{b}" if a <= b else f"{b}|{a}"


def _read_hest(path: Path, run_json: dict[str, Any]) -> Run:
    summary = _read_csv(path / "summary.csv", ("task", "pearson_mean"), "one row per task plus the average")
    summary["pearson_mean"] = pd.to_numeric(summary["pearson_mean"], errors="coerce")
    tasks_frame = summary[summary["task"].astype(str) != "average"]
    if tasks_frame.empty:
        raise RunReadError("summary.csv holds no task row.")
    if tasks_frame["pearson_mean"].isna().any():
        bad = list(tasks_frame.loc[tasks_frame["pearson_mean"].isna(), "task"])
        raise RunReadError(f"summary.csv has no Pearson value for tasks {bad}.")
    values = {str(t): float(v) for t, v in zip(tasks_frame["task"], tasks_frame["pearson_mean"], strict=True)}
    tasks = tuple(values)
    values["average"] = float(np.mean(list(values.values())))
    extras: dict[str, str] = {}
    if "pearson_std" in summary:
        for t, s in zip(summary["task"], pd.to_numeric(summary["pearson_std"], errors="coerce"), strict=True):
            if str(t) in tasks and np.isfinite(s):
                extras[str(t)] = f"± {s:.4f}"
    units: dict[str, pd.Series] = {}
    genes_file, folds_file = path / "genes.csv", path / "folds.csv"
    if genes_file.exists():
        genes = _read_csv(genes_file, ("task", "fold", "gene", "pearson"), "one row per task, fold and gene")
        genes["pearson"] = pd.to_numeric(genes["pearson"], errors="coerce")
        if "excluded" in genes:
            excluded = genes["excluded"].fillna("").astype(str).str.strip().ne("") & genes["excluded"].astype(str).ne("False")
            genes.loc[excluded, "pearson"] = np.nan
        genes = genes[np.isfinite(genes["pearson"])]
        unit_ids = genes["task"].astype(str) + "|" + genes["fold"].astype(str) + "|" + genes["gene"].astype(str)
        for task in tasks:
            mask = (genes["task"].astype(str) == task).to_numpy()
            units[task] = pd.Series(genes.loc[mask, "pearson"].to_numpy(float), index=unit_ids[mask].to_numpy())
        units["average"] = pd.Series(genes["pearson"].to_numpy(float), index=unit_ids.to_numpy())
    elif folds_file.exists():
        folds = _read_csv(folds_file, ("task", "fold", "pearson_mean"), "one row per task and fold")
        unit_ids = folds["task"].astype(str) + "|" + folds["fold"].astype(str)
        for task in tasks:
            mask = (folds["task"].astype(str) == task).to_numpy()
            units[task] = pd.Series(pd.to_numeric(folds.loc[mask, "pearson_mean"]).to_numpy(float),
                                    index=unit_ids[mask].to_numpy())
        units["average"] = pd.Series(pd.to_numeric(folds["pearson_mean"]).to_numpy(float), index=unit_ids.to_numpy())
    else:
        raise RunReadError("neither genes.csv nor folds.csv is present; the run is partial.")
    head = _setting(run_json, "head") or "ridge-pca"
    kind = _data_kind(run_json)
    if kind == "real" and head == "ridge-pca":
        protocol = "hest-ridge-pca256"
        detail = ("HEST-Benchmark default: log1p targets, 50 genes, StandardScaler + PCA(256) + ridge, "
                  "Pearson per gene, mean over folds")
    else:
        protocol = f"hest-{kind}-{head}"
        detail = (f"{'synthetic HEST (not HEST data)' if kind == 'synthetic' else 'HEST data'}, head {head}, "
                  "Pearson per gene, mean over folds")
    pooling, precision = _pooling_precision(run_json)
    return Run(bench="hest", model=_model_name(path, run_json), path=path, run_json=run_json, protocol=protocol,
               protocol_detail=detail, data_id=_data_id(run_json), pooling=pooling, precision=precision,
               values=values, units=units, extras=extras, tasks=tasks)


def _read_eva(path: Path, run_json: dict[str, Any]) -> Run:
    summary = _read_csv(path / "summary.csv", ("task", "mean"), "one row per task")
    summary["mean"] = pd.to_numeric(summary["mean"], errors="coerce")
    if summary["mean"].isna().any():
        raise RunReadError("summary.csv has tasks without a value.")
    values: dict[str, float] = {}
    extras: dict[str, str] = {}
    for _, row in summary.iterrows():
        task = _eva_task(row["task"])
        values[task] = float(row["mean"])
        std = _to_float(str(row.get("std", "")))
        if std is not None and math.isfinite(std):
            extras[task] = f"± {std:.3f}"
    tasks = tuple(values)
    runs = _read_csv(path / "runs.csv", ("task", "run", "value"), "one row per task and run")
    runs["value"] = pd.to_numeric(runs["value"], errors="coerce")
    runs["task"] = [_eva_task(t) for t in runs["task"]]
    if "split" in runs:
        # eva reports test where a split exists, else validation.
        preferred = runs.groupby("task")["split"].transform(
            lambda s: "test" if (s.astype(str) == "test").any() else s.astype(str).iloc[0])
        runs = runs[runs["split"].astype(str) == preferred]
    units: dict[str, pd.Series] = {}
    for task in tasks:
        frame = runs[runs["task"] == task]
        if frame.empty:
            raise RunReadError(f"runs.csv has no run for task {task} listed in summary.csv.")
        units[task] = pd.Series(frame["value"].to_numpy(float), index=frame["run"].astype(str).to_numpy())
    # the ranking average: CRC, MHIST and PCam (the reference tables' patch tasks) when present
    average_tasks = ([t for t in EVA_PATCH_AVERAGE if t in tasks]
                     or [t for t in tasks if t not in EVA_EXCLUDED_FROM_AVERAGE])
    if average_tasks:
        per_run = pd.concat([units[t].rename(t) for t in average_tasks], axis=1)
        complete = per_run.dropna()
        units["average_patch"] = complete.mean(axis=1)
        values["average_patch"] = float(np.mean([values[t] for t in average_tasks]))
    kind = _data_kind(run_json)
    max_steps = _setting(run_json, "max_steps")
    n_runs = _setting(run_json, "runs", "n_runs")
    settings = []
    if isinstance(max_steps, int) and max_steps != 12500:
        settings.append(f"max {max_steps} steps")
    if isinstance(n_runs, int) and not isinstance(n_runs, bool) and n_runs != 5:
        settings.append(f"{n_runs} runs")
    batch = _setting(run_json, "probe_batch_size", "batch_size")
    if _find_key(run_json, "eva_defaults") is False and isinstance(batch, int) and batch != 256:
        settings.append(f"batch {batch}")
    if _find_key(run_json, "eva_defaults") is False and not settings:
        settings.append("non-default probe")
    if kind == "real" and not settings:
        protocol, detail = "eva-2024", "eva linear probe (eva 0.4 offline protocol), CLS embeddings by default"
    else:
        suffix = "-".join(s.replace(" ", "") for s in settings)
        protocol = f"eva-{kind}" + (f"-{suffix}" if suffix else "")
        detail = (f"{'synthetic eva data (not the eva datasets)' if kind == 'synthetic' else 'eva data'}, "
                  f"linear probe{' (' + ', '.join(settings) + ')' if settings else ''}")
    pooling, precision = _pooling_precision(run_json)
    return Run(bench="eva", model=_model_name(path, run_json), path=path, run_json=run_json, protocol=protocol,
               protocol_detail=detail, data_id=_data_id(run_json), pooling=pooling, precision=precision,
               values=values, units=units, extras=extras, tasks=tasks)


def _eva_task(task: Any) -> str:
    name = str(task).strip()
    return EVA_TASK_NAMES.get(name.lower(), name)


def _tiles_per_s(run_json: dict[str, Any]) -> float | None:
    """Measured extraction throughput, where the run recorded one."""
    for key in ("tiles_per_s", "tiles_per_second", "throughput_tiles_per_s", "images_per_s"):
        value = _find_key(run_json, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


_PARAMS_CACHE: dict[str, float | None] = {}


def _zoo_params(name: str) -> float | None:
    if name in _PARAMS_CACHE:
        return _PARAMS_CACHE[name]
    params = None
    try:
        from pathbench.extractors import count_parameters, get_spec

        params = float(count_parameters(get_spec(name)))
    except Exception:  # an unknown or unbuildable model simply has no zoo count
        params = None
    _PARAMS_CACHE[name] = params
    return params


# --------------------------------------------------------------------------------------
# Building the leaderboard
# --------------------------------------------------------------------------------------
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

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.p_holm) and self.p_holm < ALPHA)


@dataclasses.dataclass
class Group:
    """Rows produced by one protocol: ranked and marked among themselves only."""

    protocol: str
    protocol_detail: str
    entries: list[Entry]


@dataclasses.dataclass
class Leaderboard:
    bench: str
    reference: str
    columns: list[Column]
    groups: list[Group]
    comparisons: list[Comparison]
    skipped: list[SkippedRun]
    checks: list[AverageCheck]
    runs: list[Run]
    footnotes: list[str]

    @property
    def entries(self) -> list[Entry]:
        return [e for g in self.groups for e in g.entries]

    @property
    def primary(self) -> Column:
        return next(c for c in self.columns if c.primary)


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

    A column with fewer than two values gets no mark (a lone row is not "best" of anything).
    """
    for column in columns:
        present = [e.values.get(column, float("nan")) for e in entries]
        present = [v for v in present if np.isfinite(v)]
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


def build_leaderboard(bench: str, results: str | Path = DEFAULT_RESULTS, reference: str | None = None,
                      n_boot: int = N_BOOT, seed: int = 0) -> Leaderboard:
    """Merge runs with a reference table, group by protocol, rank, mark, and test.

    Args:
        bench: ``plism``, ``hest`` or ``eva``.
        results: results root (``<results>/<bench>/<model>/``), a benchmark folder or a run folder.
        reference: reference source (``paper``, ``plismbench``, ...) or ``none``; default per bench.
    """
    if bench not in BENCHES:
        raise PathbenchError(f"unknown benchmark {bench!r}: expected one of {', '.join(BENCHES)}.")
    reference = reference or DEFAULT_REFERENCE[bench]
    references = load_references(bench, reference)
    runs, skipped = load_runs(results, bench)
    columns = columns_for(bench, references, runs)
    keys = [c.key for c in columns]
    primary = next(c.key for c in columns if c.primary)
    checks = check_reference_averages()
    footnotes: list[str] = []

    for entry in references:
        for check in checks:
            if (not check.ok and check.model == entry.model and check.source_file in entry.provenance.get("file", "")
                    and check.column in keys):
                note = f"published {check.column} {check.published:.4f}; the mean of its values is {check.recomputed:.4f}"
                entry.cell_notes.setdefault(check.column, []).append(note)

    # A run shows its spread (IQR, std over folds or runs) where the reference shows one, or
    # everywhere when there is no reference.
    shown_extras = [k for k in keys if bench != "plism" or not references or any(k in e.extras for e in references)]
    run_entries = [_run_entry(run, keys, shown_extras) for run in runs]
    _disambiguate(run_entries)
    by_protocol: dict[str, list[Entry]] = {}
    for entry in run_entries:
        by_protocol.setdefault(entry.protocol, []).append(entry)
    for entry in references:
        matches = [r for r in by_protocol.get(entry.protocol, []) if _same_model(r, entry)]
        if not matches:
            by_protocol.setdefault(entry.protocol, []).append(entry)
            continue
        for match in matches:
            _merge_reference(match, entry, keys)

    groups = []
    run_protocols = [p for p in by_protocol if any(e.is_run for e in by_protocol[p])]
    order = run_protocols + [p for p in by_protocol if p not in run_protocols]
    for protocol in order:
        entries = by_protocol[protocol]
        _restrict_averages(bench, entries, keys)
        ranked = rank_entries(entries, primary)
        mark_best(ranked, keys)
        groups.append(Group(protocol, ranked[0].protocol_detail, ranked))

    comparisons = _compare_runs(bench, groups, keys, n_boot=n_boot, seed=seed)
    reference_files_shown = {Path(e.provenance.get("file", "")).name for e in references}
    for check in checks:
        if not check.ok and check.source_file in reference_files_shown and check.column in keys:
            footnotes.append(check.describe())
    if bench == "eva" and references:
        footnotes.append("The published average covers the slide-level and segmentation tasks too; pathbench runs the "
                         "patch tasks, so rows are ranked by the mean over CRC, MHIST and PCam, computed for the "
                         "reference rows from their published values.")
    return Leaderboard(bench, reference, columns, groups, comparisons, skipped, checks, runs, footnotes)


def _run_entry(run: Run, keys: Sequence[str], shown_extras: Sequence[str]) -> Entry:
    values = {k: run.values.get(k, float("nan")) for k in keys}
    entry = Entry(model=run.model, model_key=_normalise(run.model), origin="run", protocol=run.protocol,
                  protocol_detail=run.protocol_detail, pooling=run.pooling,
                  values=values, extras={k: v for k, v in run.extras.items() if k in shown_extras}, run=run)
    entry.provenance = {"source": "your run", "run_dir": str(run.path), "precision": run.precision,
                        "created": _find_key(run.run_json, "created") or "", "protocol": run.protocol}
    for key in ("weights_fingerprint", "command"):
        value = _find_key(run.run_json, key)
        if value:
            entry.provenance[key] = str(value)
    versions = _find_key(run.run_json, "versions")
    if isinstance(versions, dict) and versions.get("pathbench"):
        entry.provenance["pathbench"] = str(versions["pathbench"])
    entry.notes.extend(run.notes)
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
            entry.model_key = _normalise(model)


def _same_model(run_entry: Entry, reference: Entry) -> bool:
    name = _normalise(run_entry.run.model if run_entry.run is not None else run_entry.model)
    return name in (_normalise(reference.model_key), _normalise(reference.model))


def _merge_reference(run_entry: Entry, reference: Entry, keys: Sequence[str]) -> None:
    run_entry.origin = "run+reference"
    run_entry.published = {k: v for k, v in reference.values.items() if k in keys and np.isfinite(v)}
    run_entry.published_text = {k: v for k, v in reference.text.items() if k in keys}
    run_entry.provenance["reference"] = (f"{reference.provenance.get('source', '')} {reference.provenance.get('table', '')} "
                                         f"({reference.provenance.get('date', '')}): {reference.model}").strip()
    if reference.pooling not in ("", "not stated") and reference.pooling != run_entry.pooling:
        run_entry.notes.append(f"published with pooling {reference.pooling}, this run used {run_entry.pooling}")
    for column, notes in reference.cell_notes.items():
        run_entry.cell_notes.setdefault(column, []).extend(f"reference: {n}" for n in notes)
    run_entry.params = reference.params  # used only when the run's own count is unknown


def _restrict_averages(bench: str, entries: list[Entry], keys: Sequence[str]) -> None:
    """A run's average only ranks against rows averaging the same tasks."""
    if bench not in ("hest", "eva"):
        return
    column = "average" if bench == "hest" else "average_patch"
    if bench == "hest":
        tasks = [k for k in keys if k != "average"]
    else:
        tasks = [k for k in EVA_PATCH_AVERAGE if k in keys] or [k for k in keys if k not in ("average", "average_patch", "BACH")]
    group_tasks = [t for t in tasks if any(np.isfinite(e.values.get(t, float("nan"))) for e in entries)]
    for entry in entries:
        if not entry.is_run:
            continue
        have = [t for t in group_tasks if np.isfinite(entry.values.get(t, float("nan")))]
        if len(have) < len(group_tasks) and np.isfinite(entry.values.get(column, float("nan"))):
            entry.notes.append(f"average over {len(have)} of the {len(group_tasks)} tasks of this protocol; not ranked")
            entry.values[column] = float("nan")


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------
def column_statistic(bench: str, column: str, unit_ids: np.ndarray):
    """The statistic a column reports, as a function of a (B, n) batch of per-unit values.

    PLISM columns are medians over pairs (returned as ``"median"``, which the bootstrap
    computes with :func:`pathbench.stats.resampled_medians`); HEST columns are means over
    genes, then over folds (then over tasks for the average); EVA columns are means over
    runs. Returns ``(statistic, strata)``; the bootstrap resamples units within ``strata``.
    """
    if bench == "plism":
        return "median", None
    if bench == "hest":
        parts = np.array([u.split("|") for u in unit_ids])
        if column == "average":
            outer = parts[:, 0]
            inner = np.char.add(np.char.add(parts[:, 0], "|"), parts[:, 1])
        else:
            outer = None
            inner = parts[:, -2] if parts.shape[1] >= 3 else parts[:, 0]
        return _nested_mean(inner, outer), inner
    return (lambda batch: np.mean(batch, axis=-1)), None


def _nested_mean(inner: np.ndarray, outer: np.ndarray | None):
    """Mean over units within each inner group, then over inner groups (within outer groups),
    then over outer groups; positions keep their group under stratified resampling."""
    inner_labels = list(dict.fromkeys(inner.tolist()))
    inner_index = [np.flatnonzero(inner == label) for label in inner_labels]
    if outer is None:
        outer_index = [np.arange(len(inner_labels))]
    else:
        first_outer = np.array([outer[idx[0]] for idx in inner_index])
        outer_index = [np.flatnonzero(first_outer == label) for label in dict.fromkeys(first_outer.tolist())]

    def statistic(batch: np.ndarray) -> np.ndarray:
        inner_means = np.stack([batch[..., idx].mean(axis=-1) for idx in inner_index], axis=-1)
        return np.stack([inner_means[..., idx].mean(axis=-1) for idx in outer_index], axis=-1).mean(axis=-1)

    return statistic


def _plism_score_statistic(groups: np.ndarray):
    masks = {"all": np.ones(len(groups), bool), **{g: groups == g for g in ("inter_scanner", "inter_staining", "both")}}

    def make(cosine: np.ndarray, top10: np.ndarray):
        def statistic(index_batch: np.ndarray) -> np.ndarray:
            index = index_batch.astype(np.int64)
            parts = [stats.resampled_medians(cosine, index)]
            for g in ("inter_scanner", "inter_staining", "both"):
                columns = np.flatnonzero(masks[g])
                parts.append(stats.resampled_medians(top10, index[:, columns]) if len(columns)
                             else np.full(len(index), np.nan))
            return np.mean(parts, axis=0)
        return statistic
    return make


def _compare_runs(bench: str, groups: Sequence[Group], keys: Sequence[str], *, n_boot: int, seed: int) -> list[Comparison]:
    comparisons: list[Comparison] = []
    for group in groups:
        runs = [e for e in group.entries if e.is_run]
        for entry in runs:
            _confidence_intervals(bench, entry, keys, n_boot=n_boot, seed=seed)
        by_data: dict[str, list[Entry]] = {}
        for entry in runs:
            by_data.setdefault(entry.run.data_id, []).append(entry)
        for same_data in by_data.values():
            if len(same_data) < 2:
                continue
            for column in keys:
                candidates = [e for e in same_data if column in e.run.units and np.isfinite(e.values.get(column, np.nan))]
                if len(candidates) < 2:
                    continue
                best = max(candidates, key=lambda e: (e.values[column], e.model))
                for other in candidates:
                    if other is best:
                        continue
                    comparison = _compare_pair(bench, column, group.protocol, best, other, n_boot=n_boot, seed=seed)
                    if comparison is not None:
                        comparisons.append(comparison)
                        other.significance[column] = comparison
    adjusted = stats.holm([c.pvalue for c in comparisons])
    for comparison, p in zip(comparisons, adjusted, strict=True):
        comparison.p_holm = float(p)
    return comparisons


def _aligned(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shared = a.index.intersection(b.index)
    shared = shared[~shared.duplicated()]
    return shared.to_numpy(), a.loc[shared].to_numpy(float), b.loc[shared].to_numpy(float)


def _score_statistic(run: Run, ids: np.ndarray):
    """(statistic on index batches, strata) of the PLISM leaderboard score on pairs ``ids``."""
    pairs = run.pairs.set_index("pair").loc[ids]
    groups = plism_pair_groups(pairs)
    make = _plism_score_statistic(groups)
    return make(pairs["cosine_similarity"].to_numpy(float), pairs["top_10_accuracy"].to_numpy(float)), groups


def _distribution(bench: str, column: str, run: Run, ids: np.ndarray, *, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap distribution (n_boot,) of a column's statistic over units ``ids`` of a run.

    Cached per run: the distribution behind a run's CI is reused by its paired comparisons
    whenever they cover the same units (the resamples depend only on the units).
    """
    digest = hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()
    key = (column, n_boot, seed, digest)
    if key not in run.boot_cache:
        if bench == "plism" and column == "leaderboard_score":
            statistic, groups = _score_statistic(run, ids)
            distribution = statistic(stats.resample_index(len(ids), n_boot, seed, groups))
        else:
            values = run.units[column].loc[ids].to_numpy(float)
            statistic, strata = column_statistic(bench, column, ids)
            distribution = stats.bootstrap_distribution(values, statistic, n_boot=n_boot, seed=seed, strata=strata)
        run.boot_cache[key] = distribution
    return run.boot_cache[key]


def _point(bench: str, column: str, run: Run, ids: np.ndarray) -> float:
    """The column's statistic on exactly the units ``ids`` (no resampling)."""
    if bench == "plism" and column == "leaderboard_score":
        statistic, _ = _score_statistic(run, ids)
        return float(statistic(np.arange(len(ids))[None, :])[0])
    statistic, _ = column_statistic(bench, column, ids)
    values = run.units[column].loc[ids].to_numpy(float)
    if statistic == "median":
        return float(np.median(values))
    return float(statistic(values[None, :])[0])


def _compare_pair(bench: str, column: str, protocol: str, best: Entry, other: Entry, *, n_boot: int,
                  seed: int) -> Comparison | None:
    ids, a, b = _aligned(best.run.units[column], other.run.units[column])
    keep = np.isfinite(a) & np.isfinite(b)
    ids, a, b = ids[keep], a[keep], b[keep]
    if len(ids) == 0:
        return None
    low, high, boot_p = stats.paired_interval(_distribution(bench, column, best.run, ids, n_boot=n_boot, seed=seed),
                                              _distribution(bench, column, other.run, ids, n_boot=n_boot, seed=seed))
    difference = _point(bench, column, best.run, ids) - _point(bench, column, other.run, ids)
    if bench == "plism" and column == "leaderboard_score":
        # a mean of four group medians has no per-pair value to rank: paired bootstrap test
        test, pvalue = "paired bootstrap (pairs resampled within groups)", boot_p
    else:
        result = stats.wilcoxon_signed_rank(a, b)
        test, pvalue = f"Wilcoxon signed-rank ({result.method})", result.pvalue
    return Comparison(column, protocol, best.model, other.model, len(ids), difference, low, high, test, pvalue)


def _confidence_intervals(bench: str, entry: Entry, keys: Sequence[str], *, n_boot: int, seed: int) -> None:
    run = entry.run
    for column in keys:
        if column not in run.units or not np.isfinite(entry.values.get(column, np.nan)):
            continue
        series = run.units[column].dropna()
        if len(series) == 0:
            continue
        distribution = _distribution(bench, column, run, series.index.to_numpy(), n_boot=n_boot, seed=seed)
        entry.ci[column] = stats.percentile_interval(distribution, 0.95)


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------
def _fmt(value: float, decimals: int) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{decimals}f}"


def _cell_parts(board: Leaderboard, entry: Entry, column: Column) -> dict[str, str]:
    """The pieces of one cell: value, extra (IQR/std), CI, published, difference, markers."""
    decimals = DECIMALS[board.bench]
    value = entry.values.get(column.key, float("nan"))
    parts = {"value": entry.text.get(column.key) or _fmt(value, decimals), "extra": "", "ci": "", "published": "",
             "diff": "", "sig": "", "note": ""}
    if column.key in entry.extras and np.isfinite(value):
        parts["extra"] = entry.extras[column.key]
    if column.key in entry.ci and np.isfinite(value):
        low, high = entry.ci[column.key]
        parts["ci"] = f"[{_fmt(low, decimals)}, {_fmt(high, decimals)}]"
    if column.key in entry.published:
        published = entry.published[column.key]
        parts["published"] = entry.published_text.get(column.key) or _fmt(published, decimals)
        if np.isfinite(value):
            parts["diff"] = f"{value - published:+.{decimals}f}"
    comparison = entry.significance.get(column.key)
    if comparison is not None and comparison.significant:
        parts["sig"] = "*"
    if entry.cell_notes.get(column.key):
        parts["note"] = "‡"
    return parts


def _source_label(entry: Entry) -> str:
    if entry.is_run:
        label = f"your run ({entry.run.path.name})"
        if entry.origin == "run+reference":
            label += f" + {entry.provenance.get('reference', '')}"
        return label
    source = SOURCE_LABELS.get(entry.provenance.get("source", ""), entry.provenance.get("source", ""))
    return f"{source} {entry.provenance.get('table', '')} ({entry.provenance.get('date', '')})".strip()


def _plain_cell(parts: dict[str, str], with_details: bool = True) -> str:
    text = parts["value"]
    if parts["extra"]:
        text += f" ({parts['extra']})" if not parts["extra"].startswith("±") else f" {parts['extra']}"
    if with_details and parts["ci"]:
        text += f" {parts['ci']}"
    if parts["published"]:
        text += f" (pub. {parts['published']}"
        text += f", Δ {parts['diff']})" if parts["diff"] else ")"
    return text + parts["sig"] + parts["note"]


def _title(board: Leaderboard) -> str:
    names = {"plism": "PLISM robustness", "hest": "HEST gene expression (Pearson r)", "eva": "EVA patch classification"}
    ref = "no reference table" if board.reference == "none" else f"reference: {SOURCE_LABELS.get(board.reference, board.reference)}"
    return f"{names[board.bench]} leaderboard ({ref})"


def _legend_lines(board: Leaderboard) -> list[str]:
    lines = ["Ranks and best (bold) / second-best (underlined) marks are computed within each protocol only."]
    if any(e.ci for e in board.entries):
        lines.append("[a, b]: bootstrap 95 % confidence interval of your run's value.")
    if any(e.published for e in board.entries):
        lines.append("(pub. x, Δ d): the published value of the same model under the same protocol, and yours minus it.")
    if board.comparisons:
        lines.append(f"*: significantly below the best of your runs in that column (Holm-corrected p < {ALPHA}, "
                     f"{len(board.comparisons)} comparisons); see the statistics table.")
    if any(e.cell_notes for e in board.entries):
        lines.append("‡: see the footnotes.")
    if any(c.computed for c in board.columns) and any(not e.is_run for e in board.entries):
        computed = ", ".join(c.label for c in board.columns if c.computed)
        lines.append(f"{computed}: computed from the published values for reference rows (not published).")
    return lines


def _footnotes(board: Leaderboard) -> list[str]:
    notes = list(board.footnotes)
    for entry in board.entries:
        for note in entry.notes:
            notes.append(f"{entry.model} ({entry.protocol}): {note}")
    for skipped in board.skipped:
        notes.append(skipped.describe())
    return notes


def render_markdown(board: Leaderboard) -> str:
    """The leaderboard as a Markdown table (one section row per protocol) plus notes."""
    header = ["Rank", "Model", "Pooling", "Source"] + [c.label for c in board.columns]
    lines = [f"## {_title(board)}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---:", "---", "---", "---"] + ["---:"] * len(board.columns)) + "|"]
    for group in board.groups:
        lines.append("| " + " | ".join([f"**{group.protocol}**", f"*{group.protocol_detail}*"] + [""] * (len(header) - 2)) + " |")
        for entry in group.entries:
            cells = [str(entry.rank) if entry.rank else "–", entry.model, entry.pooling, _source_label(entry)]
            for column in board.columns:
                parts = _cell_parts(board, entry, column)
                text = _plain_cell(parts)
                mark = entry.marks.get(column.key)
                if mark == MARK_BEST:
                    text = f"**{text}**"
                elif mark == MARK_SECOND:
                    text = f"<u>{text}</u>"
                cells.append(text)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    lines.extend(_legend_lines(board))
    if board.comparisons:
        lines += ["", "### Paired comparisons (your runs on the same data)", "",
                  "| Column | Best run | Compared run | Units | Difference [95 % CI] | Test | p | Holm p | Significant |",
                  "|---|---|---|---:|---|---|---:|---:|---|"]
        for c in board.comparisons:
            lines.append(f"| {_column_label(board, c.column)} | {c.better} | {c.other} | {c.n_units} | "
                         f"{c.difference:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}] | {c.test} | {c.pvalue:.3g} | "
                         f"{c.p_holm:.3g} | {'yes' if c.significant else 'no'} |")
    notes = _footnotes(board)
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _column_label(board: Leaderboard, key: str) -> str:
    return next((c.label for c in board.columns if c.key == key), key)


def leaderboard_frame(board: Leaderboard) -> pd.DataFrame:
    """One tidy row per table row: rank, model, protocol, provenance, and per column the value,
    CI, published value, difference, best/second mark and Holm p of the paired comparison."""
    records = []
    for group in board.groups:
        for entry in group.entries:
            record: dict[str, Any] = {
                "protocol": entry.protocol, "protocol_detail": entry.protocol_detail, "rank": entry.rank,
                "model": entry.model, "model_key": entry.model_key, "origin": entry.origin,
                "pooling": entry.pooling, "source": entry.provenance.get("source", ""),
                "table": entry.provenance.get("table", ""), "date": entry.provenance.get("date", ""),
                "run_dir": entry.provenance.get("run_dir", ""),
            }
            for column in board.columns:
                k = column.key
                value = entry.values.get(k, float("nan"))
                record[k] = entry.text.get(k) or (None if not np.isfinite(value) else round(value, 6))
                low, high = entry.ci.get(k, (float("nan"), float("nan")))
                record[f"{k}_ci_low"] = None if not np.isfinite(low) else round(low, 6)
                record[f"{k}_ci_high"] = None if not np.isfinite(high) else round(high, 6)
                record[f"{k}_published"] = entry.published_text.get(k) or entry.published.get(k)
                comparison = entry.significance.get(k)
                record[f"{k}_p_holm"] = None if comparison is None else round(comparison.p_holm, 6)
                record[f"{k}_mark"] = entry.marks.get(k, "")
            record["notes"] = "; ".join(entry.notes + [n for ns in entry.cell_notes.values() for n in ns])
            records.append(record)
    return pd.DataFrame.from_records(records)


def render_csv(board: Leaderboard) -> str:
    """The leaderboard as CSV (see :func:`leaderboard_frame`)."""
    buffer = io.StringIO()
    leaderboard_frame(board).to_csv(buffer, index=False)
    return buffer.getvalue()


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "Δ": r"$\Delta$", "±": r"$\pm$", "–": "--", "‡": r"$^\ddagger$", "×": r"$\times$"}


def _latex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(board: Leaderboard) -> str:
    """The leaderboard as a booktabs LaTeX table (``\\textbf`` best, ``\\underline`` second)."""
    n = 3 + len(board.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + _latex(_title(board)) + "}",
             r"\begin{tabular}{rll" + "r" * len(board.columns) + "}", r"\toprule",
             " & ".join(["Rank", "Model", "Pooling"] + [_latex(c.label) for c in board.columns]) + r" \\", r"\midrule"]
    for i, group in enumerate(board.groups):
        if i:
            lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{n}}}{{l}}{{\emph{{{_latex(group.protocol)}: {_latex(group.protocol_detail)}}}}} \\")
        for entry in group.entries:
            cells = [str(entry.rank) if entry.rank else "--", _latex(entry.model), _latex(entry.pooling)]
            for column in board.columns:
                text = _latex(_plain_cell(_cell_parts(board, entry, column), with_details=False))
                mark = entry.marks.get(column.key)
                if mark == MARK_BEST:
                    text = rf"\textbf{{{text}}}"
                elif mark == MARK_SECOND:
                    text = rf"\underline{{{text}}}"
                cells.append(text)
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    notes = _legend_lines(board) + _footnotes(board)
    return "\n".join(lines + ["% " + n for n in notes]) + "\n"


# --------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1280px;padding:0 1.5rem;color:#1f2933;background:#fff;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #e4e7eb;
padding-bottom:.3rem}.sub{color:#616e7c;margin-top:0}
table{border-collapse:collapse;width:100%;font-size:.88rem;margin:.8rem 0}
th,td{padding:.35rem .55rem;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}
th{background:#f5f7fa;font-weight:600}thead th{position:sticky;top:0}td.num{text-align:right;white-space:nowrap}
tr.group th{background:#e8eef7;color:#243b53;font-weight:600;text-align:left}
tr.run td{background:#fffbea}tr.merged td{background:#effcf6}
.best{font-weight:700}.second{text-decoration:underline}.small{display:block;color:#616e7c;font-size:.75rem}
.sig{color:#c62828;font-weight:700}.yes{color:#c62828;font-weight:600}.no{color:#616e7c}
figure{margin:1.2rem 0;text-align:center}figure img{max-width:100%;border:1px solid #e4e7eb;border-radius:4px}
figcaption{color:#616e7c;font-size:.85rem;margin-top:.3rem}ul.notes li{margin:.2rem 0}
code{background:#f5f7fa;padding:0 .25rem;border-radius:3px}.legend{color:#3e4c59;font-size:.85rem}
"""


def _html_cell(board: Leaderboard, entry: Entry, column: Column) -> str:
    parts = _cell_parts(board, entry, column)
    mark = entry.marks.get(column.key)
    cls = {"best": "best", "second": "second"}.get(mark or "", "")
    value = html.escape(parts["value"])
    if parts["extra"]:
        value += html.escape(f" ({parts['extra']})" if not parts["extra"].startswith("±") else f" {parts['extra']}")
    inner = f'<span class="{cls}">{value}</span>' if cls else value
    if parts["sig"]:
        inner += '<span class="sig" title="significantly below the best run (Holm)">*</span>'
    if parts["note"]:
        notes = "; ".join(entry.cell_notes.get(column.key, []))
        inner += f'<sup title="{html.escape(notes)}">‡</sup>'
    if parts["ci"]:
        inner += f'<span class="small">95 % CI {html.escape(parts["ci"])}</span>'
    if parts["published"]:
        diff = f", Δ {parts['diff']}" if parts["diff"] else ""
        inner += f'<span class="small">published {html.escape(parts["published"])}{html.escape(diff)}</span>'
    comparison = entry.significance.get(column.key)
    if comparison is not None:
        inner += f'<span class="small">vs {html.escape(comparison.better)}: Holm p {comparison.p_holm:.3g}</span>'
    return f'<td class="num" data-column="{html.escape(column.key)}">{inner}</td>'


def render_html(board: Leaderboard, plots: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML page: the table, the statistics, the plots (PNG embedded as
    base64), the provenance of every row, the reference checks and the skipped runs."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{esc(_title(board))}</title><style>{_CSS}</style></head><body>",
           f"<h1>{esc(_title(board))}</h1>",
           f'<p class="sub">pathbench leaderboard · benchmark <code>{esc(board.bench)}</code> · '
           f"{len(board.runs)} run(s) of yours · {sum(not e.is_run for e in board.entries)} reference row(s) · "
           f"{len(board.groups)} protocol(s)</p>",
           '<h2 id="table">Leaderboard</h2>', '<table id="leaderboard"><thead><tr>',
           "".join(f"<th>{esc(h)}</th>" for h in ["Rank", "Model", "Pooling", "Source"])
           + "".join(f'<th title="{esc(c.description)}">{esc(c.label)}</th>' for c in board.columns),
           "</tr></thead>"]
    width = 4 + len(board.columns)
    for group in board.groups:
        out.append(f'<tbody data-protocol="{esc(group.protocol)}"><tr class="group"><th colspan="{width}">'
                   f"Protocol <code>{esc(group.protocol)}</code>: {esc(group.protocol_detail)}</th></tr>")
        for entry in group.entries:
            cls = {"run": "run", "run+reference": "merged"}.get(entry.origin, "reference")
            out.append(f'<tr class="{cls}" data-model="{esc(entry.model)}" data-origin="{esc(entry.origin)}">'
                       f"<td>{entry.rank or '–'}</td><td>{esc(entry.model)}</td><td>{esc(entry.pooling)}</td>"
                       f"<td>{esc(_source_label(entry))}</td>"
                       + "".join(_html_cell(board, entry, c) for c in board.columns) + "</tr>")
        out.append("</tbody>")
    out.append("</table>")
    out.append('<div class="legend">' + "<br>".join(esc(line) for line in _legend_lines(board)) + "</div>")

    out.append('<h2 id="statistics">Paired comparisons</h2>')
    if board.comparisons:
        out.append('<table id="comparisons"><thead><tr>' + "".join(
            f"<th>{h}</th>" for h in ["Column", "Best run", "Compared run", "Units", "Difference", "95 % CI",
                                      "Test", "p", "Holm p", "Significant"]) + "</tr></thead><tbody>")
        for c in board.comparisons:
            out.append(f"<tr><td>{esc(_column_label(board, c.column))}</td><td>{esc(c.better)}</td><td>{esc(c.other)}</td>"
                       f'<td class="num">{c.n_units}</td><td class="num">{c.difference:+.4f}</td>'
                       f'<td class="num">[{c.ci_low:+.4f}, {c.ci_high:+.4f}]</td><td>{esc(c.test)}</td>'
                       f'<td class="num">{c.pvalue:.3g}</td><td class="num">{c.p_holm:.3g}</td>'
                       f'<td class="{"yes" if c.significant else "no"}">{"yes" if c.significant else "no"}</td></tr>')
        out.append("</tbody></table>")
        out.append(f'<p class="legend">Each run is compared with the best of your runs in the same column, on the '
                   f"units both share; p-values are Holm-corrected across the {len(board.comparisons)} comparisons "
                   f"shown (significant: Holm p &lt; {ALPHA}).</p>")
    else:
        out.append('<p class="legend">No paired comparison: they need at least two of your runs on the same '
                   "data and protocol.</p>")

    out.append('<h2 id="plots">Plots</h2>')
    for name, png in (plots or {}).items():
        data = base64.b64encode(png).decode("ascii")
        out.append(f'<figure data-plot="{esc(name)}"><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{esc(PLOT_CAPTIONS.get(name.split('_', 1)[-1] if name.endswith('_cost') else name, name))}"
                   "</figcaption></figure>")
    if not plots:
        out.append('<p class="legend">No plot for this benchmark and these rows.</p>')

    out.append('<h2 id="provenance">Provenance of every row</h2><table id="provenance-table"><thead><tr>'
               + "".join(f"<th>{h}</th>" for h in ["Model", "Protocol", "Pooling", "Origin", "Details"])
               + "</tr></thead><tbody>")
    for entry in board.entries:
        details = "; ".join(f"{k}: {v}" for k, v in entry.provenance.items() if v not in ("", None))
        out.append(f'<tr data-model="{esc(entry.model)}"><td>{esc(entry.model)}</td><td><code>{esc(entry.protocol)}'
                   f"</code></td><td>{esc(entry.pooling)}</td><td>{esc(entry.origin)}</td><td>{esc(details)}</td></tr>")
    out.append("</tbody></table>")

    out.append('<h2 id="checks">Reference checks and notes</h2><ul class="notes">')
    relevant = [c for c in board.checks if c.source_file in {Path(e.provenance.get("file", "")).name for e in board.entries}]
    bad = [c for c in relevant if not c.ok]
    out.append(f"<li>{len(relevant) - len(bad)} of {len(relevant)} published averages in the reference rows shown "
               f"match the mean of their values within {AVERAGE_TOLERANCE}.</li>")
    for note in _footnotes(board):
        out.append(f"<li>{esc(note)}</li>")
    out.append("</ul>")
    out.append('<p class="sub">Generated by <code>pathbench leaderboard</code>; this page needs no network.</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


PLOT_CAPTIONS = {
    "plism_figure1": "PLISM: median top-5 accuracy vs median cosine similarity over all slide pairs (the seed paper's "
                     "Figure 1); reference points from the paper's Table 3 (21 slides, 16,278 tiles).",
    "plism_figure4": "PLISM: robustness to scanners vs to stainings (the seed paper's Figure 4, median top-1; its "
                     "numbers are published only as a figure) and the same with top-10 including the plismbench "
                     "README rows.",
    "hest_tasks": "HEST: Pearson r per task (bars), reference rows and your runs (error bars: bootstrap 95 % CI).",
    "cost": "Cost vs performance: parameters (and measured tiles/s where a run recorded it) against the "
            "benchmark's ranking column.",
}


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``pathbench leaderboard``."""
    parser.add_argument("--bench", required=True, choices=BENCHES, help="benchmark whose results to tabulate")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS),
                        help="results root holding <bench>/<model>/ folders (default ./pathbench-results)")
    parser.add_argument("--reference", default=None,
                        help="published reference rows: paper, plismbench (PLISM only) or none "
                             "(default: plismbench for plism, paper otherwise)")
    parser.add_argument("--format", default="md", choices=FORMATS, help="md (default), csv, latex or html (full report)")
    parser.add_argument("--out", default=None, help="write to this file instead of printing")
    parser.add_argument("--plots", default=None, metavar="DIR", help="also write the plots as PNG files into DIR")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})")
    parser.add_argument("--check-references", action="store_true",
                        help="recompute every published average from its row and report disagreements")


def run(args: argparse.Namespace) -> int:
    """``pathbench leaderboard``: build the table and print or write it."""
    from pathbench._io import write_text

    if getattr(args, "check_references", False):
        checks = check_reference_averages()
        for check in checks:
            if not check.ok:
                print(check.describe())
        print(f"{sum(c.ok for c in checks)} of {len(checks)} published averages match their rows within "
              f"{AVERAGE_TOLERANCE}.")
    board = build_leaderboard(args.bench, args.results, args.reference, n_boot=args.n_boot)
    plots: dict[str, bytes] = {}
    if args.format == "html" or args.plots:
        from pathbench import plots as plotting

        plots = plotting.leaderboard_plots(board)
        if args.plots:
            for name, png in plots.items():
                with _atomic_bytes(Path(args.plots) / f"{name}.png") as handle:
                    handle.write(png)
    renderers = {"md": render_markdown, "csv": render_csv, "latex": render_latex}
    text = render_html(board, plots) if args.format == "html" else renderers[args.format](board)
    if args.out:
        write_text(args.out, text)
        print(f"wrote {args.out} ({len(board.entries)} rows, {len(board.groups)} protocol(s), "
              f"{len(board.skipped)} skipped run(s))")
    else:
        sys.stdout.write(text)
    for skipped in board.skipped:
        print(f"warning: {skipped.describe()}", file=sys.stderr)
    if not board.runs and not board.skipped:
        print(f"note: no {args.bench} run under {args.results} (expected <results>/{args.bench}/<model>/run.json); "
              "the table shows the reference rows only.", file=sys.stderr)
    return 0


def _atomic_bytes(path: Path):
    from pathbench._io import atomic_write

    return atomic_write(path, "wb")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _to_float(text: str) -> float | None:
    text = str(text).strip()
    if text in ("", "-", "–"):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_size(text: str) -> float | None:
    """``"1,100M"`` -> 1.1e9, ``"86M"`` -> 8.6e7; None when absent."""
    match = re.fullmatch(r"\s*([\d,.]+)\s*([MBK]?)\s*", str(text or ""))
    if not match:
        return None
    number = float(match.group(1).replace(",", ""))
    return number * {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9}[match.group(2)]


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", str(name).lower())


def _find_key(obj: Any, key: str) -> Any:
    """The shallowest value stored under ``key`` in nested dicts and lists (breadth first):
    run.json may nest settings under ``settings``, ``model``, ...; None when absent."""
    level = [obj]
    for _ in range(8):
        following = []
        for node in level:
            if isinstance(node, dict):
                if key in node and node[key] is not None:
                    return node[key]
                following.extend(v for v in node.values() if isinstance(v, (dict, list)))
            elif isinstance(node, list):
                following.extend(v for v in node if isinstance(v, (dict, list)))
        if not following:
            return None
        level = following
    return None
