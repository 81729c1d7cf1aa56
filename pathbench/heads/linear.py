"""Trainable heads on frozen embeddings, and the pieces of a training protocol they share.

The linear probe here is eva's patch-classification protocol (kaiko eva, offline configs):

- head ``Linear(D, C)``; ``C = 1`` with BCE-with-logits for binary tasks, else cross-entropy;
- AdamW(lr=3e-4), torch's defaults otherwise (betas 0.9/0.999, eps 1e-8, weight decay 0.01);
- the learning rate is ``lr / 3`` for the first 5 epochs, then ``lr`` (torch ``ConstantLR``
  stepped once per epoch, as Lightning steps epoch-interval schedulers);
- batch 256 over shuffled training embeddings, at most 12,500 optimiser steps;
- validation at the end of every complete epoch (a run cut short by ``max_steps`` in the
  middle of an epoch is not validated again, as in Lightning);
- early stopping on the validation metric with a patience counted in epochs (a strict
  improvement resets the count, ``min_delta = 0``) and the best-validation checkpoint
  (the first epoch reaching the best score) is the one evaluated;
- several independent runs (own initialisation, own shuffling, own early stopping).

Speed: the R runs train together as one batched computation. Their heads live in one
``(R, C, D + 1)`` tensor (the bias is the last column, the embeddings get a column of
ones), each step gathers an ``(R, B, D + 1)`` batch with every run's own permutation,
computes the logits with one ``bmm`` and the gradient of the loss in closed form, and one
``torch.optim.AdamW`` step updates the whole stack: AdamW is element-wise, so each run gets
the update it would get alone. Runs that stop early leave the batch (their rows leave the
parameter and the optimiser state). Each run computes what it would compute alone
(``runs=1, seed=seed + r``) and what a plain PyTorch loop computes, which the tests check.

The design leaves room for other heads (an ABMIL slide head, a segmentation decoder): they
reuse :class:`ProbeProtocol`, :func:`protocol_adamw`, :func:`epoch_learning_rate`, :class:`BatchedEarlyStopping`,
:func:`macro_accuracy` and the :class:`Head` interface (``fit`` on train/val, ``predict``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from pathbench.errors import PathbenchError

__all__ = [
    "ProbeProtocol",
    "Head",
    "LinearProbe",
    "BatchedEarlyStopping",
    "epoch_learning_rate",
    "epoch_permutation",
    "macro_accuracy",
    "macro_accuracy_batched",
    "protocol_adamw",
    "init_linear",
    "summarise_runs",
]


@dataclasses.dataclass(frozen=True)
class ProbeProtocol:
    """Hyper-parameters of a head-training protocol (eva's patch classification by default).

    Attributes:
        lr: base learning rate of AdamW.
        weight_decay: decoupled weight decay (torch's AdamW default, 0.01).
        betas, eps: AdamW moments and epsilon (torch defaults).
        warmup_factor: the learning rate is ``lr * warmup_factor`` during the first
            ``warmup_epochs`` epochs (torch ``ConstantLR``).
        warmup_epochs: number of epochs at the reduced learning rate.
        batch_size: training batch size (the last batch of an epoch may be smaller).
        max_steps: hard limit on optimiser steps.
        patience: early-stopping patience in validation epochs.
        runs: number of independent runs.
        seed: run ``r`` uses seed ``seed + r`` for its initialisation and its shuffling.
    """

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_factor: float = 1.0 / 3.0
    warmup_epochs: int = 5
    batch_size: int = 256
    max_steps: int = 12_500
    patience: int = 10
    runs: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "patience", "runs"):
            if int(getattr(self, name)) < 1:
                raise PathbenchError(f"{name} must be at least 1, got {getattr(self, name)}.")


class Head(Protocol):
    """What every trainable head offers a benchmark (linear probe, ABMIL, decoders)."""

    def fit(self, train_x, train_y, val_x, val_y) -> Head: ...

    def predict(self, x) -> torch.Tensor: ...


# --------------------------------------------------------------------------------------
# Protocol pieces


def epoch_learning_rate(protocol: ProbeProtocol, epoch: int) -> float:
    """Learning rate used during ``epoch`` (0-based), exactly as torch's ``ConstantLR`` gives it.

    ``ConstantLR`` multiplies the base rate by ``factor`` at construction and divides it
    back by the same factor once ``total_iters`` epochs have passed; the value is
    reproduced with the same floating-point operations, so it equals what torch sets.
    """
    warm = protocol.lr * protocol.warmup_factor
    if epoch < protocol.warmup_epochs:
        return warm
    return warm * (1.0 / protocol.warmup_factor)


def epoch_permutation(generator: torch.Generator, n: int) -> torch.Tensor:
    """Order of the training items for one epoch, as ``DataLoader(shuffle=True, generator=g)``.

    A DataLoader iterator first draws its worker base seed from the generator, then its
    ``RandomSampler`` draws ``torch.randperm(n)`` for the epoch and, when it is exhausted,
    one more (empty-sliced) ``randperm(n)``; doing the same draws here makes a plain
    DataLoader loop with the same generator see exactly the same batches, epoch after
    epoch (checked by the tests against the installed torch).

    Returns:
        ``(n,)`` int64 permutation on the CPU.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)
    return order


class BatchedEarlyStopping:
    """Early stopping for R runs at once (Lightning ``EarlyStopping(mode="max", min_delta=0)``).

    A score improves when it is strictly greater than the best so far; otherwise the wait
    count grows, and a run stops once it has waited ``patience`` validations. The best
    checkpoint is taken at every strict improvement (Lightning ``ModelCheckpoint`` with
    ``save_top_k=1``), so it is the first epoch that reached the best score.
    """

    def __init__(self, runs: int, patience: int) -> None:
        self.patience = int(patience)
        self.best = np.full(runs, -np.inf)
        self.wait = np.zeros(runs, dtype=np.int64)
        self.stopped = np.zeros(runs, dtype=bool)

    def update(self, run_ids: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Record one validation of the runs ``run_ids``.

        Returns:
            ``(improved, stop)``: boolean arrays aligned with ``run_ids``.
        """
        run_ids = np.asarray(run_ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        improved = scores > self.best[run_ids]
        self.best[run_ids] = np.where(improved, scores, self.best[run_ids])
        self.wait[run_ids] = np.where(improved, 0, self.wait[run_ids] + 1)
        stop = self.wait[run_ids] >= self.patience
        self.stopped[run_ids] |= stop
        return improved, stop


def macro_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of the per-class recall.

    This is balanced accuracy for a binary task (mean of sensitivity and specificity) and
    macro-averaged accuracy for a multiclass task; it equals
    ``sklearn.metrics.balanced_accuracy_score``.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.size == 0:
        raise PathbenchError("cannot compute an accuracy on an empty split.")
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def macro_accuracy_batched(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """:func:`macro_accuracy` of R runs at once, on any device.

    Args:
        preds: ``(R, N)`` int64 predicted classes.
        targets: ``(N,)`` int64 true classes in ``[0, num_classes)``.
        num_classes: number of classes.

    Returns:
        ``(R,)`` float64 scores.
    """
    runs = preds.shape[0]
    support = torch.bincount(targets, minlength=num_classes).to(torch.float64)  # (C,)
    hits = (preds == targets.unsqueeze(0)).to(torch.float64)  # (R, N)
    correct = torch.zeros(runs, num_classes, dtype=torch.float64, device=preds.device)
    correct.scatter_add_(1, targets.unsqueeze(0).expand(runs, -1), hits)
    present = support > 0
    recall = correct[:, present] / support[present]
    return recall.mean(dim=1)


def protocol_adamw(param: torch.Tensor, protocol: ProbeProtocol) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over one stacked parameter with the protocol's hyper-parameters.

    The fused implementation is used on CPU and CUDA: with a single parameter tensor the
    multi-tensor (foreach) path has nothing to batch, and the fused kernel is the fastest of
    the three (``benchmarks/eva_linear_probe.py --optimiser-only`` prints the timings).

    Args:
        param: a leaf tensor, for example the ``(R, C, D + 1)`` stack of R runs' heads.
    """
    fused = param.device.type in ("cpu", "cuda")
    return torch.optim.AdamW([param], lr=protocol.lr, betas=protocol.betas, eps=protocol.eps,
                             weight_decay=protocol.weight_decay, fused=fused or None)


def _keep_runs(optimiser: torch.optim.AdamW, param: torch.Tensor, keep: torch.Tensor,
               protocol: ProbeProtocol) -> tuple[torch.optim.AdamW, torch.Tensor]:
    """The runs ``keep`` of a stacked parameter and of its optimiser state (moments, step count).

    Goes through ``state_dict``/``load_state_dict``, the optimiser's public way to carry
    state over to new parameter tensors.
    """
    state = optimiser.state_dict()
    for moments in state["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            moments[key] = moments[key][keep]
    kept = param[keep]
    optimiser = protocol_adamw(kept, protocol)
    optimiser.load_state_dict(state)  # also restores the current learning rate
    return optimiser, kept


def summarise_runs(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single run), as eva reports them."""
    values = np.asarray(values, dtype=np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), std


def init_linear(in_features: int, out_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial weight ``(C, D)`` and bias ``(C,)`` of ``torch.nn.Linear(D, C)`` after ``manual_seed(seed)``.

    The global RNG state is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(in_features, out_features)
    return layer.weight.detach().clone(), layer.bias.detach().clone()


# --------------------------------------------------------------------------------------
# The linear probe


def _as_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype)
    array = np.asarray(x)
    if not array.flags.writeable:  # e.g. a read-only memory map of the feature cache
        array = array.copy()
    return torch.as_tensor(array, dtype=dtype)


class LinearProbe:
    """Linear probe trained R times with eva's protocol, all runs in one batched computation.

    Parameters follow scikit-learn: the constructor stores hyper-parameters, :meth:`fit`
    learns, fitted attributes end with ``_``.

    Args:
        num_classes: number of classes C (2 means a binary task: one logit and BCE).
        protocol: the training protocol (:class:`ProbeProtocol`).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        progress: show a progress bar over optimiser steps.

    Fitted attributes:
        weight_: ``(R, C_out, D)`` float32 best-validation weights (``C_out = 1`` for binary).
        bias_: ``(R, C_out)`` float32 best-validation biases.
        best_step_: ``(R,)`` optimiser step of each run's best checkpoint.
        best_epoch_: ``(R,)`` epoch (0-based) of each run's best checkpoint (-1: never validated).
        best_val_score_: ``(R,)`` validation metric of each run's best checkpoint.
        stop_step_: ``(R,)`` step at which each run stopped (early stopping or ``max_steps``).
        history_: list of ``(epoch, step, {run: score})`` validation records.
    """

    def __init__(
        self,
        num_classes: int,
        protocol: ProbeProtocol | None = None,
        device: str = "auto",
        progress: bool = False,
    ) -> None:
        if num_classes < 2:
            raise PathbenchError(f"a classification head needs at least 2 classes, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.protocol = protocol or ProbeProtocol()
        self.device = device
        self.progress = progress

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def fit(self, train_x, train_y, val_x, val_y) -> LinearProbe:
        """Train the R runs with early stopping on the validation split.

        Args:
            train_x: ``(N, D)`` float32 training embeddings (array or tensor).
            train_y: ``(N,)`` int class indices in ``[0, num_classes)``.
            val_x: ``(M, D)`` float32 validation embeddings.
            val_y: ``(M,)`` int class indices.
        """
        device = self._device()
        x = _as_tensor(train_x, torch.float32).to(device)
        y = _as_tensor(train_y, torch.int64).to(device)
        vx = _as_tensor(val_x, torch.float32).to(device)
        vy = _as_tensor(val_y, torch.int64).to(device)
        self._check_inputs(x, y, "train")
        self._check_inputs(vx, vy, "val")
        if x.shape[1] != vx.shape[1]:
            raise PathbenchError(f"train embeddings have {x.shape[1]} dimensions, val {vx.shape[1]}.")
        with _single_thread_on_cpu(device), torch.no_grad():
            self._fit(x, y, vx, vy, device)
        return self

    def _fit(self, x: torch.Tensor, y: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor,
             device: torch.device) -> None:
        p = self.protocol
        n, dim = x.shape
        c_out = 1 if self.binary else self.num_classes
        # The bias is the last column of an augmented weight: every AdamW operation is
        # element-wise and treats weights and bias alike, so one tensor holds both.
        x1 = _augment(x)  # (N, D + 1)
        vx1 = _augment(vx)
        y_float = y.to(torch.float32)

        # Per-run initialisation and shuffling generators (run r: seed + r).
        inits = [init_linear(dim, c_out, p.seed + r) for r in range(p.runs)]
        weight = torch.stack([torch.cat([w, b[:, None]], dim=1) for w, b in inits]).to(device)  # (R, C, D+1)
        generators = [torch.Generator().manual_seed(p.seed + r) for r in range(p.runs)]
        optimiser = protocol_adamw(weight, p)

        active = list(range(p.runs))  # run ids still training, aligned with dim 0 of the state
        stopper = BatchedEarlyStopping(p.runs, p.patience)
        best_weight = weight.clone()
        best_step = np.full(p.runs, -1, dtype=np.int64)
        best_epoch = np.full(p.runs, -1, dtype=np.int64)
        stop_step = np.zeros(p.runs, dtype=np.int64)
        history: list[tuple[int, int, dict[int, float]]] = []

        steps_per_epoch = math.ceil(n / p.batch_size)
        step = 0
        epoch = 0
        bar = tqdm(total=p.max_steps, desc="linear probe", unit="step", disable=not self.progress,
                   leave=False, mininterval=0.5)
        while active and step < p.max_steps:
            optimiser.param_groups[0]["lr"] = epoch_learning_rate(p, epoch)
            perms = torch.stack([epoch_permutation(generators[r], n) for r in active]).to(device)  # (A, N)
            completed = True
            for b in range(steps_per_epoch):
                idx = perms[:, b * p.batch_size : (b + 1) * p.batch_size]  # (A, B)
                xb = x1[idx]  # (A, B, D+1)
                logits = torch.bmm(xb, weight.transpose(1, 2))  # (A, B, C)
                grad_logits = self._loss_gradient(logits, idx, y, y_float)
                weight.grad = torch.bmm(grad_logits.transpose(1, 2), xb)  # (A, C, D+1)
                optimiser.step()
                step += 1
                if step >= p.max_steps:
                    completed = b == steps_per_epoch - 1
                    break
            bar.update(b + 1)
            if not completed:
                break  # Lightning does not validate an epoch cut short by max_steps
            scores = self._scores(weight, vx1, vy).cpu().numpy()
            history.append((epoch, step, {r: float(s) for r, s in zip(active, scores, strict=True)}))
            improved, stop = stopper.update(active, scores)
            for i, r in enumerate(active):
                if improved[i]:
                    best_weight[r] = weight[i]
                    best_step[r] = step
                    best_epoch[r] = epoch
                if stop[i]:
                    stop_step[r] = step
            if stop.any():
                keep = torch.as_tensor(np.flatnonzero(~stop), dtype=torch.long, device=device)
                optimiser, weight = _keep_runs(optimiser, weight, keep, p)
                active = [r for r, s in zip(active, stop, strict=True) if not s]
            epoch += 1
        bar.close()
        for i, r in enumerate(active):
            stop_step[r] = step
            if best_epoch[r] < 0:  # never validated (max_steps shorter than one epoch): last state
                best_weight[r] = weight[i]
                best_step[r] = step
        self.weight_ = best_weight[:, :, :-1].contiguous()
        self.bias_ = best_weight[:, :, -1].contiguous()
        self.best_step_ = best_step
        self.best_epoch_ = best_epoch
        self.best_val_score_ = stopper.best.copy()
        self.stop_step_ = stop_step
        self.history_ = history
        self.steps_per_epoch_ = steps_per_epoch

    def _loss_gradient(self, logits: torch.Tensor, idx: torch.Tensor, y: torch.Tensor,
                       y_float: torch.Tensor) -> torch.Tensor:
        """Gradient of each run's mean batch loss with respect to its logits, ``(A, B, C)``.

        Cross-entropy: ``(softmax(z) - onehot(y)) / B``; BCE-with-logits:
        ``(sigmoid(z) - y) / B``: the gradients torch's losses give, written out so that a
        step needs no autograd graph.
        """
        batch = idx.shape[1]
        if self.binary:
            grad = torch.sigmoid(logits)
            grad[..., 0] -= y_float[idx]
        else:
            grad = torch.softmax(logits, dim=-1)
            grad.scatter_add_(2, y[idx].unsqueeze(-1), torch.full_like(grad[..., :1], -1.0))
        return grad.div_(batch)

    def _scores(self, weight1: torch.Tensor, x1: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return macro_accuracy_batched(self._predict_classes(weight1, x1), y, self.num_classes)

    def _predict_classes(self, weight1: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        # (N, D+1) x (R, D+1, C) -> (R, N, C); weight1 holds the bias in its last column
        logits = torch.matmul(x1, weight1.transpose(1, 2))
        if self.binary:
            return (logits[..., 0] > 0).long()  # sigmoid(z) > 0.5
        return logits.argmax(dim=-1)

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor, split: str) -> None:
        if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise PathbenchError(
                f"{split}: expected embeddings (N, D) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}."
            )
        if x.shape[0] == 0:
            raise PathbenchError(f"{split}: the split is empty; the probe needs at least one item.")
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise PathbenchError(
                f"{split}: labels must lie in [0, {self.num_classes}), found {int(y.min())}..{int(y.max())}."
            )
        if not torch.isfinite(x).all():
            raise PathbenchError(f"{split}: embeddings contain NaN or infinite values.")

    def _fitted(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(self, "weight_"):
            raise PathbenchError("the probe is not fitted yet; call fit() first.")
        xt = _as_tensor(x, torch.float32).to(self.weight_.device)
        weight1 = torch.cat([self.weight_, self.bias_.unsqueeze(-1)], dim=2)
        return xt, weight1

    def predict(self, x) -> torch.Tensor:
        """Predicted classes of every run's best checkpoint: ``(R, N)`` int64 on the CPU."""
        xt, weight1 = self._fitted(x)
        return self._predict_classes(weight1, _augment(xt)).cpu()

    def predict_logits(self, x) -> torch.Tensor:
        """Logits of every run's best checkpoint: ``(R, N, C_out)`` float32 on the CPU.

        ``C_out = 1`` for a binary task (the positive class's logit), else C. The classes of
        :meth:`predict` are ``logits[..., 0] > 0`` (binary) or ``logits.argmax(-1)``;
        :func:`pathbench.heads.eva_metrics.run_metrics` turns them into eva's full metric set.
        """
        xt, weight1 = self._fitted(x)
        if xt.ndim != 2 or xt.shape[1] != weight1.shape[2] - 1:
            raise PathbenchError(f"expected embeddings (N, {weight1.shape[2] - 1}), got {tuple(xt.shape)}.")
        with torch.no_grad():
            return torch.matmul(_augment(xt), weight1.transpose(1, 2)).cpu()

    def score(self, x, y) -> np.ndarray:
        """Per-run metric (balanced / macro accuracy) of the best checkpoints: ``(R,)`` float64."""
        xt, weight1 = self._fitted(x)
        yt = _as_tensor(y, torch.int64).to(xt.device)
        self._check_inputs(xt, yt, "eval")
        return self._scores(weight1, _augment(xt), yt).cpu().numpy()


def _augment(x: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` -> ``(N, D + 1)`` with a column of ones (the bias input)."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device):
    """Run the probe's small per-step operations on one CPU thread.

    A step multiplies an (R, 256, D) batch by an (R, D, C) weight: far too little work to
    share between threads, and on a busy machine the thread hand-offs cost many times the
    arithmetic (measured: 4 ms per step on one thread, 88 ms on two). GPUs are unaffected.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
