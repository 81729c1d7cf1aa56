"""The kNN probe against a slow dense reference, DINO's algorithm, and across search backends."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from pathbench import retrieval
from pathbench.errors import DataError, PathbenchError
from pathbench.heads import knn as knn_module
from pathbench.heads.knn import KnnProbe, resolve_knn_backend

BACKENDS = ["torch"] + (["faiss"] if retrieval.faiss_available() else [])
needs_faiss = pytest.mark.skipif(not retrieval.faiss_available(), reason="faiss is not installed")


def reference_knn(train_x, train_y, query_x, num_classes, k, temperature):
    """Obviously-correct kNN: every similarity in float64, a sorted list per query, a Python vote.

    Returns (neighbour ids (m, min(k, n)), shares (m, C), predictions (m,)).
    """
    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)

    train, queries = unit(train_x), unit(query_x)
    all_ids, all_shares, predictions = [], [], []
    for q in queries:
        sims = [float(np.dot(q, t)) for t in train]
        order = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:k]
        votes = [0.0] * num_classes
        for j in order:
            votes[int(train_y[j])] += math.exp(sims[j] / temperature)
        total = sum(votes)
        all_ids.append(order)
        all_shares.append([v / total for v in votes])
        predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return np.array(all_ids), np.array(all_shares), np.array(predictions)


def dino_knn(train_x, train_y, query_x, num_classes, k, temperature):
    """The steps of DINO's ``knn_classifier`` (normalise, mm, topk, one-hot, exp(sim / T), sum), in torch."""
    train = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float64), dim=1)
    queries = torch.nn.functional.normalize(torch.as_tensor(query_x, dtype=torch.float64), dim=1)
    similarity = queries @ train.T
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    neighbours = torch.as_tensor(train_y).view(1, -1).expand(len(queries), -1).gather(1, indices)
    one_hot = torch.zeros(len(queries) * k, num_classes, dtype=torch.float64)
    one_hot.scatter_(1, neighbours.reshape(-1, 1), 1)
    probs = (one_hot.view(len(queries), k, num_classes) * (distances / temperature).exp().view(-1, k, 1)).sum(1)
    return probs.numpy()


def gaussian_classes(rng, n, dim, classes, separation=1.5):
    means = rng.standard_normal((classes, dim)) * separation
    y = rng.integers(0, classes, n)
    return (means[y] + rng.standard_normal((n, dim))).astype(np.float32), y


def tie_rows(rng, n, dim):
    """4 entries of +-0.5: unit norm, every similarity an exact multiple of 0.25 (ties everywhere)."""
    out = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        out[i, rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_equals_the_dense_reference_on_random_data(backend):
    rng = np.random.default_rng(0)
    train_x, train_y = gaussian_classes(rng, 300, 16, 5)
    query_x, _ = gaussian_classes(rng, 80, 16, 5)
    probe = KnnProbe(5, backend=backend, device="cpu").fit(train_x, train_y)
    ids, shares, predictions = reference_knn(train_x, train_y, query_x, 5, 20, 0.07)
    np.testing.assert_array_equal(probe.kneighbors(query_x)[1], ids)
    np.testing.assert_allclose(probe.predict_scores(query_x), shares, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(probe.predict(query_x), predictions)


def test_probe_votes_as_dino_does():
    rng = np.random.default_rng(1)
    train_x, train_y = gaussian_classes(rng, 400, 32, 7, separation=0.4)
    query_x, _ = gaussian_classes(rng, 120, 32, 7, separation=0.4)
    probs = dino_knn(train_x, train_y, query_x, 7, 20, 0.07)
    shares = KnnProbe(7, backend="torch", device="cpu").fit(train_x, train_y).predict_scores(query_x)
    np.testing.assert_allclose(shares, probs / probs.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(shares.argmax(1), probs.argmax(1))
    assert len(set(probs.argmax(1))) > 3  # the classes overlap: the vote really decides


@pytest.mark.parametrize("max_candidates", [1024, 50])  # 50: undecided queries take the dense path
def test_ties_are_broken_by_training_index_and_every_backend_agrees_exactly(monkeypatch, max_candidates):
    monkeypatch.setattr(knn_module, "_MAX_CANDIDATES", max_candidates)
    rng = np.random.default_rng(2)
    train_x = tie_rows(rng, 400, 8)
    train_x[200:260] = train_x[:60]  # exact duplicates, different labels
    train_y = rng.integers(0, 4, 400)
    query_x = tie_rows(rng, 60, 8)
    sims = query_x.astype(np.float64) @ train_x.astype(np.float64).T
    kth = -np.sort(-sims, axis=1)
    assert (kth[:, 19] == kth[:, 20]).mean() > 0.9  # ties straddle the k-th neighbour of most queries
    ids, shares, predictions = reference_knn(train_x, train_y, query_x, 4, 20, 0.07)
    results = {}
    for backend in BACKENDS:
        probe = KnnProbe(4, backend=backend, device="cpu").fit(train_x, train_y)
        results[backend] = (probe.kneighbors(query_x), probe.predict_scores(query_x))
        np.testing.assert_array_equal(results[backend][0][1], ids)
        np.testing.assert_array_equal(probe.predict(query_x), predictions)
        np.testing.assert_allclose(results[backend][1], shares, rtol=1e-10, atol=1e-14)
    for (neighbours, scores) in results.values():
        np.testing.assert_array_equal(neighbours[0], results["torch"][0][0])
        np.testing.assert_array_equal(scores, results["torch"][1])


def test_exactly_tied_class_scores_go_to_the_lowest_class():
    train_x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    train_y = np.array([2, 1, 0, 2])
    query = np.array([[1.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    probe = KnnProbe(3, k=4, backend="torch", device="cpu").fit(train_x, train_y)
    scores = probe.predict_scores(query)
    np.testing.assert_allclose(scores[0], [0.25, 0.25, 0.5])
    assert probe.predict(query).tolist() == [2, 0]  # row 2: classes 0 and 1 tie exactly


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_the_training_set_uses_every_training_embedding(backend):
    rng = np.random.default_rng(3)
    train_x, train_y = gaussian_classes(rng, 12, 8, 3)
    query_x, _ = gaussian_classes(rng, 9, 8, 3)
    probe = KnnProbe(3, k=50, backend=backend, device="cpu").fit(train_x, train_y)
    sims, ids = probe.kneighbors(query_x)
    assert ids.shape == (9, 12) and all(sorted(row) == list(range(12)) for row in ids)
    ref_ids, shares, predictions = reference_knn(train_x, train_y, query_x, 3, 50, 0.07)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(probe.predict_scores(query_x), shares, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(probe.predict(query_x), predictions)


def test_one_class_only_in_train_predicts_it_everywhere():
    rng = np.random.default_rng(4)
    train_x, _ = gaussian_classes(rng, 30, 8, 2)
    query_x, query_y = gaussian_classes(rng, 10, 8, 2)
    probe = KnnProbe(4, backend="torch", device="cpu").fit(train_x, np.full(30, 2))
    np.testing.assert_array_equal(probe.predict_scores(query_x), np.tile([0.0, 0.0, 1.0, 0.0], (10, 1)))
    assert (probe.predict(query_x) == 2).all()
    assert probe.score(query_x, query_y) == 0.0  # no query is of class 2
    assert probe.score(query_x, np.full(10, 2)) == 1.0


def test_scores_are_shares_that_sum_to_one_and_tensors_are_accepted():
    rng = np.random.default_rng(5)
    train_x, train_y = gaussian_classes(rng, 50, 8, 3)
    query_x, query_y = gaussian_classes(rng, 20, 8, 3)
    a = KnnProbe(3, device="cpu").fit(torch.from_numpy(train_x), torch.from_numpy(train_y))
    b = KnnProbe(3, device="cpu").fit(train_x, train_y)
    np.testing.assert_array_equal(a.predict_scores(torch.from_numpy(query_x)), b.predict_scores(query_x))
    np.testing.assert_allclose(b.predict_scores(query_x).sum(1), 1.0)
    from pathbench.heads import macro_accuracy

    assert b.score(query_x, query_y) == macro_accuracy(query_y, b.predict(query_x))


@needs_faiss
def test_an_ivf_index_visiting_every_list_finds_the_exact_neighbours():
    rng = np.random.default_rng(6)
    train_x, train_y = gaussian_classes(rng, 500, 16, 4)
    query_x, _ = gaussian_classes(rng, 40, 16, 4)
    flat = KnnProbe(4, backend="faiss", device="cpu", index="flat").fit(train_x, train_y)
    ivf = KnnProbe(4, backend="faiss", device="cpu", index="ivf").fit(train_x, train_y)
    assert not ivf.index_.exact and ivf.index_.kind == "ivf" and ivf.index_.nlist == round(4 * math.sqrt(500))
    ivf.index_._index.nprobe = ivf.index_.nlist
    np.testing.assert_array_equal(ivf.kneighbors(query_x)[1], flat.kneighbors(query_x)[1])
    np.testing.assert_array_equal(ivf.predict_scores(query_x), flat.predict_scores(query_x))


def test_index_kind_auto_is_flat_below_the_ivf_threshold_and_ivf_needs_faiss(monkeypatch):
    x = tie_rows(np.random.default_rng(7), 20, 8)
    assert retrieval.InnerProductIndex(x, backend="torch").kind == "flat"
    if retrieval.faiss_available():
        assert retrieval.InnerProductIndex(x, backend="faiss").kind == "flat"
        monkeypatch.setattr(retrieval, "IVF_MIN_DATABASE", 20)
        index = retrieval.InnerProductIndex(x, backend="faiss")
        assert (index.kind, index.nlist, index.nprobe) == ("ivf", 18, 1)
    with pytest.raises(PathbenchError, match="IVF index needs the FAISS backend"):
        retrieval.InnerProductIndex(x, backend="torch", kind="ivf")
    with pytest.raises(PathbenchError, match="unknown index kind"):
        retrieval.InnerProductIndex(x, kind="hnsw")
    assert retrieval.ivf_settings(1_000_000) == (4000, 250)


def test_auto_backend_is_faiss_on_a_cpu_when_installed_else_torch(monkeypatch):
    cpu = torch.device("cpu")
    big = retrieval.IVF_MIN_DATABASE
    faiss = "faiss" if retrieval.faiss_available() else "torch"
    assert resolve_knn_backend("auto", cpu, 100_000) == faiss
    assert resolve_knn_backend("auto", cpu, big) == faiss
    assert resolve_knn_backend("auto", cpu, 10, "ivf") == faiss
    assert resolve_knn_backend("torch", cpu, big) == "torch"
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert resolve_knn_backend("auto", cpu, big) == "torch"
    x, y = gaussian_classes(np.random.default_rng(8), 10, 4, 2)
    assert KnnProbe(2, device="cpu").fit(x, y).backend_ == "torch"
    with pytest.raises(PathbenchError, match="FAISS is not installed"):
        KnnProbe(2, backend="faiss", device="cpu").fit(x, y)
    with pytest.raises(PathbenchError, match="IVF index needs the FAISS backend"):
        KnnProbe(2, device="cpu", index="ivf").fit(x, y)


def test_auto_backend_on_a_gpu_is_torch_for_exact_search_and_faiss_only_with_its_gpu_build(monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(retrieval, "faiss_available", lambda: True)
    monkeypatch.setattr(retrieval, "faiss_gpu_available", lambda: True)
    assert resolve_knn_backend("auto", gpu, 100_000) == "torch"
    assert resolve_knn_backend("auto", gpu, retrieval.IVF_MIN_DATABASE) == "faiss"
    monkeypatch.setattr(retrieval, "faiss_gpu_available", lambda: False)
    assert resolve_knn_backend("auto", gpu, retrieval.IVF_MIN_DATABASE) == "torch"


def test_bad_inputs_give_clear_errors():
    rng = np.random.default_rng(9)
    x, y = gaussian_classes(rng, 10, 4, 2)
    with pytest.raises(PathbenchError, match="at least 2 classes"):
        KnnProbe(1)
    with pytest.raises(PathbenchError, match="positive number of neighbours"):
        KnnProbe(2, k=0)
    with pytest.raises(PathbenchError, match="temperature must be positive"):
        KnnProbe(2, temperature=0.0)
    probe = KnnProbe(2, device="cpu")
    with pytest.raises(PathbenchError, match="not fitted"):
        probe.predict(x)
    with pytest.raises(PathbenchError, match=r"labels must lie in \[0, 2\)"):
        probe.fit(x, np.full(10, 2))
    with pytest.raises(PathbenchError, match="expected 10 labels"):
        probe.fit(x, y[:5])
    with pytest.raises(PathbenchError, match="non-empty"):
        probe.fit(x[:0], y[:0])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        probe.fit(bad, y)
    probe.fit(x, y)
    with pytest.raises(PathbenchError, match="5 dimensions but the probe was fitted on 4"):
        probe.predict(np.ones((2, 5), np.float32))
    zero = x.copy()
    zero[0] = 0
    with pytest.raises(DataError, match="all-zero"):
        probe.predict(zero)
    wider = np.concatenate([x, x], axis=1)
    assert probe.fit(wider, y).predict(wider).shape == (10,)  # a refit may change the dimension
