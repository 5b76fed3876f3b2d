"""Input readers: each yields exactly the matrix and metadata of its file, chunk by chunk."""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io as sio
import scipy.sparse as sp

from cellweave.data.readers import FcsSource, H5adSource, H5adStore, h5mu_sources, open_source, tenx_sources
from cellweave.data.readers import h5 as h5_mod
from cellweave.data.write_zarr import write_zarr
from cellweave.data.zarr_store import ZarrStore
from cellweave.errors import InputError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CITE = SHARED_DATA / "pbmc_10k_protein_v3.h5ad"
FCS = SHARED_DATA / "ff.fcs"
GATING = SHARED_DATA / "gating_result.csv"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data file {path} is not present on this machine")


def _counts(n_obs: int = 53, n_vars: int = 17, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n_obs, n_vars, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.ceil(X.data * 20)
    X[5] = 0  # an empty row
    X.eliminate_zeros()
    return X


def _adata(X, n_obs: int, n_vars: int) -> ad.AnnData:
    obs = pd.DataFrame({"batch": pd.Categorical(["a", "b"] * (n_obs // 2) + ["a"] * (n_obs % 2))}, index=[f"cell{i}" for i in range(n_obs)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_vars)])
    return ad.AnnData(X=X, obs=obs, var=var)


def _stack(chunks) -> tuple[list[int], list]:
    starts, mats = zip(*chunks)
    return list(starts), list(mats)


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


# --- h5ad / h5mu ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_h5ad_source_yields_exact_matrix(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(h5_mod, "CSC_BLOCK_NNZ", 25)  # several column blocks in the CSC conversion
    X = _counts()
    stored = {"csr": X, "csc": X.tocsc(), "dense": X.toarray()}[fmt]
    adata = _adata(stored, *X.shape)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    src = H5adSource(path)
    assert src.sparse == (fmt != "dense")
    assert src.modality == "a"
    starts, mats = _stack(src.iter_chunks(7))
    assert starts == list(range(0, X.shape[0], 7))
    assert all(m.shape[0] <= 7 for m in mats)
    if fmt != "dense":
        assert all(isinstance(m, sp.csr_matrix) and m.has_sorted_indices for m in mats)
        got = sp.vstack(mats, format="csr")
    else:
        got = np.concatenate(mats)
    np.testing.assert_array_equal(_dense(got), X.toarray())
    pd.testing.assert_frame_equal(src.obs, adata.obs)
    assert src.var.index.tolist() == adata.var_names.tolist()


def test_h5ad_layer_and_generated_obsm_names(tmp_path):
    X = _counts()
    adata = _adata(X.toarray() / 3.0, *X.shape)
    adata.layers["counts"] = X
    adata.obsm["protein"] = np.arange(X.shape[0] * 3, dtype=np.float32).reshape(-1, 3)
    adata.obsm["scores"] = pd.DataFrame({"s1": np.arange(X.shape[0]) * 1.0, "s2": np.ones(X.shape[0])}, index=adata.obs_names)
    path = tmp_path / "b.h5ad"
    adata.write_h5ad(path)

    layer = H5adSource(path, layer="counts")
    assert layer.sparse
    np.testing.assert_array_equal(sp.vstack([m for _, m in layer.iter_chunks(10)]).toarray(), X.toarray())

    prot = H5adSource(path, obsm_key="protein")
    assert prot.modality == "protein" and prot.var.index.tolist() == ["protein_0", "protein_1", "protein_2"]
    np.testing.assert_array_equal(np.concatenate([m for _, m in prot.iter_chunks(9)]), adata.obsm["protein"])

    scores = H5adSource(path, obsm_key="scores")
    assert scores.var.index.tolist() == ["s1", "s2"]
    np.testing.assert_array_equal(np.concatenate([m for _, m in scores.iter_chunks(9)]), adata.obsm["scores"].to_numpy())

    with pytest.raises(InputError, match="obsm\\['nope'\\].*protein"):
        H5adSource(path, obsm_key="nope")
    with pytest.raises(InputError, match="uns\\['missing'\\]"):
        H5adSource(path, obsm_key="protein", names_key="missing")


def test_cite_seq_proteins_from_obsm():
    _need(CITE)
    src = H5adSource(CITE, modality="adt", obsm_key="protein_expression", names_key="protein_names")
    ref = ad.read_h5ad(CITE)
    assert src.modality == "adt" and not src.sparse
    assert src.var.index.tolist() == [str(n) for n in ref.uns["protein_names"]]
    assert src.var.shape[0] == 14
    np.testing.assert_array_equal(np.concatenate([m for _, m in src.iter_chunks(64)]), ref.obsm["protein_expression"])
    assert src.obs.index.tolist() == ref.obs_names.tolist()
    rna = open_source(CITE, modality="rna")[0]
    assert rna.modality == "rna" and rna.var.shape[0] == ref.n_vars
    first = next(iter(rna.iter_chunks(50)))[1]
    np.testing.assert_array_equal(_dense(first), _dense(ref.X[:50]))


def test_h5mu_one_source_per_modality(tmp_path):
    mudata = pytest.importorskip("mudata")
    rna_X, adt_X = _counts(40, 12, seed=1), np.random.default_rng(2).random((40, 4)).astype(np.float32)
    rna, adt = _adata(rna_X, 40, 12), _adata(adt_X, 40, 4)
    adt.var_names = [f"p{j}" for j in range(4)]
    path = tmp_path / "m.h5mu"
    mudata.MuData({"rna": rna, "adt": adt}).write_h5mu(path)
    sources = h5mu_sources(path)
    assert [s.modality for s in sources] == ["rna", "adt"]
    got = {s.modality: s for s in sources}
    assert got["rna"].sparse and not got["adt"].sparse
    np.testing.assert_array_equal(sp.vstack([m for _, m in got["rna"].iter_chunks(16)]).toarray(), rna_X.toarray())
    np.testing.assert_array_equal(np.concatenate([m for _, m in got["adt"].iter_chunks(16)]), adt_X)
    assert got["adt"].var.index.tolist() == ["p0", "p1", "p2", "p3"]
    assert [s.modality for s in open_source(path, modality="adt")] == ["adt"]
    with pytest.raises(InputError, match="no modality 'atac'"):
        open_source(path, modality="atac")


def test_h5ad_source_writes_to_zarr(tmp_path):
    X = _counts()
    path = tmp_path / "c.h5ad"
    _adata(X, *X.shape).write_h5ad(path)
    store = ZarrStore(write_zarr(H5adSource(path, modality="rna"), tmp_path / "c.zarr", chunk_rows=8))
    assert store.modality == "rna" and store.kind == "counts"
    np.testing.assert_array_equal(store.read_X([(0, X.shape[0])]).toarray(), X.toarray())


# --- H5adStore ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True])
def test_h5ad_store_reads_noncontiguous_ranges(tmp_path, dense):
    X = _counts(60, 9, seed=3)
    adata = _adata(X.toarray() if dense else X, *X.shape)
    path = tmp_path / "s.h5ad"
    adata.write_h5ad(path)
    store = H5adStore(path)
    assert store.shape == X.shape and store.sparse == (not dense) and store.kind == "counts"
    ranges = [(40, 47), (3, 9), (9, 12), (55, 60), (20, 20)]
    rows = np.concatenate([np.arange(a, b) for a, b in ranges])
    got = store.read_X(ranges)
    assert sp.issparse(got) != dense
    np.testing.assert_array_equal(_dense(got), X.toarray()[rows])
    assert store.obs_names(ranges).tolist() == adata.obs_names[rows].tolist()
    chunk = store.read(ranges)
    np.testing.assert_array_equal(chunk.rows, rows)
    assert store.obs_keys == ["batch"]
    assert store.obs_column("batch").tolist() == adata.obs["batch"].tolist()
    with pytest.raises(InputError, match="obs\\['nope'\\]"):
        store.require_obs_key("nope")
    assert store.stats_dir == tmp_path / "s.h5ad.cellweave"
    clone = pickle.loads(pickle.dumps(store))  # DataLoader workers with spawn
    np.testing.assert_array_equal(_dense(clone.read_X([(1, 4)])), X.toarray()[1:4])


def test_h5ad_store_rejects_csc(tmp_path):
    X = _counts()
    path = tmp_path / "csc.h5ad"
    _adata(X.tocsc(), *X.shape).write_h5ad(path)
    with pytest.raises(InputError, match="csc X cannot be read by row ranges.*tocsr"):
        H5adStore(path)


# --- 10x ------------------------------------------------------------------------------------------------------

N_GENES, N_ADT, N_CELLS = 11, 3, 23
GENE_NAMES = ["Actb", "Cd3e", "Cd3e"] + [f"Gene{j}" for j in range(N_GENES - 3)]  # a duplicate name


def _tenx_matrix() -> sp.csr_matrix:
    """Cells x (genes, then antibodies), with two empty cells."""
    X = _counts(N_CELLS, N_GENES + N_ADT, seed=4).tolil()
    X[10] = 0
    X[11] = 0
    return sp.csr_matrix(X)


def _features() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"ENSG{j:05d}" for j in range(N_GENES)] + [f"ab{j}" for j in range(N_ADT)],
        "name": GENE_NAMES + [f"CD{j}_TotalSeqB" for j in range(N_ADT)],
        "type": ["Gene Expression"] * N_GENES + ["Antibody Capture"] * N_ADT,
    })


def _barcodes() -> list[str]:
    return [f"AAAC{i:04d}-1" for i in range(N_CELLS)]


def _write(path: Path, payload: bytes, gz: bool) -> None:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(payload) if gz else payload)


def _write_mtx_folder(folder: Path, X: sp.spmatrix, gz: bool) -> Path:
    folder.mkdir()
    buf = io.BytesIO()
    sio.mmwrite(buf, X, field="integer")
    _write(folder / "matrix.mtx", buf.getvalue(), gz)
    _write(folder / "features.tsv", _features().to_csv(sep="\t", header=False, index=False).encode(), gz)
    _write(folder / "barcodes.tsv", ("\n".join(_barcodes()) + "\n").encode(), gz)
    return folder


def _write_tenx_h5(path: Path, X: sp.csr_matrix) -> Path:
    fb = sp.csc_matrix(X.T)  # features x barcodes, grouped by barcode
    feats = _features()
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = fb.data.astype(np.int32), fb.indices.astype(np.int64), fb.indptr.astype(np.int64)
        g["shape"] = np.array(fb.shape, dtype=np.int32)
        g["barcodes"] = np.array(_barcodes(), dtype="S")
        fg = g.create_group("features")
        fg["id"], fg["name"], fg["feature_type"] = (np.array(feats[c].tolist(), dtype="S") for c in ("id", "name", "type"))
    return path


def _check_tenx_split(sources, X: sp.csr_matrix, chunk_rows: int) -> None:
    assert [s.modality for s in sources] == ["rna", "adt"]
    rna, adt = sources
    assert rna.var.index.tolist()[:3] == ["Actb", "Cd3e", "Cd3e-1"]
    assert rna.var["gene_ids"].tolist() == _features()["id"].tolist()[:N_GENES]
    assert set(rna.var["feature_types"]) == {"Gene Expression"} and set(adt.var["feature_types"]) == {"Antibody Capture"}
    assert adt.var.index.tolist() == [f"CD{j}_TotalSeqB" for j in range(N_ADT)]
    for src, cols in ((rna, slice(0, N_GENES)), (adt, slice(N_GENES, None))):
        assert src.obs.index.tolist() == _barcodes() and src.sparse and src.kind == "counts"
        starts, mats = _stack(src.iter_chunks(chunk_rows))
        assert starts == list(range(0, N_CELLS, chunk_rows))
        assert all(isinstance(m, sp.csr_matrix) for m in mats)
        np.testing.assert_array_equal(sp.vstack(mats).toarray(), X[:, cols].toarray())


@pytest.mark.parametrize("gz", [True, False])
def test_tenx_mtx_folder_split_by_feature_type(tmp_path, monkeypatch, gz):
    from cellweave.data.readers import tenx

    monkeypatch.setattr(tenx, "MTX_PARSE_ROWS", 7)  # many parse blocks per chunk and chunks per block
    X = _tenx_matrix()
    folder = _write_mtx_folder(tmp_path / "filtered_feature_bc_matrix", sp.csc_matrix(X.T), gz)
    for chunk_rows in (4, 10, 100):
        _check_tenx_split(tenx_sources(folder), X, chunk_rows)
    assert [s.modality for s in open_source(folder)] == ["rna", "adt"]


def test_tenx_h5_split_by_feature_type(tmp_path):
    X = _tenx_matrix()
    path = _write_tenx_h5(tmp_path / "filtered_feature_bc_matrix.h5", X)
    _check_tenx_split(tenx_sources(path), X, 6)
    assert [s.modality for s in open_source(path, modality="adt")] == ["adt"]


def test_tenx_mtx_unsorted_is_rejected(tmp_path):
    coo = sp.coo_matrix(_tenx_matrix().T)
    order = np.random.default_rng(0).permutation(coo.nnz)
    shuffled = sp.coo_matrix((coo.data[order], (coo.row[order], coo.col[order])), shape=coo.shape)
    assert np.any(np.diff(shuffled.col) < 0)
    folder = _write_mtx_folder(tmp_path / "mtx", shuffled, gz=True)
    src = tenx_sources(folder)[0]
    with pytest.raises(InputError, match="not sorted by barcode"):
        list(src.iter_chunks(5))


def test_tenx_mtx_shape_mismatch(tmp_path):
    folder = _write_mtx_folder(tmp_path / "mtx", sp.csc_matrix(_tenx_matrix()), gz=False)  # cells x features: transposed
    with pytest.raises(InputError, match="features x barcodes"):
        tenx_sources(folder)


# --- FCS ------------------------------------------------------------------------------------------------------


def test_fcs_matches_flowio_and_attaches_labels():
    _need(FCS)
    flowio = pytest.importorskip("flowio")
    src = FcsSource(FCS, labels_csv=GATING)
    ref = flowio.FlowData(str(FCS))
    events = ref.as_array(preprocess=False)
    assert events.shape == (19225, 18)
    starts, mats = _stack(src.iter_chunks(4096))
    assert starts == list(range(0, 19225, 4096))
    np.testing.assert_array_equal(np.concatenate(mats), events)
    expected = [ref.channels[k].get("pns") or ref.channels[k]["pnn"] for k in sorted(ref.channels)]
    assert src.var.index.tolist() == expected
    assert src.var["channel"].tolist() == [ref.channels[k]["pnn"] for k in sorted(ref.channels)]
    assert src.kind == "normalized" and not src.sparse and src.modality == "cytometry"
    assert src.obs.index[:2].tolist() == ["ff_0", "ff_1"]
    labels = pd.read_csv(GATING, header=None)[0]
    assert src.obs["cell_type"].tolist() == labels.tolist()


def test_fcs_label_count_mismatch(tmp_path):
    _need(FCS)
    bad = tmp_path / "labels.csv"
    bad.write_text("a\nb\n")
    with pytest.raises(InputError, match="2 labels for 19225 events"):
        FcsSource(FCS, labels_csv=bad)


def _write_fcs(path: Path, values: np.ndarray, bits: list[int], datatype: str = "I", byteord: str = "4,3,2,1") -> Path:
    """A minimal FCS 3.1 file; '/' inside a name is written doubled, as the standard asks."""
    n, p = values.shape
    keys = {"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0", "$MODE": "L",
            "$DATATYPE": datatype, "$BYTEORD": byteord, "$PAR": str(p), "$TOT": str(n)}
    for k in range(p):
        keys[f"$P{k + 1}N"] = f"ch{k}"
        if k == 0:  # FCS 3.1 forbids empty values: other channels have no $PnS
            keys[f"$P{k + 1}S"] = "CD4/CD8"
        keys[f"$P{k + 1}B"] = str(bits[k])
        keys[f"$P{k + 1}R"] = "65536"
    endian = ">" if byteord.startswith("4") or byteord == "2,1" else "<"
    data = values.astype(f"{endian}u{bits[0] // 8}").tobytes()
    begin = 58 + 2048  # data after a padded TEXT segment
    keys["$BEGINDATA"], keys["$ENDDATA"] = str(begin), str(begin + len(data) - 1)
    text = "/" + "".join(f"{k.replace('/', '//')}/{v.replace('/', '//')}/" for k, v in keys.items())
    assert len(text) < 2048
    text_bytes = text.encode().ljust(2048)
    header = b"FCS3.1    " + b"".join(f"{x:>8}".encode() for x in (58, 58 + len(text) - 1, begin, begin + len(data) - 1, 0, 0))
    path.write_bytes(header + text_bytes + data)
    return path


def test_fcs_integer_data_and_escaped_delimiter(tmp_path):
    values = np.random.default_rng(5).integers(0, 60000, size=(1000, 3))
    path = _write_fcs(tmp_path / "int.fcs", values, bits=[16, 16, 16], byteord="2,1")
    src = open_source(path)[0]
    assert src.var.index.tolist() == ["CD4/CD8", "ch1", "ch2"]
    np.testing.assert_array_equal(np.concatenate([m for _, m in src.iter_chunks(300)]), values)
    mixed = _write_fcs(tmp_path / "mixed.fcs", values, bits=[16, 32, 16], byteord="2,1")
    with pytest.raises(InputError, match="different bit widths"):
        FcsSource(mixed)


def test_fcs_truncated_data_is_rejected(tmp_path):
    path = _write_fcs(tmp_path / "t.fcs", np.ones((100, 2), dtype=np.int64), bits=[32, 32])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated"):
        FcsSource(path)


# --- dispatch -------------------------------------------------------------------------------------------------


def test_open_source_rejects_bad_inputs(tmp_path):
    empty = tmp_path / "empty.h5ad"
    empty.touch()
    with pytest.raises(InputError, match="empty file"):
        open_source(empty)
    other = tmp_path / "table.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="unsupported file type '.csv'.*h5ad.*h5mu.*fcs"):
        open_source(other)
    with pytest.raises(InputError, match="no such file"):
        open_source(tmp_path / "missing.h5ad")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(InputError, match="without matrix.mtx"):
        open_source(folder)
    not_h5 = tmp_path / "fake.h5ad"
    not_h5.write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        open_source(not_h5)
    not_fcs = tmp_path / "fake.fcs"
    not_fcs.write_bytes(b"hello world" * 10)
    with pytest.raises(InputError, match="not an FCS"):
        open_source(not_fcs)
