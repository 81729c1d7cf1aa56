"""Atomic file writes: the one place pathbench writes result and cache files.

A file is written to a temporary name in the same folder, flushed and fsynced, then
renamed over its final name. A reader therefore sees either the old file, the new
file, or no file, never a half-written one, even after ``kill -9``.

A temporary name says who writes it: ``.<name>.<random>.<host>-<pid>.tmp``. A process
killed mid-write leaves its temporary file behind; the next successful write of the same
file removes it (and :func:`remove_stale_temporaries` sweeps a whole folder), but only
once its writer is known to be gone: same host, process no longer running. Files of
live writers and of other hosts (a shared file system) are never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

_HASH_BLOCK = 1 << 22
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.tmp$")


@dataclasses.dataclass(frozen=True)
class FileDigest:
    """Size in bytes and sha256 (hex) of a file's content."""

    size: int
    sha256: str


class HashingWriter:
    """A binary file wrapper that hashes and counts what goes through ``write``."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.hasher.update(data)
        self.size += memoryview(data).nbytes
        return self.handle.write(data)

    def digest(self) -> FileDigest:
        return FileDigest(self.size, self.hasher.hexdigest())


def _host() -> str:
    # One token of [A-Za-z0-9_-], so that a temporary name parses back unambiguously.
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, as written into temporary names."""
    return f"{_host()}-{os.getpid()}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` whose writer has died on this host."""
    match = _TEMPORARY.match(Path(path).name)
    if match is None or match["host"] != _host():
        return False
    pid = int(match["pid"])
    return pid != os.getpid() and not _pid_running(pid)


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files (and staging folders) that killed writers left in ``folder``.

    Args:
        folder: the folder to sweep (not recursive).
        name: only the temporaries of this final file name (default: all of them).

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    pattern = f".{glob.escape(name)}.*.tmp" if name else ".*.tmp"
    removed = []
    for path in folder.glob(pattern):
        if not is_stale_temporary(path):
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched; after a
    successful rename, temporaries of ``path`` left by killed writers are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{owner_tag()}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; results should get the permissions open() would give.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    remove_stale_temporaries(path.parent, path.name)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path``; move it onto ``path`` on success.

    Readers never see a half-built folder: on an exception (or a kill) only the hidden
    staging folder is left, and it is removed when possible. An existing ``path`` is
    replaced only once the new folder is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".{owner_tag()}.tmp", dir=path.parent))
    try:
        staging.chmod(0o777 & ~_umask())
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    remove_stale_temporaries(path.parent, path.name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_csv(path: str | os.PathLike, frame: Any, **to_csv_kwargs: Any) -> None:
    """Write a pandas DataFrame to ``path`` atomically (no index column by default)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, **to_csv_kwargs)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> FileDigest:
    """Save ``array`` in .npy format to ``path`` atomically.

    Returns:
        The size and sha256 of the file written (hashed on the way out, not read back).
    """
    with atomic_write(path, "wb") as handle:
        writer = HashingWriter(handle)
        np.save(writer, np.ascontiguousarray(array), allow_pickle=False)
    return writer.digest()


def file_digest(path: str | os.PathLike) -> FileDigest:
    """Size and sha256 of the file at ``path``, read in 4 MiB blocks."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            hasher.update(block)
            size += len(block)
    return FileDigest(size, hasher.hexdigest())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
