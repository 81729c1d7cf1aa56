"""Resume and reuse are byte-exact and leave nothing behind; one writer per results folder;
output folders are checked before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pathbench import cli
from pathbench.data import plism as plism_data
from pathbench.locks import folder_lock

STAININGS = ("GIV", "GM", "GMH", "HR", "KR", "LM")
SCANNERS = ("AT2", "S60", "SQ")

# A PLISM evaluation whose metric engine is slowed down (one checkpoint per pair, 40 ms per
# pair), so that a SIGKILL lands in the middle of the pairs, sometimes in a checkpoint write.
SLOW_RUN = """
import sys, time
from pathbench.benches import plism, plism_metrics
from pathbench.cli import main
plism._CHECKPOINT_PAIRS = 1
real = plism_metrics.iter_pair_metrics
def slow(*args, **kwargs):
    for row in real(*args, **kwargs):
        time.sleep(float(sys.argv[1]))
        yield row
plism_metrics.iter_pair_metrics = slow
sys.exit(main(sys.argv[2:]))
"""


def write_features(root: Path) -> Path:
    rng = np.random.default_rng(0)
    tissue = rng.normal(size=(60, 24)).astype(np.float32)
    tile_ids = [f"tile_16_{i % 10}_{i // 10}" for i in range(60)]
    for staining in STAININGS:
        for scanner in SCANNERS:
            slide = plism_data.slide_id_for(staining, scanner)
            plism_data.write_plismbench_features(root, slide, tile_ids, tissue + rng.normal(size=tissue.shape)
                                                 .astype(np.float32))
    return root


def partial_rows(out: Path) -> int:
    partial = list(out.glob(".pairs-partial-*.csv"))
    try:
        return len(partial[0].read_text().splitlines()) - 1 if partial else 0
    except FileNotFoundError:  # replaced between the listing and the read
        return 0


def wait_for_rows(out: Path, rows: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while partial_rows(out) < rows:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the evaluation made no progress"
        time.sleep(0.01)


def command(features: Path, out: Path) -> list[str]:
    return ["evaluate", "--bench", "plism", "--features-dir", str(features), "--model-name", "m", "--n-tiles", "all",
            "--out", str(out), "--no-progress", "--device", "cpu"]


def start(delay: float, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(delay), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_plism_killed_at_several_points_resumes_to_byte_identical_results(tmp_path):
    features = write_features(tmp_path / "features")
    reference = tmp_path / "reference"
    assert cli.main(command(features, reference)) == 0
    out = tmp_path / "killed"
    seen_rows = []
    for rows in (3, 40, None):  # after a few pairs, after many, and while the resumed run starts up
        process = start(0.04, command(features, out))
        if rows is None:
            time.sleep(0.5)
        else:
            wait_for_rows(out, rows, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        seen_rows.append(partial_rows(out))
        assert not (out / "run.json").exists()
    assert seen_rows[0] >= 3 and seen_rows[1] >= 40 and seen_rows[2] >= seen_rows[1]  # progress kept across kills
    finished = start(0.0, command(features, out))
    assert finished.wait(timeout=300) == 0, finished.stderr.read()
    for name in ("pairs.csv", "summary.csv", "results.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert leftovers == [], leftovers  # no partial file, no temporary file, no lock

    # a re-run of the complete run reuses it untouched
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert cli.main(command(features, out)) == 0
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert after == before


def test_floats_round_trip_exactly_through_a_resumed_csv(tmp_path):
    from pathbench.benches import plism as bench
    from pathbench.benches import plism_metrics
    from pathbench.results import read_csv_exact

    value = 0.022727272727272728  # 1 / 44: the default CSV parser reads it back as 0.0227272727272727
    frame = bench._pairs_frame([{"slide_a": "GIV_AT2_to_GMH_S60", "slide_b": "GIV_S60_to_GMH_S60",
                                 "staining_a": "GIV", "scanner_a": "AT2", "staining_b": "GIV", "scanner_b": "S60",
                                 **{m: value for m in bench.METRICS}}],
                               plism_metrics.all_pairs(["GIV_AT2_to_GMH_S60", "GIV_S60_to_GMH_S60"]))
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    assert read_csv_exact(tmp_path / "pairs.csv")["top_1_accuracy"].iloc[0] == value
    rewritten = tmp_path / "again.csv"
    read_csv_exact(tmp_path / "pairs.csv").to_csv(rewritten, index=False)
    assert rewritten.read_bytes() == (tmp_path / "pairs.csv").read_bytes()


def test_two_runs_in_one_folder_are_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    features = write_features(tmp_path / "features")
    out = tmp_path / "out"
    with folder_lock(out, "evaluation"):
        assert cli.main(command(features, out)) == 2
    err = capsys.readouterr().err
    assert f"process {os.getpid()}" in err and "two evaluations cannot write one folder" in err
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.mkdir(exist_ok=True)  # the refused run left no folder behind
    (out / ".pathbench.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match="no longer running"):
        assert cli.main(command(features, out)) == 0
    assert not (out / ".pathbench.lock").exists() and (out / "run.json").is_file()


def test_unwritable_output_and_cache_folders_fail_before_any_work(tmp_path, capsys):
    features = write_features(tmp_path / "features")
    assert cli.main(command(features, Path("/proc/pathbench-results"))) == 2
    assert "--out /proc/pathbench-results: cannot write to /proc" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert cli.main([*command(features, tmp_path / "out"), "--cache-dir", str(blocker / "cache")]) == 2
    assert "is a file, so no folder can be made there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # a failed run leaves no empty folder either
