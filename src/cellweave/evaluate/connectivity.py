"""Graph connectivity (scIB): how much of each label stays in one piece of the kNN graph."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .graph import KnnGraph


def graph_connectivity(graph: KnnGraph, labels: np.ndarray | pd.Series, n_neighbors: int = 15) -> float:
    """Mean over labels of the largest strongly connected share of the label's kNN subgraph.

    Keeping only the edges between cells of the same label and taking the components once is the same as
    cutting out each label's subgraph (a component never crosses labels), in one pass over the graph.

    Parameters
    ----------
    graph
        The embedding's kNN graph.
    labels
        One label per cell.
    n_neighbors
        Neighbours counting the cell itself (the Benchmarker uses 15).
    """
    codes = np.asarray(pd.factorize(np.asarray(labels), sort=True)[0], dtype=np.int64)
    adj = graph.adjacency(n_neighbors).tocoo()
    same = codes[adj.row] == codes[adj.col]
    n = graph.n_cells
    intra = sp.csr_matrix((adj.data[same], (adj.row[same], adj.col[same])), shape=(n, n))
    _, comp = connected_components(intra, connection="strong")
    shares = []
    for code in range(int(codes.max()) + 1):
        members = comp[codes == code]
        shares.append(np.bincount(members).max() / len(members))
    return float(np.mean(shares))
