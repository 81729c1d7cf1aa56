"""Atomic training checkpoints and the export of the EMA student.

Checkpoints are written through :func:`pathbench._io.atomic_write` (temporary file, fsync,
rename), so a crash never leaves a half-written ``last.pt``. The export writes the EMA
student's token network as safetensors plus a JSON spec into the students folder, where
:func:`distill.registry.discover_students` finds it.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any

import torch

from pathbench import _io
from pathbench.errors import PathbenchError
from pathbench.extractors import ModelSpec

STUDENTS_ENV = "PATHBENCH_STUDENTS"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"
SPEC_FORMAT = "pathbench-distilled-student/1"


def pathbench_cache_dir() -> Path:
    """pathbench's cache root (``$PATHBENCH_CACHE``, default ``~/.cache/pathbench``)."""
    from pathbench.settings import cache_root

    return cache_root()


def students_dir(override: str | os.PathLike | None = None) -> Path:
    """Where exported students live: ``override``, else ``$PATHBENCH_STUDENTS``, else
    ``<pathbench cache>/students``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(STUDENTS_ENV)
    if env:
        return Path(env).expanduser()
    return pathbench_cache_dir() / "students"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically."""
    with _io.atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain Python values only)."""
    path = Path(path)
    if not path.is_file():
        raise PathbenchError(f"no checkpoint at {path}; start without --resume or point --out at the run folder.")
    return torch.load(path, map_location="cpu", weights_only=True)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_student_name(name: str) -> str:
    if not _NAME.match(name):
        raise PathbenchError(
            f"student name {name!r} must start with a letter or digit and contain only letters, digits, '.', '_' or '-'."
        )
    return name


def export_student(
    backbone: torch.nn.Module,
    spec: ModelSpec,
    name: str,
    destination: str | os.PathLike | None,
    record: dict[str, Any],
) -> Path:
    """Write ``backbone``'s weights (safetensors) and its spec (JSON) to ``<destination>/<name>/``.

    Args:
        backbone: the timm network whose ``state_dict`` matches ``spec`` (the EMA student).
        spec: the student's :class:`ModelSpec` (architecture, normalisation, token layout).
        name: folder name; the registry exposes the student as ``distilled:<name>``.
        destination: students folder (``None``: :func:`students_dir`).
        record: provenance written next to the spec (objective, teacher, data, steps, ...).

    Returns the student's folder. The weights are written before the spec, so a folder with a
    spec always has complete weights.
    """
    from safetensors.torch import save

    folder = students_dir(destination) / check_student_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in backbone.state_dict().items()}
    with _io.atomic_write(folder / WEIGHTS_FILE, "wb") as handle:
        handle.write(save(state, metadata={"format": "pt"}))
    data = spec.to_dict()
    data.pop("weights_path", None)
    data.update(
        format=SPEC_FORMAT,
        name=name,
        weights=WEIGHTS_FILE,
        token_layout={
            "class_token": 0,
            "register_tokens": list(range(1, spec.num_prefix_tokens)),
            "patch_tokens_start": spec.num_prefix_tokens,
            "patch_size": spec.build_kwargs.get("patch_size"),
        },
        exported_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **record,
    )
    _io.write_json(folder / SPEC_FILE, data)
    return folder
