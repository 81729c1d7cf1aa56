"""``pathbench distill`` (through the ``pathbench.commands`` entry point) and ``python -m distill``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import yaml

from distill.config import OBJECTIVES, load_config
from pathbench.errors import PathbenchError

DESCRIPTION = (
    "Distil a large teacher (any pathbench extractor with class and patch tokens; default H-Optimus-0) into a "
    "ViT-B/14 student with DINO + iBOT losses (the H0-mini recipe). The EMA student is exported to "
    "<out>/student and becomes the model distilled:<name> (default name: the run folder's) and "
    "distilled:<out>/student."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the distill command (flags override the YAML config)."""
    parser.add_argument("--config", default="default",
                        help="YAML config file, or the name of a shipped config (default, smoke). Default: default")
    parser.add_argument("--teacher", help="teacher model name in the pathbench registry (teacher.model)")
    parser.add_argument("--teacher-weights", help="local weights file for the teacher (teacher.weights)")
    parser.add_argument("--teacher-heads", help="file with the teacher's DINO and iBOT heads (teacher.heads)")
    parser.add_argument("--objective", choices=OBJECTIVES, help="dino-ibot, fit-heads or features (objective)")
    parser.add_argument("--data", help="folder of images, parquet file or folder of shards, or hf:<dataset id>")
    parser.add_argument("--out", help="run folder for logs, checkpoints and the exported student (output.dir; "
                        "default ./distill-runs/<name>)")
    parser.add_argument("--name", help="the run's name and its student's: distilled:<name> (name and "
                        "output.student_name; default: the run folder's name)")
    parser.add_argument("--students-dir", help="where the student's name is registered (output.students_dir; "
                        "default $PATHBENCH_STUDENTS or <pathbench cache>/students)")
    parser.add_argument("--iterations", type=int, help="distillation steps (optim.iterations)")
    parser.add_argument("--batch-size", type=int, help="total batch size over all processes (optim.batch_size)")
    parser.add_argument("--device", help="auto, cpu or cuda (device)")
    parser.add_argument("--num-workers", type=int, help="data-loader workers per process (data.num_workers)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set optim.lr=0.001 (repeatable; VALUE is YAML)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the outputs of an earlier run in --out (checkpoints, log, student) and start again")
    parser.add_argument("--stop-after", type=int, help="stop at this step (with a checkpoint); continue later with --resume")
    parser.add_argument("--no-export", action="store_true", help="do not export the student at the end")
    parser.add_argument("--no-register", action="store_true",
                        help="export without registering a name; evaluate the student as distilled:<out>/student")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides from the flags that were given."""
    mapping = {
        "teacher": "teacher.model",
        "teacher_weights": "teacher.weights",
        "teacher_heads": "teacher.heads",
        "objective": "objective",
        "data": "data.source",
        "out": "output.dir",
        "name": "name",
        "students_dir": "output.students_dir",
        "iterations": "optim.iterations",
        "batch_size": "optim.batch_size",
        "device": "device",
        "num_workers": "data.num_workers",
    }
    overrides = {key: getattr(args, attr) for attr, key in mapping.items() if getattr(args, attr, None) is not None}
    if getattr(args, "name", None) is not None:
        overrides["output.student_name"] = args.name
    if getattr(args, "no_export", False):
        overrides["output.export"] = False
    if getattr(args, "no_register", False):
        overrides["output.register"] = False
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise PathbenchError(f"--set expects KEY=VALUE (for example optim.lr=0.001), got {item!r}.")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise PathbenchError(f"--set {item!r}: the value is not valid YAML ({problem}).") from None
    return overrides


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status."""
    from distill.distributed import setup_distributed
    from distill.train import train

    cfg = load_config(args.config, overrides_from_args(args))
    env = setup_distributed(cfg.device)
    logging.basicConfig(
        level=logging.INFO if env.is_main else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(message)s",
    )
    summary = train(cfg, resume=args.resume, overwrite=getattr(args, "overwrite", False), stop_after=args.stop_after,
                    progress=not args.no_progress, env=env)
    if env.is_main:
        last = summary.get("last", {})
        print(
            f"distill: {summary['steps']} steps in {summary['run_dir']}"
            + (f"; last loss {last['loss']:.4f}" if "loss" in last else "")
            + (f"; student exported to {summary['student_dir']} (--model {summary['model']})"
               if "student_dir" in summary else "")
        )
    return 0


def register_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Entry point of the ``pathbench.commands`` group: adds ``pathbench distill``."""
    parser = subparsers.add_parser("distill", help="distil a teacher into a ViT-B student", description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m distill``: the same command without the pathbench front end."""
    parser = argparse.ArgumentParser(prog="python -m distill", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PathbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
