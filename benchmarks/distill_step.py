"""Throughput of a distillation step: training images/s and the teacher's share of step time.

    python benchmarks/distill_step.py                      # smoke config, CPU or GPU
    python benchmarks/distill_step.py --config default --steps 20 --data /data/tiles

For each objective it runs ``--warmup`` untimed steps then ``--steps`` timed ones and prints
the mean step time (data loading excluded), images/s (global batch / step time) and the share
of the step spent in the teacher's forward pass (backbone + heads). The DINO + iBOT step uses
freshly initialised teacher heads (the cost is the same as with real ones).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
import torch


def measure(config: str, objective: str, steps: int, warmup: int, data: str | None, device: str) -> dict:
    from distill.config import load_config
    from distill.train import Distiller

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "objective": "fit-heads" if objective == "dino-ibot" else objective,
            "optim.fit_heads_iterations": 0,  # straight to the distillation step
            "optim.iterations": warmup + steps,
            "output.dir": tmp,
            "output.export": False,
            "device": device,
        }
        if data:
            overrides["data.source"] = data
        cfg = load_config(config, overrides)
        distiller = Distiller(cfg)
        records = []
        loader = iter(distiller.batches(warmup + steps))
        for i in range(warmup + steps):
            global_crops, local_crops = next(loader)
            record = distiller.train_step(global_crops, local_crops)
            if i >= warmup:
                records.append(record)
    step_s = float(np.mean([r["step_s"] for r in records]))
    teacher_s = float(np.mean([r["teacher_s"] for r in records]))
    return {
        "objective": objective,
        "batch": cfg.optim.batch_size,
        "step_s": step_s,
        "images_per_s": cfg.optim.batch_size / step_s,
        "teacher_share": teacher_s / step_s,
        "device": str(distiller.device),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--objectives", default="dino-ibot,features")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", default=None, help="override data.source (default: the config's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    print(f"distillation step, config {args.config}, {args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"{'objective':<10} {'device':<8} {'threads':>7} {'batch':>6} {'step (s)':>9} {'images/s':>9} {'teacher share':>14}")
    for objective in args.objectives.split(","):
        r = measure(args.config, objective, args.steps, args.warmup, args.data, args.device)
        print(f"{r['objective']:<10} {r['device']:<8} {r['threads']:>7} {r['batch']:>6} {r['step_s']:>9.3f} "
              f"{r['images_per_s']:>9.1f} {r['teacher_share']:>13.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
