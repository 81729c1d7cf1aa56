"""eva's metric set against slow references written from the definitions, on data with ties and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathbench.errors import PathbenchError
from pathbench.heads import LinearProbe, ProbeProtocol
from pathbench.heads.eva_metrics import METRIC_NAMES, classification_metrics, run_metrics

# --------------------------------------------------------------------------------------
# References: loops over items and pairs, nothing shared with the code under test.


def ref_auc(positive: list[bool], score: list[float]) -> float:
    """Probability that a positive outscores a negative, ties counted half (Mann-Whitney)."""
    pos = [s for p, s in zip(positive, score, strict=True) if p]
    neg = [s for p, s in zip(positive, score, strict=True) if not p]
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def ref_softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def ref_counts(y, pred, c):
    tp = sum(1 for t, p in zip(y, pred, strict=True) if t == c and p == c)
    fp = sum(1 for t, p in zip(y, pred, strict=True) if t != c and p == c)
    fn = sum(1 for t, p in zip(y, pred, strict=True) if t == c and p != c)
    return tp, fp, fn


def div(a, b):
    return a / b if b else 0.0


def ref_metrics(scores: np.ndarray, y: np.ndarray, num_classes: int, logits: bool = True, batch=None) -> dict:
    y = [int(v) for v in y]
    n = len(y)
    out = {}
    if num_classes == 2:
        z = [float(v) for v in np.asarray(scores).reshape(n, -1)[:, -1]] if np.ndim(scores) == 1 or \
            np.shape(scores)[1] == 1 else [float(b - a) for a, b in scores]
        if logits:
            losses = [max(v, 0.0) - v * t + math.log1p(math.exp(-abs(v))) for v, t in zip(z, y, strict=True)]
        pred = [1 if v > 0 else 0 for v in z]
        out["auroc"] = ref_auc([t == 1 for t in y], z)
        tp, fp, fn = ref_counts(y, pred, 1)
        out["precision"], out["recall"], out["f1"] = div(tp, tp + fp), div(tp, tp + fn), div(2 * tp, 2 * tp + fp + fn)
    else:
        rows = [[float(v) for v in r] for r in scores]
        probs = [ref_softmax(r) for r in rows] if logits else rows
        if logits:
            losses = [math.log(sum(math.exp(v - max(r)) for v in r)) + max(r) - r[t] for r, t in zip(rows, y, strict=True)]
        pred = [max(range(num_classes), key=lambda c, r=r: (r[c], -c)) for r in rows]
        aucs = [ref_auc([t == c for t in y], [p[c] for p in probs]) for c in range(num_classes)]
        aucs = [a for a in aucs if not math.isnan(a)]
        out["auroc"] = sum(aucs) / len(aucs) if aucs else float("nan")
        used = [c for c in range(num_classes) if sum(ref_counts(y, pred, c)) > 0]
        per = [ref_counts(y, pred, c) for c in used]
        out["precision"] = sum(div(tp, tp + fp) for tp, fp, _ in per) / len(used)
        out["recall"] = sum(div(tp, tp + fn) for tp, _, fn in per) / len(used)
        out["f1"] = sum(div(2 * tp, 2 * tp + fp + fn) for tp, fp, fn in per) / len(used)
    if logits:
        if batch is None:
            out["loss"] = sum(losses) / n
        else:
            means = [sum(losses[i : i + batch]) / len(losses[i : i + batch]) for i in range(0, n, batch)]
            out["loss"] = sum(means) / len(means)
    out["accuracy"] = sum(1 for t, p in zip(y, pred, strict=True) if t == p) / n
    present = sorted(set(y))
    out["balanced_accuracy"] = sum(
        sum(1 for t, p in zip(y, pred, strict=True) if t == c and p == c) / y.count(c) for c in present
    ) / len(present)
    return out


def assert_matches(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_every_metric_matches_the_reference_on_random_logits_with_ties(seed, num_classes):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    width = 1 if num_classes == 2 else num_classes
    logits = np.round(rng.normal(size=(n, width)) * 2, 0) / 2  # coarse: many tied scores
    y = rng.integers(0, num_classes, n)
    if seed % 3 == 1 and num_classes > 2:
        y[y == num_classes - 1] = 0  # a class absent from the targets
    got = classification_metrics(logits, y, num_classes)
    assert list(got) == list(METRIC_NAMES)
    assert_matches(got, ref_metrics(logits, y, num_classes))


@pytest.mark.parametrize("num_classes", [2, 4])
def test_all_predictions_one_class(num_classes):
    rng = np.random.default_rng(10)
    y = rng.integers(0, num_classes, 30)
    logits = rng.normal(size=(30, 1 if num_classes == 2 else num_classes))
    logits[:, -1] += 100.0  # every item is predicted as the last class
    got = classification_metrics(logits, y, num_classes)
    assert_matches(got, ref_metrics(logits, y, num_classes))
    assert got["balanced_accuracy"] == pytest.approx(1.0 / num_classes)
    assert got["recall"] == pytest.approx(1.0 / num_classes if num_classes > 2 else 1.0)


def test_predicted_class_absent_from_targets_counts_in_f1_precision_recall_not_balanced_accuracy():
    y = np.array([0, 0, 1, 1])
    logits = np.array([[5.0, 0, 0], [0, 0, 5.0], [0, 5.0, 0], [0, 5.0, 0]])  # class 2 predicted, never true
    got = classification_metrics(logits, y, 3)
    assert_matches(got, ref_metrics(logits, y, 3))
    assert got["balanced_accuracy"] == pytest.approx(0.75)  # (1/2 + 1) / 2, class 2 left out
    assert got["recall"] == pytest.approx(0.5)  # (1/2 + 1 + 0) / 3, torchmetrics' macro rule


def test_a_single_target_class_has_no_auroc():
    logits = np.array([[0.3], [-1.0], [2.0]])
    got = classification_metrics(logits, np.ones(3, dtype=int), 2)
    assert math.isnan(got["auroc"]) and got["accuracy"] == pytest.approx(2 / 3)
    assert_matches(got, ref_metrics(logits, np.ones(3, dtype=int), 2))


def test_multiclass_auroc_leaves_out_a_class_absent_from_the_targets():
    # torchmetrics' own docstring example: it reports 0.5333, counting absent class 4 as AUROC 0.
    preds = np.array([[0.75, 0.05, 0.05, 0.05, 0.05], [0.05, 0.75, 0.05, 0.05, 0.05],
                      [0.05, 0.05, 0.75, 0.05, 0.05], [0.05, 0.05, 0.05, 0.75, 0.05]])
    got = classification_metrics(preds, np.array([0, 1, 3, 2]), 5, kind="probabilities")
    assert got["auroc"] == pytest.approx((1 + 1 + 1 / 3 + 1 / 3) / 4)
    assert got["auroc"] * 4 / 5 == pytest.approx(0.5333, abs=1e-4)
    assert "loss" not in got


def test_binary_decisions_are_at_logit_zero_not_at_half():
    logits = np.array([0.2, 0.4, -0.1, 0.7, -2.0])  # all but two in [0, 1]: torchmetrics would threshold at 0.5
    y = np.array([1, 1, 0, 1, 0])
    got = classification_metrics(logits, y, 2)
    assert got["accuracy"] == 1.0 and got["balanced_accuracy"] == 1.0 and got["auroc"] == 1.0


def test_binary_forms_agree():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 40)
    two = rng.normal(size=(40, 2))
    diff = two[:, 1] - two[:, 0]
    a = classification_metrics(two, y, 2)
    b = classification_metrics(diff, y, 2)
    c = classification_metrics(torch.from_numpy(diff[:, None]), torch.from_numpy(y), 2)
    for other in (b, c):
        assert a == pytest.approx(other, rel=1e-12)
    # probabilities: the score of class 1 ranks, the argmax decides
    shares = np.stack([1 / (1 + np.exp(diff)), 1 / (1 + np.exp(-diff))], axis=1)
    p = classification_metrics(shares, y, 2, kind="probabilities")
    assert "loss" not in p and p == pytest.approx({k: v for k, v in a.items() if k != "loss"}, rel=1e-12)


def test_probabilities_are_ranked_as_given_in_the_multiclass_case():
    rng = np.random.default_rng(12)
    shares = rng.dirichlet(np.ones(4), size=50)
    shares = np.round(shares, 1)  # ties
    y = rng.integers(0, 4, 50)
    assert_matches(classification_metrics(shares, y, 4, kind="probabilities"),
                   ref_metrics(shares, y, 4, logits=False))


@pytest.mark.parametrize("num_classes", [2, 3])
def test_loss_per_batch_is_the_mean_of_batch_means_as_eva_averages_it(num_classes):
    rng = np.random.default_rng(13)
    logits = rng.normal(size=(23, 1 if num_classes == 2 else 3)) * 3
    y = rng.integers(0, num_classes, 23)
    got = classification_metrics(logits, y, num_classes, loss_batch_size=5)
    assert got["loss"] == pytest.approx(ref_metrics(logits, y, num_classes, batch=5)["loss"], rel=1e-12)
    assert got["loss"] != pytest.approx(classification_metrics(logits, y, num_classes)["loss"], rel=1e-9)
    full = classification_metrics(logits[:20], y[:20], num_classes, loss_batch_size=5)["loss"]
    assert full == pytest.approx(classification_metrics(logits[:20], y[:20], num_classes)["loss"], rel=1e-12)


def test_run_metrics_scores_each_run():
    rng = np.random.default_rng(14)
    logits = rng.normal(size=(3, 20, 4))
    y = rng.integers(0, 4, 20)
    rows = run_metrics(logits, y, 4)
    assert len(rows) == 3 and all(rows[r] == classification_metrics(logits[r], y, 4) for r in range(3))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(PathbenchError, match=r"targets must lie in \[0, 3\)"):
        classification_metrics(np.zeros((2, 3)), [0, 3], 3)
    with pytest.raises(PathbenchError, match="expected 2 targets"):
        classification_metrics(np.zeros((2, 3)), [0], 3)
    with pytest.raises(PathbenchError, match=r"must be \(N, 3\)"):
        classification_metrics(np.zeros((2, 4)), [0, 1], 3)
    with pytest.raises(PathbenchError, match="NaN or infinite"):
        classification_metrics(np.array([[np.nan], [0.0]]), [0, 1], 2)
    with pytest.raises(PathbenchError, match="kind must be"):
        classification_metrics(np.zeros(2), [0, 1], 2, kind="margins")
    with pytest.raises(PathbenchError, match="non-empty"):
        classification_metrics(np.zeros((0, 3)), [], 3)
    with pytest.raises(PathbenchError, match=r"\(runs, N, C\)"):
        run_metrics(np.zeros((2, 3)), [0, 1], 3)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_linear_probe_logits_give_its_own_score_and_predictions(num_classes, one_torch_thread):
    rng = np.random.default_rng(15)
    means = rng.normal(size=(num_classes, 8)) * 2
    y = rng.integers(0, num_classes, 60)
    x = (means[y] + rng.normal(size=(60, 8))).astype(np.float32)
    probe = LinearProbe(num_classes, ProbeProtocol(runs=3, max_steps=60, batch_size=16, patience=5), device="cpu")
    probe.fit(x[:40], y[:40], x[40:], y[40:])
    logits = probe.predict_logits(x[40:])
    assert logits.shape == (3, 20, 1 if num_classes == 2 else num_classes) and logits.dtype == torch.float32
    decided = (logits[..., 0] > 0).long() if num_classes == 2 else logits.argmax(-1)
    assert torch.equal(decided, probe.predict(x[40:]))
    rows = run_metrics(logits, y[40:], num_classes)
    np.testing.assert_allclose([r["balanced_accuracy"] for r in rows], probe.score(x[40:], y[40:]), rtol=1e-12)
