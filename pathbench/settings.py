"""Where pathbench keeps things: the cache root and the default results folder.

A leaf module (standard library only) so that data readers, benchmarks, extractors and
the distillation package can all ask for the same locations without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RESULTS = Path("pathbench-results")
CACHE_ENV = "PATHBENCH_CACHE"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The pathbench cache: ``cache_dir``, else ``$PATHBENCH_CACHE``, else ``~/.cache/pathbench``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pathbench"
