"""Matching accuracy between modalities (as scMODAL reports them): label transfer, FOSCTTM, pair distance, mixing.

- Label transfer: each cell of modality B takes the label of its nearest cell of A (1-NN) or the majority of
  its ``k`` nearest (ties go to the label met first, i.e. nearest), scored against B's own labels; every
  ordered pair of modalities.
- FOSCTTM (SCOT's form): for each true pair ``(a_i, b_i)``, the fraction of the other ``n - 1`` cells of B
  closer to ``a_i`` than ``b_i`` is, and the same from ``b_i``; averaged over both directions and all pairs.
- Pair distance: ``|a_i - b_i|`` over the mean of ``a_i``'s distance to every cell of B and ``b_i``'s to every
  cell of A (our reading of the paper's formula); averaged over pairs.
- Mixing metric (Seurat, as scMODAL computes it): for each cell, the rank among its 299 nearest other cells of
  the 5th neighbour from each modality (300 when absent); median over modalities, mean over cells.

FOSCTTM and pair distance share one blocked all-pairs pass: ``O(n^2)`` work, ``O(block x COL_BLOCK)`` memory
(``O(max_pairs x n)`` work when capped).
"""

from __future__ import annotations

from itertools import combinations, permutations

import numpy as np
import pandas as pd

from .compute import map_rows, subset_rows
from .pairwise import ROW_TILE, centered, closer_than_partner, column_blocks, dot_tile, sq_norms


def _vote_block(_: int, idx: np.ndarray, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Majority label of each row's neighbours; ties to the label whose first vote is nearest."""
    votes = codes[idx]
    n, k = votes.shape
    counts = np.zeros((n, n_codes), dtype=np.int64)
    first = np.full((n, n_codes), k, dtype=np.int64)
    rows = np.arange(n)
    for j in range(k - 1, -1, -1):
        counts[rows, votes[:, j]] += 1
        first[rows, votes[:, j]] = j
    best = counts.max(axis=1, keepdims=True)
    return np.where(counts == best, first, k + 1).argmin(axis=1)


def label_transfer(
    X: np.ndarray,
    labels: np.ndarray | pd.Series,
    modality: np.ndarray | pd.Series,
    k: int = 20,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
    max_cells: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Label transfer accuracy between every ordered pair of modalities.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding of all modalities.
    labels, modality
        Label and modality of each cell.
    k
        Neighbours of the k-NN vote.
    backend
        kNN backend (:func:`cellweave.neighbors.knn`).
    chunk_size
        Cells per Dask block of the vote.
    max_cells
        Query cells per direction: above it, a random subset (an unbiased estimate of the accuracy; the
        reference is always every cell of the other modality). ``None``: every cell.
    seed
        Seed of the query subset.

    Returns
    -------
    dict
        ``{"A->B": {"1nn": accuracy, "knn": accuracy}, ...}``.
    """
    from ..neighbors import knn

    labels = np.asarray(labels).astype(str)
    modality = np.asarray(modality).astype(str)
    codes, names = pd.factorize(labels, sort=True)
    modalities = sorted(pd.unique(modality))
    found = {}
    for a in modalities:  # one index per reference modality, searched by the cells of every other one at once
        ref = modality == a
        queries = {b: np.flatnonzero(modality == b) for b in modalities if b != a}
        queries = {b: rows[subset_rows(len(rows), max_cells, seed)] for b, rows in queries.items()}
        qry = np.concatenate(list(queries.values()))
        kk = min(k, int(ref.sum()))
        _, idx = knn(np.ascontiguousarray(X[ref]), kk, query=np.ascontiguousarray(X[qry]), backend=backend)
        idx, ref_codes = np.asarray(idx), codes[ref]
        voted = map_rows(_vote_block, [idx], (ref_codes, len(names)), chunk_size=chunk_size, n_out=None, dtype=np.int64)
        start = 0
        for b, rows in queries.items():
            part, truth = slice(start, start + len(rows)), codes[rows]
            found[f"{a}->{b}"] = {"1nn": float(np.mean(ref_codes[idx[part, 0]] == truth)),
                                  "knn": float(np.mean(voted[part] == truth))}
            start += len(rows)
    return {f"{a}->{b}": found[f"{a}->{b}"] for a, b in permutations(modalities, 2)}


def _closer_block(_: int, Q: np.ndarray, own: np.ndarray, R: np.ndarray, r_sq: np.ndarray) -> np.ndarray:
    """For query rows ``Q`` whose true partners are ``R[own]``: how many cells of ``R`` are closer than the
    partner, the sum of distances to all of ``R``, and the distance to the partner.
    """
    q_sq = sq_norms(Q)
    true = np.sqrt(((Q.astype(np.float64) - R[own]) ** 2).sum(axis=1))
    closer = np.zeros(len(Q), dtype=np.int64)
    total = np.zeros(len(Q))
    for a, b in column_blocks(len(Q), ROW_TILE):
        for c0, c1 in column_blocks(len(R)):
            partner_col = np.where((own[a:b] >= c0) & (own[a:b] < c1), own[a:b] - c0, -1)
            closer_than_partner(dot_tile(Q[a:b], R[c0:c1]), q_sq[a:b], r_sq[c0:c1], true[a:b], partner_col,
                                closer[a:b], total[a:b])
    return np.column_stack([closer.astype(np.float64), total, true])


def _pairs(modality: np.ndarray, pair: np.ndarray, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the matched cells of ``a`` and ``b`` (same pair id), in the same order."""
    rows_a = np.flatnonzero(modality == a)
    rows_b = np.flatnonzero(modality == b)
    for m, rows in ((a, rows_a), (b, rows_b)):
        if pd.Index(pair[rows]).has_duplicates:
            raise ValueError(f"pair ids repeat within modality {m!r}")
    ids = pd.Index(pair[rows_a]).intersection(pd.Index(pair[rows_b]), sort=False)
    pos_a = pd.Index(pair[rows_a]).get_indexer(ids)
    pos_b = pd.Index(pair[rows_b]).get_indexer(ids)
    return rows_a[pos_a], rows_b[pos_b]


def foscttm(
    X: np.ndarray,
    modality: np.ndarray | pd.Series,
    pair: np.ndarray | pd.Series,
    *,
    max_pairs: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """FOSCTTM and pair distance for every pair of modalities that share pair ids.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding of all modalities.
    modality
        Modality of each cell.
    pair
        Pair id of each cell: a cell of A and a cell of B with the same id are the same cell (paired assays).
        Ids must not repeat within a modality.
    max_pairs
        Score at most this many pairs, drawn at random with ``seed``, each against *all* cells of the other
        modality (an unbiased estimate at ``max_pairs x n`` work). ``None``: every pair (exact).
    seed
        Seed of the subset.
    chunk_size
        Query cells per Dask block.

    Returns
    -------
    dict
        ``{"A|B": {"foscttm": ..., "pair_distance": ..., "n_pairs": ...}}`` (pairs of modalities without
        shared ids are left out).

    Raises
    ------
    ValueError
        When pair ids repeat within a modality.
    """
    modality = np.asarray(modality).astype(str)
    pair = np.asarray(pair).astype(str)
    Xc = centered(X)
    out = {}
    for a, b in combinations(sorted(pd.unique(modality)), 2):
        rows_a, rows_b = _pairs(modality, pair, a, b)
        n = len(rows_a)
        if n < 2:
            continue
        A, B = np.ascontiguousarray(Xc[rows_a]), np.ascontiguousarray(Xc[rows_b])
        scored = subset_rows(n, max_pairs, seed)
        ab = map_rows(_closer_block, [A[scored], scored], (B, sq_norms(B)), chunk_size=chunk_size, n_out=3)
        ba = map_rows(_closer_block, [B[scored], scored], (A, sq_norms(A)), chunk_size=chunk_size, n_out=3)
        fractions = (ab[:, 0] + ba[:, 0]) / (2 * (n - 1))
        relative = ab[:, 2] / (0.5 * (ab[:, 1] / n + ba[:, 1] / n))
        out[f"{a}|{b}"] = {"foscttm": float(fractions.mean()), "pair_distance": float(relative.mean()), "n_pairs": n,
                           "scored_pairs": len(scored)}
    return out


def _mixing_block(_: int, idx: np.ndarray, codes: np.ndarray, n_codes: int, k: int, missing: int) -> np.ndarray:
    found = codes[idx]
    ranks = np.full((len(idx), n_codes), float(missing))
    for m in range(n_codes):
        hit = found == m
        cum = np.cumsum(hit, axis=1)
        has = cum[:, -1] >= k
        ranks[has, m] = np.argmax(cum[has] >= k, axis=1) + 1  # 1-based rank of the k-th neighbour from m
    return np.median(ranks, axis=1)


def mixing_metric(
    X: np.ndarray,
    modality: np.ndarray | pd.Series,
    k: int = 5,
    max_k: int = 300,
    *,
    max_cells: int | None = 50_000,
    seed: int = 1234,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> float:
    """Seurat's mixing metric as scMODAL computes it (lower is better mixed; between ``k`` and ``max_k``).

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    modality
        Dataset (modality) of each cell.
    k
        Which neighbour from each modality is ranked.
    max_k
        Neighbourhood size counting the cell itself; a modality missing from it scores ``max_k``.
    max_cells
        Use a random subset of this many cells above it (scMODAL uses 50,000), with its own kNN.
    seed
        Seed of the subset.
    backend
        kNN backend.
    chunk_size
        Cells per Dask block.
    """
    from ..neighbors import knn_graph

    modality = np.asarray(modality).astype(str)
    n = len(modality)
    rows = subset_rows(n, max_cells, seed)
    codes, names = pd.factorize(modality[rows], sort=True)
    n_others = min(max_k, len(rows)) - 1
    _, idx = knn_graph(np.ascontiguousarray(X[rows]), n_others, backend=backend)
    ranks = map_rows(_mixing_block, [np.asarray(idx)], (codes, len(names), k, n_others + 1),
                     chunk_size=chunk_size, n_out=None)
    return float(ranks.mean())
