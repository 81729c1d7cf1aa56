"""Embedding-health diagnostics against slow dense numpy references, edge cases and measured models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pathbench import diagnostics
from pathbench.diagnostics import (
    EmbeddingHealth,
    HealthThresholds,
    covariance_eigenvalues,
    effective_rank,
    embedding_health,
    mean_pairwise_cosine,
    near_constant_fraction,
    participation_ratio,
)
from pathbench.errors import DataError

# ---- slow, obviously-correct references ---------------------------------------------------


def ref_mean_cosine(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
            total += 0.0 if ni == 0 or nj == 0 else float(x[i] @ x[j]) / (ni * nj)
    return total / (n * (n - 1))


def ref_spectrum(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    centred = x - x.mean(axis=0)
    cov = centred.T @ centred / len(x)
    return np.clip(np.sort(np.linalg.eigvalsh(cov))[::-1], 0, None)


def ref_pr(eigenvalues: np.ndarray) -> float:
    return 0.0 if eigenvalues.sum() == 0 else float(eigenvalues.sum() ** 2 / np.sum(eigenvalues**2))


def ref_erank(eigenvalues: np.ndarray) -> float:
    if eigenvalues.sum() == 0:
        return 0.0
    p = eigenvalues / eigenvalues.sum()
    entropy = -sum(float(v * math.log(v)) for v in p if v > 0)
    return math.exp(entropy)


def ref_near_constant(x: np.ndarray, share: float) -> float:
    variances = x.astype(np.float64).var(axis=0)
    if variances.sum() == 0:
        return 1.0
    average = variances.sum() / x.shape[1]
    return sum(1 for v in variances if v < share * average) / x.shape[1]


def random_cases():
    rng = np.random.default_rng(7)
    yield "gaussian n<d", rng.normal(size=(9, 23)).astype(np.float32)
    yield "gaussian n>d", rng.normal(size=(40, 6)).astype(np.float32)
    yield "offset + low rank", (5 + rng.normal(size=(30, 3)) @ rng.normal(size=(3, 12))).astype(np.float32)
    yield "n = 2", rng.normal(size=(2, 5)).astype(np.float32)
    yield "dim 1", rng.normal(size=(12, 1)).astype(np.float32)
    yield "dim 1 signs", np.array([[2.0], [-1.0], [3.0], [-0.5]], np.float32)
    yield "repeated rows (ties)", np.repeat(rng.integers(-2, 3, size=(4, 6)).astype(np.float32), 3, axis=0)
    tied = rng.integers(0, 2, size=(15, 8)).astype(np.float32)
    yield "binary with ties", tied
    zero = rng.normal(size=(10, 7)).astype(np.float32)
    zero[[2, 5]] = 0
    yield "zero vectors", zero
    dead = rng.normal(size=(25, 10)).astype(np.float32)
    dead[:, :4] = 3.0
    dead[:, 4] += rng.normal(0, 1e-5, size=25).astype(np.float32)
    yield "dead dimensions", dead


@pytest.mark.parametrize(("label", "x"), list(random_cases()), ids=[c[0] for c in random_cases()])
def test_every_quantity_matches_the_dense_reference(label, x):
    assert mean_pairwise_cosine(x) == pytest.approx(ref_mean_cosine(x), rel=1e-9, abs=1e-12)
    spectrum = covariance_eigenvalues(x)
    reference = ref_spectrum(x)
    k = min(len(spectrum), len(reference))
    scale = max(reference.max(), 1e-300)
    np.testing.assert_allclose(spectrum[:k], reference[:k], rtol=0, atol=1e-10 * scale)
    assert reference[k:].max(initial=0.0) <= 1e-10 * scale and spectrum[k:].max(initial=0.0) <= 1e-10 * scale
    assert participation_ratio(spectrum) == pytest.approx(ref_pr(reference), rel=1e-7)
    assert effective_rank(spectrum) == pytest.approx(ref_erank(reference), rel=1e-7)
    share = HealthThresholds().near_constant_share
    assert near_constant_fraction(x, share) == ref_near_constant(x, share)


def test_block_wise_sums_equal_the_one_block_result(monkeypatch):
    rng = np.random.default_rng(3)
    x = (10 + rng.normal(size=(53, 8))).astype(np.float32)  # n > d: the scatter-matrix path
    whole = embedding_health(x)
    monkeypatch.setattr(diagnostics, "_BLOCK_ROWS", 5)
    blocked = embedding_health(x)
    for key in ("mean_cosine", "participation_ratio", "effective_rank", "near_constant_fraction"):
        assert getattr(blocked, key) == pytest.approx(getattr(whole, key), rel=1e-10), key
    assert blocked.mean_cosine == pytest.approx(ref_mean_cosine(x), rel=1e-10)


def test_one_item_has_no_pairs_and_is_not_judged():
    health = embedding_health(np.array([[1.0, 2.0, 3.0]], np.float32))
    assert math.isnan(health.mean_cosine)
    assert health.participation_ratio == 0.0 and health.effective_rank == 0.0
    assert health.near_constant_fraction == 1.0
    assert not health.degenerate and health.reasons == ()
    assert health.to_dict()["mean_cosine"] is None  # JSON-ready


def test_two_items_give_one_pair_and_rank_one():
    x = np.array([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]], np.float32)
    health = embedding_health(x)
    assert health.mean_cosine == 0.0
    assert health.participation_ratio == pytest.approx(1.0) and health.effective_rank == pytest.approx(1.0)
    # Two items span one direction: too few for the rank check, and 3 of 5 dimensions never vary.
    assert health.near_constant_fraction == pytest.approx(0.6)
    assert health.degenerate and any("near constant" in r for r in health.reasons)


def test_identical_rows_are_degenerate_with_exactly_zero_spread():
    row = np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32)
    health = embedding_health(np.repeat(row, 30, axis=0))
    assert health.participation_ratio == 0.0 and health.effective_rank == 0.0
    assert health.near_constant_fraction == 1.0
    assert health.mean_cosine == pytest.approx(1.0, abs=1e-12)
    assert health.degenerate and health.reasons == ("all 30 embeddings are identical",)


def test_zero_vectors_have_cosine_zero_and_are_counted():
    x = np.zeros((6, 4), np.float32)
    x[0] = [1, 0, 0, 0]
    x[1] = [2, 0, 0, 0]
    health = embedding_health(x)
    assert health.zero_vectors == 4
    assert health.mean_cosine == pytest.approx(2 / 30)  # one parallel pair, both orders, of 6 * 5
    all_zero = embedding_health(np.zeros((5, 3), np.float32))
    assert all_zero.mean_cosine == 0.0 and all_zero.degenerate and "identical" in all_zero.reasons[0]


def test_dimension_one_skips_the_rank_check():
    x = np.arange(1, 11, dtype=np.float32).reshape(10, 1)
    health = embedding_health(x)
    assert health.effective_rank == pytest.approx(1.0) and health.participation_ratio == pytest.approx(1.0)
    # All positive numbers point the same way: a 1-d embedding is "parallel" by construction.
    assert health.mean_cosine == pytest.approx(1.0)
    assert health.degenerate and not any("effective rank" in r for r in health.reasons)


def test_near_constant_embedding_is_flagged_but_isotropic_noise_is_not():
    rng = np.random.default_rng(0)
    constant = rng.normal(size=192)
    collapsed = (constant + rng.normal(0, 1e-3, size=(44, 192))).astype(np.float32)
    health = embedding_health(collapsed)
    assert health.degenerate and "nearly parallel" in health.reasons[0]
    assert health.effective_rank > 30  # the noise is spread over every direction: rank alone would miss it
    healthy = embedding_health(rng.normal(size=(44, 192)).astype(np.float32))
    assert not healthy.degenerate and abs(healthy.mean_cosine) < 0.05


def test_one_dimensional_embedding_with_spread_is_flagged_by_rank():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=32)
    x = (np.outer(rng.normal(size=50), direction) + rng.normal(0, 1e-3, size=(50, 32))).astype(np.float32)
    health = embedding_health(x)
    assert health.mean_cosine < 0.1  # +v and -v: cosine alone would miss it
    assert health.degenerate and any("effective rank" in r for r in health.reasons)


def test_near_constant_fraction_flags_dead_dimensions_and_a_dead_concatenated_half():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 64)).astype(np.float32)
    x[:, :32] = rng.normal(size=32)  # e.g. a constant class token concatenated with a live patch mean
    health = embedding_health(x)
    assert health.near_constant_fraction == 0.5
    assert health.degenerate and any("50.0 % of the 64 dimensions" in r for r in health.reasons)


def test_non_finite_values_make_a_degenerate_record_instead_of_an_error():
    x = np.ones((4, 3), np.float32)
    x[1, 2] = np.nan
    x[3, 0] = np.inf
    health = embedding_health(x)
    assert health.degenerate and health.non_finite == 2 and "NaN or infinite" in health.reasons[0]
    assert health.to_dict()["participation_ratio"] is None


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((0, 4)), np.zeros((3, 0)), np.array([["a", "b"]]),
                                 np.zeros((2, 2, 2))])
def test_bad_input_is_a_data_error_that_says_what_was_expected(bad):
    with pytest.raises(DataError, match="expect|need|must"):
        embedding_health(bad)


def test_thresholds_are_configurable_and_recorded():
    rng = np.random.default_rng(4)
    x = (1 + 0.3 * rng.normal(size=(20, 8))).astype(np.float32)
    cosine = embedding_health(x).mean_cosine
    strict = embedding_health(x, HealthThresholds(max_mean_cosine=cosine - 0.01))
    assert strict.degenerate and strict.to_dict()["thresholds"]["max_mean_cosine"] == pytest.approx(cosine - 0.01)
    assert isinstance(strict, EmbeddingHealth) and "DEGENERATE" in strict.summary()
    assert "DEGENERATE" not in embedding_health(x, HealthThresholds(max_mean_cosine=1.0)).summary()


def test_measurements_in_the_docstring_random_vit_on_real_tiles(tiny_extractor):
    """The module docstring's table: the random-weight ViT on the shipped tissue tiles is not degenerate."""
    import torch

    from pathbench.data.synthetic_plism import load_demo_tiles

    tiles, _ = load_demo_tiles()
    with torch.no_grad():
        cls = tiny_extractor.embed(torch.from_numpy(tiles), pooling="cls").numpy()
        mean = tiny_extractor.embed(torch.from_numpy(tiles), pooling="mean").numpy()
    health = embedding_health(cls)
    assert health.n_items == 44 and health.dim == 192 and not health.degenerate
    assert health.mean_cosine == pytest.approx(0.788, abs=0.01)
    assert health.effective_rank == pytest.approx(2.12, abs=0.05)
    assert health.participation_ratio == pytest.approx(1.45, abs=0.05)
    mean_health = embedding_health(mean)
    assert not mean_health.degenerate and mean_health.effective_rank == pytest.approx(1.61, abs=0.05)
