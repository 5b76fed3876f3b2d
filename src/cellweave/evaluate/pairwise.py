"""All-pairs Euclidean distances by matrix products, one (rows x columns) tile at a time.

A tile holds the dot products ``q.r`` of a block of query rows with :data:`COL_BLOCK` reference rows (one
GEMM); a compiled kernel turns each into the distance ``sqrt(max(|q|^2 + |r|^2 - 2 q.r, 0))`` (float32) and
reduces it on the spot, in one pass: per-group distance sums for silhouettes, closer-than-partner counts for
FOSCTTM. No N x N matrix exists. The columns are cut at fixed multiples of :data:`COL_BLOCK` whatever the row
blocks are, and each row is reduced in column order, so the reduction itself does not depend on the row
chunks; the GEMM does not promise that (BLAS picks its summation order by tile shape, CPU and thread count),
so results agree across chunkings to float32 rounding of the distances, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numba
import numpy as np

COL_BLOCK = 4096
ROW_TILE = 256  # query rows per GEMM: a 256 x 4096 tile (4 MiB) stays in cache


def centered(X: np.ndarray) -> np.ndarray:
    """``X`` as C-contiguous float32, minus its column means (smaller norms: less cancellation in the GEMM)."""
    X = np.asarray(X, dtype=np.float64)
    return np.ascontiguousarray(X - X.mean(axis=0, keepdims=True), dtype=np.float32)


def sq_norms(X: np.ndarray) -> np.ndarray:
    """Row-wise squared norms (float32), computed once per reference matrix."""
    return np.einsum("ij,ij->i", X, X, dtype=np.float32)


def column_blocks(n: int, size: int = COL_BLOCK) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` of consecutive tiles of ``size`` over ``n`` rows (the fixed column tiles by default)."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def dot_tile(Q: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``Q @ R.T`` (float32). A single query row is multiplied as two identical rows: BLAS's matrix-vector
    path rounds differently from its matrix-matrix path, and results must not depend on the row blocking.
    """
    if len(Q) == 1:
        return (np.repeat(Q, 2, axis=0) @ R.T)[:1]
    return Q @ R.T


@numba.njit(nogil=True, cache=True, fastmath=True)
def _distance_row(g: np.ndarray, qi: np.float32, r_sq: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    for j in range(out.shape[0]):
        out[j] = np.sqrt(max(qi + r_sq[j] - np.float32(2.0) * g[j], np.float32(0.0)))


@numba.njit(nogil=True, cache=True, fastmath=True)
def group_distance_sums(
    G: np.ndarray, q_sq: np.ndarray, r_sq: np.ndarray, run_starts: np.ndarray, run_group: np.ndarray,
    self_col: np.ndarray, sums: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Add each row's distances to the tile's columns into ``sums[row, group]`` (float64).

    The tile's columns come sorted by group: run ``r`` spans columns ``run_starts[r]:run_starts[r + 1]`` of
    group ``run_group[r]``. ``self_col[row]`` is the column of the row's own cell (-1 if none): distance 0.
    """
    row = np.empty(G.shape[1], dtype=np.float32)
    for i in range(sums.shape[0]):
        _distance_row(G[i], q_sq[i], r_sq, row)
        if self_col[i] >= 0:
            row[self_col[i]] = 0
        for r in range(run_group.shape[0]):
            acc = 0.0
            for j in range(run_starts[r], run_starts[r + 1]):
                acc += row[j]
            sums[i, run_group[r]] += acc


def runs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts (plus the end) and values of the runs of equal values in a sorted tile of group ids."""
    change = np.flatnonzero(np.diff(groups)) + 1
    starts = np.concatenate([[0], change, [len(groups)]]).astype(np.int64)
    return starts, groups[starts[:-1]].astype(np.int64)


@numba.njit(nogil=True, cache=True, fastmath=True)
def closer_than_partner(
    G: np.ndarray, q_sq: np.ndarray, r_sq: np.ndarray, true: np.ndarray, partner_col: np.ndarray,
    closer: np.ndarray, total: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Per row: count the tile's columns closer than ``true`` (the partner excluded) and sum all distances.

    ``partner_col[row]`` is the partner's column in this tile (-1 if none); its distance counts as ``true``.
    """
    row = np.empty(G.shape[1], dtype=np.float32)
    for i in range(closer.shape[0]):
        _distance_row(G[i], q_sq[i], r_sq, row)
        own = partner_col[i]
        t = true[i]
        count = 0
        acc = 0.0
        for j in range(row.shape[0]):
            acc += row[j]
            count += row[j] < t
        if own >= 0:  # the partner: exact distance, never closer than itself
            acc += t - row[own]
            count -= row[own] < t
        closer[i] += count
        total[i] += acc
