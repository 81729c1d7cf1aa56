"""eva's slide-level and segmentation tasks through the benchmark: synthetic data in eva's real
layouts (pyramidal TIFF slides, .mat and .xml labels), the runner, the results schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pathbench import cli
from pathbench.benches import eva_seg
from pathbench.data import synthetic_slides

FAST_SEG = ["--seg-max-steps", "2", "--seg-batch-size", "4"]


def evaluate(*argv: str) -> int:
    return cli.main(["evaluate", "--model", "vit-tiny-random", "--no-progress", "--device", "cpu", *argv])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One feature cache for the module: the synthetic slides and crops are embedded once."""
    return tmp_path_factory.mktemp("eva-cache")


@pytest.mark.slow
def test_slide_tasks_run_abmil_on_bags_and_export_eva_format_both_ways(cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert evaluate("--bench", "eva:cam16-small,panda-small", "--data", "synthetic", "--runs", "3",
                    "--cache-dir", str(cache), "--out", str(out)) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert runs.groupby("task").size().to_dict() == {"cam16-small": 3, "panda-small": 3}
    assert set(runs.loc[runs.task == "cam16-small", "metric"]) == {"balanced_accuracy"}
    assert set(runs.loc[runs.task == "panda-small", "metric"]) == {"macro_accuracy"}
    assert set(runs["split"]) == {"test"} and runs["value"].between(0, 1).all()
    record = json.loads((out / "run.json").read_text())
    assert record["protocol"] == "eva-synthetic-ABMIL3runs" and record["embedding_dim"] == 192
    assert record["throughput"]["tiles_computed"] > 0

    # eva's slide format: pathbench writes it, and reads it back to the same numbers
    emb = tmp_path / "emb"
    assert cli.main(["extract", "--model", "vit-tiny-random", "--format", "eva", "--task", "cam16-small", "--data",
                     "synthetic", "--out", str(emb), "--cache-dir", str(cache), "--no-progress",
                     "--device", "cpu"]) == 0
    manifest = pd.read_csv(emb / "camelyon16_small" / "manifest.csv")
    assert list(manifest.columns) == ["origin", "embeddings", "target", "split", "wsi_id"]
    assert {p.name for p in (emb / "camelyon16_small").glob("coords_*.csv")} == {"coords_train.csv",
                                                                                  "coords_val.csv", "coords_test.csv"}
    again = tmp_path / "from-eva"
    assert cli.main(["evaluate", "--bench", "eva:cam16-small", "--embeddings-dir", str(emb), "--model-name", "m",
                     "--runs", "3", "--out", str(again), "--no-progress", "--device", "cpu"]) == 0
    direct = runs[runs.task == "cam16-small"]["value"].to_numpy()
    assert pd.read_csv(again / "runs.csv")["value"].to_numpy() == pytest.approx(direct, abs=1e-6)


@pytest.mark.slow
def test_unusable_slides_are_recorded_skips_and_bags_resume_per_slide(cache, tmp_path, monkeypatch):
    import pathbench.features as features

    data = tmp_path / "data"
    source = synthetic_slides.synthetic_task_paths(
        synthetic_slides.make_synthetic_slides(synthetic_slides.synthetic_slides_root(str(cache))))["camelyon16"]
    shutil.copytree(source, data / "camelyon16")
    broken = sorted((data / "camelyon16" / "training" / "tumor").glob("*.tif"))[0]
    broken.write_bytes(b"not a tiff at all")
    blank = sorted((data / "camelyon16" / "training" / "normal").glob("*.tif"))[0]
    synthetic_slides.write_pyramidal_tiff(blank, __import__("numpy").full((512, 512, 3), 255, "uint8"), 0.25)

    # a first run stops after two slides were embedded ...
    real, calls = features.extract_features, []

    def stop_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "extract_features", stop_after_two)
    out = tmp_path / "run"
    assert evaluate("--bench", "eva:cam16-small", "--data", str(data), "--runs", "2", "--out", str(out)) == 130
    monkeypatch.setattr(features, "extract_features", real)
    # ... the next one reuses those two bags and embeds only the others
    assert evaluate("--bench", "eva:cam16-small", "--data", str(data), "--runs", "2", "--out", str(out)) == 0
    record = json.loads((out / "run.json").read_text())
    assert 0 < record["throughput"]["tiles_computed"] < record["throughput"]["tiles"]
    skipped = {s["slide_id"]: s["reason"] for s in record["skipped_slides"]["cam16-small"]}
    assert set(skipped) == {broken.stem, blank.stem}
    assert "foreground" in skipped[blank.stem]
    assert any(broken.stem in note for note in record["notes"])


@pytest.mark.slow
def test_segmentation_cached_equals_eva_on_consep_and_monusac_protocols_differ(cache, tmp_path, monkeypatch):
    runs = {}
    for protocol in ("eva", "cached"):
        out = tmp_path / protocol
        assert evaluate("--bench", "eva:consep", "--data", "synthetic", "--seg-protocol", protocol, "--runs", "1",
                        *FAST_SEG, "--cache-dir", str(cache), "--out", str(out)) == 0
        runs[protocol] = pd.read_csv(out / "runs.csv")
        assert runs[protocol]["metric"].eq("dice").all() and runs[protocol]["split"].eq("val").all()
    # CoNSeP's eva transforms are deterministic: the cached protocol is the exact one
    pd.testing.assert_series_equal(runs["eva"]["value"], runs["cached"]["value"])
    ids = {}
    for protocol in ("eva", "cached"):
        out = tmp_path / f"monusac-{protocol}"
        assert evaluate("--bench", "eva:monusac", "--data", "synthetic", "--seg-protocol", protocol, "--runs", "1",
                        *FAST_SEG, "--cache-dir", str(cache), "--out", str(out)) == 0
        ids[protocol] = json.loads((out / "run.json").read_text())["protocol"]
        frame = pd.read_csv(out / "runs.csv")
        assert frame["inputs"].iloc[0] == ("online" if protocol == "eva" else "cached")
    assert ids["eva"] != ids["cached"] and "segmentationcached" in ids["cached"]

    # finished runs are kept: an interrupted evaluation resumes at the first unfinished run
    import pathbench.heads.segmentation as segmentation

    trained = []
    real = segmentation.train_segmentation

    def stopped_in_run_1(*args, **kwargs):
        trained.append(kwargs["runs"])
        if kwargs["runs"] == [1] and len(trained) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(segmentation, "train_segmentation", stopped_in_run_1)
    out = tmp_path / "resume"
    argv = ["--bench", "eva:consep", "--data", "synthetic", "--runs", "2", *FAST_SEG, "--cache-dir", str(cache),
            "--out", str(out)]
    assert evaluate(*argv) == 130
    assert len(list(out.glob(".consep-partial-*.json"))) == 1
    assert evaluate(*argv) == 0
    assert trained == [[0], [1], [1]]  # run 0 was not trained again
    assert not list(out.glob(".consep-partial-*")) and len(pd.read_csv(out / "runs.csv")) == 2


def test_segmentation_needs_a_model_and_precomputed_bags_are_refused_for_it(tmp_path, capsys):
    assert cli.main(["evaluate", "--bench", "eva:consep", "--embeddings-dir", str(tmp_path), "--model-name", "m"]) == 2
    assert "need a model" in capsys.readouterr().err
    assert evaluate("--bench", "eva:panda-small", "--data", str(tmp_path), "--panda-labels",
                    str(tmp_path / "absent.csv")) == 2
    err = capsys.readouterr().err
    assert "--panda-labels" in err and "no such file" in err


def test_eva_finds_slide_and_segmentation_folders_in_eva_layout(tmp_path):
    from pathbench.benches import eva_slide

    (tmp_path / "camelyon16" / "training").mkdir(parents=True)
    (tmp_path / "camelyon16" / "testing").mkdir()
    (tmp_path / "panda" / "train_images").mkdir(parents=True)
    (tmp_path / "consep" / "Train" / "Images").mkdir(parents=True)
    assert eva_slide.find_root("cam16-small", tmp_path) == tmp_path / "camelyon16"
    assert eva_slide.find_root("panda-small", tmp_path) == tmp_path / "panda"
    assert eva_seg.find_root("consep", tmp_path) == tmp_path / "consep"
    assert eva_seg.find_root("monusac", tmp_path) is None
    assert eva_seg.find_root("consep", Path(tmp_path / "consep")) == tmp_path / "consep"


@pytest.mark.slow
def test_bags_are_shared_slide_by_slide_under_torchrun_with_the_same_result(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    root = synthetic_slides.make_synthetic_slides(tmp_path / "data", tasks=("camelyon16",))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["extract", "--model", "vit-tiny-random", "--format", "eva", "--task", "cam16-small", "--data",
              str(root), "--no-progress", "--device", "cpu"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pathbench.cli", *common, "--out", str(tmp_path / "two"), "--cache-dir",
                          str(tmp_path / "cache2")], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "pathbench.cli", *common, "--out", str(tmp_path / "one"),
                          "--cache-dir", str(tmp_path / "cache1")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    folder_one, folder_two = tmp_path / "one" / "camelyon16_small", tmp_path / "two" / "camelyon16_small"
    assert (folder_one / "manifest.csv").read_bytes() == (folder_two / "manifest.csv").read_bytes()
    files = sorted(p.name for p in folder_one.rglob("*.pt"))
    assert files and files == sorted(p.name for p in folder_two.rglob("*.pt"))
    for one_file, two_file in zip(sorted(folder_one.rglob("*.pt")), sorted(folder_two.rglob("*.pt")), strict=True):
        for a, b in zip(torch.load(one_file), torch.load(two_file), strict=True):
            assert torch.equal(a, b)
    # each rank embedded whole slides: the shared cache holds one complete entry per slide, written by both ranks
    entries = [p for p in (tmp_path / "cache2" / "features").glob("*/*") if (p / "manifest.json").is_file()]
    assert len(entries) == len(files)
    writers = {json.loads((p / "manifest.json").read_text())["written_by"] for p in entries}
    assert len(writers) == 2
