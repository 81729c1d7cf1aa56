"""End to end: `pathbench evaluate --bench eva` on synthetic data, and both directions with eva's format."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pathbench.benches import eva as eva_bench
from pathbench.cli import main
from pathbench.errors import PathbenchError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("eva-cache")


@pytest.fixture(scope="module")
def synthetic_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("eva-results")
    code = main(["evaluate", "--model", "vit-tiny-random", "--bench", "eva:crc,mhist", "--data", "synthetic",
                 "--runs", "2", "--max-steps", "80", "--cache-dir", str(cache), "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_evaluate_on_synthetic_data_writes_runs_summary_and_provenance(synthetic_run, capsys):
    runs = pd.read_csv(synthetic_run / "runs.csv")
    assert list(runs.columns[:6]) == ["task", "run", "split", "metric", "value", "best_step"]
    assert runs.groupby("task").size().to_dict() == {"crc": 2, "mhist": 2}
    crc, mhist = runs[runs.task == "crc"], runs[runs.task == "mhist"]
    assert set(crc.metric) == {"macro_accuracy"} and set(crc.split) == {"val"}
    assert set(mhist.metric) == {"balanced_accuracy"} and set(mhist.split) == {"test"}
    assert runs["value"].between(0, 1).all() and (runs["best_step"] <= 80).all()

    summary = pd.read_csv(synthetic_run / "summary.csv")
    assert list(summary.columns[:5]) == ["task", "metric", "mean", "std", "n_runs"]
    crc_summary = summary.set_index("task").loc["crc"]
    assert crc_summary["mean"] == pytest.approx(crc["value"].mean())
    assert crc_summary["std"] == pytest.approx(crc["value"].std(ddof=1))

    record = json.loads((synthetic_run / "run.json").read_text())
    assert record["bench"] == "eva" and record["pooling"] == "cls"
    assert record["model"]["name"] == "vit-tiny-random"
    assert record["protocol"].startswith("eva-synthetic") and record["benchmark"]["protocol"] == "eva-v2"
    assert record["probe"]["per_task"]["crc"]["patience"] == 7
    assert record["probe"]["per_task"]["mhist"]["patience"] == 278
    assert record["probe"]["per_task"]["crc"]["lr"] == 3e-4
    assert record["average_without_bach"] == pytest.approx(summary["mean"].mean())


def test_eva_embeddings_written_by_pathbench_evaluate_to_the_same_numbers(synthetic_run, cache, tmp_path):
    # Direction 1: pathbench -> eva's format (what `eva fit` reads) ...
    emb_root = tmp_path / "embeddings" / "vit-tiny-random"
    code = main(["extract", "--model", "vit-tiny-random", "--format", "eva", "--task", "mhist",
                 "--data", "synthetic", "--cache-dir", str(cache), "--out", str(emb_root), "--no-progress"])
    assert code == 0
    manifest = pd.read_csv(emb_root / "mhist" / "manifest.csv")
    assert list(manifest.columns) == ["origin", "embeddings", "target", "split"]
    assert set(manifest.split) == {"train", "test"} and len(manifest) == 60
    # ... and direction 2: evaluating an eva embeddings folder gives what the model path gave.
    out = tmp_path / "from-eva"
    code = main(["evaluate", "--bench", "eva:mhist", "--embeddings-dir", str(emb_root), "--model-name", "vit-tiny-random",
                 "--runs", "2", "--max-steps", "80", "--probe-batch-size", str(eva_bench.SYNTHETIC_PROBE_BATCH_SIZE),
                 "--out", str(out), "--no-progress"])
    assert code == 0
    from_model = pd.read_csv(synthetic_run / "runs.csv").query("task == 'mhist'").reset_index(drop=True)
    from_eva = pd.read_csv(out / "runs.csv")
    assert from_eva["value"].tolist() == pytest.approx(from_model["value"].tolist(), abs=1e-6)
    assert from_eva["best_step"].tolist() == from_model["best_step"].tolist()
    # a task folder itself is accepted when one task is asked for
    code = main(["evaluate", "--bench", "eva:mhist", "--embeddings-dir", str(emb_root / "mhist"), "--model-name", "m",
                 "--runs", "1", "--max-steps", "5", "--out", str(tmp_path / "single"), "--no-progress"])
    assert code == 0


def test_bench_without_options_runs_every_task_whose_data_is_present(cache, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(eva_bench.synthetic_root(cache) / "mhist", data / "mhist")
    root, found = eva_bench.resolve_data(str(data), None, None)
    assert list(found) == ["mhist"]
    with pytest.raises(PathbenchError, match="no data for crc"):
        eva_bench.resolve_data(str(data), ["crc", "mhist"], None)


def test_a_corrupt_image_stops_the_evaluation_with_its_name(cache, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(eva_bench.synthetic_root(cache) / "mhist", data / "mhist")
    name = pd.read_csv(data / "mhist" / "annotations.csv").query("Partition == 'train'")["Image Name"].iloc[0]
    (data / "mhist" / "images" / name).write_bytes(b"\x89PNG truncated")
    code = main(["evaluate", "--model", "vit-tiny-random", "--bench", "eva:mhist", "--data", str(data),
                 "--cache-dir", str(cache), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert name in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["evaluate", "--model", "vit-tiny-random", "--bench", "eva:bach,foo"]) == 2
    assert "unknown eva task 'foo'" in capsys.readouterr().err
    assert main(["evaluate", "--model", "vit-tiny-random", "--bench", "eva"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["evaluate", "--bench", "eva:pcam", "--embeddings-dir", str(tmp_path), "--model-name", "m"]) == 2
    assert "no eva manifest for pcam" in capsys.readouterr().err


def test_table_is_shaped_like_the_papers_table_2():
    summary = pd.DataFrame([
        {"task": "bach", "metric": "macro_accuracy", "mean": 0.5, "std": 0.01, "n_runs": 5, "split": "val"},
        {"task": "crc", "metric": "macro_accuracy", "mean": 0.9, "std": 0.02, "n_runs": 5, "split": "val"},
        {"task": "pcam", "metric": "balanced_accuracy", "mean": 0.8, "std": 0.0, "n_runs": 5, "split": "test"},
    ])
    table = eva_bench.format_table("h0-mini", summary)
    header, _, values, _ = table.splitlines()
    assert [c.strip() for c in header.split("|")] == ["Model", "BACH", "CRC", "PCam", "Average (w/o BACH)"]
    assert [c.strip() for c in values.split("|")] == ["h0-mini", "0.500 ± 0.010", "0.900 ± 0.020",
                                                       "0.800 ± 0.000", "0.850"]


def test_knn_head_is_its_own_protocol_and_runs_report_evas_full_metric_set(cache, tmp_path, synthetic_run):
    out = tmp_path / "knn"
    assert main(["evaluate", "--model", "vit-tiny-random", "--bench", "eva:crc,mhist", "--head", "knn", "--data",
                 "synthetic", "--cache-dir", str(cache), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["protocol"] == "eva-knn20-synthetic"
    runs = pd.read_csv(out / "runs.csv")
    assert runs.groupby("task").size().to_dict() == {"crc": 1, "mhist": 1}  # deterministic: one run
    assert {"val_auroc", "val_f1", "test_precision", "test_recall"} <= set(runs.columns)
    assert "val_loss" not in runs.columns  # votes are not logits
    # the linear probe reports eva's whole set too, for val and the reported split, per run
    linear = pd.read_csv(synthetic_run / "runs.csv")
    for name in ("loss", "auroc", "accuracy", "balanced_accuracy", "f1", "precision", "recall"):
        assert f"val_{name}" in linear.columns and f"test_{name}" in linear.columns
    mhist = linear[linear.task == "mhist"]
    assert (mhist["value"] == mhist["test_balanced_accuracy"]).all()  # the headline is eva's metric
    rows = pd.read_csv(synthetic_run / "results.csv")
    assert {"macro_accuracy", "val_auroc", "test_f1"} <= set(rows["metric"])
    from pathbench import leaderboard as lb

    board = lb.build_leaderboard("eva", out, "none", n_boot=50)
    assert [g.protocol for g in board.groups] == ["eva-knn20-synthetic"]
