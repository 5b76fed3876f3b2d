"""Benchmark: self-kNN of one embedding with every cellweave.neighbors backend vs sklearn brute force.

The data is a Gaussian mixture (50 clusters) standing in for a cell embedding. sklearn's
``NearestNeighbors(algorithm="brute")`` runs first on the same array; each backend then reports its wall time,
its speed-up over sklearn in this run, recall@k against sklearn's indices and the largest distance difference.
Each backend is warmed up on 500 points first (numba compilation for pynndescent, CUDA context), so the times
are steady-state ones; MNN minibatch timing (two batches of 500 x dim, k) is reported too.

    python bench/neighbors.py --cells 100000 --dim 50 --k 30 --json out.json [--metric cosine]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from measure import write_json

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from cellweave.neighbors import knn, mnn_pairs
from cellweave.neighbors.faiss_index import faiss_gpu_available


def embedding(cells: int, dim: int, seed: int = 0) -> np.ndarray:
    """A float32 Gaussian mixture: 50 cluster centres, unit noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(50, dim))
    return (centres[rng.integers(0, 50, cells)] + rng.normal(size=(cells, dim))).astype(np.float32)


def backends() -> list[tuple[str, str, str]]:
    """(label, backend, device) for every backend this machine can run."""
    out = [("torch-cpu", "torch", "cpu"), ("faiss", "faiss", "cpu"), ("faiss-hnsw", "faiss-hnsw", "cpu"),
           ("pynndescent", "pynndescent", "cpu")]
    if torch.cuda.is_available():
        out.append(("torch-cuda", "torch", "cuda"))
        if faiss_gpu_available():
            out.append(("faiss-gpu", "faiss-gpu", "cuda"))
    return out


def timed_knn(x: np.ndarray, k: int, metric: str, backend: str, device: str) -> tuple[float, np.ndarray, np.ndarray]:
    data = x if device == "cpu" else torch.from_numpy(x).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    d, i = knn(data, k, metric=metric, backend=backend)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    if isinstance(d, torch.Tensor):
        d, i = d.cpu().numpy(), i.cpu().numpy()
    return seconds, d, i


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    x = embedding(args.cells, args.dim)
    t = time.perf_counter()
    ref_d, ref_i = NearestNeighbors(n_neighbors=args.k, metric=args.metric, algorithm="brute").fit(x).kneighbors()
    sklearn_s = time.perf_counter() - t
    results = {"cells": args.cells, "dim": args.dim, "k": args.k, "metric": args.metric,
               "machine": f"{platform.node()} {os.cpu_count()} cpu, torch {torch.__version__}, "
                          f"CUDA {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
               "sklearn_brute_s": sklearn_s, "backends": {}}
    print(f"{'sklearn brute':>14}: {sklearn_s:8.3f} s", flush=True)
    warm = embedding(500, args.dim, seed=1)
    for label, backend, device in backends():
        timed_knn(warm, min(args.k, 50), args.metric, backend, device)
        seconds, d, i = timed_knn(x, args.k, args.metric, backend, device)
        rec = float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(i, ref_i, strict=True)]) / args.k)
        row = {"seconds": seconds, "speedup_vs_sklearn": sklearn_s / seconds, "recall": rec,
               "max_abs_distance_diff": float(np.max(np.abs(d - ref_d)))}
        results["backends"][label] = row
        print(f"{label:>14}: {seconds:8.3f} s  {row['speedup_vs_sklearn']:6.2f}x sklearn  recall {rec:.4f}  "
              f"max |d - d_sklearn| {row['max_abs_distance_diff']:.2e}", flush=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.from_numpy(embedding(500, args.dim, seed=s)).to(device) for s in (2, 3))
    mnn_pairs(a, b, k=args.k, metric="cosine")
    t = time.perf_counter()
    for _ in range(20):
        n_pairs = mnn_pairs(a, b, k=args.k, metric="cosine").shape[0]
    results["mnn_500x500_ms"] = (time.perf_counter() - t) / 20 * 1e3
    print(f"mnn_pairs 500 x 500 on {device}: {results['mnn_500x500_ms']:.2f} ms ({n_pairs} pairs)")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
