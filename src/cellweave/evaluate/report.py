"""``metrics.json`` and ``report.md``: one table per metric group, compared embeddings side by side."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .aggregate import GROUP_WEIGHTS, min_max_scaled, scaled_aggregate
from .suite import EvalSettings, EvaluationResult, jsonable

GROUP_TITLES = {
    "bio": "Bio conservation",
    "modality": "Modality integration",
    "batch": "Batch correction",
    "matching": "Matching across modalities",
}
METRIC_TITLES = {
    "silhouette_label": "Silhouette label",
    "isolated_label_f1": "Isolated labels F1",
    "isolated_label_silhouette": "Isolated labels silhouette",
    "nmi_kmeans": "KMeans NMI",
    "ari_kmeans": "KMeans ARI",
    "nmi_leiden": "Leiden NMI",
    "ari_leiden": "Leiden ARI",
    "clisi": "cLISI",
    "silhouette": "Silhouette",
    "ilisi": "iLISI",
    "kbet": "kBET",
    "pcr_comparison": "PCR comparison",
    "graph_connectivity": "Graph connectivity",
    "label_transfer_1nn": "Label transfer (1-NN)",
    "label_transfer_knn": "Label transfer (k-NN vote)",
    "foscttm": "FOSCTTM (lower is better)",
    "pair_distance": "Pair distance (lower is better)",
    "mixing_metric": "Mixing metric (lower is better)",
}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NaN"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join([str(r[0])] + [_fmt(v) for v in r[1:]]) + " |" for r in rows]
    return lines + [""]


def metrics_document(
    results: Sequence[EvaluationResult], settings: EvalSettings, keys: Mapping[str, str | None], sources: Mapping[str, str],
) -> dict[str, Any]:
    """The content of ``metrics.json``: settings, keys, and every embedding's results (NaN as null)."""
    from .. import __version__

    doc: dict[str, Any] = {
        "cellweave_version": __version__,
        "keys": dict(keys),
        "settings": jsonable(vars(settings)),
        "weights": GROUP_WEIGHTS,
        "embeddings": {r.name: {**r.to_dict(), "source": sources.get(r.name)} for r in results},
    }
    if len(results) > 1:
        table = {r.name: {g: m for g, m in r.metrics.items() if g != "matching"} for r in results}
        doc["min_max_scaled"] = jsonable({"metrics": min_max_scaled(table), "aggregate": scaled_aggregate(table)})
    return doc


def write_json(doc: Mapping[str, Any]) -> str:
    """``metrics.json`` text (strict JSON: NaN is already null)."""
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def render_markdown(
    results: Sequence[EvaluationResult],
    keys: Mapping[str, str | None],
    sources: Mapping[str, str],
    images: Mapping[str, Sequence[str]],
) -> str:
    """``report.md``: inputs, aggregate scores (raw and, for several embeddings, min-max scaled), one table per
    metric group, per-direction matching details, notes on undefined metrics, plots and timings.
    """
    names = [r.name for r in results]
    by_name = {r.name: r for r in results}
    out = ["# cellweave evaluation", ""]
    out += ["Keys: " + ", ".join(f"{k} = `{v}`" for k, v in keys.items() if v) + ".", ""]
    inputs = [[r.name, f"`{sources.get(r.name, '')}`", r.n_cells, r.n_dims] for r in results]
    out += _table(["embedding", "source", "cells", "dims"], inputs)
    weights = ", ".join(f"{GROUP_TITLES[g].lower()} {w}" for g, w in GROUP_WEIGHTS.items())
    out += ["## Aggregate scores", "", f"Mean of each group's defined metrics; overall = {weights} (renormalised over the "
            "groups present).", ""]
    groups = (*[g for g in GROUP_WEIGHTS if any(r.metrics.get(g) for r in results)], "overall")
    raw = [[GROUP_TITLES.get(g, "Overall"), *[by_name[n].aggregate.get(g) for n in names]] for g in groups]
    out += _table(["score", *names], raw)
    if len(results) > 1:
        table = {r.name: {g: m for g, m in r.metrics.items() if g != "matching"} for r in results}
        scaled = scaled_aggregate(table)
        out += ["### Min-max scaled across embeddings (scib-metrics Benchmarker)", ""]
        out += _table(["score", *names], [[GROUP_TITLES.get(g, "Overall"), *[scaled[n].get(g) for n in names]] for g in groups])
    for group, title in GROUP_TITLES.items():
        metric_names = list(dict.fromkeys(m for r in results for m in r.metrics.get(group, {})))
        if not metric_names:
            continue
        out += [f"## {title}", ""]
        out += _table(["metric", *names], [[METRIC_TITLES.get(m, m), *[by_name[n].metrics.get(group, {}).get(m) for n in names]]
                                           for m in metric_names])
    detail_rows = []
    for r in results:
        for direction, acc in r.details.get("label_transfer", {}).items():
            detail_rows.append([r.name, f"label transfer {direction}", acc["1nn"], acc["knn"]])
        for pair, v in r.details.get("foscttm", {}).items():
            what = f"FOSCTTM / pair distance {pair} ({v['n_pairs']} pairs)"
            detail_rows.append([r.name, what, v["foscttm"], v["pair_distance"]])
    if detail_rows:
        out += ["### Per modality pair", ""]
        out += _table(["embedding", "what", "1-NN / FOSCTTM", "k-NN / pair distance"], detail_rows)
    notes = [n for r in results for n in r.notes]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if any(images.values()):
        out += ["## Plots", ""]
        for name in names:
            for image in images.get(name, []):
                out += [f"![{name}]({image})", ""]
    out += ["## Timings (seconds)", ""]
    steps = list(dict.fromkeys(s for r in results for s in r.seconds))
    out += _table(["step", *names], [[s, *[by_name[n].seconds.get(s) for n in names]] for s in steps])
    return "\n".join(out)
