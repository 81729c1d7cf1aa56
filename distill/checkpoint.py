"""Atomic training checkpoints and the export of the EMA student.

Checkpoints are written through :func:`pathbench._io.atomic_write` (temporary file, fsync,
rename), so a crash never leaves a half-written ``last.pt``. The export writes the EMA
student's token network as safetensors plus a JSON spec into the run's own folder
(``<run folder>/student``); :mod:`distill.registry` gives it a name.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathbench import _io
from pathbench.errors import PathbenchError
from pathbench.extractors import ModelSpec

if TYPE_CHECKING:  # `pathbench models` lists students through this module: no torch at import
    import torch

STUDENTS_ENV = "PATHBENCH_STUDENTS"
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"
SPEC_FORMAT = "pathbench-distilled-student/1"


def pathbench_cache_dir() -> Path:
    """pathbench's cache root (``$PATHBENCH_CACHE``, default ``~/.cache/pathbench``)."""
    from pathbench.settings import cache_root

    return cache_root()


def students_dir(override: str | os.PathLike | None = None) -> Path:
    """Where student names are registered: ``override``, else the first folder of
    ``$PATHBENCH_STUDENTS``, else ``<pathbench cache>/students``."""
    if override:
        return Path(override).expanduser()
    first = next((p for p in os.environ.get(STUDENTS_ENV, "").split(os.pathsep) if p), None)
    if first:
        return Path(first).expanduser()
    return pathbench_cache_dir() / "students"


def _canonical(obj: Any) -> Any:
    """``obj`` rebuilt with fresh containers and interned strings.

    Pickle shares repeated objects by identity, so two equal states can serialise to different
    bytes: a resumed run's optimiser keys come from ``torch.load`` (new string objects) where an
    uninterrupted run's are the interned literals of torch's code. Rebuilt this way, equal
    states give byte-identical checkpoints.
    """
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_canonical(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_canonical(v) for v in obj)
    return obj


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically; equal states give equal bytes."""
    import torch

    with _io.atomic_write(path, "wb") as handle:
        torch.save(_canonical(state), handle)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain Python values only)."""
    path = Path(path)
    if not path.is_file():
        raise PathbenchError(f"no checkpoint at {path}; start without --resume or point --out at the run folder.")
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_student_name(name: str) -> str:
    """``name`` if it can be a student's name (``distilled:<name>``, a link file's name)."""
    if not _NAME.match(name):
        raise PathbenchError(
            f"student name {name!r} must start with a letter or digit and contain only letters, digits, '.', '_' "
            "or '-'; pass --name with such a name (the default is the run folder's name)."
        )
    return name


def export_student(
    backbone: torch.nn.Module,
    spec: ModelSpec,
    name: str,
    folder: str | os.PathLike,
    record: dict[str, Any],
) -> Path:
    """Write ``backbone``'s weights (safetensors) and its spec (JSON) into the student folder ``folder``.

    Args:
        backbone: the timm network whose ``state_dict`` matches ``spec`` (the EMA student).
        spec: the student's :class:`ModelSpec` (architecture, normalisation, token layout).
        name: the student's name (``distilled:<name>`` once registered).
        folder: the student's own folder, normally ``<run folder>/student``.
        record: provenance written into the spec (objective, teacher, data, steps, ...).

    Returns ``folder``. It is built under a temporary name and renamed into place, so it is
    either the complete previous export or the complete new one, never a mixture.
    """
    import torch
    from safetensors.torch import save

    check_student_name(name)
    folder = Path(folder)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in backbone.state_dict().items()}
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
    with _io.atomic_directory(folder) as staging:
        with _io.atomic_write(staging / WEIGHTS_FILE, "wb") as handle:
            handle.write(save(state, metadata={"format": "pt"}))
        _io.write_json(staging / SPEC_FILE, data)
    return folder
