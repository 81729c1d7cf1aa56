"""The ``pathbench`` command: a thin layer over the Python API.

Commands: ``models``, ``extract``, ``evaluate``, ``leaderboard``, and any command another
package adds through the entry-point group ``pathbench.commands``.
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

from pathbench import __version__, cli_common, leaderboard
from pathbench.errors import PathbenchError

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
    parser = argparse.ArgumentParser(
        prog="pathbench", description="Benchmark-first evaluation of pathology foundation models."
    )
    parser.add_argument("--version", action="version", version=f"pathbench {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    models = commands.add_parser("models", help="list every registered model")
    models.add_argument("pattern", nargs="?", help="filter names with wildcards, e.g. 'h*'")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=_models)

    extract = commands.add_parser("extract", help="embed a dataset into the feature cache (and export it)")
    cli_common.add_model_arguments(extract, required=True)
    extract.add_argument("--data", required=True, help="a folder of image files")
    extract.add_argument("--out", help="also write embeddings.npy and item_ids.txt to this folder")
    # eva interoperability: --format eva writes eva's offline embeddings (manifest.csv + .pt files).
    extract.add_argument("--format", choices=("npy", "eva"), default="npy",
                         help="npy (default) or eva: --data is eva's DATA_ROOT (or synthetic), --out is "
                              "EMBEDDINGS_ROOT/MODEL_NAME, one folder per task")
    extract.add_argument("--task", help="with --format eva: bach, crc, mhist, pcam (comma-separated; default all found)")
    extract.set_defaults(func=_extract)

    evaluate = commands.add_parser(
        "evaluate", help="run a benchmark: --bench plism | hest | eva[:tasks]", add_help=False
    )
    evaluate.add_argument("--bench", required=True)

    board = commands.add_parser("leaderboard", help="tables, plots and reports from your runs")
    leaderboard.add_arguments(board)
    board.set_defaults(func=leaderboard.run)

    for entry_point in metadata.entry_points(group=COMMANDS_GROUP):
        try:
            entry_point.load()(commands)
        except Exception as exc:  # a broken plugin command must not break the others
            warnings.warn(f"command plugin {entry_point.name!r} failed to load ({type(exc).__name__}: {exc}).",
                          stacklevel=1)
    return parser


def _models(args: argparse.Namespace) -> int:
    from pathbench.extractors import count_parameters, list_specs

    rows = []
    for spec in list_specs(args.pattern):
        try:
            params = count_parameters(spec) if spec.embed_dim else None
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


def _extract(args: argparse.Namespace) -> int:
    if args.format == "eva":
        from pathbench.benches.eva import extract_command

        return extract_command(args)
    from pathbench import _io
    from pathbench.data.base import ImageFolderDataset
    from pathbench.features import extract_features, init_distributed_from_env

    distributed = init_distributed_from_env()
    extractor = cli_common.extractor_from_args(args)
    dataset = ImageFolderDataset(args.data)
    features = extract_features(extractor, dataset, **cli_common.extraction_options(args))
    if distributed and torch_rank() != 0:  # every rank extracted its shards; one reports and exports
        return 0
    print(f"{len(features)} embeddings of dim {features.shape[1]} in {features.path}")
    if args.out:
        out = Path(args.out)
        _io.save_npy(out / "embeddings.npy", features.array)
        _io.write_text(out / "item_ids.txt", "\n".join(features.item_ids) + "\n")
        print(f"wrote {out / 'embeddings.npy'} and {out / 'item_ids.txt'}")
    return 0


def torch_rank() -> int:
    """This process's rank in a ``torchrun`` job (0 outside one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _evaluate(argv: list[str]) -> int:
    """Two-stage parsing: ``--bench`` decides which benchmark's flags exist."""
    from pathbench.benches import BENCHES, load_bench, parse_bench

    pre = argparse.ArgumentParser(prog="pathbench evaluate", add_help=False)
    pre.add_argument("--bench")
    known, _ = pre.parse_known_args(argv)
    if not known.bench:
        if any(a in ("-h", "--help") for a in argv):
            print(f"usage: pathbench evaluate --bench {{{','.join(BENCHES)}}} [options]; "
                  "add --help after --bench NAME for that benchmark's options.")
            return 0
        raise PathbenchError(f"pathbench evaluate needs --bench, one of {', '.join(BENCHES)}.")
    name, options = parse_bench(known.bench)
    bench = load_bench(name)
    parser = argparse.ArgumentParser(prog=f"pathbench evaluate --bench {name}", description=bench.__doc__)
    parser.add_argument("--bench", required=True)
    cli_common.add_evaluate_arguments(parser)
    bench.add_arguments(parser)
    args = parser.parse_args(argv)
    return int(bench.run(args, options) or 0)


if __name__ == "__main__":
    sys.exit(main())
