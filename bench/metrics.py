"""Benchmark: the cellweave metric suite on a simulated embedding, beside scib-metrics' Benchmarker.

The embedding is a 30-dim Gaussian mixture: cell types (uneven sizes), batches and two paired modalities
(every cell measured in both, the pair sharing its cell type), each shifting the cells a little; the
"unintegrated" representation shifts them a lot (for PCR comparison). Runs, each in its own subprocess
while the parent samples the RSS of its process tree every 50 ms:

- ``cellweave_full``: every metric (bio, batch, modality, matching with FOSCTTM and label transfer);
- ``cellweave_scib_set``: labels and batches only, the metric set of the Benchmarker below;
- ``scib_benchmarker`` (at most 100,000 cells): scib-metrics' Benchmarker with Leiden NMI/ARI switched on, its
  neighbours from the same kNN call as cellweave's (``cellweave.neighbors.knn_graph``, the cell first).

    python bench/metrics.py --cells 100000 --json out.json [--dims 30] [--data DIR] [--only NAME ...]

Seconds are wall time of the evaluation (kNN included, data loading not); compile times (numba, JAX) count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from measure import measure as run_measured
from measure import write_json

RUNS = ("cellweave_full", "cellweave_scib_set", "scib_benchmarker")
SCIB_MAX_CELLS = 100_000
N_LABELS, N_BATCHES = 12, 3
# scib-metrics' result rows -> cellweave's (group, metric); BRAS has no cellweave twin (timing only)
SCIB_NAMES = {
    "silhouette_label": ("bio", "silhouette_label"),
    "isolated_labels": ("bio", "isolated_label_silhouette"),
    "nmi_ari_cluster_labels_kmeans_nmi": ("bio", "nmi_kmeans"),
    "nmi_ari_cluster_labels_kmeans_ari": ("bio", "ari_kmeans"),
    "nmi_ari_cluster_labels_leiden_nmi": ("bio", "nmi_leiden"),
    "nmi_ari_cluster_labels_leiden_ari": ("bio", "ari_leiden"),
    "clisi_knn": ("bio", "clisi"),
    "ilisi_knn": ("batch", "ilisi"),
    "kbet_per_label": ("batch", "kbet"),
    "graph_connectivity": ("batch", "graph_connectivity"),
    "pcr_comparison": ("batch", "pcr_comparison"),
}


def simulate(cells: int, dims: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A paired two-modality Gaussian-mixture embedding: ``cells`` rows, half per modality."""
    rng = np.random.default_rng(seed)
    n = cells // 2
    weights = rng.dirichlet(np.full(N_LABELS, 2.0))
    label = rng.choice(N_LABELS, size=n, p=weights)
    batch = rng.integers(0, N_BATCHES, size=n)
    centers = rng.normal(scale=2.5, size=(N_LABELS, dims))
    batch_shift = rng.normal(size=(N_BATCHES, dims))
    modality_shift = rng.normal(size=(2, dims))
    state = centers[label] + 0.6 * rng.normal(size=(n, dims))  # each cell's biology, shared by its two assays
    X, X_pre = [], []
    for m in range(2):
        noise = 0.5 * rng.normal(size=(n, dims))
        X.append(state + noise + 0.3 * batch_shift[batch] + 0.3 * modality_shift[m])
        X_pre.append(state + noise + 2.0 * batch_shift[batch] + 3.0 * modality_shift[m])
    ids = np.array([f"cell{i}" for i in range(n)])
    return {
        "X": np.concatenate(X).astype(np.float32),
        "X_pre": np.concatenate(X_pre).astype(np.float32),
        "label": np.tile(np.array([f"type{k}" for k in range(N_LABELS)])[label], 2),
        "batch": np.tile(np.array([f"batch{b}" for b in range(N_BATCHES)])[batch], 2),
        "modality": np.repeat(["rna", "adt"], n),
        "pair": np.tile(ids, 2),
    }


def prepare(data: Path, cells: int, dims: int) -> Path:
    """Simulate once into ``data/embedding.npz``."""
    path = data / "embedding.npz"
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        np.savez(path, **simulate(cells, dims))
    return path


def _neighbors(X: np.ndarray, n_neighbors: int):
    """``n_neighbors`` per cell, the cell first (scib-metrics' convention), from cellweave.neighbors."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    from cellweave.neighbors import knn_graph

    d, i = knn_graph(X, n_neighbors - 1)
    d, i = np.asarray(d), np.asarray(i)
    rows = np.arange(len(X))[:, None]
    return NeighborsResults(indices=np.concatenate([rows, i], axis=1),
                            distances=np.concatenate([np.zeros((len(X), 1), d.dtype), d], axis=1))


def run_one(name: str, path: Path) -> dict:
    """One run in this process; returns seconds and metric values."""
    import pandas as pd

    data = dict(np.load(path, allow_pickle=False))
    obs = pd.DataFrame({k: data[k] for k in ("label", "batch", "modality", "pair")})
    if name.startswith("cellweave"):
        from cellweave.evaluate import evaluate_embedding

        full = name == "cellweave_full"
        t = time.perf_counter()
        res = evaluate_embedding(data["X"], obs, label_key="label", batch_key="batch",
                                 modality_key="modality" if full else None, pair_key="pair" if full else None,
                                 X_pre=data["X_pre"], name=name)
        seconds = time.perf_counter() - t
        doc = res.to_dict()
        details = {k: v for k, v in doc["details"].items() if k != "isolated_labels"}
        return {"seconds": seconds, "steps": res.seconds, "metrics": doc["metrics"], "aggregate": doc["aggregate"],
                "details": details}
    if name == "scib_benchmarker":
        import anndata as ad
        from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

        adata = ad.AnnData(obs=obs.astype(str), obsm={"X_emb": data["X"], "X_pre": data["X_pre"]})
        t = time.perf_counter()
        bm = Benchmarker(adata, batch_key="batch", label_key="label", embedding_obsm_keys=["X_emb"],
                         pre_integrated_embedding_obsm_key="X_pre",
                         bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=True),
                         batch_correction_metrics=BatchCorrection(), n_jobs=2, progress_bar=False)
        bm.prepare(neighbor_computer=_neighbors)
        bm.benchmark()
        seconds = time.perf_counter() - t
        table = bm.get_results(min_max_scale=False, clean_names=False)
        values = {str(k): float(v) for k, v in table.loc["X_emb"].items() if k in SCIB_NAMES or k == "bras"}
        return {"seconds": seconds, "metrics": values}
    raise ValueError(name)


def measure(name: str, path: Path) -> dict:
    """Run one benchmark in a subprocess and sample its process tree's RSS."""
    return run_measured([__file__, "--run-one", name, "--embedding", str(path)])


def compare(ours: dict, scib: dict) -> dict:
    """cellweave minus scib-metrics for each metric both compute."""
    diffs = {}
    for scib_name, (group, metric) in SCIB_NAMES.items():
        a = ours.get("metrics", {}).get(group, {}).get(metric)
        b = scib.get("metrics", {}).get(scib_name)
        if a is not None and b is not None:
            diffs[metric] = a - b
    return diffs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--dims", type=int, default=30)
    p.add_argument("--data", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--only", nargs="*", choices=RUNS)
    p.add_argument("--run-one", choices=RUNS, help=argparse.SUPPRESS)
    p.add_argument("--embedding", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_one:
        print(json.dumps(run_one(args.run_one, args.embedding)))
        return
    data = args.data or Path(".bench") / f"metrics-{args.cells}-{args.dims}"
    path = prepare(data, args.cells, args.dims)
    results = {"cells": args.cells, "dims": args.dims, "labels": N_LABELS, "batches": N_BATCHES, "modalities": 2,
               "machine": f"{platform.node()} {os.cpu_count()} cpu, Python {platform.python_version()}"}
    for name in args.only or RUNS:
        if name == "scib_benchmarker" and args.cells > SCIB_MAX_CELLS:
            continue
        results[name] = r = measure(name, path)
        line = r.get("error") or f"{r['seconds']:>9,.1f} s   peak RSS {r['peak_rss_mb']:>8,.0f} MB"
        print(f"{name:>20}: {line}", flush=True)
    ours, scib = results.get("cellweave_scib_set", {}), results.get("scib_benchmarker", {})
    if "seconds" in ours and "seconds" in scib:
        results["speedup_vs_scib"] = scib["seconds"] / ours["seconds"]
        results["metric_differences_vs_scib"] = compare(ours, scib)
        print(f"scib-metrics / cellweave (same metric set) = {results['speedup_vs_scib']:.2f}x")
        print("cellweave - scib-metrics: " + ", ".join(f"{k} {v:+.3f}" for k, v in results["metric_differences_vs_scib"].items()))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
