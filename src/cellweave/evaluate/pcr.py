"""Principal component regression (Büttner et al. 2018), from chunked sufficient statistics.

The variance a categorical covariate explains in PC ``k`` is its between-group sum of squares over the
PC's total sum of squares; both follow from the column means, the Gram matrix and the per-group sums of the
data, which Dask accumulates block by block. So PCA (all components, as scib-metrics) and the regression on
every PC need one pass and ``O(d^2)`` memory, never the cells at once.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .compute import sum_blocks


def _moments_block(_: int, X: np.ndarray, codes: np.ndarray, n_groups: int, shift: np.ndarray) -> np.ndarray:
    """One block's ``[count per group | sum per group (g x d) | Gram (d x d)]`` of ``X - shift``, flat."""
    X = X.astype(np.float64) - shift
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    sums = np.zeros((n_groups, X.shape[1]))
    np.add.at(sums, codes, X)
    return np.concatenate([counts, sums.ravel(), (X.T @ X).ravel()])


def pcr(X: np.ndarray, covariate: np.ndarray | pd.Series, *, chunk_size: int | None = None) -> float:
    """Share of the total variance explained by a categorical covariate, weighted over all PCs.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` data (an embedding or a PCA of the unintegrated data).
    covariate
        One category per cell (batch or modality).
    chunk_size
        Cells per Dask block.

    Returns
    -------
    float
        ``sum_k R^2_k var_k / sum_k var_k`` with ``R^2_k`` of a one-hot regression of PC ``k``.
    """
    codes = np.asarray(pd.factorize(np.asarray(covariate), sort=True)[0], dtype=np.int64)
    n, d = X.shape
    g = int(codes.max()) + 1
    shift = np.asarray(X[: min(n, 4096)], dtype=np.float64).mean(axis=0)  # against cancellation in the Gram matrix
    total = sum_blocks(_moments_block, [np.asarray(X), codes], (g, shift), chunk_size=chunk_size, shape=(g + g * d + d * d,))
    counts = total[:g]
    sums = total[g : g + g * d].reshape(g, d)
    gram = total[g + g * d :].reshape(d, d)
    mean = sums.sum(axis=0) / n
    scatter = gram - n * np.outer(mean, mean)  # (n - 1) x covariance
    var, vecs = np.linalg.eigh(scatter / (n - 1))
    var = np.clip(var, 0, None)
    group_means = (sums / counts[:, None] - mean) @ vecs  # group means of each PC (the PCs are centred)
    between = (counts[:, None] * group_means**2).sum(axis=0)
    totals = var * (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(totals > 0, between / totals, 0.0)
    return float(np.dot(np.clip(r2, 0, 1), var) / var.sum())


def pcr_comparison(
    X_pre: np.ndarray, X_post: np.ndarray, covariate: np.ndarray | pd.Series, *, chunk_size: int | None = None,
) -> float:
    """scib-metrics' PCR comparison: ``(pcr_pre - pcr_post) / pcr_pre``, 0 when the covariate explains more after.

    NaN when the covariate has one category or explains nothing before integration.
    """
    if len(pd.unique(np.asarray(covariate))) < 2:
        return float("nan")
    pre = pcr(X_pre, covariate, chunk_size=chunk_size)
    post = pcr(X_post, covariate, chunk_size=chunk_size)
    if pre <= 0:
        return float("nan")
    score = (pre - post) / pre
    if score < 0:
        warnings.warn("PCR comparison: the covariate explains more variance after integration; scoring 0",
                      stacklevel=2)
        score = 0.0
    return float(score)
