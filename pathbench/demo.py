"""``make demo``: every benchmark end to end, offline, on built-in synthetic data.

Runs a random-weight ViT (``vit-tiny-random``) through PLISM (simulated from real CC0 H&E
tissue), HEST and eva's eight tasks (patch, slide and segmentation), distils a small student
with the smoke configuration (a plumbing check) and evaluates it on PLISM, then prints the
PLISM leaderboard with the published reference models and writes an HTML report. Nothing
here needs the network.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from pathbench.cli import main as pathbench

MODEL = "vit-tiny-random"

STEPS: tuple[tuple[str, Sequence[str]], ...] = (
    ("PLISM robustness (simulated stainings and scanners of real tissue)",
     ("evaluate", "--model", MODEL, "--bench", "plism", "--data", "synthetic")),
    ("HEST gene-expression prediction (synthetic spots)",
     ("evaluate", "--model", MODEL, "--bench", "hest", "--data", "synthetic")),
    ("EVA, the seed paper's eight tasks on synthetic data in eva's layouts: linear probe (BACH, CRC, MHIST, PCam), "
     "ABMIL on pyramidal TIFF slides (Camelyon16, PANDA), decoder on token grids (CoNSeP, MoNuSAC); a few minutes",
     ("evaluate", "--model", MODEL, "--bench", "eva", "--data", "synthetic")),
    ("Distillation plumbing check: a tiny student of a random-weight teacher, 100 CPU steps (not a usable model)",
     ("distill", "--config", "smoke", "--out", "pathbench-results/distill/smoke", "--overwrite", "--no-register",
      "--no-progress")),
    ("PLISM on that student, loaded from its run folder through the distill plugin",
     ("evaluate", "--model", "distilled:pathbench-results/distill/smoke/student", "--model-name", "distilled-smoke",
      "--bench", "plism", "--data", "synthetic")),
    ("PLISM leaderboard: the demo models beside the published numbers",
     ("leaderboard", "--bench", "plism")),
    ("HTML report", ("leaderboard", "--bench", "plism", "--format", "html", "--out", "pathbench-results/report.html")),
)


def run(steps: Sequence[tuple[str, Sequence[str]]] = STEPS) -> int:
    """Run each step through the CLI; stop at the first failure and return its exit status."""
    for number, (title, argv) in enumerate(steps, start=1):
        print(f"\n=== [{number}/{len(steps)}] {title}\n$ pathbench {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        status = pathbench(list(argv))
        if status != 0:
            print(f"demo step failed with exit status {status}", file=sys.stderr)
            return status
        print(f"({time.perf_counter() - start:.1f} s)", flush=True)
    print("\nDemo complete: results in ./pathbench-results/, report in pathbench-results/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(run())
