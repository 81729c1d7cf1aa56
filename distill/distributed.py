"""Process placement under torchrun, agreement between ranks, and pre-emption signals."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    """Where this process sits: ``rank`` of ``world`` processes, its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else run alone.

    NCCL on GPUs, gloo on CPUs. Each process uses ``cuda:LOCAL_RANK`` when GPUs exist.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if use_cuda:
        resolved = torch.device("cuda", local_rank if device == "auto" else torch.device(device).index or local_rank)
        torch.cuda.set_device(resolved)
    elif device in ("auto", "cpu"):
        resolved = torch.device("cpu")
    else:
        resolved = torch.device(device)
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=resolved)


def all_ranks_agree(ok: bool, env: DistEnv) -> bool:
    """Rank 0's ``ok`` as seen by every rank (the others pass True)."""
    if not dist.is_initialized():
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=env.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


@contextlib.contextmanager
def stop_on_signal() -> Iterator[Callable[[], bool]]:
    """While active, SIGTERM and SIGUSR1 (what schedulers send before pre-empting a job) only
    raise a flag; the loop then checkpoints and returns. Yields the flag's reader."""
    import signal
    import threading

    requested = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        requested["stop"] = True

    previous = {}
    for name in ("SIGTERM", "SIGUSR1"):
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, handler)
    try:
        yield lambda: requested["stop"]
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
