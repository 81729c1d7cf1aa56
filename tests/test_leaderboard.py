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
from pathbench import results, stats
from pathbench.benches import plism as plism_bench
from pathbench.errors import PathbenchError

STAININGS = ("GIV", "GM", "KR")
SCANNERS = ("AT2", "GT450", "S60")
N_BOOT = 200


# ----------------------------------------------------------------------------------------
# Fixture writers: run folders in the results schema, as the runner writes them
# ----------------------------------------------------------------------------------------
def write_run(root: Path, bench: str, model: str, rows: pd.DataFrame, protocol: str, *, folder: str | None = None,
              data_id: str = "data:synthetic", pooling: str = "cls", detail: str | None = None,
              params: int | None = 5_000_000, tables: dict | None = None) -> Path:
    """A run folder written with pathbench.results.write_run, run.json shaped like the runner's."""
    out = root / bench / (folder or model)
    record = {
        "created": "2026-01-01T00:00:00+0000", "command": f"pathbench evaluate --model {model} --bench {bench}",
        "versions": {"pathbench": "0.1.0", "python": "3.11"}, "bench": bench, "model_name": model,
        "model": {"name": model, "weights_fingerprint": f"sha256:{model}", "precision": "fp32", "params": params},
        "pooling": pooling, "protocol": protocol, "protocol_detail": detail or protocol, "data_id": data_id,
        "an_unknown_key": {"nested": [1, 2, 3]},
    }
    results.write_run(out, bench=bench, protocol=protocol, rows=rows, tables=tables or {}, record=record,
                      headline={}, summary=pd.DataFrame(), model=model)
    return out


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
                     "top_10_accuracy": top[3], "cosine_margin": float(rng.uniform(0.0, 0.3) + offset)})
    return pd.DataFrame(rows)


def write_plism_run(root: Path, model: str, offset=0.0, seed=0, stainings=STAININGS, scanners=SCANNERS,
                    data="synthetic", n_tiles=64, folder=None, pooling="cls") -> Path:
    pairs = plism_pairs(stainings, scanners, offset, seed)
    n_slides = len(stainings) * len(scanners)
    protocol, detail = plism_bench.plism_protocol(n_slides, n_tiles, data == "synthetic")
    return write_run(root, "plism", model, plism_bench.pair_rows(pairs), protocol, folder=folder,
                     data_id=f"data:{data}-{n_tiles}", pooling=pooling, detail=detail, tables={"pairs.csv": pairs})


HEST_TASKS = ("IDC", "PRAD", "PAAD", "SKCM", "COAD", "READ", "CCRCC", "LUNG", "LYMPH_IDC")


def hest_genes(tasks=("TASKA", "TASKB"), offset=0.0, seed=0, folds=2, genes=8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for t, task in enumerate(tasks):
        for fold in range(folds):
            r = np.clip(rng.uniform(0.1, 0.6, genes) + offset + 0.01 * t, -1, 1)
            rows += [{"task": task, "fold": fold, "gene": f"G{g}", "pearson": r[g]} for g in range(genes)]
    return pd.DataFrame(rows)


def write_hest_run(root: Path, model: str, tasks=("TASKA", "TASKB"), offset=0.0, seed=0, data="synthetic",
                   folds=2, genes=8, folder=None) -> Path:
    table = hest_genes(tasks, offset, seed, folds, genes)
    rows = pd.DataFrame({"task": table["task"], "unit": table["fold"].astype(str) + "|" + table["gene"],
                         "metric": "pearson", "value": table["pearson"]})
    protocol = "hest-synthetic-ridge-pca" if data == "synthetic" else "hest-ridge-pca256"
    return write_run(root, "hest", model, rows, protocol, folder=folder, data_id=f"hest-splits:{data}",
                     pooling="cls+mean", tables={"genes.csv": table})


def write_eva_run(root: Path, model: str, tasks=("bach", "crc", "mhist", "pcam"), offset=0.0, seed=0,
                  data="synthetic", n_runs=5, folder=None, protocol=None) -> Path:
    rng = np.random.default_rng(seed)
    metric = {"bach": "macro_accuracy", "crc": "macro_accuracy", "mhist": "balanced_accuracy",
              "pcam": "balanced_accuracy"}
    rows = [{"task": task, "unit": str(r), "metric": metric[task],
             "value": float(np.clip(rng.uniform(0.7, 0.9) + offset, 0, 1))} for task in tasks for r in range(n_runs)]
    protocol = protocol or ("eva-2024" if data == "real" else "eva-synthetic-max1000steps-batch2")
    return write_run(root, "eva", model, pd.DataFrame(rows), protocol, folder=folder, data_id=f"data:{data}-eva")


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
    assert eva["Virchow2"].text["average"] == "0.794" and eva["Virchow2"].values["Cam16"] == 0.864


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
    # every run is compared with the best run in every column: 2 others x 6 columns (5 plismbench's + margin)
    assert len(board.comparisons) == 12
    assert {c.better for c in board.comparisons if c.column == "leaderboard_score"} == {"vit-small-reg4-random"}


def test_paired_test_equals_scipy_wilcoxon_over_slide_pairs_and_holm_over_comparisons(tmp_path):
    a = write_plism_run(tmp_path, "model-a", offset=0.05, seed=1)
    b = write_plism_run(tmp_path, "model-b", offset=0.0, seed=2)
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    pa, pb = pd.read_csv(a / "pairs.csv"), pd.read_csv(b / "pairs.csv")
    groups = np.array([plism_bench.pair_task(*r) for r in pa[["staining_a", "scanner_a", "staining_b",
                                                                "scanner_b"]].itertuples(index=False)])
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
    old = write_plism_run(tmp_path, "old-format")
    (old / "results.csv").unlink()
    broken = write_plism_run(tmp_path, "inf-values")
    rows = pd.read_csv(broken / "results.csv")
    rows.loc[3, "value"] = np.inf
    rows.to_csv(broken / "results.csv", index=False)
    missing_column = write_plism_run(tmp_path, "missing-column")
    pd.read_csv(missing_column / "results.csv").drop(columns=["metric"]).to_csv(missing_column / "results.csv",
                                                                              index=False)
    twice = write_plism_run(tmp_path, "twice")
    rows = pd.read_csv(twice / "results.csv")
    pd.concat([rows, rows.iloc[:1]]).to_csv(twice / "results.csv", index=False)
    unfinished = write_plism_run(tmp_path, "unfinished")
    record = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**record, "complete": False}))
    other = write_plism_run(tmp_path, "other-protocol")
    record = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**record, "protocol": "plism-other"}))
    before = tree_digest(tmp_path)

    board = lb.build_leaderboard("plism", tmp_path, "none", n_boot=N_BOOT)
    assert [e.model for e in board.entries] == ["good"]
    reasons = {s.path.name: s.reason for s in board.skipped}
    assert set(reasons) == {"corrupt", "partial", "old-format", "inf-values", "missing-column", "twice",
                            "unfinished", "other-protocol"}
    assert "not mark the run as complete" in reasons["unfinished"]
    assert "not valid JSON" in reasons["corrupt"]
    assert "run.json is missing" in reasons["partial"]
    assert "older pathbench" in reasons["old-format"]
    assert "infinite" in reasons["inf-values"]
    assert "metric" in reasons["missing-column"]
    assert "twice" in reasons["twice"]
    assert "disagree on the protocol" in reasons["other-protocol"]
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
    assert subset.rank is None and "3 of the 9 columns" in " ".join(subset.notes)
    # the published averages stay as published: they cover the same nine tasks
    assert next(e for e in table1.entries if e.model == "UNI").text["average"] == "0.3907"
    synthetic = next(g for g in board.groups if "synthetic" in g.protocol)
    assert {e.model for e in synthetic.entries} == {"model-a", "model-b"}
    ga, gb = pd.read_csv(a / "genes.csv"), pd.read_csv(b / "genes.csv")
    fold_means = ga.groupby(["task", "fold"])["pearson"].mean().groupby("task").mean()
    entry_a = next(e for e in synthetic.entries if e.model == "model-a")
    assert entry_a.values["TASKA"] == pytest.approx(fold_means["TASKA"])  # genes within folds, then folds
    comparison = next(c for c in board.comparisons if c.column == "TASKA")
    mask = ga["task"] == "TASKA"
    expected = scipy.stats.wilcoxon(ga.loc[mask, "pearson"].to_numpy() - gb.loc[mask, "pearson"].to_numpy())
    assert comparison.n_units == mask.sum() and comparison.pvalue == pytest.approx(expected.pvalue, rel=1e-9)
    average = next(c for c in board.comparisons if c.column == "average")
    assert average.n_units == len(ga)
    fold_means_b = gb.groupby(["task", "fold"])["pearson"].mean().groupby("task").mean()
    assert average.difference == pytest.approx(fold_means.mean() - fold_means_b.mean())
    assert average.test.startswith("paired bootstrap")
    low, high = entry_a.ci["average"]
    assert low <= entry_a.values["average"] <= high


def test_eva_average_leaves_bach_out_and_says_which_tasks_it_covers(tmp_path):
    a = write_eva_run(tmp_path, "model-a", offset=0.05, seed=1)
    write_eva_run(tmp_path, "model-b", offset=0.0, seed=2)
    board = lb.build_leaderboard("eva", tmp_path, "paper", n_boot=N_BOOT)
    assert board.primary.key == "average"
    entry_a = next(e for e in board.entries if e.model == "model-a")
    rows = pd.read_csv(a / "results.csv")
    pcam = rows[rows["task"] == "pcam"]["value"]
    assert entry_a.values["PCam"] == pytest.approx(pcam.mean())
    assert entry_a.values["average"] == pytest.approx(np.mean([entry_a.values[t] for t in ("CRC", "MHIST", "PCam")]))
    comparison = next(c for c in board.comparisons if c.column == "CRC")
    assert comparison.n_units == 5 and comparison.test.startswith("Wilcoxon")
    synthetic = next(g for g in board.groups if "synthetic" in g.protocol)
    assert synthetic.averages["average"] == ("CRC", "MHIST", "PCam")
    reference_group = next(g for g in board.groups if g.protocol == "eva-2024")
    # without runs the paper's rule covers the seven tasks it publishes: the published averages stand
    assert reference_group.averages["average"] == ("CRC", "MHIST", "PCam", "Cam16", "PANDA", "CoNSeP", "MoNuSAC")
    assert reference_group.entries[0].model == "Virchow2" and reference_group.entries[0].text["average"] == "0.794"
    text = lb.render_markdown(board)
    assert "Average (w/o BACH) over CRC, MHIST, PCam, Cam16, PANDA, CoNSeP, MoNuSAC" in text
    assert not any("Kaiko" in f for f in board.footnotes)  # the HEST table's footnote stays there


def test_a_real_eva_run_ranks_against_published_averages_over_its_own_tasks(tmp_path):
    write_eva_run(tmp_path, "h0-mini", data="real")
    board = lb.build_leaderboard("eva", tmp_path, "paper", n_boot=N_BOOT)
    group = next(g for g in board.groups if g.protocol == "eva-2024")
    assert group.averages["average"] == ("CRC", "MHIST", "PCam")
    virchow = next(e for e in group.entries if e.model == "Virchow2")
    assert virchow.values["average"] == pytest.approx((0.966 + 0.858 + 0.936) / 3)
    assert "average" in virchow.computed and "average" not in virchow.text
    assert "†" in lb.render_markdown(board)
    merged = next(e for e in group.entries if e.model == "h0-mini")
    assert merged.origin == "run+reference" and merged.rank is not None


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
    from pathbench.cli import main

    write_plism_run(tmp_path, "vit-tiny-random")
    assert main(["leaderboard", "--bench", "plism", "--results", str(tmp_path), "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "vit-tiny-random" in out and "H0-Mini" in out and "Hibou Large" in out
    target = tmp_path / "board.tex"
    assert main(["leaderboard", "--bench", "plism", "--results", str(tmp_path), "--format", "latex", "--out",
                 str(target), "--n-boot", "100"]) == 0
    assert target.read_text().startswith(r"\begin{table}")
    assert main(["leaderboard", "--bench", "plsm", "--results", str(tmp_path)]) == 2
    assert "Did you mean plism" in capsys.readouterr().err


def test_parameters_come_from_run_json_and_no_model_is_built(tmp_path):
    import subprocess
    import sys

    write_plism_run(tmp_path, "vit-tiny-random")
    code = ("import sys; from pathbench import leaderboard as lb; "
            f"runs, _ = lb.load_runs({str(tmp_path)!r}, 'plism'); b = lb.build_leaderboard('plism', {str(tmp_path)!r}, "
            "n_boot=20); lb.render(b, 'html'); print(runs[0].params); "
            "print(sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5000000.0", "[]"]


def test_eva_protocol_ids_separate_non_default_probe_settings(tmp_path):
    from pathbench.benches.eva import eva_protocol

    assert eva_protocol(False, 12_500, 5, 256)[0] == "eva-2024"
    assert eva_protocol(False, 1000, 5, 8)[0] == "eva-real-max1000steps-batch8"
    assert eva_protocol(True, 12_500, 5, 256)[0] == "eva-synthetic"
    write_eva_run(tmp_path, "default-probe", data="real")
    write_eva_run(tmp_path, "short-probe", data="real", protocol="eva-real-max1000steps-batch8")
    board = lb.build_leaderboard("eva", tmp_path, "paper", n_boot=N_BOOT)
    protocols = {e.model: e.protocol for e in board.entries if e.is_run}
    assert protocols == {"default-probe": "eva-2024", "short-probe": "eva-real-max1000steps-batch8"}
    assert not board.comparisons


def test_results_written_by_the_plism_benchmark_are_read_and_compared(tmp_path):
    import pathbench
    from pathbench.data import plism as plism_data

    slides = [f"{st}_{sc}_to_GMH_S60" for st in STAININGS for sc in SCANNERS]
    rng = np.random.default_rng(0)
    tissue = rng.normal(size=(40, 16)).astype(np.float32)
    tile_ids = [f"tile_16_{i % 8}_{i // 8}" for i in range(40)]
    for model, noise in (("sharp-model", 0.3), ("blurry-model", 1.5)):
        features = tmp_path / "features" / model
        for slide in slides:
            plism_data.write_plismbench_features(features, slide, tile_ids,
                                                 tissue + noise * rng.normal(size=tissue.shape).astype(np.float32))
        pathbench.evaluate(bench="plism", features_dir=str(features), model_name=model, n_tiles="all",
                           out=tmp_path / "results" / "plism" / model, progress=False, device="cpu")
    board = lb.build_leaderboard("plism", tmp_path / "results", "plismbench", n_boot=N_BOOT)
    assert not board.skipped
    group = next(g for g in board.groups if any(e.is_run for e in g.entries))
    assert group.protocol == "plism-9x40"
    assert [e.model for e in group.entries] == ["sharp-model", "blurry-model"]
    blurry = group.entries[1]
    assert blurry.significance["cosine_all"].significant  # 36 pairs, all better: exact p = 2 / 2**36


def test_two_runs_of_one_model_get_distinct_names(tmp_path):
    write_plism_run(tmp_path, "h0-mini", folder="h0-mini-cls", seed=1)
    write_plism_run(tmp_path, "h0-mini", folder="h0-mini-cls-mean", seed=2, pooling="cls+mean")
    board = lb.build_leaderboard("plism", tmp_path, "plismbench", n_boot=N_BOOT)
    names = sorted(e.model for e in board.entries if e.is_run)
    assert names == ["h0-mini [cls+mean]", "h0-mini [cls]"]
    assert {c.other for c in board.comparisons} <= set(names)
