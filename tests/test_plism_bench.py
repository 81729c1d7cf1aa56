"""The PLISM benchmark end to end: CLI, outputs, resumption and every user error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pathbench import cli
from pathbench.benches import plism as bench
from pathbench.benches import plism_metrics
from pathbench.data import plism as plism_data
from pathbench.data import plism_hub
from pathbench.data import synthetic_plism as synth

OFFICIAL_SUBSETS = Path("/work/shared/data/plism-tile-subsets")
SMALL = {"stainings": ("GMH", "HR"), "scanners": ("S60", "AT2"), "n_tiles": 8}
SLIDES = sorted(plism_data.slide_id_for(st, sc) for st in SMALL["stainings"] for sc in SMALL["scanners"])


@pytest.fixture
def small_demo(monkeypatch):
    """``--data synthetic`` made tiny: 2 stainings x 2 scanners x 8 tiles."""
    monkeypatch.setattr(synth, "DEMO_STAININGS", SMALL["stainings"])
    monkeypatch.setattr(synth, "DEMO_SCANNERS", SMALL["scanners"])
    monkeypatch.setattr(synth, "DEMO_N_TILES", SMALL["n_tiles"])


@pytest.fixture
def small_folder(tmp_path):
    """A tiny simulated dataset in a local folder (hub parquet schema)."""
    return synth.write_synthetic_plism(tmp_path / "plism-data", **SMALL)


def evaluate(*flags: str) -> int:
    return cli.main(["evaluate", "--bench", "plism", "--no-progress", "--device", "cpu", *flags])


def assert_no_results(out: Path) -> None:
    leftovers = sorted(p.name for p in out.glob("*")) if out.exists() else []
    assert not {"run.json", "pairs.csv", "summary.csv"} & set(leftovers), leftovers
    assert not list(out.glob(".pairs-partial-*")) if out.exists() else True


# ------------------------------------------------------------------------------------
def test_demo_command_writes_pairs_summary_and_run_json(tmp_path, small_demo, capsys, monkeypatch):
    out = tmp_path / "results"
    assert evaluate("--model", "vit-tiny-random", "--data", "synthetic", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "NOT PLISM" in printed and "median (IQR)" in printed and "leaderboard score" in printed
    for group in plism_metrics.GROUPS:
        assert group in printed

    pairs = pd.read_csv(out / "pairs.csv")
    assert list(pairs.columns) == [
        "slide_a", "slide_b", "staining_a", "scanner_a", "staining_b", "scanner_b",
        "cosine_similarity", "top_1_accuracy", "top_3_accuracy", "top_5_accuracy", "top_10_accuracy",
        "cosine_margin",
    ]  # fmt: skip
    assert len(pairs) == 6 and set(pairs.slide_a) | set(pairs.slide_b) == set(SLIDES)
    assert pairs.loc[pairs.slide_a == "GMH_AT2_to_GMH_S60", "staining_a"].eq("GMH").all()
    assert pairs.filter(like="accuracy").stack().between(0, 1).all()

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["group", "metric", "mean", "std", "median", "iqr", "n_pairs"]
    assert summary.loc[summary.group == "inter-scanner", "n_pairs"].eq(2).all()

    assert not list(out.glob(".pairs-partial-*")), "the runner removes the progress file of a finished run"
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] is True
    assert run["leaderboard_score"] == pytest.approx(plism_metrics.leaderboard_score(summary))
    assert run["model"]["name"] == "vit-tiny-random" and run["model"]["weights_fingerprint"]
    assert run["model"]["precision"] == "fp32" and run["pooling"]
    assert run["tile_subset"] == {"spec": "all"} and run["slides"] == SLIDES
    assert run["n_tiles_per_slide"] == 8 and run["data"]["kind"] == "synthetic"
    assert "torch" in run["versions"] and "numpy" in run["versions"]

    # the numbers are the metrics of the cached features, slide by slide
    from pathbench.extractors import load_extractor
    from pathbench.features import extract_features

    extractor = load_extractor("vit-tiny-random", device="cpu")
    slides = plism_data.open_parquet_folder(synth.ensure_synthetic_plism())
    features = {
        s: np.asarray(extract_features(extractor, slides[s], pooling=run["pooling"], progress=False).array)
        for s in SLIDES
    }
    expected = plism_metrics.pair_metrics(features, plism_metrics.all_pairs(SLIDES), progress=False)
    for column in bench.METRICS:
        np.testing.assert_allclose(pairs[column].to_numpy(), expected[column].to_numpy(), rtol=0, atol=1e-12)

    # an identical run reuses the complete result: no metric is recomputed
    def must_not_run(*args, **kwargs):
        raise AssertionError("complete results must be reused")

    monkeypatch.setattr(plism_metrics, "iter_pair_metrics", must_not_run)
    assert evaluate("--model", "vit-tiny-random", "--data", "synthetic", "--out", str(out)) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "pairs.csv"), pairs)


def random_features(n_tiles: int = 23, dim: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_tiles, dim))
    return {s: (base + 0.8 * rng.normal(size=base.shape)).astype(np.float32) for s in SLIDES}


def test_an_interrupted_run_resumes_pair_by_pair(tmp_path, monkeypatch):
    features = random_features()
    settings = {"features": "random-0", "slides": SLIDES}
    reference = bench.evaluate_plism(
        features, SLIDES, tmp_path / "reference", settings=settings, progress=False
    )

    real = plism_metrics.iter_pair_metrics
    asked: list[list] = []

    def interrupted_after_four(features, pairs, **kwargs):
        asked.append(list(pairs))
        for i, row in enumerate(real(features, pairs, **kwargs)):
            if i == 4:
                raise KeyboardInterrupt
            yield row

    out = tmp_path / "run"
    monkeypatch.setattr(plism_metrics, "iter_pair_metrics", interrupted_after_four)
    with pytest.raises(KeyboardInterrupt):
        bench.evaluate_plism(features, SLIDES, out, settings=settings, progress=False, checkpoint_pairs=100)
    assert not (out / "run.json").exists() and not (out / "pairs.csv").exists()
    partial = list(out.glob(".pairs-partial-*.csv"))
    assert len(partial) == 1 and len(pd.read_csv(partial[0])) == 4

    def counting(features, pairs, **kwargs):
        asked.append(list(pairs))
        yield from real(features, pairs, **kwargs)

    monkeypatch.setattr(plism_metrics, "iter_pair_metrics", counting)
    result = bench.evaluate_plism(features, SLIDES, out, settings=settings, progress=False)
    assert len(asked[-1]) == 2  # only the pairs the interrupted run had not saved
    pd.testing.assert_frame_equal(result.pairs, reference.pairs)
    # the progress file now holds every pair; the runner removes it once the results are written
    assert len(pd.read_csv(next(out.glob(".pairs-partial-*.csv")))) == 6

    # changed settings (other features, other subset, ...) never reuse earlier rows
    other = random_features(seed=1)
    result = bench.evaluate_plism(
        other, SLIDES, out, settings={**settings, "features": "random-1"}, progress=False
    )
    assert len(asked[-1]) == 6
    expected = plism_metrics.pair_metrics(other, plism_metrics.all_pairs(SLIDES), progress=False)
    np.testing.assert_allclose(result.pairs["top_1_accuracy"], expected["top_1_accuracy"])


def test_a_stale_partial_file_of_another_configuration_is_ignored(tmp_path):
    features = random_features()
    out = tmp_path / "run"
    out.mkdir()
    stale = pd.DataFrame(
        [[*SLIDES[:2], "GMH", "AT2", "GMH", "S60", 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]], columns=list(bench.PAIR_COLUMNS)
    )
    stale.to_csv(out / ".pairs-partial-0000000000000000.csv", index=False)
    result = bench.evaluate_plism(features, SLIDES, out, settings={"x": 1}, progress=False)
    assert (result.pairs["cosine_similarity"] != 0.5).all()
    assert not (out / ".pairs-partial-0000000000000000.csv").exists()


# ------------------------------------------------------------------------------------
# plismbench-layout features
# ------------------------------------------------------------------------------------
def write_features(root: Path, features: dict[str, np.ndarray]) -> list[str]:
    n = len(next(iter(features.values())))
    tile_ids = [f"tile_16_{i % 5}_{i // 5}" for i in range(n)]
    for slide, array in features.items():
        plism_data.write_plismbench_features(root, slide, tile_ids, array)
    return tile_ids


def test_evaluate_features_dir_matches_the_metrics_engine(tmp_path, capsys):
    features = random_features(n_tiles=25)
    tile_ids = write_features(tmp_path / "feats", features)
    out = tmp_path / "out"
    code = evaluate(
        "--features-dir",
        str(tmp_path / "feats"),
        "--model-name",
        "mine",
        "--n-tiles",
        "all",
        "--out",
        str(out),
    )
    assert code == 0, capsys.readouterr().err
    pairs = pd.read_csv(out / "pairs.csv")
    order = plism_data.canonical_order(tile_ids)
    sorted_features = {s: f[order] for s, f in features.items()}
    expected = plism_metrics.pair_metrics(sorted_features, plism_metrics.all_pairs(SLIDES), progress=False)
    for column in bench.METRICS:
        np.testing.assert_allclose(pairs[column], expected[column], rtol=0, atol=1e-12)
    run = json.loads((out / "run.json").read_text())
    assert run["model_name"] == "mine" and run["data"]["kind"] == "features-dir"
    assert "mine" in capsys.readouterr().out

    # the same with a subset of rows: only those rows are used
    subset = tmp_path / "subset.npy"
    np.save(subset, np.array([0, 3, 7, 11, 12, 20, 24]))
    out2 = tmp_path / "out2"
    assert (
        evaluate(
            "--features-dir",
            str(tmp_path / "feats"),
            "--model-name",
            "mine",
            "--tile-subset",
            str(subset),
            "--out",
            str(out2),
        )
        == 0
    )
    rows = np.load(subset)
    expected = plism_metrics.pair_metrics(
        {s: f[rows] for s, f in sorted_features.items()}, plism_metrics.all_pairs(SLIDES), progress=False
    )
    np.testing.assert_allclose(pd.read_csv(out2 / "pairs.csv")["top_3_accuracy"], expected["top_3_accuracy"])
    assert json.loads((out2 / "run.json").read_text())["tile_subset"]["n_tiles"] == 7


def test_the_default_official_subset_on_too_few_tiles_is_a_clear_error(tmp_path, capsys, _isolated_cache):
    (_isolated_cache / "plism").mkdir(parents=True, exist_ok=True)
    shutil.copy(OFFICIAL_SUBSETS / "tiles_subset_8139.npy", _isolated_cache / "plism")
    write_features(tmp_path / "feats", random_features(n_tiles=10))
    out = tmp_path / "out"
    assert evaluate("--features-dir", str(tmp_path / "feats"), "--model-name", "mine", "--out", str(out)) == 2
    assert "--n-tiles all" in capsys.readouterr().err
    assert_no_results(out)


def test_nan_features_are_an_error_and_leave_no_result(tmp_path, capsys):
    features = random_features()
    features[SLIDES[2]][5, 1] = np.nan
    write_features(tmp_path / "feats", features)
    out = tmp_path / "out"
    assert (
        evaluate(
            "--features-dir",
            str(tmp_path / "feats"),
            "--model-name",
            "m",
            "--n-tiles",
            "all",
            "--out",
            str(out),
        )
        == 2
    )
    err = capsys.readouterr().err
    assert SLIDES[2] in err and ("NaN" in err or "nan" in err.lower())
    assert_no_results(out)


def test_features_dir_needs_a_model_name_not_a_model(tmp_path, capsys):
    write_features(tmp_path / "feats", random_features())
    assert evaluate("--features-dir", str(tmp_path / "feats"), "--n-tiles", "all") == 2
    assert "--model-name" in capsys.readouterr().err


# ------------------------------------------------------------------------------------
# Errors on image data
# ------------------------------------------------------------------------------------
def shard_of(folder: Path, slide: str) -> Path:
    for shard in sorted((folder / "data").glob("*.parquet")):
        if (
            plism_data.canonical_slide_id(pq.read_table(shard, columns=["slide_id"]).column(0)[0].as_py())
            == slide
        ):
            return shard
    raise AssertionError(slide)


def test_misaligned_slides_are_an_error_naming_the_slides(small_folder, tmp_path, capsys):
    shard = shard_of(small_folder, "HR_AT2_to_GMH_S60")
    pq.write_table(pq.read_table(shard).slice(1), shard)  # this slide loses one tile
    out = tmp_path / "out"
    assert (
        evaluate(
            "--model", "vit-tiny-random", "--data", str(small_folder), "--n-tiles", "all", "--out", str(out)
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "not aligned" in err and "HR_AT2_to_GMH_S60" in err
    assert_no_results(out)


def test_a_missing_slide_is_an_error_naming_it(small_folder, tmp_path, capsys):
    shard_of(small_folder, "HR_S60_to_GMH_S60").unlink()
    out = tmp_path / "out"
    flags = ["--model", "vit-tiny-random", "--data", str(small_folder), "--n-tiles", "all", "--out", str(out)]
    assert evaluate(*flags, "--stainings", "GMH", "HR", "--scanners", "S60", "AT2") == 2
    assert "HR_S60_to_GMH_S60" in capsys.readouterr().err
    assert_no_results(out)


def test_an_unreadable_tile_is_an_error_and_leaves_no_result(small_folder, tmp_path, capsys):
    shard = shard_of(small_folder, "GMH_AT2_to_GMH_S60")
    table = pq.read_table(shard)
    pngs = table.column("png").to_pylist()
    pngs[3] = {"bytes": pngs[3]["bytes"][:200], "path": None}  # truncated PNG
    table = table.set_column(
        table.schema.get_field_index("png"), "png", pa.array(pngs, table.schema.field("png").type)
    )
    pq.write_table(table, shard)
    out = tmp_path / "out"
    assert (
        evaluate(
            "--model", "vit-tiny-random", "--data", str(small_folder), "--n-tiles", "all", "--out", str(out)
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "GMH_AT2_to_GMH_S60" in err and "cannot be decoded" in err
    assert_no_results(out)


def test_features_as_data_point_to_features_dir(tmp_path, capsys):
    write_features(tmp_path / "feats", random_features())
    assert evaluate("--model", "vit-tiny-random", "--data", str(tmp_path / "feats"), "--n-tiles", "all") == 2
    assert "--features-dir" in capsys.readouterr().err


def test_console_table_shows_median_and_iqr_per_group():
    pairs = plism_metrics.pair_metrics(random_features(), plism_metrics.all_pairs(SLIDES), progress=False)
    summary = plism_metrics.summarise(pairs)
    text = bench.format_table(summary, plism_metrics.leaderboard_score(summary), title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and "top-10" in lines[2]
    row = next(line for line in lines if line.startswith("inter-staining "))
    cell = summary[(summary.group == "inter-staining") & (summary.metric == "cosine_similarity")].iloc[0]
    assert f"{cell['median']:.3f} ({cell['iqr']:.3f})" in row


# ------------------------------------------------------------------------------------
# Hub sources, with the network replaced by local files in the hub formats
# ------------------------------------------------------------------------------------
def test_data_hf_streams_only_the_selected_slides_into_the_cache(small_folder, monkeypatch, _isolated_cache):
    import datasets

    files = sorted(str(p) for p in (small_folder / "data").glob("*.parquet"))
    asked = []

    def local_stream(slide_ids=None):
        asked.append(sorted(slide_ids))
        stream = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
        yield from stream.cast_column("png", datasets.Image(decode=False))

    monkeypatch.setattr(plism_hub, "plism_hub_rows", local_stream)
    slides, source = bench.open_plism("hf", ["HR"], ["S60", "AT2"], progress=False)
    assert sorted(slides) == ["HR_AT2_to_GMH_S60", "HR_S60_to_GMH_S60"] and source["kind"] == "hub"
    assert asked == [["HR_AT2_to_GMH_S60", "HR_S60_to_GMH_S60"]]
    cached = sorted(p.name for p in (_isolated_cache / "plism" / "hub-tiles").glob("*.parquet"))
    assert cached == ["HR_AT2_to_GMH_S60.parquet", "HR_S60_to_GMH_S60.parquet"]
    reference = plism_data.open_parquet_folder(small_folder)["HR_S60_to_GMH_S60"]
    np.testing.assert_array_equal(slides["HR_S60_to_GMH_S60"][2], reference[2])
    # a second run finds the slides in the cache and streams nothing
    bench.open_plism("hf", ["HR"], ["S60", "AT2"], progress=False)
    assert len(asked) == 1


def test_data_hf_h5_downloads_only_the_selected_slides(small_folder, tmp_path, monkeypatch):
    import h5py
    import huggingface_hub

    source = plism_data.open_parquet_folder(small_folder)
    h5_dir = tmp_path / "h5"
    h5_dir.mkdir()
    for slide_id, dataset in source.items():
        with h5py.File(h5_dir / f"{slide_id}.tif.h5", "w") as handle:
            for i, tile_id in enumerate(dataset.item_ids):
                handle.create_dataset(tile_id, data=dataset[i])
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(h5_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    slides, _ = bench.open_plism("hf-h5", ["GMH"], ["S60", "AT2"], progress=False)
    assert sorted(slides) == ["GMH_AT2_to_GMH_S60", "GMH_S60_to_GMH_S60"]
    assert calls[0]["repo_id"] == "owkin/plism-dataset" and calls[0]["repo_type"] == "dataset"
    assert sorted(calls[0]["allow_patterns"]) == ["*GMH_AT2_to_GMH_S60.tif.h5", "*GMH_S60_to_GMH_S60.tif.h5"]
    np.testing.assert_array_equal(slides["GMH_S60_to_GMH_S60"][5], source["GMH_S60_to_GMH_S60"][5])


def test_progress_is_checkpointed_while_pairs_are_computed(tmp_path, monkeypatch):
    real = plism_metrics.iter_pair_metrics
    out = tmp_path / "run"
    seen = []

    def watching(features, pairs, **kwargs):
        for row in real(features, pairs, **kwargs):
            partial = list(out.glob(".pairs-partial-*.csv"))
            seen.append(len(pd.read_csv(partial[0])) if partial else 0)
            yield row

    monkeypatch.setattr(plism_metrics, "iter_pair_metrics", watching)
    bench.evaluate_plism(
        random_features(), SLIDES, out, settings={"x": 2}, progress=False, checkpoint_pairs=2
    )
    assert seen == [0, 0, 2, 2, 4, 4]  # as a kill -9 would find the folder before each pair
    assert len(pd.read_csv(next(out.glob(".pairs-partial-*.csv")))) == 6


def test_a_missing_features_dir_is_reported_before_any_download(tmp_path, capsys):
    from pathbench.cli import main

    status = main(["evaluate", "--bench", "plism", "--features-dir", str(tmp_path / "none"), "--model-name", "x"])
    assert status == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and "features.npy" in err and "download" not in err


def test_a_file_or_a_missing_folder_as_data_is_said_before_any_fetch(tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("nothing may be fetched before the data is found")

    monkeypatch.setattr(plism_data, "_download_bytes", no_network)
    a_file = tmp_path / "slides.parquet"
    a_file.write_text("x")
    assert evaluate("--model", "vit-tiny-random", "--data", str(a_file)) == 2
    assert "is a file; PLISM data is a folder" in capsys.readouterr().err
    assert evaluate("--model", "vit-tiny-random", "--data", str(tmp_path / "absent")) == 2
    assert "no such folder" in capsys.readouterr().err


def test_local_data_offline_uses_its_own_tiles_and_says_so(small_folder, tmp_path, monkeypatch, capsys):
    def offline(url):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(plism_data, "_download_bytes", offline)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="could not be fetched"):
        assert evaluate("--model", "vit-tiny-random", "--data", str(small_folder), "--out", str(out)) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["tile_subset"] == {"spec": "all"} and any("not comparable" in n for n in run["notes"])
    # an explicit official subset is never replaced
    assert evaluate("--model", "vit-tiny-random", "--data", str(small_folder), "--n-tiles", "8139",
                    "--out", str(tmp_path / "other")) == 2
    assert "could not download the official 8139-tile subset" in capsys.readouterr().err


def test_synthetic_data_passed_as_a_folder_stays_labelled_synthetic(small_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert evaluate("--model", "vit-tiny-random", "--data", str(small_folder), "--n-tiles", "all",
                    "--out", str(out)) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["synthetic"] is True and run["protocol"].startswith("plism-synthetic")
    assert "NOT PLISM" in capsys.readouterr().out
