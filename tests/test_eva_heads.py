"""The linear probe's moving parts, checked against torch, scikit-learn and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, recall_score

from pathbench.errors import PathbenchError
from pathbench.heads import (
    BatchedEarlyStopping,
    LinearProbe,
    ProbeProtocol,
    epoch_learning_rate,
    epoch_permutation,
    init_linear,
    macro_accuracy,
    macro_accuracy_batched,
    protocol_adamw,
    summarise_runs,
)


def blobs(n: int, dim: int, classes: int, seed: int, noise: float = 2.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = (centres[y] + noise * rng.normal(size=(n, dim))).astype(np.float32)
    return x, y


# ---------------------------------------------------------------------------- schedule


def test_learning_rate_is_a_third_for_five_epochs_then_full_exactly_as_torch_constant_lr():
    protocol = ProbeProtocol()
    layer = torch.nn.Linear(3, 2)
    optimiser = torch.optim.AdamW(layer.parameters(), lr=protocol.lr)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimiser, factor=1 / 3, total_iters=5)
    for epoch in range(12):
        assert epoch_learning_rate(protocol, epoch) == optimiser.param_groups[0]["lr"]
        optimiser.step()
        scheduler.step()
    assert epoch_learning_rate(protocol, 0) == pytest.approx(1e-4)
    assert epoch_learning_rate(protocol, 4) == pytest.approx(1e-4)
    assert epoch_learning_rate(protocol, 5) == pytest.approx(3e-4)
    assert epoch_learning_rate(protocol, 1000) == pytest.approx(3e-4)


def test_probe_steps_torch_adamw_at_the_reduced_rate_in_the_first_five_epochs_only(monkeypatch):
    # One item, batch 1: each epoch is one step, so step s runs in epoch s - 1.
    protocol = ProbeProtocol(runs=1, patience=100, max_steps=8, batch_size=1)
    seen = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        group = self.param_groups[0]
        state = self.state[group["params"][0]]
        seen.append((int(state["step"]), group["lr"], group["weight_decay"], group["betas"], group["eps"]))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    LinearProbe(3, protocol, device="cpu").fit(np.ones((1, 4)), [1], np.ones((1, 4)), [1])
    assert [s[0] for s in seen] == list(range(1, 9))
    assert [s[1] for s in seen] == [epoch_learning_rate(protocol, e) for e in range(8)]
    assert seen[4][1] < seen[5][1]
    assert {s[2:] for s in seen} == {(protocol.weight_decay, protocol.betas, protocol.eps)}


def test_protocol_adamw_on_a_stack_updates_each_run_as_if_it_were_alone():
    torch.manual_seed(0)
    stack = torch.randn(3, 4, 5)
    alone = [stack[r : r + 1].clone() for r in range(3)]
    optimiser = protocol_adamw(stack, ProbeProtocol())
    optimisers = [protocol_adamw(a, ProbeProtocol()) for a in alone]
    for _ in range(30):
        grad = torch.randn(3, 4, 5)
        stack.grad = grad
        optimiser.step()
        for r in range(3):
            alone[r].grad = grad[r : r + 1].clone()
            optimisers[r].step()
    for r in range(3):
        assert torch.allclose(stack[r : r + 1], alone[r], atol=1e-7, rtol=0)


def test_runs_that_stop_take_their_optimiser_state_with_them():
    from pathbench.heads.linear import _keep_runs

    protocol = ProbeProtocol()
    torch.manual_seed(1)
    stack = torch.randn(4, 2, 3)
    optimiser = protocol_adamw(stack, protocol)
    grads = torch.randn(6, 4, 2, 3)
    for g in grads[:3]:
        stack.grad = g
        optimiser.step()
    optimiser.param_groups[0]["lr"] = 1e-3
    keep = torch.tensor([0, 2])
    reference = stack[keep].clone()
    reference_optimiser = torch.optim.AdamW([reference], lr=1e-3, foreach=False)
    for key in ("exp_avg", "exp_avg_sq"):
        reference_optimiser.state[reference][key] = optimiser.state[stack][key][keep].clone()
    reference_optimiser.state[reference]["step"] = optimiser.state[stack]["step"].clone()
    optimiser, kept = _keep_runs(optimiser, stack, keep, protocol)
    assert optimiser.param_groups[0]["lr"] == 1e-3 and int(optimiser.state[kept]["step"]) == 3
    for g in grads[3:]:
        kept.grad, reference.grad = g[keep], g[keep].clone()
        optimiser.step()
        reference_optimiser.step()
    assert torch.allclose(kept, reference, atol=1e-7, rtol=0)


@pytest.mark.parametrize(("n", "batch_size"), [(23, 5), (1, 256), (300, 256), (512, 256)])
def test_epoch_permutation_is_what_the_installed_torch_dataloader_draws(n, batch_size):
    # If a torch release changes how many numbers a DataLoader iterator or RandomSampler draws
    # from its generator, this breaks (the orders, or the generator states after an epoch, differ).
    loader_generator = torch.Generator().manual_seed(7)
    data = torch.utils.data.TensorDataset(torch.arange(n))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=loader_generator)
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)
    mine = torch.Generator().manual_seed(7)
    for _ in range(3):
        order = torch.cat([batch for (batch,) in loader])
        assert torch.equal(order, epoch_permutation(mine, n))
        assert torch.equal(mine.get_state(), loader_generator.get_state())


def test_initial_head_is_torch_linear_after_manual_seed():
    weight, bias = init_linear(6, 3, seed=11)
    torch.manual_seed(11)
    layer = torch.nn.Linear(6, 3)
    assert torch.equal(weight, layer.weight.detach()) and torch.equal(bias, layer.bias.detach())


# ---------------------------------------------------------------------------- early stopping


def test_early_stopping_counts_epochs_without_strict_improvement():
    stopper = BatchedEarlyStopping(runs=2, patience=3)
    # run 0: 0.5, 0.6, 0.6 (tie: no improvement), 0.55, 0.6 -> stops after 3 non-improvements
    # run 1: keeps improving
    history = [(0.5, 0.1), (0.6, 0.2), (0.6, 0.3), (0.55, 0.4), (0.6, 0.5)]
    improved_log, stop_log = [], []
    for s0, s1 in history:
        improved, stop = stopper.update([0, 1], [s0, s1])
        improved_log.append(improved.tolist())
        stop_log.append(stop.tolist())
    assert [i[0] for i in improved_log] == [True, True, False, False, False]
    assert [s[0] for s in stop_log] == [False, False, False, False, True]
    assert all(i[1] for i in improved_log) and not any(s[1] for s in stop_log)
    assert stopper.best.tolist() == [0.6, 0.5]


def test_best_checkpoint_is_the_first_epoch_reaching_the_best_validation_score():
    x, y = blobs(300, 8, 3, seed=0)
    vx, vy = blobs(90, 8, 3, seed=1)
    probe = LinearProbe(3, ProbeProtocol(runs=3, patience=6, max_steps=400, batch_size=64), device="cpu")
    probe.fit(x, y, vx, vy)
    for run in range(3):
        records = [(epoch, step, scores[run]) for epoch, step, scores in probe.history_ if run in scores]
        best = max(score for _, _, score in records)
        first_epoch, first_step, _ = next(r for r in records if r[2] == best)
        assert probe.best_epoch_[run] == first_epoch
        assert probe.best_step_[run] == first_step
        assert probe.best_val_score_[run] == best
        # the evaluated weights are that checkpoint's: they reproduce its validation score
        assert probe.score(vx, vy)[run] == pytest.approx(best, abs=1e-12)
        # stopped exactly `patience` validations after the best one, or at max_steps
        last_epoch = records[-1][0]
        assert last_epoch - first_epoch == 6 or probe.stop_step_[run] == 400


def test_an_epoch_cut_short_by_max_steps_is_not_validated():
    x, y = blobs(100, 4, 2, seed=0)  # batch 32 -> 4 steps per epoch
    probe = LinearProbe(2, ProbeProtocol(runs=2, patience=100, max_steps=10, batch_size=32), device="cpu")
    probe.fit(x, y, x, y)
    assert [step for _, step, _ in probe.history_] == [4, 8]
    assert probe.stop_step_.tolist() == [10, 10]
    assert set(probe.best_step_.tolist()) <= {4, 8}


# ---------------------------------------------------------------------------- metrics


def slow_macro_accuracy(y_true, y_pred):
    recalls = []
    for c in sorted(set(y_true.tolist())):
        members = [i for i in range(len(y_true)) if y_true[i] == c]
        recalls.append(sum(1 for i in members if y_pred[i] == c) / len(members))
    return sum(recalls) / len(recalls)


@pytest.mark.parametrize("classes", [2, 4, 9])
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_macro_and_balanced_accuracy_match_scikit_learn(classes):
    rng = np.random.default_rng(classes)
    for trial in range(20):
        n = int(rng.integers(1, 60))
        y_true = rng.integers(0, classes, n)
        y_pred = rng.integers(0, classes, n) if trial % 3 else np.full(n, y_true[0])  # constant predictions too
        expected = balanced_accuracy_score(y_true, y_pred)
        assert macro_accuracy(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
        assert macro_accuracy(y_true, y_pred) == pytest.approx(slow_macro_accuracy(y_true, y_pred), abs=1e-12)
        present = np.unique(y_true)
        assert macro_accuracy(y_true, y_pred) == pytest.approx(
            recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0), abs=1e-12)
        batched = macro_accuracy_batched(torch.as_tensor(np.stack([y_pred, y_true])), torch.as_tensor(y_true), classes)
        assert batched[0].item() == pytest.approx(expected, abs=1e-12)
        assert batched[1].item() == 1.0


def test_binary_balanced_accuracy_by_hand():
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 0])
    # specificity 3/4, sensitivity 1/2
    assert macro_accuracy(y_true, y_pred) == pytest.approx((0.75 + 0.5) / 2)


def test_run_summary_is_mean_and_sample_std():
    mean, std = summarise_runs([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert std == pytest.approx(0.1)
    assert summarise_runs([0.5]) == (0.5, 0.0)


# ---------------------------------------------------------------------------- batched == sequential


@pytest.mark.parametrize("classes", [2, 5])
def test_batched_runs_equal_the_same_runs_trained_one_after_another(classes):
    x, y = blobs(600, 32, classes, seed=2)
    vx, vy = blobs(150, 32, classes, seed=3)
    protocol = ProbeProtocol(runs=4, patience=4, max_steps=300, batch_size=128, seed=5)
    batched = LinearProbe(classes, protocol, device="cpu").fit(x, y, vx, vy)
    batched_scores = batched.score(vx, vy)
    for run in range(4):
        alone_protocol = ProbeProtocol(runs=1, patience=4, max_steps=300, batch_size=128, seed=5 + run)
        alone = LinearProbe(classes, alone_protocol, device="cpu").fit(x, y, vx, vy)
        assert alone.best_step_[0] == batched.best_step_[run]
        assert alone.stop_step_[0] == batched.stop_step_[run]
        assert torch.allclose(alone.weight_[0], batched.weight_[run], atol=1e-6, rtol=0)
        assert torch.allclose(alone.bias_[0], batched.bias_[run], atol=1e-6, rtol=0)
        assert alone.score(vx, vy)[0] == pytest.approx(batched_scores[run], abs=1e-6)
    # runs really differ from each other (own initialisation and shuffling)
    assert len({tuple(batched.weight_[r].flatten()[:4].tolist()) for r in range(4)}) == 4


def plain_torch_run(x, y, vx, vy, classes, protocol, seed):
    """One run the ordinary way: nn.Linear, torch AdamW, ConstantLR, a shuffling DataLoader."""
    torch.manual_seed(seed)
    binary = classes == 2
    head = torch.nn.Linear(x.shape[1], 1 if binary else classes)
    optimiser = torch.optim.AdamW(head.parameters(), lr=protocol.lr, foreach=False)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimiser, factor=1 / 3, total_iters=5)
    data = torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    loader = torch.utils.data.DataLoader(data, batch_size=protocol.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    step, best, wait, best_state, best_step = 0, -np.inf, 0, None, -1
    steps_per_epoch = len(loader)
    while step < protocol.max_steps:
        batches = 0
        for batch_x, batch_y in loader:
            batches += 1
            logits = head(batch_x)
            if binary:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], batch_y.float())
            else:
                loss = torch.nn.functional.cross_entropy(logits, batch_y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            if step >= protocol.max_steps:
                break
        if batches < steps_per_epoch:
            break  # epoch cut short by max_steps: no validation
        with torch.no_grad():
            out = head(torch.as_tensor(vx))
            pred = (out[:, 0] > 0).long() if binary else out.argmax(1)
        score = macro_accuracy(vy, pred.numpy())
        if score > best:
            best, wait, best_step = score, 0, step
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            wait += 1
            if wait >= protocol.patience:
                break
        scheduler.step()
    return best_state, best_step


@pytest.fixture
def one_thread():
    # tiny per-step work: thread hand-offs on a busy 2-core machine cost more than the maths
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("classes", [2, 4])
def test_batched_probe_matches_a_plain_pytorch_training_loop(classes, one_thread):
    x, y = blobs(500, 16, classes, seed=4)
    vx, vy = blobs(120, 16, classes, seed=5)
    protocol = ProbeProtocol(runs=3, patience=5, max_steps=200, batch_size=64, seed=9)
    probe = LinearProbe(classes, protocol, device="cpu").fit(x, y, vx, vy)
    for run in range(3):
        state, best_step = plain_torch_run(x, y, vx, vy, classes, protocol, seed=9 + run)
        assert best_step == probe.best_step_[run]
        assert torch.allclose(state["weight"], probe.weight_[run], atol=1e-5, rtol=0)
        assert torch.allclose(state["bias"], probe.bias_[run], atol=1e-5, rtol=0)


def test_probe_learns_separable_classes():
    x, y = blobs(800, 16, 4, seed=6, noise=0.5)
    vx, vy = blobs(200, 16, 4, seed=7, noise=0.5)
    probe = LinearProbe(4, ProbeProtocol(runs=2, patience=5, max_steps=500), device="cpu").fit(x, y, vx, vy)
    assert probe.score(vx, vy).min() > 0.9


def test_probe_refuses_bad_inputs_with_clear_errors():
    probe = LinearProbe(3, ProbeProtocol(runs=1, max_steps=5), device="cpu")
    with pytest.raises(PathbenchError, match="labels must lie in"):
        probe.fit(np.zeros((4, 2)), [0, 1, 2, 3], np.zeros((2, 2)), [0, 1])
    with pytest.raises(PathbenchError, match="dimensions"):
        probe.fit(np.zeros((4, 2)), [0, 1, 2, 0], np.zeros((2, 3)), [0, 1])
    with pytest.raises(PathbenchError, match="NaN"):
        probe.fit(np.full((4, 2), np.nan), [0, 1, 2, 0], np.zeros((2, 2)), [0, 1])
    with pytest.raises(PathbenchError, match="not fitted"):
        probe.predict(np.zeros((2, 2)))
