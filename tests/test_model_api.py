"""The one user API of every method: in-memory AnnData / MuData in, fit, get_latent_representation, save/load,
history; explicit modality kinds."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellweave.errors import InputError
from cellweave.models import CVQVAE, SCMODAL, SCMRDR, FactVAE
from cellweave.simulate import simulate_atlas

from .conftest import CITE_SEQ, require_shared

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 50
CONFIGS = {
    SCMODAL: {"n_top_features": 300, "hidden": 64, "batch_size": 100},
    SCMRDR: {"n_top_features": 300, "hidden": [64], "batch_size": 100, "val_fraction": 0.0},
    CVQVAE: {"hidden": [64], "batch_size": 100, "n_components": 10, "n_codes": 64},
    FactVAE: {"n_top_genes": 0, "rna_hidden": [32], "atac_hidden": [32], "n_latent": 8, "batch_size": 100},
}


@pytest.fixture(scope="module")
def cite():
    """The real CITE-seq cells (200) as two in-memory AnnData objects: RNA counts (genes detected in 40 or more
    cells, to keep the tests fast) and ADT counts."""
    rna = ad.read_h5ad(require_shared(CITE_SEQ))
    rna = rna[:, np.asarray((rna.X > 0).sum(0)).ravel() >= 40].copy()
    adt = ad.AnnData(X=sp.csr_matrix(np.asarray(rna.obsm["protein_expression"], dtype=np.float32)), obs=rna.obs[[]].copy(),
                     var=pd.DataFrame(index=[str(p) for p in rna.uns["protein_names"]]))
    rna = ad.AnnData(X=sp.csr_matrix(rna.X), obs=rna.obs.copy(), var=rna.var[[]].copy())
    return {"rna": rna, "adt": adt}


@pytest.fixture(scope="module")
def multiome(tmp_path_factory):
    """Simulated paired RNA + ATAC (300 cells) read into memory, and its gene-peak links table."""
    paths = simulate_atlas(tmp_path_factory.mktemp("sim") / "atlas", 300, modalities=("rna", "atac"), paired=True,
                           n_genes=200, n_peaks=400, seed=3, progress=False)
    return {m: ad.read_zarr(paths[m]) for m in ("rna", "atac")}, paths["gene_peak_links"]


def _inputs(model_cls, cite, multiome):
    if model_cls in (SCMODAL, SCMRDR):
        return cite, {"links": "auto"}
    data, links = multiome
    return data, ({"links": links} if model_cls is FactVAE else {})


@pytest.mark.parametrize("as_mudata", [False, True], ids=["anndata", "mudata"])
@pytest.mark.parametrize("model_cls", [SCMODAL, SCMRDR, CVQVAE, FactVAE], ids=lambda c: c.__name__)
def test_fit_latent_save_load_from_memory(model_cls, as_mudata, cite, multiome, tmp_path):
    data, kwargs = _inputs(model_cls, cite, multiome)
    x_before = {m: a.X.copy() for m, a in data.items()}
    inputs = md.MuData(dict(data)) if as_mudata else dict(data)
    model = model_cls(inputs, config=CONFIGS[model_cls], seed=0, **kwargs)
    model.fit(max_steps=STEPS, run_dir=tmp_path / "run", device="cpu", progress=False)
    m = "rna"
    z = model.get_latent_representation(modality=m)
    assert z.shape[0] == data[m].n_obs and z.dtype == np.float32 and np.isfinite(z).all() and z.std(0).min() > 0
    assert isinstance(model.history, pd.DataFrame) and model.history["step"].max() == STEPS
    # the out-of-core embedding and the in-memory one are the same numbers, row for row
    emb = ad.read_zarr(model.embed()[m])
    assert list(emb.obs_names) == list(data[m].obs_names)
    np.testing.assert_allclose(emb.obsm["X_cellweave"], z, rtol=1e-5, atol=1e-6)
    # key_added writes into the AnnData the cells came from (the MuData's own modality object)
    target = inputs.mod[m] if as_mudata else data[m]
    model.get_latent_representation(modality=m, key_added="X_cellweave")
    np.testing.assert_array_equal(target.obsm["X_cellweave"], z)
    # new cells: the first 60, as a separate AnnData with its features in another order, embed as they did
    # within the whole (features are aligned by name)
    part = data[m][:60, ::-1].copy()
    np.testing.assert_allclose(model.get_latent_representation(part, modality=m), z[:60], rtol=1e-4, atol=1e-5)

    model.save(tmp_path / "saved")
    with pytest.raises(InputError, match="already exists"):
        model.save(tmp_path / "saved")
    loaded = model_cls.load(tmp_path / "saved")
    np.testing.assert_array_equal(loaded.get_latent_representation(modality=m), z)
    pd.testing.assert_frame_equal(loaded.history, model.history, check_dtype=False)
    # the run directory loads too when the in-memory inputs are handed back
    with pytest.raises(InputError, match="in-memory"):
        model_cls.load(tmp_path / "run")
    again = model_cls.load(tmp_path / "run", data=inputs)
    np.testing.assert_array_equal(again.get_latent_representation(modality=m), z)
    for name, a in data.items():  # the inputs were read, never changed
        assert (a.X != x_before[name]).nnz == 0 if sp.issparse(a.X) else np.array_equal(a.X, x_before[name])


def test_modality_kinds_are_explicit(cite):
    renamed = {"gex_lib1": cite["rna"], "adt": cite["adt"]}
    with pytest.raises(InputError, match=r"no default kind for a modality named 'gex_lib1'.*kinds=\{'gex_lib1': KIND\}"):
        SCMODAL(renamed, config=CONFIGS[SCMODAL])
    model = SCMODAL(renamed, kinds={"gex_lib1": "rna"}, config=CONFIGS[SCMODAL])
    assert ("adt", "gex_lib1") in model.links or ("gex_lib1", "adt") in model.links
    with pytest.raises(InputError, match="unknown kind 'genes'"):
        SCMODAL(renamed, kinds={"gex_lib1": "genes"}, config=CONFIGS[SCMODAL])


def test_modality_argument_and_untrained_model(cite):
    model = SCMODAL(cite, config=CONFIGS[SCMODAL])
    with pytest.raises(InputError, match="not trained"):
        model.get_latent_representation(modality="rna")
    model.fit(max_steps=2, progress=False, device="cpu")
    with pytest.raises(InputError, match="modality= one of"):
        model.get_latent_representation()
    with pytest.raises(InputError, match="unknown modality 'atac'"):
        model.get_latent_representation(modality="atac")
    with pytest.raises(InputError, match="at least 50% needed"):
        model.get_latent_representation(cite["rna"][:, :100].copy(), modality="rna")


def _same_store(a, b):
    rows = [(0, a.n_obs)]
    assert a.n_obs == b.n_obs and list(a.var_names) == list(b.var_names) and a.kind == b.kind
    assert list(a.obs_names(rows)) == list(b.obs_names(rows))
    xa, xb = a.read_X(rows), b.read_X(rows)
    np.testing.assert_array_equal(xa.toarray() if sp.issparse(xa) else xa, xb.toarray() if sp.issparse(xb) else xb)


def test_every_form_of_an_input_reads_the_same_cells(cite, tmp_path):
    """In memory, backed h5ad, FILE.h5mu::MODALITY, SOMA path, tiledbsoma Experiment / Measurement / query."""
    import tiledbsoma

    from cellweave.data.convert import convert
    from cellweave.data.memory import AnnDataStore, as_store
    from cellweave.models.inputs import open_inputs

    adt = cite["adt"]
    reference = as_store(adt, "adt")
    assert isinstance(reference, AnnDataStore) and reference.X is adt.X  # no copy of X
    adt.write_h5ad(tmp_path / "adt.h5ad")
    md.MuData(dict(cite)).write_h5mu(tmp_path / "cite.h5mu")
    convert(tmp_path / "cite.h5mu", tmp_path / "cite.soma", fmt="soma", progress=False)
    forms = {"backed": ad.read_h5ad(tmp_path / "adt.h5ad", backed="r"), "h5mu": f"{tmp_path / 'cite.h5mu'}::adt",
             "soma path": f"{tmp_path / 'cite.soma'}::adt"}
    for name, form in forms.items():
        _same_store(reference, as_store(form, "adt"))
    with tiledbsoma.Experiment.open(str(tmp_path / "cite.soma")) as exp:
        _same_store(reference, as_store(exp, "adt"))  # the measurement named like the modality
        _same_store(reference, as_store(exp.ms["adt"], "protein"))
        _same_store(reference, as_store(exp.axis_query("adt"), "adt"))
        with pytest.raises(InputError, match="which measurement is modality 'prot'"):
            as_store(exp, "prot")
        stores = open_inputs(exp)  # a whole experiment: its measurements by name
        assert list(stores) == ["adt", "rna"]
        _same_store(reference, stores["adt"])
    with pytest.raises(InputError, match="holds several modalities.*cite.h5mu::rna"):
        as_store(str(tmp_path / "cite.h5mu"), "x")
    with pytest.raises(InputError, match="no such modality"):
        as_store(f"{tmp_path / 'cite.h5mu'}::atac", "atac")
    with pytest.raises(InputError, match="pass the MuData itself"):
        as_store(md.MuData(dict(cite)), "rna")


def test_h5mu_path_model_equals_the_in_memory_one_and_the_cli_takes_the_file(cite, tmp_path):
    from cellweave.cli import main

    md.MuData(dict(cite)).write_h5mu(tmp_path / "cite.h5mu")
    h5mu = str(tmp_path / "cite.h5mu")
    memory = SCMODAL(cite, config=CONFIGS[SCMODAL], seed=0)
    memory.fit(max_steps=5, device="cpu", progress=False)
    on_disk = SCMODAL({"rna": f"{h5mu}::rna", "adt": f"{h5mu}::adt"}, config=CONFIGS[SCMODAL], seed=0)
    on_disk.fit(max_steps=5, device="cpu", progress=False, run_dir=tmp_path / "api")
    np.testing.assert_array_equal(on_disk.get_latent_representation(modality="adt"),
                                  memory.get_latent_representation(modality="adt"))
    with pytest.raises(InputError, match="not an in-memory AnnData"):
        on_disk.get_latent_representation(modality="adt", key_added="X_cellweave")
    assert SCMODAL.load(tmp_path / "api").inputs == {m: f"{h5mu}::{m}" for m in ("rna", "adt")}
    assert main(["fit", "--modality", h5mu, "--max-steps", "5", "--device", "cpu", "--out", str(tmp_path / "cli"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli" / "embeddings").iterdir()) == ["adt.zarr", "rna.zarr"]
