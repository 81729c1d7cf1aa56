"""How much torchmetrics' binary input rule moves eva's reported binary metrics.

torchmetrics' binary metrics (``BinaryAccuracy``, eva's ``BinaryBalancedAccuracy``, ...)
look at each ``update`` call on its own: when every value of the batch lies in [0, 1] the
values are taken as probabilities and thresholded at 0.5; otherwise a sigmoid is applied
first. eva hands them the raw logits of its head, one validation batch (256) at a time,
so a batch whose logits all lie in [0, 1] is decided at logit 0.5 instead of logit 0.
pathbench decides at logit 0 (``sigmoid(z) > 0.5``) everywhere.

The script trains eva's binary linear probe (BCE, AdamW 3e-4, ConstantLR 1/3 for 5 epochs,
batch 256) on seeded Gaussian embeddings that share a common component, as foundation-model
embeddings do, and after every epoch scores the validation split both ways. It prints how
many epochs had a batch decided as probabilities, the largest difference in balanced
accuracy, and the epoch each rule would select as the best checkpoint.

    .venv/bin/python benchmarks/eva_binary_threshold.py
    .venv/bin/python benchmarks/eva_binary_threshold.py --n-val 977 --offset 0.3 --seeds 20
    .venv/bin/python benchmarks/eva_binary_threshold.py --embeddings-dir EMBEDDINGS_ROOT/MODEL_NAME/mhist
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pathbench.data.eva import read_eva_embeddings
from pathbench.heads import macro_accuracy


def torchmetrics_binary_predictions(logits: torch.Tensor, batch_size: int) -> np.ndarray:
    """Predicted classes as torchmetrics derives them from eva's per-batch ``update`` calls."""
    predictions = []
    for batch in torch.split(logits, batch_size):
        if bool(torch.all((batch >= 0) & (batch <= 1))):
            predictions.append(batch > 0.5)  # taken as probabilities
        else:
            predictions.append(torch.sigmoid(batch) > 0.5)
    return torch.cat(predictions).long().numpy()


def make_set(n: int, dim: int, offset: float, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(0).normal(size=dim) / np.sqrt(dim)
    common = np.random.default_rng(1).normal(size=dim) / np.sqrt(dim)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dim)) + separation * np.outer(2 * y - 1, direction) + offset * np.sqrt(dim) * common
    return x.astype(np.float32), y


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, float]:
    if args.embeddings_dir:
        splits = read_eva_embeddings(args.embeddings_dir, progress=False)
        validation = "val" if "val" in splits else "test"
        x, y = splits["train"].embeddings, splits["train"].targets
        vx, vy = splits[validation].embeddings, splits[validation].targets
    else:
        x, y = make_set(args.n_train, args.dim, args.offset, args.separation, seed=2 * seed + 10)
        vx, vy = make_set(args.n_val, args.dim, args.offset, args.separation, seed=2 * seed + 11)
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], 1)
    optimiser = torch.optim.AdamW(head.parameters(), lr=3e-4)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimiser, factor=1 / 3, total_iters=5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y)),
                                         batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(seed))
    correct, quirk, affected = [], [], 0
    for _ in range(args.epochs):
        for batch_x, batch_y in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(batch_x)[:, 0], batch_y.float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        scheduler.step()
        with torch.no_grad():
            logits = head(torch.as_tensor(vx))[:, 0]
        correct.append(macro_accuracy(vy, (logits > 0).long().numpy()))
        quirk_predictions = torchmetrics_binary_predictions(logits, 256)
        quirk.append(macro_accuracy(vy, quirk_predictions))
        affected += int(any(bool(torch.all((b >= 0) & (b <= 1))) for b in torch.split(logits, 256)))
    correct, quirk = np.array(correct), np.array(quirk)
    best_correct, best_quirk = int(np.argmax(correct)), int(np.argmax(quirk))
    return {
        "affected_epochs": affected,
        "max_diff": float(np.max(np.abs(correct - quirk))),
        "selection_changed": float(best_correct != best_quirk),
        # what eva would report: the correct metric of the checkpoint the quirk selected
        "reported_loss": float(correct[best_correct] - correct[best_quirk]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-val", type=int, default=977, help="MHIST's test split has 977 images")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--offset", type=float, default=0.3, help="size of the common embedding component")
    parser.add_argument("--separation", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--embeddings-dir", default=None,
                        help="an eva embeddings folder of a binary task (manifest.csv + .pt) instead of Gaussians")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [one_seed(args, seed) for seed in range(args.seeds)]
    affected = [r["affected_epochs"] for r in rows]
    data = args.embeddings_dir or (f"Gaussians: train {args.n_train}, val {args.n_val}, dim {args.dim}, "
                                   f"offset {args.offset}, separation {args.separation}")
    print(f"{args.seeds} seeds x {args.epochs} epochs on {data}")
    print(f"epochs with a validation batch taken as probabilities: {sum(affected)} of {args.seeds * args.epochs} "
          f"(per seed: {affected})")
    print(f"largest |balanced accuracy (logit > 0) - torchmetrics'|: {max(r['max_diff'] for r in rows):.4f} "
          f"(mean over seeds of the per-seed maximum {np.mean([r['max_diff'] for r in rows]):.4f})")
    print(f"best-epoch selection changed in {int(sum(r['selection_changed'] for r in rows))} of {args.seeds} seeds; "
          f"largest loss of the selected checkpoint's true score {max(r['reported_loss'] for r in rows):.4f}")


if __name__ == "__main__":
    main()
