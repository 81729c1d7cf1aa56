"""Provenance records for ``run.json``: what produced a result, exactly."""

from __future__ import annotations

import platform
import socket
import sys
import time
from importlib import metadata
from typing import Any

from pathbench import __version__

_PACKAGES = (
    "torch", "torchvision", "timm", "transformers", "huggingface-hub", "numpy", "scikit-learn",
    "scipy", "faiss-cpu", "faiss-gpu-cu12", "pandas", "anndata", "h5py",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that can change pathbench's numbers."""
    versions = {"pathbench": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def provenance(extractor: Any = None, pooling: str | None = None, **extra: Any) -> dict[str, Any]:
    """A JSON-serialisable record of a run.

    Args:
        extractor: the :class:`~pathbench.extractors.Extractor` used, if any (its spec,
            weights fingerprint, precision, device and parameter count are recorded).
        pooling: the pooling used for the embeddings.
        **extra: benchmark-specific settings (tile subset, tasks, head, ...).
    """
    record: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "versions": package_versions(),
    }
    if extractor is not None:
        from pathbench.extractors import count_parameters

        record["model"] = {
            "name": extractor.spec.name,
            "spec": extractor.spec.to_dict(),
            "weights_fingerprint": extractor.weights_fingerprint,
            "precision": extractor.precision,
            "device": str(extractor.device),
            "params": sum(p.numel() for p in extractor.model.parameters()) or count_parameters(extractor.spec),
        }
    if pooling is not None:
        record["pooling"] = pooling
    record.update(extra)
    return record
