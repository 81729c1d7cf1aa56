"""pathbench: a benchmark-first evaluation toolkit for pathology foundation models.

``pathbench.evaluate(model=..., bench=..., data=...)`` runs a benchmark and returns its
results (see :func:`pathbench.runner.evaluate`); nothing heavy is imported until then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathbench.results import Results


def evaluate(model: str | None = None, bench: str = "plism", data: str | None = None, out: Any = None,
             **options: Any) -> Results:
    """Run a benchmark on a model and write its results; see :func:`pathbench.runner.evaluate`."""
    from pathbench.runner import evaluate as _evaluate

    return _evaluate(model=model, bench=bench, data=data, out=out, **options)


def load_results(out_dir: Any) -> Results:
    """Read a finished run folder back; see :func:`pathbench.results.load_results`."""
    from pathbench.results import load_results as _load

    return _load(out_dir)


__all__ = ["__version__", "evaluate", "load_results"]
