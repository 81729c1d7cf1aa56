"""Leaderboards: reference tables, reading runs, merging, ranking, protocols, paired tests."""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from pathbench import leaderboard as lb
from pathbench import stats
from pathbench.errors import PathbenchError

STAININGS = ("GIV", "GM", "KR")
SCANNERS = ("AT2", "GT450", "S60")
N_BOOT = 200


# ----------------------------------------------------------------------------------------
# Fixture writers: the on-disk formats the benchmarks write (issues PLISM, HEST, EVA)
# ----------------------------------------------------------------------------------------
def write_run_json(folder: Path, model: str, bench: str, top: dict | None = None, **settings) -> None:
    """A run.json shaped like pathbench.provenance's record, with bench-specific keys."""
    record = {
        "created": "2026-01-01T00:00:00+0000", "command": f"pathbench evaluate --model {model} --bench {bench}",
        "versions": {"pathbench": "0.1.0", "python": "3.11"},
        "model": {"name": model, "weights_fingerprint": f"sha256:{model}", "precision": "fp32", "params": 5_000_000},
        "pooling": settings.pop("pooling", "cls"), "an_unknown_key": {"nested": [1, 2, 3]},
        **(top or {}), "settings": settings,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")


def plism_pairs(stainings=STAININGS, scanners=SCANNERS, offset=0.0, seed=0) -> pd.DataFrame:
    """One row per unordered slide pair with the plismbench column names."""
    rng = np.random.default_rng(seed)
    slides = [(st, sc) for st in stainings for sc in scanners]
    rows = []
    for (st_a, sc_a), (st_b, sc_b) in itertools.combinations(slides, 2):
        base = 0.9 if st_a == st_b else (0.5 if sc_a == sc_b else 0.3)
        top = np.clip(np.sort(rng.uniform(base - 0.2, base, 4)) + offset, 0, 1)
        rows.append({"slide_a": f"{st_a}_{sc_a}_to_GMH_S60", "slide_b": f"{st_b}_{sc_b}_to_GMH_S60",
                     "staining_a": st_a, "scanner_a": sc_a, "staining_b": st_b, "scanner_b": sc_b,
                     "cosine_similarity": float(np.clip(rng.uniform(0.6, 0.9) + offset, 0, 1)),
                     "top_1_accuracy": top[0], "top_3_accuracy": top[1], "top_5_accuracy": top[2],
                     "top_10_accuracy": top[3]})
    return pd.DataFrame(rows)


def write_plism_run(root: Path, model: str, offset=0.0, seed=0, stainings=STAININGS, scanners=SCANNERS,
                    data="synthetic", n_tiles=64, folder=None, with_score=True) -> Path:
    out = root / "plism" / (folder or model)
    pairs = plism_pairs(stainings, scanners, offset, seed)
    out.mkdir(parents=True, exist_ok=True)
    pairs.to_csv(out / "pairs.csv", index=False)
    summary = []
    groups = lb.plism_pair_groups(pairs)
    for group in ("all", "inter_scanner", "inter_staining", "both"):
        mask = np.ones(len(pairs), bool) if group == "all" else groups == group
        for metric in ("cosine_similarity", "top_1_accuracy", "top_3_accuracy", "top_5_accuracy", "top_10_accuracy"):
            v = pairs.loc[mask, metric].to_numpy()
            summary.append({"group": group.replace("_", "-"), "metric": metric, "mean": v.mean(), "std": v.std(),
                            "median": np.median(v), "iqr": np.subtract(*np.quantile(v, [0.75, 0.25])),
                            "n_pairs": len(v)})
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    score = float(np.mean([np.median(pairs["cosine_similarity"])] + [
        np.median(pairs.loc[groups == g, "top_10_accuracy"]) for g in ("inter_scanner", "inter_staining", "both")]))
    slides = sorted(set(pairs["slide_a"]) | set(pairs["slide_b"]))
    top = {"benchmark": "plism", "model_name": model, "n_tiles_per_slide": n_tiles, "slides": slides,
           "data": {"kind": "synthetic", "path": f"/cache/synthetic-{n_tiles}", "seed": 0} if data == "synthetic"
           else {"kind": "hub", "repo": "owkin/plism-dataset-tiles"},
           "tile_subset": {"spec": str(n_tiles), "n_tiles": n_tiles}, "complete": True}
    if with_score:
        top["leaderboard_score"] = score
    write_run_json(out, model, "plism", top, protocol="plism-v1", slides=slides)
    return out


HEST_TASKS = ("IDC", "PRAD", "PAAD", "SKCM", "COAD", "READ", "CCRCC", "LUNG", "LYMPH_IDC")


def write_hest_run(root: Path, model: str, tasks=("TASKA", "TASKB"), offset=0.0, seed=0, data="synthetic",
                   folds=2, genes=8, folder=None) -> Path:
    rng = np.random.default_rng(seed)
    out = root / "hest" / (folder or model)
    out.mkdir(parents=True, exist_ok=True)
    gene_rows, fold_rows = [], []
    for t, task in enumerate(tasks):
        for fold in range(folds):
            r = np.clip(rng.uniform(0.1, 0.6, genes) + offset + 0.01 * t, -1, 1)
            for g in range(genes):
                gene_rows.append({"task": task, "fold": fold, "gene": f"G{g}", "pearson": r[g], "excluded": ""})
            fold_rows.append({"task": task, "fold": fold, "pearson_mean": r.mean(), "n_genes": genes,
                              "n_train_spots": 100, "n_test_spots": 50})
    folds_frame = pd.DataFrame(fold_rows)
    pd.DataFrame(gene_rows).to_csv(out / "genes.csv", index=False)
    folds_frame.to_csv(out / "folds.csv", index=False)
    summary = [{"task": task, "pearson_mean": g["pearson_mean"].mean(), "pearson_std": g["pearson_mean"].std(ddof=0),
                "n_folds": len(g)} for task, g in folds_frame.groupby("task", sort=False)]
    summary.append({"task": "average", "pearson_mean": np.mean([s["pearson_mean"] for s in summary]),
                    "pearson_std": 0.0, "n_folds": len(folds_frame)})
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    root = "/cache/datasets/synthetic-hest-v1" if data == "synthetic" else "/hub/MahmoodLab/hest-bench"
    write_run_json(out, model, "hest", {"bench": "hest"}, data=root, head="ridge-pca", tasks=list(tasks),
                   pooling="cls+mean")
    return out


def write_eva_run(root: Path, model: str, tasks=("bach", "crc", "mhist", "pcam"), offset=0.0, seed=0,
                  data="synthetic", n_runs=5, folder=None) -> Path:
    rng = np.random.default_rng(seed)
    out = root / "eva" / (folder or model)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in tasks:
        for r in range(n_runs):
            split = "test" if task == "pcam" else "val"
            rows.append({"task": task, "run": r, "split": split, "metric": "balanced_accuracy",
                         "value": float(np.clip(rng.uniform(0.7, 0.9) + offset, 0, 1)), "best_step": 100})
            if task == "pcam":  # eva also logs validation where a test split exists
                rows.append({"task": task, "run": r, "split": "val", "metric": "balanced_accuracy",
                             "value": 0.5, "best_step": 100})
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "runs.csv", index=False)
    reported = runs[(runs["split"] == "test") | (runs["task"] != "pcam")]
    summary = [{"task": t, "metric": "balanced_accuracy", "mean": g["value"].mean(), "std": g["value"].std(ddof=1),
                "n_runs": len(g)} for t, g in reported.groupby("task", sort=False)]
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    per_task = {t: {"runs": n_runs, "max_steps": 12500, "batch_size": 256} for t in tasks}
    write_run_json(out, model, "eva", {"bench": "eva", "protocol": {"eva_defaults": True, "per_task": per_task},
                                       "source": {"data": f"/data/{data}-eva"}})
    return out


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------
# Reference tables
# ----------------------------------------------------------------------------------------
def test_reference_tables_hold_every_published_row_with_provenance():
    counts = {("plism", "plismbench"): 15, ("plism", "paper"): 13, ("hest", "paper"): 10, ("eva", "paper"): 9}
    for (bench, source), n in counts.items():
        entries = lb.load_references(bench, source)
        assert len(entries) == n
        for entry in entries:
            for key in ("source", "table", "protocol", "date"):
                assert entry.provenance.get(key), (entry.model, key)
    assert lb.available_references("plism") == ["paper", "plismbench"]


def test_reference_values_are_transcribed_exactly_as_published():
    hest = {e.model: e for e in lb.load_references("hest", "paper")}
    assert hest["Prov-Gigapath"].text["READ"] == "0.186"
    assert hest["Kaiko ViT-B/8"].text["average"] == "0.3912"
    assert hest["UNI 1.5"].provenance.get("size") in (None, "-")
    plism = {e.model: e for e in lb.load_references("plism", "paper")}
    assert plism["Phikon-V2"].extras["cosine_all"] == "0.16"
    assert plism["H0-Mini"].values["top5_all"] == 0.451
    board = {e.model: e for e in lb.load_references("plism", "plismbench")}
    assert board["Midnight-12k"].provenance["date"] == "2025-06"
    assert board["H0-Mini"].values == pytest.approx({"cosine_all": 0.8, "top10_inter_scanner": 0.864,
                                                     "top10_inter_staining": 0.318, "top10_both": 0.183,
                                                     "leaderboard_score": 0.541})
    eva = {e.model: e for e in lb.load_references("eva", "paper")}
    assert eva["Virchow2"].values["average_patch"] == pytest.approx((0.966 + 0.858 + 0.936) / 3)


def test_average_check_reports_exactly_the_rows_whose_average_disagrees():
    checks = lb.check_reference_averages()
    assert len(checks) == 10 + 9 + 15  # HEST average, EVA average, plismbench score
    bad = {(c.source_file, c.model): c for c in checks if not c.ok}
    assert set(bad) == {("paper_hest.csv", "Kaiko ViT-B/8"), ("paper_hest.csv", "UNI 1.5")}
    kaiko = bad[("paper_hest.csv", "Kaiko ViT-B/8")]
    assert kaiko.published == 0.3912
    assert kaiko.recomputed == pytest.approx(0.399, abs=5e-5)
    assert "0.3912" in kaiko.describe() and "0.3990" in kaiko.describe()
    assert max(abs(c.difference) for c in checks if c.ok) <= 0.0005 + 1e-12


def test_kaiko_average_keeps_the_published_number_and_gets_a_footnote(tmp_path):
    board = lb.build_leaderboard("hest", tmp_path, "paper", n_boot=N_BOOT)
    kaiko = next(e for e in board.entries if e.model == "Kaiko ViT-B/8")
    assert kaiko.values["average"] == 0.3912
    assert kaiko.cell_notes["average"]
    text = lb.render_markdown(board)
    assert "0.3912‡" in text
    assert "Kaiko ViT-B/8 publishes average = 0.3912" in text


def test_a_reference_table_without_provenance_is_refused(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("bench,model,average\nhest,X,0.4\n", encoding="utf-8")
    with pytest.raises(PathbenchError, match="provenance|lacks the columns"):
        lb.read_reference_table(bad)


def test_unknown_reference_names_the_available_ones(tmp_path):
    with pytest.raises(PathbenchError, match="available: paper, none"):
        lb.build_leaderboard("hest", tmp_path, "plismbench")


# ----------------------------------------------------------------------------------------
# Ranking and marks
# ----------------------------------------------------------------------------------------
def _entry(model, value, protocol="p"):
    return lb.Entry(model=model, model_key=model, origin="reference", protocol=protocol, protocol_detail=protocol,
                    pooling="cls", values={"score": value, "other": -value})


def test_ranking_gives_tied_rows_the_same_rank_and_skips_the_next():
    entries = [_entry("a", 0.5), _entry("b", 0.7), _entry("c", 0.5), _entry("d", float("nan")), _entry("e", 0.3)]
    ranked = lb.rank_entries(entries, "score")
    assert [(e.model, e.rank) for e in ranked] == [("b", 1), ("a", 2), ("c", 2), ("e", 4), ("d", None)]


def test_best_and_second_best_marks_are_shared_by_ties():
    entries = [_entry("a", 0.7), _entry("b", 0.7), _entry("c", 0.5), _entry("d", 0.5), _entry("e", 0.1)]
    lb.mark_best(entries, ["score"])
    assert [e.marks.get("score") for e in entries] == ["best", "best", "second", "second", None]


def test_plismbench_ties_share_a_rank(tmp_path):
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    ranks = {e.model: e.rank for e in board.entries}
    assert ranks["H0-Mini"] == 1 and ranks["Hibou Large"] == 15
    assert ranks["UNI"] == ranks["Kaiko ViT-B/8"] == 8
    assert ranks["GPFM"] == 10
    best = {e.model for e in board.entries if e.marks.get("cosine_all") == "best"}
    assert best == {"PLIP"}


def test_rows_from_different_protocols_are_never_ranked_together(tmp_path):
    with pytest.raises(PathbenchError, match="different protocols"):
        lb.rank_entries([_entry("a", 0.5, "p1"), _entry("b", 0.4, "p2")], "score")
    write_plism_run(tmp_path, "model-a", n_tiles=64)
    write_plism_run(tmp_path, "model-b", n_tiles=128, offset=0.05)
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    protocols = [g.protocol for g in board.groups]
    assert len(protocols) == 3 and len(set(protocols)) == 3
    for group in board.groups:
        ranks = sorted(e.rank for e in group.entries if e.rank)
        assert ranks[0] == 1
    runs = [g for g in board.groups if any(e.is_run for e in g.entries)]
    assert all(len(g.entries) == 1 and g.entries[0].rank == 1 for g in runs)
    assert not board.comparisons  # different data: no paired test either


# ----------------------------------------------------------------------------------------
# Runs: merging, reading, skipping
# ----------------------------------------------------------------------------------------
def test_runs_of_several_models_are_merged_ranked_and_compared(tmp_path):
    write_plism_run(tmp_path, "vit-tiny-random", offset=0.0, seed=1)
    write_plism_run(tmp_path, "vit-small-reg4-random", offset=0.08, seed=2)
    write_plism_run(tmp_path, "phikon-tiny-random", offset=-0.05, seed=3)
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    assert len(board.entries) == 18
    group = next(g for g in board.groups if any(e.is_run for e in g.entries))
    assert [e.model for e in group.entries] == ["vit-small-reg4-random", "vit-tiny-random", "phikon-tiny-random"]
    assert [e.rank for e in group.entries] == [1, 2, 3]
    assert group.protocol.startswith("plism-synthetic")
    assert all(e.pooling == "cls" for e in group.entries)
    # every run is compared with the best run in every column: 2 others x 5 columns
    assert len(board.comparisons) == 10
    assert {c.better for c in board.comparisons if c.column == "leaderboard_score"} == {"vit-small-reg4-random"}


def test_paired_test_equals_scipy_wilcoxon_over_slide_pairs_and_holm_over_comparisons(tmp_path):
    a = write_plism_run(tmp_path, "model-a", offset=0.05, seed=1)
    b = write_plism_run(tmp_path, "model-b", offset=0.0, seed=2)
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    pa, pb = pd.read_csv(a / "pairs.csv"), pd.read_csv(b / "pairs.csv")
    groups = lb.plism_pair_groups(pa)
    comparison = next(c for c in board.comparisons if c.column == "top10_inter_staining")
    mask = groups == "inter_staining"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = scipy.stats.wilcoxon(pa.loc[mask, "top_10_accuracy"].to_numpy() - pb.loc[mask, "top_10_accuracy"].to_numpy())
    assert comparison.n_units == mask.sum()
    assert comparison.pvalue == pytest.approx(expected.pvalue, rel=1e-9)
    assert comparison.difference == pytest.approx(np.median(pa.loc[mask, "top_10_accuracy"]) -
                                                  np.median(pb.loc[mask, "top_10_accuracy"]))
    raw = [c.pvalue for c in board.comparisons]
    assert [c.p_holm for c in board.comparisons] == pytest.approx(list(stats.holm(raw)))


def test_a_model_in_both_shows_your_value_beside_the_published_one(tmp_path):
    stainings = ("GIV", "GIVH", "GM", "GMH", "GV", "GVH", "HR", "HRH", "KR", "KRH", "LM", "LMH", "MY")
    scanners = ("AT2", "GT450", "P", "S210", "S360", "S60", "SQ")
    write_plism_run(tmp_path, "h0-mini", stainings=stainings, scanners=scanners, data="hf", n_tiles=8139)
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=50)
    assert len(board.groups) == 1 and len(board.entries) == 15
    merged = next(e for e in board.entries if e.origin == "run+reference")
    assert merged.model == "h0-mini" and merged.published["leaderboard_score"] == 0.541
    text = lb.render_markdown(board)
    line = next(line for line in text.splitlines() if "| h0-mini |" in line)
    diff = merged.values["leaderboard_score"] - 0.541
    assert f"(pub. 0.541, Δ {diff:+.3f})" in line


def test_corrupt_and_partial_runs_are_reported_skipped_and_left_untouched(tmp_path):
    write_plism_run(tmp_path, "good")
    corrupt = write_plism_run(tmp_path, "corrupt")
    (corrupt / "run.json").write_text("{not json", encoding="utf-8")
    partial = write_plism_run(tmp_path, "partial")
    (partial / "run.json").unlink()
    interrupted = write_plism_run(tmp_path, "interrupted")
    (interrupted / "summary.csv").unlink()
    pairs = pd.read_csv(interrupted / "pairs.csv")
    pairs.iloc[:10].to_csv(interrupted / "pairs.csv", index=False)
    broken = write_plism_run(tmp_path, "nan-values")
    pairs = pd.read_csv(broken / "pairs.csv")
    pairs.loc[3, "top_1_accuracy"] = np.nan
    pairs.to_csv(broken / "pairs.csv", index=False)
    missing_column = write_plism_run(tmp_path, "missing-column")
    pd.read_csv(missing_column / "pairs.csv").drop(columns=["top_10_accuracy"]).to_csv(missing_column / "pairs.csv", index=False)
    unfinished = write_plism_run(tmp_path, "unfinished")
    record = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**record, "complete": False}))
    before = tree_digest(tmp_path)

    board = lb.build_leaderboard("plism", tmp_path, "none", n_boot=N_BOOT)
    assert [e.model for e in board.entries] == ["good"]
    reasons = {s.path.name: s.reason for s in board.skipped}
    assert set(reasons) == {"corrupt", "partial", "interrupted", "nan-values", "missing-column", "unfinished"}
    assert "incomplete" in reasons["unfinished"]
    assert "not valid JSON" in reasons["corrupt"]
    assert "run.json is missing" in reasons["partial"]
    assert "summary.csv is missing" in reasons["interrupted"]
    assert "non-finite" in reasons["nan-values"]
    assert "top_10_accuracy" in reasons["missing-column"]
    assert "skipped" in lb.render_markdown(board)
    assert tree_digest(tmp_path) == before


def test_hest_runs_merge_with_table1_and_test_over_folds_and_genes(tmp_path):
    a = write_hest_run(tmp_path, "model-a", offset=0.05, seed=1)
    b = write_hest_run(tmp_path, "model-b", offset=0.0, seed=2)
    write_hest_run(tmp_path, "h0-mini", tasks=HEST_TASKS, data="hf", seed=3)
    write_hest_run(tmp_path, "subset", tasks=HEST_TASKS[:3], data="hf", seed=4)
    board = lb.build_leaderboard("hest", tmp_path, "paper", n_boot=N_BOOT)
    table1 = next(g for g in board.groups if g.protocol == "hest-ridge-pca256")
    assert len(table1.entries) == 11  # 10 published rows, h0-mini merged, plus the subset run
    h0 = next(e for e in table1.entries if e.model == "h0-mini")
    assert h0.origin == "run+reference" and h0.published["average"] == 0.4044
    subset = next(e for e in table1.entries if e.model == "subset")
    assert subset.rank is None and "3 of the 9 tasks" in " ".join(subset.notes)
    synthetic = next(g for g in board.groups if "synthetic" in g.protocol)
    assert {e.model for e in synthetic.entries} == {"model-a", "model-b"}
    ga, gb = pd.read_csv(a / "genes.csv"), pd.read_csv(b / "genes.csv")
    comparison = next(c for c in board.comparisons if c.column == "TASKA")
    mask = ga["task"] == "TASKA"
    expected = scipy.stats.wilcoxon(ga.loc[mask, "pearson"].to_numpy() - gb.loc[mask, "pearson"].to_numpy())
    assert comparison.n_units == mask.sum() and comparison.pvalue == pytest.approx(expected.pvalue, rel=1e-9)
    average = next(c for c in board.comparisons if c.column == "average")
    assert average.n_units == len(ga)
    fa, fb = pd.read_csv(a / "summary.csv"), pd.read_csv(b / "summary.csv")
    assert average.difference == pytest.approx(fa["pearson_mean"].iloc[-1] - fb["pearson_mean"].iloc[-1])
    entry_a = next(e for e in synthetic.entries if e.model == "model-a")
    low, high = entry_a.ci["average"]
    assert low <= entry_a.values["average"] <= high


def test_eva_runs_are_compared_over_runs_and_ranked_on_the_patch_average(tmp_path):
    a = write_eva_run(tmp_path, "model-a", offset=0.05, seed=1)
    write_eva_run(tmp_path, "model-b", offset=0.0, seed=2)
    board = lb.build_leaderboard("eva", tmp_path, "paper", n_boot=N_BOOT)
    assert board.primary.key == "average_patch"
    run_a = next(r for r in board.runs if r.model == "model-a")
    reported = pd.read_csv(a / "runs.csv")
    pcam = reported[(reported["task"] == "pcam") & (reported["split"] == "test")]["value"]
    assert run_a.values["PCam"] == pytest.approx(pcam.mean())
    assert run_a.values["average_patch"] == pytest.approx(np.mean([run_a.values[t] for t in ("CRC", "MHIST", "PCam")]))
    comparison = next(c for c in board.comparisons if c.column == "CRC")
    assert comparison.n_units == 5 and comparison.test.startswith("Wilcoxon")
    reference_group = next(g for g in board.groups if g.protocol == "eva-2024")
    assert reference_group.entries[0].model == "Virchow2"  # (0.966 + 0.858 + 0.936) / 3 is the best patch average
    assert any("patch tasks" in f for f in board.footnotes)
    assert not any("Kaiko" in f for f in board.footnotes)  # the HEST table's footnote stays there


# ----------------------------------------------------------------------------------------
# Output formats and the command
# ----------------------------------------------------------------------------------------
def test_csv_latex_and_markdown_carry_every_row(tmp_path):
    write_plism_run(tmp_path, "model-a")
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    frame = pd.read_csv(__import__("io").StringIO(lb.render_csv(board)))
    assert len(frame) == 16 and set(frame["protocol"]) == {g.protocol for g in board.groups}
    assert {"leaderboard_score", "leaderboard_score_ci_low", "leaderboard_score_published"} <= set(frame.columns)
    latex = lb.render_latex(board)
    assert r"\textbf{0.541}" in latex and r"\underline{0.498}" in latex and r"\midrule" in latex
    md = lb.render_markdown(board)
    assert "**0.541**" in md and "<u>0.498</u>" in md
    assert md.count("\n| ") == 16 + 2 + 1  # rows, two protocol rows, header


def test_command_prints_the_table_and_writes_files(tmp_path, capsys):
    import argparse

    write_plism_run(tmp_path, "vit-tiny-random")
    parser = argparse.ArgumentParser()
    lb.add_arguments(parser)
    args = parser.parse_args(["--bench", "plism", "--results", str(tmp_path), "--n-boot", "100"])
    assert lb.run(args) == 0
    out = capsys.readouterr().out
    assert "vit-tiny-random" in out and "H0-Mini" in out and "Hibou Large" in out
    target = tmp_path / "board.tex"
    args = parser.parse_args(["--bench", "plism", "--results", str(tmp_path), "--format", "latex", "--out", str(target),
                              "--n-boot", "100"])
    assert lb.run(args) == 0 and target.read_text().startswith(r"\begin{table}")


def test_parameters_come_from_the_model_zoo_else_from_run_json(tmp_path):
    from pathbench.extractors import count_parameters, get_spec

    write_plism_run(tmp_path, "vit-tiny-random")
    write_plism_run(tmp_path, "my-own-model")
    runs, _ = lb.load_runs(tmp_path, "plism")
    params = {r.model: r.params for r in runs}
    assert params["vit-tiny-random"] == count_parameters(get_spec("vit-tiny-random"))
    assert params["my-own-model"] == 5_000_000  # run.json's model.params


def test_eva_runs_with_non_default_probe_settings_form_their_own_protocol(tmp_path):
    write_eva_run(tmp_path, "default-probe", data="real")
    short = write_eva_run(tmp_path, "short-probe", data="real")
    record = json.loads((short / "run.json").read_text())
    record["protocol"] = {"eva_defaults": False, "per_task": {"crc": {"runs": 5, "max_steps": 1000, "batch_size": 8}}}
    (short / "run.json").write_text(json.dumps(record))
    board = lb.build_leaderboard("eva", tmp_path, "paper", n_boot=N_BOOT)
    protocols = {e.model: e.protocol for e in board.entries if e.is_run}
    assert protocols["default-probe"] == "eva-2024"
    assert protocols["short-probe"] == "eva-real-max1000steps-batch8"
    assert not board.comparisons


def test_results_written_by_the_plism_benchmark_are_read_and_compared(tmp_path):
    from pathbench.benches.plism import evaluate_plism
    from pathbench.provenance import provenance

    slides = [f"{st}_{sc}_to_GMH_S60" for st in STAININGS for sc in SCANNERS]
    rng = np.random.default_rng(0)
    tissue = rng.normal(size=(40, 16)).astype(np.float32)
    for model, noise in (("sharp-model", 0.3), ("blurry-model", 1.5)):
        features = {s: tissue + noise * rng.normal(size=tissue.shape).astype(np.float32) for s in slides}
        record = provenance(model={"name": model, "source": "test features"}, pooling="cls")
        record.update(benchmark="plism", model_name=model, n_tiles_per_slide=40, slides=slides,
                      data={"kind": "synthetic", "key": "test"}, tile_subset={"spec": "all"})
        evaluate_plism(features, slides, tmp_path / "plism" / model, settings={"slides": slides}, run_record=record,
                       backend="torch", device="cpu", progress=False)
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    assert not board.skipped
    group = next(g for g in board.groups if any(e.is_run for e in g.entries))
    assert group.protocol == "plism-synthetic-9x40"
    assert [e.model for e in group.entries] == ["sharp-model", "blurry-model"]
    blurry = group.entries[1]
    assert blurry.significance["cosine_all"].significant  # 36 pairs, all better: exact p = 2 / 2**36


def test_two_runs_of_one_model_get_distinct_names(tmp_path):
    cls_run = write_plism_run(tmp_path, "h0-mini", folder="h0-mini-cls", seed=1)
    both = write_plism_run(tmp_path, "h0-mini", folder="h0-mini-cls-mean", seed=2)
    record = json.loads((both / "run.json").read_text())
    (both / "run.json").write_text(json.dumps({**record, "pooling": "cls+mean"}))
    assert cls_run.exists()
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    names = sorted(e.model for e in board.entries if e.is_run)
    assert names == ["h0-mini [cls+mean]", "h0-mini [cls]"]
    assert {c.other for c in board.comparisons} <= set(names)


def test_hest_runs_without_genes_csv_are_compared_over_folds(tmp_path):
    a = write_hest_run(tmp_path, "model-a", offset=0.1, seed=1, folds=4)
    b = write_hest_run(tmp_path, "model-b", offset=0.0, seed=2, folds=4)
    (a / "genes.csv").unlink()
    (b / "genes.csv").unlink()
    board = lb.build_leaderboard("hest", tmp_path, "none", n_boot=N_BOOT)
    comparison = next(c for c in board.comparisons if c.column == "TASKA")
    fa, fb = pd.read_csv(a / "folds.csv"), pd.read_csv(b / "folds.csv")
    mask = fa["task"] == "TASKA"
    assert comparison.n_units == 4
    assert comparison.pvalue == pytest.approx(scipy.stats.wilcoxon(
        fa.loc[mask, "pearson_mean"].to_numpy() - fb.loc[mask, "pearson_mean"].to_numpy()).pvalue)
    assert comparison.difference == pytest.approx(fa.loc[mask, "pearson_mean"].mean() - fb.loc[mask, "pearson_mean"].mean())
