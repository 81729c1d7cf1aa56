"""eva's ABMIL head: the network against a hand computation, padding, batched runs against plain runs, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from pathbench.errors import PathbenchError
from pathbench.heads.abmil import (
    ABMIL,
    AbmilHead,
    AbmilProtocol,
    abmil_forward,
    init_abmil_params,
    pad_bags,
    train_abmil,
)
from pathbench.heads.metrics import (
    binary_balanced_accuracy,
    binary_predictions,
    eva_scores_batched,
    multiclass_macro_accuracy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------
# Slow references


def slow_binary_balanced_accuracy(y_true, y_pred) -> float:
    tp = fn = tn = fp = 0
    for t, p in zip(y_true, y_pred, strict=True):
        if t == 1:
            tp, fn = tp + (p == 1), fn + (p != 1)
        else:
            tn, fp = tn + (p == 0), fp + (p != 0)
    sensitivity = tp / (tp + fn) if tp + fn > 0 else 0.0
    specificity = tn / (tn + fp) if tn + fp > 0 else 0.0
    return (sensitivity + specificity) / 2


def slow_macro_accuracy(y_true, y_pred, num_classes) -> float:
    recalls = []
    for c in range(num_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        if tp + fn + fp == 0:
            continue  # a class never seen nor predicted does not count
        recalls.append(tp / (tp + fn) if tp + fn > 0 else 0.0)
    return sum(recalls) / len(recalls)


def hand_abmil(model: ABMIL, bag: np.ndarray) -> np.ndarray:
    """One bag ``(N, D)`` (rows of -inf are padding) through ABMIL written with numpy, in float64."""
    w = {name: (weight.detach().double().numpy(), bias.detach().double().numpy())
         for name, (weight, bias) in model.stacked_parameters().items()}
    rows = bag[~np.all(np.isneginf(bag), axis=1)].astype(np.float64)
    h = rows @ w["projector"][0].T + w["projector"][1]
    a = np.tanh(h @ w["attention_a"][0].T + w["attention_a"][1])
    g = 1 / (1 + np.exp(-(h @ w["attention_b"][0].T + w["attention_b"][1])))
    scores = ((a * g) @ w["attention_c"][0].T + w["attention_c"][1])[:, 0]
    attention = np.exp(scores - scores.max())
    attention /= attention.sum()
    z = attention @ h
    z = np.maximum(z @ w["mlp_0"][0].T + w["mlp_0"][1], 0)
    z = np.maximum(z @ w["mlp_1"][0].T + w["mlp_1"][1], 0)
    return z @ w["mlp_2"][0].T + w["mlp_2"][1]


def sequential_run(train, val, num_classes, protocol, seed, pad_to):
    """One run written the plain PyTorch way (eva's HeadModule with its defaults)."""
    binary = num_classes == 2
    torch.manual_seed(seed)
    dim = train[0][0].shape[1]
    model = ABMIL(dim, 1 if binary else num_classes)
    optimiser = torch.optim.AdamW(model.parameters(), lr=protocol.lr, betas=protocol.betas)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimiser)  # torch defaults: factor 1/3, 5 epochs

    def padded(bags):
        out = torch.full((len(bags), pad_to, dim), float("-inf"))
        for i, b in enumerate(bags):
            out[i, : len(b)] = torch.as_tensor(b)
        return out

    x, y = padded(train[0]), torch.as_tensor(train[1])
    vx, vy = padded(val[0]), np.asarray(val[1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=protocol.batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(seed))
    criterion = torch.nn.BCEWithLogitsLoss() if binary else torch.nn.CrossEntropyLoss()
    best, wait, best_epoch, best_state, epoch = -np.inf, 0, -1, None, 0
    for epoch in range(protocol.max_epochs):  # noqa: B007
        for xb, yb in loader:
            out = model(xb)
            loss = criterion(out[:, 0], yb.float()) if binary else criterion(out, yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            logits = torch.cat([model(vx[i : i + 32]) for i in range(0, len(vx), 32)])
        if binary:
            score = binary_balanced_accuracy(vy, binary_predictions(logits[:, 0]).numpy())
        else:
            score = multiclass_macro_accuracy(vy, logits.argmax(1).numpy(), num_classes)
        if score > best:
            best, wait, best_epoch = score, 0, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            wait += 1
            if wait >= protocol.patience:
                break
        scheduler.step()
    model.load_state_dict(best_state)
    return best, best_epoch, epoch + 1, model


def toy_bags(n: int, num_classes: int, dim: int, rng: np.random.Generator, max_patches: int = 12):
    """Bags whose label sets the share of patches with a shifted first feature."""
    bags, targets = [], []
    for i in range(n):
        y = i % num_classes
        k = int(rng.integers(2, max_patches + 1))
        bag = rng.normal(size=(k, dim)).astype(np.float32)
        bag[rng.random(k) < 0.1 + 0.8 * y / (num_classes - 1), 0] += 3.0
        bags.append(bag)
        targets.append(y)
    return bags, targets


# --------------------------------------------------------------------------------------
# The network


def test_abmil_matches_a_hand_computation_and_ignores_minus_inf_rows():
    torch.manual_seed(3)
    model = ABMIL(5, 3, projected_size=4, attention_size=6, mlp_sizes=(7, 2))
    rng = np.random.default_rng(0)
    bag = rng.normal(size=(6, 5)).astype(np.float32)
    bag[[2, 5]] = -np.inf  # padding rows, even in the middle
    with torch.no_grad():
        out = model(torch.as_tensor(bag)[None])[0].double().numpy()
    np.testing.assert_allclose(out, hand_abmil(model, bag), rtol=1e-5, atol=1e-6)


def test_batched_forward_equals_the_module_for_every_run():
    rng = np.random.default_rng(1)
    params = init_abmil_params(8, 2, seeds=[0, 1, 2])
    bags = torch.as_tensor(rng.normal(size=(3, 4, 5, 8)).astype(np.float32))
    padding = torch.zeros(3, 4, 5, dtype=torch.bool)
    padding[:, 1, 3:] = True
    padding[2, 0, 1:] = True
    with torch.no_grad():
        batched = abmil_forward(params, bags.masked_fill(padding[..., None], 0), padding)
        for r in range(3):
            torch.manual_seed(r)
            model = ABMIL(8, 2)
            single = model(bags[r].masked_fill(padding[r][..., None], float("-inf")))
            torch.testing.assert_close(batched[r], single, rtol=1e-5, atol=1e-6)


def test_init_params_are_the_modules_built_after_manual_seed_and_restore_the_rng():
    state = torch.random.get_rng_state()
    params = init_abmil_params(6, 1, seeds=[7, 11])
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(11)
    model = ABMIL(6, 1)
    flat = [t for pair in model.stacked_parameters().values() for t in pair]
    assert len(params) == 14
    for stacked, single in zip(params, flat, strict=True):
        assert torch.equal(stacked[1], single.detach())


def test_padding_never_changes_a_prediction():
    rng = np.random.default_rng(2)
    torch.manual_seed(0)
    model = ABMIL(8, 6)
    bags = [rng.normal(size=(k, 8)).astype(np.float32) for k in (1, 4, 9)]
    with torch.no_grad():
        alone = torch.stack([model(torch.as_tensor(b)[None])[0] for b in bags])
        for pad_to in (9, 20, 200):
            padded = torch.full((3, pad_to, 8), float("-inf"))
            for i, b in enumerate(bags):
                padded[i, : len(b)] = torch.as_tensor(b)
            torch.testing.assert_close(model(padded), alone, rtol=1e-5, atol=1e-6)
            assert torch.equal(model(padded).argmax(1), alone.argmax(1))
    # the padded tensors pad_bags builds (zeros + a mask) give the same logits
    stacked = pad_bags(bags, [0, 1, 2])
    params = [t.unsqueeze(0) for pair in model.stacked_parameters().values() for t in pair]
    with torch.no_grad():
        functional = abmil_forward(params, stacked.embeddings, stacked.padding)[0]
    torch.testing.assert_close(functional, alone, rtol=1e-5, atol=1e-6)


def test_pad_bags_refuses_empty_bags_mixed_dims_and_bad_targets():
    good = np.ones((2, 4), np.float32)
    with pytest.raises(PathbenchError, match="no patches"):
        pad_bags([good, np.zeros((0, 4), np.float32)], [0, 1])
    with pytest.raises(PathbenchError, match="one D"):
        pad_bags([good, np.ones((2, 5), np.float32)], [0, 1])
    with pytest.raises(PathbenchError, match=r"\[0, 2\)"):
        pad_bags([good], [3], num_classes=2)
    with pytest.raises(PathbenchError, match="NaN"):
        pad_bags([np.full((1, 4), np.nan, np.float32)], [0])


# --------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("num_classes", [2, 6])
def test_batched_runs_equal_plain_sequential_runs(num_classes):
    rng = np.random.default_rng(10 + num_classes)
    train, val = toy_bags(40, num_classes, 6, rng), toy_bags(36, num_classes, 6, rng)
    protocol = AbmilProtocol(runs=3, max_epochs=9, patience=3, batch_size=16, seed=5)
    head = AbmilHead(num_classes, protocol, device="cpu", runs_together=3).fit(*train, *val)
    val_scores = head.score(*val)
    for r in range(protocol.runs):
        best, best_epoch, stopped, model = sequential_run(train, val, num_classes, protocol, protocol.seed + r, 12)
        assert head.best_epoch_[r] == best_epoch
        assert head.stop_epoch_[r] == stopped
        assert head.best_val_score_[r] == pytest.approx(best, abs=1e-12)
        assert val_scores[r] == pytest.approx(best, abs=1e-12)
        flat = [t.detach() for pair in model.stacked_parameters().values() for t in pair]
        for i, (stacked, single) in enumerate(zip(head.params_, flat, strict=True)):
            if i == 7:
                # attention_c's bias shifts every attention logit alike, which softmax ignores: its
                # gradient is 0 up to rounding, and Adam turns that rounding noise into lr-sized
                # steps. It never changes an output, so only its effect is compared (below).
                continue
            torch.testing.assert_close(stacked[r], single, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            plain = torch.cat([model(torch.as_tensor(b)[None]) for b in val[0]])
        torch.testing.assert_close(head.predict_logits(val[0])[r], plain, rtol=1e-4, atol=1e-5)


def test_train_abmil_learns_a_learnable_task_and_reports_rows_per_run():
    rng = np.random.default_rng(4)
    train, val, test = (toy_bags(n, 2, 6, rng, max_patches=20) for n in (60, 30, 30))
    rows = train_abmil(train, val, test, num_classes=2, task="toy",
                       protocol=AbmilProtocol(runs=2, max_epochs=40, patience=10, batch_size=16), device="cpu")
    assert [r["run"] for r in rows] == [0, 1]
    assert {r["split"] for r in rows} == {"test"} and {r["metric"] for r in rows} == {"balanced_accuracy"}
    assert all(r["value"] > 0.7 for r in rows), rows
    assert all(0 <= r["best_epoch"] < r["stop_epoch"] <= 40 for r in rows)


def test_runs_trained_together_or_one_at_a_time_give_the_same_result():
    rng = np.random.default_rng(6)
    train, val = toy_bags(20, 2, 4, rng), toy_bags(10, 2, 4, rng)
    protocol = AbmilProtocol(runs=3, max_epochs=4, patience=2, batch_size=8)
    together = AbmilHead(2, protocol, device="cpu", runs_together=3).fit(*train, *val)
    grouped = AbmilHead(2, protocol, device="cpu", runs_together=1).fit(*train, *val)
    budgeted = AbmilHead(2, protocol, device="cpu", runs_together=None, memory_budget_gb=1e-9)
    assert budgeted._group_size(pad_bags(*train), torch.device("cuda")) == 1
    assert AbmilHead(2, protocol)._group_size(pad_bags(*train), torch.device("cuda")) == 3
    assert AbmilHead(2, protocol)._group_size(pad_bags(*train), torch.device("cpu")) == 1
    for i, (a, b) in enumerate(zip(together.params_, grouped.params_, strict=True)):
        if i != 7:  # attention_c's bias has no effect (see test_batched_runs_equal_plain_sequential_runs)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(together.best_epoch_, grouped.best_epoch_)
    torch.testing.assert_close(together.predict_logits(val[0]), grouped.predict_logits(val[0]), rtol=1e-4, atol=1e-5)


def test_unfitted_head_and_bad_protocol_are_clear_errors():
    with pytest.raises(PathbenchError, match="not fitted"):
        AbmilHead(2).score([np.ones((1, 3), np.float32)], [0])
    with pytest.raises(PathbenchError, match="runs"):
        AbmilProtocol(runs=0)
    with pytest.raises(PathbenchError, match="2 classes"):
        AbmilHead(1)
    with pytest.raises(PathbenchError, match="runs_together"):
        AbmilHead(2, runs_together=0)


# --------------------------------------------------------------------------------------
# Metrics


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_binary_balanced_accuracy_matches_the_slow_reference_and_sklearn():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 12))
        y_true = rng.integers(0, 2, n)
        y_pred = rng.integers(0, 2, n) if trial % 3 else y_true.copy()
        expected = slow_binary_balanced_accuracy(y_true, y_pred)
        assert binary_balanced_accuracy(y_true, y_pred) == pytest.approx(expected)
        if len(np.unique(y_true)) == 2:
            assert expected == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    # a split with only negatives: sensitivity counts as 0 (torchmetrics' safe division), not skipped
    assert binary_balanced_accuracy([0, 0, 0], [0, 0, 1]) == pytest.approx(1 / 3)
    assert binary_balanced_accuracy([1, 1], [1, 1]) == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_macro_accuracy_matches_the_slow_reference_and_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(300):
        c = int(rng.integers(2, 7))
        n = int(rng.integers(1, 15))
        y_true = rng.integers(0, c, n)
        y_pred = rng.integers(0, c, n)
        expected = slow_macro_accuracy(y_true, y_pred, c)
        assert multiclass_macro_accuracy(y_true, y_pred, c) == pytest.approx(expected)
        if set(y_pred) <= set(y_true):  # no prediction of an absent class: sklearn agrees
            assert expected == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    # a predicted class absent from the targets counts with recall 0; a class never seen nor predicted does not
    assert multiclass_macro_accuracy([0, 0, 1], [0, 2, 1], 6) == pytest.approx((0.5 + 1 + 0) / 3)


def test_binary_predictions_take_the_sigmoid_only_for_batches_outside_0_1():
    logits = torch.tensor([0.2, 0.7, 0.9, -0.3, 0.4, 1.5])
    # batch 1 (0.2, 0.7, 0.9) lies in [0, 1]: read as probabilities -> thresholded at 0.5
    # batch 2 (-0.3, 0.4, 1.5) does not: sigmoid first -> positive logits are class 1
    assert binary_predictions(logits, batch_size=3).tolist() == [0, 1, 1, 0, 1, 1]
    assert binary_predictions(logits, batch_size=6).tolist() == [1, 1, 1, 0, 1, 1]
    # float32 sigmoid of a tiny positive logit is exactly 0.5: not above the threshold
    assert binary_predictions(torch.tensor([1e-9, -2.0])).tolist() == [0, 0]
    assert binary_predictions(torch.tensor([[0.6, 2.0], [0.6, 0.7]]), batch_size=2).tolist() == [[1, 1], [1, 1]]


def test_batched_scores_equal_the_numpy_metrics_with_ties():
    rng = np.random.default_rng(2)
    for num_classes in (2, 3, 6):
        for _ in range(30):
            n = int(rng.integers(1, 70))
            targets = rng.integers(0, num_classes, n)
            width = 1 if num_classes == 2 else num_classes
            logits = torch.as_tensor(rng.integers(-2, 3, size=(4, n, width)).astype(np.float32) / 2)  # many ties
            scores = eva_scores_batched(logits, torch.as_tensor(targets), num_classes)
            for r in range(4):
                if num_classes == 2:
                    expected = binary_balanced_accuracy(targets, binary_predictions(logits[r, :, 0]).numpy())
                else:
                    preds = [int(np.argmax(row)) for row in logits[r].numpy()]  # numpy argmax: first maximum
                    expected = slow_macro_accuracy(targets, preds, num_classes)
                assert scores[r] == pytest.approx(expected)
