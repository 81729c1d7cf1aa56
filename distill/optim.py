"""Optimisation pieces of the distillation loop: EMA update, AdamW parameter groups, schedules."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.config import DistillConfig
from distill.models import last_layer_parameters
from distill.schedules import CosineSchedule, LinearWarmup


@torch.no_grad()
def ema_update(ema: nn.Module, online: nn.Module, momentum: float) -> None:
    """``ema <- momentum * ema + (1 - momentum) * online`` for every parameter; buffers are copied."""
    ema_params = list(ema.parameters())
    online_params = [p.detach() for p in online.parameters()]
    if len(ema_params) != len(online_params):
        raise RuntimeError("EMA and online networks differ in structure")
    torch._foreach_mul_(ema_params, momentum)
    torch._foreach_add_(ema_params, online_params, alpha=1.0 - momentum)
    for be, bo in zip(ema.buffers(), online.buffers(), strict=True):
        be.copy_(bo)


def param_groups(module: nn.Module, layerwise_decay: float = 1.0, patch_embed_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups.

    No weight decay on biases, norms, layer scales, tokens, positions and the weight-norm
    magnitudes; prototype layers flagged (``last_layer``) so their gradients can be cancelled.
    ``lr_mult`` follows DINOv2: block ``i`` of ``n`` gets ``layerwise_decay ** (n - i)``, the
    embeddings ``layerwise_decay ** (n + 1)`` (times ``patch_embed_lr_mult`` for the patch
    projection), the final norm and the heads 1.
    """
    last = {id(p) for p in last_layer_parameters(module)}
    n_blocks = 1 + max((int(m.group(1)) for m in (re.search(r"\bblocks\.(\d+)\.", n)
                                                   for n, _ in module.named_parameters()) if m), default=-1)
    groups: dict[tuple[bool, bool, float], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "reg_token")) or "original0" in name
        block = re.search(r"\bblocks\.(\d+)\.", name)
        if block:
            layer = int(block.group(1)) + 1
        elif re.search(r"(patch_embed|pos_embed|cls_token|reg_token)", name):
            layer = 0
        else:
            layer = n_blocks + 1
        mult = layerwise_decay ** (n_blocks + 1 - layer)
        if "patch_embed" in name:
            mult *= patch_embed_lr_mult
        groups.setdefault((not no_decay, id(p) in last, mult), []).append(p)
    return [
        {"params": params, "apply_wd": wd, "last_layer": is_last, "lr_mult": mult, "lr": 0.0, "weight_decay": 0.0}
        for (wd, is_last, mult), params in sorted(groups.items())
    ]


@dataclass
class Schedules:
    lr: Callable[[int], float]
    wd: Callable[[int], float]
    teacher_temp: Callable[[int], float]
    momentum: Callable[[int], float]
    freeze_last_iters: int

    @classmethod
    def for_stage(cls, cfg: DistillConfig, iterations: int, peak_lr: float) -> Schedules:
        """Schedules of a stage of ``iterations`` steps; epoch-based lengths shrink in proportion
        when the stage is shorter than the main run (the head-fitting stage)."""
        ratio = min(1.0, iterations / cfg.optim.iterations)
        o, lo = cfg.optim, cfg.loss
        return cls(
            lr=CosineSchedule(peak_lr, o.min_lr, iterations, warmup_iters=int(cfg.iters(o.warmup_epochs) * ratio)),
            wd=CosineSchedule(o.weight_decay, o.weight_decay_end, iterations),
            teacher_temp=LinearWarmup(
                lo.warmup_teacher_temp, lo.teacher_temp, int(cfg.iters(lo.warmup_teacher_temp_epochs) * ratio)
            ),
            momentum=CosineSchedule(o.ema_momentum, o.ema_momentum_end, iterations),
            freeze_last_iters=int(cfg.iters(o.freeze_last_layer_epochs) * ratio),
        )
