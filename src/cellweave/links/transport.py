"""Pivots without a feature table: Gromov-Wasserstein transport between the modalities' cell geometries.

After SCOT (Demetci et al. 2022): each modality's cells are compared only with cells of the same modality, and a
coupling of the two cell sets is sought that keeps those distances (Gromov-Wasserstein, Memoli 2011; entropic,
Peyre et al. 2016). No shared feature is needed. Where a weak link table exists, its linked features add a
cross-modal cost and the coupling is *fused* Gromov-Wasserstein (Vayer et al. 2019):
``(1 - alpha) * feature cost + alpha * distortion``. The solvers are POT's.

Bounded memory: the transport runs on ``n`` cells per modality drawn by :func:`stratified_sample` (k-means strata,
each stratum represented), so it holds a few ``n x n`` matrices whatever the number of cells in the store.

Pieces:

- :func:`stratified_sample`: the bounded sample.
- :func:`cell_distances`: its geometry: euclidean or cosine distances of the reduced features, or their
  shortest paths on a k-NN graph (made connected by the minimum spanning tree). On simulated RNA vs ADT twins and
  on real CITE-seq, the plain distances are kept better between the modalities than k-NN geodesics (the true
  pairing's GW loss is close to the lowest found, while for 15-NN geodesics it is 3-4 times higher), so plain
  distances are the default.
- :func:`gromov_wasserstein`: exact GW from many starts (the objective is non-convex: one start from the
  independent coupling often ends with cell types swapped), the lowest loss kept, then an entropic step.
- :func:`alignment_quality`: an unsupervised quality signal. Cells of a sample not used by the transport are
  projected into the shared space, matched one to one, and the score is the Pearson correlation of the two
  modalities' geodesic distances between matched cells (1: the matching keeps each modality's geometry; about
  0: it is unrelated to it, as for a swapped or random alignment).
- :func:`partner_agreement`: do two alignments give the same partners?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree, shortest_path
from scipy.spatial.distance import cdist, pdist, squareform

from ..errors import InputError

#: Within-modality metrics of :func:`cell_distances`.
METRICS = ("euclidean", "cosine")
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


def cell_distances(x: np.ndarray, metric: str = "euclidean", k: int = 0) -> np.ndarray:
    """``(n, n)`` within-modality distances of cells, scaled to a maximum of 1.

    Parameters
    ----------
    x
        ``(n, d)`` reduced features of the cells.
    metric
        ``"euclidean"``, or ``"cosine"``: euclidean distances of the rows scaled to unit length (a monotone
        function of the cosine distance), which ignores each cell's overall magnitude.
    k
        0: the distances themselves. ``k >= 1``: shortest-path (geodesic) distances on the symmetric k-NN graph
        with those edge lengths, plus the minimum spanning tree (so the graph is connected).
    """
    n = len(x)
    if n < 3:
        raise InputError("transport", "cells", f"{n} cells are too few for a transport", "sample more cells")
    if metric not in METRICS:
        raise InputError("transport", "metric", f"unknown metric {metric!r}", f"use one of: {', '.join(METRICS)}")
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = squareform(pdist(x))
    if k >= 1 and k < n - 1:
        nn = np.argpartition(d, k, axis=1)[:, :k + 1]
        rows = np.repeat(np.arange(n), nn.shape[1])
        cols = nn.ravel()
        keep = rows != cols
        knn = coo_matrix((d[rows[keep], cols[keep]], (rows[keep], cols[keep])), shape=(n, n)).tocsr()
        tree = minimum_spanning_tree(d)
        d = shortest_path(knn.maximum(knn.T).maximum(tree.maximum(tree.T)), method="D", directed=False)
        finite = np.isfinite(d)
        d[~finite] = d[finite].max()  # only duplicate cells (zero distance, no tree edge) can be cut off
    top = float(d.max())
    return d / top if top > 0 else d


def geodesic_distances(x: np.ndarray, k: int) -> np.ndarray:
    """Euclidean k-NN-graph geodesic distances (:func:`cell_distances` with ``metric="euclidean"``)."""
    return cell_distances(x, "euclidean", max(1, k))


@dataclass(frozen=True)
class GWResult:
    """A Gromov-Wasserstein coupling of two cell sets.

    Attributes
    ----------
    coupling
        ``(n_a, n_b)`` transport plan with uniform marginals.
    loss
        Square Gromov-Wasserstein distortion of the coupling.
    distortion
        ``loss`` relative to the independent coupling's (0: isometric; 1: no better than pairing cells at
        random); comparable between geometries, unlike ``loss``.
    start
        Which exact-GW start gave the lowest loss (0: the independent coupling).
    """

    coupling: np.ndarray
    loss: float
    distortion: float
    start: int


def gromov_wasserstein(ca: np.ndarray, cb: np.ndarray, epsilon: float, n_starts: int, rng: np.random.Generator, *,
                       feature_cost: np.ndarray | None = None, alpha: float = 0.5) -> GWResult:
    """Gromov-Wasserstein coupling (fused when ``feature_cost`` is given) of two cell sets, uniform marginals.

    The objective is non-convex and a single run from the independent coupling often ends in a local minimum
    that swaps cell types. So exact GW (POT's conditional-gradient ``ot.gromov.gromov_wasserstein`` /
    ``fused_gromov_wasserstein``) is run from the independent coupling and ``n_starts - 1`` random vertex
    couplings (optimal plans of random costs), the start of lowest loss is kept, and entropic GW
    (``ot.gromov.entropic_gromov_wasserstein`` / ``entropic_fused_gromov_wasserstein``) is run from it, which
    spreads each cell's mass over its near-equivalent partners (smoother pivots).

    Parameters
    ----------
    ca, cb
        ``(n_a, n_a)`` and ``(n_b, n_b)`` symmetric within-modality distances (:func:`cell_distances`).
    epsilon
        Entropic regularisation of the last step (distances in [0, 1]: 1e-3 .. 1e-2); 0 skips it.
    n_starts
        Exact-GW starts.
    rng
        Decides the random starts.
    feature_cost, alpha
        ``(n_a, n_b)`` cross-modal cost in [0, 1] and the weight of the distortion against it (fused GW), or None.

    Returns
    -------
    GWResult
    """
    import ot  # POT only when transport runs: keeps `import cellweave` light

    if epsilon < 0:
        raise InputError("transport", "epsilon", f"epsilon={epsilon} is negative", "pass epsilon >= 0, e.g. 5e-3")
    p, q = ot.unif(len(ca)), ot.unif(len(cb))
    best, best_loss, best_start = None, np.inf, 0
    for start in range(max(1, n_starts)):
        g0 = np.outer(p, q) if start == 0 else ot.emd(p, q, rng.random((len(p), len(q))))
        if feature_cost is None:
            plan = ot.gromov.gromov_wasserstein(ca, cb, p, q, "square_loss", G0=g0)
        else:
            plan = ot.gromov.fused_gromov_wasserstein(feature_cost, ca, cb, p, q, "square_loss", alpha=alpha, G0=g0)
        loss = _objective(ca, cb, plan, feature_cost, alpha)
        if loss < best_loss:
            best, best_loss, best_start = plan, loss, start
    if epsilon > 0:
        if feature_cost is None:
            best = ot.gromov.entropic_gromov_wasserstein(ca, cb, p, q, "square_loss", epsilon=epsilon, G0=best)
        else:
            best = ot.gromov.entropic_fused_gromov_wasserstein(feature_cost, ca, cb, p, q, "square_loss",
                                                               epsilon=epsilon, alpha=alpha, G0=best)
    loss = gw_loss(ca, cb, best)
    return GWResult(best, loss, loss / max(gw_loss(ca, cb, np.outer(p, q)), 1e-300), best_start)


def _objective(ca: np.ndarray, cb: np.ndarray, plan: np.ndarray, feature_cost: np.ndarray | None, alpha: float) -> float:
    """GW distortion, or the fused objective ``alpha * distortion + (1 - alpha) <M, T>``."""
    loss = gw_loss(ca, cb, plan)
    return loss if feature_cost is None else alpha * loss + (1 - alpha) * float(np.sum(feature_cost * plan))


def gw_loss(ca: np.ndarray, cb: np.ndarray, coupling: np.ndarray) -> float:
    """Square Gromov-Wasserstein distortion ``sum (ca[i,k] - cb[j,l])^2 T[i,j] T[k,l]`` of a coupling."""
    p, q = coupling.sum(1), coupling.sum(0)
    const = ((ca**2) @ p)[:, None] + ((cb**2) @ q)[None, :]
    return float(np.sum((const - 2 * ca @ coupling @ cb.T) * coupling))


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
