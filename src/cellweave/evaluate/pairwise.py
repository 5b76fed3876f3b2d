"""All-pairs Euclidean distances by matrix products, one (rows x columns) tile at a time.

A tile of distances is ``sqrt(max(|q|^2 + |r|^2 - 2 q.r, 0))`` in float32 from one GEMM; tiles never hold
more than ``rows x COL_BLOCK`` values, so no N x N matrix exists. The columns are cut at fixed multiples of
:data:`COL_BLOCK` whatever the row blocks are, so every distance, and every sum over columns, comes out the
same bits however the rows are chunked.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

COL_BLOCK = 4096


def centered(X: np.ndarray) -> np.ndarray:
    """``X`` as C-contiguous float32, minus its column means (smaller norms: less cancellation in the GEMM)."""
    X = np.asarray(X, dtype=np.float64)
    return np.ascontiguousarray(X - X.mean(axis=0, keepdims=True), dtype=np.float32)


def sq_norms(X: np.ndarray) -> np.ndarray:
    """Row-wise squared norms (float32), computed once per reference matrix."""
    return np.einsum("ij,ij->i", X, X, dtype=np.float32)


def column_blocks(n: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` of the fixed column tiles over ``n`` reference rows."""
    for start in range(0, n, COL_BLOCK):
        yield start, min(start + COL_BLOCK, n)


def distance_tile(Q: np.ndarray, q_sq: np.ndarray, R: np.ndarray, r_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(Q), len(R))`` between two float32 row blocks with precomputed norms.

    A single query row is multiplied as two identical rows: BLAS's matrix-vector path rounds differently
    from its matrix-matrix path, and the result must not depend on how rows were blocked.
    """
    if len(Q) == 1:
        return distance_tile(np.repeat(Q, 2, axis=0), np.repeat(q_sq, 2), R, r_sq)[:1]
    D = Q @ R.T
    D *= -2.0
    D += q_sq[:, None]
    D += r_sq[None, :]
    np.maximum(D, 0.0, out=D)
    return np.sqrt(D, out=D)
