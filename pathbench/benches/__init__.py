"""Benchmarks: embeddings in, tidy result rows out (see :mod:`pathbench.benches.base`).

Benchmarks are found through the entry-point group ``pathbench.benchmarks``, exactly as a
third party's would be: pathbench's own PLISM, HEST and EVA are registered in its
``pyproject.toml``. Each entry point names a :class:`~pathbench.benches.base.Benchmark`
subclass (or instance, or a zero-argument callable returning one). A plugin that fails to
load is reported as one warning line; the others keep working.
"""

from __future__ import annotations

import difflib
import warnings
from importlib import metadata

from pathbench.benches.base import Benchmark
from pathbench.errors import PathbenchError

ENTRY_POINT_GROUP = "pathbench.benchmarks"

_registered: dict[str, Benchmark] = {}
_plugins_loaded = False


def register_benchmark(benchmark: Benchmark | type[Benchmark], *, overwrite: bool = False) -> Benchmark:
    """Add a benchmark to the registry (plugins do this through the entry point)."""
    instance = _instantiate(benchmark)
    if not instance.name:
        raise PathbenchError(f"{type(instance).__name__} has no name; set the class attribute `name`.")
    if instance.name in _registered and not overwrite and type(_registered[instance.name]) is not type(instance):
        raise PathbenchError(f"a benchmark named {instance.name!r} is already registered "
                             f"({type(_registered[instance.name]).__module__}); choose another name.")
    _registered[instance.name] = instance
    return instance


def _instantiate(provided: object) -> Benchmark:
    if isinstance(provided, type) and issubclass(provided, Benchmark):
        return provided()
    if isinstance(provided, Benchmark):
        return provided
    if callable(provided):
        return _instantiate(provided())
    raise TypeError(f"expected a Benchmark subclass or instance, got {type(provided).__name__}")


def load_plugins(force: bool = False) -> None:
    """Import every ``pathbench.benchmarks`` entry point once; failures are one warning each."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return
    _plugins_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        origin = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        try:
            benchmark = _instantiate(entry_point.load())
            if benchmark.name in _registered and type(_registered[benchmark.name]) is not type(benchmark):
                raise TypeError(f"the name {benchmark.name!r} is taken by {type(_registered[benchmark.name]).__module__}")
            _registered[benchmark.name] = benchmark
        except Exception as exc:  # a broken plugin must never break the other benchmarks
            warnings.warn(f"benchmark plugin {entry_point.name!r} from {origin} failed to load "
                          f"({type(exc).__name__}: {exc}); it is unavailable.", stacklevel=2)


def list_benchmarks() -> list[Benchmark]:
    """Every registered benchmark, sorted by name."""
    load_plugins()
    return [_registered[name] for name in sorted(_registered)]


def benchmark_names() -> list[str]:
    return [b.name for b in list_benchmarks()]


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; an unknown name suggests close matches."""
    load_plugins()
    key = name.strip().lower()
    if key in _registered:
        return _registered[key]
    known = sorted(_registered)
    if not known:
        raise PathbenchError("no benchmark is registered: pathbench's own come from its package metadata, so "
                             "install it (pip install -e . or make venv) rather than running it from a bare folder.")
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise PathbenchError(f"unknown benchmark {name!r}: expected one of {', '.join(known)} (e.g. --bench {known[0]})."
                         + hint)


def parse_bench(value: str) -> tuple[Benchmark, str | None]:
    """``"eva:bach,crc"`` -> (the eva benchmark, ``"bach,crc"``); ``"plism"`` -> (plism, None)."""
    name, _, inline = value.partition(":")
    return get_benchmark(name), (inline.strip() or None)


__all__ = [
    "ENTRY_POINT_GROUP",
    "Benchmark",
    "benchmark_names",
    "get_benchmark",
    "list_benchmarks",
    "load_plugins",
    "parse_bench",
    "register_benchmark",
]
