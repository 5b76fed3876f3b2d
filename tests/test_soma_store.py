"""TileDB-SOMA backend: write_soma round trips, paired/unpaired measurements, errors, foreign experiments."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellweave import InputError
from cellweave.data import InMemorySource
from cellweave.data.soma_store import SomaStore, write_soma

from .conftest import CITE_SEQ, counts_source, require_shared

RANGES = [(3, 9), (40, 41), (17, 30), (120, 150), (0, 2)]


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def _rows(ranges) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for a, b in ranges])


def normalized_source(
    n_cells: int, n_features: int, seed: int = 1, prefix: str = "c", modality: str = "adt"
) -> InMemorySource:
    """Dense float values (with exact zeros) and a numeric obs column."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_cells, n_features)).astype(np.float32)
    X[rng.random(X.shape) < 0.3] = 0
    obs = pd.DataFrame({"score": rng.random(n_cells)}, index=[f"{prefix}{i}" for i in range(n_cells)])
    var = pd.DataFrame({"isotype": rng.random(n_features) < 0.2}, index=[f"p{i}" for i in range(n_features)])
    return InMemorySource(f"<{modality} in memory>", modality, obs, var, X, kind=None)


def test_sparse_counts_round_trip(tmp_path):
    src = counts_source(300, 50)
    out = write_soma([src], tmp_path / "exp", chunk_rows=64)
    store = SomaStore(out, "rna")
    assert store.shape == (300, 50) and store.sparse and store.kind == "counts"
    assert store.path == f"{out}::rna" and store.stats_dir == out / ".cellweave" / "rna"
    assert list(store.var_names) == list(src.var.index)
    X = store.read_X(RANGES)
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    np.testing.assert_array_equal(_dense(X), src.X[_rows(RANGES)].toarray())
    np.testing.assert_array_equal(store.obs_names(RANGES), src.obs.index.to_numpy()[_rows(RANGES)])
    assert store.obs_keys == ["batch", "cell_type"]
    batch = store.obs_column("batch")
    assert isinstance(batch.dtype, pd.CategoricalDtype)
    assert list(batch.astype(str)) == list(src.obs["batch"])
    chunk = store.read([(250, 300), (5, 10)])
    np.testing.assert_array_equal(chunk.rows, _rows([(250, 300), (5, 10)]))
    assert store.read_X([]).shape == (0, 50)


def test_dense_normalized_round_trip(tmp_path):
    src = normalized_source(200, 14)
    store = SomaStore(write_soma([src], tmp_path / "exp", chunk_rows=33), "adt")
    assert not store.sparse and store.kind == "normalized"
    X = store.read_X(RANGES)
    assert isinstance(X, np.ndarray)
    np.testing.assert_array_equal(X, src.X[_rows(RANGES)])
    np.testing.assert_array_equal(store.obs_column("score").to_numpy(), src.obs["score"].to_numpy())
    np.testing.assert_array_equal(store.read_X([(0, 200)]), src.X)


def test_overlapping_and_unsorted_ranges(tmp_path):
    src = counts_source(100, 20)
    store = SomaStore(write_soma([src], tmp_path / "exp"), "rna")
    ranges = [(50, 60), (10, 12), (55, 58)]
    np.testing.assert_array_equal(_dense(store.read_X(ranges)), src.X[_rows(ranges)].toarray())
    np.testing.assert_array_equal(store.obs_names(ranges), src.obs.index.to_numpy()[_rows(ranges)])


def test_paired_sources_share_obs(tmp_path):
    rna = counts_source(120, 30)
    adt = normalized_source(120, 8)
    out = write_soma([rna, adt], tmp_path / "exp", chunk_rows=50)
    s_rna, s_adt = SomaStore(out, "rna"), SomaStore(out, "adt")
    assert s_rna.n_obs == s_adt.n_obs == 120
    assert sorted(s_rna.obs_keys) == ["batch", "cell_type", "score"]
    np.testing.assert_array_equal(s_rna.all_obs_names(), s_adt.all_obs_names())
    np.testing.assert_array_equal(_dense(s_rna.read_X(RANGES[:3])), rna.X[_rows(RANGES[:3])].toarray())
    np.testing.assert_array_equal(s_adt.read_X(RANGES[:3]), adt.X[_rows(RANGES[:3])])


def test_paired_sources_in_different_row_order_align_by_id(tmp_path):
    rna = counts_source(90, 20)
    adt = normalized_source(90, 6)
    flipped = InMemorySource(adt.name, "adt", adt.obs.iloc[::-1], adt.var, adt.X[::-1].copy())
    out = write_soma([rna, flipped], tmp_path / "exp", chunk_rows=40)
    s_adt = SomaStore(out, "adt")
    np.testing.assert_array_equal(s_adt.all_obs_names(), rna.obs.index.to_numpy())
    np.testing.assert_array_equal(s_adt.read_X([(10, 30), (70, 80)]), adt.X[_rows([(10, 30), (70, 80)])])
    np.testing.assert_array_equal(s_adt.obs_column("score").to_numpy(), adt.obs["score"].to_numpy())


def test_unpaired_sources_get_has_columns(tmp_path):
    rna = counts_source(80, 30, prefix="r")
    adt = normalized_source(60, 8, prefix="a")
    out = write_soma([rna, adt], tmp_path / "exp")
    s_rna, s_adt = SomaStore(out, "rna"), SomaStore(out, "adt")
    assert (s_rna.n_obs, s_adt.n_obs) == (80, 60)
    np.testing.assert_array_equal(s_adt.all_obs_names(), adt.obs.index.to_numpy())
    np.testing.assert_array_equal(s_adt.read_X([(5, 25), (50, 60)]), adt.X[_rows([(5, 25), (50, 60)])])
    np.testing.assert_array_equal(_dense(s_rna.read_X([(70, 80)])), rna.X[70:80].toarray())
    assert "has_rna" not in s_rna.obs_keys
    batch = s_adt.obs_column("batch")  # an rna-only column: missing for the adt cells
    assert len(batch) == 60 and batch.isna().all()
    import tiledbsoma

    with tiledbsoma.Experiment.open(str(out)) as exp:
        obs = exp.obs.read().concat().to_pandas()
    assert obs["has_rna"].sum() == 80 and obs["has_adt"].sum() == 60


def test_nan_in_later_chunk_leaves_nothing(tmp_path):
    src = normalized_source(200, 10)
    src.X[150, 3] = np.nan
    out = tmp_path / "exp"
    with pytest.raises(InputError, match="row 150"):
        write_soma([src], out, chunk_rows=50)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_duplicate_modality(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    with pytest.raises(InputError, match="already exists"):
        write_soma([counts_source(10, 5)], out)
    with pytest.raises(InputError, match="modality 'rna'"):
        write_soma([counts_source(10, 5), counts_source(10, 5, prefix="d")], tmp_path / "other")
    write_soma([counts_source(10, 5)], out, overwrite=True)
    assert SomaStore(out, "rna").n_obs == 10


def test_missing_measurement_and_path(tmp_path):
    out = write_soma([counts_source(10, 5), normalized_source(10, 3)], tmp_path / "exp")
    with pytest.raises(InputError, match="adt, rna"):
        SomaStore(out, "atac")
    with pytest.raises(InputError, match="no such path"):
        SomaStore(tmp_path / "nowhere", "rna")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a readable SOMA Experiment"):
        SomaStore(tmp_path / "plain", "rna")


def test_from_anndata_experiment(tmp_path):
    """Default tiledbsoma tiling (2048 features per tile): more features than that interleave cells on read."""
    tiledbsoma_io = pytest.importorskip("tiledbsoma.io")
    src = counts_source(150, 2500, density=0.02)
    adata = ad.AnnData(X=src.X, obs=src.obs, var=src.var)
    uri = str(tmp_path / "foreign")
    tiledbsoma_io.from_anndata(uri, adata, measurement_name="RNA")
    store = SomaStore(uri, "RNA")
    assert store.shape == (150, 2500) and store.kind == "counts" and store.sparse
    assert list(store.var_names) == list(src.var.index)
    np.testing.assert_array_equal(_dense(store.read_X(RANGES)), src.X[_rows(RANGES)].toarray())
    np.testing.assert_array_equal(store.obs_names(RANGES), src.obs.index.to_numpy()[_rows(RANGES)])
    assert list(store.obs_column("cell_type").astype(str)) == list(src.obs["cell_type"])


def test_store_pickles_for_workers(tmp_path):
    src = counts_source(50, 10)
    store = SomaStore(write_soma([src], tmp_path / "exp"), "rna")
    store.read_X([(0, 5)])
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(_dense(clone.read_X([(10, 20)])), src.X[10:20].toarray())


_INHERITED: dict[str, SomaStore] = {}


def _read_inherited() -> str:
    try:
        _INHERITED["store"].read_X([(0, 5)])
    except InputError as exc:
        return str(exc)
    return "read"


def test_forked_worker_refuses_instead_of_hanging(tmp_path):
    """TileDB hangs in a child forked after the parent used it: the store must say so and name the fix."""
    _INHERITED["store"] = SomaStore(write_soma([counts_source(20, 5)], tmp_path / "exp"), "rna")
    try:
        with mp.get_context("fork").Pool(1) as pool:
            message = pool.apply_async(_read_inherited).get(timeout=60)
    finally:
        _INHERITED.clear()
    assert "multiprocessing_context='spawn'" in message


@pytest.mark.filterwarnings("ignore:Element .* was written without encoding metadata")
def test_cite_seq_round_trip(tmp_path):
    adata = ad.read_h5ad(require_shared(CITE_SEQ))
    rna = InMemorySource(str(CITE_SEQ), "rna", adata.obs, adata.var, sp.csr_matrix(adata.X))
    proteins = pd.DataFrame(index=pd.Index(adata.uns["protein_names"], dtype=str))
    adt = InMemorySource(str(CITE_SEQ), "adt", adata.obs[[]], proteins, np.asarray(adata.obsm["protein_expression"]))
    out = write_soma([rna, adt], tmp_path / "cite", chunk_rows=64)
    s_rna, s_adt = SomaStore(out, "rna"), SomaStore(out, "adt")
    assert s_rna.shape == adata.shape and s_adt.shape == (adata.n_obs, 14)
    assert s_rna.kind == s_adt.kind == "counts" and s_rna.sparse and not s_adt.sparse
    ranges = [(0, 64), (100, 101), (150, 200)]
    np.testing.assert_array_equal(_dense(s_rna.read_X(ranges)), np.asarray(adata.X)[_rows(ranges)])
    np.testing.assert_array_equal(s_adt.read_X(ranges), adata.obsm["protein_expression"][_rows(ranges)])
    np.testing.assert_array_equal(s_adt.all_obs_names(), adata.obs_names.to_numpy())
    assert list(s_adt.var_names) == list(adata.uns["protein_names"])
    np.testing.assert_array_equal(s_rna.obs_column("n_genes").to_numpy(), adata.obs["n_genes"].to_numpy())
