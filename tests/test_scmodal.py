"""scMODAL end to end on simulated stores: integration quality, exact resume, outputs, and input errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellweave.data import InMemorySource, write_zarr
from cellweave.downstream import transfer_labels
from cellweave.errors import InputError
from cellweave.links import gene_activity, read_links
from cellweave.models import SCMODAL, read_embedding
from cellweave.simulate import simulate_atlas

from .conftest import CITE_SEQ, require_shared

SMALL = {"n_top_features": 300, "hidden": 128, "batch_size": 256}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "atlas"
    return simulate_atlas(root, 1500, n_genes=600, n_proteins=40, n_peaks=1200, seed=1, progress=False)


def _links(atlas):
    from cellweave.data import open_modality

    rna, atac = open_modality(atlas["rna"]), open_modality(atlas["atac"])
    return read_links(atlas["links"]) + [gene_activity(list(atac.var_names), atlas["genes_bed"], list(rna.var_names))]


def test_three_modalities_label_transfer(atlas, tmp_path):
    model = SCMODAL({m: atlas[m] for m in ("rna", "adt", "atac")}, links=_links(atlas), config=SMALL, seed=0)
    assert set(model.link_matrices) == {("adt", "rna"), ("rna", "atac")}
    result = model.fit(600, run_dir=tmp_path / "run", progress=False)
    assert result.step == 600 and (tmp_path / "run" / "config.toml").exists() and (tmp_path / "run" / "loss_curves.png").exists()
    paths = model.embed(progress=False)
    emb = ad.read_zarr(paths["adt"])
    assert emb.obsm["X_cellweave"].shape == (1500, 20) and emb.obs_names[0] == "adt_0"
    accs = {}
    for q in ("adt", "atac"):
        pred = transfer_labels(paths["rna"], paths[q], "cell_type", k=15)
        accs[q] = float((pred["predicted"] == pred["true"]).mean())
    print("label transfer accuracy", accs)
    assert min(accs.values()) > 0.8, accs

    # imputation and feature relationships: a protein's imputed coding gene tracks the measured protein
    out = model.impute("adt", "rna", features=model.features["rna"][:10])
    imp = ad.read_zarr(out)
    assert imp.shape == (1500, 10) and np.isfinite(imp.X).all()
    rel = model.feature_relationships("adt", "rna")
    links = read_links(atlas["links"])[0].table
    linked = rel.merge(links, on=["source_feature", "target_feature"])
    assert linked["r"].mean() > rel["r"].mean() + 0.05


def _foscttm(a: np.ndarray, b: np.ndarray) -> float:
    """Dense reference: fraction of cells closer than the true partner, averaged over both directions."""
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    true = np.diag(d)
    return float(((d < true[:, None]).mean(1).mean() + (d < true[None, :]).mean(0).mean()) / 2)


def test_cite_seq_rna_vs_protein_beats_the_unintegrated_baseline(tmp_path):
    """Real paired CITE-seq cells, RNA and protein fed as unpaired stores; the pairing is only used to score."""
    from sklearn.decomposition import PCA

    from cellweave.data.readers.h5 import H5adSource

    path = require_shared(CITE_SEQ)
    rna = write_zarr(H5adSource(path, modality="rna"), tmp_path / "rna.zarr")
    adt = write_zarr(H5adSource(path, modality="adt", obsm_key="protein_expression", names_key="protein_names"),
                     tmp_path / "adt.zarr")
    model = SCMODAL({"rna": rna, "adt": adt}, links="auto", config={"n_top_features": 300}, seed=0)
    assert len(model.link_matrices[("adt", "rna")][0]) == 14  # every protein of the panel links to its gene(s)
    model.fit(300, run_dir=tmp_path / "run", progress=False)
    paths = model.embed(progress=False)
    z_rna, z_adt = read_embedding(paths["rna"]), read_embedding(paths["adt"])
    assert list(ad.read_zarr(paths["rna"]).obs_names) == list(ad.read_zarr(paths["adt"]).obs_names)  # same cells, same order
    integrated = _foscttm(z_rna, z_adt)

    # unintegrated baseline: PCA of the linked features, fitted per modality on the same scaled inputs
    cols, W = model.link_matrices[("adt", "rna")]
    x = {m: torch.cat([b.dense() for b in model.iter_batches(m)]).numpy() for m in ("rna", "adt")}
    linked = {"adt": x["adt"][:, cols], "rna": x["rna"] @ np.asarray(W).T}
    pcs = {m: PCA(10, random_state=0).fit_transform((v - v.mean(0)) / v.std(0).clip(1e-6)) for m, v in linked.items()}
    baseline = _foscttm(pcs["rna"], pcs["adt"])
    print(f"FOSCTTM scMODAL {integrated:.3f}, PCA of linked features {baseline:.3f}")
    assert integrated < 0.5 and integrated < baseline - 0.05


def test_linked_block_is_the_authors_shared_block(atlas):
    """The linked columns of the encoders' inputs (where the MNN anchors are found) hold each cell's linked
    features normalised to one common total over those features alone, log1p, standardised -- the authors'
    tutorial's shared block, recomputed here from the raw counts with numpy; the other columns are untouched."""
    model = SCMODAL({m: atlas[m] for m in ("rna", "adt")}, links=atlas["links"],
                    config=SMALL | {"max_value": 1e9, "link_view": "block"}, seed=0)
    module = model.build_module()
    cols, W = model.link_matrices[("adt", "rna")]
    W = np.asarray(W, dtype=np.float64)
    assert (W > 0).sum() > len(cols)  # some protein has two coding genes
    linked = {"adt": np.asarray(cols), "rna": np.flatnonzero((W != 0).any(0))}
    raw = {m: ad.read_zarr(atlas[m]) for m in ("rna", "adt")}
    block = {m: raw[m][:, np.asarray(model.features[m])[c]].X.toarray().astype(np.float64) for m, c in linked.items()}
    rna_link_totals = (raw["rna"][:, model.features["rna"]].X.toarray() @ W.T).sum(1)  # mean of a protein's genes
    target = max(min(block["adt"].sum(1).mean(), rna_link_totals.mean()), 20.0)
    assert module.link_targets[("adt", "rna")] == pytest.approx(target, rel=1e-4)

    def log_block(c):
        total = c.sum(1, keepdims=True)
        return np.log1p(c / np.where(total > 0, total, 1) * target)

    def shared_block(c):
        x = log_block(c)
        sd = x.std(0)
        return np.clip((x - x.mean(0)) / np.where(sd > 0, sd, 1), -10, 10)

    x = {m: torch.cat([b.dense() for b in model.iter_batches(m)]) for m in ("rna", "adt")}
    with torch.no_grad():  # in training, standardised over the minibatch: here every cell
        xa = {m: module.augment(m, v) for m, v in x.items()}
    for m, c in linked.items():
        np.testing.assert_allclose(xa[m][:, c].numpy(), shared_block(block[m]), atol=2e-3)
        rest = np.setdiff1d(np.arange(x[m].shape[1]), c)
        np.testing.assert_array_equal(xa[m][:, rest].numpy(), x[m][:, rest].numpy())
    with torch.no_grad():  # the anchors' view: the table over the block
        view_adt, view_rna = module.linked("adt", "rna", xa["adt"], xa["rna"])
    np.testing.assert_array_equal(view_adt.numpy(), xa["adt"][:, cols].numpy())
    np.testing.assert_allclose(view_rna.numpy(), xa["rna"].numpy() @ W.T, atol=1e-5)
    # in evaluation the block is standardised with the running statistics kept in training
    module.eval()
    with torch.no_grad():
        running = module.augment("adt", x["adt"])[:, cols].numpy()
    mean, var = module.block_mean__adt.numpy(), module.block_var__adt.numpy()
    assert np.abs(mean).max() > 0.1  # moved from its initial zeros
    np.testing.assert_allclose(running, np.clip((log_block(block["adt"]) - mean) / np.sqrt(var + 1e-6), -10, 10), atol=2e-3)
    # link_view="input" (the default): the scaled input columns themselves
    plain = SCMODAL({m: atlas[m] for m in ("rna", "adt")}, links=atlas["links"], config=SMALL, seed=0).build_module()
    with torch.no_grad():
        assert torch.equal(plain.augment("adt", x["adt"]), x["adt"])


def test_resume_gives_the_same_embedding(atlas, tmp_path):
    inputs = {m: atlas[m] for m in ("rna", "adt")}
    links = read_links(atlas["links"])
    full = SCMODAL(inputs, links=links, config=SMALL, seed=3)
    full.fit(16, run_dir=tmp_path / "full", progress=False)
    a = read_embedding(full.embed(progress=False)["adt"])
    part = SCMODAL(inputs, links=links, config=SMALL, seed=3)
    part.fit(8, run_dir=tmp_path / "part", progress=False)
    part.fit(16, run_dir=tmp_path / "part", progress=False, resume=True)
    b = read_embedding(part.embed(progress=False)["adt"])
    np.testing.assert_array_equal(a, b)
    other = SCMODAL(inputs, links=links, config=SMALL, seed=4)
    other.fit(16, run_dir=tmp_path / "other", progress=False)
    assert not np.array_equal(a, read_embedding(other.embed(progress=False)["adt"]))


def _store(tmp_path, name, X, var_names, obs_names):
    src = InMemorySource(name, name, pd.DataFrame(index=obs_names), pd.DataFrame(index=var_names), X, kind="counts")
    return write_zarr(src, tmp_path / f"{name}.zarr")


def test_no_surviving_links_is_refused(atlas, tmp_path):
    rng = np.random.default_rng(0)
    adt = _store(tmp_path, "adt", rng.poisson(3, (50, 5)).astype(np.float32), [f"NOTAPROTEIN{i}" for i in range(5)],
                 [f"c{i}" for i in range(50)])
    with pytest.raises(InputError, match="links"):
        SCMODAL({"rna": atlas["rna"], "adt": adt}, links="auto")


def test_a_table_plus_genes_bed_links_the_modality_the_table_leaves_out(atlas):
    from cellweave.data import open_modality
    from cellweave.models.scmodal import resolve_links

    stores = {m: open_modality(atlas[m]) for m in ("rna", "adt", "atac")}
    table_pairs = {lk.pair for lk in read_links(atlas["links"])}
    assert not any("atac" in p for p in table_pairs)  # the simulator's table links proteins only
    found = resolve_links(stores, atlas["links"], genes_bed=atlas["genes_bed"])
    atac = [lk for p, lk in found.items() if "atac" in p]
    expected = gene_activity(list(stores["atac"].var_names), atlas["genes_bed"], list(stores["rna"].var_names))
    assert len(atac) == 1 and atac[0].pair == expected.pair and len(atac[0].table) == len(expected.table)
    assert {p for p in found if "atac" not in p} == table_pairs  # the table's own pairs are kept as given
    with pytest.raises(InputError, match="'atac' has no surviving feature links"):
        resolve_links(stores, atlas["links"])  # no genes BED: ATAC stays unlinked, and says so


def test_zero_cells_is_refused(atlas, tmp_path):
    path = tmp_path / "empty.h5ad"
    ad.AnnData(X=sp.csr_matrix((0, 5), dtype=np.float32), var=pd.DataFrame(index=[f"CD{i}" for i in range(5)])).write_h5ad(path)
    with pytest.raises(InputError, match="zero cells"):
        SCMODAL({"rna": atlas["rna"], "adt": path}, links="auto")


def test_nan_input_is_refused_before_training(atlas, tmp_path):
    X = np.random.default_rng(0).poisson(3, (40, 4)).astype(np.float32)
    X[7, 2] = np.nan
    path = tmp_path / "nan.h5ad"
    ad.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]), var=pd.DataFrame(index=["CD3", "CD4", "CD8a", "CD19"])).write_h5ad(path)
    with pytest.raises(InputError, match="NaN"):
        SCMODAL({"rna": atlas["rna"], "adt": path}, links="auto")


def test_cli_fit_writes_the_run_and_refuses_settings_the_method_lacks(atlas, tmp_path, capsys):
    from cellweave.cli import main

    out = tmp_path / "run"
    args = ["fit", "--method", "scmodal", "--modality", f"rna={atlas['rna']}", "--modality", f"adt={atlas['adt']}",
            "--links", str(atlas["links"]), "--max-steps", "3", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    assert "links adt -> rna: 40 linked features" in capsys.readouterr().out
    emb = ad.read_zarr(out / "embeddings" / "rna.zarr")
    assert emb.obsm["X_cellweave"].shape == (1500, 20) and (out / "config.toml").exists()
    assert main([*args[:-2], "--batch-key", "batch", "--out", str(tmp_path / "other")]) == 2
    assert "batch_key" in capsys.readouterr().err and not (tmp_path / "other").exists()
