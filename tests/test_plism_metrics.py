"""PLISM metrics against a slow, obviously-correct float64 implementation of the paper's formulas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pathbench import retrieval
from pathbench.benches import plism_metrics as pm
from pathbench.errors import DataError, PathbenchError

KS = (1, 3, 5, 10)
STAININGS = "GIV GIVH GM GMH GV GVH HR HRH KR KRH LM LMH MY".split()
SCANNERS = "AT2 GT450 P S210 S360 S60 SQ".split()
BACKENDS = ["auto", "torch"] + (["faiss"] if retrieval.faiss_available() else [])


# ----------------------------------------------------------------------------- the reference


def reference_pair(f1: np.ndarray, f2: np.ndarray, ks=KS) -> dict[str, float]:
    """Appendix 7.3 written out literally, on features L2-normalised in float32 (PROTOCOLS 1.3).

    Every similarity is the exactly rounded inner product of the float32 unit vectors
    (products of float32 numbers are exact in float64; ``math.fsum`` rounds once).
    """
    x = np.concatenate([f1, f2]).astype(np.float64)
    x = (x / np.sqrt((x * x).sum(axis=1))[:, None]).astype(np.float32).astype(np.float64)
    n = f1.shape[0]
    size = 2 * n
    sim = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            sim[i, j] = math.fsum(x[i] * x[j])
    out = {"cosine_similarity": math.fsum(sim[i, n + i] for i in range(n)) / n}
    for k in ks:
        directions = []
        for query_offset, match_offset in ((0, n), (n, 0)):
            hits = 0
            for i in range(n):
                q, m = query_offset + i, match_offset + i
                rank = sum(1 for t in range(size) if t != q and sim[q, t] >= sim[q, m])
                hits += rank <= k
            directions.append(hits / n)
        out[f"top_{k}_accuracy"] = (directions[0] + directions[1]) / 2
    return out


def assert_matches_reference(features: dict[str, np.ndarray], pairs, **kwargs) -> list[dict]:
    rows = list(pm.iter_pair_metrics(features, pairs, progress=False, **kwargs))
    assert [(r["slide_a"], r["slide_b"]) for r in rows] == [tuple(p) for p in pairs]
    for row in rows:
        expected = reference_pair(features[row["slide_a"]], features[row["slide_b"]])
        assert row["cosine_similarity"] == pytest.approx(expected["cosine_similarity"], abs=1e-6)
        for k in KS:
            name = f"top_{k}_accuracy"
            assert row[name] == expected[name], (row["slide_a"], row["slide_b"], name)
    return rows


# ----------------------------------------------------------------------------- test data


def tie_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Rows with exactly 4 entries of +-0.5: unit norm, all dot products multiples of 0.25, exact in fp32."""
    out = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        cols = rng.choice(dim, size=4, replace=False)
        out[i, cols] = rng.choice([-0.5, 0.5], size=4)
    return out


def tie_slides(rng: np.random.Generator, names: list[str], n: int, dim: int) -> dict[str, np.ndarray]:
    """Slides that share most rows with a base slide, so ranks are small and full of exact ties."""
    base = tie_vectors(rng, n, dim)
    slides = {}
    for name in names:
        slide = base.copy()
        changed = rng.random(n) < 0.4
        slide[changed] = tie_vectors(rng, int(changed.sum()), dim)
        # Exact duplicates inside the slide, and a scale that normalisation undoes exactly.
        slide[rng.integers(0, n, 3)] = slide[rng.integers(0, n, 3)]
        slide *= rng.choice([0.5, 1.0, 3.0], size=(n, 1)).astype(np.float32)
        slides[name] = slide
    return slides


def gaussian_slides(rng: np.random.Generator, names: list[str], n: int, dim: int) -> dict[str, np.ndarray]:
    """Noisy views of a base slide with bitwise duplicates: inside a slide, and across slides."""
    base = rng.standard_normal((n, dim)).astype(np.float32)
    slides = {}
    for s, name in enumerate(names):
        slide = base + rng.uniform(0.3, 1.2) * rng.standard_normal((n, dim)).astype(np.float32)
        slide[1] = slide[0]  # a duplicate tile inside the slide
        slide[5] = base[5]  # the same bitwise row in every slide: b_5 == a_5
        slide[7] = base[8]  # ... and a copy of another tile's row: a_7 == b_8 for ...
        slide[8] = base[8]  # ... every pair, tied with the match of query 8
        slide[9 + s % 3] = slide[12]
        slides[name] = slide
    return slides


def slide_id(staining: str, scanner: str) -> str:
    return f"{staining}_{scanner}_to_GMH_S60"


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_equal_the_reference_on_exact_ties_and_duplicates(backend):
    rng = np.random.default_rng(0)
    names = [slide_id(st, sc) for st in ("GM", "HR") for sc in ("AT2", "S60")]
    features = tie_slides(rng, names, n=37, dim=8)
    rows = assert_matches_reference(features, pm.all_pairs(names), backend=backend, block_rows=8)
    # The data must really exercise ties: accuracies strictly between 0 and 1 and varying with k.
    assert any(0 < r["top_1_accuracy"] < r["top_10_accuracy"] < 1 for r in rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_equal_the_reference_on_random_features_with_duplicates(backend):
    rng = np.random.default_rng(1)
    names = [slide_id(st, sc) for st, sc in (("GM", "AT2"), ("GM", "S60"), ("KR", "S60"))]
    features = gaussian_slides(rng, names, n=53, dim=24)
    rows = assert_matches_reference(features, pm.all_pairs(names), backend=backend, block_rows=16)
    assert any(0 < r["top_1_accuracy"] < 1 for r in rows)


def test_tile_count_not_divisible_by_any_block_size_gives_the_same_rows():
    rng = np.random.default_rng(2)
    names = ["GM_AT2", "GM_P", "MY_P"]
    features = tie_slides(rng, names, n=41, dim=8)
    pairs = pm.all_pairs(names)
    expected = list(pm.iter_pair_metrics(features, pairs, progress=False))
    for block_rows in (3, 7, 41):
        assert list(pm.iter_pair_metrics(features, pairs, progress=False, block_rows=block_rows)) == expected
    assert_matches_reference(features, pairs[:1], block_rows=6)


def test_all_backends_give_identical_rows():
    rng = np.random.default_rng(3)
    names = ["GM_AT2", "GM_P", "MY_AT2", "MY_P"]
    for features in (tie_slides(rng, names, 60, 8), gaussian_slides(rng, names, 60, 32)):
        pairs = pm.all_pairs(names)
        rows = [list(pm.iter_pair_metrics(features, pairs, backend=b, progress=False)) for b in BACKENDS]
        assert all(r == rows[0] for r in rows[1:])


def test_tensor_blocks_as_on_a_gpu_give_the_same_rows(monkeypatch):
    """On a GPU the similarity blocks are tensors and the bookkeeping runs in torch."""
    rng = np.random.default_rng(16)
    names = ["GM_AT2", "GM_P", "KR_P"]
    features = {**tie_slides(rng, names, 45, 8)}
    pairs = pm.all_pairs(names)
    expected = list(pm.iter_pair_metrics(features, pairs, progress=False, block_rows=16))
    original = retrieval._similarity_blocks

    def tensor_blocks(*args):
        for r0, block in original(*args):
            yield r0, torch.from_numpy(block.copy())

    monkeypatch.setattr(retrieval, "_similarity_blocks", tensor_blocks)
    assert list(pm.iter_pair_metrics(features, pairs, progress=False, block_rows=16)) == expected
    assert_matches_reference(features, pairs[:1], block_rows=16)


def test_float32_bound_cases_are_decided_in_float64():
    """Near-ties below the float32 matmul error are decided by the exact inner products."""
    rng = np.random.default_rng(4)
    n, dim = 30, 64
    a = rng.standard_normal((n, dim))
    b = a + 0.05 * rng.standard_normal((n, dim))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    # Make b_3 a competitor of b_2 for query a_2, within 1e-9 of the match's similarity.
    b[3] = b[2] + 1e-9 * rng.standard_normal(dim)
    features = {"GM_AT2": a.astype(np.float32), "GM_P": b.astype(np.float32)}
    assert_matches_reference(features, [("GM_AT2", "GM_P")])


def near_copy_slides(seed: int, n: int = 120, dim: int = 16) -> dict[str, np.ndarray]:
    """Queries whose match is tied, to within float32 rounding, with 8 to 19 other tiles.

    For query ``a_i`` (i < 6) a group of tiles of S1 are copies of ``b_i`` moved by a few
    units in the last place, so ``<a_i, a_j> - <a_i, b_i>`` is about 1e-8 either way:
    far below the float32 error of a 16-dim product, and the group is larger than the
    top-11 lists kept per slide, so deciding these needs exact arithmetic on every member.
    """
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((n, dim)).astype(np.float32)
    a = (b + 1.2 * rng.standard_normal((n, dim))).astype(np.float32)
    row = 6
    for i in range(6):
        size = 8 + 2 * i
        for j in range(row, row + size):
            ulps = rng.integers(-3, 4, dim).astype(np.float32)
            a[j] = b[i] + ulps * np.spacing(b[i])
        row += size
    return {"GM_AT2": a, "GM_P": b}


@pytest.mark.parametrize("seed", [12, 13])
def test_groups_of_near_ties_larger_than_the_neighbour_lists_are_counted_exactly(seed):
    features = near_copy_slides(seed)
    rows = assert_matches_reference(features, [("GM_AT2", "GM_P")], ks=KS)
    assert 0 < rows[0]["top_10_accuracy"] < 1


def test_neighbour_lists_are_recounted_when_truncation_could_hide_a_tie():
    """A top-11 list in float32 order may leave out tiles whose exact score reaches the threshold.

    The lists here are built from the exact scores plus rounding noise within the float32
    bound (what any float32 product may do), so their order scrambles near-ties.
    """
    rng = np.random.default_rng(15)
    n, dim, cap = 140, 16, 10
    x = rng.standard_normal((n, dim)).astype(np.float32)
    targets = rng.standard_normal((5, dim)).astype(np.float32)
    x[:5] = targets + 0.3 * rng.standard_normal((5, dim)).astype(np.float32)  # the queries
    row = 5
    for i in range(5):  # query i: a group of 12..20 near-copies of targets[i]
        for j in range(row, row + 12 + 2 * i):
            x[j] = targets[i] + rng.integers(-3, 4, dim).astype(np.float32) * np.spacing(targets[i])
        row += 12 + 2 * i
    x = pm.normalise(x)
    t = pm.normalise(targets)
    everyone = np.arange(n)
    exact = np.array([[math.fsum(x[i].astype(np.float64) * x[j]) for j in range(n)] for i in range(5)])
    thresholds = np.array([math.fsum(x[i].astype(np.float64) * t[i]) for i in range(5)])
    eps = retrieval.float32_error_bound(dim)
    noisy = (exact + rng.uniform(-eps / 3, eps / 3, exact.shape)).astype(np.float32)
    noisy[everyone[:5], everyone[:5]] = -np.inf
    ids = np.argsort(-noisy, axis=1, kind="stable")[:, : cap + 1]
    values = np.take_along_axis(noisy, ids, axis=1)
    lo, hi = pm._threshold_bounds(thresholds, dim)
    slide = pm._Slide(x, None)
    queries = pm._Slide(x[:5].copy(), None)
    counts = pm._list_counts(values, ids, thresholds, lo, hi, queries, slide, cap, torch.device("cpu"), None)
    expected = [min(cap, sum(1 for j in range(n) if j != i and exact[i, j] >= thresholds[i])) for i in range(5)]
    assert counts.tolist() == expected
    assert 0 < min(expected) < cap


def test_single_tile_slides_are_always_a_hit():
    features = {"GM_AT2": np.array([[1.0, 2.0]]), "GM_P": np.array([[-3.0, 1.0]])}
    (row,) = pm.iter_pair_metrics(features, [("GM_AT2", "GM_P")], progress=False)
    assert row["top_1_accuracy"] == 1.0
    assert row["cosine_similarity"] == pytest.approx(-1 / math.sqrt(50))


def test_rows_are_yielded_in_the_order_of_the_pairs_given():
    rng = np.random.default_rng(5)
    names = ["GM_AT2", "GM_P", "MY_P"]
    features = gaussian_slides(rng, names, 20, 16)
    pairs = [("MY_P", "GM_AT2"), ("GM_P", "MY_P")]
    rows = list(pm.iter_pair_metrics(features, pairs, progress=False, ks=(1, 2)))
    assert [(r["slide_a"], r["slide_b"]) for r in rows] == pairs
    assert set(rows[0]) == {"slide_a", "slide_b", "cosine_similarity", "top_1_accuracy", "top_2_accuracy",
                            "cosine_margin"}


class CountingFeatures(dict):
    """A mapping that records which slides were read, and refuses one."""

    def __init__(self, *args, forbidden: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.forbidden = forbidden
        self.reads: list[str] = []

    def __getitem__(self, key):
        if key == self.forbidden:
            raise AssertionError(f"slide {key} should not be read")
        self.reads.append(key)
        return super().__getitem__(key)


def test_only_the_slides_of_the_pairs_are_read_and_the_cache_is_bounded():
    rng = np.random.default_rng(17)
    names = ["GM_AT2", "GM_P", "KR_P", "MY_P"]
    features = CountingFeatures(gaussian_slides(rng, names, 20, 8), forbidden="MY_P")
    pairs = pm.all_pairs(names[:3])
    expected = list(pm.iter_pair_metrics(dict(features), pairs, progress=False))
    rows = list(pm.iter_pair_metrics(features, pairs, progress=False, cache_bytes=0))
    assert rows == expected
    # With no cache budget, each pair reads what is not among the last two slides used.
    assert len([r for r in features.reads if r in names[:3]]) <= 3 * 3 + 2 * len(pairs)


def test_memmap_features_are_accepted(tmp_path):
    rng = np.random.default_rng(6)
    features = gaussian_slides(rng, ["GM_AT2", "GM_P"], 25, 16)
    mapped = {}
    for name, array in features.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        mapped[name] = np.load(path, mmap_mode="r")
    pairs = [("GM_AT2", "GM_P")]
    assert list(pm.iter_pair_metrics(mapped, pairs, progress=False)) == list(
        pm.iter_pair_metrics(features, pairs, progress=False)
    )


def test_exact_dots_are_position_independent_for_equal_operands():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5000, 77)).astype(np.float32)
    x[4900] = x[3]
    everyone = np.arange(5000)
    full = pm.exact_dots(x, x, everyone, everyone)
    single = pm.exact_dots(x, x, np.array([3, 4900, 17, 3]), np.array([4900, 3, 17, 3]))
    aligned = pm.aligned_dots(x, x)
    assert full[3] == full[4900] == single[0] == single[1] == single[3] == aligned[3] == aligned[4900]
    assert single[2] == full[17] == aligned[17]
    np.testing.assert_array_equal(aligned, full)
    np.testing.assert_allclose(full, (x.astype(np.float64) ** 2).sum(axis=1), rtol=1e-15)


def test_normalise_accepts_lists_and_tensors():
    expected = np.array([[0.6, 0.8], [0.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(pm.normalise([[3, 4], [0, -2]]), expected)
    np.testing.assert_array_equal(pm.normalise(torch.tensor([[3.0, 4.0], [0.0, -2.0]])), expected)
    with pytest.raises(DataError, match="2-D"):
        pm.normalise(np.ones(3))


def test_normalise_gives_unit_float32_rows_and_equal_rows_for_equal_inputs():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5000, 33)) * 10
    x[4500] = x[10]
    out = pm.normalise(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert np.array_equal(out[4500], out[10])


# ----------------------------------------------------------------------------- input errors


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_a_data_error_naming_the_slide(bad):
    rng = np.random.default_rng(9)
    features = gaussian_slides(rng, ["GM_AT2", "GM_P", "MY_P"], 20, 8)
    features["MY_P"][4, 2] = bad
    rows = pm.iter_pair_metrics(features, pm.all_pairs(features), progress=False)
    with pytest.raises(DataError, match=r"MY_P.*tile row 4"):
        next(rows)


def test_zero_feature_vector_is_a_data_error():
    features = {"GM_AT2": np.ones((3, 4)), "GM_P": np.ones((3, 4))}
    features["GM_P"][1] = 0
    with pytest.raises(DataError, match=r"GM_P.*all-zero.*row 1"):
        list(pm.iter_pair_metrics(features, [("GM_AT2", "GM_P")], progress=False))


def test_mismatched_tile_counts_dims_and_missing_slides_are_data_errors():
    features = {"GM_AT2": np.ones((3, 4)), "GM_P": np.ones((4, 4)), "MY_P": np.ones((3, 5))}
    with pytest.raises(DataError, match=r"'GM_P' has 4 tiles but slide 'GM_AT2' has 3"):
        list(pm.iter_pair_metrics(features, [("GM_AT2", "GM_P")], progress=False))
    with pytest.raises(DataError, match=r"'MY_P' has 5-dimensional features"):
        list(pm.iter_pair_metrics(features, [("GM_AT2", "MY_P")], progress=False))
    with pytest.raises(DataError, match=r"'KR_P' is in the slide pairs but has no features"):
        list(pm.iter_pair_metrics(features, [("GM_AT2", "KR_P")], progress=False))
    with pytest.raises(PathbenchError, match="with itself"):
        list(pm.iter_pair_metrics(features, [("GM_AT2", "GM_AT2")], progress=False))
    with pytest.raises(PathbenchError, match="ks must be"):
        list(pm.iter_pair_metrics(features, [("GM_AT2", "GM_P")], ks=(0, 1), progress=False))


# ----------------------------------------------------------------------------- slides, groups, aggregation


def test_parse_slide_id():
    assert pm.parse_slide_id("GMH_S60_to_GMH_S60") == ("GMH", "S60")
    assert pm.parse_slide_id("GIVH_GT450_to_GMH_S60") == ("GIVH", "GT450")
    assert pm.parse_slide_id("KR_P") == ("KR", "P")
    with pytest.raises(DataError, match="not of the form"):
        pm.parse_slide_id("not a slide")


def test_group_sizes_at_91_slides_match_the_protocol():
    ids = [slide_id(st, sc) for st in STAININGS for sc in SCANNERS]
    pairs = pm.all_pairs(ids[::-1])
    assert len(pairs) == 4095
    assert pairs == pm.all_pairs(ids)
    assert all(a < b for a, b in pairs)
    counts = pd.Series(
        [pm.pair_group(*pm.parse_slide_id(a), *pm.parse_slide_id(b)) for a, b in pairs]
    ).value_counts()
    assert counts.to_dict() == {
        "inter-scanner & inter-staining": 3276,
        "inter-staining": 546,
        "inter-scanner": 273,
    }


def test_pair_group_names():
    assert pm.pair_group("GM", "P", "GM", "S60") == "inter-scanner"
    assert pm.pair_group("GM", "P", "KR", "P") == "inter-staining"
    assert pm.pair_group("GM", "P", "KR", "S60") == "inter-scanner & inter-staining"
    assert pm.pair_group("GM", "P", "GM", "P") is None
    with pytest.raises(PathbenchError, match="repeated"):
        pm.all_pairs(["GM_P", "GM_P"])


def random_pairs_table(rng: np.random.Generator) -> pd.DataFrame:
    ids = [slide_id(st, sc) for st in ("GM", "HR", "MY") for sc in ("AT2", "P", "S60")]
    rows = []
    for a, b in pm.all_pairs(ids):
        row = {"slide_a": a, "slide_b": b, "cosine_similarity": rng.uniform(0.3, 0.9)}
        row.update({f"top_{k}_accuracy": rng.choice([0.0, 0.25, 0.5, 1.0]) for k in KS})
        rows.append(row)
    return pd.DataFrame(rows)


def test_summary_statistics_match_numpy_for_every_group_and_metric():
    pairs = random_pairs_table(np.random.default_rng(10))
    summary = pm.summarise(pairs)
    assert list(summary.columns) == ["group", "metric", "mean", "std", "median", "iqr", "n_pairs"]
    assert list(summary["group"].unique()) == list(pm.GROUPS)
    assert list(summary["metric"].unique()) == pm.metric_names(KS)
    assert len(summary) == 4 * 5
    groups = [
        pm.pair_group(*pm.parse_slide_id(a), *pm.parse_slide_id(b))
        for a, b in zip(pairs.slide_a, pairs.slide_b, strict=True)
    ]
    for row in summary.itertuples():
        selected = np.array([row.group == "all" or g == row.group for g in groups])
        values = pairs.loc[selected, row.metric].to_numpy()
        assert row.n_pairs == len(values) > 0
        assert row.mean == pytest.approx(np.mean(values))
        assert row.std == pytest.approx(np.std(values))
        assert row.median == pytest.approx(np.median(values))
        assert row.iqr == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))
    n_pairs = summary.groupby("group", sort=False)["n_pairs"].first().to_dict()
    assert n_pairs == {"all": 36, "inter-scanner": 9, "inter-staining": 9, "inter-scanner & inter-staining": 18}


def test_summary_uses_staining_and_scanner_columns_when_present_and_reports_empty_groups():
    pairs = pd.DataFrame(
        {
            "slide_a": ["x", "y"], "slide_b": ["z", "w"],
            "staining_a": ["GM", "GM"], "scanner_a": ["P", "P"],
            "staining_b": ["GM", "GM"], "scanner_b": ["S60", "AT2"],
            "cosine_similarity": [0.5, 0.7], "top_10_accuracy": [0.1, 0.3],
        }
    )
    summary = pm.summarise(pairs).set_index(["group", "metric"])
    assert summary.loc[("inter-scanner", "top_10_accuracy"), "mean"] == pytest.approx(0.2)
    assert summary.loc[("inter-staining", "cosine_similarity"), "n_pairs"] == 0
    assert np.isnan(summary.loc[("inter-staining", "cosine_similarity"), "median"])
    assert math.isnan(pm.leaderboard_score(pm.summarise(pairs)))


def test_leaderboard_score_is_the_mean_of_four_medians_by_hand():
    pairs = pd.DataFrame(
        [
            # slide_a, slide_b, cosine, top-10 ; group noted
            ("GM_P", "GM_S60", 0.9, 0.8),  # inter-scanner
            ("GM_P", "GM_AT2", 0.7, 0.6),  # inter-scanner
            ("GM_P", "KR_P", 0.5, 0.4),  # inter-staining
            ("GM_P", "KR_S60", 0.3, 0.2),  # both
            ("GM_P", "KR_AT2", 0.1, 0.0),  # both
            ("GM_S60", "KR_S60", 0.2, 0.1),  # inter-staining
        ],
        columns=["slide_a", "slide_b", "cosine_similarity", "top_10_accuracy"],
    )
    # medians: cosine(all) = median(0.9,0.7,0.5,0.3,0.1,0.2) = 0.4; top-10 inter-scanner 0.7,
    # inter-staining median(0.4, 0.1) = 0.25, both median(0.2, 0.0) = 0.1.
    expected = (0.4 + 0.7 + 0.25 + 0.1) / 4
    assert pm.leaderboard_score(pm.summarise(pairs)) == pytest.approx(expected)


def test_engine_rows_feed_summary_and_score_end_to_end():
    rng = np.random.default_rng(11)
    names = [slide_id(st, sc) for st in ("GM", "KR") for sc in ("P", "S60")]
    features = gaussian_slides(rng, names, 30, 16)
    table = pm.pair_metrics(features, pm.all_pairs(names), progress=False)
    summary = pm.summarise(table)
    assert summary.groupby("group", sort=False)["n_pairs"].first().tolist() == [6, 2, 2, 2]
    assert 0 <= pm.leaderboard_score(summary) <= 1


def test_reference_itself_on_a_hand_computed_example():
    # S1 = {a0, a1}, S2 = {b0, b1}; a0 = (1, 0), a1 = (0, 1), b0 = (1, 0), b1 = (1, 0).
    # a0 -> b0: candidates a1 (0), b0 (1), b1 (1): rank 2 (tie with b1 counts). a1 -> b1: a0 (0), b0 (0), b1 (0): rank 3.
    # b0 -> a0: candidates b1 (1), a0 (1), a1 (0): rank 2. b1 -> a1: b0 (1), a0 (1), a1 (0): rank 3.
    f1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    f2 = np.array([[1.0, 0.0], [1.0, 0.0]])
    ref = reference_pair(f1, f2, ks=(1, 2, 3))
    assert ref == {"cosine_similarity": 0.5, "top_1_accuracy": 0.0, "top_2_accuracy": 0.5, "top_3_accuracy": 1.0}
    rows = list(pm.iter_pair_metrics({"GM_P": f1, "GM_S60": f2}, [("GM_P", "GM_S60")], ks=(1, 2, 3), progress=False))
    # twins a0.b0 = 1, a1.b1 = 0 (mean 0.5); non-twins a0.b1 = 1, a1.b0 = 0 (mean 0.5): margin 0
    assert {k: v for k, v in rows[0].items() if k not in ("slide_a", "slide_b")} == {**ref, "cosine_margin": 0.0}


def dense_margin(a: np.ndarray, b: np.ndarray) -> float:
    """Slow reference: every twin and every non-twin cosine, from the full matrix."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = a.astype(np.float64) @ b.astype(np.float64).T
    off = ~np.eye(len(a), dtype=bool)
    return float(np.diag(sims).mean() - sims[off].mean())


@pytest.mark.parametrize("n", [2, 3, 17])
def test_cosine_margin_matches_a_dense_reference_and_a_constant_embedding_scores_zero(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, 8)), rng.normal(size=(n, 8))
    b[0] = a[0]  # a perfect twin, and ties
    rows = list(pm.iter_pair_metrics({"GM_P": a, "GM_S60": b}, [("GM_P", "GM_S60")], ks=(1,), progress=False))
    assert rows[0]["cosine_margin"] == pytest.approx(dense_margin(a, b), abs=1e-6)
    constant = np.ones((n, 8)) + 1e-9 * rng.normal(size=(n, 8))
    rows = list(pm.iter_pair_metrics({"GM_P": constant, "GM_S60": constant}, [("GM_P", "GM_S60")], ks=(1,),
                                     progress=False))
    assert rows[0]["cosine_similarity"] == pytest.approx(1.0) and abs(rows[0]["cosine_margin"]) < 1e-6
    assert np.isnan(pm.cosine_margin(np.ones((1, 4)), np.ones((1, 4))))


def test_itertools_reference_pairs_are_unordered():
    ids = ["a_b", "c_d", "e_f"]
    assert pm.all_pairs(ids) == list(itertools.combinations(ids, 2))
