"""The runner and the Python API: one place turns a model into embeddings, and the results
schema every benchmark writes; plus the import rules the architecture depends on."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import pathbench
from pathbench import cli
from pathbench.benches import get_benchmark, list_benchmarks
from pathbench.data import synthetic_plism as synth
from pathbench.errors import PathbenchError

PACKAGE = Path(pathbench.__file__).parent


@pytest.fixture
def small_plism(monkeypatch):
    monkeypatch.setattr(synth, "DEMO_STAININGS", ("GMH", "HR"))
    monkeypatch.setattr(synth, "DEMO_SCANNERS", ("S60", "AT2"))
    monkeypatch.setattr(synth, "DEMO_N_TILES", 8)


def test_python_evaluate_returns_results_and_writes_what_the_cli_writes(tmp_path, small_plism):
    results = pathbench.evaluate(model="vit-tiny-random", bench="plism", data="synthetic", out=tmp_path / "api",
                                 progress=False, device="cpu")
    assert results.bench == "plism" and results.model == "vit-tiny-random"
    assert results.protocol == "plism-synthetic-4x8"
    assert list(results.summary.columns) == ["group", "metric", "mean", "std", "median", "iqr", "n_pairs"]
    frame = results.to_pandas()
    assert list(frame.columns) == ["bench", "protocol", "task", "unit", "metric", "value"]
    assert len(frame) == 6 * 6 and set(frame["task"]) == {"inter_scanner", "inter_staining", "both"}
    assert results.headline["leaderboard_score"] == pytest.approx(results.run["leaderboard_score"])

    assert cli.main(["evaluate", "--bench", "plism", "--model", "vit-tiny-random", "--data", "synthetic",
                     "--out", str(tmp_path / "cli"), "--no-progress", "--device", "cpu"]) == 0
    for name in ("pairs.csv", "summary.csv", "results.csv"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    again = pathbench.load_results(tmp_path / "api")
    pd.testing.assert_frame_equal(again.rows, results.rows)


def test_run_json_records_size_dimension_and_throughput_at_evaluation_time(tmp_path, small_plism):
    results = pathbench.evaluate(model="vit-tiny-random", bench="plism", data="synthetic", out=tmp_path,
                                 progress=False, device="cpu")
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["model"]["params"] > 0 and record["model"]["embed_dim"] == 192
    assert record["embedding_dim"] == 192 and record["model"]["tiles_per_s"] > 0
    assert record["throughput"]["tiles"] == 32 and record["throughput"]["tiles_computed"] == 32
    assert record["benchmark"] == {"name": "plism", "protocol": "plism-v1", "title": get_benchmark("plism").title}
    assert record["synthetic"] is True and record["data_id"] and record["complete"] is True
    assert record["options"]["backend"] == "auto" and record["schema"] == 1
    # a second run reads everything from the feature cache and reports the recorded rate
    pathbench.evaluate(model="vit-tiny-random", bench="plism", data="synthetic", out=tmp_path / "again",
                       progress=False, device="cpu")
    again = json.loads((tmp_path / "again" / "run.json").read_text())
    assert again["throughput"]["tiles_computed"] == 0 and again["model"]["tiles_per_s"] > 0
    assert results.out_dir == tmp_path


def test_options_are_checked_before_any_work(tmp_path, capsys):
    with pytest.raises(PathbenchError, match="has no option n_tile.*n_tiles"):
        pathbench.evaluate(model="vit-tiny-random", bench="plism", data="synthetic", n_tile="all")
    with pytest.raises(PathbenchError, match="batch-size must be a positive integer"):
        pathbench.evaluate(model="vit-tiny-random", bench="plism", data="synthetic", batch_size=0)
    with pytest.raises(PathbenchError, match="takes no options after ':'"):
        pathbench.evaluate(model="vit-tiny-random", bench="plism:all", data="synthetic")
    with pytest.raises(PathbenchError, match="unknown model"):
        pathbench.evaluate(model="no-such-model", bench="hest", data=str(tmp_path / "absent"))
    assert cli.main(["evaluate", "--bench", "hest:SYN_A", "--tasks", "SYN_B", "--model", "vit-tiny-random",
                     "--data", "synthetic"]) == 2
    assert "disagree" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        cli.main(["evaluate", "--bench", "plism", "--model", "vit-tiny-random", "--batch-size", "x"])
    assert stopped.value.code == 2 and "--batch-size expects an integer, got 'x'" in capsys.readouterr().err


def test_each_benchmark_help_lists_its_own_flags_and_keeps_line_breaks(capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--bench", "plism", "--help"])
    text = capsys.readouterr().out
    assert "--n-tiles" in text and "--features-dir" in text and "--model" in text
    assert "Examples::\n\n    pathbench evaluate" in text  # the module's examples keep their layout


def test_benchmarks_declare_identity_granularity_and_leaderboard():
    names = [b.name for b in list_benchmarks()]
    assert {"plism", "hest", "eva"} <= set(names)
    for benchmark in list_benchmarks():
        assert re.fullmatch(r"[a-z0-9-]+-v\d+", benchmark.protocol), benchmark.protocol
        assert benchmark.tasks and benchmark.metrics and benchmark.leaderboard.title
        metric_names = {m.name for m in benchmark.metrics}
        assert all(t.metric in metric_names for t in benchmark.tasks)
        assert benchmark.leaderboard.primary


# ----------------------------------------------------------------------------------------
# The architecture's import rules
# ----------------------------------------------------------------------------------------
def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_benchmarks_import_no_extractor_no_feature_store_and_no_argparse():
    for path in sorted((PACKAGE / "benches").glob("*.py")):
        modules = imported_modules(path)
        bad = {m for m in modules if m.startswith(("pathbench.extractors", "pathbench.features", "pathbench.cli",
                                                    "pathbench.runner")) or m == "argparse"}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_leaderboard_names_no_benchmark_and_imports_no_extractor():
    for path in sorted((PACKAGE / "leaderboard").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b(plism|hest|eva)\b", text, re.I), f"{path.name} names a benchmark"
        bad = {m for m in imported_modules(path) if m.startswith(("pathbench.extractors", "pathbench.features",
                                                                   "pathbench.runner", "torch", "timm"))}
        assert not bad, f"{path.name} imports {sorted(bad)}"
        concrete = {f"pathbench.benches.{f.stem}" for f in (PACKAGE / "benches").glob("*.py")
                    if f.stem not in ("__init__", "base")}
        assert not {m for m in imported_modules(path) if m.rsplit(".", 1)[0] in concrete or m in concrete}, path.name


def test_a_degenerate_model_is_flagged_in_run_json_the_console_and_every_rendering(tmp_path):
    import numpy as np

    from pathbench import leaderboard as lb
    from pathbench.data import plism as plism_data

    rng = np.random.default_rng(0)
    slides = [plism_data.slide_id_for(st, sc) for st in ("GMH", "HR") for sc in ("S60", "AT2")]
    tile_ids = [f"tile_16_{i % 6}_{i // 6}" for i in range(30)]
    tissue = rng.normal(size=(30, 16)).astype(np.float32)
    constant = np.ones((30, 16), dtype=np.float32)
    for name, base, noise in (("healthy", tissue, 0.5), ("collapsed", constant, 1e-4)):
        for slide in slides:
            plism_data.write_plismbench_features(tmp_path / name, slide, tile_ids,
                                                 base + noise * rng.normal(size=base.shape).astype(np.float32))
    results = tmp_path / "results"
    with pytest.warns(UserWarning, match="collapsed: degenerate embeddings"):
        pathbench.evaluate(bench="plism", features_dir=str(tmp_path / "collapsed"), model_name="collapsed",
                           n_tiles="all", out=results / "plism" / "collapsed", progress=False, device="cpu")
    pathbench.evaluate(bench="plism", features_dir=str(tmp_path / "healthy"), model_name="healthy", n_tiles="all",
                       out=results / "plism" / "healthy", progress=False, device="cpu")
    collapsed = json.loads((results / "plism" / "collapsed" / "run.json").read_text())
    healthy = json.loads((results / "plism" / "healthy" / "run.json").read_text())
    assert collapsed["degenerate"] is True and collapsed["embedding_health"]["mean_cosine"] > 0.98
    assert healthy["degenerate"] is False and healthy["embedding_health"]["datasets"] == 4
    # the collapsed model wins the cosine column, and every rendering says what it is worth
    board = lb.build_leaderboard("plism", results, "none", n_boot=50)
    group = next(g for g in board.groups if any(e.is_run for e in g.entries))
    assert next(e for e in group.entries if e.model == "collapsed").marks.get("cosine_all") == "best"
    assert "collapsed ⚠" in lb.render(board, "md") and "⚠:" in lb.render(board, "md")
    frame = lb.leaderboard_frame(board)
    assert frame.set_index("model").loc["collapsed", "degenerate"] and not frame.set_index("model").loc[
        "healthy", "degenerate"]
    assert "collapsed (!)" in lb.render(board, "latex")
    assert "collapsed ⚠" in lb.render(board, "html")
    # the margin a constant embedding cannot win
    margins = {e.model: e.values["margin_all"] for e in group.entries}
    assert margins["collapsed"] < 0.01 < margins["healthy"]
