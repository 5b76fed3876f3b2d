"""Silhouette widths without an N x N matrix: blocked distances reduced to per-cluster distance sums.

One pass over all pairs gives, for every scored cell, the sum of its distances to each *fine group* (cells
sharing label and every ``within`` key). Sums by label give the label silhouette (sklearn's
``silhouette_samples``); sums by (label, batch) inside the cell's own label give scIB's batch silhouette
(silhouette of batches computed on each label's cells alone), with no second pass. Reference columns are
sorted by fine group, so each distance tile reduces with one ``np.add.reduceat``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .compute import map_rows, row_chunk, subset_rows
from .pairwise import ROW_TILE, centered, column_blocks, dot_tile, group_distance_sums, runs, sq_norms

SUMS_BUDGET = 1 << 24  # float64 per-group sums held per block (rows x fine groups): 128 MiB


@dataclass
class SilhouetteSamples:
    """Per-cell silhouette widths (sklearn's unscaled form, in [-1, 1]).

    Attributes
    ----------
    rows
        Row numbers of the scored cells (every cell, or a random subset when capped).
    label
        Silhouette of each scored cell with the label clusters (0 for a cell alone in its label, as sklearn).
    within
        Per ``within`` key: silhouette of the cell among its label's cells clustered by that key; NaN for
        cells whose label holds a single group of that key.
    label_codes
        Label code (index into ``label_names``) of each scored cell.
    label_names
        The label values.
    groups_per_label
        Per ``within`` key: the number of distinct values within each label (all cells, not only scored).
    label_sizes
        Cells per label (all cells).
    """

    rows: np.ndarray
    label: np.ndarray
    within: dict[str, np.ndarray]
    label_codes: np.ndarray
    label_names: np.ndarray
    groups_per_label: dict[str, np.ndarray]
    label_sizes: np.ndarray


def _codes(values: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    codes, names = pd.factorize(np.asarray(values), sort=True)
    if (codes < 0).any():
        raise ValueError("missing values in a grouping column")
    return codes.astype(np.int64), np.asarray(names)


def _silhouette(intra_sum: np.ndarray, own_count: np.ndarray, nearest_other: np.ndarray) -> np.ndarray:
    """sklearn's formula: ``(b - a) / max(a, b)`` with ``a`` the mean to the own cluster (without the cell)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = intra_sum / (own_count - 1)
        s = (nearest_other - a) / np.maximum(a, nearest_other)
    return np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)


def silhouette_samples(
    X: np.ndarray,
    labels: np.ndarray | pd.Series,
    within: Mapping[str, np.ndarray | pd.Series] | None = None,
    *,
    chunk_size: int | None = None,
    max_cells: int | None = None,
    seed: int = 0,
) -> SilhouetteSamples:
    """Label silhouette and within-label silhouettes of every cell, in one blocked pass over all pairs.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    labels
        Cluster labels (cell types).
    within
        Other groupings (``{"batch": ..., "modality": ...}``) whose silhouette is taken inside each label.
    chunk_size
        Cells per Dask block (the results do not depend on it).
    max_cells
        Score at most this many cells, drawn at random with ``seed`` (each against *all* cells: an unbiased
        estimate of the mean width at ``max_cells x n_cells`` work). ``None``: every cell (exact).
    seed
        Seed of the subset.

    Returns
    -------
    SilhouetteSamples
    """
    within = dict(within or {})
    n = X.shape[0]
    lab, label_names = _codes(labels)
    keys = list(within)
    grp = [_codes(within[k])[0] for k in keys]
    dims = [len(label_names)] + [int(g.max()) + 1 for g in grp]
    fine = np.ravel_multi_index([lab] + grp, dims) if keys else lab
    fine_ids, fine = np.unique(fine, return_inverse=True)
    F = len(fine_ids)
    parts = np.unravel_index(fine_ids, dims)
    fine_label = np.asarray(parts[0], dtype=np.int64)
    fine_count = np.bincount(fine, minlength=F).astype(np.float64)

    order = np.argsort(fine, kind="stable")
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    Xc = centered(X)
    R = np.ascontiguousarray(Xc[order])
    r_sq = sq_norms(R)

    # fine group -> label, fine group -> (label, key value) combination
    L = len(label_names)
    to_label = np.zeros((F, L))
    to_label[np.arange(F), fine_label] = 1.0
    label_count = to_label.T @ fine_count
    combos = []
    for j in range(len(keys)):
        lg = fine_label * dims[j + 1] + np.asarray(parts[j + 1])
        combo_ids, combo_of_fine = np.unique(lg, return_inverse=True)
        M = np.zeros((F, len(combo_ids)))
        M[np.arange(F), combo_of_fine] = 1.0
        combos.append((M, M.T @ fine_count, combo_ids // dims[j + 1]))

    rows = subset_rows(n, max_cells, seed)
    block = max(1, min(row_chunk(len(rows), chunk_size), SUMS_BUDGET // max(F, 1)))

    result = map_rows(
        _score_block, [np.ascontiguousarray(Xc[rows]), position[rows], fine[rows]],
        (R, r_sq, fine[order], to_label, fine_label, label_count, combos), chunk_size=block, n_out=1 + len(keys),
    )
    groups_per_label = {}
    for j, k in enumerate(keys):
        _, counts, combo_label = combos[j]
        groups_per_label[k] = np.bincount(combo_label, minlength=L)
    return SilhouetteSamples(
        rows=rows, label=result[:, 0], within={k: result[:, 1 + j] for j, k in enumerate(keys)},
        label_codes=lab[rows], label_names=label_names, groups_per_label=groups_per_label, label_sizes=label_count,
    )


def _score_block(
    _: int, Q: np.ndarray, pos: np.ndarray, own: np.ndarray, R: np.ndarray, r_sq: np.ndarray, groups: np.ndarray,
    to_label: np.ndarray, fine_label: np.ndarray, label_count: np.ndarray, combos: list,
) -> np.ndarray:
    """Silhouettes of one block of cells against every cell (``R``, sorted by fine group ``groups``)."""
    q_sq = sq_norms(Q)
    sums = np.zeros((len(Q), len(fine_label)))
    tiles = [(c0, c1, *runs(groups[c0:c1])) for c0, c1 in column_blocks(len(R))]
    for a, b in column_blocks(len(Q), ROW_TILE):
        for c0, c1, starts, run_group in tiles:
            self_col = np.where((pos[a:b] >= c0) & (pos[a:b] < c1), pos[a:b] - c0, -1)
            group_distance_sums(dot_tile(Q[a:b], R[c0:c1]), q_sq[a:b], r_sq[c0:c1], starts, run_group, self_col, sums[a:b])
    out = np.empty((len(Q), 1 + len(combos)))
    own_label = fine_label[own]
    out[:, 0] = _silhouette_nearest(sums @ to_label, own_label, label_count)
    for j, (M, counts, combo_label) in enumerate(combos):
        own_combo = np.argmax(M[own], axis=1)
        foreign = combo_label[None, :] != own_label[:, None]
        out[:, 1 + j] = _silhouette_nearest(sums @ M, own_combo, counts, foreign)
    return out


def _silhouette_nearest(sums: np.ndarray, own: np.ndarray, counts: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """Silhouette from per-cluster distance sums; ``excluded`` clusters (other labels) are not candidates.

    NaN where a cell has no candidate cluster besides its own (the silhouette is undefined there).
    """
    idx = np.arange(len(own))
    with np.errstate(divide="ignore", invalid="ignore"):
        means = sums / counts[None, :]
    means[idx, own] = np.inf
    if excluded is not None:
        means[excluded] = np.inf
    nearest = means.min(axis=1)
    s = _silhouette(sums[idx, own], counts[own], nearest)
    s[~np.isfinite(nearest)] = np.nan
    return s


def silhouette_label(samples: SilhouetteSamples, rescale: bool = True) -> float:
    """Mean label silhouette, rescaled to ``(s + 1) / 2`` as scIB; NaN with a single label."""
    if len(samples.label_names) < 2:
        return float("nan")
    s = samples.label
    return float(np.mean((s + 1) / 2 if rescale else s))


def silhouette_within(samples: SilhouetteSamples, key: str) -> float:
    """scIB's batch silhouette: per label, the mean of ``1 - |s|``; then the mean over labels.

    Labels with a single group of ``key``, or with every cell its own group, are left out (as scIB). NaN when
    no label qualifies (a single batch, for instance).
    """
    s = samples.within[key]
    eligible = (samples.groups_per_label[key] > 1) & (samples.groups_per_label[key] < samples.label_sizes)
    per_label = []
    for code in np.flatnonzero(eligible):
        mask = samples.label_codes == code
        if mask.any():
            per_label.append(np.mean(1.0 - np.abs(s[mask])))
    return float(np.mean(per_label)) if per_label else float("nan")
