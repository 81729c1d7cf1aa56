"""What every benchmark command shares: common flags, the extractor, the results folder."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from pathbench.errors import PathbenchError
from pathbench.extractors import POOLINGS, PRECISIONS, Extractor, get_spec, load_extractor

DEFAULT_RESULTS = Path("pathbench-results")


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Flags choosing and running the feature extractor."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=required, help="registry name, timm:<arch> or hf:<repo> (see `pathbench models`)")
    group.add_argument("--weights", help="local weights (safetensors or torch state dict) instead of the hub")
    group.add_argument("--pooling", choices=POOLINGS, help="embedding pooling (default: the benchmark's default for the model)")
    group.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="autocast precision (default fp32)")
    group.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    group.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass (default 64)")
    group.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, else up to 8)")
    group.add_argument("--cache-dir", help="feature cache (default $PATHBENCH_CACHE or ~/.cache/pathbench)")
    group.add_argument("--trust-remote-code", action="store_true", help="allow models that run code from their hub repository")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every benchmark takes, besides the model flags."""
    add_model_arguments(parser)
    group = parser.add_argument_group("data and results")
    group.add_argument("--data", default=None, help="hf (download), synthetic (offline demo data) or a local PATH")
    group.add_argument("--out", help="results folder (default ./pathbench-results/<bench>/<model>/)")
    group.add_argument("--model-name", help="name for results computed from precomputed embeddings (no --model)")


def model_label(args: argparse.Namespace) -> str:
    """The name results are filed under: ``--model-name``, else ``--model``."""
    label = getattr(args, "model_name", None) or getattr(args, "model", None)
    if not label:
        raise PathbenchError("no model given: pass --model NAME, or --model-name NAME with precomputed embeddings.")
    return label


def safe_name(label: str) -> str:
    """A folder-safe version of a model label (``timm:vit_b`` -> ``timm_vit_b``)."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label).strip("_") or "model"


def results_dir(args: argparse.Namespace, bench: str, model_name: str | None = None) -> Path:
    """``--out``, else ``./pathbench-results/<bench>/<model>/``."""
    if getattr(args, "out", None):
        return Path(args.out)
    return DEFAULT_RESULTS / bench / safe_name(model_name or model_label(args))


def resolve_pooling(args: argparse.Namespace, bench: str | None) -> str:
    """``--pooling``, else the model spec's default for ``bench``."""
    if getattr(args, "pooling", None):
        return args.pooling
    return get_spec(args.model).pooling_for(bench)


def extractor_from_args(args: argparse.Namespace, bench: str | None = None) -> Extractor:
    """Load the extractor the flags describe; its default pooling is the benchmark's."""
    if not getattr(args, "model", None):
        raise PathbenchError("--model is required unless precomputed embeddings are given (see --help).")
    device = args.device
    if device == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return load_extractor(
        args.model,
        weights=args.weights,
        device=device,
        precision=args.precision,
        pooling=resolve_pooling(args, bench),
        trust_remote_code=args.trust_remote_code,
    )


def extraction_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for :func:`pathbench.features.extract_features` from the flags."""
    return {
        "cache_dir": args.cache_dir,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "progress": not args.no_progress,
        "shard_size": max(args.batch_size, 1024 - 1024 % args.batch_size),
    }
