"""Isolated-label scores (scIB): how well labels present in the fewest batches stay distinct.

A label is *isolated* when it occurs in no more batches than the label occurring in the fewest (scIB's
default threshold). The F1 score is scIB's cluster form: per isolated label, the best F1 of any single
cluster against the label, over every clustering of the Leiden resolution grid. The silhouette score is
scib-metrics' form: the mean rescaled label silhouette of the label's cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .silhouette import SilhouetteSamples


def isolated_labels(labels: np.ndarray | pd.Series, batches: np.ndarray | pd.Series, threshold: int | None = None) -> list:
    """Labels found in at most ``threshold`` batches (default: the fewest batches any label is found in).

    Empty when there is a single batch (nothing can be isolated from other batches).
    """
    table = pd.DataFrame({"label": np.asarray(labels), "batch": np.asarray(batches)}).drop_duplicates()
    if table["batch"].nunique() < 2:
        return []
    per_label = table.groupby("label")["batch"].count()
    limit = int(per_label.min()) if threshold is None else int(threshold)
    return sorted(per_label.index[per_label <= limit].tolist())


def isolated_label_f1(clusterings: dict[float, np.ndarray], labels: np.ndarray | pd.Series, isolated: list) -> float:
    """Mean over isolated labels of the best one-cluster F1 over all clusterings.

    Isolated labels without a cell among ``labels`` (the clustered cells may be a subset) are skipped; NaN when
    none is left.
    """
    codes, names = pd.factorize(np.asarray(labels), sort=True)
    present = set(names)
    isolated = [v for v in isolated if v in present]
    if not isolated or not clusterings:
        return float("nan")
    wanted = np.searchsorted(names, np.asarray(isolated, dtype=names.dtype))
    label_size = np.bincount(codes, minlength=len(names))
    best = np.zeros(len(wanted))
    for clusters in clusterings.values():
        k = int(clusters.max()) + 1
        table = np.bincount(codes * k + clusters, minlength=len(names) * k).reshape(len(names), k)
        cluster_size = table.sum(axis=0)
        # F1 of "in cluster c" against "has label l" is 2 |l & c| / (|l| + |c|)
        f1 = 2 * table[wanted] / (label_size[wanted, None] + cluster_size[None, :])
        best = np.maximum(best, f1.max(axis=1))
    return float(best.mean())


def isolated_label_silhouette(samples: SilhouetteSamples, isolated: list) -> float:
    """Mean over isolated labels of the rescaled label silhouette ``(s + 1) / 2`` of their (scored) cells."""
    if not isolated or len(samples.label_names) < 2:
        return float("nan")
    code_of = {v: i for i, v in enumerate(samples.label_names)}
    rescaled = (samples.label + 1) / 2
    scores = [rescaled[samples.label_codes == code_of[v]].mean() for v in isolated if (samples.label_codes == code_of[v]).any()]
    return float(np.mean(scores)) if scores else float("nan")
