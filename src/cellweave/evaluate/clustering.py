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


def kmeans_labels(X: np.ndarray, n_clusters: int, *, seed: int = 0, n_redo: int = 5, n_iter: int = 50) -> np.ndarray:
    """k-means cluster of every cell with FAISS (best of ``n_redo`` runs; trained on at most 2,048 cells
    per cluster, then every cell assigned to its nearest centroid).
    """
    import faiss

    X = np.ascontiguousarray(X, dtype=np.float32)
    km = faiss.Kmeans(X.shape[1], int(n_clusters), niter=n_iter, nredo=n_redo, seed=int(seed),
                      max_points_per_centroid=2048, verbose=False)
    km.train(X)
    _, assigned = km.index.search(X, 1)
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


def leiden(graph: KnnGraph, resolution: float, *, n_neighbors: int = 15, seed: int = 42) -> np.ndarray:
    """Leiden clusters (modularity, igraph) of the UMAP connectivities, seeded as scib-metrics."""
    import igraph

    # directed with both edge directions, then undirected "each" (as scanpy and scib-metrics)
    g = igraph.Graph.Weighted_Adjacency(graph.connectivities(n_neighbors), mode="directed")
    g.to_undirected(mode="each")
    with _IGRAPH_RNG:
        igraph.set_random_number_generator(random.Random(seed))
        try:
            membership = g.community_leiden(objective_function="modularity", weights="weight",
                                            resolution=resolution).membership
        finally:
            igraph.set_random_number_generator(random)
    return np.asarray(membership, dtype=np.int64)


def leiden_grid(
    graph: KnnGraph, resolutions: tuple[float, ...] = LEIDEN_RESOLUTIONS, *, n_neighbors: int = 15, seed: int = 42,
) -> dict[float, np.ndarray]:
    """Leiden clusters at each resolution (shared by NMI/ARI and the isolated-label F1)."""
    return {float(r): leiden(graph, r, n_neighbors=n_neighbors, seed=seed) for r in resolutions}


def nmi_ari_leiden(clusterings: dict[float, np.ndarray], labels: np.ndarray | pd.Series) -> dict[str, float]:
    """NMI and ARI at the resolution with the best NMI (scib-metrics); NaN with a single label."""
    if len(pd.unique(np.asarray(labels))) < 2 or not clusterings:
        return {"nmi": float("nan"), "ari": float("nan"), "resolution": float("nan")}
    scores = {r: nmi_ari(labels, c) for r, c in clusterings.items()}
    best = max(scores, key=lambda r: scores[r]["nmi"])
    return {**scores[best], "resolution": best}
