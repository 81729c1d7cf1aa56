"""One writer per folder: a lock file holding the holder's pid and host.

A second process asking for the same folder is refused with a message naming the holder.
A lock whose holder is dead (same host, pid no longer running) is stale: it is taken over
with a notice, so a run killed with ``kill -9`` never blocks the next one. A lock held by
another host cannot be checked and is never taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from pathbench.errors import PathbenchError

LOCK_NAME = ".pathbench.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, under another user
        return True
    return True


def _read(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold ``<folder>/.pathbench.lock`` for the duration of the block.

    Raises :class:`PathbenchError` when a live process holds it. ``what`` names the work in
    the messages (``"evaluation"``, ``"distillation"``).
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(lock)
            same_host = holder.get("host") == me["host"]
            pid = holder.get("pid")
            if holder and same_host and isinstance(pid, int) and not _alive(pid):
                warnings.warn(f"{folder}: taking over the lock of {what} process {pid}, which is no longer running "
                              "(it was stopped before it finished; its completed work is reused).", stacklevel=3)
                lock.unlink(missing_ok=True)
                continue
            who = f"process {pid} on {holder.get('host')}" if holder else "another process"
            raise PathbenchError(f"{folder} is in use by {who} (since {holder.get('since', '?')}): two {what}s cannot "
                                 f"write one folder at once. Wait for it, use another --out, or delete {lock} if that "
                                 "process is gone.") from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        break
    try:
        yield lock
    finally:
        if _read(lock).get("pid") == me["pid"]:
            lock.unlink(missing_ok=True)
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
