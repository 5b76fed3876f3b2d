"""The evaluation suite against its references: scib-metrics, sklearn, dense numpy; chunking; errors; CLI.

Real embeddings: scanpy's pbmc68k_reduced (X_pca, bulk_labels, two pseudo-batches) and the CITE-seq file
(RNA and protein projected into a shared space by CCA, paired by cell id). Every graph metric gets the same
exact kNN graph on both sides (sklearn NearestNeighbors, the cell itself first, as scib-metrics expects).
"""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scib_metrics
import scipy.sparse.linalg
from scib_metrics.nearest_neighbors import NeighborsResults
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score, silhouette_score
from sklearn.metrics import silhouette_samples as sk_silhouette
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import MinMaxScaler

from cellweave import InputError
from cellweave.cli import main
from cellweave.evaluate import (
    EvalSettings,
    KnnGraph,
    aggregate,
    build_graph,
    clisi,
    evaluate_embedding,
    foscttm,
    graph_connectivity,
    ilisi,
    isolated_label_f1,
    isolated_label_silhouette,
    isolated_labels,
    kbet,
    kbet_per_label,
    label_transfer,
    leiden_grid,
    lisi,
    min_max_scaled,
    mixing_metric,
    nmi_ari,
    nmi_ari_kmeans,
    nmi_ari_leiden,
    pcr,
    pcr_comparison,
    read_embedding,
    scaled_aggregate,
    silhouette_label,
    silhouette_samples,
    silhouette_within,
)
from cellweave.evaluate.compute import dask_scheduler

from .conftest import CITE_SEQ, require_shared

TOL = 0.01  # every metric equals its reference within this


def _graph(X: np.ndarray, n_neighbors: int = 90) -> KnnGraph:
    """Exact kNN graph from sklearn, self dropped (the cell comes back first in ``with_self``)."""
    d, i = NearestNeighbors(n_neighbors=n_neighbors).fit(X).kneighbors(X)
    return KnnGraph(d[:, 1:], i[:, 1:])


def _scib(graph: KnnGraph, n: int) -> NeighborsResults:
    d, i = graph.with_self(n)
    return NeighborsResults(indices=i, distances=d)


@pytest.fixture(scope="module")
def pbmc():
    """pbmc68k_reduced: X_pca, bulk_labels, two random pseudo-batches and a copy with a batch shift."""
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    rng = np.random.default_rng(0)
    X = np.ascontiguousarray(a.obsm["X_pca"], dtype=np.float32)
    labels = a.obs["bulk_labels"].astype(str).to_numpy()
    batch = rng.choice(["b0", "b1"], a.n_obs)
    shifted = X + (batch == "b1")[:, None].astype(np.float32) * 0.8
    return {"X": X, "shifted": shifted, "labels": labels, "batch": batch, "graph": _graph(X), "graph_shifted": _graph(shifted)}


@pytest.fixture(scope="module")
def cite():
    """The real CITE-seq cells: RNA and protein in a shared 8-d CCA space, paired by cell id, labels from protein."""
    import scanpy as sc
    from sklearn.cluster import KMeans

    a = ad.read_h5ad(require_shared(CITE_SEQ))
    rna = a.copy()
    sc.pp.normalize_total(rna)
    sc.pp.log1p(rna)
    rna_pcs = PCA(20, random_state=0).fit_transform(rna.X.toarray() if hasattr(rna.X, "toarray") else rna.X)
    protein = np.log1p(np.asarray(a.obsm["protein_expression"], dtype=np.float64))
    z_rna, z_adt = CCA(n_components=8, max_iter=2000).fit(rna_pcs, protein).transform(rna_pcs, protein)
    X = np.vstack([z_rna / z_rna.std(), z_adt / z_adt.std()]).astype(np.float32)
    labels = KMeans(4, n_init=10, random_state=0).fit_predict(PCA(5, random_state=0).fit_transform(protein)).astype(str)
    obs = pd.DataFrame({
        "cell_type": np.concatenate([labels, labels]),
        "modality": ["rna"] * a.n_obs + ["adt"] * a.n_obs,
        "cell_id": np.concatenate([a.obs_names, a.obs_names]),
    }, index=[f"rna_{c}" for c in a.obs_names] + [f"adt_{c}" for c in a.obs_names])
    return X, obs


# ------------------------------------------------------------------------------------------ silhouettes


def test_silhouette_equals_sklearn_and_scib(pbmc):
    X, labels, batch = pbmc["shifted"], pbmc["labels"], pbmc["batch"]
    s = silhouette_samples(X, labels, {"batch": batch}, chunk_size=128)
    reference = sk_silhouette(X.astype(np.float64), labels)
    assert np.abs(s.label - reference).max() < 1e-4
    assert abs(s.label.mean() - silhouette_score(X.astype(np.float64), labels)) < 1e-5
    assert abs(silhouette_label(s) - scib_metrics.silhouette_label(X, labels)) < TOL
    # scIB's batch silhouette is the silhouette of batches inside each label, computed on that label alone
    per_label = []
    for value in np.unique(labels):
        mask = labels == value
        inside = sk_silhouette(X[mask].astype(np.float64), batch[mask])
        assert np.abs(s.within["batch"][mask] - inside).max() < 1e-4
        per_label.append(np.mean(1 - np.abs(inside)))
    assert abs(silhouette_within(s, "batch") - np.mean(per_label)) < 1e-5
    # and scib-metrics agrees (on three coarse labels: its JAX kernel compiles once per label size)
    coarse = np.select([np.char.find(labels.astype(str), "CD4") >= 0, np.char.find(labels.astype(str), "CD8") >= 0],
                       ["CD4", "CD8"], "other")
    s = silhouette_samples(X, coarse, {"batch": batch})
    assert abs(silhouette_within(s, "batch") - scib_metrics.silhouette_batch(X, coarse, batch)) < TOL


# Chunked silhouettes agree with the unchunked ones to float32 rounding, not bit for bit: every distance comes
# from a float32 GEMM whose summation order BLAS chooses by tile shape, CPU and thread count. Reordering the
# sum over d dimensions moves q.r by a few ulps of |q||r|, i.e. each distance by ~1e-7 relative; a silhouette is
# a ratio of mean distances in [-1, 1], so it moves by ~1e-7 too (2e-7 measured with the order reversed below).
# 1e-5 leaves a 50x margin and is still far below any difference a metric would report.
SILHOUETTE_ATOL = 1e-5


def _reversed_gemm(Q: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``Q @ R.T`` summed over the dimensions in reverse order: another BLAS's valid rounding."""
    return np.ascontiguousarray(Q[:, ::-1]) @ np.ascontiguousarray(R[:, ::-1]).T


def test_silhouette_chunks_agree_to_float32_rounding(pbmc, monkeypatch):
    import cellweave.evaluate.silhouette as silhouette

    X, labels, batch = pbmc["X"], pbmc["labels"], pbmc["batch"]
    within = {"batch": batch, "half": np.arange(len(X)) % 2}
    whole = silhouette_samples(X, labels, within, chunk_size=len(X))
    monkeypatch.setattr(silhouette, "dot_tile", _reversed_gemm)  # as if another CPU blocked the GEMM differently
    for chunk in (1, 37, 256):
        part = silhouette_samples(X, labels, within, chunk_size=chunk)
        np.testing.assert_allclose(part.label, whole.label, rtol=0, atol=SILHOUETTE_ATOL)
        for k in whole.within:
            np.testing.assert_allclose(part.within[k], whole.within[k], rtol=0, atol=SILHOUETTE_ATOL, equal_nan=True)
    monkeypatch.undo()
    # a capped run scores a subset of cells, each against all cells: the same numbers for those cells
    sub = silhouette_samples(X, labels, {"batch": batch, "half": np.arange(len(X)) % 2}, max_cells=200, seed=3)
    assert len(sub.rows) == 200
    np.testing.assert_allclose(sub.label, whole.label[sub.rows], rtol=0, atol=SILHOUETTE_ATOL)


# ------------------------------------------------------------------------------------------ graph metrics


def test_lisi_equals_scib(pbmc):
    g, labels, batch = pbmc["graph_shifted"], pbmc["labels"], pbmc["batch"]
    nn = _scib(g, 90)
    assert abs(ilisi(g, batch) - scib_metrics.ilisi_knn(nn, batch)) < TOL
    assert abs(clisi(g, labels) - scib_metrics.clisi_knn(nn, labels)) < TOL
    per_cell = lisi(g, batch, chunk_size=50)
    reference = scib_metrics.lisi_knn(nn, batch)
    assert np.abs(per_cell - reference).max() < 1e-3
    # each row is computed alone, but vectorised exp/log may round an element by its position in the block
    np.testing.assert_allclose(per_cell, lisi(g, batch, chunk_size=len(batch)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("which", ["graph", "graph_shifted"])
def test_kbet_equals_scib(pbmc, which, monkeypatch):
    import scib_metrics.utils._diffusion_nn as diffusion

    def exact(X, n_neighbors, **_):  # scib-metrics' pynndescent compiles for a minute; exact kNN as ours
        d, i = NearestNeighbors(n_neighbors=n_neighbors).fit(X).kneighbors(X)
        return NeighborsResults(indices=i, distances=d)

    monkeypatch.setattr(diffusion.nearest_neighbors, "pynndescent", exact)
    eigsh = scipy.sparse.linalg.eigsh

    def started(A, *args, v0=None, **kwargs):  # ARPACK's default start depends on earlier calls: ours is fixed
        return eigsh(A, *args, v0=np.full(A.shape[0], 1.0 / np.sqrt(A.shape[0])) if v0 is None else v0, **kwargs)

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", started)
    g, labels, batch = pbmc[which], pbmc["labels"], pbmc["batch"]
    nn = _scib(g, 50)
    ours, _, p = kbet(nn.indices, batch, chunk_size=64)
    ref, _, p_ref = scib_metrics.kbet(nn, batch)
    assert abs(ours - ref) < TOL
    assert np.abs(p - p_ref).max() < 1e-4
    single = kbet_per_label(g, batch, labels)
    assert abs(single - scib_metrics.kbet_per_label(nn, batch, labels)) < TOL
    halves = np.where(np.arange(len(batch)) % 2 == 0, "even", "odd")  # two covariates share the diffusion maps
    assert kbet_per_label(g, {"batch": batch, "half": halves}, labels) == {
        "batch": single, "half": kbet_per_label(g, halves, labels)}


def test_graph_connectivity_equals_scib(pbmc):
    g, labels = pbmc["graph"], pbmc["labels"]
    assert abs(graph_connectivity(g, labels) - scib_metrics.graph_connectivity(_scib(g, 15), labels)) < 1e-12


def test_leiden_nmi_ari_equal_scib(pbmc):
    g, labels = pbmc["graph"], pbmc["labels"]
    ours = nmi_ari_leiden(leiden_grid(g), labels)
    ref = scib_metrics.nmi_ari_cluster_labels_leiden(_scib(g, 15), labels)
    assert abs(ours["nmi"] - ref["nmi"]) < TOL and abs(ours["ari"] - ref["ari"]) < TOL


def test_leiden_in_worker_processes_equals_one_process(pbmc, monkeypatch):
    import cellweave.evaluate.clustering as clustering

    monkeypatch.setattr(clustering, "PARALLEL_LEIDEN_MIN_CELLS", 0)  # the 700-cell graph would stay in-process
    grid = (0.4, 1.0, 1.6)
    serial = leiden_grid(pbmc["graph"], grid)
    parallel = leiden_grid(pbmc["graph"], grid, n_jobs=2)
    assert list(parallel) == list(serial)
    for r in grid:
        assert np.array_equal(parallel[r], serial[r])
    assert len(np.unique(serial[1.6])) > len(np.unique(serial[0.4]))  # the resolutions really differ


def test_kmeans_nmi_ari(pbmc):
    # well-separated clusters: k-means has one answer, FAISS and scib-metrics' JAX k-means both find it
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 6, 3000)
    X = (rng.normal(size=(3000, 10)) + 8 * rng.normal(size=(6, 10))[truth]).astype(np.float32)
    ours = nmi_ari_kmeans(X, truth)
    ref = scib_metrics.nmi_ari_cluster_labels_kmeans(X, truth)
    assert ours["nmi"] > 0.99 and abs(ours["nmi"] - ref["nmi"]) < TOL and abs(ours["ari"] - ref["ari"]) < TOL
    # NMI / ARI themselves are sklearn's, and the FAISS clustering is reproducible with a seed
    clusters = rng.integers(0, 4, len(pbmc["labels"]))
    scores = nmi_ari(pbmc["labels"], clusters)
    assert scores["ari"] == adjusted_rand_score(pbmc["labels"], clusters)
    assert scores["nmi"] == normalized_mutual_info_score(pbmc["labels"], clusters)
    assert nmi_ari_kmeans(pbmc["X"], pbmc["labels"], seed=5) == nmi_ari_kmeans(pbmc["X"], pbmc["labels"], seed=5)


def test_isolated_labels(pbmc):
    X, labels, g = pbmc["X"], pbmc["labels"], pbmc["graph"]
    batch = np.where(labels == "Dendritic", "b0", pbmc["batch"])  # Dendritic cells only in b0: isolated
    iso = isolated_labels(labels, batch)
    assert iso == ["Dendritic"]
    s = silhouette_samples(X, labels, {"batch": batch})
    assert abs(isolated_label_silhouette(s, iso) - scib_metrics.isolated_labels(X, labels, batch)) < TOL
    clusterings = leiden_grid(g, (0.5, 1.0))
    truth = labels == "Dendritic"
    best = 0.0
    for clusters in clusterings.values():  # dense reference: F1 of every cluster against the label
        for c in np.unique(clusters):
            tp = np.sum(truth & (clusters == c))
            best = max(best, 2 * tp / (truth.sum() + (clusters == c).sum()))
    assert abs(isolated_label_f1(clusterings, labels, iso) - best) < 1e-12
    assert f1_score(truth, clusterings[1.0] == np.bincount(clusterings[1.0][truth]).argmax()) <= best + 1e-12
    assert isolated_labels(labels, np.full(len(labels), "b0")) == []


def test_pcr_equals_scib(pbmc):
    from scib_metrics.utils import principal_component_regression

    X, shifted, batch = pbmc["X"], pbmc["shifted"], pbmc["batch"]
    for data in (X, shifted):
        assert abs(pcr(data, batch, chunk_size=100) - principal_component_regression(data, batch, categorical=True)) < 1e-4
    assert abs(pcr_comparison(shifted, X, batch) - scib_metrics.pcr_comparison(shifted, X, batch, categorical=True)) < TOL
    assert abs(pcr(shifted, batch, chunk_size=7) - pcr(shifted, batch, chunk_size=700)) < 1e-12


# ------------------------------------------------------------------------------------------ matching


def _dense_foscttm(a: np.ndarray, b: np.ndarray) -> float:
    """SCOT's FOSCTTM on a full distance matrix (rows of a paired with rows of b)."""
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
    n = len(a)
    true = np.diag(d)
    from_a = (d < true[:, None]).sum(axis=1) / (n - 1)
    from_b = (d.T < true[:, None]).sum(axis=1) / (n - 1)
    return float(np.mean((from_a + from_b) / 2))


def test_foscttm_and_pair_distance_equal_dense(cite):
    X, obs = cite
    mod, pair = obs["modality"].to_numpy(), obs["cell_id"].to_numpy()
    a, b = X[mod == "adt"].astype(np.float64), X[mod == "rna"].astype(np.float64)  # same cell order in both
    res = foscttm(X, mod, pair, chunk_size=33)["adt|rna"]
    assert res["n_pairs"] == len(a)
    assert abs(res["foscttm"] - _dense_foscttm(a, b)) < 1e-3
    assert res["foscttm"] < 0.2  # CCA matches the real pairs far better than chance (0.5)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
    relative = np.diag(d) / (0.5 * (d.mean(axis=1) + d.mean(axis=0)))
    assert abs(res["pair_distance"] - relative.mean()) < 1e-4
    # capped: a random subset of pairs, each still against every cell of the other modality
    capped = foscttm(X, mod, pair, max_pairs=50, seed=1)["adt|rna"]
    scored = np.sort(np.random.default_rng(1).choice(len(a), size=50, replace=False))
    true = np.diag(d)
    per_pair = ((d < true[:, None]).sum(axis=1) + (d.T < true[:, None]).sum(axis=1)) / (2 * (len(a) - 1))
    assert capped["scored_pairs"] == 50 and abs(capped["foscttm"] - per_pair[scored].mean()) < 1e-3
    perm = np.random.default_rng(0).permutation(len(X))
    shuffled = foscttm(X[perm], mod[perm], pair[perm], chunk_size=len(X))["adt|rna"]
    # other GEMM tiles round distances differently: a comparison within float32 rounding of the partner's
    # distance may flip, each moving FOSCTTM by 1 / (2 n (n - 1)); allow ten such flips
    n = len(a)
    assert abs(shuffled["foscttm"] - res["foscttm"]) <= 10 / (2 * n * (n - 1))


def test_label_transfer_of_three_modalities_equals_sklearn_per_direction():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(3)
    labels = rng.choice(["a", "b", "c", "d"], size=900)
    X = rng.normal(size=(900, 5)) + 1.5 * (labels[:, None] == np.array(["a", "b", "c", "d", "a"])[None, :])
    mod = rng.choice(["adt", "atac", "rna"], size=900)
    res = label_transfer(X, labels, mod, k=5, max_cells=200, seed=1)
    assert list(res) == ["adt->atac", "adt->rna", "atac->adt", "atac->rna", "rna->adt", "rna->atac"]
    for direction, scores in res.items():
        a, b = direction.split("->")
        rows = np.flatnonzero(mod == b)
        rows = np.sort(rows[np.random.default_rng(1).choice(len(rows), size=200, replace=False)])
        one = KNeighborsClassifier(n_neighbors=1).fit(X[mod == a], labels[mod == a])
        assert abs(scores["1nn"] - one.score(X[rows], labels[rows])) < 1e-12
        _, idx = NearestNeighbors(n_neighbors=5).fit(X[mod == a]).kneighbors(X[rows])
        voted = []
        for row in labels[mod == a][idx]:  # majority, ties to the label seen first (nearest)
            values, counts = np.unique(row, return_counts=True)
            voted.append(next(v for v in row if v in set(values[counts == counts.max()])))
        assert abs(scores["knn"] - np.mean(np.array(voted) == labels[rows])) < 1e-12


def test_label_transfer_equals_sklearn(cite):
    from sklearn.neighbors import KNeighborsClassifier

    X, obs = cite
    mod, labels = obs["modality"].to_numpy(), obs["cell_type"].to_numpy()
    res = label_transfer(X, labels, mod, k=1)
    for a, b in (("adt", "rna"), ("rna", "adt")):
        clf = KNeighborsClassifier(n_neighbors=1).fit(X[mod == a], labels[mod == a])
        assert abs(res[f"{a}->{b}"]["1nn"] - clf.score(X[mod == b], labels[mod == b])) < 1e-12
    voted = label_transfer(X, labels, mod, k=7)["rna->adt"]["knn"]
    _, idx = NearestNeighbors(n_neighbors=7).fit(X[mod == "rna"]).kneighbors(X[mod == "adt"])
    ref_labels = labels[mod == "rna"][idx]
    expected = []
    for row in ref_labels:  # majority, ties to the label seen first (nearest)
        values, counts = np.unique(row, return_counts=True)
        top = set(values[counts == counts.max()])
        expected.append(next(v for v in row if v in top))
    assert abs(voted - np.mean(np.array(expected) == labels[mod == "adt"])) < 1e-12
    # a query cap scores a random subset of each direction's queries against the whole reference
    capped = label_transfer(X, labels, mod, k=1, max_cells=50, seed=4)["adt->rna"]["1nn"]
    rna_rows = np.flatnonzero(mod == "rna")
    picked = np.sort(np.random.default_rng(4).choice(rna_rows, size=50, replace=False))
    clf = KNeighborsClassifier(n_neighbors=1).fit(X[mod == "adt"], labels[mod == "adt"])
    assert abs(capped - clf.score(X[picked], labels[picked])) < 1e-12


def test_mixing_metric_equals_dense_loop(cite):
    X, obs = cite
    mod = obs["modality"].to_numpy()
    max_k, k = 100, 5
    _, idx = NearestNeighbors(n_neighbors=max_k).fit(X).kneighbors(X)
    idx = idx[:, 1:]
    ranks = np.zeros((len(X), 2))
    for i in range(len(X)):  # scMODAL's loop
        for j, m in enumerate(("adt", "rna")):
            hits = np.where(mod[idx[i]] == m)[0]
            ranks[i, j] = hits[k - 1] if len(hits) > k - 1 else max_k - 1
    expected = np.mean(np.median(ranks, axis=1) + 1)
    assert abs(mixing_metric(X, mod, k=k, max_k=max_k, chunk_size=50) - expected) < 1e-9


# ------------------------------------------------------------------------------------------ aggregate


def test_aggregate_weights_and_min_max_scaling():
    m = {"bio": {"a": 0.8, "b": 0.6}, "modality": {"c": 0.5}, "batch": {"d": 0.2, "e": float("nan")}}
    scores = aggregate(m)
    assert scores["bio"] == pytest.approx(0.7) and scores["batch"] == pytest.approx(0.2)
    assert scores["overall"] == pytest.approx(0.4 * 0.7 + 0.3 * 0.5 + 0.3 * 0.2)
    no_modality = aggregate({"bio": {"a": 0.8}, "batch": {"d": 0.2}})
    assert no_modality["overall"] == pytest.approx((0.4 * 0.8 + 0.3 * 0.2) / 0.7)
    results = {"x": m, "y": {"bio": {"a": 0.4, "b": 0.6}, "modality": {"c": 0.9}, "batch": {"d": 0.1, "e": 0.3}}}
    scaled = min_max_scaled(results)
    reference = MinMaxScaler().fit_transform(np.array([[0.8, 0.6, 0.5, 0.2], [0.4, 0.6, 0.9, 0.1]]))
    got = np.array([[scaled[n]["bio"]["a"], scaled[n]["bio"]["b"], scaled[n]["modality"]["c"], scaled[n]["batch"]["d"]]
                    for n in ("x", "y")])
    assert np.allclose(got, reference)
    assert scaled_aggregate(results)["x"]["overall"] == pytest.approx(0.4 * 0.5 + 0.3 * 0 + 0.3 * 1.0)


# ------------------------------------------------------------------------------------------ the suite


def test_suite_independent_of_chunk_size_and_scheduler(pbmc):
    obs = pd.DataFrame({"cell_type": pbmc["labels"], "batch": pbmc["batch"]})
    graph = build_graph(pbmc["shifted"], 90)
    reference = NearestNeighbors(n_neighbors=90).fit(pbmc["shifted"]).kneighbors(pbmc["shifted"])[1][:, 1:]
    assert np.mean(graph.indices == reference) > 0.999  # exact kNN (ties aside) from cellweave.neighbors
    kw = dict(label_key="cell_type", batch_key="batch", X_pre=pbmc["X"], graph=graph)
    small = evaluate_embedding(pbmc["shifted"], obs, settings=EvalSettings(chunk_size=64, leiden_resolutions=(1.0,)), **kw)
    whole = evaluate_embedding(pbmc["shifted"], obs, settings=EvalSettings(chunk_size=700, leiden_resolutions=(1.0,),
                                                                         scheduler="synchronous"), **kw)
    # chunk sizes change the GEMM tiles (silhouettes, PCR) and the order of float sums: agreement to float32
    # rounding of per-cell values (SILHOUETTE_ATOL), which averaging over cells only shrinks
    for group in small.metrics:
        for name, value in small.metrics[group].items():
            assert value == pytest.approx(whole.metrics[group][name], abs=SILHOUETTE_ATOL, nan_ok=True), (group, name)
    assert set(small.metrics) == {"bio", "batch"}
    assert 0 < small.aggregate["overall"] < 1


def test_leiden_and_kbet_on_a_capped_subset_use_the_subsets_own_graph(pbmc):
    """Above ``subgraph_max_cells``, Leiden and kBET score a random subset on its own kNN graph (the rest on all)."""
    labels, batch, X = pbmc["labels"], pbmc["batch"], pbmc["shifted"]
    obs = pd.DataFrame({"cell_type": labels, "batch": batch})
    settings = EvalSettings(subgraph_max_cells=400, leiden_resolutions=(0.5, 1.0), scheduler="synchronous", seed=3)
    capped = evaluate_embedding(X, obs, label_key="cell_type", batch_key="batch", settings=settings)
    rows = np.sort(np.random.default_rng(3).choice(len(X), size=400, replace=False))
    sub = build_graph(X[rows], 50)
    clusterings = leiden_grid(sub, (0.5, 1.0))
    assert capped.details["leiden_kbet_cells"] == 400
    assert capped.metrics["bio"]["nmi_leiden"] == nmi_ari_leiden(clusterings, labels[rows])["nmi"]
    assert capped.metrics["batch"]["kbet"] == kbet_per_label(sub, batch[rows], labels[rows], 50)
    full = evaluate_embedding(X, obs, label_key="cell_type", batch_key="batch",
                              settings=EvalSettings(leiden_resolutions=(0.5, 1.0), scheduler="synchronous", seed=3))
    assert full.details["leiden_kbet_cells"] == len(X) and "knn graph of the subset" not in full.seconds
    for metric in ("silhouette_label", "clisi", "nmi_kmeans"):  # the other metrics still see every cell
        assert capped.metrics["bio"][metric] == full.metrics["bio"][metric]
    # an isolated label with no cell in the clustered subset is skipped, not mis-indexed
    iso = isolated_label_f1(clusterings, labels[rows], ["Dendritic", "not in the subset"])
    assert iso == isolated_label_f1(clusterings, labels[rows], ["Dendritic"])
    assert np.isnan(isolated_label_f1(clusterings, labels[rows], ["not in the subset"]))


def test_suite_on_paired_modalities(cite):
    X, obs = cite
    res = evaluate_embedding(X, obs, label_key="cell_type", modality_key="modality", pair_key="cell_id",
                             settings=EvalSettings(leiden_resolutions=(1.0,)))
    assert set(res.metrics) == {"bio", "modality", "matching"}
    match = res.metrics["matching"]
    assert match["foscttm"] < 0.2 and match["label_transfer_1nn"] > 0.5
    assert set(res.details["label_transfer"]) == {"adt->rna", "rna->adt"}
    assert np.isnan(res.metrics["modality"]["pcr_comparison"])  # no unintegrated representation given
    assert any("PCR" in n for n in res.notes)
    # pairing by the cell ids themselves
    by_names = obs.set_index("cell_id")
    same = evaluate_embedding(X, by_names, label_key="cell_type", modality_key="modality", pair_key="obs_names",
                              settings=EvalSettings(leiden_resolutions=(1.0,)))
    assert same.metrics["matching"]["foscttm"] == pytest.approx(match["foscttm"], abs=1e-12)


def test_undefined_metrics_are_nan_with_a_warning(pbmc):
    X = pbmc["X"]
    quick = EvalSettings(leiden_resolutions=(1.0,))
    obs = pd.DataFrame({"cell_type": "T", "batch": pbmc["batch"]})
    with pytest.warns(UserWarning, match="single label"):
        res = evaluate_embedding(X, obs, label_key="cell_type", batch_key="batch", settings=quick)
    bio = res.metrics["bio"]
    assert all(np.isnan(bio[k]) for k in ("silhouette_label", "clisi", "nmi_kmeans", "ari_leiden", "isolated_label_f1"))
    assert np.isfinite(res.metrics["batch"]["ilisi"]) and np.isfinite(res.metrics["batch"]["silhouette"])
    obs = pd.DataFrame({"cell_type": pbmc["labels"], "batch": "b0"})
    with pytest.warns(UserWarning, match="single batch"):
        res = evaluate_embedding(X, obs, label_key="cell_type", batch_key="batch", settings=quick)
    batch = res.metrics["batch"]
    assert all(np.isnan(batch[k]) for k in ("silhouette", "ilisi", "kbet", "pcr_comparison"))
    assert np.isfinite(res.metrics["bio"]["silhouette_label"]) and np.isfinite(res.aggregate["overall"])


def test_bad_input_errors(pbmc, tmp_path):
    X = pbmc["X"].copy()
    obs = pd.DataFrame({"cell_type": pbmc["labels"], "batch": pbmc["batch"]})
    with pytest.raises(InputError, match=r"obs\['celltype'\].*cell_type, batch"):
        evaluate_embedding(X, obs, label_key="celltype")
    with pytest.raises(InputError, match=r"obs\['tech'\]"):
        evaluate_embedding(X, obs, label_key="cell_type", batch_key="tech")
    missing = obs.copy()
    missing.loc[3, "cell_type"] = None
    with pytest.raises(InputError, match="1 of 700 cells have no value"):
        evaluate_embedding(X, missing, label_key="cell_type")
    X[5, 2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused up front: no Dask work, no warning from deep inside
        with pytest.raises(InputError, match="1 cells have NaN or infinite values.*row 5"):
            evaluate_embedding(X, obs, label_key="cell_type")
    with pytest.raises(InputError, match="no modality key"):
        evaluate_embedding(pbmc["X"], obs, label_key="cell_type", pair_key="batch")
    dup = obs.assign(modality=np.where(np.arange(700) < 350, "a", "b"), pid="same")
    with pytest.raises(InputError, match="pair ids repeat within modality"):
        evaluate_embedding(pbmc["X"], dup, label_key="cell_type", modality_key="modality", pair_key="pid")
    path = tmp_path / "x.h5ad"
    ad.AnnData(obs=obs.set_axis(obs.index.astype(str)), obsm={"X_pca": pbmc["X"]}).write_h5ad(path)
    with pytest.raises(InputError, match=r"obsm\['X_cellweave'\].*X_pca"):
        read_embedding(path)


def test_scheduler_choices(pbmc):
    with dask_scheduler("local", n_workers=2) as where:
        g = pbmc["graph"]
        assert "LocalCluster" in where
        assert abs(ilisi(g, pbmc["batch"], chunk_size=100) - scib_metrics.ilisi_knn(_scib(g, 90), pbmc["batch"])) < TOL


# ------------------------------------------------------------------------------------------ inputs and CLI


def _write_run(root, X, obs, modalities, loss_curve=True):
    (root / "embeddings").mkdir(parents=True)
    for m in modalities:
        mask = (obs["modality"] == m).to_numpy()
        part = obs.loc[mask].drop(columns="modality").set_index("cell_id")
        adata = ad.AnnData(obs=part, obsm={"X_cellweave": X[mask]})
        adata.uns["cellweave"] = {"modality": m, "kind": "normalized"}
        adata.write_zarr(root / "embeddings" / f"{m}.zarr")
    if loss_curve:
        from matplotlib.figure import Figure

        fig = Figure()
        fig.add_subplot().plot([3, 2, 1])
        fig.savefig(root / "loss_curves.png")


def test_inputs_h5ad_zarr_soma_agree(pbmc, tmp_path):
    import tiledbsoma.io

    obs = pd.DataFrame({"cell_type": pbmc["labels"], "batch": pbmc["batch"]}, index=[f"c{i}" for i in range(700)])
    adata = ad.AnnData(X=np.zeros((700, 3), np.float32), obs=obs, obsm={"X_cellweave": pbmc["X"][:, :10]})
    adata.write_h5ad(tmp_path / "e.h5ad")
    adata.write_zarr(tmp_path / "e.zarr")
    tiledbsoma.io.from_anndata(str(tmp_path / "e.soma"), adata, measurement_name="rna")
    read = [read_embedding(p) for p in (tmp_path / "e.h5ad", tmp_path / "e.zarr", f"{tmp_path / 'e.soma'}::rna")]
    for emb in read:
        assert np.array_equal(emb.X, pbmc["X"][:, :10])
        assert list(emb.obs.index) == list(obs.index)
        assert (emb.obs["cell_type"].astype(str).to_numpy() == obs["cell_type"].to_numpy()).all()


def test_cli_evaluate_runs_side_by_side(cite, tmp_path):
    X, obs = cite
    _write_run(tmp_path / "run1", X, obs, ["rna", "adt"])
    noisy = X + np.random.default_rng(0).normal(scale=1.0, size=X.shape).astype(np.float32)
    _write_run(tmp_path / "run2", noisy, obs, ["rna", "adt"], loss_curve=False)
    out = tmp_path / "report"
    rc = main(["evaluate", "--run", str(tmp_path / "run1"), "--run", str(tmp_path / "run2"), "--label-key", "cell_type",
               "--pair-key", "obs_names", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["embeddings"]) == {"run1", "run2"}
    first, second = doc["embeddings"]["run1"], doc["embeddings"]["run2"]
    assert first["metrics"]["matching"]["foscttm"] < second["metrics"]["matching"]["foscttm"]
    assert doc["keys"]["modality"] == "modality"  # the run's stores named the modalities
    assert set(doc["min_max_scaled"]["aggregate"]) == {"run1", "run2"}
    report = (out / "report.md").read_text()
    assert "| metric | run1 | run2 |" in report and "## Matching across modalities" in report
    assert "Min-max scaled" in report and "![run1](umap_run1.png)" in report
    for f in ("umap_run1.png", "umap_run2.png", "loss_run1.png"):
        assert (out / f).stat().st_size > 1000
    # the output exists: refused without --overwrite, nothing changed
    rc = main(["evaluate", "--run", str(tmp_path / "run1"), "--label-key", "cell_type", "--out", str(out), "--no-plots"])
    assert rc == 2 and (out / "umap_run2.png").exists()


def test_cli_errors_name_the_key(cite, tmp_path, capsys):
    X, obs = cite
    _write_run(tmp_path / "run", X, obs, ["rna", "adt"], loss_curve=False)
    rc = main(["evaluate", "--run", str(tmp_path / "run"), "--label-key", "celltype", "--out", str(tmp_path / "o"),
               "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and "obs['celltype']" in err and "cell_type" in err
    assert not (tmp_path / "o").exists()
    rc = main(["evaluate", "--embedding", str(tmp_path / "run" / "embeddings" / "rna.zarr"), "--obsm-key", "X_umap",
               "--label-key", "cell_type", "--out", str(tmp_path / "o")])
    assert rc == 2 and "obsm['X_umap']" in capsys.readouterr().err
