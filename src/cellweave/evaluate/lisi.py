"""Local inverse Simpson's index (LISI) on the kNN graph, in scib-metrics' form (Korsunsky et al. 2019).

Per cell, a Gaussian kernel over its neighbour distances is calibrated by bisection to a target perplexity
(the cell itself carries no weight); the Simpson index of the neighbours' categories under that kernel is
inverted. Rows are independent, so blocks of cells run as Dask tasks, vectorised within a block.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .compute import map_rows
from .graph import KnnGraph

TOL = 1e-5
MAX_TRIES = 50


def _entropy(d: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entropy and normalised kernel of each row at precision ``beta`` (scib-metrics' ``_Hbeta``)."""
    P = np.exp(-d * beta[:, None])
    total = P.sum(axis=1)
    ok = total > 0
    safe = np.where(ok, total, 1.0)
    H = np.where(ok, np.log(safe) + beta * (d * P).sum(axis=1) / safe, 0.0)
    return H, np.where(ok[:, None], P / safe[:, None], 0.0)


def _simpson_block(
    _: int, dist: np.ndarray, idx: np.ndarray, codes: np.ndarray, n_codes: int, perplexity: float,
) -> np.ndarray:
    """Simpson index of each row's neighbour categories under its perplexity-calibrated kernel.

    ``dist``/``idx`` are the other cells only: scib-metrics gives the cell itself zero weight, the same.
    """
    n = len(dist)
    d = dist.astype(np.float64)
    target = np.log(perplexity)
    beta = np.ones(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    H, P = _entropy(d, beta)
    diff = H - target
    active = np.abs(diff) >= TOL
    for _try in range(MAX_TRIES):
        if not active.any():
            break
        a = np.flatnonzero(active)
        up = diff[a] > 0
        b = beta[a]
        new_lo = np.where(up, b, lo[a])
        new_hi = np.where(up, hi[a], b)
        step_up = np.where(np.isinf(hi[a]), b * 2, (b + hi[a]) / 2)
        step_down = np.where(np.isinf(lo[a]), b / 2, (b + lo[a]) / 2)
        beta[a] = np.where(up, step_up, step_down)
        lo[a], hi[a] = new_lo, new_hi
        H[a], P[a] = _entropy(d[a], beta[a])
        diff[a] = H[a] - target
        active[a] = np.abs(diff[a]) >= TOL
    neighbour_codes = codes[idx]
    rows = np.repeat(np.arange(n), idx.shape[1])
    mass = np.zeros((n, n_codes))
    np.add.at(mass, (rows, neighbour_codes.ravel()), P.ravel())
    simpson = (mass * mass).sum(axis=1)
    return np.where(H == 0, -1.0, simpson)


def lisi(
    graph: KnnGraph, categories: np.ndarray | pd.Series, n_neighbors: int = 90, perplexity: float | None = None,
    *, chunk_size: int | None = None,
) -> np.ndarray:
    """LISI of every cell: the effective number of categories among its neighbours.

    Parameters
    ----------
    graph
        The embedding's kNN graph.
    categories
        One category per cell (batch, modality or label).
    n_neighbors
        Neighbours counting the cell itself (scib-metrics' Benchmarker uses 90).
    perplexity
        Kernel perplexity; default ``n_neighbors // 3``.
    chunk_size
        Cells per Dask block.

    Returns
    -------
    numpy.ndarray
        ``1 / simpson`` per cell (-1 where the kernel vanished, as scib-metrics).
    """
    codes = np.asarray(pd.factorize(np.asarray(categories), sort=True)[0], dtype=np.int64)
    dist, idx = graph.others(n_neighbors)
    perplexity = float(np.floor(n_neighbors / 3)) if perplexity is None else float(perplexity)
    simpson = map_rows(
        _simpson_block, [dist, idx], (codes, int(codes.max()) + 1, perplexity), chunk_size=chunk_size, n_out=None,
    )
    return 1.0 / simpson


def ilisi(graph: KnnGraph, batches: np.ndarray | pd.Series, n_neighbors: int = 90, *, chunk_size: int | None = None) -> float:
    """Integration LISI scaled to [0, 1] as scIB: ``(median - 1) / (n_batches - 1)``; NaN with one batch."""
    n_batches = len(pd.unique(np.asarray(batches)))
    if n_batches < 2:
        return float("nan")
    value = np.nanmedian(lisi(graph, batches, n_neighbors, chunk_size=chunk_size))
    return float((value - 1) / (n_batches - 1))


def clisi(graph: KnnGraph, labels: np.ndarray | pd.Series, n_neighbors: int = 90, *, chunk_size: int | None = None) -> float:
    """Cell-type LISI scaled to [0, 1] as scIB: ``(n_labels - median) / (n_labels - 1)``; NaN with one label."""
    n_labels = len(pd.unique(np.asarray(labels)))
    if n_labels < 2:
        return float("nan")
    value = np.nanmedian(lisi(graph, labels, n_neighbors, chunk_size=chunk_size))
    return float((n_labels - value) / (n_labels - 1))
