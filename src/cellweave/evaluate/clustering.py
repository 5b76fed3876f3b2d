"""Clusterings scored against the labels: k-means (FAISS) and Leiden over a resolution grid (igraph).

NMI and ARI follow scib-metrics: k-means with as many clusters as labels; Leiden on the UMAP connectivities
of the 15-neighbour graph at resolutions 0.2, 0.4, ... 2.0, keeping the resolution with the best NMI.
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .graph import KnnGraph

LEIDEN_RESOLUTIONS = tuple(2 * x / 10 for x in range(1, 11))
_IGRAPH_RNG = threading.Lock()  # igraph's random generator is process-global
PARALLEL_LEIDEN_MIN_CELLS = 20_000  # below this, starting worker processes costs more than it saves


def _kmeans_plus_plus(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeds (as sklearn: ``2 + log k`` candidates per step, the best kept)."""
    n = len(X)
    trials = 2 + int(np.log(k))
    sq = np.einsum("ij,ij->i", X, X, dtype=np.float64)

    def d2(C: np.ndarray) -> np.ndarray:
        return np.maximum(sq[None, :] - 2 * (C @ X.T) + np.einsum("ij,ij->i", C, C)[:, None], 0)

    centers = [X[rng.integers(n)]]
    closest = d2(centers[0][None])[0]
    for _ in range(1, k):
        candidates = rng.choice(n, size=trials, p=closest / closest.sum()) if closest.sum() > 0 else rng.integers(n, size=trials)
        options = np.minimum(closest[None, :], d2(X[candidates]))
        best = int(np.argmin(options.sum(axis=1)))
        centers.append(X[candidates[best]])
        closest = options[best]
    return np.ascontiguousarray(centers, dtype=np.float32)


def kmeans_labels(
    X: np.ndarray, n_clusters: int, *, seed: int = 0, n_init: int = 20, n_iter: int = 100, points_per_cluster: int = 2048,
) -> np.ndarray:
    """k-means cluster of every cell: FAISS Lloyd iterations from k-means++ seeds, best of ``n_init``.

    Trained on at most ``points_per_cluster x n_clusters`` random cells, then every cell is assigned to its
    nearest centroid.
    """
    import faiss

    X = np.ascontiguousarray(X, dtype=np.float32)
    k = int(n_clusters)
    rng = np.random.default_rng(seed)
    limit = points_per_cluster * k
    train = X if len(X) <= limit else X[np.sort(rng.choice(len(X), size=limit, replace=False))]
    best, best_obj = None, np.inf
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # small problems: OpenMP start-up costs more than it saves
    try:
        for _ in range(n_init):
            km = faiss.Kmeans(X.shape[1], k, niter=n_iter, nredo=1, seed=int(rng.integers(2**31 - 1)), verbose=False,
                              max_points_per_centroid=-(-len(train) // k), min_points_per_centroid=1)
            km.train(train, init_centroids=_kmeans_plus_plus(train, k, rng))
            if km.obj[-1] < best_obj:
                best, best_obj = km, km.obj[-1]
    finally:
        faiss.omp_set_num_threads(threads)
    _, assigned = best.index.search(X, 1)
    return assigned.ravel().astype(np.int64)


def nmi_ari(labels: np.ndarray | pd.Series, clusters: np.ndarray) -> dict[str, float]:
    """Arithmetic-mean NMI and ARI between labels and a clustering (sklearn)."""
    labels = np.asarray(labels)
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters, average_method="arithmetic")),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


def nmi_ari_kmeans(X: np.ndarray, labels: np.ndarray | pd.Series, *, seed: int = 0) -> dict[str, float]:
    """NMI and ARI of k-means with one cluster per label; NaN with a single label."""
    n_labels = len(pd.unique(np.asarray(labels)))
    if n_labels < 2:
        return {"nmi": float("nan"), "ari": float("nan")}
    return nmi_ari(labels, kmeans_labels(X, n_labels, seed=seed))


def _igraph(conn):
    """UMAP connectivities as an igraph: directed with both edge directions, then undirected "each" (as scanpy
    and scib-metrics).
    """
    import igraph

    g = igraph.Graph.Weighted_Adjacency(conn, mode="directed")
    g.to_undirected(mode="each")
    return g


def _leiden(g, resolution: float, seed: int) -> np.ndarray:
    import igraph

    with _IGRAPH_RNG:
        igraph.set_random_number_generator(random.Random(seed))
        try:
            membership = g.community_leiden(objective_function="modularity", weights="weight",
                                            resolution=resolution).membership
        finally:
            igraph.set_random_number_generator(random)
    return np.asarray(membership, dtype=np.int64)


def _leiden_many(conn, resolutions: list[float], seed: int) -> list[np.ndarray]:
    """Leiden at several resolutions on one graph (a process pool's task)."""
    g = _igraph(conn)
    return [_leiden(g, r, seed) for r in resolutions]


def leiden(graph: KnnGraph, resolution: float, *, n_neighbors: int = 15, seed: int = 42) -> np.ndarray:
    """Leiden clusters (modularity, igraph) of the UMAP connectivities, seeded as scib-metrics."""
    return _leiden(_igraph(graph.connectivities(n_neighbors)), resolution, seed)


def leiden_grid(
    graph: KnnGraph, resolutions: tuple[float, ...] = LEIDEN_RESOLUTIONS, *, n_neighbors: int = 15, seed: int = 42,
    n_jobs: int = 1,
) -> dict[float, np.ndarray]:
    """Leiden clusters at each resolution (shared by NMI/ARI and the isolated-label F1).

    igraph holds the GIL, so with ``n_jobs > 1`` (and at least :data:`PARALLEL_LEIDEN_MIN_CELLS` cells) the
    resolutions are split over a pool of ``n_jobs`` processes, each building the graph once; every resolution
    is seeded on its own, so the clusters do not depend on ``n_jobs``.
    """
    conn = graph.connectivities(n_neighbors)
    grid = [float(r) for r in resolutions]
    jobs = min(int(n_jobs), len(grid))
    if jobs <= 1 or graph.n_cells < PARALLEL_LEIDEN_MIN_CELLS:
        return dict(zip(grid, _leiden_many(conn, grid, seed), strict=True))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    parts = [grid[j::jobs] for j in range(jobs)]  # interleaved: costs grow with the resolution
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method)) as pool:
        results = list(pool.map(_leiden_many, [conn] * jobs, parts, [seed] * jobs))
    found = {r: labels for part, out in zip(parts, results, strict=True) for r, labels in zip(part, out, strict=True)}
    return {r: found[r] for r in grid}


def nmi_ari_leiden(clusterings: dict[float, np.ndarray], labels: np.ndarray | pd.Series) -> dict[str, float]:
    """NMI and ARI at the resolution with the best NMI (scib-metrics); NaN with a single label."""
    if len(pd.unique(np.asarray(labels))) < 2 or not clusterings:
        return {"nmi": float("nan"), "ari": float("nan"), "resolution": float("nan")}
    scores = {r: nmi_ari(labels, c) for r, c in clusterings.items()}
    best = max(scores, key=lambda r: scores[r]["nmi"])
    return {**scores[best], "resolution": best}
