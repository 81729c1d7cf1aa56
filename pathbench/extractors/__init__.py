"""Feature extractors: specs, the registry, and the Extractor that turns tiles into embeddings."""

from pathbench.extractors.base import PRECISIONS, Extractor, pool_tokens, resolve_device
from pathbench.extractors.builders import build_network, count_parameters
from pathbench.extractors.loader import load_extractor
from pathbench.extractors.registry import ENTRY_POINT_GROUP, get_spec, list_specs, load_plugins, register
from pathbench.extractors.spec import IMAGENET_MEAN, IMAGENET_STD, POOLINGS, ModelSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POOLINGS",
    "PRECISIONS",
    "Extractor",
    "ModelSpec",
    "build_network",
    "count_parameters",
    "get_spec",
    "list_specs",
    "load_extractor",
    "load_plugins",
    "pool_tokens",
    "register",
    "resolve_device",
]
