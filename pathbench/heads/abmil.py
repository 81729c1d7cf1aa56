"""kaiko eva's ABMIL slide head and its offline training protocol, batched over runs.

The network is eva's ``ABMIL`` (``eva/vision/models/networks/abmil.py``) with the arguments
of its ``camelyon16_small.yaml`` and ``panda_small.yaml`` configs:

- ``Linear(D, 128)`` projection of every patch embedding;
- gated attention: ``tanh(Linear(128, 128))`` times ``sigmoid(Linear(128, 128))``, then
  ``Linear(128, 1)``, softmax over the patches of a slide;
- the attention-weighted sum of the projected patches goes through an MLP
  ``Linear(128, 128), ReLU, Linear(128, 64), ReLU, Linear(64, C)``; no dropout anywhere;
- bags are padded with rows of ``-inf`` (eva's ``Pad2DTensor``, up to 1,000 / 200 rows): a
  row whose every value is ``-inf`` is zeroed before the projection and its attention
  logit set to ``-inf``, so it gets weight exactly 0.

Training, eva's ``HeadModule`` defaults with those configs: ``C = 1`` with
``BCEWithLogitsLoss`` for Camelyon16, ``C = 6`` with ``CrossEntropyLoss`` for PANDA;
``AdamW(lr=1e-3, betas=(0.9, 0.999))`` with torch's other defaults (weight decay 0.01,
eps 1e-8); the default scheduler ``ConstantLR`` (factor 1/3 for the first 5 epochs, stepped
per epoch); batch 32 slides, shuffled; at most 100 epochs; validation after every epoch;
early stopping with patience 20 on the validation metric (strict improvement) and the
best-validation checkpoint evaluated; 20 runs. Metrics: :mod:`pathbench.heads.metrics`.

Runs: run ``r`` is initialised under ``torch.manual_seed(seed + r)`` and shuffles with a
generator seeded ``seed + r``, as the linear probe does. (eva seeds its process once and
runs the 20 fits one after another, so its runs are not individually reproducible.)

Speed: runs can train together. Each parameter is an ``(A, ...)`` stack of A runs, every
step gathers each run's own batch, and one batched forward/backward serves them all; the
AdamW update is element-wise, so each run gets the update it would get alone. Runs that
stop early leave the batch. On a GPU all runs share one computation (within a memory
budget); on the CPU one run at a time is faster (``benchmarks/abmil_runs.py``). Padding is
cut to the longest bag of each batch: padded rows contribute exact zeros, so this changes
no prediction (tested), only the time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from pathbench.errors import PathbenchError
from pathbench.heads.linear import (
    BatchedEarlyStopping,
    _single_thread_on_cpu,
    epoch_learning_rate,
    epoch_permutation,
)
from pathbench.heads.metrics import eva_scores_batched

__all__ = ["ABMIL", "AbmilProtocol", "AbmilHead", "Bags", "pad_bags", "init_abmil_params", "abmil_forward",
           "train_abmil"]

PARAM_NAMES = ("projector", "attention_a", "attention_b", "attention_c", "mlp_0", "mlp_1", "mlp_2")


@dataclasses.dataclass(frozen=True)
class AbmilProtocol:
    """Hyper-parameters of eva's ABMIL training (defaults: its slide-level offline configs).

    Attributes:
        lr, weight_decay, betas, eps: AdamW.
        warmup_factor, warmup_epochs: ``ConstantLR`` (eva's default scheduler).
        batch_size: slides per training step (the last batch of an epoch may be smaller).
        eval_batch_size: slides per evaluation batch (binary decisions are taken per batch).
        max_epochs: epoch limit.
        patience: early-stopping patience in epochs.
        runs: independent runs; run ``r`` uses seed ``seed + r``.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_factor: float = 1.0 / 3.0
    warmup_epochs: int = 5
    batch_size: int = 32
    eval_batch_size: int = 32
    max_epochs: int = 100
    patience: int = 20
    runs: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "max_epochs", "patience", "runs"):
            if int(getattr(self, name)) < 1:
                raise PathbenchError(f"{name} must be at least 1, got {getattr(self, name)}.")


class ABMIL(nn.Module):
    """eva's ABMIL network (one run): ``(B, N, D)`` bags, ``-inf`` rows as padding -> ``(B, C)`` logits."""

    def __init__(self, input_size: int, output_size: int, projected_size: int = 128, attention_size: int = 128,
                 mlp_sizes: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        # Construction order = eva's, so that the same seed gives the same initial weights.
        self.projector = nn.Linear(input_size, projected_size)
        self.attention_a = nn.Linear(projected_size, attention_size)
        self.attention_b = nn.Linear(projected_size, attention_size)
        self.attention_c = nn.Linear(attention_size, 1)
        sizes = (projected_size, *mlp_sizes, output_size)
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def forward(self, bags: torch.Tensor) -> torch.Tensor:
        padding = torch.isneginf(bags).all(dim=-1, keepdim=True)  # (B, N, 1)
        projected = self.projector(bags.masked_fill(padding, 0.0))  # (B, N, P)
        gate = torch.tanh(self.attention_a(projected)) * torch.sigmoid(self.attention_b(projected))
        logits = self.attention_c(gate).masked_fill(padding, float("-inf"))  # (B, N, 1)
        weights = torch.softmax(logits, dim=1)
        pooled = torch.matmul(weights.transpose(1, 2), projected).squeeze(1)  # (B, P)
        for i, layer in enumerate(self.mlp):
            pooled = layer(pooled)
            if i < len(self.mlp) - 1:
                pooled = torch.relu(pooled)
        return pooled

    def stacked_parameters(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{name: (weight, bias)}`` in the order of :data:`PARAM_NAMES`."""
        layers = [self.projector, self.attention_a, self.attention_b, self.attention_c, *self.mlp]
        return {name: (layer.weight, layer.bias) for name, layer in zip(PARAM_NAMES, layers, strict=True)}


# --------------------------------------------------------------------------------------
# Batched (over runs) functional form


def init_abmil_params(input_size: int, output_size: int, seeds: Sequence[int]) -> list[torch.Tensor]:
    """Initial parameters of one :class:`ABMIL` per seed (built after ``manual_seed(seed)``), stacked.

    Returns:
        14 tensors ``[W_projector (R, 128, D), b_projector (R, 128), W_attention_a, ...]``
        following :data:`PARAM_NAMES`, weight then bias. The global RNG state is restored.
    """
    per_run = []
    with torch.random.fork_rng(devices=[]):
        for seed in seeds:
            torch.manual_seed(int(seed))
            model = ABMIL(input_size, output_size)
            per_run.append([t.detach().clone() for pair in model.stacked_parameters().values() for t in pair])
    return [torch.stack(group) for group in zip(*per_run, strict=True)]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``(A, ..., in)`` x ``(A, out, in)`` + ``(A, out)`` -> ``(A, ..., out)``."""
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-1])
    out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return out.reshape(*shape[:-1], weight.shape[1])


def abmil_forward(params: Sequence[torch.Tensor], bags: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """ABMIL logits of A runs.

    Args:
        params: the 14 stacked tensors of :func:`init_abmil_params` (leading dimension A).
        bags: ``(A, B, N, D)`` float32 with padded rows set to 0, or ``(B, N, D)`` shared by all runs.
        padding: ``(A, B, N)`` or ``(B, N)`` bool, True for padded rows.

    Returns:
        ``(A, B, C)`` logits.
    """
    runs = params[0].shape[0]
    if bags.ndim == 3:  # the same bags for every run: one projection matmul against all weights
        projected = torch.einsum("bnd,akd->abnk", bags, params[0]) + params[1][:, None, None, :]
        padding = padding.unsqueeze(0).expand(runs, -1, -1)
    else:
        projected = _linear(bags, params[0], params[1])  # (A, B, N, P)
    gate = torch.tanh(_linear(projected, params[2], params[3])) * torch.sigmoid(_linear(projected, params[4], params[5]))
    logits = _linear(gate, params[6], params[7])[..., 0].masked_fill(padding, float("-inf"))  # (A, B, N)
    weights = torch.softmax(logits, dim=2)
    pooled = torch.einsum("abn,abnp->abp", weights, projected)
    hidden = torch.relu(_linear(pooled, params[8], params[9]))
    hidden = torch.relu(_linear(hidden, params[10], params[11]))
    return _linear(hidden, params[12], params[13])


# --------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class Bags:
    """Padded bags of one split.

    Attributes:
        embeddings: ``(S, N_max, D)`` float32, padded rows are 0.
        padding: ``(S, N_max)`` bool, True for padded rows.
        targets: ``(S,)`` int64.
    """

    embeddings: torch.Tensor
    padding: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device) -> Bags:
        return Bags(self.embeddings.to(device), self.padding.to(device), self.targets.to(device))


def pad_bags(bags: Sequence[np.ndarray | torch.Tensor], targets: Sequence[int], split: str = "split",
             num_classes: int | None = None) -> Bags:
    """Stack variable-size bags ``[(n_i, D)]`` into a :class:`Bags` padded to the longest one."""
    if len(bags) != len(targets):
        raise PathbenchError(f"{split}: {len(bags)} bags but {len(targets)} targets.")
    if not bags:
        raise PathbenchError(f"{split}: no slides; ABMIL needs at least one bag per split.")
    # np.array copies: bags may be read-only memory maps of the feature cache
    arrays = [torch.from_numpy(np.array(b, dtype=np.float32)) for b in bags]
    dims = {int(a.shape[1]) if a.ndim == 2 else -1 for a in arrays}
    if len(dims) != 1 or -1 in dims:
        raise PathbenchError(f"{split}: every bag must be a (n_patches, D) array with one D; found dims {sorted(dims)}.")
    empty = [i for i, a in enumerate(arrays) if a.shape[0] == 0]
    if empty:
        raise PathbenchError(f"{split}: bags {empty[:5]} have no patches; leave such slides out (eva has no row "
                             "for a slide without foreground).")
    if not all(torch.isfinite(a).all() for a in arrays):
        raise PathbenchError(f"{split}: embeddings contain NaN or infinite values.")
    longest, dim = max(a.shape[0] for a in arrays), dims.pop()
    embeddings = torch.zeros(len(arrays), longest, dim)
    padding = torch.ones(len(arrays), longest, dtype=torch.bool)
    for i, a in enumerate(arrays):
        embeddings[i, : a.shape[0]] = a
        padding[i, : a.shape[0]] = False
    target_tensor = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    if num_classes is not None and (int(target_tensor.min()) < 0 or int(target_tensor.max()) >= num_classes):
        raise PathbenchError(f"{split}: targets must lie in [0, {num_classes}), found "
                             f"{int(target_tensor.min())}..{int(target_tensor.max())}.")
    return Bags(embeddings, padding, target_tensor)


def _trim(embeddings: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns that are padding in every bag of the batch."""
    longest = int((~padding).sum(dim=-1).max())
    return embeddings[..., :longest, :], padding[..., :longest]


# --------------------------------------------------------------------------------------
# The head


class AbmilHead:
    """ABMIL trained R times with eva's protocol, runs batched together where that is faster.

    Args:
        num_classes: C (2 means one logit and BCE, as eva's Camelyon16 config).
        protocol: :class:`AbmilProtocol`.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        progress: show a progress bar over epochs.
        runs_together: how many runs share one batched computation; ``None`` picks 1 on the
            CPU (measured 1.6x faster there than 20 runs together: the batched tensors of many
            runs fall out of the caches) and as many as ``memory_budget_gb`` allows on a GPU
            (fewer, larger kernels; check with ``benchmarks/abmil_runs.py --device cuda``).
            Results do not depend on it.
        memory_budget_gb: bound on the gathered training batch of the runs trained together.

    Fitted attributes:
        params_: the 14 stacked best-validation parameters ``(R, ...)`` (see :func:`init_abmil_params`).
        best_epoch_: ``(R,)`` epoch (0-based) of each run's best checkpoint.
        best_val_score_: ``(R,)`` validation metric of the best checkpoints.
        stop_epoch_: ``(R,)`` number of epochs each run trained.
        steps_per_epoch_: optimiser steps per epoch.
        history_: ``[(epoch, {run: val score})]``.
    """

    def __init__(self, num_classes: int, protocol: AbmilProtocol | None = None, device: str = "auto",
                 progress: bool = False, runs_together: int | None = None, memory_budget_gb: float = 4.0) -> None:
        if num_classes < 2:
            raise PathbenchError(f"a classification head needs at least 2 classes, got {num_classes}.")
        if runs_together is not None and runs_together < 1:
            raise PathbenchError(f"runs_together must be at least 1, got {runs_together}.")
        self.num_classes = int(num_classes)
        self.protocol = protocol or AbmilProtocol()
        self.device = device
        self.progress = progress
        self.runs_together = runs_together
        self.memory_budget_gb = memory_budget_gb

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def fit(self, train_bags: Sequence[np.ndarray], train_targets: Sequence[int],
            val_bags: Sequence[np.ndarray], val_targets: Sequence[int]) -> AbmilHead:
        """Train the R runs with early stopping on the validation split.

        Args:
            train_bags: S bags, each ``(n_i, D)`` float32 patch embeddings of one slide.
            train_targets: ``(S,)`` class indices.
            val_bags, val_targets: the validation slides, likewise.
        """
        device = self._device()
        train = pad_bags(train_bags, train_targets, "train", self.num_classes).to(device)
        val = pad_bags(val_bags, val_targets, "val", self.num_classes).to(device)
        if train.embeddings.shape[-1] != val.embeddings.shape[-1]:
            raise PathbenchError(f"train embeddings have {train.embeddings.shape[-1]} dimensions, "
                                 f"val {val.embeddings.shape[-1]}.")
        p = self.protocol
        runs = list(range(p.runs))
        group = self._group_size(train, device)
        results = []
        with _single_thread_on_cpu(device):
            for start in range(0, p.runs, group):
                results.append(self._fit_runs(runs[start : start + group], train, val, device))
        self.params_ = [torch.cat([r[0][i] for r in results]) for i in range(len(results[0][0]))]
        self.best_epoch_ = np.concatenate([r[1] for r in results])
        self.best_val_score_ = np.concatenate([r[2] for r in results])
        self.stop_epoch_ = np.concatenate([r[3] for r in results])
        self.history_ = [(epoch, {k: v for r in results for k, v in r[4].get(epoch, {}).items()})
                         for epoch in range(int(self.stop_epoch_.max()))]
        self.steps_per_epoch_ = math.ceil(len(train) / p.batch_size)
        return self

    def _group_size(self, train: Bags, device: torch.device) -> int:
        if self.runs_together is not None:
            return min(self.runs_together, self.protocol.runs)
        if device.type == "cpu":
            return 1
        per_run = self.protocol.batch_size * train.embeddings.shape[1] * (train.embeddings.shape[2] + 8 * 128) * 4 * 3
        return max(1, min(self.protocol.runs, int(self.memory_budget_gb * 2**30 // max(per_run, 1))))

    def _fit_runs(self, run_ids: list[int], train: Bags, val: Bags, device: torch.device):
        p = self.protocol
        c_out = 1 if self.binary else self.num_classes
        params = [t.to(device).requires_grad_() for t in
                  init_abmil_params(train.embeddings.shape[-1], c_out, [p.seed + r for r in run_ids])]
        optimiser = self._optimiser(params)
        generators = [torch.Generator().manual_seed(p.seed + r) for r in run_ids]
        lengths = (~train.padding).sum(dim=1)
        stopper = BatchedEarlyStopping(len(run_ids), p.patience)
        best = [t.detach().clone() for t in params]
        best_epoch = np.full(len(run_ids), -1, dtype=np.int64)
        stop_epoch = np.full(len(run_ids), p.max_epochs, dtype=np.int64)
        history: dict[int, dict[int, float]] = {}
        active = list(range(len(run_ids)))  # local run indices, aligned with dim 0 of params
        n = len(train)
        step = 0
        bar = tqdm(total=p.max_epochs, desc="ABMIL", unit="epoch", disable=not self.progress, leave=False)
        for epoch in range(p.max_epochs):
            if not active:
                break
            for group in optimiser.param_groups:
                group["lr"] = epoch_learning_rate(p, epoch)
            perms = torch.stack([epoch_permutation(generators[i], n) for i in active]).to(device)  # (A, N)
            for start in range(0, n, p.batch_size):
                idx = perms[:, start : start + p.batch_size]  # (A, B)
                longest = int(lengths[idx].max())
                bags = train.embeddings[:, :longest][idx]  # (A, B, L, D)
                logits = abmil_forward(params, bags, train.padding[:, :longest][idx])
                loss = self._loss(logits, train.targets[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                step += 1
            scores = self._scores(params, val)
            history[epoch] = {run_ids[i]: float(s) for i, s in zip(active, scores, strict=True)}
            improved, stop = stopper.update(active, scores)
            for j, i in enumerate(active):
                if improved[j]:
                    for b, t in zip(best, params, strict=True):
                        b[i] = t[j].detach()
                    best_epoch[i] = epoch
                if stop[j]:
                    stop_epoch[i] = epoch + 1
            if stop.any():
                keep = torch.as_tensor(np.flatnonzero(~stop), dtype=torch.long, device=device)
                state = optimiser.state_dict()
                for moments in state["state"].values():
                    for key in ("exp_avg", "exp_avg_sq"):
                        moments[key] = moments[key][keep]
                params = [t.detach()[keep].requires_grad_() for t in params]
                optimiser = self._optimiser(params)
                optimiser.load_state_dict(state)  # moments and step counts follow their runs
                active = [i for i, s in zip(active, stop, strict=True) if not s]
            bar.update(1)
        bar.close()
        return best, best_epoch, stopper.best.copy(), stop_epoch, history

    def _optimiser(self, params: list[torch.Tensor]) -> torch.optim.AdamW:
        """``torch.optim.AdamW`` over the stacked parameters of the runs: every operation is
        element-wise, so each run gets exactly the update it would get alone."""
        p = self.protocol
        fused = params[0].device.type in ("cpu", "cuda")
        return torch.optim.AdamW(params, lr=p.lr, betas=p.betas, eps=p.eps, weight_decay=p.weight_decay,
                                 fused=fused or None)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum over runs of each run's mean batch loss (so each run gets its own gradient)."""
        if self.binary:
            per_item = F.binary_cross_entropy_with_logits(logits[..., 0], targets.to(logits.dtype), reduction="none")
        else:
            per_item = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       reduction="none").reshape(targets.shape)
        return per_item.mean(dim=1).sum()

    @torch.no_grad()
    def _logits(self, params: Sequence[torch.Tensor], bags: Bags) -> torch.Tensor:
        """``(R, S, C_out)`` logits, evaluated in eva's batches."""
        chunks = []
        for start in range(0, len(bags), self.protocol.eval_batch_size):
            stop = start + self.protocol.eval_batch_size
            embeddings, padding = _trim(bags.embeddings[start:stop], bags.padding[start:stop])
            chunks.append(abmil_forward([t.detach() for t in params], embeddings, padding))
        return torch.cat(chunks, dim=1)

    def _scores(self, params: Sequence[torch.Tensor], bags: Bags) -> np.ndarray:
        logits = self._logits(params, bags)
        return eva_scores_batched(logits, bags.targets, self.num_classes, self.protocol.eval_batch_size)

    def _fitted_bags(self, bags: Sequence[np.ndarray], targets: Sequence[int] | None) -> Bags:
        if not hasattr(self, "params_"):
            raise PathbenchError("the ABMIL head is not fitted yet; call fit() first.")
        dummy = targets if targets is not None else [0] * len(bags)
        return pad_bags(bags, dummy, "eval", self.num_classes).to(self.params_[0].device)

    def predict_logits(self, bags: Sequence[np.ndarray]) -> torch.Tensor:
        """Logits of every run's best checkpoint: ``(R, S, C_out)`` float32 on the CPU."""
        with _single_thread_on_cpu(self.params_[0].device if hasattr(self, "params_") else torch.device("cpu")):
            return self._logits(self.params_, self._fitted_bags(bags, None)).cpu()

    def score(self, bags: Sequence[np.ndarray], targets: Sequence[int]) -> np.ndarray:
        """eva's metric (balanced / macro accuracy) of every run's best checkpoint: ``(R,)`` float64."""
        padded = self._fitted_bags(bags, targets)
        with _single_thread_on_cpu(padded.embeddings.device):
            return self._scores(self.params_, padded)


def _split(data: tuple[Sequence[np.ndarray], Sequence[int]] | None, name: str):
    if data is None:
        return None
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise PathbenchError(f"{name}: expected a pair (bags, targets).")
    return data


def train_abmil(
    train: tuple[Sequence[np.ndarray], Sequence[int]],
    val: tuple[Sequence[np.ndarray], Sequence[int]],
    test: tuple[Sequence[np.ndarray], Sequence[int]] | None = None,
    *,
    num_classes: int,
    protocol: AbmilProtocol | None = None,
    device: str = "auto",
    progress: bool = False,
    task: str | None = None,
    runs_together: int | None = None,
) -> list[dict]:
    """Train eva's ABMIL R times and score each run's best-validation checkpoint.

    Args:
        train, val, test: ``(bags, targets)``: S bags of ``(n_i, D)`` float32 patch
            embeddings and ``(S,)`` class indices. ``test`` may be None (then val is reported).
        num_classes: 2 (Camelyon16: one logit, BCE) or 6 (PANDA).
        runs_together: see :class:`AbmilHead` (speed only).

    Returns:
        One row per run: ``task, run, split, metric, value, val_value, best_epoch,
        best_step, stop_epoch, stop_step`` (``value`` on ``split``, the test split when given).
    """
    train, val, test = _split(train, "train"), _split(val, "val"), _split(test, "test")
    head = AbmilHead(num_classes, protocol, device=device, progress=progress,
                     runs_together=runs_together).fit(*train, *val)
    val_values = head.score(*val)
    report, values = ("test", head.score(*test)) if test is not None else ("val", val_values)
    metric = "balanced_accuracy" if num_classes == 2 else "macro_accuracy"
    steps = head.steps_per_epoch_
    return [
        {
            "task": task,
            "run": run,
            "split": report,
            "metric": metric,
            "value": float(values[run]),
            "val_value": float(val_values[run]),
            "best_epoch": int(head.best_epoch_[run]),
            "best_step": int((head.best_epoch_[run] + 1) * steps),
            "stop_epoch": int(head.stop_epoch_[run]),
            "stop_step": int(head.stop_epoch_[run] * steps),
        }
        for run in range(head.protocol.runs)
    ]
