"""Benchmarks as plugins: a third party's benchmark, installed as a real dist-info, works with
every command and the Python API without any change inside pathbench."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs" / "plugins.md"


def docs_plugin_code() -> str:
    """The ``acme_knn.py`` block of docs/plugins.md: the page's example is what is tested."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"`acme_knn\.py`:\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/plugins.md lost its acme_knn.py example"
    return match.group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "acme_knn.py").write_text(docs_plugin_code(), encoding="utf-8")
    (root / "acme_broken_bench.py").write_text("raise ImportError('libbroken.so not found')\n")
    info = root / "acme_knn-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-knn\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pathbench.benchmarks]\nacme-knn = acme_knn:KnnBenchmark\n"
                                           "broken = acme_broken_bench:Broken\n")
    return root


def run(site: Path, cwd: Path, *argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = code or "import sys; from pathbench.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", command, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def test_benchmarks_json_lists_the_builtins_and_the_plugin(site, tmp_path):
    result = run(site, tmp_path, "benchmarks", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"plism", "hest", "eva", "acme-knn"} <= set(rows)
    knn = rows["acme-knn"]
    assert knn["protocol"] == "acme-knn-v1" and knn["tasks"][0]["granularity"] == "tile"
    assert knn["metrics"] == [{"name": "accuracy", "label": "accuracy", "higher_is_better": True, "unit": "fold"}]
    assert {o["name"] for o in knn["options"]} == {"k", "folds"}
    assert rows["plism"]["precomputed_inputs"] == ["features_dir"] and rows["plism"]["headline"] == [
        "leaderboard_score"]
    assert rows["eva"]["tasks"][1] == {"name": "crc", "label": "CRC", "metric": "macro_accuracy",
                                       "granularity": "tile"}
    broken = [line for line in result.stderr.splitlines() if "broken" in line]
    assert len(broken) == 1 and "libbroken.so not found" in broken[0]


def test_the_plugin_runs_through_the_cli_and_the_leaderboard(site, tmp_path):
    help_text = run(site, tmp_path, "evaluate", "--bench", "acme-knn", "--help")
    assert help_text.returncode == 0 and "--k K" in help_text.stdout and "neighbours that vote" in help_text.stdout
    out = tmp_path / "pathbench-results" / "acme-knn" / "vit-tiny-random"
    result = run(site, tmp_path, "evaluate", "--bench", "acme-knn", "--model", "vit-tiny-random", "--data",
                 "synthetic", "--k", "3", "--no-progress", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert {"summary.csv", "results.csv", "run.json"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "run.json").read_text())
    assert record["protocol"] == "acme-knn-k3-4fold" and record["model"]["params"] > 0
    assert record["options"] == {"k": 3, "folds": 4} and record["complete"] is True
    board = run(site, tmp_path, "leaderboard", "--bench", "acme-knn")
    assert board.returncode == 0, board.stderr
    assert "Acme kNN leaderboard" in board.stdout and "vit-tiny-random" in board.stdout
    assert "acme-knn-k3-4fold" in board.stdout
    unknown = run(site, tmp_path, "evaluate", "--bench", "acme-knm", "--model", "vit-tiny-random")
    assert unknown.returncode == 2 and "Did you mean acme-knn" in unknown.stderr


def test_the_plugin_runs_through_the_python_api_with_the_same_numbers(site, tmp_path):
    code = ("import pathbench; r = pathbench.evaluate(model='vit-tiny-random', bench='acme-knn', data='synthetic', "
            "k=3, out='api', progress=False, device='cpu'); "
            "print(r.headline['average']); print(len(r.to_pandas())); print(r.protocol)")
    api = run(site, tmp_path, code=code)
    assert api.returncode == 0, api.stderr
    average, n_rows, protocol = api.stdout.split()
    assert int(n_rows) == 4 and protocol == "acme-knn-k3-4fold"
    cli = run(site, tmp_path, "evaluate", "--bench", "acme-knn", "--model", "vit-tiny-random", "--data", "synthetic",
              "--k", "3", "--no-progress", "--device", "cpu", "--out", "cli")
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "api" / "results.csv").read_bytes() == (tmp_path / "cli" / "results.csv").read_bytes()
    assert float(average) == json.loads((tmp_path / "cli" / "run.json").read_text())["headline"]["average"]
