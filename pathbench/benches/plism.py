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

import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathbench._io import read_json, write_csv
from pathbench.benches.base import (
    Aggregate,
    Benchmark,
    BenchResult,
    Column,
    DataRequest,
    EmbeddingSet,
    Inputs,
    LeaderboardSpec,
    Metric,
    Panel,
    Plot,
    RunContext,
    Task,
    option,
    result_rows,
)
from pathbench.data import plism as plism_data
from pathbench.errors import DataError, PathbenchError
from pathbench.results import read_csv_exact

PROTOCOL = "plism-v1"
KS: tuple[int, ...] = (1, 3, 5, 10)
COSINE_METRIC = "cosine_similarity"
MARGIN_METRIC = "cosine_margin"
METRICS: tuple[str, ...] = (COSINE_METRIC, *(f"top_{k}_accuracy" for k in KS), MARGIN_METRIC)
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
# The benchmark
# ------------------------------------------------------------------------------------
# Pair groups are the benchmark's tasks: every slide pair belongs to exactly one of them.
GROUP_TASKS: dict[str, str] = {
    "inter-scanner": "inter_scanner",
    "inter-staining": "inter_staining",
    "inter-scanner & inter-staining": "both",
}
SAME_CONDITIONS_TASK = "same"
# (slides, tiles per slide) of the two published settings, and their protocol ids.
OFFICIAL_SETTINGS = {(91, 8139): ("plismbench-91x8139", "plismbench: all 91 slides (4,095 pairs), official "
                                                        "8,139-tile subset; medians over pairs"),
                     (21, 16278): ("plism-paper-21", "seed paper setting: 21 slides (210 pairs), all 16,278 "
                                                     "tiles; median (IQR) over all pairs")}


@dataclass
class PlismOptions:
    """PLISM's options (see ``pathbench evaluate --bench plism --help``)."""

    n_tiles: str | None = option(choices=N_TILES_CHOICES, help="plismbench's official tile subset (default 8139; "
                                 "'all' with --data synthetic), or all tiles")
    tile_subset: str | None = option(help="a .npy file of row indices into the (x, y)-sorted tiles")
    stainings: list[str] | None = option(help="staining codes to keep, e.g. GMH GIV HR or GMH,GIV,HR (default: all)")
    scanners: list[str] | None = option(help="scanner codes to keep, e.g. S60 AT2 (default: all)")
    features_dir: str | None = option(help="features already extracted in plismbench's layout "
                                      "(<dir>/<slide_id>/features.npy)")
    backend: str = option("auto", choices=("auto", "torch", "faiss"),
                          help="retrieval backend (identical results; default: the fastest measured)")

    def __post_init__(self) -> None:
        if self.tile_subset and self.n_tiles:
            raise PathbenchError("give either --n-tiles or --tile-subset, not both.")
        if self.n_tiles is not None and str(self.n_tiles) not in N_TILES_CHOICES:
            raise PathbenchError(f"--n-tiles must be one of {', '.join(N_TILES_CHOICES)}; got {self.n_tiles!r}.")
        if self.backend not in ("auto", "torch", "faiss"):
            raise PathbenchError(f"--backend must be auto, torch or faiss; got {self.backend!r}.")
        for name in ("stainings", "scanners"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])

    def subset_spec(self, data: str | None) -> str:
        return self.tile_subset or self.n_tiles or ("all" if data == "synthetic" else "8139")


def _median_column(key: str, label: str, metric: str, tasks: tuple[str, ...] | None, description: str) -> Column:
    return Column(key, label, description, metric=metric, tasks=tasks, statistic="median", spread="iqr")


_TOP10 = "top_10_accuracy"
LEADERBOARD = LeaderboardSpec(
    title="PLISM robustness",
    columns=(
        _median_column("cosine_all", "Cosine (all)", COSINE_METRIC, None,
                       "median over all slide pairs of the mean cosine similarity of matched tiles"),
        _median_column("top1_all", "Top-1 (all)", "top_1_accuracy", None,
                       "median over all slide pairs of the top-1 retrieval accuracy"),
        _median_column("top5_all", "Top-5 (all)", "top_5_accuracy", None,
                       "median over all slide pairs of the top-5 retrieval accuracy"),
        _median_column("top10_inter_scanner", "Top-10 inter-scanner", _TOP10, ("inter_scanner",),
                       "median top-10 accuracy over pairs with the same staining and different scanners"),
        _median_column("top10_inter_staining", "Top-10 inter-staining", _TOP10, ("inter_staining",),
                       "median top-10 accuracy over pairs with the same scanner and different stainings"),
        _median_column("top10_both", "Top-10 inter-scanner & inter-staining", _TOP10, ("both",),
                       "median top-10 accuracy over pairs where both staining and scanner differ"),
        _median_column("top1_inter_scanner", "Top-1 inter-scanner", "top_1_accuracy", ("inter_scanner",),
                       "median top-1 accuracy over inter-scanner pairs (the paper's Figure 4, x axis)"),
        _median_column("top1_inter_staining", "Top-1 inter-staining", "top_1_accuracy", ("inter_staining",),
                       "median top-1 accuracy over inter-staining pairs (the paper's Figure 4, y axis)"),
        _median_column("margin_all", "Cosine margin (all)", MARGIN_METRIC, None,
                       "median over all slide pairs of the twin cosine minus the cosine between non-twin tiles of "
                       "the same slides; a constant embedding scores 0 (pathbench's, not plismbench's)"),
    ),
    always_columns=("margin_all",),
    default_columns=("cosine_all", "top1_all", "top5_all", "top10_inter_scanner", "top10_inter_staining",
                     "top10_both", "leaderboard_score"),
    aggregates=(Aggregate("leaderboard_score", "Leaderboard score",
                          "mean of cosine (all) and the three top-10 group medians (plismbench's score)",
                          parts=("cosine_all", "top10_inter_scanner", "top10_inter_staining", "top10_both")),),
    primary=("leaderboard_score", "top5_all"),
    default_reference="plismbench",
    decimals=3,
    spread_with_reference=True,
    plots=(
        Plot("plism_figure1", "PLISM robustness: retrieval vs cosine similarity",
             "PLISM: median top-5 accuracy vs median cosine similarity over all slide pairs (the seed paper's "
             "Figure 1); reference points from the paper's Table 3 (21 slides, 16,278 tiles).",
             (Panel("cosine_all", "top5_all", xlabel="median cosine similarity (all pairs)",
                    ylabel="median top-5 accuracy (all pairs)", reference="paper",
                    reference_label="published (seed paper Table 3: 21 slides, 16,278 tiles)"),)),
        Plot("plism_figure4", "PLISM: scanner vs staining robustness",
             "PLISM: robustness to scanners vs to stainings (the seed paper's Figure 4, median top-1; its numbers "
             "are published only as a figure) and the same with top-10 including the plismbench README rows.",
             (Panel("top1_inter_scanner", "top1_inter_staining", title="median top-1 (the paper's Figure 4)",
                    xlabel="robustness to scanners (inter-scanner pairs)",
                    ylabel="robustness to stainings (inter-staining pairs)",
                    note="published only as a figure:\nno reference numbers", from_zero=True),
              Panel("top10_inter_scanner", "top10_inter_staining", title="median top-10",
                    xlabel="robustness to scanners (inter-scanner pairs)",
                    ylabel="robustness to stainings (inter-staining pairs)", reference="plismbench",
                    reference_label="published (plismbench README: 91 slides, 8,139 tiles)", from_zero=True))),
    ),
)


class PlismBenchmark(Benchmark):
    """PLISM robustness: stability of embeddings across stainings and scanners."""

    name = "plism"
    protocol = PROTOCOL
    title = "PLISM robustness to scanners and stainings"
    description = __doc__ or ""
    epilog = ("--data: hf (stream owkin/plism-dataset-tiles, default), hf-h5 (download the asked slides of "
              "owkin/plism-dataset), synthetic (offline simulated demo, NOT PLISM), or a folder of parquet shards "
              "or .h5 files.")
    Options = PlismOptions
    tasks = (
        Task("inter_scanner", "inter-scanner", COSINE_METRIC, description="same staining, different scanners"),
        Task("inter_staining", "inter-staining", COSINE_METRIC, description="same scanner, different stainings"),
        Task("both", "inter-scanner & inter-staining", COSINE_METRIC, description="both differ"),
    )
    metrics = (
        Metric(COSINE_METRIC, "cosine", unit="pair", description="mean cosine similarity of matched tiles"),
        *(Metric(f"top_{k}_accuracy", f"top-{k}", unit="pair",
                 description=f"top-{k} retrieval accuracy of a tile's twin among both slides' tiles") for k in KS),
        Metric(MARGIN_METRIC, "cosine margin", unit="pair",
               description="twin cosine minus the mean cosine of non-twin tiles of the same two slides"),
    )
    data_sources = ("hf", "hf-h5", "synthetic", "PATH")
    precomputed = ("features_dir",)
    leaderboard = LEADERBOARD

    def check(self, options: PlismOptions, *, data: str | None, has_model: bool) -> None:
        if options.features_dir and not Path(options.features_dir).is_dir():
            raise DataError(f"--features-dir {options.features_dir}: no such folder; expected plismbench's layout "
                            "<dir>/<slide_id>/features.npy.")

    def prepare(self, options: PlismOptions, data: str | None, *, cache_dir: str | None = None,
                progress: bool = True) -> Inputs:
        local = data not in (None, "hf", "hf-h5", "synthetic")
        if local:  # a missing folder or a file is said before anything is fetched
            plism_data.detect_folder_format(data)
        subset_spec = options.subset_spec(data)
        notes = []
        # the subset is settled before the (possibly long) download of the slides
        try:
            tile_subset = plism_data.load_tile_subset(subset_spec, cache_dir=cache_dir)
        except DataError as error:
            if not local or options.tile_subset or options.n_tiles:
                raise
            # local data offline: its own tiles, said plainly (the run is then not plismbench's setting)
            notes.append(f"the official {subset_spec}-tile subset could not be fetched ({error}); every tile of "
                         f"the local data is used instead, so the results are not comparable with plismbench's "
                         f"table. Pass --n-tiles all to choose this, or --tile-subset PATH.")
            warnings.warn(notes[-1], stacklevel=2)
            subset_spec, tile_subset = "all", None
        slides, source = open_plism(data, options.stainings, options.scanners, cache_dir, progress)
        slides = align_and_subset(slides, tile_subset)
        requests = {slide_id: DataRequest(dataset, desc=slide_id) for slide_id, dataset in slides.items()}
        context = {"slide_ids": list(slides), "n_tiles": len(next(iter(slides.values()))),
                   "tile_subset": plism_data.subset_description(subset_spec, tile_subset), "notes": notes}
        source = {**source, "synthetic": source.get("kind") == "synthetic"}
        return Inputs(requests=requests, context=context, data=source, mpp=PLISM_MPP)

    def load_precomputed(self, options: PlismOptions, data: str | None, *, cache_dir: str | None = None,
                         progress: bool = True) -> Inputs:
        subset_spec = options.subset_spec(data)
        tile_subset = plism_data.load_tile_subset(subset_spec, cache_dir=cache_dir)
        features = plism_data.PlismbenchFeatures(options.features_dir, options.stainings, options.scanners,
                                                 tile_subset)
        context = {"slide_ids": list(features.slide_ids), "n_tiles": len(features.rows), "features": features,
                   "features_identity": features.identity(),
                   "tile_subset": plism_data.subset_description(subset_spec, tile_subset)}
        # a few slides as embedding sets, for the runner's diagnostics (evaluation reads the files)
        sample = {s: EmbeddingSet(list(features.tile_ids), np.asarray(features[s])) for s in features.slide_ids[:4]}
        return Inputs(embeddings=sample, context=context, data={"kind": "features-dir", "path": str(features.root),
                                             "synthetic": False}, mpp=PLISM_MPP)

    def evaluate(self, inputs: Inputs, options: PlismOptions, context: RunContext) -> BenchResult:
        slide_ids = inputs.context["slide_ids"]
        if "features" in inputs.context:  # plismbench's files, read one slide at a time
            features: Mapping[str, Any] = inputs.context["features"]
            identity = {"features": inputs.context["features_identity"]}
        else:
            features = {s: inputs.embeddings[s].array for s in slide_ids}
            identity = {"features": {s: inputs.embeddings[s].key for s in slide_ids}}
        settings = {"protocol": PROTOCOL, "ks": list(KS), "slides": slide_ids,
                    "tile_subset": inputs.context["tile_subset"], **identity}
        device = context.device if context.device == "cpu" or context.device.startswith("cuda") else "auto"
        result = evaluate_plism(features, slide_ids, context.out_dir, settings=settings, previous=context.previous,
                                backend=options.backend, device=device, progress=context.progress)
        n_tiles = inputs.context["n_tiles"]
        protocol, detail = plism_protocol(len(slide_ids), n_tiles, inputs.synthetic)
        title = (f"PLISM robustness of {context.model_name}: {len(slide_ids)} slides, {len(result.pairs)} pairs, "
                 f"{n_tiles} tiles per slide")
        if inputs.synthetic:
            title += ("\n(simulated demo data built from real H&E tissue: NOT PLISM, not comparable with published "
                      "numbers)")
        score = None if math.isnan(result.leaderboard_score) else result.leaderboard_score
        record = {"leaderboard_score": score, "config_key": config_key(settings), "settings": settings,
                  "n_pairs": len(result.pairs), "tile_subset": inputs.context["tile_subset"],
                  "n_tiles_per_slide": n_tiles, "slides": slide_ids, "backend": options.backend}
        return BenchResult(rows=pair_rows(result.pairs), tables={"pairs.csv": result.pairs,
                                                                 "summary.csv": result.summary},
                           summary=result.summary, headline={"leaderboard_score": score}, protocol=protocol,
                           protocol_detail=detail, record=record, notes=list(inputs.context.get("notes", [])),
                           report=format_table(result.summary, result.leaderboard_score, title=title))


PLISM_MPP = 0.5  # PLISM tiles are 224 x 224 pixels at 0.5 um/px (20x)


def plism_protocol(n_slides: int, n_tiles: int, synthetic: bool) -> tuple[str, str]:
    """(protocol id, description) of a PLISM run: the published settings get their ids."""
    n_pairs = n_slides * (n_slides - 1) // 2
    if synthetic:
        return (f"plism-synthetic-{n_slides}x{n_tiles}",
                f"synthetic PLISM simulation (not PLISM): {n_slides} slides ({n_pairs:,} pairs), {n_tiles:,} tiles")
    if (n_slides, n_tiles) in OFFICIAL_SETTINGS:
        return OFFICIAL_SETTINGS[(n_slides, n_tiles)]
    return f"plism-{n_slides}x{n_tiles}", f"PLISM, {n_slides} slides ({n_pairs:,} pairs), {n_tiles:,} tiles"


def pair_task(staining_a: str, scanner_a: str, staining_b: str, scanner_b: str) -> str:
    """The task (pair group) of a slide pair: inter_scanner, inter_staining, both or same."""
    from pathbench.benches.plism_metrics import pair_group

    group = pair_group(staining_a, scanner_a, staining_b, scanner_b)
    return SAME_CONDITIONS_TASK if group is None else GROUP_TASKS[group]


def pair_rows(pairs: pd.DataFrame) -> pd.DataFrame:
    """Long-form rows of a pair table: task = pair group, unit = ``slide_a|slide_b``."""
    tasks = [pair_task(*r) for r in pairs[["staining_a", "scanner_a", "staining_b", "scanner_b"]].itertuples(
        index=False, name=None)]
    units = (pairs["slide_a"].astype(str) + "|" + pairs["slide_b"].astype(str)).tolist()
    frames = [pd.DataFrame({"task": tasks, "unit": units, "metric": metric,
                            "value": pairs[metric].to_numpy(np.float64)}) for metric in METRICS]
    return result_rows(pd.concat(frames, ignore_index=True).to_dict("records"))

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
        marker = Path(data).expanduser() / "synthetic_plism.json"
        if marker.is_file():  # the simulated demo stays simulated wherever it is read from
            source = {**source, **read_json(marker), "kind": "synthetic"}
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
    previous: Mapping[str, Any] | None = None,
    backend: str = "auto",
    device: str = "cpu",
    progress: bool = True,
    checkpoint_pairs: int = _CHECKPOINT_PAIRS,
    checkpoint_seconds: float = _CHECKPOINT_SECONDS,
) -> PlismResult:
    """Compute every slide pair's metrics, resuming a run of the same settings in ``out_dir``.

    Args:
        features: ``slide_id -> (n_tiles, dim)`` features, rows aligned across slides.
        slide_ids: the slides to pair (all unordered pairs are evaluated).
        out_dir: the run's results folder (holds the progress of an unfinished run).
        settings: JSON-able description of everything that determines the numbers; its
            hash (the config key) decides which earlier rows may be reused.
        previous: the ``run.json`` of an earlier run in ``out_dir``: when it is complete and
            has the same config key, its ``pairs.csv`` rows are reused as they are.

    Progress is kept in ``.pairs-partial-<key>.csv``, rewritten atomically every
    ``checkpoint_pairs`` pairs or ``checkpoint_seconds`` and when the run is stopped by an
    exception (Ctrl-C included); only rows of the same key are ever reused. The runner
    removes the file once the run's results are written.
    """
    from pathbench.benches import plism_metrics

    out_dir = Path(out_dir)
    key = config_key(settings)
    pairs = plism_metrics.all_pairs(slide_ids)
    done = _reusable_rows(out_dir, key, pairs, previous)
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
        if unsaved:
            write_csv(partial, _pairs_frame(rows, pairs))
    table = _pairs_frame(rows, pairs)
    summary = plism_metrics.summarise(table)
    score = plism_metrics.leaderboard_score(summary)
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


def _reusable_rows(out_dir: Path, key: str, pairs: Sequence[tuple[str, str]],
                   previous: Mapping[str, Any] | None) -> dict[tuple[str, str], dict]:
    """Rows an earlier run with the same config key left behind; stale progress is removed.

    A complete earlier run (``previous`` with this key) gives its ``pairs.csv``; an
    interrupted one its partial file. Partial files of other keys are deleted.
    """
    wanted = set(pairs)
    source: Path | None = None
    if (previous and previous.get("config_key") == key and previous.get("complete")
            and (out_dir / "pairs.csv").is_file()):
        source = out_dir / "pairs.csv"
    for stale in out_dir.glob(".pairs-partial-*.csv"):
        if stale.name != f".pairs-partial-{key[:16]}.csv":
            stale.unlink()
    partial = out_dir / f".pairs-partial-{key[:16]}.csv"
    if source is None and partial.is_file():
        source = partial
    if source is None:
        return {}
    try:
        frame = read_csv_exact(source)
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
_SHORT = {"cosine_similarity": "cosine", **{f"top_{k}_accuracy": f"top-{k}" for k in KS}, MARGIN_METRIC: "margin"}


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
