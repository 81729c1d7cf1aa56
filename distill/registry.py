"""Expose exported students to pathbench's registry (entry point ``pathbench.extractors``).

``pyproject.toml`` declares ``distilled = "distill.registry:discover_students"``: pathbench calls
:func:`discover_students` once when it loads its plugins, and every student found becomes the
model ``distilled:<name>`` (``pathbench models``, ``pathbench evaluate --model distilled:<name>``).

Students are looked up in ``$PATHBENCH_STUDENTS`` (one or more folders separated by
``os.pathsep``; each is a students folder or one student's own folder) or, when unset, in
``<pathbench cache>/students``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from distill.checkpoint import SPEC_FILE, STUDENTS_ENV, WEIGHTS_FILE, pathbench_cache_dir
from pathbench.extractors import ModelSpec

PREFIX = "distilled:"


def student_folders() -> list[Path]:
    """Every folder holding an exported student (``spec.json`` + weights), sorted by name."""
    env = os.environ.get(STUDENTS_ENV)
    roots = [Path(p).expanduser() for p in env.split(os.pathsep) if p] if env else [pathbench_cache_dir() / "students"]
    found: dict[str, Path] = {}
    for root in roots:
        if (root / SPEC_FILE).is_file():
            found.setdefault(root.name, root)
        elif root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / SPEC_FILE).is_file():
                    found.setdefault(child.name, child)
    return [found[k] for k in sorted(found)]


def spec_from_folder(folder: str | os.PathLike) -> ModelSpec:
    """The :class:`ModelSpec` of the student exported in ``folder``."""
    folder = Path(folder)
    data = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    weights = folder / data.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    teacher = (data.get("teacher") or {}).get("model", "?")
    return ModelSpec(
        name=PREFIX + data.get("name", folder.name),
        family=data.get("family", "timm"),
        arch=data["arch"],
        embed_dim=int(data["embed_dim"]),
        build_kwargs=data.get("build_kwargs", {}),
        weights_path=str(weights),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        resize=int(data.get("resize", 224)),
        crop=int(data.get("crop", 224)),
        interpolation=data.get("interpolation", "bicubic"),
        num_prefix_tokens=int(data["num_prefix_tokens"]),
        default_pooling=data.get("default_pooling", "cls"),
        bench_pooling=data.get("bench_pooling", {}),
        licence=data.get("licence", "unknown") if data.get("licence") not in (None, "unknown") else
        f"derived from {teacher}: check the teacher's licence",
        origin="distill",
        description=(
            f"student distilled from {teacher} ({data.get('objective', '?')}, "
            f"{data.get('steps', '?')} steps) in {folder}"
        ),
    )


def discover_students() -> list[ModelSpec]:
    """Zero-argument entry point: one ``distilled:<name>`` spec per exported student.

    A student whose files are unreadable is reported as a warning and skipped.
    """
    specs = []
    for folder in student_folders():
        try:
            specs.append(spec_from_folder(folder))
        except Exception as exc:  # one broken export must not hide the others
            warnings.warn(f"distilled student in {folder} is unusable ({type(exc).__name__}: {exc}); skipped.",
                          stacklevel=2)
    return specs
