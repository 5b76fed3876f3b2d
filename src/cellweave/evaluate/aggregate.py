"""Aggregate scores: group means and the weighted overall score (as scMRDR), raw and min-max scaled.

Each group score is the mean of its defined (non-NaN) metrics; the overall score weights bio conservation
0.4, modality integration 0.3 and batch correction 0.3 (scMRDR), renormalised over the groups that have a
score (without modalities: bio 4/7, batch 3/7, close to scIB's 0.6/0.4). The scaled variant is
scib-metrics' Benchmarker's ``min_max_scale``: every metric is min-max scaled across the compared embeddings
(a metric equal for all becomes 0) before the same aggregation. Matching metrics are reported, not aggregated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

GROUP_WEIGHTS = {"bio": 0.4, "modality": 0.3, "batch": 0.3}

Metrics = Mapping[str, Mapping[str, float]]


def _mean(values) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def aggregate(metrics: Metrics) -> dict[str, float]:
    """Group scores and the weighted ``overall`` score of one embedding (NaN when nothing is defined)."""
    scores = {group: _mean(metrics.get(group, {}).values()) for group in GROUP_WEIGHTS}
    present = {g: w for g, w in GROUP_WEIGHTS.items() if math.isfinite(scores[g])}
    total = sum(present.values())
    scores["overall"] = sum(scores[g] * w for g, w in present.items()) / total if total else float("nan")
    return scores


def min_max_scaled(results: Mapping[str, Metrics]) -> dict[str, dict[str, dict[str, float]]]:
    """Every aggregated metric min-max scaled across embeddings (``{embedding: {group: {metric: value}}}``)."""
    names = list(results)
    scaled: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    for group in GROUP_WEIGHTS:
        metric_names = sorted({m for n in names for m in results[n].get(group, {})})
        for metric in metric_names:
            values = np.array([results[n].get(group, {}).get(metric, float("nan")) for n in names], dtype=float)
            finite = np.isfinite(values)
            lo = values[finite].min() if finite.any() else 0.0
            span = values[finite].max() - lo if finite.any() else 0.0
            for n, v in zip(names, values, strict=True):
                if not math.isfinite(v):
                    value = float("nan")
                else:
                    value = float((v - lo) / span) if span > 0 else 0.0
                scaled[n].setdefault(group, {})[metric] = value
    return scaled


def scaled_aggregate(results: Mapping[str, Metrics]) -> dict[str, dict[str, float]]:
    """Aggregate scores of every embedding after min-max scaling across embeddings."""
    return {name: aggregate(metrics) for name, metrics in min_max_scaled(results).items()}
