"""Paired statistics: Wilcoxon signed-rank against scipy and by hand, Holm by hand, bootstrap."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from pathbench import stats
from pathbench.errors import PathbenchError


def _scipy(d):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scipy.stats.wilcoxon(d)


def test_wilcoxon_by_hand_on_five_differences():
    # |d| ranks 1..5, the negative one has rank 3: T+ = 12, T- = 3.
    # Subsets of {1..5} with sum <= 3: {}, {1}, {2}, {3}, {1,2} -> p = 2 * 5 / 32.
    result = stats.wilcoxon_signed_rank([1.0, 2.0, -3.0, 4.0, 5.0])
    assert result.statistic == 3.0 and result.n == 5 and result.method == "exact"
    assert result.pvalue == pytest.approx(10 / 32)


def test_wilcoxon_of_two_samples_is_the_test_of_their_differences():
    x = np.array([0.81, 0.77, 0.93, 0.65, 0.72, 0.88, 0.91])
    y = np.array([0.79, 0.70, 0.90, 0.66, 0.61, 0.80, 0.85])
    assert stats.wilcoxon_signed_rank(x, y) == stats.wilcoxon_signed_rank(x - y)


@pytest.mark.parametrize(("case", "expected_method"), [
    ("distinct", "exact"), ("ties", "permutation"), ("zeros", "permutation"), ("ties-and-zeros", "asymptotic"),
    ("large", "asymptotic"), ("large-ties", "asymptotic"), ("fifty-distinct", "exact"),
    ("thirteen-with-a-zero", "permutation"), ("fourteen-with-a-zero", "asymptotic"), ("one", "exact"),
])
def test_wilcoxon_is_scipy_auto_and_names_the_method_that_ran(case, expected_method):
    data = {
        "distinct": [0.3, -0.1, 0.25, 0.7, -0.05, 0.45, 0.12, 0.33],
        "ties": [0.2, 0.2, -0.2, 0.4, 0.4, 0.1, -0.1, 0.3],
        "zeros": [0.0, 0.1, 0.3, -0.2, 0.0, 0.5, 0.25],
        "ties-and-zeros": [0.0, 0.1, 0.1, -0.1, 0.2, 0.0, 0.3, 0.3, 0.3, 0.4, -0.2, 0.5, 0.1, 0.6, 0.0],
        "large": list(np.linspace(-0.5, 1.5, 60) + 0.001 * np.arange(60) ** 1.5),
        "large-ties": list(np.round(np.sin(np.arange(80)) + 0.3, 1)),
        "fifty-distinct": list(np.linspace(-0.3, 1.0, 50) + 1e-4),
        "thirteen-with-a-zero": [0.0] + list(np.linspace(-0.2, 1.0, 12) + 1e-3),
        "fourteen-with-a-zero": [0.0] + list(np.linspace(-0.2, 1.0, 13) + 1e-3),
        "one": [0.4],
    }[case]
    mine, reference = stats.wilcoxon_signed_rank(data), _scipy(data)
    assert mine.statistic == reference.statistic
    assert mine.pvalue == reference.pvalue
    assert mine.method == expected_method


def test_wilcoxon_matches_scipy_on_random_data_in_every_regime():
    rng = np.random.default_rng(7)
    for trial in range(45):
        n = int(rng.integers(1, 70))
        d = [rng.normal(0.2, 1, n), np.round(rng.normal(0.3, 1, n), 1), rng.integers(-3, 4, n).astype(float)][trial % 3]
        if np.all(d == 0):
            continue
        mine, reference = stats.wilcoxon_signed_rank(d), _scipy(d)
        assert (mine.statistic, mine.pvalue) == (reference.statistic, reference.pvalue), (trial, d)


def test_wilcoxon_without_any_difference_is_not_evidence():
    result = stats.wilcoxon_signed_rank([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert result.pvalue == 1.0 and result.n == 0 and result.method == "none"


def test_wilcoxon_drops_pairs_with_a_missing_value():
    x = [0.3, np.nan, 0.25, 0.7, 0.1, 0.45]
    y = [0.1, 0.2, np.nan, 0.2, 0.2, 0.1]
    expected = _scipy(np.array([0.3 - 0.1, 0.7 - 0.2, 0.1 - 0.2, 0.45 - 0.1]))
    assert stats.wilcoxon_signed_rank(x, y).pvalue == pytest.approx(expected.pvalue)


def test_wilcoxon_refuses_values_that_are_not_paired_vectors():
    with pytest.raises(PathbenchError, match="1-D"):
        stats.wilcoxon_signed_rank(np.zeros((3, 2)))


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_keeps_order_and_ignores_missing_p_values():
    adjusted = stats.holm([0.5, np.nan, 0.2, 0.9])
    # m = 3: 0.2*3 = 0.6, max(0.5*2, 0.6) = 1.0, max(0.9, 1.0) = 1.0
    np.testing.assert_allclose(adjusted, [1.0, np.nan, 0.6, 1.0])
    assert stats.holm([]).shape == (0,)


def test_holm_never_rejects_more_than_bonferroni_allows_per_step():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.1, 20)
    adjusted = stats.holm(p)
    assert np.all(adjusted >= p)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)  # monotone in the raw p-values
    assert adjusted[order[0]] == pytest.approx(min(1.0, 20 * p[order[0]]))


def test_bootstrap_ci_of_a_mean_is_close_to_the_normal_interval():
    rng = np.random.default_rng(3)
    values = rng.normal(1.0, 2.0, 4000)
    low, high = stats.bootstrap_ci(values, lambda b: b.mean(axis=-1), n_boot=1000, seed=1)
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - 1.96 * se, abs=0.35 * se)
    assert high == pytest.approx(values.mean() + 1.96 * se, abs=0.35 * se)
    assert stats.bootstrap_ci(values, lambda b: b.mean(axis=-1), n_boot=200, seed=5) == \
        stats.bootstrap_ci(values, lambda b: b.mean(axis=-1), n_boot=200, seed=5)


def test_stratified_bootstrap_keeps_every_unit_in_its_stratum():
    values = np.array([0.0, 0.0, 0.0, 10.0, 10.0])
    strata = np.array(["a", "a", "a", "b", "b"])
    # the mean of stratum means is 5.0 in every resample when strata are preserved
    low, high = stats.bootstrap_ci(values, lambda b: (b[..., :3].mean(-1) + b[..., 3:].mean(-1)) / 2,
                                   n_boot=100, strata=strata)
    assert low == high == 5.0


def test_paired_bootstrap_of_identical_models_is_zero_and_not_significant():
    values = np.random.default_rng(1).uniform(size=50)
    low, high, p = stats.paired_bootstrap(values, values.copy(), lambda b: np.median(b, axis=-1), n_boot=300)
    assert low == high == 0.0 and p == 1.0
    low, high, p = stats.paired_bootstrap(values + 0.2, values, lambda b: np.median(b, axis=-1), n_boot=300)
    assert low == pytest.approx(0.2) and high == pytest.approx(0.2) and p == pytest.approx(2 / 301)


@pytest.mark.parametrize("size", [1, 2, 7, 40])
def test_resampled_medians_equal_numpy_medians_with_ties_and_even_sizes(size):
    rng = np.random.default_rng(size)
    values = np.round(rng.uniform(size=size), 1)  # many ties
    index = rng.integers(0, size, size=(300, size))
    np.testing.assert_array_equal(stats.resampled_medians(values, index), np.median(values[index], axis=1))
    sub = index[:, : max(1, size // 2)]  # a resample smaller than the units (one pair group)
    np.testing.assert_array_equal(stats.resampled_medians(values, sub), np.median(values[sub], axis=1))
