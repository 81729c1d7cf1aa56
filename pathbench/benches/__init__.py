"""Benchmarks: embeddings in, tidy result rows out.

Each benchmark is a module with ``add_arguments(parser)`` and ``run(args, bench_options)``.
They are imported lazily, so ``pathbench models`` never pays for scikit-learn or FAISS.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pathbench.errors import PathbenchError

BENCHES: dict[str, str] = {
    "plism": "pathbench.benches.plism",
    "hest": "pathbench.benches.hest",
    "eva": "pathbench.benches.eva",
}


def parse_bench(value: str) -> tuple[str, str | None]:
    """Split ``"eva:bach,crc"`` into ``("eva", "bach,crc")``; ``"plism"`` into ``("plism", None)``."""
    name, _, options = value.partition(":")
    name = name.strip().lower()
    if name not in BENCHES:
        known = ", ".join(sorted(BENCHES))
        raise PathbenchError(f"unknown benchmark {value!r}: expected one of {known} (e.g. --bench plism).")
    return name, (options.strip() or None)


def load_bench(name: str) -> ModuleType:
    """Import the module implementing benchmark ``name``."""
    return importlib.import_module(BENCHES[name])
