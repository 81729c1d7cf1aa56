"""Published reference tables: reading, validating and checking their averages.

The tables live in the repository's top-level ``leaderboards/references/`` folder (the
installed package carries a copy as ``pathbench/references``). Every row keeps the exact
text of each published number and its provenance: ``bench, model, model_key, source,
table, protocol, date`` (``size``, ``pooling``, ``protocol_detail`` and ``note`` are
optional); every other column is a value, named by the benchmark's leaderboard column
key, with an optional ``<key>_iqr`` spread.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from pathbench.errors import PathbenchError

META_COLUMNS = ("bench", "model", "model_key", "size", "pooling", "source", "table", "protocol",
                "protocol_detail", "date", "note")
REQUIRED_COLUMNS = ("bench", "model", "model_key", "source", "table", "protocol", "date")
AVERAGE_TOLERANCE = 0.0006
SOURCE_LABELS = {"paper": "seed paper"}  # other sources are shown by their own name


def reference_files() -> list[Path]:
    """The published CSV files: ``leaderboards/references/*.csv`` (installed: ``pathbench/references``)."""
    folder = resources.files("pathbench") / "references"
    if not folder.is_dir():
        raise PathbenchError("the published reference tables are missing from this installation "
                             "(pathbench/references); reinstall pathbench.")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".csv"))


def read_reference_table(path: str | Path) -> pd.DataFrame:
    """Read one reference CSV as strings (published text is kept exactly) and validate it."""
    path = Path(path)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in table]
    if missing:
        raise PathbenchError(f"reference table {path} lacks the columns {missing}; every reference row needs "
                             f"{', '.join(REQUIRED_COLUMNS)} (see docs/leaderboards.md).")
    for column in value_columns(table):
        bad = [v for v in table[column] if v not in ("", "-") and to_float(v) is None]
        if bad:
            raise PathbenchError(f"reference table {path}: column {column} holds non-numeric values {bad[:3]}.")
    return table


def value_columns(table: pd.DataFrame) -> list[str]:
    """Numeric columns of a reference table (everything but provenance and ``*_iqr`` spreads)."""
    return [c for c in table.columns if c not in META_COLUMNS and not c.endswith("_iqr")]


def _tables() -> list[tuple[Path, pd.DataFrame]]:
    return [(path, read_reference_table(path)) for path in reference_files()]


def available_references(bench: str) -> list[str]:
    """Reference sources (``paper``, ...) published for ``bench``."""
    sources: list[str] = []
    for _, table in _tables():
        for source in table.loc[table["bench"] == bench, "source"]:
            if source not in sources:
                sources.append(source)
    return sources


@dataclasses.dataclass
class ReferenceRow:
    """One published row: values by column key (NaN when absent) and their exact text."""

    model: str
    model_key: str
    protocol: str
    protocol_detail: str
    pooling: str
    values: dict[str, float]
    text: dict[str, str]
    extras: dict[str, str]
    provenance: dict[str, str]
    params: float | None
    note: str = ""


def load_references(bench: str, source: str) -> list[ReferenceRow]:
    """Reference rows of ``bench`` from ``source`` (``none``: no rows), exactly as published."""
    if source == "none":
        return []
    rows: list[ReferenceRow] = []
    for path, table in _tables():
        selected = table[(table["bench"] == bench) & (table["source"] == source)]
        for _, row in selected.iterrows():
            rows.append(_reference_row(path, row, value_columns(table)))
    if not rows:
        known = available_references(bench)
        raise PathbenchError(f"no reference table {source!r} for --bench {bench}; available: "
                             f"{', '.join(known + ['none'])}.")
    return rows


def _reference_row(path: Path, row: pd.Series, columns: list[str]) -> ReferenceRow:
    values: dict[str, float] = {}
    text: dict[str, str] = {}
    extras: dict[str, str] = {}
    for column in columns:
        raw = row[column].strip()
        value = to_float(raw)
        values[column] = float("nan") if value is None else value
        if value is not None:
            text[column] = raw
        if f"{column}_iqr" in row and row[f"{column}_iqr"].strip():
            extras[column] = row[f"{column}_iqr"].strip()
    provenance = {k: row[k] for k in ("source", "table", "date", "protocol", "model_key", "size", "note")
                  if k in row and row[k]}
    provenance["file"] = f"leaderboards/references/{path.name}"
    return ReferenceRow(model=row["model"], model_key=row["model_key"] or normalise(row["model"]),
                        protocol=row["protocol"], protocol_detail=row.get("protocol_detail", "") or row["protocol"],
                        pooling=row.get("pooling", "") or "not stated", values=values, text=text, extras=extras,
                        provenance=provenance, params=parse_size(row.get("size", "")), note=row.get("note", ""))


def published_sizes() -> dict[str, float]:
    """model_key -> parameters, from every reference table that publishes a size."""
    sizes: dict[str, float] = {}
    for _, table in _tables():
        if "size" not in table:
            continue
        for key, model, size in zip(table["model_key"], table["model"], table["size"], strict=True):
            parsed = parse_size(size)
            if parsed:
                sizes.setdefault(key or normalise(model), parsed)
    return sizes


# --------------------------------------------------------------------------------------
# Published averages
# --------------------------------------------------------------------------------------
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


def average_parts(aggregate, table_columns: Sequence[str], aggregate_keys: Sequence[str]) -> tuple[str, ...]:
    """The columns ``aggregate`` averages in a table with ``table_columns``: its declared
    parts, else every value column that is not an aggregate and not excluded."""
    if aggregate.parts is not None:
        return tuple(aggregate.parts) if all(p in table_columns for p in aggregate.parts) else ()
    return tuple(c for c in table_columns if c not in aggregate_keys and c not in aggregate.exclude)


def check_reference_averages(paths: Iterable[str | Path] | None = None) -> list[AverageCheck]:
    """Recompute every published average from the same row's published values, by the rule
    its benchmark declares (:class:`~pathbench.benches.base.Aggregate`). Returns one
    :class:`AverageCheck` per (row, average); ``ok`` is False beyond ``AVERAGE_TOLERANCE``."""
    from pathbench.benches import get_benchmark

    checks: list[AverageCheck] = []
    for path in paths if paths is not None else reference_files():
        path = Path(path)
        table = read_reference_table(path)
        columns = value_columns(table)
        for bench, rows in table.groupby("bench", sort=False):
            try:
                spec = get_benchmark(str(bench)).leaderboard
            except PathbenchError:
                continue  # a table of a benchmark that is not installed
            keys = [a.key for a in spec.aggregates]
            for aggregate in spec.aggregates:
                if aggregate.key not in columns:
                    continue
                parts = average_parts(aggregate, columns, keys)
                for _, row in rows.iterrows():
                    published = to_float(row[aggregate.key])
                    values = [to_float(row[p]) for p in parts]
                    if published is None or not parts or any(v is None for v in values):
                        continue
                    checks.append(AverageCheck(path.name, row["model"], aggregate.key, published,
                                               float(np.mean(values)), parts))
    return checks


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def to_float(text: str) -> float | None:
    text = str(text).strip()
    if text in ("", "-", "–"):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_size(text: str) -> float | None:
    """``"1,100M"`` -> 1.1e9, ``"86M"`` -> 8.6e7; None when absent."""
    match = re.fullmatch(r"\s*([\d,.]+)\s*([MBK]?)\s*", str(text or ""))
    if not match:
        return None
    number = float(match.group(1).replace(",", ""))
    return number * {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9}[match.group(2)]


def normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", str(name).lower())
