"""The run folder: one run at a time, no silent restart, each logged step once.

- :class:`RunLock`: ``<run>/.lock`` names the process that holds the folder (pid, host, start
  time). Where the file system supports ``flock`` the kernel arbitrates, so two runs can never
  both hold it and the lock of a killed run is released by its death; the file's content is
  what the messages quote. Elsewhere (no ``flock``), the file is created exclusively and a lock
  whose pid is dead on this host is taken over.
- :func:`prepare_run_dir`: a fresh run refuses a folder that holds an earlier run's outputs
  unless ``--resume`` or ``--overwrite`` says what to do with them; ``--overwrite`` deletes only
  the files a run writes.
- :func:`trim_log`: on resume, ``log.jsonl`` loses the records written after the checkpoint
  (they are about to be recomputed), rewritten atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from pathbench import _io
from pathbench.errors import PathbenchError

logger = logging.getLogger("distill")

LOCK_FILE = ".lock"
CHECKPOINT = Path("checkpoints") / "last.pt"
LOG_FILE = "log.jsonl"
STUDENT_DIR = "student"  # the exported student: <run folder>/student
# Everything a run writes into its folder; --overwrite deletes these and nothing else.
# The checkpoint goes first: a folder left half-cleared by a crash then holds no checkpoint
# that a later --resume could pair with a missing log.
RUN_OUTPUTS = ("checkpoints", STUDENT_DIR, LOG_FILE, "config.json", "loss_curve.png")

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (unknown counts as alive)."""
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate it on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _holder_text(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


class RunLock:
    """Exclusive hold on a run folder for the lifetime of one run (a context manager)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._flock = False

    def _record(self) -> bytes:
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n").encode()

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            raw = os.pread(fd, 4096, 0) if hasattr(os, "pread") else os.read(fd, 4096)
            holder = json.loads(raw.decode("utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _busy(self, holder: dict[str, Any]) -> PathbenchError:
        return PathbenchError(
            f"run folder {self.run_dir} is in use by another distillation ({_holder_text(holder)}). Wait for it "
            f"to finish or use another --out. If that process is gone, delete {self.path}."
        )

    def _stale_notice(self, holder: dict[str, Any]) -> None:
        if holder:
            logger.warning("run folder %s: taking over the lock of a run that is gone (%s)", self.run_dir,
                           _holder_text(holder))

    def acquire(self) -> None:
        """Hold the folder or raise :class:`PathbenchError` naming the holder."""
        try:
            self._acquire()
        except (PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise PathbenchError(
                f"cannot write to the run folder {self.run_dir} ({exc.strerror or exc}); choose another --out."
            ) from None
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            raise PathbenchError(f"the run folder {self.run_dir} is on a read-only file system; "
                                 "choose another --out.") from None

    def _acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = self._read(fd)
                    os.close(fd)
                    raise self._busy(holder) from None
                except OSError as exc:
                    empty = os.fstat(fd).st_size == 0
                    os.close(fd)
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
                    if empty:  # the file this open just created: the fallback creates its own
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.path)
                    break  # this file system has no flock: fall back to pid and host
                # The previous holder unlinks the file on release: if that happened between our
                # open and our flock, we hold a lock on a deleted file; start again.
                try:
                    current = os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = None
                if current != os.fstat(fd).st_ino:
                    os.close(fd)
                    continue
                self._stale_notice(self._read(fd))
                os.ftruncate(fd, 0)
                os.pwrite(fd, self._record(), 0)
                os.fsync(fd)
                self._fd, self._flock = fd, True
                return
        self._acquire_exclusive_create()

    def _acquire_exclusive_create(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(self.path, "rb") as handle:
                    holder = self._read(handle.fileno())
                same_host = holder.get("host") == socket.gethostname()
                if holder and same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                    self._stale_notice(holder)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                raise self._busy(holder) from None
            os.write(fd, self._record())
            os.fsync(fd)
            self._fd = fd
            return
        raise PathbenchError(f"could not take the lock {self.path}: other runs keep replacing it; try again.")

    def release(self) -> None:
        if self._fd is None:
            return
        if self._flock:
            # Unlink while still holding the flock, so no one can flock the old file after us.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
        else:
            os.close(self._fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def run_outputs(run_dir: str | os.PathLike) -> list[Path]:
    """The outputs of an earlier run present in ``run_dir``, in deletion order."""
    run_dir = Path(run_dir)
    return [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def clear_run_outputs(run_dir: str | os.PathLike) -> list[Path]:
    """Delete what a run wrote into ``run_dir`` (never any other file); returns what was deleted."""
    removed = run_outputs(run_dir)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def prepare_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Decide what happens to an earlier run in ``run_dir`` (call it while holding :class:`RunLock`).

    Without ``resume`` or ``overwrite``, a folder holding a checkpoint, a log or an exported
    student is refused: restarting there would mix two runs' logs and outputs.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise PathbenchError(
            f"--resume continues the run in {run_dir} and --overwrite deletes it: pass one of them, not both."
        )
    if overwrite:
        removed = clear_run_outputs(run_dir)
        if removed:
            logger.info("--overwrite: deleted %s from %s", ", ".join(p.name for p in removed), run_dir)
        return
    found = run_outputs(run_dir)
    if resume or not found:
        return
    what = f"the checkpoint {run_dir / CHECKPOINT}" if (run_dir / CHECKPOINT).is_file() else \
        "outputs (" + ", ".join(p.name for p in found) + ")"
    raise PathbenchError(
        f"run folder {run_dir} already holds an earlier run: {what}. Pass --resume to continue that run, "
        "--overwrite to delete its outputs and start again, or choose another --out."
    )


def trim_log(log_path: str | os.PathLike, last_step: int) -> int:
    """Keep the records of steps ``<= last_step`` in ``log_path`` (JSON lines); returns how many were dropped.

    A run killed after its last checkpoint logged steps that the resumed run computes again;
    an unreadable line (cut by the kill) goes too. The original lines are kept byte for byte,
    and the file is replaced atomically only when something changes.
    """
    log_path = Path(log_path)
    if not log_path.is_file():
        return 0
    kept, dropped = [], 0
    for line in log_path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            keep = line.endswith("\n") and int(json.loads(line)["step"]) <= last_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        _io.write_text(log_path, "".join(kept))
    return dropped
