"""``cellweave convert`` end to end: h5ad -> Zarr/SOMA -> stream equals the h5ad; bad input leaves nothing."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellweave.cli import main
from cellweave.data import CellStream, PairedStream, open_modality
from cellweave.data.convert import convert

from .conftest import CITE_SEQ, counts_source, require_shared


def _stream_matrix(store) -> tuple[np.ndarray, np.ndarray]:
    """Every row of a store, through the shuffled stream, put back in store order."""
    rows, values, ids = [], [], []
    for b in CellStream(store, 64, seed=11, block_size=256):
        rows.append(b.rows.numpy())
        values.append(b.dense().numpy())
        ids.append(b.obs_names)
    order = np.argsort(np.concatenate(rows))
    return np.concatenate(values)[order], np.concatenate(ids)[order]


def _write_h5ad(tmp_path, n=500, g=80, **kw) -> tuple:
    src = counts_source(n, g, **kw)
    adata = ad.AnnData(src.X, obs=src.obs, var=src.var)
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    return path, adata


@pytest.mark.parametrize("fmt", ["zarr", "soma"])
def test_h5ad_roundtrip_through_stream(tmp_path, fmt):
    path, adata = _write_h5ad(tmp_path)
    out = tmp_path / ("x.zarr" if fmt == "zarr" else "x.soma")
    assert main(["convert", str(path), str(out), "--format", fmt, "--modality", "rna"]) == 0
    store = open_modality(out if fmt == "zarr" else f"{out}::rna")
    X, ids = _stream_matrix(store)
    np.testing.assert_array_equal(X, adata.X.toarray())
    assert list(ids) == list(adata.obs_names)
    assert store.kind == "counts"
    assert list(store.obs_column("batch").astype(str)) == list(adata.obs["batch"])


def test_obs_columns_are_chunked_for_scattered_reads(tmp_path, monkeypatch):
    import zarr

    import cellweave.data.zarr_store as zarr_store
    from cellweave.data import write_zarr

    monkeypatch.setattr(zarr_store, "OBS_CHUNK_ROWS", 128)  # 500 cells: several chunks
    src = counts_source(500, 20)
    store = open_modality(write_zarr(src, tmp_path / "x.zarr", chunk_rows=100))
    root = zarr.open_group(tmp_path / "x.zarr", mode="r")
    for key in ("_index", "batch/codes", "cell_type/codes"):
        assert root[f"obs/{key}"].chunks == (128,), key
    X, ids = _stream_matrix(store)  # cell ids still come back right from scattered, chunk-crossing reads
    assert list(ids) == list(src.obs.index) and np.array_equal(X, src.X.toarray())


@pytest.mark.parametrize("fmt", ["zarr", "soma"])
def test_real_cite_seq_roundtrip(tmp_path, fmt):
    """The real 10x PBMC CITE-seq file: RNA from X, proteins from obsm, through both stores and the paired stream."""
    path = require_shared(CITE_SEQ)
    adata = ad.read_h5ad(path)
    rna = sp.csr_matrix(adata.X).toarray()
    prot = np.asarray(adata.obsm["protein_expression"])
    from cellweave.data.readers import H5adSource

    sources = [H5adSource(path, modality="rna"), H5adSource(path, modality="adt", obsm_key="protein_expression", names_key="protein_names")]
    if fmt == "zarr":
        from cellweave.data import write_zarr

        stores = [open_modality(write_zarr(s, tmp_path / f"{s.modality}.zarr")) for s in sources]
    else:
        from cellweave.data.soma_store import write_soma

        exp = write_soma(sources, tmp_path / "cite.soma")
        stores = [open_modality(f"{exp}::rna"), open_modality(f"{exp}::adt")]
    X, ids = _stream_matrix(stores[0])
    np.testing.assert_array_equal(X, rna)
    assert list(ids) == list(adata.obs_names)
    P, _ = _stream_matrix(stores[1])
    np.testing.assert_allclose(P, prot, rtol=1e-6)
    assert list(stores[1].var_names) == [str(n) for n in adata.uns["protein_names"]]
    paired = PairedStream(stores, 50, seed=0)
    step = next(iter(paired))
    rows = adata.obs_names.get_indexer(step["rna"].obs_names)
    np.testing.assert_allclose(step["adt"].dense().numpy(), prot[rows], rtol=1e-6)


def test_h5mu_to_directory_of_stores_and_one_soma_experiment(tmp_path):
    mudata = pytest.importorskip("mudata")
    rna, adt = counts_source(120, 30), counts_source(120, 6, seed=2, modality="adt")
    mdata = mudata.MuData({"rna": ad.AnnData(rna.X, obs=rna.obs, var=rna.var),
                           "prot": ad.AnnData(adt.X.toarray(), obs=rna.obs.copy(), var=pd.DataFrame(index=[f"p{i}" for i in range(6)]))})
    path = tmp_path / "in.h5mu"
    mdata.write(path)
    written = convert(path, tmp_path / "z", fmt="zarr", progress=False)
    assert sorted(p.name for p in written) == ["prot.zarr", "rna.zarr"]
    exp = convert(path, tmp_path / "e.soma", fmt="soma", progress=False)[0]
    np.testing.assert_array_equal(open_modality(f"{exp}::prot").read_X([(0, 120)]), adt.X.toarray())
    np.testing.assert_array_equal(open_modality(f"{exp}::rna").read_X([(0, 120)]).toarray(), rna.X.toarray())


def _bad_h5ad(tmp_path, mutate) -> str:
    path, adata = _write_h5ad(tmp_path, n=300, g=20)
    X = adata.X.toarray()
    adata = ad.AnnData(X, obs=adata.obs.copy(), var=adata.var.copy())
    mutate(adata)
    bad = tmp_path / "bad.h5ad"
    adata.write_h5ad(bad)
    return str(bad)


def _nan(a):
    a.X[250, 3] = np.nan


def _inf(a):
    a.X[10, 0] = np.inf


def _negative(a):
    a.X[200, 5] = -2


def _dup(a):
    a.obs_names = ["same"] * 2 + list(a.obs_names[2:])


@pytest.mark.parametrize("fmt", ["zarr", "soma"])
@pytest.mark.parametrize(
    ("mutate", "message"),
    [(_nan, r"X: NaN or Inf value in cell row 250"), (_inf, r"NaN or Inf value in cell row 10"),
     (_negative, r"negative value .*cell row 200"), (_dup, r"obs_names .*duplicated")],
)
def test_bad_values_leave_no_store(tmp_path, capsys, fmt, mutate, message):
    bad = _bad_h5ad(tmp_path, mutate)
    out = tmp_path / "out.store"
    rc = main(["convert", bad, str(out), "--format", fmt, "--modality", "rna", "--chunk-rows", "64"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.h5ad" in err and "Fix:" in err
    import re

    assert re.search(message, err), err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_empty_unknown_and_existing_outputs(tmp_path, capsys):
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    assert main(["convert", str(empty), str(tmp_path / "o.zarr")]) == 2
    assert "empty" in capsys.readouterr().err
    unknown = tmp_path / "cells.xyz"
    unknown.write_text("hello")
    assert main(["convert", str(unknown), str(tmp_path / "o.zarr")]) == 2
    assert "format" in capsys.readouterr().err.lower()
    path, adata = _write_h5ad(tmp_path, n=50, g=5)
    out = tmp_path / "o.zarr"
    assert main(["convert", str(path), str(out), "--modality", "rna"]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["convert", str(path), str(out), "--modality", "rna"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before
    assert main(["convert", str(path), str(out), "--modality", "rna", "--overwrite"]) == 0
    np.testing.assert_array_equal(open_modality(out).read_X([(0, 50)]).toarray(), adata.X.toarray())


def test_fcs_with_gating_labels(tmp_path):
    fcs = require_shared(CITE_SEQ.parent / "ff.fcs")
    out = tmp_path / "ff.zarr"
    assert main(["convert", str(fcs), str(out), "--labels", str(fcs.parent / "gating_result.csv"), "--modality", "cytometry"]) == 0
    store = open_modality(out)
    assert store.shape == (19_225, 18) and store.kind == "normalized" and not store.sparse
    labels = pd.read_csv(fcs.parent / "gating_result.csv", header=None)[0].astype(str)
    assert list(store.obs_column("cell_type").astype(str)) == list(labels)
    b = next(iter(CellStream(store, 1000, label_key="cell_type")))
    assert b.label is not None and not b.is_sparse
