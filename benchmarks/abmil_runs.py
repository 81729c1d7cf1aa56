"""eva's ABMIL runs trained batched (pathbench) versus the same runs trained one after another.

The sequential baseline is the plain way to write eva's slide protocol in PyTorch: per run,
``ABMIL`` built after ``manual_seed(seed + r)``, ``torch.optim.AdamW(lr=1e-3)``,
``ConstantLR`` (torch defaults: 1/3 for 5 epochs) stepped per epoch, a shuffling
``DataLoader`` (batch 32, generator seeded ``seed + r``) over bags padded with ``-inf`` to
the cap as eva's ``Pad2DTensor`` does, validation after every epoch, early stopping, best
checkpoint kept. Same data, same process, same device. A third variant runs pathbench's
code one run at a time (``runs_together=1``, its CPU default), which separates the gain of
batching the runs from the gain of cutting padding. The variants are timed in interleaved
repetitions (``--repeat``) and the best time of each is compared; the script also prints
how far the batched and the plain results are apart.

    .venv/bin/python benchmarks/abmil_runs.py                       # PANDA-small-like, 4 epochs
    .venv/bin/python benchmarks/abmil_runs.py --n-train 216 --n-val 54 --cap 1000 --dim 1024 \\
        --classes 2 --epochs 100 --device cuda                      # Camelyon16-small-like
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pathbench.heads.abmil import ABMIL, AbmilHead, AbmilProtocol
from pathbench.heads.metrics import binary_balanced_accuracy, binary_predictions, multiclass_macro_accuracy


def make_bags(n: int, dim: int, classes: int, cap: int, min_patches: int, seed: int):
    """Bags of ``min_patches..cap`` patches; the label moves the mean of a share of the patches."""
    rng = np.random.default_rng(seed)
    directions = np.random.default_rng(0).normal(size=(classes, dim)).astype(np.float32)
    bags, targets = [], []
    for i in range(n):
        y = i % classes
        k = int(rng.integers(min_patches, cap + 1))
        bag = rng.normal(size=(k, dim)).astype(np.float32)
        bag[rng.random(k) < 0.3] += directions[y] * 0.5
        bags.append(bag)
        targets.append(y)
    return bags, targets


def sequential_run(train, val, classes: int, protocol: AbmilProtocol, seed: int, cap: int, device: torch.device):
    """One run written the plain way. Returns (best val score, best epoch, epochs trained)."""
    binary = classes == 2
    torch.manual_seed(seed)
    dim = train[0][0].shape[1]
    model = ABMIL(dim, 1 if binary else classes).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=protocol.lr, betas=protocol.betas)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimiser)

    def padded(bags):
        out = torch.full((len(bags), cap, dim), float("-inf"))
        for i, b in enumerate(bags):
            out[i, : len(b)] = torch.as_tensor(b)
        return out.to(device)

    x, y = padded(train[0]), torch.as_tensor(train[1], device=device)
    vx, vy = padded(val[0]), np.asarray(val[1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=protocol.batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(seed))
    criterion = torch.nn.BCEWithLogitsLoss() if binary else torch.nn.CrossEntropyLoss()
    best, wait, best_epoch, epochs = -np.inf, 0, -1, 0
    for epoch in range(protocol.max_epochs):
        epochs = epoch + 1
        for xb, yb in loader:
            out = model(xb)
            loss = criterion(out[:, 0], yb.float()) if binary else criterion(out, yb)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            logits = torch.cat([model(vx[i : i + 32]) for i in range(0, len(vx), 32)]).cpu()
        if binary:
            score = binary_balanced_accuracy(vy, binary_predictions(logits[:, 0]).numpy())
        else:
            score = multiclass_macro_accuracy(vy, logits.argmax(1).numpy(), classes)
        if score > best:
            best, wait, best_epoch = score, 0, epoch
            _ = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the checkpoint, as eva keeps it
        else:
            wait += 1
            if wait >= protocol.patience:
                break
        scheduler.step()
    return best, best_epoch, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--n-val", type=int, default=48)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--cap", type=int, default=200, help="eva's pad size (max patches per slide)")
    parser.add_argument("--min-patches", type=int, default=20)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=4, help="max epochs (eva: 100)")
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; the best time counts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for both (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train = make_bags(args.n_train, args.dim, args.classes, args.cap, args.min_patches, seed=1)
    val = make_bags(args.n_val, args.dim, args.classes, args.cap, args.min_patches, seed=2)
    protocol = AbmilProtocol(runs=args.runs, max_epochs=args.epochs, patience=args.patience)
    print(f"{args.runs} runs, {args.n_train} train / {args.n_val} val bags of {args.min_patches}..{args.cap} x "
          f"{args.dim}, {args.classes} classes, device {device}, at most {args.epochs} epochs, "
          f"torch threads {torch.get_num_threads()}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    variants = {
        "batched": lambda: AbmilHead(args.classes, protocol, device=str(device), runs_together=args.runs).fit(*train, *val),
        "one run at a time": lambda: AbmilHead(args.classes, protocol, device=str(device), runs_together=1).fit(
            *train, *val),
        "plain sequential": lambda: [sequential_run(train, val, args.classes, protocol, protocol.seed + r, args.cap,
                                                    device) for r in range(args.runs)],
    }
    # interleaved repetitions, best time of each: on a shared machine single timings are noisy
    times: dict[str, list[float]] = {name: [] for name in variants}
    results = {}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            seconds, results[name] = timed(fn)
            times[name].append(seconds)
    best = {name: min(values) for name, values in times.items()}
    head, sequential = results["batched"], results["plain sequential"]
    for name, values in times.items():
        print(f"{name:18s} best {best[name]:8.2f} s   (all: {', '.join(f'{v:.2f}' for v in values)})")
    print(f"speed-up of batched: {best['plain sequential'] / best['batched']:.2f}x over the plain loop, "
          f"{best['one run at a time'] / best['batched']:.2f}x over one run at a time")
    print(f"speed-up of one run at a time over the plain loop: "
          f"{best['plain sequential'] / best['one run at a time']:.2f}x")
    score_diff = max(abs(s[0] - b) for s, b in zip(sequential, head.best_val_score_, strict=True))
    same_epochs = all(s[1] == head.best_epoch_[r] and s[2] == head.stop_epoch_[r] for r, s in enumerate(sequential))
    print(f"same best and stop epochs: {same_epochs}; max |val score diff| {score_diff:.2e}")


if __name__ == "__main__":
    main()
