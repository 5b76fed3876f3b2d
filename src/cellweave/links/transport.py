"""Pivots without a feature table: entropic Gromov-Wasserstein transport between the modalities' cell geometries.

After SCOT (Demetci et al. 2022): each modality's cells are compared only with cells of the same modality, by
shortest-path (geodesic) distances on a k-nearest-neighbour graph of their reduced features, and a coupling of
the two cell sets is sought that keeps those distances (Gromov-Wasserstein, entropic, Peyre et al. 2016). No
shared feature is needed. Where a weak link table exists, its linked features add a cross-modal cost and the
coupling is *fused* Gromov-Wasserstein (Vayer et al. 2019): ``(1 - alpha) * feature cost + alpha * distortion``.

Bounded memory: the transport runs on ``n`` cells per modality drawn by :func:`stratified_sample` (k-means strata,
each stratum represented), so it holds a few ``n x n`` matrices whatever the number of cells in the store.

Pieces:

- :func:`stratified_sample`, :func:`geodesic_distances`: the bounded sample and its geometry. The k-NN graph is
  made connected by adding the edges of the euclidean minimum spanning tree, so distances between separate
  clusters stay finite and ordered (replacing infinite distances by a constant would erase how clusters relate).
- :func:`entropic_gw`: the projected-gradient (mirror descent) solver of entropic (fused) GW: each step is a
  Sinkhorn projection of the loss gradient (square loss), warm-started from the last step's potentials.
- :func:`alignment_quality`: the unsupervised quality signal. Cells of an *independent* sample of each
  modality (not used by the transport) are projected into the shared space, matched one to one, and the score
  is the Pearson correlation of the two modalities' geodesic distances between matched cells (1: the matching
  keeps each modality's geometry; about 0: it is unrelated to it, as for a swapped or random alignment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree, shortest_path
from scipy.spatial.distance import cdist, pdist, squareform

from ..errors import InputError

#: Strata drawn from at most this many times the wanted cells (k-means on that pre-draw, not on every cell).
_PREDRAW = 10


def stratified_sample(x: np.ndarray, n: int, rng: np.random.Generator, n_strata: int = 20,
                      exclude: np.ndarray | None = None) -> np.ndarray:
    """Sorted row indices of ``n`` cells drawn across k-means strata of ``x``.

    ``min(len, 10 n)`` candidate rows are drawn uniformly and clustered into ``n_strata`` strata (k-means on
    their features); every stratum gets ``floor(n / (2 n_strata))`` cells (or all it has) and the rest is drawn
    in proportion to stratum sizes, so small populations are represented without distorting the large ones.

    Parameters
    ----------
    x
        ``(N, d)`` features of the cells to draw from.
    n
        Cells wanted (all candidates when fewer).
    rng
        Decides the pre-draw, the strata and the draw.
    n_strata
        Strata (capped at the candidates / 10).
    exclude
        Rows never drawn (e.g. another sample's), or None.

    Returns
    -------
    numpy.ndarray
        Sorted row indices.
    """
    pool = np.arange(len(x)) if exclude is None else np.setdiff1d(np.arange(len(x)), exclude)
    if len(pool) <= n:
        return pool
    from sklearn.cluster import KMeans  # imported where used: keeps `import cellweave` light

    pool = np.sort(rng.choice(pool, min(len(pool), _PREDRAW * n), replace=False))
    k = max(1, min(n_strata, len(pool) // 10))
    labels = KMeans(k, n_init=1, random_state=int(rng.integers(2**31))).fit_predict(x[pool])
    sizes = np.bincount(labels, minlength=k)
    floor = np.minimum(sizes, n // (2 * k))
    extra = (n - floor.sum()) * sizes / sizes.sum()
    take = np.minimum(sizes, floor + np.floor(extra).astype(np.int64))
    short = n - take.sum()  # rounding: give the remainder to strata with room, largest first
    for j in np.argsort(-sizes, kind="stable"):
        if short <= 0:
            break
        add = min(short, sizes[j] - take[j])
        take[j] += add
        short -= add
    chosen = [rng.choice(pool[labels == j], take[j], replace=False) for j in range(k) if take[j]]
    return np.sort(np.concatenate(chosen))


def geodesic_distances(x: np.ndarray, k: int) -> np.ndarray:
    """``(n, n)`` shortest-path distances on the symmetric k-NN graph (euclidean edge lengths) plus the euclidean
    minimum spanning tree (so the graph is connected), scaled to a maximum of 1."""
    n = len(x)
    if n < 3:
        raise InputError("transport", "cells", f"{n} cells are too few for a neighbour graph", "sample more cells")
    d = squareform(pdist(np.asarray(x, dtype=np.float64)))
    k = max(1, min(k, n - 1))
    nn = np.argpartition(d, k, axis=1)[:, :k + 1]
    rows = np.repeat(np.arange(n), nn.shape[1])
    cols = nn.ravel()
    keep = rows != cols
    knn = coo_matrix((d[rows[keep], cols[keep]], (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    tree = minimum_spanning_tree(d)
    graph = knn.maximum(knn.T).maximum(tree.maximum(tree.T))
    del d
    geo = shortest_path(graph, method="D", directed=False)
    finite = np.isfinite(geo)
    top = float(geo[finite].max())
    geo[~finite] = top  # only duplicate cells (zero distance, no tree edge) can be cut off
    return geo / top if top > 0 else geo


@dataclass(frozen=True)
class GWResult:
    """An entropic (fused) Gromov-Wasserstein coupling.

    Attributes
    ----------
    coupling
        ``(n_a, n_b)`` transport plan with the given marginals.
    loss
        Gromov-Wasserstein loss (square distortion) of the coupling.
    n_iter
        Projected-gradient steps taken.
    converged
        Whether the coupling stopped changing (``tol``) before ``max_iter``.
    """

    coupling: np.ndarray
    loss: float
    n_iter: int
    converged: bool


def _sinkhorn(p: np.ndarray, q: np.ndarray, cost: np.ndarray, eps: float, v: np.ndarray | None,
              max_iter: int = 2000, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Entropic OT plan of ``cost`` (shifted to a minimum of 0) and the scaling ``v`` to warm-start the next."""
    kernel = np.exp(-(cost - cost.min()) / eps)
    v = np.ones_like(q) if v is None else v
    for it in range(max_iter):
        u = p / np.maximum(kernel @ v, 1e-300)
        v = q / np.maximum(kernel.T @ u, 1e-300)
        if it % 20 == 19 and np.abs(u * (kernel @ v) - p).sum() < tol:
            break
    return u[:, None] * kernel * v[None, :], v


def entropic_gw(ca: np.ndarray, cb: np.ndarray, epsilon: float, *, feature_cost: np.ndarray | None = None,
                alpha: float = 0.5, max_iter: int = 100, tol: float = 1e-6, start: np.ndarray | None = None) -> GWResult:
    """Entropic Gromov-Wasserstein (fused when ``feature_cost`` is given) with uniform marginals.

    Minimises ``sum (ca[i,k] - cb[j,l])^2 T[i,j] T[k,l]`` (times ``alpha``, plus ``(1 - alpha) <M, T>`` when fused)
    minus ``epsilon`` times the entropy of ``T``, by projected gradient: ``T <- Sinkhorn(gradient, epsilon)``,
    starting from the independent coupling (as POT's ``entropic_gromov_wasserstein`` and
    ``entropic_fused_gromov_wasserstein``, which this is tested against).

    Parameters
    ----------
    ca, cb
        ``(n_a, n_a)`` and ``(n_b, n_b)`` symmetric within-modality distances (e.g. :func:`geodesic_distances`).
    epsilon
        Entropic regularisation (on the scale of distances in [0, 1]: 1e-3 .. 1e-2).
    feature_cost
        ``(n_a, n_b)`` cross-modal cost (e.g. distances of linked features, scaled to [0, 1]), or None.
    alpha
        Weight of the distortion in fused GW (ignored without ``feature_cost``).
    max_iter, tol
        Most steps, and the L1 change of the coupling below which it has converged.
    start
        Starting coupling (None: the independent coupling).

    Returns
    -------
    GWResult
    """
    if epsilon <= 0:
        raise InputError("transport", "epsilon", f"epsilon={epsilon} is not positive", "pass epsilon > 0, e.g. 5e-3")
    p, q = np.full(len(ca), 1 / len(ca)), np.full(len(cb), 1 / len(cb))
    # square loss: L(T) = const - 2 ca T cb', const = (ca^2 p) 1' + 1 (cb^2 q)'   (Peyre et al. 2016, prop. 1)
    const = ((ca**2) @ p)[:, None] + ((cb**2) @ q)[None, :]
    coupling, v = (np.outer(p, q) if start is None else start), None
    w = 1.0 if feature_cost is None else alpha
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        grad = 2 * w * (const - 2 * ca @ coupling @ cb.T)
        if feature_cost is not None:
            grad = grad + (1 - alpha) * feature_cost
        new, v = _sinkhorn(p, q, grad, epsilon, v)
        change = float(np.abs(new - coupling).sum())
        coupling = new
        if change < tol:
            converged = True
            break
    loss = float(np.sum((const - 2 * ca @ coupling @ cb.T) * coupling))
    return GWResult(coupling, loss, it, converged)


def gw_loss(ca: np.ndarray, cb: np.ndarray, coupling: np.ndarray) -> float:
    """Square Gromov-Wasserstein distortion ``sum (ca[i,k] - cb[j,l])^2 T[i,j] T[k,l]`` of a coupling."""
    p, q = coupling.sum(1), coupling.sum(0)
    const = ((ca**2) @ p)[:, None] + ((cb**2) @ q)[None, :]
    return float(np.sum((const - 2 * ca @ coupling @ cb.T) * coupling))


def random_start(n_a: int, n_b: int, rng: np.random.Generator) -> np.ndarray:
    """A random coupling with uniform marginals (a Sinkhorn projection of a random cost) to restart GW from."""
    p, q = np.full(n_a, 1 / n_a), np.full(n_b, 1 / n_b)
    return _sinkhorn(p, q, rng.random((n_a, n_b)), 0.05, None)[0]


def cluster_start(a: np.ndarray, b: np.ndarray, n_clusters: int, n_starts: int, rng: np.random.Generator) -> np.ndarray:
    """A coarse coupling of two cell sets from their cluster geometries, to start cell-level GW from.

    Each set is clustered (k-means on its features); the clusters' centroid distances (scaled to mean 1) are
    matched by exact Gromov-Wasserstein (POT's ``ot.gromov.gromov_wasserstein``, cluster sizes as marginals)
    from the independent coupling and ``n_starts - 1`` random vertex couplings, keeping the lowest loss (small problems:
    a wide search is cheap). Cells inherit their clusters' coupling, spread evenly over the cells.

    Returns
    -------
    numpy.ndarray
        ``(n_a, n_b)`` coupling with uniform marginals.
    """
    import ot  # POT only when transport runs: keeps `import cellweave` light
    from sklearn.cluster import KMeans

    k = max(2, min(n_clusters, len(a) // 10, len(b) // 10))
    labels, geo = [], []
    for x in (a, b):
        km = KMeans(k, n_init=4, random_state=int(rng.integers(2**31))).fit(x)
        d = cdist(km.cluster_centers_, km.cluster_centers_)
        labels.append(km.labels_)
        geo.append(d / max(float(d.mean()), 1e-12))
    p, q = (np.bincount(lab, minlength=k) / len(lab) for lab in labels)
    best, plan = np.inf, np.outer(p, q)
    for start in range(n_starts):
        g0 = np.outer(p, q) if start == 0 else ot.emd(p, q, rng.random((k, k)))  # exact marginals
        t, log = ot.gromov.gromov_wasserstein(geo[0], geo[1], p, q, "square_loss", G0=g0, log=True)
        if log["gw_dist"] < best:
            best, plan = float(log["gw_dist"]), t
    la, lb = labels
    sa, sb = np.bincount(la, minlength=k), np.bincount(lb, minlength=k)
    cells = plan[la][:, lb] / np.maximum(np.outer(sa[la], sb[lb]), 1)
    return _sinkhorn(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), -np.log(cells + 1e-12), 1.0, None)[0]


def barycentric(coupling: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each source cell's coupling-weighted mean of the target ``values`` (rows of the coupling normalised)."""
    rows = coupling.sum(1, keepdims=True)
    return (coupling / np.maximum(rows, 1e-300)) @ values


def alignment_quality(za: np.ndarray, zb: np.ndarray, ga: np.ndarray, gb: np.ndarray) -> float:
    """Geometry kept by a cross-modal alignment, without labels or pairs.

    Parameters
    ----------
    za, zb
        ``(n, K)`` and ``(m, K)`` shared-space coordinates of two modalities' held-out cells.
    ga, gb
        Their within-modality distances (e.g. :func:`geodesic_distances` of their own reduced features).

    Returns
    -------
    float
        The cells are matched one to one (linear assignment on shared-space squared distances) and the score is
        the Pearson correlation, over pairs of matched cells, of their distance in one modality and their
        partners' distance in the other: 1 when the alignment keeps both geometries, about 0 for an unrelated
        (random or swapped) one.
    """
    r, c = linear_sum_assignment(cdist(za, zb, "sqeuclidean"))
    iu = np.triu_indices(len(r), 1)
    x, y = ga[np.ix_(r, r)][iu], gb[np.ix_(c, c)][iu]
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def partner_agreement(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
                      gb: np.ndarray) -> float:
    """Agreement of two alignments learned from independent samples, without labels or pairs.

    Parameters
    ----------
    first, second
        Each alignment's shared-space coordinates ``(za, zb)`` of the same held-out cells of both modalities.
    gb
        The held-out target cells' within-modality distances.

    Returns
    -------
    float
        Each held-out source cell is matched one to one to the target cells under either alignment; the score is
        ``1 - mean distance between its two partners / mean distance between random target cells``: 1 when both
        alignments give the same partners, about 0 when they are unrelated (as for alignments that the data do
        not determine).
    """
    partners = []
    for za, zb in (first, second):
        r, c = linear_sum_assignment(cdist(za, zb, "sqeuclidean"))
        partners.append(c[np.argsort(r)])
    off = gb[np.triu_indices(len(gb), 1)].mean()
    return float(1 - gb[partners[0], partners[1]].mean() / off) if off > 0 else 0.0


def feature_cost(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Squared euclidean distances of two cell sets' (standardised) linked features, scaled to a maximum of 1."""
    m = cdist(fa, fb, "sqeuclidean")
    top = float(m.max())
    return m / top if top > 0 else m
