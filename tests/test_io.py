"""Atomic writes: a failed write leaves the old file untouched and no temporary file behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from pathbench import _io


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "summary.csv"
    _io.write_text(target, "old\n")
    with pytest.raises(RuntimeError), _io.atomic_write(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_written_files_get_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        _io.write_json(tmp_path / "run.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o644
    assert _io.read_json(tmp_path / "run.json") == {"a": 1}


def test_a_folder_is_swapped_in_only_when_complete(tmp_path):
    target = tmp_path / "task"
    with _io.atomic_directory(target) as staging:
        (staging / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), _io.atomic_directory(target) as staging:
        (staging / "b.txt").write_text("partial")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["task"]


def _dead_pid():
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_names_say_which_process_writes_them(tmp_path):
    target = tmp_path / "embeddings.npy"
    with _io.atomic_write(target, "wb") as handle:
        (temporary,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert temporary.name.startswith(".embeddings.npy.")
        assert temporary.name.endswith(f"-{os.getpid()}.tmp")
        handle.write(b"x")


def test_a_write_removes_what_killed_writers_of_that_file_left(tmp_path):
    host = _io.owner_tag().rsplit("-", 1)[0]
    dead = tmp_path / f".embeddings.npy.abcd1234.{host}-{_dead_pid()}.tmp"
    live = tmp_path / f".embeddings.npy.efgh5678.{host}-{os.getppid()}.tmp"
    elsewhere = tmp_path / f".embeddings.npy.ijkl9012.otherhost-{_dead_pid()}.tmp"
    other_file = tmp_path / f".item_ids.txt.mnop3456.{host}-{_dead_pid()}.tmp"
    legacy = tmp_path / ".embeddings.npy.qrst7890.tmp"
    for path in (dead, live, elsewhere, other_file, legacy):
        path.write_bytes(b"half")
    digest = _io.save_npy(tmp_path / "embeddings.npy", np.arange(3, dtype=np.float32))
    assert not dead.exists()
    assert live.exists() and elsewhere.exists() and other_file.exists() and legacy.exists()
    assert digest == _io.file_digest(tmp_path / "embeddings.npy")
    assert _io.remove_stale_temporaries(tmp_path) == [other_file]


def test_a_staging_folder_of_a_killed_writer_is_removed(tmp_path):
    host = _io.owner_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".task.abcd1234.{host}-{_dead_pid()}.tmp"
    stale.mkdir()
    (stale / "half.csv").write_text("a")
    with _io.atomic_directory(tmp_path / "task") as staging:
        (staging / "a.txt").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task"]
