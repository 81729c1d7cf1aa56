"""The runner: the one place that turns a model into a benchmark's embeddings.

``evaluate(model, bench, data, out, **options)`` resolves the benchmark from the registry,
checks every option, asks the benchmark what to embed (or reads precomputed embeddings),
embeds it through the content-keyed feature cache, hands the embeddings to the
benchmark's pure :meth:`~pathbench.benches.base.Benchmark.evaluate`, and writes the
results schema (:mod:`pathbench.results`). The command line is a thin layer over it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathbench.benches import get_benchmark, parse_bench
from pathbench.benches.base import Benchmark, Granularity, Inputs, RunContext, option
from pathbench.errors import PathbenchError
from pathbench.locks import folder_lock
from pathbench.settings import DEFAULT_RESULTS, cache_root

if TYPE_CHECKING:  # pandas (through the results schema) is imported when a run starts, not for `--help`
    from pathbench.results import Results

PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
POOLING_CHOICES = ("cls", "mean", "cls+mean")


@dataclasses.dataclass
class RunOptions:
    """What every benchmark run takes besides the benchmark's own options."""

    model: str | None = option(help="registry name, timm:<arch> or hf:<repo> (see `pathbench models`)")
    weights: str | None = option(help="local weights (safetensors or torch state dict) instead of the hub")
    pooling: str | None = option(choices=POOLING_CHOICES,
                                 help="embedding pooling (default: the benchmark's default for the model)")
    precision: str = option("auto", choices=PRECISION_CHOICES,
                            help="autocast precision; auto (default): the model card's on a GPU, fp32 on a CPU")
    device: str = option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    batch_size: int = option(64, help="tiles per forward pass (default 64)")
    num_workers: int | None = option(help="DataLoader workers (default: 0 on CPU, else up to 8)")
    cache_dir: str | None = option(help="feature cache (default $PATHBENCH_CACHE or ~/.cache/pathbench)")
    trust_remote_code: bool = option(False, help="allow models that run code from their hub repository")
    progress: bool = option(True, flag="--no-progress", help="hide progress bars")
    verify: bool = option(False, help="re-hash cached embeddings (sha256) before using them; a corrupt entry is "
                                      "recomputed")
    data: str | None = option(help="hf (download), synthetic (offline demo data) or a local PATH")
    out: str | None = option(help="results folder (default ./pathbench-results/<bench>/<model>/)")
    model_name: str | None = option(help="name for results computed from precomputed embeddings (no --model)")

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PathbenchError(f"--batch-size must be a positive integer (tiles per forward pass); "
                                 f"got {self.batch_size!r}.")
        if self.num_workers is not None and self.num_workers < 0:
            raise PathbenchError(f"--num-workers must be 0 or more; got {self.num_workers}.")
        if self.precision not in PRECISION_CHOICES:
            raise PathbenchError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}; got {self.precision!r}.")
        if self.pooling is not None and self.pooling not in POOLING_CHOICES:
            raise PathbenchError(f"--pooling must be one of {', '.join(POOLING_CHOICES)}; got {self.pooling!r}.")

    @property
    def label(self) -> str:
        """The name results are filed under: ``model_name``, else ``model``."""
        label = self.model_name or self.model
        if not label:
            raise PathbenchError("no model given: pass --model NAME, or --model-name NAME with precomputed embeddings.")
        return label

    def extraction(self) -> dict[str, Any]:
        """Keyword arguments of :func:`pathbench.features.extract_features`."""
        return {"cache_dir": self.cache_dir, "batch_size": self.batch_size, "num_workers": self.num_workers,
                "progress": self.progress, "shard_size": max(self.batch_size, 1024 - 1024 % self.batch_size),
                "verify": self.verify}


RUN_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(RunOptions))
MODEL_OPTIONS = ("model", "weights", "pooling", "precision", "device", "batch_size", "num_workers", "cache_dir",
                 "trust_remote_code", "progress", "verify")


def safe_name(label: str) -> str:
    """A folder-safe version of a model label (``timm:vit_b`` -> ``timm_vit_b``)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("_") or "model"


def results_dir(run: RunOptions, bench: str) -> Path:
    """``out``, else ``./pathbench-results/<bench>/<model>/``."""
    return Path(run.out) if run.out else DEFAULT_RESULTS / bench / safe_name(run.label)


# ------------------------------------------------------------------------------------
# The Python API
# ------------------------------------------------------------------------------------
def evaluate(model: str | None = None, bench: str = "plism", data: str | None = None, out: str | os.PathLike | None = None,
             **options: Any) -> Results:
    """Run a benchmark and write its results; the Python form of ``pathbench evaluate``.

    Args:
        model: a registry name (``"h0-mini"``, ``"timm:<arch>"``, ``"hf:<repo>"``); None with
            precomputed embeddings (then pass ``model_name``).
        bench: a registered benchmark, optionally with its inline option (``"eva:bach,crc"``).
        data: ``"hf"``, ``"synthetic"`` or a local path (the benchmark says which it takes).
        out: results folder (default ``./pathbench-results/<bench>/<model>/``).
        **options: run options (:class:`RunOptions`: ``pooling``, ``precision``, ``device``,
            ``batch_size``, ``cache_dir``, ``model_name``, ...) and the benchmark's own
            (``pathbench benchmarks --json`` lists them).

    Returns:
        :class:`~pathbench.results.Results` (``summary``, ``headline``, ``to_pandas()``).
    """
    benchmark, inline = parse_bench(bench)
    run_values = {k: v for k, v in options.items() if k in RUN_OPTION_NAMES}
    bench_values = {k: v for k, v in options.items() if k not in RUN_OPTION_NAMES}
    if inline is not None:
        bench_values = {**_inline_values(benchmark, inline), **bench_values}
    run = RunOptions(model=model, data=data, out=None if out is None else str(out), **run_values)
    return run_benchmark(benchmark, run, benchmark.make_options(**bench_values))


def _inline_values(benchmark: Benchmark, inline: str) -> dict[str, Any]:
    if benchmark.inline_option is None:
        raise PathbenchError(f"--bench {benchmark.name} takes no options after ':' (got {inline!r}).")
    return {benchmark.inline_option: inline}


def run_benchmark(benchmark: Benchmark | str, run: RunOptions, options: Any, *, echo: bool = False) -> Results:
    """Evaluate ``benchmark`` with resolved options; see :func:`evaluate`. ``echo`` prints
    the benchmark's report (the command line does)."""
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    started = time.time()
    precomputed = benchmark.uses_precomputed(options)
    if precomputed and run.model:
        names = ", ".join(f"--{n.replace('_', '-')}" for n in benchmark.precomputed)
        raise PathbenchError(f"{names} evaluates precomputed embeddings: drop --model and name the run with "
                             "--model-name.")
    if precomputed and not run.model_name:
        names = ", ".join(f"--{n.replace('_', '-')}" for n in benchmark.precomputed)
        raise PathbenchError(f"{names} needs --model-name NAME to file the results under.")
    if not precomputed and not run.model:
        hint = (f", or precomputed embeddings ({', '.join('--' + n.replace('_', '-') for n in benchmark.precomputed)})"
                if benchmark.precomputed else "")
        raise PathbenchError(f"--bench {benchmark.name} needs --model NAME (see `pathbench models`){hint}.")
    benchmark.check(options, data=run.data, has_model=not precomputed)
    out = results_dir(run, benchmark.name)
    check_writable(out, "--out")
    check_writable(cache_root(run.cache_dir), "--cache-dir")
    with folder_lock(out, "evaluation"):
        return _run_locked(benchmark, run, options, precomputed, out, started, echo)


def _run_locked(benchmark: Benchmark, run: RunOptions, options: Any, precomputed: bool, out: Path, started: float,
                echo: bool) -> Results:
    from pathbench._io import remove_stale_temporaries
    from pathbench.results import read_run_json, write_run

    remove_stale_temporaries(out)  # atomic writes a kill cut short (never a live writer's)
    extractor, pooling, throughput, resolution = None, None, None, None
    if precomputed:
        inputs = benchmark.load_precomputed(options, run.data, cache_dir=run.cache_dir, progress=run.progress)
    else:
        from pathbench.extractors import get_spec

        spec = get_spec(run.model)  # an unknown name fails here, before any data is read
        pooling = run.pooling or benchmark.pooling or spec.pooling_for(benchmark.name)
        inputs = benchmark.prepare(options, run.data, cache_dir=run.cache_dir, progress=run.progress)
        extractor = load_run_extractor(run, pooling, inputs)
        resolution = _resolution_note(extractor.spec, inputs)
        throughput = embed_inputs(extractor, inputs, pooling, run)

    health = embedding_health_record(inputs)
    if health and health["degenerate"]:
        import warnings

        warnings.warn(f"{run.label}: degenerate embeddings ({'; '.join(health['reasons'])}); its scores on this "
                      "benchmark say nothing about robustness or quality.", stacklevel=2)
    previous = read_run_json(out)
    context = RunContext(out_dir=out, previous=previous, device=_head_device(run.device), progress=run.progress,
                         model_name=run.label)
    result = benchmark.evaluate(inputs, options, context)
    if resolution:
        result.notes.append(resolution)
    if health and health["degenerate"]:
        result.notes.append(f"degenerate embeddings: {'; '.join(health['reasons'])} (see docs/diagnostics.md)")
    record = _run_record(benchmark, run, options, inputs, result, extractor, pooling, throughput, started)
    record["embedding_health"] = health
    record["degenerate"] = bool(health and health["degenerate"])
    record["resolution"] = {"data_mpp": inputs.mpp, "model_mpp": extractor.spec.mpp if extractor else None,
                            "warning": resolution}
    results = write_run(out, bench=benchmark.name, protocol=result.protocol, rows=result.rows, tables=result.tables,
                        record=record, headline=result.headline, summary=result.summary, model=run.label,
                        previous=previous)
    for progress_file in out.glob(".*-partial-*"):  # a benchmark's resumable progress, now in the results
        progress_file.unlink(missing_ok=True)
    if echo:
        print(result.report)
        for note in result.notes:
            print(f"note: {note}")
        files = ", ".join([*result.tables, "results.csv", "run.json"])
        print(f"\nresults: {out}/ ({files})")
    return results


def check_writable(path: Path, flag: str) -> None:
    """Fail now, not after the run, when ``path`` cannot be created or written."""
    probe = Path(path).expanduser().absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PathbenchError(f"{flag} {path}: {probe} is a file, so no folder can be made there; choose another "
                             f"{flag}.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise PathbenchError(f"{flag} {path}: cannot write to {probe} ({error.strerror or error}); choose a folder "
                             f"you can write with {flag}.") from None


def _head_device(device: str) -> str:
    """Heads and metrics run on CUDA or the CPU (MPS lacks some of their operations)."""
    return "cpu" if device == "mps" else device


# ------------------------------------------------------------------------------------
# Model -> embeddings
# ------------------------------------------------------------------------------------
def load_run_extractor(run: RunOptions, pooling: str, inputs: Inputs | None = None) -> Any:
    """Load the extractor ``run`` describes; under ``torchrun`` each rank takes its own GPU."""
    from pathbench.extractors import load_extractor

    device = run.device
    if device == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    extractor = load_extractor(run.model, weights=run.weights, device=device, precision=run.precision,
                               pooling=pooling, trust_remote_code=run.trust_remote_code)
    if inputs is not None and inputs.input_size is not None:
        height, width = inputs.input_size
        if height != width:
            raise PathbenchError(f"a fixed input size must be square for now; got {height} x {width}.")
        extractor = extractor.with_input_size(height, width)
    return extractor


def _resolution_note(spec: Any, inputs: Inputs) -> str | None:
    """The model card's training resolution against the data's, warned about once."""
    import warnings

    from pathbench.extractors import resolution_warning

    message = resolution_warning(spec, inputs.mpp)
    if message:
        warnings.warn(message, stacklevel=3)
    return message


def embed_inputs(extractor: Any, inputs: Inputs, pooling: str, run: RunOptions) -> dict[str, Any]:
    """Embed every requested dataset through the feature cache into ``inputs.embeddings``.

    Returns the measured throughput: tiles per second over the tiles this call computed, or
    the rate recorded by the cache entries when everything was cached.
    """
    from pathbench.benches.base import EmbeddingSet
    from pathbench.extractors.base import GRID
    from pathbench.features import barrier, extract_features, local_extraction, rank_and_world

    computed, seconds, recorded = 0, 0.0, []
    rank, world = rank_and_world()
    bags = [key for key, request in inputs.requests.items() if request.granularity is Granularity.BAG]
    if world > 1 and bags:  # under torchrun whole slides go to the ranks in turn, then everyone reads them
        with local_extraction():
            for key in bags[rank::world]:
                request = inputs.requests[key]
                extract_features(extractor, request.dataset, pooling=pooling, desc=request.desc or key,
                                 **run.extraction())
                request.dataset.close()
        barrier()
    inputs.normalisation = (tuple(extractor.spec.mean), tuple(extractor.spec.std))
    if inputs.wants_encoder:
        inputs.encoder = extractor.forward_grid
    for key, request in inputs.requests.items():
        dataset = request.dataset
        grid = request.granularity is Granularity.GRID
        try:
            with local_extraction() if request.granularity is Granularity.BAG and world > 1 else nullcontext():
                features = extract_features(extractor, dataset, pooling=GRID if grid else pooling,
                                            desc=request.desc or key, **run.extraction())
        finally:
            close = getattr(dataset, "close", None)
            if callable(close):
                close()
        array = features.array
        if grid:  # stored flattened; a view, not a copy
            array = array.reshape(len(features), extractor.spec.embed_dim, *extractor.grid_size())
        coords = getattr(dataset, "coords", None) if request.granularity is Granularity.BAG else None
        inputs.embeddings[key] = EmbeddingSet(features.item_ids, array, coords=coords, key=features.key)
        computed += features.computed
        seconds += features.seconds
        if features.tiles_per_s:
            recorded.append((len(features), features.tiles_per_s))
    if computed and seconds > 0:
        rate, basis = computed / seconds, "this run"
    elif recorded:
        total = sum(n for n, _ in recorded)
        rate, basis = total / sum(n / r for n, r in recorded), "the feature cache (recorded when it was filled)"
    else:
        rate, basis = None, None
    return {"tiles_per_s": rate, "tiles": sum(len(e) for e in inputs.embeddings.values()),
            "tiles_computed": computed, "measured_by": basis, "batch_size": run.batch_size,
            "device": str(extractor.device)}


def extract(model: str, bench: str, data: str | None, out: str | os.PathLike, fmt: str, **options: Any) -> list[Path]:
    """Embed a benchmark's data and write it in another tool's format (``pathbench extract --format``).

    Under ``torchrun`` every rank embeds its share (tiles by shards, slides whole) and rank 0
    writes the files."""
    benchmark, inline = parse_bench(bench)
    if fmt not in benchmark.export_formats:
        raise PathbenchError(f"--bench {benchmark.name} cannot export --format {fmt}; it exports "
                             f"{', '.join(benchmark.export_formats) or 'nothing'}.")
    run_values = {k: v for k, v in options.items() if k in RUN_OPTION_NAMES}
    bench_values = {k: v for k, v in options.items() if k not in RUN_OPTION_NAMES}
    if inline is not None:
        bench_values = {**_inline_values(benchmark, inline), **bench_values}
    run = RunOptions(model=model, data=data, out=str(out), **run_values)
    bench_options = benchmark.make_options(**bench_values)
    benchmark.check(bench_options, data=run.data, has_model=True)
    from pathbench.extractors import get_spec

    spec = get_spec(model)
    pooling = run.pooling or benchmark.pooling or spec.pooling_for(benchmark.name)
    inputs = benchmark.prepare(bench_options, run.data, cache_dir=run.cache_dir, progress=run.progress)
    from pathbench.features import init_distributed_from_env, rank_and_world

    init_distributed_from_env()
    extractor = load_run_extractor(run, pooling, inputs)
    embed_inputs(extractor, inputs, pooling, run)
    if rank_and_world()[0] != 0:
        return []
    return benchmark.export(inputs, Path(out), fmt, progress=run.progress)


# ------------------------------------------------------------------------------------
# run.json
# ------------------------------------------------------------------------------------
def _run_record(benchmark: Benchmark, run: RunOptions, options: Any, inputs: Inputs, result: Any, extractor: Any,
                pooling: str | None, throughput: dict[str, Any] | None, started: float) -> dict[str, Any]:
    from pathbench.provenance import provenance

    record = provenance(extractor, pooling)
    if extractor is None:
        record["model"] = {"name": run.label, "source": "precomputed embeddings"}
    else:
        record["model"]["embed_dim"] = extractor.output_dim(pooling)
        if throughput:
            record["model"]["tiles_per_s"] = throughput["tiles_per_s"]
    dims = sorted({int(e.array.shape[1]) for e in inputs.embeddings.values() if e.array.ndim >= 2})
    record.update(
        bench=benchmark.name,
        benchmark={"name": benchmark.name, "protocol": benchmark.protocol, "title": benchmark.title},
        protocol=result.protocol,
        protocol_detail=result.protocol_detail,
        model_name=run.label,
        embedding_dim=dims[0] if len(dims) == 1 else dims,
        data=inputs.data,
        data_id=data_id(inputs.data),
        synthetic=inputs.synthetic,
        headline=result.headline,
        throughput=throughput,
        options=_jsonable_options(options),
        run_options={k: getattr(run, k) for k in ("data", "precision", "device", "batch_size", "pooling")},
    )
    record.update(result.record)
    record["notes"] = list(result.notes) + list(result.record.get("notes", []))
    record["elapsed_s"] = round(time.time() - started, 2)
    return record


HEALTH_SETS, HEALTH_ROWS = 16, 4096


def embedding_health_record(inputs: Inputs) -> dict[str, Any] | None:
    """Embedding-health diagnostics (:mod:`pathbench.diagnostics`) of the embeddings a run has.

    Computed within each embedded dataset (a slide, a split, a sample: so PLISM's twins of
    different slides never count as "different items"), on up to 16 datasets of up to 4,096
    rows (a seeded sample), then averaged weighted by rows. The run is flagged degenerate when
    at least half the datasets are.
    """
    import numpy as np

    from pathbench.diagnostics import embedding_health

    sets = [e for e in inputs.embeddings.values() if e.array.ndim == 2 and len(e) >= 2][:HEALTH_SETS]
    if not sets:
        return None
    rng = np.random.default_rng(0)
    results = []
    for embedding_set in sets:
        array = embedding_set.array
        if len(array) > HEALTH_ROWS:
            array = array[np.sort(rng.choice(len(array), HEALTH_ROWS, replace=False))]
        results.append(embedding_health(np.asarray(array, dtype=np.float32)))
    weights = np.array([h.n_items for h in results], dtype=np.float64)

    def average(name: str) -> float | None:
        values = np.array([getattr(h, name) for h in results], dtype=np.float64)
        keep = np.isfinite(values)
        return float(np.average(values[keep], weights=weights[keep])) if keep.any() else None

    flagged = [h for h in results if h.degenerate]
    return {"datasets": len(results), "items": int(weights.sum()), "mean_cosine": average("mean_cosine"),
            "participation_ratio": average("participation_ratio"), "effective_rank": average("effective_rank"),
            "near_constant_fraction": average("near_constant_fraction"), "degenerate_datasets": len(flagged),
            "degenerate": 2 * len(flagged) >= len(results),
            "reasons": list(flagged[0].reasons) if flagged else [], "thresholds": results[0].thresholds.to_dict()}


def data_id(data: dict[str, Any]) -> str:
    """What identifies the evaluated data (paired tests compare only runs with the same id):
    the data's own fingerprint when it records one, else a digest of its record without
    local paths."""
    if data.get("fingerprint"):
        return str(data["fingerprint"])
    stripped = {k: v for k, v in data.items() if k != "path"}
    return "data:" + hashlib.sha256(json.dumps(stripped, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _jsonable_options(options: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(options):
        return {}
    return json.loads(json.dumps(dataclasses.asdict(options), default=str))
