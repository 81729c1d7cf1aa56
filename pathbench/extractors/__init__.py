"""Feature extractors: specs, the registry, and the Extractor that turns tiles into embeddings.

Importing this package is cheap: specs, the zoo and the registry need neither torch nor
timm nor transformers, so ``pathbench models`` lists models without them. The names that
need torch (``Extractor``, ``load_extractor``, ``build_network``, ...) are imported on
first use (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pathbench.extractors.checks import MPP_TOLERANCE, resolution_warning
from pathbench.extractors.registry import ENTRY_POINT_GROUP, get_spec, list_specs, load_plugins, register
from pathbench.extractors.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    POOLINGS,
    PRECISION_CHOICES,
    PRECISIONS,
    ModelSpec,
    parameter_count,
    resolve_precision,
)

if TYPE_CHECKING:
    from pathbench.extractors.base import Extractor, pool_tokens, resolve_device
    from pathbench.extractors.builders import build_network, count_parameters
    from pathbench.extractors.loader import load_extractor

# name -> module that defines it; these modules import torch.
_LAZY = {
    "Extractor": "pathbench.extractors.base",
    "pool_tokens": "pathbench.extractors.base",
    "resolve_device": "pathbench.extractors.base",
    "build_network": "pathbench.extractors.builders",
    "count_parameters": "pathbench.extractors.builders",
    "load_extractor": "pathbench.extractors.loader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ENTRY_POINT_GROUP",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MPP_TOLERANCE",
    "POOLINGS",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "Extractor",
    "ModelSpec",
    "build_network",
    "count_parameters",
    "get_spec",
    "list_specs",
    "load_extractor",
    "load_plugins",
    "parameter_count",
    "pool_tokens",
    "register",
    "resolution_warning",
    "resolve_device",
    "resolve_precision",
]
