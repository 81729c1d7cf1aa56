"""Batched 5-run linear probe versus the same 5 runs trained one after another.

The sequential baseline is the ordinary way to write eva's protocol in PyTorch: per run,
``nn.Linear`` seeded with ``manual_seed(seed + r)``, ``torch.optim.AdamW(lr=3e-4)``,
``ConstantLR(1/3, 5 epochs)`` stepped per epoch, a shuffling ``DataLoader`` (batch 256,
generator seeded with ``seed + r``) over an in-memory ``TensorDataset``, validation after
every complete epoch, early stopping, best checkpoint kept. Same data, same process, same
device. The script prints both times, their ratio, and how far the two results are apart.

``--optimiser-only`` times one ``torch.optim.AdamW`` step on the probe's ``(R, C, D + 1)``
stack in each of torch's three implementations (single-tensor, foreach, fused), which is
how the probe's choice (fused on CPU and CUDA) was made.

    .venv/bin/python benchmarks/eva_linear_probe.py                  # CRC-like: 20,000 x 768, 9 classes
    .venv/bin/python benchmarks/eva_linear_probe.py --n-train 100000 --dim 1536 --device cuda
    .venv/bin/python benchmarks/eva_linear_probe.py --optimiser-only --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pathbench.heads import LinearProbe, ProbeProtocol, macro_accuracy


def make_embeddings(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(classes, dim)) / np.sqrt(dim) * 4
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(size=(n, dim))
    return x.astype(np.float32), y


def sequential_run(x, y, vx, vy, classes: int, protocol: ProbeProtocol, seed: int, device: torch.device):
    """One run, written the plain way. Returns (best val score, best step, best weight, best bias)."""
    torch.manual_seed(seed)
    binary = classes == 2
    head = torch.nn.Linear(x.shape[1], 1 if binary else classes).to(device)
    optimiser = torch.optim.AdamW(head.parameters(), lr=protocol.lr)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimiser, factor=1 / 3, total_iters=5)
    data = torch.utils.data.TensorDataset(torch.as_tensor(x, device=device), torch.as_tensor(y, device=device))
    loader = torch.utils.data.DataLoader(data, batch_size=protocol.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    val_x = torch.as_tensor(vx, device=device)
    step, best, wait, best_step, best_state = 0, -np.inf, 0, -1, None
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
        if batches < len(loader):
            break
        with torch.no_grad():
            out = head(val_x)
            pred = (out[:, 0] > 0).long() if binary else out.argmax(1)
        score = macro_accuracy(vy, pred.cpu().numpy())
        if score > best:
            best, wait, best_step = score, 0, step
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            wait += 1
            if wait >= protocol.patience:
                break
        scheduler.step()
    return best, best_step, best_state["weight"].cpu(), best_state["bias"].cpu()


def time_optimiser_steps(runs: int, classes: int, dim: int, device: torch.device, steps: int = 2000,
                         repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` microseconds per AdamW step on an ``(R, C, D + 1)`` stack, per implementation."""
    shape = (runs, 1 if classes == 2 else classes, dim + 1)
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=generator).to(device) for _ in range(16)]
    timings = {}
    for name, options in (("single-tensor", {"foreach": False}), ("foreach", {"foreach": True}),
                          ("fused", {"fused": True})):
        param = torch.randn(shape, generator=generator).to(device)
        optimiser = torch.optim.AdamW([param], lr=3e-4, **options)
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for step in range(steps):
                param.grad = grads[step % len(grads)]
                optimiser.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - start) / steps * 1e6)
        timings[name] = best
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-val", type=int, default=5_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=1_500)
    parser.add_argument("--patience", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)")
    parser.add_argument("--optimiser-only", action="store_true",
                        help="time one AdamW step per torch implementation and exit")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.optimiser_only:
        timings = time_optimiser_steps(args.runs, args.classes, args.dim, device)
        print(f"AdamW step on a ({args.runs}, {1 if args.classes == 2 else args.classes}, {args.dim + 1}) stack, "
              f"device {device}, torch threads {torch.get_num_threads()}:")
        for name, micros in timings.items():
            print(f"  {name:14s} {micros:8.1f} us/step")
        return
    x, y = make_embeddings(args.n_train, args.dim, args.classes, seed=1)
    vx, vy = make_embeddings(args.n_val, args.dim, args.classes, seed=2)
    protocol = ProbeProtocol(runs=args.runs, max_steps=args.max_steps, patience=args.patience)
    print(f"{args.runs} runs, train {x.shape}, val {vx.shape}, {args.classes} classes, device {device}, "
          f"at most {args.max_steps} steps, patience {args.patience}, torch threads {torch.get_num_threads()}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    probe = LinearProbe(args.classes, protocol, device=str(device)).fit(x, y, vx, vy)
    sync()
    batched_s = time.perf_counter() - start
    batched_scores = probe.score(vx, vy)

    sync()
    start = time.perf_counter()
    sequential = [sequential_run(x, y, vx, vy, args.classes, protocol, protocol.seed + r, device)
                  for r in range(args.runs)]
    sync()
    sequential_s = time.perf_counter() - start

    score_diff = max(abs(s[0] - b) for s, b in zip(sequential, batched_scores, strict=True))
    weight_diff = max((s[2] - probe.weight_[r].cpu()).abs().max().item() for r, s in enumerate(sequential))
    same_steps = all(s[1] == probe.best_step_[r] for r, s in enumerate(sequential))
    print(f"batched:    {batched_s:8.2f} s   best steps {probe.best_step_.tolist()}  "
          f"val {np.round(batched_scores, 4).tolist()}")
    print(f"sequential: {sequential_s:8.2f} s   best steps {[s[1] for s in sequential]}  "
          f"val {[round(s[0], 4) for s in sequential]}")
    print(f"speed-up (sequential / batched): {sequential_s / batched_s:.2f}x")
    print(f"same best steps: {same_steps}; max |val score diff| {score_diff:.2e}; "
          f"max |weight diff| {weight_diff:.2e}")


if __name__ == "__main__":
    main()
