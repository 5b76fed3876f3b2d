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

from .conftest import CITE_SEQ, counts_source, load_script, require_shared

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
    write_soma([counts_source(10, 5)], out)  # an empty directory is not an existing output
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


# ------------------------------------------------------------------------------ Census-shaped experiments, queries

LUNG = "tissue_general == 'lung' and is_primary_data == True"


def _census_tool():
    from pathlib import Path

    return load_script(Path(__file__).resolve().parents[1] / "tools" / "census_fixture.py")


@pytest.fixture(scope="module")
def census(tmp_path_factory):
    """A 1,200-cell Census-schema experiment (6 datasets x 2 donors, 40 genes) and its obs/var/raw X read whole."""
    import tiledbsoma

    out = _census_tool().write_census_fixture(tmp_path_factory.mktemp("census") / "census.soma", 1200, n_genes=40,
                                              n_datasets=6, n_donors=2, chunk_rows=256)
    with tiledbsoma.Experiment.open(str(out)) as exp:
        obs = exp.obs.read().concat().to_pandas()
        var = exp.ms["RNA"].var.read().concat().to_pandas()
        raw = exp.ms["RNA"].X["raw"].read().coos().concat().to_scipy().tocsr()
    return out, obs, var, raw


def test_census_fixture_has_the_census_schema(census):
    out, obs, var, raw = census
    import tiledbsoma

    with tiledbsoma.Experiment.open(str(out)) as exp:
        assert sorted(exp.ms["RNA"].X.keys()) == ["normalized", "raw"]
        norm = exp.ms["RNA"].X["normalized"].read().coos().concat().to_scipy().tocsr()
    assert {"dataset_id", "assay", "tissue_general", "cell_type", "donor_id", "is_primary_data"} <= set(obs.columns)
    assert "obs_id" not in obs.columns and {"feature_id", "feature_name"} <= set(var.columns)
    assert obs["dataset_id"].nunique() == 6 and obs["donor_id"].nunique() == 12
    assert obs["is_primary_data"].dtype == bool and 0 < obs["is_primary_data"].mean() < 1
    np.testing.assert_array_equal(raw.data, np.round(raw.data))
    np.testing.assert_allclose(obs["raw_sum"].to_numpy(), np.asarray(raw.sum(1)).ravel(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(norm.sum(1)).ravel()[obs["raw_sum"].to_numpy() > 0], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(var["nnz"].to_numpy(), np.bincount(raw.indices, minlength=raw.shape[1]))


def test_census_query_streams_each_selected_cell_once_across_ranks_and_workers(census, monkeypatch):
    from cellweave.data import CellStream, open_modality

    from .test_stream import _ranks_by_workers

    out, obs, var, raw = census
    selected = obs["soma_joinid"].to_numpy()[(obs["tissue_general"] == "lung").to_numpy() & obs["is_primary_data"].to_numpy()]
    assert 0 < len(selected) < len(obs) // 4
    store = open_modality(f"{out}::RNA", layer="raw", obs_filter=LUNG)
    assert store.n_obs == len(selected) and store.kind == "counts"
    assert list(store.var_names) == list(var["feature_name"]) and list(store.feature_ids) == list(var["feature_id"])
    got = _ranks_by_workers(monkeypatch, lambda r, w: CellStream(store, 16, seed=5, block_size=64, chunk_size=8,
                                                                  rank=r, world_size=w))
    assert all(len(v) > 0 for v in got.values())
    batches = [b for v in got.values() for b in v]
    ids = np.concatenate([b.obs_names for b in batches]).astype(np.int64)
    counts = pd.Series(ids).value_counts()
    assert set(counts.index) == set(selected)  # exactly the selected cells ...
    assert counts.min() == 1 and counts.sum() - len(selected) == (-len(selected)) % 2  # ... each once (+ DDP padding)
    for b in batches[:6]:  # values are the raw layer of those cells
        np.testing.assert_array_equal(b.dense().numpy(), raw[b.obs_names.astype(np.int64)].toarray())
    labels = store.obs_column("cell_type").astype(str).to_numpy()
    np.testing.assert_array_equal(labels, obs.set_index("soma_joinid").loc[selected, "cell_type"].astype(str))


def test_census_normalized_layer_var_filter_and_feature_key(census):
    from cellweave.data import open_modality

    out, obs, var, raw = census
    panel = list(var["feature_name"].iloc[[3, 7, 8, 20, 31]])
    store = open_modality(f"{out}::RNA", layer="normalized", obs_filter="donor_id == 'donor_3'",
                          var_filter=f"feature_name in {panel}", feature_key="feature_id")
    cells = obs["soma_joinid"].to_numpy()[(obs["donor_id"] == "donor_3").to_numpy()]
    assert store.shape == (len(cells), 5) and store.kind == "normalized"
    assert list(store.var_names) == list(var["feature_id"].iloc[[3, 7, 8, 20, 31]])
    X = _dense(store.read_X([(0, store.n_obs)]))
    totals = np.asarray(raw.sum(1)).ravel()[cells, None]
    np.testing.assert_allclose(X, raw[cells][:, [3, 7, 8, 20, 31]].toarray() / np.maximum(totals, 1), rtol=1e-6)


@pytest.mark.parametrize("options, names", [
    ({}, "layers: normalized, raw"),
    ({"layer": "counts"}, "this measurement has: normalized, raw"),
    ({"layer": "raw", "obs_filter": "tissue == 'lung' and is_primary == True"}, "obs has: soma_joinid, dataset_id"),
    ({"layer": "raw", "var_filter": "gene_symbol == 'CD3E'"}, "var has: soma_joinid, feature_id, feature_name"),
    ({"layer": "raw", "feature_key": "gene_symbol"}, "var has: feature_id, feature_name"),
])
def test_census_wrong_layer_filter_column_or_feature_key_is_one_line(census, capsys, options, names):
    from cellweave.cli import main

    out = census[0]
    flags = [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", v)]
    assert main(["stats", f"{out}::RNA", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("cellweave: error:") and names in err
    if "obs_filter" in options:  # the column that is missing is named, not the one that exists
        assert "column 'is_primary', which does not exist" in err
    with pytest.raises(InputError, match=names.split(":")[0]):
        SomaStore(out, "RNA", **options)


def test_refused_or_empty_filter_and_options_on_zarr(census, tmp_path):
    from cellweave.data import open_modality, write_zarr

    out = census[0]
    with pytest.raises(InputError, match="refused by tiledbsoma.*Cannot cast"):
        open_modality(f"{out}::RNA", layer="raw", obs_filter="is_primary_data == 'maybe'")
    with pytest.raises(InputError, match="selects no cell of 1200"):
        open_modality(f"{out}::RNA", layer="raw", obs_filter="tissue_general == 'retina'")
    zarr = write_zarr(counts_source(20, 5), tmp_path / "x.zarr")
    with pytest.raises(InputError, match="--obs-filter: these options select from TileDB-SOMA measurements only"):
        open_modality(zarr, obs_filter=LUNG)


def test_spec_round_trips_through_the_run_config_and_keeps_its_own_stats(census):
    import tomllib

    import tomli_w

    from cellweave.data import StoreSpec, open_modality
    from cellweave.data.spec import input_record

    out = census[0]
    store = open_modality(StoreSpec(f"{out}::RNA", layer="raw", obs_filter=LUNG))
    record = input_record(store)
    assert record == {"path": f"{out.resolve()}::RNA", "layer": "raw", "obs_filter": LUNG}
    again = open_modality(tomllib.loads(tomli_w.dumps({"rna": record}))["rna"])
    np.testing.assert_array_equal(again.all_obs_names(), store.all_obs_names())
    whole = open_modality(f"{out}::RNA", layer="raw")
    assert input_record(f"{out}::RNA") == f"{out.resolve()}::RNA"
    assert whole.stats_dir != store.stats_dir == again.stats_dir and store.stats_dir.parent == out / ".cellweave"
    assert SomaStore(out, "RNA", layer="raw").n_obs == 1200


def test_filter_on_a_cellweave_experiment_keeps_only_cells_of_the_measurement(tmp_path):
    rna = counts_source(80, 30, prefix="r")
    adt = normalized_source(60, 8, prefix="a")
    out = write_soma([rna, adt], tmp_path / "exp")
    store = SomaStore(out, "rna", obs_filter="batch == 'b1'")  # adt cells have no batch: has_rna keeps them out
    expected = rna.obs.index.to_numpy()[(rna.obs["batch"] == "b1").to_numpy()]
    np.testing.assert_array_equal(store.all_obs_names(), expected)
    np.testing.assert_array_equal(_dense(store.read_X([(0, store.n_obs)])),
                                  rna.X[(rna.obs["batch"] == "b1").to_numpy()].toarray())


def test_convert_extracts_a_census_query_to_zarr(census, tmp_path):
    from cellweave.cli import main
    from cellweave.data import open_modality

    out, obs, var, raw = census
    target = tmp_path / "lung.zarr"
    assert main(["convert", f"{out}::RNA", str(target), "--layer", "raw", "--obs-filter", LUNG]) == 0
    lung = open_modality(target)
    selected = obs["soma_joinid"].to_numpy()[(obs["tissue_general"] == "lung").to_numpy() & obs["is_primary_data"].to_numpy()]
    np.testing.assert_array_equal(lung.all_obs_names().astype(np.int64), selected)
    np.testing.assert_array_equal(_dense(lung.read_X([(0, lung.n_obs)])), raw[selected].toarray())
    assert list(lung.var_names) == list(var["feature_name"])
    assert set(lung.obs_column("tissue_general").astype(str)) == {"lung"}


def test_validate_checks_the_query(census, capsys):
    from cellweave.cli import main

    out, obs, var, raw = census
    n = int(((obs["tissue_general"] == "lung") & obs["is_primary_data"]).sum())
    assert main(["validate", f"rna={out}::RNA", "--layer", "raw", "--obs-filter", LUNG, "--batch-key", "donor_id"]) == 0
    assert f"(counts, {n} cells x 40 features)" in capsys.readouterr().out


def test_cli_store_options_apply_to_the_soma_inputs_only(tmp_path):
    from cellweave.cli import build_parser
    from cellweave.data import StoreSpec
    from cellweave.data.spec import specs_from_args

    args = build_parser().parse_args(["fit", "--modality", "rna=census.soma::RNA", "--modality", "adt=adt.zarr",
                                      "--layer", "raw", "--obs-filter", LUNG, "--feature-key", "feature_id", "--out", "r"])
    specs = specs_from_args({"rna": "census.soma::RNA", "adt": "adt.zarr"}, args)
    assert specs == {"rna": StoreSpec("census.soma::RNA", layer="raw", obs_filter=LUNG, feature_key="feature_id"),
                     "adt": "adt.zarr"}
    with pytest.raises(InputError, match="--layer, --obs-filter, --feature-key: these options select from TileDB-SOMA"):
        specs_from_args({"adt": "adt.zarr"}, args)


def test_obsm_of_a_query_spans_obs_and_is_replaced_on_a_second_write(census):
    import tiledbsoma

    from cellweave.data.embeddings import write_soma_obsm

    out = census[0]
    store = SomaStore(out, "RNA", layer="raw", obs_filter=LUNG)
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(store.n_obs, 3)), rng.normal(size=(store.n_obs, 3))
    write_soma_obsm(store, "X_test", first)
    write_soma_obsm(store, "X_test", second)  # a resumed run embeds again under its key
    with tiledbsoma.Experiment.open(str(out)) as exp:
        arr = exp.ms["RNA"]["obsm"]["X_test"]
        assert arr.shape == (1200, 3)
        coo = arr.read().tables().concat()
    got = np.zeros((1200, 3), dtype=np.float32)
    got[coo["soma_dim_0"].to_numpy(), coo["soma_dim_1"].to_numpy()] = coo["soma_data"].to_numpy()
    np.testing.assert_array_equal(got[store._joinids], second.astype(np.float32))
    assert np.count_nonzero(np.delete(got, store._joinids, axis=0)) == 0
    assert [p.name for p in (out / "ms" / "RNA" / "obsm").iterdir() if p.name.startswith("X_test")] != ["X_test"]
    assert len([p for p in (out / "ms" / "RNA" / "obsm").iterdir() if p.name.startswith("X_test")]) == 1
