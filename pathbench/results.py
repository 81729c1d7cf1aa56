"""The results schema every benchmark run writes, and the object the Python API returns.

A run folder holds the benchmark's own human files (``pairs.csv``, ``folds.csv``,
``runs.csv``, ``summary.csv``...), the long-form table ``results.csv`` (one row per task x
unit x metric: ``bench, protocol, task, unit, metric, value``) and ``run.json`` (what
produced the numbers: model, weights, pooling, precision, parameters, embedding size,
throughput, data, options, versions). ``run.json`` is written last and says
``"complete": true``; a folder without it is an unfinished run.

Floats are written with Python's shortest round-trip representation and read back with
pandas' round-trip parser, so reading and rewriting a file never changes a digit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from pathbench import _io
from pathbench.errors import DataError

SCHEMA_VERSION = 1
RESULTS_FILE = "results.csv"
RUN_FILE = "run.json"
LONG_COLUMNS = ("bench", "protocol", "task", "unit", "metric", "value")


@dataclasses.dataclass
class Results:
    """One benchmark run, as written to (or read from) its results folder.

    Attributes:
        bench: benchmark name.
        model: the name the results are filed under.
        protocol: the setting the numbers are comparable under.
        out_dir: the results folder.
        run: the content of ``run.json``.
        rows: the long-form table (:data:`LONG_COLUMNS`).
        summary: the benchmark's human summary (``summary.csv``).
        headline: the headline numbers, e.g. ``{"leaderboard_score": 0.541}``.
        tables: every human table by file name.
    """

    bench: str
    model: str
    protocol: str
    out_dir: Path
    run: dict[str, Any]
    rows: pd.DataFrame
    summary: pd.DataFrame
    headline: dict[str, float | None]
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict, repr=False)

    def to_pandas(self) -> pd.DataFrame:
        """The long-form rows as a DataFrame (a copy)."""
        return self.rows.copy()

    @property
    def frame(self) -> pd.DataFrame:
        return self.to_pandas()

    def __repr__(self) -> str:
        headline = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.headline.items())
        return (f"Results(bench={self.bench!r}, model={self.model!r}, protocol={self.protocol!r}, "
                f"{headline or 'no headline'}, rows={len(self.rows)}, out_dir='{self.out_dir}')")


def read_csv_exact(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with the round-trip float parser (the default one may change the last digit)."""
    kwargs.setdefault("float_precision", "round_trip")
    return pd.read_csv(path, **kwargs)


def long_form(bench: str, protocol: str, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (task, unit, metric, value) with the bench and protocol columns in front."""
    frame = rows.loc[:, ["task", "unit", "metric", "value"]].copy()
    frame.insert(0, "protocol", protocol)
    frame.insert(0, "bench", bench)
    return frame.reset_index(drop=True)


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def write_run(out_dir: str | Path, *, bench: str, protocol: str, rows: pd.DataFrame,
              tables: dict[str, pd.DataFrame], record: dict[str, Any], headline: dict[str, float | None],
              summary: pd.DataFrame, model: str, previous: dict[str, Any] | None = None) -> Results:
    """Write a run's files atomically, ``run.json`` last.

    When ``previous`` (the folder's earlier ``run.json``) is complete and every file would be
    written with the same bytes, the folder is left untouched: a re-run of a finished run
    reuses it as it is. Otherwise the old ``run.json`` is removed before the first file
    changes, so the folder never pairs new files with an old record.
    """
    out_dir = Path(out_dir)
    frame = long_form(bench, protocol, rows)
    contents = {name: _csv_bytes(table) for name, table in tables.items()}
    contents[RESULTS_FILE] = _csv_bytes(frame)
    unchanged = all((out_dir / name).is_file() and (out_dir / name).read_bytes() == data
                    for name, data in contents.items())
    if unchanged and previous and previous.get("complete") and previous.get("protocol") == protocol:
        return Results(bench=bench, model=model, protocol=protocol, out_dir=out_dir, run=previous, rows=frame,
                       summary=summary, headline=headline, tables=dict(tables))
    (out_dir / RUN_FILE).unlink(missing_ok=True)
    for name, data in contents.items():
        if not ((out_dir / name).is_file() and (out_dir / name).read_bytes() == data):
            with _io.atomic_write(out_dir / name, "wb") as handle:
                handle.write(data)
    record = {**record, "schema": SCHEMA_VERSION, "complete": True}
    _io.write_json(out_dir / RUN_FILE, record)
    return Results(bench=bench, model=model, protocol=protocol, out_dir=out_dir, run=record, rows=frame,
                   summary=summary, headline=headline, tables=dict(tables))


def read_run_json(out_dir: str | Path) -> dict[str, Any] | None:
    """The ``run.json`` of a folder, or None when absent or unreadable."""
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def load_results(out_dir: str | Path) -> Results:
    """Read a complete run folder back (the object :func:`pathbench.evaluate` returned)."""
    out_dir = Path(out_dir)
    record = read_run_json(out_dir)
    if record is None or not record.get("complete"):
        raise DataError(f"{out_dir} holds no complete run (run.json missing, unreadable or incomplete); "
                        "run the evaluation again to finish it.")
    if not (out_dir / RESULTS_FILE).is_file():
        raise DataError(f"{out_dir} has no {RESULTS_FILE}: it was written by an older pathbench; run the "
                        "evaluation again to write the results schema.")
    rows = read_csv_exact(out_dir / RESULTS_FILE, dtype={"task": str, "unit": str, "metric": str})
    tables = {p.name: read_csv_exact(p) for p in sorted(out_dir.glob("*.csv")) if p.name != RESULTS_FILE}
    summary = tables.get("summary.csv", pd.DataFrame())
    return Results(bench=str(record.get("bench", "")), model=str(record.get("model_name", out_dir.name)),
                   protocol=str(record.get("protocol", "")), out_dir=out_dir, run=record, rows=rows,
                   summary=summary, headline=dict(record.get("headline") or {}), tables=tables)
