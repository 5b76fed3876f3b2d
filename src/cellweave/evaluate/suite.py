"""The metric suite on one embedding: one kNN graph, one silhouette pass, every metric, the aggregate.

Inputs are checked before any Dask work: missing obs keys, cells without a value, NaN or infinite embedding
values raise :class:`~cellweave.errors.InputError`. A metric that is undefined for the input (one label, one
batch, no isolated label, no pairs) is NaN, with a warning and a note saying why.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import InputError
from .aggregate import aggregate
from .clustering import LEIDEN_RESOLUTIONS, leiden_grid, nmi_ari_kmeans, nmi_ari_leiden
from .compute import dask_scheduler, subset_rows
from .connectivity import graph_connectivity
from .graph import KnnGraph, build_graph
from .isolated import isolated_label_f1, isolated_label_silhouette, isolated_labels
from .kbet import kbet_per_label
from .lisi import clisi, ilisi
from .matching import foscttm, label_transfer, mixing_metric
from .pcr import pcr_comparison
from .silhouette import silhouette_label, silhouette_samples, silhouette_within

OBS_NAMES = "obs_names"  # a pair key naming the cell ids themselves (paired modalities share cell ids)


@dataclass
class EvalSettings:
    """Knobs of the suite (defaults follow scib-metrics' Benchmarker and scMODAL).

    Attributes
    ----------
    lisi_neighbors, kbet_neighbors, cluster_neighbors
        Neighbours counting the cell itself for LISI (90), kBET (50), Leiden and graph connectivity (15); the
        one graph has the largest.
    leiden_resolutions
        Leiden resolution grid (best NMI kept).
    silhouette_max_cells
        Cells scored by the silhouettes (each against all cells); above it a random subset (unbiased mean).
    foscttm_max_pairs
        Pairs scored by FOSCTTM and pair distance (each against all cells); above it a random subset.
    mixing_max_cells
        Cell subset of the mixing metric (scMODAL: 50,000).
    transfer_max_cells
        Query cells per direction of label transfer; above it a random subset (unbiased mean).
    subgraph_max_cells
        Leiden (NMI/ARI, isolated-label F1) and kBET, whose cost grows faster than linearly with the cells (a
        Leiden run per resolution, a diffusion map and a neighbour search per label), run on the kNN graph of a
        random subset of at most this many cells when there are more; ``None``: on every cell.
    transfer_k
        Neighbours of the label-transfer vote.
    kbet_alpha
        kBET significance level.
    chunk_size
        Cells per Dask block (results do not depend on it).
    backend
        kNN backend (:func:`cellweave.neighbors.knn`).
    scheduler, n_workers
        Dask scheduler (see :func:`~cellweave.evaluate.compute.dask_scheduler`) and its workers.
    seed
        Seed of k-means and the cell subsets.
    """

    lisi_neighbors: int = 90
    kbet_neighbors: int = 50
    cluster_neighbors: int = 15
    leiden_resolutions: tuple[float, ...] = LEIDEN_RESOLUTIONS
    silhouette_max_cells: int | None = 100_000
    foscttm_max_pairs: int | None = 50_000
    mixing_max_cells: int | None = 50_000
    subgraph_max_cells: int | None = 150_000
    transfer_max_cells: int | None = 100_000
    transfer_k: int = 20
    kbet_alpha: float = 0.05
    chunk_size: int | None = None
    backend: str = "auto"
    scheduler: str | None = None
    n_workers: int = 2
    seed: int = 0


@dataclass
class EvaluationResult:
    """Metrics of one embedding.

    Attributes
    ----------
    name
        The embedding's name.
    n_cells, n_dims
        Its shape.
    metrics
        ``{group: {metric: value}}`` for the groups ``bio``, ``batch``, ``modality`` and ``matching``.
    aggregate
        Group scores and the weighted overall score.
    details
        Per-direction label transfer, per modality pair FOSCTTM, the chosen Leiden resolution, the isolated
        labels, the scheduler.
    notes
        Why metrics are NaN (the same text as the warnings).
    seconds
        Wall time of each step.
    """

    name: str
    n_cells: int
    n_dims: int
    metrics: dict[str, dict[str, float]]
    aggregate: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (NaN as ``None``)."""
        return jsonable(asdict(self))


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python values and NaN/inf as ``None`` (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    return value


def obs_values(obs: pd.DataFrame, key: str, source: str, option: str) -> np.ndarray:
    """One obs column as strings, or a clear error naming the key and the columns there are.

    Raises
    ------
    InputError
        When the column is missing or some cells have no value.
    """
    if key == OBS_NAMES:
        return np.asarray(obs.index.astype(str))
    if key not in obs.columns:
        raise InputError(source, f"obs['{key}']", f"no such column (obs has: {', '.join(map(str, obs.columns)) or 'none'})",
                         f"pass {option} with one of these")
    column = obs[key]
    missing = int(column.isna().sum())
    if missing:
        raise InputError(source, f"obs['{key}']", f"{missing} of {len(column)} cells have no value",
                         "fill the missing values, or evaluate only the cells that have one")
    return np.asarray(column.astype(str))


def check_embedding(X: np.ndarray, source: str, field: str = "embedding") -> None:
    """Refuse NaN or infinite values (before any Dask work), naming how many and the first cell.

    Raises
    ------
    InputError
        When ``X`` is not 2-D with at least 3 cells, or holds NaN/inf.
    """
    if X.ndim != 2 or X.shape[0] < 3 or X.shape[1] < 1:
        raise InputError(source, field, f"expected a (cells x dims) matrix with at least 3 cells, got shape {X.shape}",
                         "pass the embedding of at least 3 cells")
    bad_rows = np.zeros(X.shape[0], dtype=bool)
    step = 1 << 16
    for start in range(0, X.shape[0], step):
        bad_rows[start:start + step] = ~np.isfinite(X[start:start + step]).all(axis=1)
    if bad_rows.any():
        first = int(np.argmax(bad_rows))
        raise InputError(source, field, f"{int(bad_rows.sum())} cells have NaN or infinite values (first: row {first})",
                         "fix the model run that wrote it (diverged training?) or drop those cells")


class _Run:
    """Bookkeeping of one suite run: timings, notes and a progress bar."""

    def __init__(self, name: str, steps: int, progress: bool) -> None:
        self.seconds: dict[str, float] = {}
        self.notes: list[str] = []
        self.bar = tqdm(total=steps, desc=f"evaluate {name}", disable=not progress, leave=False)

    def step(self, label: str, fn: Callable[[], Any]) -> Any:
        self.bar.set_postfix_str(label)
        t0 = time.perf_counter()
        out = fn()
        self.seconds[label] = round(time.perf_counter() - t0, 3)
        self.bar.update(1)
        return out

    def undefined(self, text: str) -> float:
        self.notes.append(text)
        warnings.warn(text, stacklevel=3)
        return float("nan")


def evaluate_embedding(
    X: np.ndarray,
    obs: pd.DataFrame,
    *,
    label_key: str,
    batch_key: str | None = None,
    modality_key: str | None = None,
    pair_key: str | None = None,
    X_pre: np.ndarray | None = None,
    name: str = "embedding",
    source: str | None = None,
    settings: EvalSettings | None = None,
    graph: KnnGraph | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Every metric of one embedding.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    obs
        Cell metadata (one row per cell of ``X``).
    label_key
        Cell-type column (bio conservation, matching).
    batch_key
        Batch column (batch correction), optional.
    modality_key
        Modality column (modality integration, matching), optional.
    pair_key
        Column pairing cells across modalities (``"obs_names"``: the cell ids), optional; needs the modality.
    X_pre
        Unintegrated representation of the same cells for PCR comparison (NaN without it).
    name, source
        For the report and messages.
    settings
        Suite settings.
    graph
        A kNN graph of ``X`` built before (with at least ``settings.lisi_neighbors`` neighbours); built here
        otherwise.
    progress
        Show a progress bar.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    InputError
        Missing keys, cells without a value, NaN/inf in the embedding, mismatched shapes.
    """
    s = settings or EvalSettings()
    source = source or name
    X = np.asarray(X)
    check_embedding(X, source)
    if len(obs) != X.shape[0]:
        raise InputError(source, "obs", f"{len(obs)} obs rows for {X.shape[0]} embedding rows", "pass obs of the embedded cells")
    labels = obs_values(obs, label_key, source, "--label-key")
    batch = obs_values(obs, batch_key, source, "--batch-key") if batch_key else None
    modality = obs_values(obs, modality_key, source, "--modality-key") if modality_key else None
    if pair_key and modality is None:
        raise InputError(source, "--pair-key", "pairs join cells of different modalities, but no modality key was given",
                         "pass --modality-key as well")
    pair = obs_values(obs, pair_key, source, "--pair-key") if pair_key else None
    if X_pre is not None:
        X_pre = np.asarray(X_pre)
        check_embedding(X_pre, source, "unintegrated representation")
        if X_pre.shape[0] != X.shape[0]:
            raise InputError(source, "unintegrated representation", f"{X_pre.shape[0]} rows for {X.shape[0]} cells",
                             "pass the unintegrated representation of the same cells")
    if pair is not None:
        for m in pd.unique(modality):
            if pd.Index(pair[modality == m]).has_duplicates:
                raise InputError(source, f"obs['{pair_key}']", f"pair ids repeat within modality {m!r}",
                                 "give each cell of a modality its own pair id")

    covariates = {k: v for k, v in (("batch", batch), ("modality", modality)) if v is not None}
    subset = s.subgraph_max_cells is not None and X.shape[0] > s.subgraph_max_cells
    run = _Run(name, 7 + subset + bool(covariates) + 2 * len(covariates) + (3 if modality is not None else 0), progress)
    n_labels = len(pd.unique(labels))
    if n_labels < 2:
        run.undefined(f"{name}: a single label in obs['{label_key}']: label silhouette, NMI/ARI, cLISI and isolated "
                      "labels are undefined (NaN)")
    for key, values in covariates.items():
        if len(pd.unique(values)) < 2:
            run.undefined(f"{name}: a single {key} in obs['{batch_key if key == 'batch' else modality_key}']: {key} "
                          "silhouette, iLISI, kBET and PCR are undefined (NaN)")

    metrics: dict[str, dict[str, float]] = {"bio": {}, "batch": {}, "modality": {}, "matching": {}}
    details: dict[str, Any] = {}
    n_graph = max(s.lisi_neighbors, s.kbet_neighbors, s.cluster_neighbors)
    with dask_scheduler(s.scheduler, s.n_workers, X.shape[0]) as where:
        details["scheduler"] = where
        if graph is None:
            graph = run.step("knn graph", lambda: build_graph(X, n_graph, backend=s.backend))
        k_lisi, k_kbet, k_cluster = (min(k, graph.n_neighbors) for k in (s.lisi_neighbors, s.kbet_neighbors, s.cluster_neighbors))
        sil = run.step("silhouette", lambda: silhouette_samples(X, labels, covariates, chunk_size=s.chunk_size,
                                                                 max_cells=s.silhouette_max_cells, seed=s.seed))
        details["silhouette_cells"] = int(len(sil.rows))
        bio = metrics["bio"]
        bio["silhouette_label"] = silhouette_label(sil)
        bio["clisi"] = run.step("clisi", lambda: clisi(graph, labels, k_lisi, chunk_size=s.chunk_size))
        km = run.step("kmeans", lambda: nmi_ari_kmeans(X, labels, seed=s.seed))
        bio["nmi_kmeans"], bio["ari_kmeans"] = km["nmi"], km["ari"]
        sub, sub_rows = graph, None  # Leiden and kBET: every cell, or a random subset with its own graph
        if subset:
            sub_rows = subset_rows(X.shape[0], s.subgraph_max_cells, s.seed)
            sub = run.step("knn graph of the subset", lambda: build_graph(X[sub_rows], max(k_kbet, k_cluster),
                                                                            backend=s.backend))
        details["leiden_kbet_cells"] = int(sub.n_cells)
        sub_labels = labels if sub_rows is None else labels[sub_rows]
        clusterings = run.step("leiden", lambda: leiden_grid(sub, s.leiden_resolutions, n_neighbors=k_cluster,
                                                                      n_jobs=s.n_workers))
        ld = nmi_ari_leiden(clusterings, sub_labels)
        bio["nmi_leiden"], bio["ari_leiden"] = ld["nmi"], ld["ari"]
        details["leiden_resolution"] = ld["resolution"]
        iso_key = "batch" if batch is not None else ("modality" if modality is not None else None)
        isolated = isolated_labels(labels, covariates[iso_key]) if iso_key and n_labels > 1 else []
        details["isolated_labels"] = isolated
        if isolated:
            bio["isolated_label_f1"] = run.step("isolated f1", lambda: isolated_label_f1(clusterings, sub_labels, isolated))
            bio["isolated_label_silhouette"] = isolated_label_silhouette(sil, isolated)
        else:
            why = "no batch or modality key" if iso_key is None else f"a single {iso_key} or a single label"
            bio["isolated_label_f1"] = bio["isolated_label_silhouette"] = run.undefined(
                f"{name}: isolated-label scores are undefined ({why}): NaN")
        connectivity = run.step("graph connectivity", lambda: graph_connectivity(graph, labels, k_cluster))

        kbets = {}
        if covariates:  # the covariates share each label's diffusion map
            sub_covariates = {k: v if sub_rows is None else v[sub_rows] for k, v in covariates.items()}
            kbets = run.step("kbet", lambda: kbet_per_label(sub, sub_covariates, sub_labels, k_kbet, alpha=s.kbet_alpha))
        for key, values in covariates.items():
            group = metrics[key]
            group["silhouette"] = silhouette_within(sil, key)
            group["ilisi"] = run.step(f"ilisi {key}", lambda v=values: ilisi(graph, v, k_lisi, chunk_size=s.chunk_size))
            group["kbet"] = kbets[key]
            if X_pre is None:
                group["pcr_comparison"] = run.undefined(f"{name}: PCR comparison ({key}) needs the unintegrated "
                                                         "representation (--pre-obsm-key): NaN")
            else:
                group["pcr_comparison"] = run.step(
                    f"pcr {key}", lambda v=values: pcr_comparison(X_pre, X, v, chunk_size=s.chunk_size))
        # graph connectivity scores integration: with modalities (as scMRDR) it counts there, else with batches
        metrics["modality" if modality is not None else "batch"]["graph_connectivity"] = connectivity

        if modality is not None and len(pd.unique(modality)) > 1:
            match = metrics["matching"]
            transfer = run.step("label transfer", lambda: label_transfer(X, labels, modality, s.transfer_k,
                                                                         backend=s.backend, chunk_size=s.chunk_size,
                                                                         max_cells=s.transfer_max_cells, seed=s.seed))
            details["label_transfer"] = transfer
            match["label_transfer_1nn"] = float(np.mean([v["1nn"] for v in transfer.values()]))
            match["label_transfer_knn"] = float(np.mean([v["knn"] for v in transfer.values()]))
            if pair is not None:
                pairs = run.step("foscttm", lambda: foscttm(X, modality, pair, max_pairs=s.foscttm_max_pairs,
                                                                 seed=s.seed, chunk_size=s.chunk_size))
                details["foscttm"] = pairs
                if pairs:
                    match["foscttm"] = float(np.mean([v["foscttm"] for v in pairs.values()]))
                    match["pair_distance"] = float(np.mean([v["pair_distance"] for v in pairs.values()]))
                else:
                    match["foscttm"] = match["pair_distance"] = run.undefined(
                        f"{name}: no pair id of obs['{pair_key}'] is shared by two modalities: FOSCTTM is NaN")
            match["mixing_metric"] = run.step("mixing", lambda: mixing_metric(
                X, modality, max_cells=s.mixing_max_cells, backend=s.backend, chunk_size=s.chunk_size))
    for group in ("batch", "modality", "matching"):
        if not metrics[group]:
            del metrics[group]
    run.bar.close()
    scores = aggregate({g: m for g, m in metrics.items() if g != "matching"})
    return EvaluationResult(name=name, n_cells=int(X.shape[0]), n_dims=int(X.shape[1]), metrics=metrics,
                            aggregate=scores, details=details, notes=run.notes, seconds=run.seconds)
