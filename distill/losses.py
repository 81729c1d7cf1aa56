"""Distillation losses: DINO (class token), iBOT (patch tokens, no masking) and feature regression.

Conventions. ``K`` is the number of prototypes, ``B`` the per-process batch, ``P`` the number of
patch tokens of a global crop, ``L`` the number of local crops. Teacher outputs enter the losses
as probabilities (already centred and sharpened by :class:`TeacherCentering`), student outputs as
logits. ``H(t, s) = -sum_k t_k log softmax(s / T_s)_k`` is the cross-entropy of the paper.

Every reduction is a mean over the rows of this process; under DistributedDataParallel the
gradients are averaged over processes, so ``n`` processes with ``B`` rows each give the gradient
of one process holding all ``n * B`` rows. The centring statistics are all-reduced for the same
reason.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TeacherCentering",
    "cross_entropy",
    "dino_loss",
    "feature_loss",
    "ibot_loss",
    "sinkhorn_knopp",
]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Row-wise ``H(t, s)``: ``(..., K)`` probabilities and ``(..., K)`` logits -> ``(...)`` float32."""
    log_probs = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * log_probs).sum(dim=-1)


def _global_logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` over ``dim`` and over every process (keepdim), without overflow."""
    peak = x.amax(dim=dim, keepdim=True)
    if _distributed():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    total = torch.exp(x - peak).sum(dim=dim, keepdim=True)
    if _distributed():
        dist.all_reduce(total)
    return torch.log(total) + peak


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp centring of teacher logits ``(N, K)`` -> assignment probabilities ``(N, K)``.

    Starting from ``exp(logits / T)``, alternately rescales every prototype's total mass to
    ``1/K`` (summed over the samples of every process) and every sample's to ``1/N_total``,
    then multiplies by ``N_total`` so each row sums to one. Computed in the log domain, so very
    confident teachers (logits far apart) neither overflow nor underflow.
    """
    log_q = teacher_logits.float() / teacher_temp
    n_prototypes = log_q.shape[1]
    n_samples = torch.tensor(float(log_q.shape[0]), device=log_q.device)
    if _distributed():
        dist.all_reduce(n_samples)
    log_n = torch.log(n_samples)
    for _ in range(n_iterations):
        log_q = log_q - _global_logsumexp(log_q, dim=0) - math.log(n_prototypes)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_n
    return torch.exp(log_q + log_n)


class TeacherCentering(nn.Module):
    """Turns teacher head logits into centred, sharpened probabilities.

    ``mode="centering"``: ``softmax((t - c) / T_t)`` with ``c`` a running mean of the teacher
    logits, ``c <- m c + (1 - m) mean_batch(t)`` after each call (mean over every row of every
    process). ``mode="sinkhorn_knopp"``: Sinkhorn-Knopp normalisation, no state.
    """

    def __init__(self, n_prototypes: int, mode: str = "centering", momentum: float = 0.9, sinkhorn_iterations: int = 3):
        super().__init__()
        if mode not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centring mode must be 'centering' or 'sinkhorn_knopp', got {mode!r}")
        self.mode = mode
        self.momentum = float(momentum)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.register_buffer("center", torch.zeros(1, n_prototypes))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, teacher_temp: float, update: bool = True) -> torch.Tensor:
        """``(..., K)`` logits -> ``(..., K)`` float32 probabilities; updates the centre when asked."""
        shape = teacher_logits.shape
        flat = teacher_logits.float().reshape(-1, shape[-1])
        if self.mode == "sinkhorn_knopp":
            return sinkhorn_knopp(flat, teacher_temp, self.sinkhorn_iterations).reshape(shape)
        probs = F.softmax((flat - self.center) / teacher_temp, dim=-1)
        if update:
            self.update(flat)
        return probs.reshape(shape)

    @torch.no_grad()
    def update(self, flat_logits: torch.Tensor) -> None:
        """Running-mean update from ``(N, K)`` logits (all-reduced over processes)."""
        stats = torch.cat([flat_logits.float().sum(dim=0), flat_logits.new_tensor([flat_logits.shape[0]]).float()])
        if _distributed():
            dist.all_reduce(stats)
        batch_center = (stats[:-1] / stats[-1]).unsqueeze(0)
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)


def dino_loss(
    student_global: torch.Tensor,
    teacher_global_probs: torch.Tensor,
    student_local: torch.Tensor | None,
    student_temp: float,
) -> dict[str, torch.Tensor]:
    """DINO loss on class-token head outputs.

    Args:
        student_global: ``(2, B, K)`` student logits of the two global crops.
        teacher_global_probs: ``(2, B, K)`` teacher probabilities of the same two crops.
        student_local: ``(L, B, K)`` student logits of the local crops, or ``None``.
        student_temp: student softmax temperature.

    Every student global crop is supervised by the teacher's *other* global crop, every local
    crop by both teacher global crops (DINOv2). The loss is the mean of ``H`` over these
    ``2 + 2L`` (crop pair) terms; with no local crops it is the paper's
    ``(H(h1_t, h2_s) + H(h2_t, h1_s)) / 2``. Returns ``dino_global`` and ``dino_local``
    (their shares of the mean) and ``dino`` (the sum).
    """
    if student_global.shape[0] != 2 or teacher_global_probs.shape[0] != 2:
        raise ValueError("the DINO loss expects exactly two global crops")
    n_local = 0 if student_local is None else student_local.shape[0]
    n_terms = 2 + 2 * n_local
    global_sum = cross_entropy(teacher_global_probs[1], student_global[0], student_temp).mean() + cross_entropy(
        teacher_global_probs[0], student_global[1], student_temp
    ).mean()
    local_sum = student_global.new_zeros((), dtype=torch.float32)
    for i in range(n_local):
        for j in range(2):
            local_sum = local_sum + cross_entropy(teacher_global_probs[j], student_local[i], student_temp).mean()
    out = {"dino_global": global_sum / n_terms, "dino_local": local_sum / n_terms}
    out["dino"] = out["dino_global"] + out["dino_local"]
    return out


def ibot_loss(student_patches: torch.Tensor, teacher_patch_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """iBOT loss without masking: ``(G, B, P, K)`` student logits and teacher probabilities of the
    same crops -> mean of ``H`` over every patch of every global crop (the paper's
    ``1/(2P) sum_p sum_j H(h_jp_t, h_jp_s)``, averaged over images)."""
    if student_patches.shape != teacher_patch_probs.shape:
        raise ValueError(
            f"student and teacher patch outputs differ in shape: {tuple(student_patches.shape)} vs "
            f"{tuple(teacher_patch_probs.shape)}"
        )
    return cross_entropy(teacher_patch_probs, student_patches, student_temp).mean()


def feature_loss(
    student: torch.Tensor, teacher: torch.Tensor, cos_weight: float = 1.0, l1_weight: float = 1.0, beta: float = 1.0
) -> dict[str, torch.Tensor]:
    """Feature regression ``(N, D)`` projected student vs ``(N, D)`` teacher tokens.

    ``cos = mean(1 - cos_sim)``, ``l1 = mean(smooth_l1(student, teacher; beta))`` (mean over rows
    and dimensions), ``total = cos_weight * cos + l1_weight * l1``.
    """
    s = student.float()
    t = teacher.float()
    cos = (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    l1 = F.smooth_l1_loss(s, t, beta=beta)
    return {"cos": cos, "l1": l1, "total": cos_weight * cos + l1_weight * l1}
