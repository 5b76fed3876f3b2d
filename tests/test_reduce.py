"""Out-of-core PCA and LSI against scikit-learn on dense copies, their file format, and their use in the stream."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA, TruncatedSVD

from cellweave.data import InMemorySource, Preprocess, open_modality, write_zarr
from cellweave.errors import InputError
from cellweave.reduce import ReducedPairedStream, Reduction, fit_lsi, fit_pca, load_or_fit, reduced_store

N_CELLS, N_GENES, N_PEAKS, RANK = 900, 150, 400, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def _counts(n_features: int, scale: float, seed: int) -> np.ndarray:
    """Poisson counts of a rank-``RANK`` nonnegative rate matrix: a clear low-rank signal plus count noise."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 1.0, (N_CELLS, RANK)) @ rng.gamma(0.3, 2.0, (RANK, n_features))
    return rng.poisson(scale * rate * rng.lognormal(0, 0.3, (N_CELLS, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reduce")
    obs = pd.DataFrame({"batch": np.where(np.arange(N_CELLS) % 3 == 0, "b1", "b0")},
                       index=[f"cell{i}" for i in range(N_CELLS)])
    X = {"rna": _counts(N_GENES, 0.5, 0), "atac": _counts(N_PEAKS, 0.2, 1)}
    stores = {}
    for m, x in X.items():
        var = pd.DataFrame(index=[f"{m}{j}" for j in range(x.shape[1])])
        stores[m] = open_modality(write_zarr(InMemorySource(m, m, obs, var, sp.csr_matrix(x), kind="counts"), root / f"{m}.zarr"))
    return X, stores


def lognorm(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    lib = x.sum(1, keepdims=True)
    return np.log1p(x / np.where(lib > 0, lib, 1) * 1e4)


def tfidf(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    lib = x.sum(1, keepdims=True)
    idf = x.shape[0] / np.maximum((x > 0).sum(0), 1)
    return np.log1p(x / np.where(lib > 0, lib, 1) * idf * 1e4)


def smallest_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the largest principal angle between the row spaces of ``a`` and ``b`` (1: the same subspace)."""
    qa, _ = np.linalg.qr(a.T)
    qb, _ = np.linalg.qr(b.T)
    return float(np.linalg.svd(qa.T @ qb, compute_uv=False).min())


def same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    signs = np.sign((a * b).sum(0))
    np.testing.assert_allclose(a, b * signs, atol=atol)


def test_exact_pca_equals_sklearn(data):
    X, stores = data
    red = fit_pca(stores["rna"], 10, batch_size=128)
    ref = PCA(10, svd_solver="full").fit(lognorm(X["rna"]))
    assert smallest_cosine(red.components, ref.components_) > 1 - 1e-9
    np.testing.assert_allclose(np.abs((red.components * ref.components_).sum(1)), 1, atol=1e-6)  # component by component
    np.testing.assert_allclose(red.explained_variance, ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(red.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(red.singular_values, ref.singular_values_, rtol=1e-6)
    same_up_to_sign(red.transform(sp.csr_matrix(X["rna"])), ref.transform(lognorm(X["rna"])), atol=1e-3)


def test_randomized_pca_agrees_with_sklearn_on_the_signal_subspace(data):
    X, stores = data
    red = fit_pca(stores["rna"], RANK, batch_size=128, exact_max_features=10)  # force the randomized multi-pass solver
    ref = PCA(RANK, svd_solver="full").fit(lognorm(X["rna"]))
    assert smallest_cosine(red.components, ref.components_) > 0.999
    np.testing.assert_allclose(red.explained_variance, ref.explained_variance_, rtol=0.01)
    np.testing.assert_allclose(red.explained_variance_ratio, ref.explained_variance_ratio_, rtol=0.01)


@pytest.mark.parametrize("exact_max_features", [4096, 10])
def test_lsi_equals_truncated_svd_of_tfidf(data, exact_max_features):
    X, stores = data
    red = fit_lsi(stores["atac"], RANK, skip_first=False, batch_size=200, exact_max_features=exact_max_features)
    M = tfidf(X["atac"])
    ref = TruncatedSVD(RANK, algorithm="arpack").fit(M)
    exact = exact_max_features > N_PEAKS
    assert smallest_cosine(red.components, ref.components_) > (1 - 1e-9 if exact else 0.999)
    rtol = 1e-6 if exact else 0.01
    np.testing.assert_allclose(red.singular_values, ref.singular_values_, rtol=rtol)
    np.testing.assert_allclose(red.explained_variance, ref.explained_variance_, rtol=rtol * 5)
    np.testing.assert_allclose(red.explained_variance_ratio, ref.explained_variance_ratio_, rtol=rtol * 5)
    assert not red.mean.any()  # LSI is not centred
    if exact:
        same_up_to_sign(red.transform(X["atac"]), ref.transform(M), atol=1e-3)


def test_lsi_skip_first_drops_the_depth_component(data):
    _, stores = data
    full = fit_lsi(stores["atac"], RANK + 1, skip_first=False)
    skipped = fit_lsi(stores["atac"], RANK, skip_first=True)
    assert skipped.n_components == RANK and skipped.skipped == 1
    np.testing.assert_allclose(skipped.components, full.components[1:], atol=1e-9)
    # the first LSI component follows the cells' depth (what skip_first is for)
    depth = np.log(open_modality(stores["atac"].path).read_X([(0, N_CELLS)]).sum(1).A1 + 1)
    first = full.transform(open_modality(stores["atac"].path).read_X([(0, N_CELLS)]))[:, 0]
    assert abs(np.corrcoef(first, depth)[0, 1]) > 0.5


def test_hvg_and_scaled_pca_matches_a_dense_pipeline(data):
    X, stores = data
    pp = Preprocess(n_top_genes=40, scale=True, max_value=2.0)
    red = fit_pca(stores["rna"], 5, preprocess=pp, batch_size=100)
    assert len(red.features) == 40
    cols = pd.Index(stores["rna"].var_names).get_indexer(red.features)
    L = lognorm(X["rna"])[:, cols]
    Z = np.clip((L - L.mean(0)) / L.std(0, ddof=1), -2.0, 2.0)
    ref = PCA(5, svd_solver="full").fit(Z)
    assert smallest_cosine(red.components, ref.components_) > 1 - 1e-6
    np.testing.assert_allclose(red.explained_variance, ref.explained_variance_, rtol=1e-4)
    # rows over all the store's features or over the reduced ones give the same result (library from all features)
    lib = X["rna"].sum(1)
    a = red.transform(X["rna"])
    b = red.transform(X["rna"][:, cols], library_size=lib)
    np.testing.assert_allclose(a, b, atol=1e-4)
    same_up_to_sign(a, ref.transform(Z), atol=1e-3)


def test_transform_accepts_tensors_arrays_and_sparse(data):
    X, stores = data
    red = fit_pca(stores["rna"], 6)
    ref = red.transform(X["rna"])
    assert isinstance(ref, np.ndarray) and ref.dtype == np.float32 and ref.shape == (N_CELLS, 6)
    t = red.transform(torch.from_numpy(X["rna"]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-4)
    np.testing.assert_allclose(red.transform(torch.from_numpy(X["rna"]).to_sparse_csr()).numpy(), ref, atol=1e-4)
    np.testing.assert_allclose(red.transform(sp.csr_matrix(X["rna"])), ref, atol=1e-4)
    with pytest.raises(InputError, match="columns"):
        red.transform(X["rna"][:, :7])


def test_save_load_round_trip_is_atomic(data, tmp_path):
    X, stores = data
    red = fit_lsi(stores["atac"], 3)
    path = red.save(tmp_path / "lsi")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "reduction.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["lsi"]  # no temporary name left behind
    back = Reduction.load(path)
    assert back.method == "lsi" and back.features == red.features and back.skipped == 1
    np.testing.assert_array_equal(back.transform(X["atac"]), red.transform(X["atac"]))
    with pytest.raises(InputError, match="already exists"):
        red.save(path, overwrite=False)
    with pytest.raises(InputError, match="no saved reduction"):
        Reduction.load(tmp_path / "nothing")


def test_load_or_fit_keeps_reductions_beside_the_data(data):
    _, stores = data
    a = load_or_fit(stores["rna"], "pca", n_components=3, seed=0)
    saved = sorted((stores["rna"].stats_dir / "reductions").iterdir())
    b = load_or_fit(stores["rna"], "pca", n_components=3, seed=0)
    np.testing.assert_array_equal(a.components, b.components)
    assert sorted((stores["rna"].stats_dir / "reductions").iterdir()) == saved  # loaded, not fitted again
    load_or_fit(stores["rna"], "pca", n_components=4, seed=0)
    assert len(list((stores["rna"].stats_dir / "reductions").glob("pca-*[!e]"))) == 2  # (not the .source records)


def test_reduced_paired_stream_keeps_raw_counts_and_adds_reduced_cells(data):
    X, stores = data
    pca, lsi = fit_pca(stores["rna"], 5), fit_lsi(stores["atac"], 4)
    stream = ReducedPairedStream([stores["rna"], stores["atac"]], {"rna": (pca, "rna_pca"), "atac": (lsi, "atac")},
                                 batch_size=200, batch_key="batch", seed=3, chunk_size=50, block_size=400)
    seen = 0
    for step in stream:
        assert set(step) == {"rna", "rna_pca", "atac"}
        rows = step["rna"].rows.numpy()
        np.testing.assert_array_equal(step["rna"].dense().numpy(), X["rna"][rows])  # raw counts stay available
        np.testing.assert_allclose(step["rna_pca"].dense().numpy(), pca.transform(X["rna"][rows]), atol=1e-4)
        np.testing.assert_allclose(step["atac"].dense().numpy(), lsi.transform(X["atac"][rows]), atol=1e-4)  # replaced
        assert step["atac"].n_vars == 4 and torch.equal(step["rna_pca"].batch, step["rna"].batch)
        np.testing.assert_allclose(step["atac"].library_size.numpy(), X["atac"][rows].sum(1))
        seen += len(rows)
    assert seen == N_CELLS


def test_reduced_cells_are_cached_beside_the_data_once_per_reduction(data):
    X, stores = data
    lsi = fit_lsi(stores["atac"], 4)
    cached = reduced_store(stores["atac"], lsi, batch_size=128)  # chunks not aligned with the store's
    assert cached.n_obs == N_CELLS and list(cached.var_names) == ["LSI2", "LSI3", "LSI4", "LSI5"]
    assert cached.modality == "atac" and cached.kind == "normalized"
    np.testing.assert_array_equal(cached.all_obs_names(), stores["atac"].all_obs_names())
    np.testing.assert_array_equal(cached.obs_column("batch").astype(str), stores["atac"].obs_column("batch").astype(str))
    np.testing.assert_allclose(cached.read_X([(0, N_CELLS)]), lsi.transform(X["atac"]), atol=1e-5)
    made = cached.path
    again = reduced_store(stores["atac"], lsi)
    assert again.path == made and len(list(stores["atac"].stats_dir.glob("reduced/*.zarr"))) == 1  # read, not rewritten
    other = fit_lsi(stores["atac"], 3)
    assert reduced_store(stores["atac"], other).path != made  # another reduction never reads this cache


def test_a_killed_cache_write_leaves_nothing_readable(data, monkeypatch):
    X, stores = data
    pca = fit_pca(stores["rna"], 2)
    calls = []

    def failing_transform(self, x, library_size=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for a kill between chunks
        return original(self, x, library_size)

    original = Reduction.transform
    monkeypatch.setattr(Reduction, "transform", failing_transform)
    with pytest.raises(KeyboardInterrupt):
        reduced_store(stores["rna"], pca, batch_size=300)
    assert not list(stores["rna"].stats_dir.glob("reduced/*pca*"))  # no partial cache, not even a temporary
    monkeypatch.setattr(Reduction, "transform", original)
    np.testing.assert_allclose(reduced_store(stores["rna"], pca).read_X([(0, N_CELLS)]), pca.transform(X["rna"]), rtol=1e-5, atol=1e-4)


def test_bad_requests_are_refused(data):
    _, stores = data
    with pytest.raises(InputError, match="components"):
        fit_pca(stores["rna"], N_GENES + 1)
    with pytest.raises(InputError, match="absent"):
        fit_pca(stores["rna"], 2, features=["rna0", "nope"])
    with pytest.raises(InputError, match="no paired modality"):
        ReducedPairedStream([stores["rna"], stores["atac"]], {"adt": (fit_pca(stores["rna"], 2), "x")})


def test_caches_beside_the_data_are_redone_when_the_data_change(tmp_path):
    import anndata as ad

    from cellweave.data.fingerprint import data_fingerprint
    from cellweave.data.preprocess import load_or_compute_stats

    path = tmp_path / "rna.h5ad"
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(N_CELLS)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)])

    def write(x: np.ndarray, mtime: int):
        ad.AnnData(sp.csr_matrix(x), obs=obs, var=var).write_h5ad(tmp_path / "new.h5ad")
        os.utime(tmp_path / "new.h5ad", ns=(mtime, mtime))
        os.replace(tmp_path / "new.h5ad", path)
        return open_modality(path)

    first, second = _counts(N_GENES, 0.5, 0), _counts(N_GENES, 0.5, 7)
    store = write(first, 10**18)
    pca, stats = load_or_fit(store, "pca", n_components=3, seed=0), load_or_compute_stats(store)
    cached = reduced_store(store, pca)
    np.testing.assert_allclose(cached.read_X([(0, N_CELLS)]), pca.transform(first), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(stats.mean, first.mean(0), rtol=1e-5)

    store = write(second, 2 * 10**18)  # the same shape and names, other counts
    pca2, stats2 = load_or_fit(store, "pca", n_components=3, seed=0), load_or_compute_stats(store)
    assert not np.allclose(pca2.components, pca.components)
    np.testing.assert_allclose(stats2.mean, second.mean(0), rtol=1e-5)
    np.testing.assert_allclose(reduced_store(store, pca).read_X([(0, N_CELLS)]), pca.transform(second), rtol=1e-5, atol=1e-4)

    before = data_fingerprint(store)
    (store.stats_dir / "anything").write_text("sidecars are not data")
    assert data_fingerprint(store) == before
    np.testing.assert_array_equal(load_or_fit(store, "pca", n_components=3, seed=0).components, pca2.components)


def test_writing_embeddings_into_a_store_keeps_its_fingerprint(tmp_path):
    import zarr

    from cellweave.data.fingerprint import data_fingerprint

    obs = pd.DataFrame(index=[f"cell{i}" for i in range(N_CELLS)])
    var = pd.DataFrame(index=[f"p{j}" for j in range(N_PEAKS)])
    x = sp.csr_matrix(_counts(N_PEAKS, 0.2, 1))
    store = open_modality(write_zarr(InMemorySource("atac", "atac", obs, var, x, kind="counts"), tmp_path / "atac.zarr"))
    before = data_fingerprint(store)
    zarr.open_group(store.path, mode="r+").require_group("obsm").create_array("X_new", shape=(N_CELLS, 2), dtype="f4")
    assert data_fingerprint(store) == before
    zarr.open_group(store.path, mode="r+").attrs["touched"] = 1  # any other file of the store counts
    assert data_fingerprint(store) != before
