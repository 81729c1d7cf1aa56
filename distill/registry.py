"""Expose exported students to pathbench's registry (entry point ``pathbench.extractors``).

``pyproject.toml`` declares ``distilled = "distill.registry:discover_students"``: pathbench calls
:data:`discover_students` when it loads its plugins, and every registered student becomes the
model ``distilled:<name>`` (``pathbench models``, ``pathbench evaluate --model distilled:<name>``).
Its ``resolve(name)`` method answers names no listing holds: ``distilled:<path>`` with the path
of an exported student (``<run folder>/student``, or the run folder itself).

A run exports its student into its own folder, ``<run folder>/student/``, and registers the
name with a small link file, ``<students folder>/<name>.link.json``, that points there. Names
are looked up in ``$PATHBENCH_STUDENTS`` (one or more folders separated by ``os.pathsep``; each
is a students folder or one student's own folder) or, when unset, in
``<pathbench cache>/students``. A students folder may also hold students' folders directly
(copied by hand, or exported by earlier versions).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from pathlib import Path

from distill.checkpoint import (
    SPEC_FILE,
    STUDENTS_ENV,
    WEIGHTS_FILE,
    check_student_name,
    pathbench_cache_dir,
    students_dir,
)
from pathbench import _io
from pathbench.errors import ModelNotFoundError, PathbenchError
from pathbench.extractors import ModelSpec

PREFIX = "distilled:"
LINK_SUFFIX = ".link.json"
LINK_FORMAT = "pathbench-student-link/1"


def _roots() -> list[Path]:
    env = os.environ.get(STUDENTS_ENV)
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p] if env else [pathbench_cache_dir() / "students"]


def _link_target(link: Path) -> Path:
    data = json.loads(link.read_text(encoding="utf-8"))
    return Path(data["path"])


def known_students(*, warn: bool = True) -> dict[str, Path]:
    """Registered name -> student folder, over every root of the search path (the first root wins).

    A link whose student folder is gone is skipped, with a warning when ``warn``.
    """
    found: dict[str, Path] = {}
    for root in _roots():
        if (root / SPEC_FILE).is_file():
            # One student's own folder (a run's <out>/student): the name is the one it was exported under.
            try:
                name = json.loads((root / SPEC_FILE).read_text(encoding="utf-8")).get("name") or root.name
            except (OSError, ValueError, AttributeError):
                name = root.name
            found.setdefault(name, root)
            continue
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.name.endswith(LINK_SUFFIX):
                name = child.name.removesuffix(LINK_SUFFIX)
                try:
                    target = _link_target(child)
                except (OSError, ValueError, KeyError) as exc:
                    if warn:
                        warnings.warn(f"unreadable student link {child} ({exc}); skipped.", stacklevel=2)
                    continue
                if (target / SPEC_FILE).is_file():
                    found.setdefault(name, target)
                elif warn:
                    warnings.warn(
                        f"distilled:{name} is registered for {target}, which holds no exported student any more; "
                        f"delete {child} to drop the name.",
                        stacklevel=2,
                    )
            elif (child / SPEC_FILE).is_file():
                found.setdefault(child.name, child)
    return found


def student_folders() -> list[Path]:
    """Every registered student's folder, sorted by name."""
    found = known_students()
    return [found[k] for k in sorted(found)]


def _same_folder(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def check_name_free(name: str, folder: str | os.PathLike, destination: str | os.PathLike | None = None) -> None:
    """Raise unless ``distilled:<name>`` is free or already means the student in ``folder``.

    Checked before a run trains (so a clash costs nothing) and again when it registers.
    """
    check_student_name(name)
    folder = Path(folder)
    holders: list[tuple[Path, str]] = []

    def taken_by(other: Path, how: str) -> None:
        if not _same_folder(other, folder) and not any(_same_folder(other, seen) for seen, _ in holders):
            holders.append((other, how))

    link = students_dir(destination) / f"{name}{LINK_SUFFIX}"
    if link.is_file():
        try:
            target = _link_target(link)
        except (OSError, ValueError, KeyError):
            target = None  # an unreadable link is replaced
        if target is not None and (target / SPEC_FILE).is_file():
            taken_by(target, f"the student in {target} (registered by {link})")
    legacy = students_dir(destination) / name
    if (legacy / SPEC_FILE).is_file():
        taken_by(legacy, f"the student folder {legacy}")
    other = known_students(warn=False).get(name)
    if other is not None:
        taken_by(other, f"the student in {other}")
    if holders:
        raise PathbenchError(
            f"the name distilled:{name} is already taken by {holders[0][1]}. Pass --name with another name "
            f"(the default is the run folder's name), or remove that registration to reuse the name; "
            f"--no-register skips the name (evaluate the student as distilled:<run folder>/student)."
        )


def register_student(name: str, folder: str | os.PathLike, destination: str | os.PathLike | None = None) -> Path:
    """Register ``distilled:<name>`` for the student in ``folder``; returns the link file."""
    check_name_free(name, folder, destination)
    link = students_dir(destination) / f"{name}{LINK_SUFFIX}"
    _io.write_json(link, {
        "format": LINK_FORMAT,
        "name": name,
        "path": str(Path(folder).resolve()),
        "registered_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return link


def spec_from_folder(folder: str | os.PathLike, name: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of the student exported in ``folder`` (named ``name`` if given)."""
    folder = Path(folder)
    data = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    weights = folder / data.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing")
    teacher = (data.get("teacher") or {}).get("model", "?")
    return ModelSpec(
        name=name or PREFIX + data.get("name", folder.name),
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


def resolve_student(name: str) -> ModelSpec | None:
    """``distilled:<path>`` -> the spec of the student exported there; ``None`` for other names.

    The path may be a student folder (``<run folder>/student``), its ``spec.json``, or a run
    folder. A path that holds no student raises :class:`ModelNotFoundError` saying what was
    expected there. Registered names are not resolved here (the listing has them).
    """
    if not name.startswith(PREFIX):
        return None
    rest = name.removeprefix(PREFIX)
    path = Path(rest).expanduser()
    looks_like_path = os.sep in rest or "/" in rest or rest.startswith((".", "~")) or path.exists()
    if not looks_like_path:
        return None
    folder = path.parent if path.name == SPEC_FILE else path
    if not (folder / SPEC_FILE).is_file() and (folder / "student" / SPEC_FILE).is_file():
        folder = folder / "student"
    if not (folder / SPEC_FILE).is_file():
        raise ModelNotFoundError(
            f"no exported student at {path}: expected a folder holding {SPEC_FILE} and {WEIGHTS_FILE} "
            "(a distillation run's <out>/student, or the run folder itself)."
        )
    try:
        return spec_from_folder(folder, name=name)
    except (OSError, ValueError, KeyError) as exc:
        raise PathbenchError(f"the student in {folder} is unusable ({type(exc).__name__}: {exc}).") from None


class StudentPlugin:
    """The ``distilled`` entry point: calling it lists the registered students; :meth:`resolve`
    answers ``distilled:<path>`` names, which no listing can hold."""

    def __call__(self) -> list[ModelSpec]:
        """One ``distilled:<name>`` spec per registered student; an unreadable one is a warning."""
        specs = []
        for name, folder in sorted(known_students().items()):
            try:
                specs.append(spec_from_folder(folder, name=PREFIX + name))
            except Exception as exc:  # one broken export must not hide the others
                warnings.warn(f"distilled student in {folder} is unusable ({type(exc).__name__}: {exc}); skipped.",
                              stacklevel=2)
        return specs

    @staticmethod
    def resolve(name: str) -> ModelSpec | None:
        return resolve_student(name)


discover_students = StudentPlugin()
