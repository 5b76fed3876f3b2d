"""First pivots without any feature link: match the two modalities' cluster geometries by Gromov-Wasserstein.

Each modality's sampled cells are clustered (k-means on their reduced features); the clusters' centroid distance
matrices, scaled to mean 1, are matched by Gromov-Wasserstein optimal transport (POT's
``ot.gromov.gromov_wasserstein``, square loss, cluster sizes as marginals), which needs no shared feature: it
pairs clusters whose distances to the other clusters agree (the idea of SCOT, Demetci et al. 2022, at the cluster
level). The problem is not convex, so it starts from the independent coupling and from ``n_starts - 1`` random
couplings and keeps the coupling of lowest Gromov-Wasserstein loss. Each source cell then pivots with a random cell
of a target cluster drawn from its cluster's coupling row; the pivot's cost is one minus that cluster pair's share
of the row, so :func:`~cellweave.links.pivots.drop_worst` drops the least certain pairs first.

Memory: the sampled cells' reduced features and ``n_clusters^2`` matrices.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from .pivots import Pivots

#: Entropic regularisation of the Sinkhorn couplings that start the random restarts.
_START_REG = 0.05


def _clusters(x: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K-means labels of the rows and the centroids' distance matrix scaled to mean 1."""
    from sklearn.cluster import KMeans  # imported where used: keeps `import cellweave` light

    km = KMeans(n_clusters, n_init=4, random_state=seed).fit(x)
    d = cdist(km.cluster_centers_, km.cluster_centers_)
    return km.labels_, d / max(float(d.mean()), 1e-12)


def match_geometry(a: np.ndarray, b: np.ndarray, n_clusters: int, n_starts: int,
                   rng: np.random.Generator) -> tuple[Pivots, float]:
    """Pivots between rows of ``a`` and ``b`` (different feature spaces) from their cluster geometries.

    Parameters
    ----------
    a, b
        ``(n_a, p)`` and ``(n_b, q)`` reduced features of the two modalities' sampled cells.
    n_clusters
        Clusters per modality (capped at a tenth of the cells, at least 2).
    n_starts
        Gromov-Wasserstein starts; the lowest loss wins.
    rng
        Decides the clusterings, the random starts and the cells drawn.

    Returns
    -------
    pivots, loss
        One pivot per row of ``a``, and the Gromov-Wasserstein loss of the coupling used.
    """
    import ot  # POT (and the jax it may load) only when geometry is matched: keeps `import cellweave` light

    k = max(2, min(n_clusters, len(a) // 10, len(b) // 10))
    la, da = _clusters(a, k, int(rng.integers(2**31)))
    lb, db = _clusters(b, k, int(rng.integers(2**31)))
    p = np.bincount(la, minlength=k) / len(la)
    q = np.bincount(lb, minlength=k) / len(lb)
    best_loss, coupling = np.inf, np.outer(p, q)
    for start in range(n_starts):
        g0 = np.outer(p, q) if start == 0 else ot.sinkhorn(p, q, rng.random((k, k)), _START_REG)
        t, log = ot.gromov.gromov_wasserstein(da, db, p, q, "square_loss", G0=g0, log=True)
        if log["gw_dist"] < best_loss:
            best_loss, coupling = float(log["gw_dist"]), t
    rows = np.clip(coupling, 0.0, None)
    rows /= rows.sum(1, keepdims=True)
    target_cluster = np.minimum((np.cumsum(rows, 1)[la] < rng.random(len(la))[:, None]).sum(1), k - 1)
    order = np.argsort(lb, kind="stable")
    sizes = np.bincount(lb, minlength=k)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pick = starts[target_cluster] + (rng.random(len(la)) * sizes[target_cluster]).astype(np.int64)
    return Pivots(np.arange(len(a)), order[pick], 1.0 - rows[la, target_cluster]), best_loss
