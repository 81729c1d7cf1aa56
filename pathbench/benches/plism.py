"""PLISM robustness: how stable a model's embeddings are across stainings and scanners.

For each pair of slides (same tissue, different staining and/or scanner) the benchmark
reports the mean cosine similarity of matched tiles and the top-1/3/5/10 accuracy of
retrieving a tile's twin among both slides' tiles (seed paper, Appendix 7.3; the metrics
live in :mod:`pathbench.benches.plism_metrics`). Results go to ``--out``: ``pairs.csv``
(one row per slide pair), ``summary.csv`` (one row per pair group and metric) and
``run.json`` (leaderboard score and provenance). An interrupted run resumes pair by pair.

Examples::

    pathbench evaluate --model h0-mini --bench plism                   # plismbench setting
    pathbench evaluate --model h0-mini --bench plism --n-tiles all --stainings GMH,GIV,HR
    pathbench evaluate --model vit-tiny-random --bench plism --data synthetic   # offline demo
    pathbench evaluate --bench plism --features-dir DIR --model-name NAME       # plismbench features

``--data synthetic`` is a small simulation built from real H&E tissue, not PLISM; see
docs/plism.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathbench._io import read_json, write_csv, write_json
from pathbench.data import plism as plism_data
from pathbench.errors import DataError, PathbenchError

PROTOCOL = "plism-v1"
KS: tuple[int, ...] = (1, 3, 5, 10)
METRICS: tuple[str, ...] = ("cosine_similarity", *(f"top_{k}_accuracy" for k in KS))
PAIR_COLUMNS: tuple[str, ...] = (
    "slide_a",
    "slide_b",
    "staining_a",
    "scanner_a",
    "staining_b",
    "scanner_b",
    *METRICS,
)
N_TILES_CHOICES = ("460", "2713", "5426", "8139", "all")
_CHECKPOINT_PAIRS = 64
_CHECKPOINT_SECONDS = 30.0


# ------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """PLISM's flags (the common ones come from :mod:`pathbench.cli_common`)."""
    group = parser.add_argument_group("PLISM")
    group.add_argument(
        "--n-tiles",
        choices=N_TILES_CHOICES,
        default=None,
        help="plismbench's official tile subset (default 8139; 'all' with --data synthetic), or all tiles",
    )
    group.add_argument("--tile-subset", help="a .npy file of row indices into the (x, y)-sorted tiles")
    group.add_argument(
        "--stainings", nargs="+", help="staining codes to keep, e.g. GMH GIV HR or GMH,GIV,HR (default: all)"
    )
    group.add_argument("--scanners", nargs="+", help="scanner codes to keep, e.g. S60 AT2 (default: all)")
    group.add_argument(
        "--features-dir",
        help="features already extracted in plismbench's layout (<dir>/<slide_id>/features.npy)",
    )
    group.add_argument(
        "--backend",
        choices=("auto", "torch", "faiss"),
        default="auto",
        help="retrieval backend (identical results; default: the fastest measured)",
    )
    parser.epilog = (
        "--data: hf (stream owkin/plism-dataset-tiles, default), hf-h5 (download the asked slides of "
        "owkin/plism-dataset), synthetic (offline simulated demo, NOT PLISM), or a folder of parquet shards "
        "or .h5 files."
    )


def run(args: argparse.Namespace, bench_options: str | None) -> int:
    """``pathbench evaluate --bench plism ...``; returns the exit status."""
    from pathbench import cli_common
    from pathbench.provenance import provenance

    if bench_options:
        raise PathbenchError(f"--bench plism takes no options after ':' (got {bench_options!r}).")
    if args.tile_subset and args.n_tiles:
        raise PathbenchError("give either --n-tiles or --tile-subset, not both.")
    progress = not args.no_progress
    subset_spec: str = args.tile_subset or args.n_tiles or ("all" if args.data == "synthetic" else "8139")
    metrics_device = args.device if args.device == "cpu" or args.device.startswith("cuda") else "auto"
    if args.device == "mps":
        metrics_device = "cpu"

    if args.features_dir:
        if args.model:
            raise PathbenchError(
                "--features-dir evaluates precomputed features: drop --model, use --model-name."
            )
        if not args.model_name:
            raise PathbenchError("--features-dir needs --model-name NAME to file the results under.")
        if not Path(args.features_dir).is_dir():
            raise DataError(
                f"--features-dir {args.features_dir}: no such folder; expected plismbench's layout "
                "<dir>/<slide_id>/features.npy."
            )
        # the inputs are checked before the tile subset is fetched (which may need the network)
        tile_subset = plism_data.load_tile_subset(subset_spec, cache_dir=args.cache_dir)
        features = plism_data.PlismbenchFeatures(
            args.features_dir, args.stainings, args.scanners, tile_subset
        )
        model_name = args.model_name
        identity = {"features": features.identity()}
        record = provenance(model={"name": model_name, "source": "plismbench-layout features"})
        source = {"kind": "features-dir", "path": str(features.root)}
        n_tiles = len(features.rows)
        slide_ids = list(features.slide_ids)
    else:
        model_name = cli_common.model_label(args)
        # the data is checked before the model is loaded (or its weights downloaded)
        # the subset is settled before the (possibly long) download of the slides
        tile_subset = plism_data.load_tile_subset(subset_spec, cache_dir=args.cache_dir)
        slides, source = open_plism(args.data, args.stainings, args.scanners, args.cache_dir, progress)
        slides = align_and_subset(slides, tile_subset)
        extractor = cli_common.extractor_from_args(args, bench="plism")
        pooling = cli_common.resolve_pooling(args, "plism")
        slide_ids = list(slides)
        options = cli_common.extraction_options(args)
        extracted = {}
        for slide_id, dataset in slides.items():
            extracted[slide_id] = extract_slide(extractor, dataset, pooling, options)
        features = {slide_id: f.array for slide_id, f in extracted.items()}
        identity = {"features": {slide_id: f.key for slide_id, f in extracted.items()}}
        record = provenance(extractor=extractor, pooling=pooling)
        n_tiles = len(next(iter(slides.values())))

    out = cli_common.results_dir(args, "plism", model_name)
    settings = {
        "protocol": PROTOCOL,
        "ks": list(KS),
        "slides": slide_ids,
        "tile_subset": plism_data.subset_description(subset_spec, tile_subset),
        **identity,
    }
    record.update(
        benchmark="plism",
        model_name=model_name,
        data=source,
        tile_subset=settings["tile_subset"],
        n_tiles_per_slide=n_tiles,
        slides=slide_ids,
        backend=args.backend,
    )
    result = evaluate_plism(
        features,
        slide_ids,
        out,
        settings=settings,
        run_record=record,
        backend=args.backend,
        device=metrics_device,
        progress=progress,
    )
    title = f"PLISM robustness of {model_name}: {len(slide_ids)} slides, {len(result.pairs)} pairs, {n_tiles} tiles per slide"
    if source.get("kind") == "synthetic":
        title += "\n(simulated demo data built from real H&E tissue: NOT PLISM, not comparable with published numbers)"
    print(format_table(result.summary, result.leaderboard_score, title=title))
    print(f"\nresults: {out}/pairs.csv, summary.csv, run.json")
    return 0


# ------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------
def open_plism(
    data: str | None,
    stainings: Sequence[str] | None = None,
    scanners: Sequence[str] | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> tuple[dict[str, plism_data.PlismSlide], dict[str, Any]]:
    """The selected slides of a PLISM source, one dataset each, and a record of the source.

    ``data`` is ``"hf"`` (default: stream ``owkin/plism-dataset-tiles`` into the cache),
    ``"hf-h5"`` (download the asked ``.h5`` slides of ``owkin/plism-dataset``),
    ``"synthetic"`` (the simulated demo, generated in the cache) or a local folder of
    parquet shards or ``.h5`` files.
    """
    data = data or "hf"
    if data in ("hf", "hf-h5"):
        wanted = plism_data.select_slides(plism_data.hub_slide_ids(), stainings, scanners)
        if data == "hf":
            folder = plism_data.download_tile_slides(wanted, cache_dir, progress=progress)
            found = plism_data.open_parquet_folder(folder)
            source = {"kind": "hub", "repo": plism_data.HUB_TILES_REPO}
        else:
            folder = plism_data.download_h5_slides(wanted)
            found = plism_data.open_h5_folder(folder)
            source = {"kind": "hub", "repo": plism_data.HUB_H5_REPO}
        missing = [s for s in wanted if s not in found]
        if missing:
            raise DataError(
                f"slide(s) {', '.join(missing)} are missing after the download from {source['repo']}."
            )
        return {s: found[s] for s in wanted}, source
    if data == "synthetic":
        from pathbench.data.synthetic_plism import ensure_synthetic_plism

        folder = ensure_synthetic_plism(cache_dir, progress=progress)
        found = plism_data.open_parquet_folder(folder)
        source = {"kind": "synthetic", "path": str(folder), **read_json(folder / "synthetic_plism.json")}
    else:
        kind = plism_data.detect_folder_format(data)
        if kind == "features":
            raise PathbenchError(
                f"{data} holds extracted features (<slide>/features.npy): use --features-dir {data} --model-name NAME."
            )
        found = plism_data.open_parquet_folder(data) if kind == "parquet" else plism_data.open_h5_folder(data)
        source = {"kind": kind, "path": str(Path(data).expanduser().resolve())}
    chosen = plism_data.select_slides(found, stainings, scanners)
    return {s: found[s] for s in chosen}, source


def align_and_subset(
    slides: Mapping[str, plism_data.PlismSlide], tile_subset: np.ndarray | None
) -> dict[str, plism_data.PlismSlide]:
    """Check that the slides hold the same tiles in (x, y) order, then keep the subset rows."""
    plism_data.check_alignment({s: d.item_ids for s, d in slides.items()})
    n_rows = len(next(iter(slides.values())))
    rows = plism_data.apply_tile_subset(n_rows, tile_subset)
    if tile_subset is None:
        return dict(slides)
    return {s: d.subset(rows) for s, d in slides.items()}


def extract_slide(
    extractor: Any, dataset: plism_data.PlismSlide, pooling: str, options: Mapping[str, Any]
) -> Any:
    """One slide's embeddings through the shared feature cache (``Features``)."""
    from pathbench.features import extract_features

    return extract_features(extractor, dataset, pooling=pooling, desc=f"{dataset.slide_id}", **options)


# ------------------------------------------------------------------------------------
# Metrics, resumption and outputs
# ------------------------------------------------------------------------------------
@dataclass
class PlismResult:
    """What one evaluation produced: the per-pair table, the summary and the score."""

    pairs: pd.DataFrame
    summary: pd.DataFrame
    leaderboard_score: float
    out_dir: Path


def config_key(settings: Mapping[str, Any]) -> str:
    """sha256 of everything that determines the numbers (features, slides, subset, protocol)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def evaluate_plism(
    features: Mapping[str, Any],
    slide_ids: Sequence[str],
    out_dir: str | Path,
    *,
    settings: Mapping[str, Any],
    run_record: Mapping[str, Any] | None = None,
    backend: str = "auto",
    device: str = "cpu",
    progress: bool = True,
    checkpoint_pairs: int = _CHECKPOINT_PAIRS,
    checkpoint_seconds: float = _CHECKPOINT_SECONDS,
) -> PlismResult:
    """Compute every slide pair's metrics into ``out_dir``, resuming a run of the same settings.

    Args:
        features: ``slide_id -> (n_tiles, dim)`` features, rows aligned across slides.
        slide_ids: the slides to pair (all unordered pairs are evaluated).
        out_dir: results folder; gets ``pairs.csv``, ``summary.csv`` and ``run.json``.
        settings: JSON-able description of everything that determines the numbers; its
            hash (the config key) decides which earlier rows may be reused.
        run_record: provenance merged into ``run.json``.

    Progress is kept in ``.pairs-partial-<key>.csv``, rewritten atomically every
    ``checkpoint_pairs`` pairs or ``checkpoint_seconds`` and when the run is stopped by an
    exception (Ctrl-C included); only rows of the same key are ever reused. ``run.json`` is written last and marks the run complete.
    """
    from pathbench.benches import plism_metrics

    out_dir = Path(out_dir)
    key = config_key(settings)
    pairs = plism_metrics.all_pairs(slide_ids)
    done = _reusable_rows(out_dir, key, pairs)
    remaining = [p for p in pairs if p not in done]
    partial = out_dir / f".pairs-partial-{key[:16]}.csv"
    rows = list(done.values())
    if remaining:
        last_write, unsaved = time.monotonic(), 0
        stream = plism_metrics.iter_pair_metrics(
            features, remaining, ks=KS, backend=backend, device=device, progress=progress
        )
        try:
            for metrics in stream:
                rows.append(_pair_row(metrics))
                unsaved += 1
                if unsaved >= checkpoint_pairs or time.monotonic() - last_write >= checkpoint_seconds:
                    write_csv(partial, _pairs_frame(rows, pairs))
                    last_write, unsaved = time.monotonic(), 0
        except BaseException:
            # every finished row is exact whatever stopped the run (Ctrl-C, a bad slide
            # further on): keep them for the next run of the same configuration
            if unsaved:
                write_csv(partial, _pairs_frame(rows, pairs))
            raise
    table = _pairs_frame(rows, pairs)
    summary = plism_metrics.summarise(table)
    score = plism_metrics.leaderboard_score(summary)
    write_csv(out_dir / "pairs.csv", table)
    write_csv(out_dir / "summary.csv", summary)
    record = dict(run_record or {})
    record.update(
        leaderboard_score=None if math.isnan(score) else score,
        config_key=key,
        settings=dict(settings),
        n_pairs=len(table),
        complete=True,
    )
    write_json(out_dir / "run.json", record)
    partial.unlink(missing_ok=True)
    return PlismResult(table, summary, score, out_dir)


def _pair_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    from pathbench.benches.plism_metrics import parse_slide_id

    staining_a, scanner_a = parse_slide_id(metrics["slide_a"])
    staining_b, scanner_b = parse_slide_id(metrics["slide_b"])
    row = {
        "slide_a": metrics["slide_a"],
        "slide_b": metrics["slide_b"],
        "staining_a": staining_a,
        "scanner_a": scanner_a,
        "staining_b": staining_b,
        "scanner_b": scanner_b,
    }
    row.update({name: float(metrics[name]) for name in METRICS})
    return row


def _pairs_frame(rows: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Rows in the canonical pair order, with exactly :data:`PAIR_COLUMNS`."""
    order = {p: i for i, p in enumerate(pairs)}
    ordered = sorted(rows, key=lambda r: order[(r["slide_a"], r["slide_b"])])
    return pd.DataFrame(ordered, columns=list(PAIR_COLUMNS))


def _reusable_rows(out_dir: Path, key: str, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """Rows an earlier run with the same config key left behind; stale state is removed.

    A complete run (``run.json`` with this key) gives its ``pairs.csv``; an interrupted one
    its partial file. Partial files of other keys are deleted, and a ``run.json`` of another
    key is removed before any new result is written, so the folder never pairs new rows
    with an old record.
    """
    wanted = set(pairs)
    run_json = out_dir / "run.json"
    source: Path | None = None
    if run_json.is_file():
        try:
            previous = read_json(run_json)
        except (OSError, ValueError):
            previous = {}
        if (
            previous.get("config_key") == key
            and previous.get("complete")
            and (out_dir / "pairs.csv").is_file()
        ):
            source = out_dir / "pairs.csv"
        else:
            run_json.unlink()
    for stale in out_dir.glob(".pairs-partial-*.csv"):
        if stale.name != f".pairs-partial-{key[:16]}.csv":
            stale.unlink()
    partial = out_dir / f".pairs-partial-{key[:16]}.csv"
    if source is None and partial.is_file():
        source = partial
    if source is None:
        return {}
    try:
        frame = pd.read_csv(source)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}
    if list(frame.columns) != list(PAIR_COLUMNS):
        return {}
    rows: dict[tuple[str, str], dict] = {}
    for record in frame.to_dict("records"):
        pair = (str(record["slide_a"]), str(record["slide_b"]))
        values = [record[m] for m in METRICS]
        if pair in wanted and all(isinstance(v, float | int) and math.isfinite(v) for v in values):
            record["slide_a"], record["slide_b"] = pair
            rows[pair] = record
    return rows


# ------------------------------------------------------------------------------------
# Console table
# ------------------------------------------------------------------------------------
_SHORT = {"cosine_similarity": "cosine", **{f"top_{k}_accuracy": f"top-{k}" for k in KS}}


def format_table(summary: pd.DataFrame, score: float, title: str | None = None) -> str:
    """Median (IQR) per pair group and metric, like the seed paper's Table 3, and the score."""
    metrics = [m for m in METRICS if m in set(summary["metric"])]
    groups = list(dict.fromkeys(summary["group"]))
    cells = {(r.group, r.metric): r for r in summary.itertuples(index=False)}
    header = ["pair group", "pairs", *(_SHORT.get(m, m) for m in metrics)]
    lines = []
    for group in groups:
        n_pairs = int(cells[(group, metrics[0])].n_pairs) if metrics else 0
        row = [group, str(n_pairs)]
        for metric in metrics:
            cell = cells.get((group, metric))
            if cell is None or n_pairs == 0 or math.isnan(cell.median):
                row.append("-")
            else:
                row.append(f"{cell.median:.3f} ({cell.iqr:.3f})")
        lines.append(row)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    out = [title] if title else []
    out += ["median (IQR) over slide pairs", fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(r) for r in lines]
    score_text = "n/a (a pair group is empty)" if math.isnan(score) else f"{score:.3f}"
    out.append(f"leaderboard score (mean of cosine [all] and top-10 medians [3 groups]): {score_text}")
    return "\n".join(out)
