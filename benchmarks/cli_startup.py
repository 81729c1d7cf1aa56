"""Start-up time of listing models against a bare Python interpreter.

Each command runs in a fresh subprocess (as a user runs it), alternating with the baseline
``python -c pass`` so that machine load hits both alike; the script prints the median wall
time of each, its ratio to the baseline, and which of torch, timm and transformers the
command imported.

    python benchmarks/cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "transformers")

# Run ``code`` and report, on stderr at exit, which heavy libraries ended up imported.
_PROBE = (
    "import atexit, json, sys\n"
    "atexit.register(lambda: print('HEAVY=' + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)),"
    " file=sys.stderr))\n"
)

CASES = {
    "python -c pass": "pass",
    "import pathbench.extractors; list_specs()": "import pathbench.extractors as e; e.list_specs()",
    # list_specs() loads every plugin; this one ships with pathbench (the distilled students).
    "import distill.registry (a plugin)": "import distill.registry",
    # pathbench's own share: heavy imports fail (a plugin needing one is skipped with a warning).
    "list_specs(), torch/timm/transformers blocked": (
        "import importlib.abc, sys, warnings\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HEAVY!r}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block()); warnings.simplefilter('ignore')\n"
        "import pathbench.extractors as e; e.list_specs()"
    ),
    "python -m pathbench.cli models": (
        "import runpy, sys; sys.argv = ['pathbench', 'models']; runpy.run_module('pathbench.cli', run_name='__main__')"
    ),
    "python -m pathbench.cli --help": (
        "import runpy, sys; sys.argv = ['pathbench', '--help']; runpy.run_module('pathbench.cli', run_name='__main__')"
    ),
}


def run_once(code: str) -> tuple[float, list[str]]:
    """Wall time of ``python -c code`` in a fresh process, and the heavy modules it imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    program = _PROBE.format(heavy=HEAVY) + code
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):  # argparse exits 0 on --help; main() returns 1 without a command
        raise SystemExit(f"command failed ({result.returncode}): {code}\n{result.stderr[-2000:]}")
    heavy = next((json.loads(line[6:]) for line in result.stderr.splitlines() if line.startswith("HEAVY=")), [])
    return elapsed, heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default 7)")
    args = parser.parse_args()

    times: dict[str, list[float]] = {name: [] for name in CASES}
    heavy: dict[str, list[str]] = {}
    run_once("pass")  # warm the file-system cache once
    for _ in range(args.repeats):
        for name, code in CASES.items():  # interleaved: load drifts affect every case alike
            seconds, imported = run_once(code)
            times[name].append(seconds)
            heavy[name] = imported
    baseline = statistics.median(times["python -c pass"])
    try:
        load = "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "load average n/a"
    print(f"{args.repeats} runs each, interleaved; {load}; Python {sys.version.split()[0]}")
    print(f"{'command':<46} {'median s':>9} {'min s':>7} {'ratio':>7}  heavy imports")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<46} {median:9.3f} {min(values):7.3f} {median / baseline:7.1f}  "
              f"{', '.join(heavy[name]) or '-'}")


if __name__ == "__main__":
    main()
