"""Time the PLISM metrics engine against a plain dense version, and against the matmul bound.

    python benchmarks/plism_metrics.py                       # 21 slides x 2,000 tiles x 768 dims
    python benchmarks/plism_metrics.py --slides 91 --tiles 8139 --dim 1536 --device cuda --skip-dense

Random features shaped like PLISM (each slide a noisy view of the same tiles, so the
accuracies are neither 0 nor 1). Three things are measured in one process:

1. the engine, ``pathbench.benches.plism_metrics.iter_pair_metrics``, over all C(S, 2) pairs;
2. a plain dense float32 NumPy version that builds the 2n x 2n similarity matrix of each
   pair and ranks from it (what a direct reading of the definition does); the ratio of
   the two times is printed, and the results are compared;
3. the machine's matrix-multiply rate (the faster of NumPy's BLAS and torch on one
   n x n x d block), against which the engine's achieved GFLOP/s is printed. The engine needs
   (S + pairs) blocks of n x n x d multiply-adds.

The three are timed interleaved, pair by pair, so that on a shared machine they see the
same conditions.

With ``--backends`` it also compares the two retrieval backends on the same data, in the
same process, interleaved (torch, FAISS, torch, FAISS, ...; the best of ``--repeats``):
the top-11 self search of one slide, and the whole engine (self lists and pair blocks)
on the first ``--backend-pairs`` pairs, with the ratio of the two and a check that both
gave identical metrics. ``--threads N`` gives NumPy's BLAS, torch and FAISS's OpenMP the
same number of threads. On a 2-core CPU shared with other jobs (``--skip-dense --backends
--backend-pairs 10 --repeats 2``; FAISS 1.15, both at 2 threads):

    slides x tiles x dim   top-11 self search       engine per pair        faiss / torch
    7 x 2000 x 768         torch 0.077 s, faiss 0.134 s   torch 147 ms, faiss 289 ms   1.74, 1.97
    5 x 8139 x 768         torch 1.25 s,  faiss 1.34 s    torch 1.79 s, faiss 3.29 s   1.08, 1.84

with identical metrics, hence ``--backend auto`` is the torch backend here: FAISS answers a
slide pair with two searches where the blocked products serve both directions from one.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from pathbench import retrieval
from pathbench.benches import plism_metrics as pm


def random_features(slides: int, tiles: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    """``slides`` noisy views of the same tiles: a rank-4 shared part makes tiles look alike."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((tiles, 4)) @ rng.standard_normal((4, dim)) / 2.0
    base = (shared + 0.3 * rng.standard_normal((tiles, dim))).astype(np.float32)
    out = {}
    for s in range(slides):
        noise = rng.standard_normal((tiles, dim), dtype=np.float32)
        out[f"ST{s // 7}_SC{s % 7}_to_GMH_S60"] = base + np.float32(rng.uniform(0.3, 1.2)) * noise
    return out


def dense_pair_metrics(
    a: np.ndarray, b: np.ndarray, ks: tuple[int, ...], dtype: type = np.float32
) -> dict[str, float]:
    """The 2n x 2n similarity matrix of one pair (float32 by default), ranks read off its rows."""
    n = a.shape[0]
    x = np.concatenate([a, b]).astype(dtype)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    idx = np.arange(n)
    match_ab = sim[idx, n + idx]
    match_ba = sim[n + idx, idx]
    rank_ab = (sim[:n] >= match_ab[:, None]).sum(axis=1)
    rank_ba = (sim[n:] >= match_ba[:, None]).sum(axis=1)
    row = {"cosine_similarity": float(np.einsum("ij,ij->i", a, b, dtype=np.float64).mean())}
    for k in ks:
        row[f"top_{k}_accuracy"] = float(0.5 * ((rank_ab <= k).mean() + (rank_ba <= k).mean()))
    return row


def matmul_rate(n: int, m: int, dim: int, device: torch.device, repeats: int = 3) -> float:
    """Best GFLOP/s of a float32 (n x dim) @ (dim x m) product: NumPy's BLAS and torch on the CPU, torch on a GPU."""
    a = torch.randn(n, dim, device=device)
    b = torch.randn(m, dim, device=device)
    out = torch.empty(n, m, device=device)
    candidates = [lambda: torch.matmul(a, b.T, out=out)]
    if device.type == "cpu":
        a_np, b_np, out_np = a.numpy(), b.numpy(), out.numpy()
        candidates.append(lambda: np.matmul(a_np, b_np.T, out=out_np))
    best = float("inf")
    for product in candidates:
        product()
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            product()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return 2.0 * n * m * dim / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=21)
    parser.add_argument("--tiles", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--backend", default="auto", choices=["auto", *retrieval.BACKENDS])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-dense", action="store_true", help="do not time the dense version")
    parser.add_argument(
        "--dense-pairs", type=int, default=None,
        help="time the dense version on this many pairs and scale to all (default: all pairs)",
    )
    parser.add_argument("--backends", action="store_true", help="also compare the torch and FAISS backends")
    parser.add_argument("--backend-pairs", type=int, default=10, help="pairs the engine runs per backend")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the backend comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for NumPy's BLAS, torch and FAISS's OpenMP alike (default: each library's own)")
    args = parser.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)
        if retrieval.faiss_available():
            retrieval.import_faiss().omp_set_num_threads(args.threads)

    device = retrieval.resolve_device(args.device)
    ks = pm.DEFAULT_KS
    features = random_features(args.slides, args.tiles, args.dim, args.seed)
    pairs = pm.all_pairs(list(features))
    n, dim = args.tiles, args.dim
    print(
        f"{args.slides} slides x {n} tiles x {dim} dims, {len(pairs)} pairs; device {device}, "
        f"backend {args.backend} (self lists: {retrieval.resolve_backend(args.backend, device)}, pair blocks: "
        f"{'faiss' if args.backend == 'faiss' else 'torch'}); torch threads {torch.get_num_threads()}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )

    # On a shared machine the rate moves, so the engine, the dense version and a plain
    # matmul are timed interleaved, pair by pair, and see the same conditions.
    dense = not args.skip_dense
    dense_count = len(pairs) if args.dense_pairs is None else min(args.dense_pairs, len(pairs))
    engine_s = dense_s = 0.0
    rates: list[float] = []
    rows: list[dict] = []
    dense_rows: list[dict] = []
    normalised: dict[str, np.ndarray] = {}
    stream = pm.iter_pair_metrics(features, pairs, backend=args.backend, device=device, progress=False)
    load = [os.getloadavg()[0]]
    for i, (slide_a, slide_b) in enumerate(pairs):
        start = time.perf_counter()
        rows.append(next(stream))
        engine_s += time.perf_counter() - start
        if dense and i < dense_count:
            start = time.perf_counter()
            for slide in (slide_a, slide_b):
                if slide not in normalised:
                    normalised[slide] = pm.normalise(features[slide])
            dense_rows.append(dense_pair_metrics(normalised[slide_a], normalised[slide_b], ks))
            dense_s += time.perf_counter() - start
        if i % 10 == 0:
            rates.append(matmul_rate(n, n, dim, device, repeats=1))
    load.append(os.getloadavg()[0])
    flops = (args.slides + len(pairs)) * 2.0 * n * n * dim
    engine_rate = flops / engine_s / 1e9
    rate = float(np.median(rates))
    print(f"plain fp32 matmul ({n}x{n}x{dim}, best of NumPy and torch), timed between pairs: median {rate:.1f} GFLOP/s, "
          f"best {max(rates):.1f}; load average {load[0]:.1f} -> {load[1]:.1f}")
    print(f"engine: {engine_s:.2f} s ({engine_s / len(pairs) * 1e3:.1f} ms/pair), {engine_rate:.1f} GFLOP/s useful "
          f"(S + pairs = {args.slides + len(pairs)} blocks of n x n x d) = {engine_rate / rate:.2f} of the median "
          f"matmul rate ({rate / engine_rate:.2f}x from the bound; {max(rates) / engine_rate:.2f}x from the best)")

    if dense:
        dense_total = dense_s * len(pairs) / dense_count
        scaled = "" if dense_count == len(pairs) else f" (timed on {dense_count} pairs, scaled)"
        block_s = 2.0 * n * n * dim / rate / 1e9
        print(f"dense 2n x 2n fp32 numpy: {dense_total:.2f} s{scaled}; engine is {dense_total / engine_s:.2f}x faster")
        print(f"  per pair, in plain n x n x d products at the median rate: dense {dense_total / len(pairs) / block_s:.2f}, "
              f"engine {engine_s / len(pairs) / block_s:.2f} (NumPy computes x @ x.T as a symmetric product)")
        # The dense version's x @ x.T is a symmetric product worth 3 blocks (two self, one
        # cross) per pair; the engine needs one per pair plus one per slide.
        ideal = 3 * len(pairs) / (len(pairs) + args.slides)
        print(f"  flop ratio of the two at equal rates: 3 x pairs / (slides + pairs) = {ideal:.2f}")
        differ = [
            i for i, (d, r) in enumerate(zip(dense_rows, rows, strict=False)) if any(abs(d[m] - r[m]) > 1e-6 for m in d)
        ]
        print(f"pairs where dense fp32 and engine differ by more than 1e-6: {len(differ)} of {dense_count}")
        if differ:
            # float32 rounding can flip a near-tie in the dense version; float64 settles it.
            agree = sum(
                all(abs(v - rows[i][m]) <= 1e-6 for m, v in
                    dense_pair_metrics(normalised[pairs[i][0]], normalised[pairs[i][1]], ks, np.float64).items())
                for i in differ
            )
            print(f"  of those, the engine equals a float64 dense computation on {agree} of {len(differ)}")

    medians = {m: float(np.median([r[m] for r in rows])) for m in pm.metric_names(ks)}
    print("medians: " + ", ".join(f"{m} {v:.3f}" for m, v in medians.items()))

    if args.backends:
        compare_backends(features, pairs[: args.backend_pairs], device, args.repeats)


def compare_backends(features: dict[str, np.ndarray], pairs: list[tuple[str, str]], device: torch.device,
                     repeats: int) -> None:
    """Time the torch and FAISS backends on the same slides, interleaved, and print their ratio."""
    if not retrieval.faiss_available():
        print("FAISS is not installed: no backend comparison.")
        return
    if device.type == "cuda" and not retrieval.faiss_gpu_available():
        print("FAISS has no GPU support here: no backend comparison on the GPU.")
        return
    slide = pm.normalise(next(iter(features.values())))
    n, dim = slide.shape
    used = {s for pair in pairs for s in pair}
    subset = {s: f for s, f in features.items() if s in used}
    search = {b: np.inf for b in retrieval.BACKENDS}
    engine = {b: np.inf for b in retrieval.BACKENDS}
    rows = {}
    for backend in retrieval.BACKENDS:  # warm-up: threads, BLAS buffers
        retrieval.topk(slide[:64], slide, 11, backend=backend, device=device)
    for _ in range(repeats):
        for backend in retrieval.BACKENDS:
            start = time.perf_counter()
            retrieval.topk(slide, slide, 11, exclude_ids=np.arange(n), backend=backend, device=device)
            search[backend] = min(search[backend], time.perf_counter() - start)
            start = time.perf_counter()
            rows[backend] = pm.pair_metrics(subset, pairs, backend=backend, device=device, progress=False)
            engine[backend] = min(engine[backend], time.perf_counter() - start)
    print(f"\nbackends on the same data (best of {repeats}, interleaved; 'auto' is "
          f"{retrieval.resolve_backend('auto', device)}):")
    for backend in retrieval.BACKENDS:
        print(f"  {backend:<6} top-11 self search of one slide {search[backend]:.3f} s "
              f"({2.0 * n * n * dim / search[backend] / 1e9:.1f} GFLOP/s); engine on {len(pairs)} pairs of "
              f"{len(subset)} slides {engine[backend]:.2f} s ({engine[backend] / len(pairs) * 1e3:.0f} ms/pair)")
    print(f"  faiss / torch: self search {search['faiss'] / search['torch']:.2f}, engine "
          f"{engine['faiss'] / engine['torch']:.2f}; identical metrics: {rows['torch'].equals(rows['faiss'])}")


if __name__ == "__main__":
    main()
