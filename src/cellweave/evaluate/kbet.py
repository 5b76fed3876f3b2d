"""kBET (Büttner et al. 2018) in scib-metrics' form.

:func:`kbet` tests, for every cell, whether the batch make-up of its neighbourhood (the cell included) matches
the global one (Pearson chi-square), and returns the acceptance rate. :func:`kbet_per_label` is what
scib-metrics' Benchmarker reports: per label, the label's subgraph of UMAP connectivities is embedded with a
diffusion map, each cell gets ``k0`` diffusion neighbours, and kBET runs on them; labels run as parallel Dask
tasks and the score is the mean over labels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh
from scipy.special import gammaincc

from .compute import compute, map_rows, shared
from .graph import KnnGraph

log = logging.getLogger(__name__)

_EPS = 1e-8
SIZE_MAX = 2**31 - 1


def _counts_block(_: int, idx: np.ndarray, codes: np.ndarray, n_batches: int) -> np.ndarray:
    nb = codes[idx]
    out = np.zeros((len(idx), n_batches))
    for b in range(n_batches):
        out[:, b] = (nb == b).sum(axis=1)
    return out


def kbet(
    indices: np.ndarray, batches: np.ndarray | pd.Series, alpha: float = 0.05, *, chunk_size: int | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """kBET acceptance rate on given neighbourhoods.

    Parameters
    ----------
    indices
        ``(n_cells, k)`` neighbour rows, the cell itself included (as scib-metrics' neighbour results).
    batches
        One batch per cell.
    alpha
        Significance level.
    chunk_size
        Cells per Dask block.

    Returns
    -------
    acceptance_rate, statistics, p_values
        The fraction of cells with ``p >= alpha``, and the per-cell chi-square statistics and p-values.
    """
    codes = np.asarray(pd.factorize(np.asarray(batches), sort=True)[0], dtype=np.int64)
    n_batches = int(codes.max()) + 1
    observed = map_rows(_counts_block, [np.asarray(indices)], (codes, n_batches), chunk_size=chunk_size, n_out=n_batches)
    return _test(observed, codes, n_batches, alpha)


def _test(observed: np.ndarray, codes: np.ndarray, n_batches: int, alpha: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Chi-square test of each row of neighbour batch counts against the global batch frequencies."""
    expected = np.bincount(codes, minlength=n_batches) / len(codes) * observed.sum(axis=1, keepdims=True)
    stats = np.sum((observed - expected) ** 2 / expected, axis=1)
    p_values = gammaincc((n_batches - 1) / 2, stats / 2)  # chi-square survival function
    return float(np.mean(p_values >= alpha)), stats, p_values


def _transitions(conn: sp.csr_matrix) -> sp.csr_matrix:
    """Density-normalised symmetric transition matrix (Coifman et al. 2005), as scanpy."""
    q = np.asarray(conn.sum(axis=0)).ravel()
    Q = sp.diags(1.0 / q)
    K = Q @ conn @ Q
    z = np.sqrt(np.asarray(K.sum(axis=0)).ravel())
    Z = sp.diags(1.0 / z)
    return (Z @ K @ Z).tocsr()


def diffusion_embedding(conn: sp.csr_matrix, n_comps: int = 100) -> np.ndarray:
    """scib-metrics' diffusion map of a connectivity graph (float32, ``min(n_comps, n - 1)`` columns).

    The top eigenvectors of the density-normalised transition matrix, scaled by ``lambda / (1 - lambda)``
    (the t-step sum integrated out), so that Euclidean distance approximates diffusion distance.
    """
    T = _transitions(conn).astype(np.float64)
    # a fixed start vector: ARPACK's default one comes from a process-wide generator, so the result (and kBET,
    # through near-degenerate eigenvectors) would depend on every eigsh call made before in the process
    v0 = np.full(T.shape[0], 1.0 / np.sqrt(T.shape[0]))
    evals, evecs = eigsh(T, k=min(T.shape[0] - 1, n_comps), which="LM", v0=v0)
    evals, evecs = evals.astype(np.float32)[::-1], evecs.astype(np.float32)[:, ::-1]
    evals = evals + np.float32(_EPS)
    scaled = np.array([e if e == 1 else e / (1 - e) for e in evals], dtype=np.float32)
    return np.ascontiguousarray(evecs * scaled)


def diffusion_neighbors(embedding: np.ndarray, k: int) -> np.ndarray:
    """``k + 1`` exact Euclidean neighbours (the cell first) of every row of a diffusion embedding."""
    from ..neighbors import knn_graph

    _, idx = knn_graph(embedding, k, metric="euclidean", backend="auto")
    return np.concatenate([np.arange(len(idx))[:, None], np.asarray(idx)], axis=1)


def _kbet_label(conn: sp.csr_matrix, label_codes: np.ndarray, code: int, covariates: list[np.ndarray], alpha: float,
                n_comps: int) -> list[float]:
    """scib-metrics' kBET on one label's cells, for each covariate (NaN when too small or a single batch).

    The diffusion map depends on the covariate only through which small components are dropped, so it is
    computed once per kept cell set and shared by the covariates.
    """
    mask = label_codes == code
    sub = conn[mask][:, mask].tocsr()
    sub.sort_indices()
    n_obs = sub.shape[0]
    n_comp, comp = connected_components(sub, connection="strong") if n_obs >= 10 else (1, None)
    embeddings: dict[bytes, np.ndarray | None] = {}
    scores = []
    for codes in covariates:
        batches = codes[mask]
        if n_obs < 10 or len(np.unique(batches)) == 1:
            scores.append(float("nan"))
            continue
        k0 = int(np.min([70, np.max([10, np.floor(np.mean(np.bincount(batches)[np.unique(batches)]) / 4)])]))
        if k0 * n_obs >= SIZE_MAX:
            k0 = int(np.floor(SIZE_MAX / n_obs))
        keep = np.arange(n_obs)
        if n_comp > 1:
            keep = np.flatnonzero(np.bincount(comp)[comp] >= 3 * k0)
            if len(keep) / n_obs < 0.75:
                scores.append(0.0)  # too many small components: kBET rejects everywhere
                continue
        key = keep.tobytes()
        if key not in embeddings:
            part = sub if len(keep) == n_obs else sub[keep][:, keep].tocsr()
            part.sort_indices()
            try:
                embeddings[key] = diffusion_embedding(part, n_comps)
            except (ValueError, ArithmeticError) as exc:
                log.info("diffusion map failed (%s): kBET counts the label as rejected", exc)
                embeddings[key] = None
        if embeddings[key] is None:
            scores.append(0.0)
            continue
        nn = diffusion_neighbors(embeddings[key], k0)
        local = np.unique(batches[keep], return_inverse=True)[1]
        n_batches = int(local.max()) + 1
        scores.append(_test(_counts_block(0, nn, local, n_batches), local, n_batches, alpha)[0])
    return scores


def kbet_per_label(
    graph: KnnGraph,
    batches: np.ndarray | pd.Series | Mapping[str, np.ndarray | pd.Series],
    labels: np.ndarray | pd.Series,
    n_neighbors: int = 50,
    alpha: float = 0.05,
    diffusion_n_comps: int = 100,
) -> float | dict[str, float]:
    """kBET per label on diffusion neighbours, averaged over labels (scib-metrics' ``kbet_per_label``).

    Labels run as parallel Dask tasks. One difference: scib-metrics lowers the number of diffusion
    components for every label after a small one (its loop reuses the variable); here each label uses
    ``min(diffusion_n_comps, n_cells - 1)`` of its own, so labels can run in any order.

    Parameters
    ----------
    graph
        The embedding's kNN graph.
    batches
        One batch per cell, or several covariates by name (``{"batch": ..., "modality": ...}``), which then
        share each label's diffusion map.
    labels
        One label per cell.
    n_neighbors
        Neighbours (cell included) of the connectivities (the Benchmarker uses 50).
    alpha
        Significance level.
    diffusion_n_comps
        Diffusion components per label.

    Returns
    -------
    float or dict
        Mean acceptance rate over labels that have at least 10 cells and two batches (NaN when none has);
        one per covariate when several were given.
    """
    many = isinstance(batches, Mapping)
    named = dict(batches) if many else {"batch": batches}
    codes = [np.asarray(pd.factorize(np.asarray(v), sort=True)[0], dtype=np.int64) for v in named.values()]
    conn_shared = shared(graph.connectivities(n_neighbors).tocsr())
    label_codes, label_names = pd.factorize(np.asarray(labels))
    label_shared, codes_shared = shared(label_codes), shared(codes)
    tasks = [
        dask.delayed(_kbet_label, pure=True)(conn_shared, label_shared, code, codes_shared, alpha, diffusion_n_comps)
        for code in range(len(label_names))
    ]
    table = np.asarray(compute(*tasks), dtype=np.float64).reshape(len(tasks), len(codes))
    out = {
        name: float(np.nanmean(table[:, j])) if np.isfinite(table[:, j]).any() else float("nan")
        for j, name in enumerate(named)
    }
    return out if many else out["batch"]
