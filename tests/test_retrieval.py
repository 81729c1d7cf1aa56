"""Exact inner-product retrieval: every backend against brute force, and against each other."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from pathbench import retrieval
from pathbench.errors import PathbenchError

BACKENDS = ["torch"] + (["faiss"] if retrieval.faiss_available() else [])


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tie_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """4 entries of +-0.5: unit norm, every inner product an exact multiple of 0.25."""
    out = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        out[i, rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_rows", [None, 7])
def test_topk_equals_brute_force_float64(backend, block_rows):
    rng = np.random.default_rng(0)
    q, db = unit_rows(rng, 45, 32), unit_rows(rng, 103, 32)
    scores, ids = retrieval.topk(q, db, 6, backend=backend, block_rows=block_rows)
    exact = q.astype(np.float64) @ db.astype(np.float64).T
    expected_ids = np.argsort(-exact, axis=1, kind="stable")[:, :6]
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == ids.shape == (45, 6)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, expected_ids, axis=1), atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_excludes_the_given_ids_and_pads_short_rows(backend):
    rng = np.random.default_rng(1)
    x = unit_rows(rng, 9, 16)
    x[4] = x[3]  # a duplicate is a different item: it stays a candidate
    scores, ids = retrieval.topk(x, x, 12, exclude_ids=np.arange(9), backend=backend, block_rows=4)
    assert not (ids == np.arange(9)[:, None]).any()
    assert (ids[:, 8:] == -1).all() and np.isneginf(scores[:, 8:]).all()
    assert (ids[:, :8] >= 0).all()
    assert ids[3, 0] == 4 and ids[4, 0] == 3
    assert scores[3, 0] == pytest.approx(1.0, abs=1e-6)
    # -1 excludes nothing.
    _, ids_all = retrieval.topk(x, x, 9, exclude_ids=np.full(9, -1), backend=backend)
    assert sorted(ids_all[0]) == list(range(9))


def test_backends_return_identical_scores_on_exact_data():
    if len(BACKENDS) < 2:
        pytest.skip("faiss is not installed")
    rng = np.random.default_rng(2)
    x = tie_rows(rng, 70, 8)
    results = {b: retrieval.topk(x, x, 11, exclude_ids=np.arange(70), backend=b) for b in BACKENDS}
    np.testing.assert_array_equal(results["torch"][0], results["faiss"][0])
    # Ids may differ among tied scores, but each id's score is the same exact value.
    for scores, ids in results.values():
        np.testing.assert_array_equal(scores, np.take_along_axis(x @ x.T, ids, axis=1))


def test_backends_agree_on_random_data():
    if len(BACKENDS) < 2:
        pytest.skip("faiss is not installed")
    rng = np.random.default_rng(3)
    q, db = unit_rows(rng, 80, 48), unit_rows(rng, 90, 48)
    (s1, i1), (s2, i2) = (retrieval.topk(q, db, 10, backend=b) for b in BACKENDS)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=retrieval.float32_error_bound(48))


def test_topk_accepts_tensors():
    rng = np.random.default_rng(4)
    x = unit_rows(rng, 20, 8)
    a = retrieval.topk(torch.from_numpy(x), torch.from_numpy(x), 3)
    b = retrieval.topk(x, x, 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("block_rows", [None, 1, 6, 40])
def test_threshold_counts_resolved_exactly_equal_brute_force_counts_in_both_directions(block_rows):
    rng = np.random.default_rng(5)
    n = 40
    a, b = tie_rows(rng, n, 8), tie_rows(rng, n, 8)
    b[:10] = a[:10]
    sim = a.astype(np.float64) @ b.astype(np.float64).T  # exact: multiples of 0.25
    t = np.diag(sim).copy()
    eps = retrieval.float32_error_bound(8)
    lo = np.nextafter((t - eps).astype(np.float32), -np.inf)
    hi = np.nextafter((t + eps).astype(np.float32), np.inf)
    tc = retrieval.threshold_counts(
        a, b, lo, hi, exclude_ids=np.arange(n), column_lo=lo, column_hi=hi, block_rows=block_rows
    )
    off = ~np.eye(n, dtype=bool)
    expected_rows = ((sim >= t[:, None]) & off).sum(axis=1)
    expected_cols = ((sim >= t[None, :]) & off).sum(axis=0)
    row_extra = np.bincount(
        tc.row_ambiguous[:, 0][sim[tc.row_ambiguous[:, 0], tc.row_ambiguous[:, 1]] >= t[tc.row_ambiguous[:, 0]]],
        minlength=n,
    )
    col_extra = np.bincount(
        tc.col_ambiguous[:, 1][sim[tc.col_ambiguous[:, 0], tc.col_ambiguous[:, 1]] >= t[tc.col_ambiguous[:, 1]]],
        minlength=n,
    )
    np.testing.assert_array_equal(tc.row_sure + row_extra, expected_rows)
    np.testing.assert_array_equal(tc.col_sure + col_extra, expected_cols)
    # The diagonal is excluded in both directions, and ties really were in the band.
    assert not (tc.row_ambiguous[:, 0] == tc.row_ambiguous[:, 1]).any()
    assert len(tc.row_ambiguous) > 0 and len(tc.col_ambiguous) > 0


def test_threshold_counts_rows_only():
    rng = np.random.default_rng(6)
    q, db = unit_rows(rng, 10, 16), unit_rows(rng, 30, 16)
    lo = hi = np.zeros(10, dtype=np.float32)
    tc = retrieval.threshold_counts(q, db, lo, hi)
    np.testing.assert_array_equal(tc.row_sure, (q.astype(np.float64) @ db.T.astype(np.float64) >= 0).sum(1))
    assert tc.col_sure is None and tc.col_ambiguous is None


def test_float32_products_stay_within_the_error_bound():
    rng = np.random.default_rng(7)
    for dim in (8, 256, 1536):
        x, y = unit_rows(rng, 200, dim), unit_rows(rng, 300, dim)
        x[0] = y[0]
        blocks = retrieval._similarity_blocks(x, y, 64, torch.device("cpu"))
        approx = np.concatenate([block.copy() for _, block in blocks])  # blocks share one buffer
        exact = x.astype(np.float64) @ y.astype(np.float64).T
        assert np.abs(approx - exact).max() <= retrieval.float32_error_bound(dim)


def test_backend_and_device_errors_are_clear():
    with pytest.raises(PathbenchError, match="unknown retrieval backend"):
        retrieval.resolve_backend("annoy")
    assert retrieval.resolve_backend("auto", "cpu") == "torch"
    assert retrieval.resolve_backend("torch", "cpu") == "torch"
    assert retrieval.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(PathbenchError, match="unknown device"):
        retrieval.resolve_device("tpu:zero")
    if not torch.cuda.is_available():
        with pytest.raises(PathbenchError, match="no CUDA GPU"):
            retrieval.resolve_device("cuda")
    with pytest.raises(PathbenchError, match="dimension"):
        retrieval.topk(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), 1)


def test_a_missing_faiss_is_an_error_that_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    assert not retrieval.faiss_available()
    for call in (lambda: retrieval.resolve_backend("faiss"), retrieval.import_faiss):
        with pytest.raises(PathbenchError, match=r"pip install 'pathbench\[cpu\]'.*'pathbench\[gpu\]'"):
            call()
    assert retrieval.resolve_backend("auto") == "torch"  # the default never needs FAISS
