"""Chunked Dask evaluation of embeddings: scIB bio conservation, batch and modality integration, matching.

- :func:`evaluate_embedding`: every metric of one embedding from one kNN graph (built once) and one blocked
  silhouette pass; :func:`evaluate_to_dir` (``cellweave evaluate``) writes ``metrics.json``, ``report.md``
  and UMAP plots for one or several embeddings side by side.
- Metric functions take an embedding or a :class:`KnnGraph` and labels, and run as Dask blocks over cells on
  the active scheduler (:func:`dask_scheduler`): silhouettes by blocked matrix products (never N x N),
  LISI, kBET, graph connectivity, NMI/ARI (FAISS k-means, Leiden grid), isolated labels, PCR, label
  transfer, FOSCTTM, pair distance and the mixing metric.
- :func:`aggregate`: bio 0.4 / modality 0.3 / batch 0.3 (as scMRDR); :func:`scaled_aggregate`: scib-metrics'
  min-max scaled variant across embeddings.
"""

from .aggregate import GROUP_WEIGHTS, aggregate, min_max_scaled, scaled_aggregate
from .clustering import LEIDEN_RESOLUTIONS, kmeans_labels, leiden, leiden_grid, nmi_ari, nmi_ari_kmeans, nmi_ari_leiden
from .compute import dask_scheduler
from .connectivity import graph_connectivity
from .graph import KnnGraph, build_graph
from .inputs import DEFAULT_OBSM_KEY, Embedding, read_embedding, read_run
from .isolated import isolated_label_f1, isolated_label_silhouette, isolated_labels
from .kbet import diffusion_neighbors, kbet, kbet_per_label
from .lisi import clisi, ilisi, lisi
from .matching import foscttm, label_transfer, mixing_metric
from .pcr import pcr, pcr_comparison
from .silhouette import SilhouetteSamples, silhouette_label, silhouette_samples, silhouette_within
from .suite import OBS_NAMES, EvalSettings, EvaluationResult, evaluate_embedding
from .workflow import evaluate_to_dir, load_inputs

__all__ = [
    "DEFAULT_OBSM_KEY", "GROUP_WEIGHTS", "LEIDEN_RESOLUTIONS", "OBS_NAMES", "Embedding", "EvalSettings",
    "EvaluationResult", "KnnGraph", "SilhouetteSamples", "aggregate", "build_graph", "clisi", "dask_scheduler",
    "diffusion_neighbors", "evaluate_embedding", "evaluate_to_dir", "foscttm", "graph_connectivity", "ilisi",
    "isolated_label_f1", "isolated_label_silhouette", "isolated_labels", "kbet", "kbet_per_label", "kmeans_labels",
    "label_transfer", "leiden", "leiden_grid", "lisi", "load_inputs", "min_max_scaled", "mixing_metric", "nmi_ari",
    "nmi_ari_kmeans",
    "nmi_ari_leiden", "pcr", "pcr_comparison", "read_embedding", "read_run", "scaled_aggregate", "silhouette_label",
    "silhouette_samples", "silhouette_within",
]
