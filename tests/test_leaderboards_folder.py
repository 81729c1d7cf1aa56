"""The top-level leaderboards/ folder: the one copy of the published tables, generated tables that
stay what `make leaderboards` writes, and an installed package that still finds the tables."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pathbench import leaderboard as lb

ROOT = Path(__file__).parents[1]
FOLDER = ROOT / "leaderboards"


def test_the_committed_tables_are_what_make_leaderboards_generates(tmp_path):
    written = lb.publish(tmp_path, FOLDER / "runs")
    assert {p.name for p in written} == {"plism.md", "hest.md", "eva.md", "README.md"}
    for path in written:
        committed = FOLDER / path.name
        assert committed.is_file(), f"{committed} is missing: run `make leaderboards`"
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"{committed} differs from what `make leaderboards` generates: run it and commit the result")


def test_the_published_tables_live_only_in_leaderboards_references():
    files = sorted(p.name for p in lb.reference_files())
    assert files == ["paper_eva.csv", "paper_hest.csv", "paper_plism.csv", "plismbench_readme.csv"]
    assert sorted(p.name for p in (FOLDER / "references").glob("*.csv")) == files
    link = ROOT / "pathbench" / "references"
    assert link.is_symlink() and link.resolve() == (FOLDER / "references").resolve()
    assert (FOLDER / "runs" / "README.md").is_file()


def test_contributed_runs_are_never_synthetic():
    for run_json in (FOLDER / "runs").rglob("run.json"):
        assert '"synthetic": true' not in run_json.read_text(encoding="utf-8"), run_json


@pytest.mark.slow
def test_a_wheel_built_from_the_tracked_files_carries_and_finds_the_tables(tmp_path):
    source = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(source)], check=True, timeout=120)
    # the working tree may hold changes not yet committed: the clone gets the tracked files as they are now
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        src, dst = ROOT / name, source / name
        if src.is_symlink():
            continue
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ".",
                            "-w", str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("pathbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"pathbench/references/{n}" for n in ("paper_eva.csv", "paper_hest.csv", "paper_plism.csv",
                                                  "plismbench_readme.csv")} <= set(names)
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = "from pathbench import leaderboard as lb; print(len(lb.load_references('hest', 'paper')))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip() == "10"
