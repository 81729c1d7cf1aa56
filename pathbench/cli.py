"""The ``pathbench`` command: a thin layer over the Python API.

Commands: ``models``, ``benchmarks``, ``extract``, ``evaluate``, ``leaderboard``, and any
command another package adds through the entry-point group ``pathbench.commands``. Flags
of ``evaluate`` are derived from the option dataclasses of the runner and of the chosen
benchmark (:mod:`pathbench.cli_options`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from pathbench import __version__
from pathbench.errors import PathbenchError
from pathbench.settings import DEFAULT_RESULTS

COMMANDS_GROUP = "pathbench.commands"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pathbench`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.simplefilter("default", UserWarning)
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        if argv and argv[0] == "evaluate":
            return _evaluate(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help()
            return 1
        return int(args.func(args) or 0)
    except PathbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed work is kept and the next run resumes from it.", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    from pathbench.cli_options import add_options
    from pathbench.runner import MODEL_OPTIONS, RunOptions

    parser = argparse.ArgumentParser(
        prog="pathbench", description="Benchmark-first evaluation of pathology foundation models."
    )
    parser.add_argument("--version", action="version", version=f"pathbench {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    models = commands.add_parser("models", help="list every registered model")
    models.add_argument("pattern", nargs="?", help="filter names with wildcards, e.g. 'h*'")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.add_argument("--params", action="store_true", help="also count the parameters of models that do not "
                        "record them (plugin and generic specs; builds them on the meta device)")
    models.set_defaults(func=_models)

    benchmarks = commands.add_parser("benchmarks", help="list every registered benchmark")
    benchmarks.add_argument("--json", action="store_true", help="machine-readable output")
    benchmarks.set_defaults(func=_benchmarks)

    extract = commands.add_parser("extract", help="embed a dataset into the feature cache (and export it)")
    add_options(extract.add_argument_group("model"), RunOptions, only=MODEL_OPTIONS)
    extract.add_argument("--data", required=True, help="a folder of image files (with --format FMT: the "
                         "benchmark's data, e.g. eva's DATA_ROOT or synthetic)")
    extract.add_argument("--out", help="also write embeddings.npy and item_ids.txt to this folder")
    extract.add_argument("--format", default="npy",
                         help="npy (default), or a benchmark's export format, e.g. eva: --data is eva's DATA_ROOT "
                              "(or synthetic), --out is EMBEDDINGS_ROOT/MODEL_NAME, one folder per task")
    extract.add_argument("--bench", help="with --format FMT: the benchmark whose data is exported (default: the one "
                                         "that exports FMT)")
    extract.add_argument("--task", help="with --format eva: bach, crc, mhist, pcam (comma-separated; default all found)")
    extract.set_defaults(func=_extract)

    evaluate = commands.add_parser("evaluate", help="run a benchmark: --bench NAME[:OPTIONS] (see `pathbench "
                                                    "benchmarks`)", add_help=False)
    evaluate.add_argument("--bench", required=True)

    board = commands.add_parser("leaderboard", help="tables, plots and reports from your runs")
    _leaderboard_arguments(board)
    board.set_defaults(func=_leaderboard)

    for entry_point in metadata.entry_points(group=COMMANDS_GROUP):
        try:
            entry_point.load()(commands)
        except Exception as exc:  # a broken plugin command must not break the others
            warnings.warn(f"command plugin {entry_point.name!r} failed to load ({type(exc).__name__}: {exc}).",
                          stacklevel=1)
    return parser


# ------------------------------------------------------------------------------------
# models, benchmarks
# ------------------------------------------------------------------------------------
def _models(args: argparse.Namespace) -> int:
    from pathbench.extractors import list_specs, parameter_count

    rows = []
    for spec in list_specs(args.pattern):
        try:
            params = parameter_count(spec, compute=args.params) if spec.embed_dim else None
        except Exception as exc:  # a plugin spec that cannot be built is still listed
            warnings.warn(f"cannot build {spec.name} to count its parameters: {exc}", stacklevel=1)
            params = None
        rows.append(
            {
                "name": spec.name,
                "origin": spec.origin,
                "family": spec.family,
                "hub_id": spec.hub_id,
                "dim": spec.embed_dim,
                "num_prefix_tokens": spec.num_prefix_tokens,
                "default_pooling": spec.default_pooling,
                "bench_pooling": spec.bench_pooling,
                "params": params,
                "licence": spec.licence,
                "gated": spec.gated,
                "recommended_precision": spec.recommended_precision,
                "mpp": spec.mpp,
                "description": spec.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'name':<28} {'origin':<12} {'dim':>5} {'params':>15} {'gated':<5}  licence"
    print(header)
    print("-" * len(header))
    for row in rows:
        params = f"{row['params']:,}" if row["params"] is not None else "?"
        print(f"{row['name']:<28} {row['origin']:<12} {row['dim']:>5} {params:>15} {'yes' if row['gated'] else 'no':<5}  "
              f"{row['licence']}")
    return 0


def _benchmarks(args: argparse.Namespace) -> int:
    from pathbench.benches import list_benchmarks

    rows = [b.describe() for b in list_benchmarks()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        inputs = "model" + (f" or precomputed ({', '.join(row['precomputed_inputs'])})"
                            if row["precomputed_inputs"] else "")
        print(f"{row['name']} ({row['protocol']}): {row['title']}")
        print(f"  tasks:   {', '.join(t['label'] for t in row['tasks']) or '-'}")
        print(f"  metrics: {', '.join(m['name'] for m in row['metrics'])}; headline: {', '.join(row['headline'])}")
        print(f"  data:    {', '.join(row['data_sources']) or '-'}; inputs: {inputs}")
    return 0


# ------------------------------------------------------------------------------------
# extract
# ------------------------------------------------------------------------------------
def _extract(args: argparse.Namespace) -> int:
    from pathbench.cli_options import options_from_args
    from pathbench.runner import RunOptions

    if args.format != "npy":
        from pathbench.benches import get_benchmark, list_benchmarks
        from pathbench.runner import extract

        if not args.out:
            raise PathbenchError(f"pathbench extract --format {args.format} needs --out (for eva: "
                                 "EMBEDDINGS_ROOT/MODEL_NAME; each task is written to <out>/<task folder>/).")
        if args.bench:
            bench = get_benchmark(args.bench).name
        else:
            exporters = [b.name for b in list_benchmarks() if args.format in b.export_formats]
            if not exporters:
                raise PathbenchError(f"no benchmark exports --format {args.format}; formats: npy, "
                                     + ", ".join(sorted({f for b in list_benchmarks() for f in b.export_formats})))
            bench = exporters[0]
        run = options_from_args(RunOptions, args)
        options = {k: getattr(run, k) for k in ("weights", "pooling", "precision", "device", "batch_size",
                                                 "num_workers", "cache_dir", "trust_remote_code", "progress",
                                                 "verify")}
        if args.task:
            options["tasks"] = args.task
        extract(args.model, bench, args.data, args.out, args.format, **options)
        return 0
    if args.task or args.bench:
        raise PathbenchError("--task and --bench choose what a benchmark exports: they need --format (e.g. --format "
                             "eva); without it, --data is a folder of image files.")
    if not args.model:
        raise PathbenchError("pathbench extract needs --model NAME (see `pathbench models`).")
    from pathbench import _io
    from pathbench.data.base import ImageFolderDataset
    from pathbench.features import extract_features, init_distributed_from_env, rank_and_world
    from pathbench.runner import check_writable, load_run_extractor
    from pathbench.settings import cache_root

    run = options_from_args(RunOptions, args, data=args.data, out=args.out)
    pooling = run.pooling or _default_pooling(run.model)  # an unknown model name is said first
    if args.out:
        check_writable(Path(args.out), "--out")
    check_writable(cache_root(run.cache_dir), "--cache-dir")
    distributed = init_distributed_from_env()
    dataset = ImageFolderDataset(args.data)
    extractor = load_run_extractor(run, pooling)
    features = extract_features(extractor, dataset, **run.extraction())
    if distributed and rank_and_world()[0] != 0:  # every rank extracted its shards; one reports and exports
        return 0
    print(f"{len(features)} embeddings of dim {features.shape[1]} in {features.path}")
    if args.out:
        out = Path(args.out)
        _io.save_npy(out / "embeddings.npy", features.array)
        _io.write_text(out / "item_ids.txt", "\n".join(features.item_ids) + "\n")
        print(f"wrote {out / 'embeddings.npy'} and {out / 'item_ids.txt'}")
    return 0


def _default_pooling(model: str) -> str:
    from pathbench.extractors import get_spec

    return get_spec(model).default_pooling


# ------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------
def _evaluate(argv: list[str]) -> int:
    """Two-stage parsing: ``--bench`` decides which benchmark's flags exist."""
    from pathbench.benches import benchmark_names, parse_bench
    from pathbench.cli_options import add_options, options_from_args
    from pathbench.runner import MODEL_OPTIONS, RunOptions, run_benchmark

    pre = argparse.ArgumentParser(prog="pathbench evaluate", add_help=False)
    pre.add_argument("--bench")
    known, _ = pre.parse_known_args(argv)
    if not known.bench:
        names = benchmark_names()
        if any(a in ("-h", "--help") for a in argv):
            print(f"usage: pathbench evaluate --bench {{{','.join(names)}}} [options]; "
                  "add --help after --bench NAME for that benchmark's options (`pathbench benchmarks` lists them).")
            return 0
        raise PathbenchError(f"pathbench evaluate needs --bench, one of {', '.join(names)}.")
    benchmark, inline = parse_bench(known.bench)
    module_doc = sys.modules[type(benchmark).__module__].__doc__ or benchmark.description
    parser = argparse.ArgumentParser(prog=f"pathbench evaluate --bench {benchmark.name}", description=module_doc,
                                     epilog=benchmark.epilog or None, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True)
    add_options(parser.add_argument_group("model"), RunOptions, only=MODEL_OPTIONS)
    add_options(parser.add_argument_group("data and results"), RunOptions, only=("data", "out", "model_name"))
    add_options(parser.add_argument_group(benchmark.name), benchmark.Options)
    args = parser.parse_args(argv)
    run = options_from_args(RunOptions, args)
    values = {}
    if inline is not None:
        if benchmark.inline_option is None:
            raise PathbenchError(f"--bench {benchmark.name} takes no options after ':' (got {inline!r}).")
        flag_value = getattr(args, benchmark.inline_option, None)
        if flag_value not in (None, inline):
            flag = "--" + benchmark.inline_option.replace("_", "-")
            raise PathbenchError(f"--bench {benchmark.name}:{inline} and {flag} {flag_value} disagree; give the "
                                 f"{benchmark.inline_option} once.")
        values[benchmark.inline_option] = inline
    options = options_from_args(benchmark.Options, args, **values)
    run_benchmark(benchmark, run, options, echo=True)
    return 0


# ------------------------------------------------------------------------------------
# leaderboard
# ------------------------------------------------------------------------------------
def _leaderboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bench", help="benchmark whose results to tabulate (see `pathbench benchmarks`)")
    parser.add_argument("--all", action="store_true", help="one table per registered benchmark, written to --out-dir")
    parser.add_argument("--results", default=str(DEFAULT_RESULTS),
                        help="results root holding <bench>/<model>/ folders (default ./pathbench-results)")
    parser.add_argument("--reference", default=None,
                        help="published reference rows: paper, plismbench (PLISM only) or none (default: the "
                             "benchmark's)")
    parser.add_argument("--format", default="md", choices=("md", "csv", "latex", "html"),
                        help="md (default), csv, latex or html (full report)")
    parser.add_argument("--out", default=None, help="write to this file instead of printing")
    parser.add_argument("--out-dir", default=None, help="with --all: write <bench>.<format> files and a README.md "
                                                        "index into this folder")
    parser.add_argument("--plots", default=None, metavar="DIR", help="also write the plots as PNG files into DIR")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--check-references", action="store_true",
                        help="recompute every published average from its row and report disagreements")


def _leaderboard(args: argparse.Namespace) -> int:
    from pathbench import leaderboard

    if args.n_boot < 1:
        raise PathbenchError(f"--n-boot must be a positive number of resamples; got {args.n_boot}.")
    if args.check_references:
        checks = leaderboard.check_reference_averages()
        for check in checks:
            if not check.ok:
                print(check.describe())
        print(f"{sum(c.ok for c in checks)} of {len(checks)} published averages match their rows within "
              f"{leaderboard.AVERAGE_TOLERANCE}.")
        if not args.bench and not args.all:
            return 0
    if args.all:
        if not args.out_dir:
            raise PathbenchError("pathbench leaderboard --all writes one file per benchmark: give --out-dir DIR.")
        written = leaderboard.publish(args.out_dir, args.results, fmt=args.format, n_boot=args.n_boot)
        print(f"wrote {', '.join(str(p) for p in written)}")
        return 0
    if not args.bench:
        raise PathbenchError("pathbench leaderboard needs --bench NAME (or --all --out-dir DIR); "
                             "`pathbench benchmarks` lists the names.")
    board = leaderboard.build_leaderboard(args.bench, args.results, args.reference, n_boot=args.n_boot)
    text = leaderboard.render(board, args.format, plots_dir=args.plots)
    if args.out:
        from pathbench._io import write_text

        write_text(args.out, text)
        print(f"wrote {args.out} ({len(board.entries)} rows, {len(board.groups)} protocol(s), "
              f"{len(board.skipped)} skipped run(s))")
    else:
        sys.stdout.write(text)
    for skipped in board.skipped:
        print(f"warning: {skipped.describe()}", file=sys.stderr)
    if not board.runs and not board.skipped:
        print(f"note: no {board.bench} run under {args.results} (expected <results>/{board.bench}/<model>/run.json); "
              "the table shows the reference rows only.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
