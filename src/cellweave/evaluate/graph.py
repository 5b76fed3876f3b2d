"""The one kNN graph of an embedding, built once and shared by every graph metric.

Neighbour counts follow scib-metrics, where the cell itself is its own first neighbour: the graph stores the
``n_neighbors - 1`` nearest *other* cells, and :meth:`KnnGraph.with_self` puts the cell back in front, so a
metric asking for 15 neighbours sees the cell and its 14 nearest others, exactly as scib-metrics' Benchmarker
(15 for Leiden and graph connectivity, 50 for kBET, 90 for LISI).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..errors import InputError

DEFAULT_NEIGHBORS = 90


@dataclass
class KnnGraph:
    """Nearest other cells of every cell, by ascending Euclidean distance.

    Attributes
    ----------
    distances
        ``(n_cells, k)`` float32 Euclidean distances.
    indices
        ``(n_cells, k)`` int64 row numbers of the neighbours (never the cell itself).
    """

    distances: np.ndarray
    indices: np.ndarray
    _connectivities: dict[int, sp.coo_matrix] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.distances = np.ascontiguousarray(self.distances, dtype=np.float32)
        self.indices = np.ascontiguousarray(self.indices, dtype=np.int64)
        if self.distances.shape != self.indices.shape or self.indices.ndim != 2:
            raise ValueError(f"distances {self.distances.shape} and indices {self.indices.shape} differ")

    @property
    def n_cells(self) -> int:
        return self.indices.shape[0]

    @property
    def n_neighbors(self) -> int:
        """Neighbours per cell counting the cell itself (scib-metrics' convention)."""
        return self.indices.shape[1] + 1

    def with_self(self, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, indices)`` with ``n_neighbors`` columns, the cell itself first at distance 0.

        Raises
        ------
        ValueError
            When the graph has fewer neighbours.
        """
        k = self._others(n_neighbors)
        rows = np.arange(self.n_cells, dtype=np.int64)[:, None]
        dist = np.concatenate([np.zeros((self.n_cells, 1), np.float32), self.distances[:, :k]], axis=1)
        return dist, np.concatenate([rows, self.indices[:, :k]], axis=1)

    def others(self, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, indices)`` of the ``n_neighbors - 1`` nearest other cells."""
        k = self._others(n_neighbors)
        return self.distances[:, :k], self.indices[:, :k]

    def _others(self, n_neighbors: int) -> int:
        k = int(n_neighbors) - 1
        if k < 1 or k > self.indices.shape[1]:
            raise ValueError(f"asked for {n_neighbors} neighbours; the graph has {self.n_neighbors} (with self)")
        return k

    def adjacency(self, n_neighbors: int) -> sp.csr_matrix:
        """Directed kNN adjacency (``n_neighbors - 1`` edges out of each cell, weight 1)."""
        _, idx = self.others(n_neighbors)
        n, k = idx.shape
        indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
        return sp.csr_matrix((np.ones(n * k, np.float32), idx.ravel(), indptr), shape=(n, n))

    def connectivities(self, n_neighbors: int) -> sp.coo_matrix:
        """UMAP fuzzy-simplicial-set connectivities of ``n_neighbors`` (as scanpy and scib-metrics), cached.

        Kept in UMAP's COO entry order: Leiden's result depends on the edge order.
        """
        if n_neighbors not in self._connectivities:
            with warnings.catch_warnings():  # umap's import warns that TensorFlow (unused here) is absent
                warnings.simplefilter("ignore")
                from umap.umap_ import fuzzy_simplicial_set

            dist, idx = self.with_self(n_neighbors)
            conn = fuzzy_simplicial_set(
                sp.coo_matrix(([], ([], [])), shape=(self.n_cells, 1)), n_neighbors=n_neighbors, random_state=None,
                metric=None, knn_indices=idx, knn_dists=dist, set_op_mix_ratio=1.0, local_connectivity=1.0,
            )[0]
            self._connectivities[n_neighbors] = conn
        return self._connectivities[n_neighbors]


def build_graph(X: np.ndarray, n_neighbors: int = DEFAULT_NEIGHBORS, *, backend: str = "auto") -> KnnGraph:
    """The kNN graph of an embedding through :mod:`cellweave.neighbors` (FAISS GPU when present, else CPU).

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    n_neighbors
        Neighbours per cell counting the cell itself; the graph keeps ``n_neighbors - 1`` other cells
        (fewer when the embedding has fewer cells).
    backend
        Passed to :func:`cellweave.neighbors.knn_graph`.

    Raises
    ------
    InputError
        When the embedding has fewer than 3 cells.
    """
    from ..neighbors import knn_graph

    n = X.shape[0]
    if n < 3:
        raise InputError("embedding", "cells", f"only {n} cells", "evaluate an embedding of at least 3 cells")
    k = min(int(n_neighbors) - 1, n - 1)
    distances, indices = knn_graph(X, k, metric="euclidean", backend=backend)
    return KnnGraph(np.asarray(distances), np.asarray(indices))
