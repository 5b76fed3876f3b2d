"""Cross-modal pivots: cells of two modalities matched one to one, in blocks, on features both modalities share.

- :func:`neighbor_graph` / :func:`smooth`: average each cell's values over its k nearest cells of the same
  modality (on that modality's reduced full features), which denoises weak shared features before matching.
- :func:`match_blocks`: split both cell sets at random into equally many blocks of at most ``block_size``
  cells and solve one linear assignment per block pair (``scipy.optimize.linear_sum_assignment`` on squared
  euclidean distances; callers pass features on comparable axes, e.g. column-standardised). Memory is one
  ``block_size x block_size`` cost matrix at a time, never ``N x M``.
- :func:`drop_worst`: keep the best-matched share of the pivots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from ..errors import InputError
from ..neighbors import knn


@dataclass(frozen=True)
class Pivots:
    """Matched pairs: row ``source[i]`` of one modality with row ``target[i]`` of the other, at ``cost[i]``."""

    source: np.ndarray
    target: np.ndarray
    cost: np.ndarray

    def __len__(self) -> int:
        return len(self.source)

    def take(self, keep: np.ndarray) -> Pivots:
        """The pivots at positions (or mask) ``keep``."""
        return Pivots(self.source[keep], self.target[keep], self.cost[keep])


def neighbor_graph(features: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` indices of each row's k nearest other rows (euclidean, exact, in query blocks)."""
    _, idx = knn(np.ascontiguousarray(features, dtype=np.float32), min(k, len(features) - 1))
    return np.asarray(idx)


def smooth(values: np.ndarray, graph: np.ndarray) -> np.ndarray:
    """Each row averaged with its neighbours' rows (``graph`` from :func:`neighbor_graph`)."""
    out = np.array(values, dtype=np.float64, copy=True)
    for j in range(graph.shape[1]):
        out += values[graph[:, j]]
    return out / (graph.shape[1] + 1)


def match_blocks(a: np.ndarray, b: np.ndarray, block_size: int, rng: np.random.Generator) -> Pivots:
    """One-to-one matches between rows of ``a`` and ``b`` by linear assignment within random blocks.

    Parameters
    ----------
    a, b
        ``(n_a, d)`` and ``(n_b, d)`` features on the same axes (e.g. standardised shared features, CCA scores).
    block_size
        Most cells of either side in one assignment problem.
    rng
        Decides the blocks.

    Returns
    -------
    Pivots
        ``min(n_a, n_b)`` pairs (fewer when the blocks are uneven), cost = squared euclidean distance.
    """
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise InputError("pivots", "features", f"cannot match {a.shape[1]} features against {b.shape[1]}",
                         "match on the same, non-empty set of shared features")
    n_blocks = max(1, math.ceil(max(len(a), len(b)) / block_size))
    blocks_a = np.array_split(rng.permutation(len(a)), n_blocks)
    blocks_b = np.array_split(rng.permutation(len(b)), n_blocks)
    src, tgt, cost = [], [], []
    for ia, ib in zip(blocks_a, blocks_b):
        if len(ia) == 0 or len(ib) == 0:
            continue
        c = cdist(a[ia], b[ib], "sqeuclidean")
        r, col = linear_sum_assignment(c)
        src.append(ia[r])
        tgt.append(ib[col])
        cost.append(c[r, col])
    if not src:
        return Pivots(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    return Pivots(np.concatenate(src), np.concatenate(tgt), np.concatenate(cost))


def drop_worst(pivots: Pivots, share: float) -> Pivots:
    """The pivots without the ``share`` of them that matched worst (highest cost)."""
    if not 0 <= share < 1:
        raise InputError("learn", "drop", f"drop={share} is outside [0, 1)", "drop a share of pivots between 0 and 0.9")
    n_keep = len(pivots) - int(share * len(pivots))
    return pivots.take(np.sort(np.argsort(pivots.cost, kind="stable")[:n_keep]))
