"""Per-iteration schedules (learning rate, weight decay, teacher temperature, EMA momentum).

Each schedule is a pure function of the iteration, so a resumed run follows exactly the
schedule of an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_iters``, then a half cosine
    from ``base`` to ``final`` over the remaining ``total_iters - warmup_iters`` iterations, then
    ``final``. ``freeze_iters`` iterations of ``0`` come first (counted inside ``total_iters``)."""

    base: float
    final: float
    total_iters: int
    warmup_iters: int = 0
    warmup_start: float = 0.0
    freeze_iters: int = 0

    def __call__(self, it: int) -> float:
        if it < self.freeze_iters:
            return 0.0
        it -= self.freeze_iters
        if it < self.warmup_iters:
            return self.warmup_start + (self.base - self.warmup_start) * it / self.warmup_iters
        it -= self.warmup_iters
        span = self.total_iters - self.freeze_iters - self.warmup_iters
        if span <= 0 or it >= span:
            return self.final
        return self.final + 0.5 * (self.base - self.final) * (1.0 + math.cos(math.pi * it / span))


@dataclass(frozen=True)
class LinearWarmup:
    """Linear from ``start`` to ``end`` over ``warmup_iters`` iterations, then ``end``."""

    start: float
    end: float
    warmup_iters: int

    def __call__(self, it: int) -> float:
        if self.warmup_iters <= 0 or it >= self.warmup_iters:
            return self.end
        return self.start + (self.end - self.start) * it / self.warmup_iters
