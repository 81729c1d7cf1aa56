"""Atomic writes: a failed write leaves the old file untouched and no temporary file behind."""

from __future__ import annotations

import os
import stat

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
