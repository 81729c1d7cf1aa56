"""Time the kNN probe's search with FAISS and with the torch backend, on the same data, in one process.

    python benchmarks/knn_probe.py                                  # 10k x 1k, 30k x 3k, 100k x 7,180; D = 768
    python benchmarks/knn_probe.py --sizes 100000x7180 --repeats 3  # eva CRC's shape only
    python benchmarks/knn_probe.py --device cuda                    # on a GPU (FAISS needs its GPU build)
    python benchmarks/knn_probe.py --sizes 50000x2000 --ivf         # also an IVF index: time and recall

Random embeddings shaped like eva's CRC (NCT-CRC-HE-100K: about 100,000 training patches;
CRC-VAL-HE-7K: 7,180 queries; 9 classes; D = 768): class means plus a component shared by
every patch plus noise, so that similarities are neither all alike nor all far apart.

For each size the two backends of :class:`pathbench.retrieval.InnerProductIndex` are timed
interleaved (backend A, backend B, A, B, ...) so that on a shared machine both see the same
conditions; each figure is the best of the repeats. Three things are timed per backend:

1. ``build``: the index (FAISS: ``IndexFlatIP.add``; torch: keeping the array, or uploading it);
2. ``search``: the top-``2k`` search the probe asks for first (k = 20: 40 candidates);
3. ``probe``: ``KnnProbe.predict_scores`` end to end (search, float64 rescoring of the
   candidates, any second search, the vote).

It then checks that both backends gave the same neighbours and the same predictions, and
that a dense float64 computation on the first queries agrees. ``--ivf`` adds a FAISS IVF
index (:func:`pathbench.retrieval.ivf_settings`): its training time, search time and recall
of the exact top-20.

Measured on a 2-core CPU shared with other jobs (load average 1-3; OpenBLAS for NumPy and
FAISS 1.15), ``--sizes 100000x7180,30000x3000,10000x1000 --repeats 2``, then ``--threads 1``:

    size          threads  backend  search s  probe s  search GFLOP/s
    100000x7180   2        torch      8.59     7.41     128
    100000x7180   2        faiss      5.93     6.25     186    (torch / faiss 1.45)
    30000x3000    2        torch      0.81     1.00     170
    30000x3000    2        faiss      0.71     0.89     195    (1.14)
    10000x1000    2        torch      0.11     0.16     136
    10000x1000    2        faiss      0.08     0.13     188    (1.38)
    100000x7180   1        torch     12.98    13.75      85
    100000x7180   1        faiss     11.25    11.78      98    (1.15)
    10000x1000    1        torch      0.19     0.24      80
    10000x1000    1        faiss      0.17     0.23      91    (1.14)

(a probe time below its search time is the spread between repeats on a shared machine).
Both backends gave identical neighbours, scores and predictions at every size, equal to a
dense float64 computation. So on a CPU ``backend="auto"`` is FAISS when it is installed
(:func:`pathbench.heads.knn.resolve_knn_backend`). With ``--ivf`` at 100,000 x 7,180 the IVF
index (nlist 1,265, nprobe 79) took 25 s to build and found 55 % of the exact top-20 on this
data, whose classes barely cluster; its kNN predictions agreed with exact search's on 93.7 %
of 2,000 queries.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from pathbench import retrieval
from pathbench.heads.knn import KnnProbe


def crc_like(n_train: int, n_query: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, ...]:
    """``(train_x, train_y, query_x, query_y)``: float32 class means + shared component + noise."""
    rng = np.random.default_rng(seed)
    means = 0.4 * rng.standard_normal((classes, dim)).astype(np.float32)
    shared = rng.standard_normal(dim).astype(np.float32) * 2.0

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        x = means[y] + shared + 2.5 * rng.standard_normal((n, dim), dtype=np.float32)
        return x.astype(np.float32), y

    train_x, train_y = draw(n_train)
    query_x, query_y = draw(n_query)
    return train_x, train_y, query_x, query_y


def timed(on: torch.device, fn, *args, **kwargs):
    """``(seconds, fn(*args, **kwargs))``, waiting for the GPU when ``on`` is one."""
    if on.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if on.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000x1000,30000x3000,100000x7180",
                        help="comma-separated TRAINxQUERY sizes")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-queries", type=int, default=200, help="queries checked against dense float64")
    parser.add_argument("--ivf", action="store_true", help="also time a FAISS IVF index and its recall")
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
    backends = ["torch"] + (["faiss"] if retrieval.faiss_available() else [])
    if "faiss" not in backends:
        print("FAISS is not installed: only the torch backend is timed.")
    if device.type == "cuda" and not retrieval.faiss_gpu_available():
        backends = ["torch"]
        print("FAISS has no GPU support here: only the torch backend is timed on the GPU.")
    faiss_threads = retrieval.import_faiss().omp_get_max_threads() if "faiss" in backends else None
    print(f"device {device}; torch threads {torch.get_num_threads()}, FAISS OpenMP threads {faiss_threads}, "
          f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; D = {args.dim}, k = {args.k}")
    header = f"{'size':<14} {'backend':<8} {'build s':>8} {'search s':>9} {'probe s':>8} {'GFLOP/s':>8}"
    for size in args.sizes.split(","):
        n_train, n_query = (int(v) for v in size.lower().split("x"))
        train_x, train_y, query_x, query_y = crc_like(n_train, n_query, args.dim, args.classes, args.seed)
        train_n = retrieval_normalise(train_x)
        query_n = retrieval_normalise(query_x)
        candidates = min(n_train, max(2 * args.k, args.k + 16))
        best = {b: {"build": np.inf, "search": np.inf, "probe": np.inf} for b in backends}
        results = {}
        for _ in range(args.repeats):
            for backend in backends:
                t_build, index = timed(device, retrieval.InnerProductIndex, train_n, backend=backend,
                                       device=device, kind="flat")
                index.search(query_n[:64], candidates)  # warm-up (threads, GPU kernels)
                t_search, _ = timed(device, index.search, query_n, candidates)
                probe = KnnProbe(args.classes, k=args.k, backend=backend, device=str(device), index="flat")
                probe.fit(train_x, train_y)
                t_probe, scores = timed(device, probe.predict_scores, query_x)
                results[backend] = (probe, scores)
                for name, value in (("build", t_build), ("search", t_search), ("probe", t_probe)):
                    best[backend][name] = min(best[backend][name], value)
        print(f"\n{n_train} train x {n_query} queries, load average {os.getloadavg()[0]:.1f}")
        print(header)
        flops = 2.0 * n_train * n_query * args.dim
        for backend in backends:
            b = best[backend]
            print(f"{size:<14} {backend:<8} {b['build']:>8.3f} {b['search']:>9.2f} {b['probe']:>8.2f} "
                  f"{flops / b['search'] / 1e9:>8.1f}")
        if len(backends) == 2:
            ratio = best["torch"]["search"] / best["faiss"]["search"]
            print(f"search: torch / faiss = {ratio:.2f} ({'faiss' if ratio > 1 else 'torch'} faster); probe: "
                  f"torch / faiss = {best['torch']['probe'] / best['faiss']['probe']:.2f}")
            (p1, s1), (p2, s2) = results["torch"], results["faiss"]
            same_ids = np.array_equal(p1.kneighbors(query_x[: args.check_queries])[1],
                                      p2.kneighbors(query_x[: args.check_queries])[1])
            print(f"same predictions: {np.array_equal(s1.argmax(1), s2.argmax(1))}; identical scores: "
                  f"{np.array_equal(s1, s2)}; same neighbours on the first {args.check_queries} queries: {same_ids}")
        probe, scores = results[backends[-1]]
        check = min(args.check_queries, n_query)
        exact = query_n[:check].astype(np.float64) @ train_n.astype(np.float64).T
        order = np.argsort(-exact, axis=1, kind="stable")[:, : args.k]
        print(f"dense float64 neighbours equal the probe's on {check} queries: "
              f"{np.array_equal(order, probe.kneighbors(query_x[:check])[1])}; kNN macro accuracy "
              f"{probe.score(query_x, query_y):.4f}")
        if args.ivf and "faiss" in backends:
            t_build, ivf = timed(device, retrieval.InnerProductIndex, train_n, backend="faiss", device=device,
                                 kind="ivf")
            t_search, (_, found) = timed(device, ivf.search, query_n, args.k)
            _, truth = results["faiss"][0].index_.search(query_n, args.k)
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth, strict=True)])
            ivf_probe = KnnProbe(args.classes, k=args.k, backend="faiss", device=str(device), index="ivf")
            agree = np.mean(ivf_probe.fit(train_x, train_y).predict(query_x) == scores.argmax(1))
            print(f"IVF nlist {ivf.nlist}, nprobe {ivf.nprobe}: build (train + add) {t_build:.2f} s, top-{args.k} "
                  f"search {t_search:.2f} s (flat {best['faiss']['search']:.2f} s at top-{candidates}); recall of "
                  f"the exact top-{args.k}: {recall:.4f}; kNN predictions equal to exact search's: {agree:.4f}, "
                  f"macro accuracy {ivf_probe.score(query_x, query_y):.4f}")


def retrieval_normalise(x: np.ndarray) -> np.ndarray:
    from pathbench.benches.plism_metrics import normalise

    return normalise(x)


if __name__ == "__main__":
    main()
