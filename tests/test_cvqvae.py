"""CVQVAE end to end: paired simulated RNA + ATAC and real CITE-seq, run layout, reload, CLI, and input errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.spatial.distance import cdist

from cellweave.data import InMemorySource, open_modality, write_zarr
from cellweave.errors import InputError
from cellweave.models import CVQVAE, METHODS, read_embedding
from cellweave.simulate import simulate_atlas

from .conftest import CITE_SEQ, require_shared

SMALL = {"hidden": [256, 128], "batch_size": 256, "n_components": 30}
N_CELLS = 1200


pytestmark = pytest.mark.usefixtures("one_thread")


def foscttm(a: np.ndarray, b: np.ndarray) -> float:
    """Dense reference: fraction of cells closer than the true partner, averaged over both directions."""
    d = cdist(a, b)
    true = np.diag(d)
    return float(((d < true[:, None]).mean(1).mean() + (d < true[None, :]).mean(0).mean()) / 2)


def unintegrated_foscttm(a: np.ndarray, b: np.ndarray, repeats: int = 8) -> float:
    """FOSCTTM of two per-modality reductions (PCA, LSI) compared as they are: their components' signs are arbitrary
    (on the simulated atlas one sign pattern gave 0.07, others up to 0.74), so the mean over random sign patterns."""
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(repeats, b.shape[1]))
    return float(np.mean([foscttm(a, b * s) for s in signs]))


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvqvae") / "atlas"
    return simulate_atlas(root, N_CELLS, modalities=("rna", "atac"), paired=True, n_genes=400, n_peaks=800, seed=2,
                          progress=False)


@pytest.fixture(scope="module")
def trained(atlas, tmp_path_factory):
    run = tmp_path_factory.mktemp("cvqvae_run") / "run"
    model = CVQVAE({"rna": atlas["rna"], "atac": atlas["atac"]}, config=SMALL, batch_key="batch", seed=0)
    result = model.fit(300, run_dir=run, progress=False)
    return model, result, model.embed(progress=False), run


def test_inputs_are_pca_and_lsi_fitted_beside_the_data(trained, atlas):
    model, _, _, run = trained
    rna, atac = model.reductions["rna"], model.reductions["atac"]
    assert (rna.method, rna.n_components, rna.n_features) == ("pca", 30, 400)
    assert (atac.method, atac.n_components, atac.skipped) == ("lsi", 30, 1)
    assert any((open_modality(atlas["atac"]).stats_dir / "reductions").iterdir())
    assert sorted(p.name for p in (run / "reductions").iterdir()) == ["atac", "rna"]  # the run keeps its own copy
    assert model.module.n_features == {"rna": 30, "atac": 30} and model.module.n_batches == 2


def test_paired_cells_are_aligned(trained, atlas):
    model, result, paths, _ = trained
    z = {m: read_embedding(paths[m]) for m in ("rna", "atac")}
    assert z["rna"].shape == (N_CELLS, 16)
    assert list(ad.read_zarr(paths["rna"]).obs_names) == list(ad.read_zarr(paths["atac"]).obs_names)
    score = foscttm(z["rna"], z["atac"])
    # unintegrated baseline: each modality's own reduction (PCA of RNA, LSI of ATAC), same width
    raw = {m: open_modality(atlas[m]).read_X([(0, N_CELLS)]) for m in ("rna", "atac")}
    base = {m: model.reductions[m].transform(raw[m])[:, :16] for m in ("rna", "atac")}
    baseline = unintegrated_foscttm(base["rna"], base["atac"])
    print(f"FOSCTTM CVQVAE {score:.4f}, per-modality PCA/LSI {baseline:.4f}")
    assert score < 0.05 and baseline > 0.2
    first, last = result.history[0], result.history[-1]
    assert last["cross"] < 0.5 * first["cross"] and last["latent"] < first["latent"]


def test_codes_per_cell_and_no_code_collapses_to_zero(trained):
    model, _, paths, _ = trained
    codes = {m: read_embedding(paths[m], "cvqvae_code")[:, 0] for m in ("rna", "atac")}
    for c in codes.values():
        assert c.shape == (N_CELLS,) and np.array_equal(c, np.round(c)) and c.min() >= 0 and c.max() < 2048
    assert np.unique(codes["rna"]).size > 50
    # the codes are those of the continuous embedding's nearest code vector
    z = torch.from_numpy(read_embedding(paths["rna"]))
    np.testing.assert_array_equal(model.module.codebook.nearest(z).numpy(), codes["rna"])
    # EMA with dead-code restarts: no code vector is (near) zero after training
    norms = model.module.codebook.embedding.norm(dim=1)
    assert float(norms.min()) > 1e-3 and torch.isfinite(model.module.codebook.embedding).all()


def test_reloaded_run_gives_the_same_embedding(trained):
    _, _, paths, run = trained
    again = CVQVAE.from_run(run)
    batch = next(again.iter_batches("atac"))
    np.testing.assert_allclose(again.embed_batch("atac", batch)["X_cellweave"].numpy(),
                               read_embedding(paths["atac"])[: len(batch)], atol=1e-5)


def test_embedding_reads_the_cached_reduced_cells_and_equals_reducing_raw_cells(trained, tmp_path, monkeypatch):
    import cellweave.models.cvqvae as cvqvae_model
    from cellweave.reduce import Reduction

    model, _, paths, _ = trained
    raw_reads = []
    original = Reduction.reduce_batch
    monkeypatch.setattr(Reduction, "reduce_batch", lambda self, b, m=None: raw_reads.append(len(b)) or original(self, b, m))
    from_cache = model.embed(tmp_path / "cached", progress=False)
    assert raw_reads == []  # the cache written for training was read: no raw cell reduced
    monkeypatch.setattr(cvqvae_model, "cached_reduced_store", lambda store, reduction: None)
    from_raw = model.embed(tmp_path / "raw", progress=False)
    assert sum(raw_reads) == 2 * N_CELLS + 2  # every cell of both modalities (and each one-cell width probe)
    for m in ("rna", "atac"):
        np.testing.assert_allclose(read_embedding(from_cache[m]), read_embedding(from_raw[m]), atol=1e-4)
        np.testing.assert_allclose(read_embedding(from_cache[m]), read_embedding(paths[m]), atol=1e-6)


def _store(path, X, ids, var, batch=None):
    obs = pd.DataFrame({"batch": batch} if batch is not None else {}, index=ids)
    src = InMemorySource(str(path), path.stem, obs, pd.DataFrame(index=var), sp.csr_matrix(X), kind="counts")
    return write_zarr(src, path)


def test_unpaired_stores_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.poisson(2, (60, 12)).astype(np.float32)
    a = _store(tmp_path / "rna.zarr", X, [f"c{i}" for i in range(60)], [f"g{j}" for j in range(12)])
    b = _store(tmp_path / "atac.zarr", X, [f"c{i}" for i in range(5, 65)], [f"chr1:{j}00-{j}50" for j in range(1, 13)])
    with pytest.raises(InputError, match="not the same cells"):
        CVQVAE({"rna": a, "atac": b})
    c = _store(tmp_path / "adt.zarr", X, [f"c{i}" for i in range(60)], [f"p{j}" for j in range(12)], ["x"] * 60)
    d = _store(tmp_path / "rna2.zarr", X, [f"c{i}" for i in range(60)], [f"g{j}" for j in range(12)], ["y"] * 60)
    with pytest.raises(InputError, match="batches"):
        CVQVAE({"rna": d, "adt": c}, batch_key="batch")


def test_cli_fit_and_refused_settings(atlas, tmp_path, capsys):
    from cellweave.cli import main

    assert METHODS["cvqvae"] is CVQVAE
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\nhidden = [64]\nbatch_size = 128\nn_codes = 64\nn_components = 10\n')
    out = tmp_path / "run"
    args = ["fit", "--method", "cvqvae", "--modality", f"rna={atlas['rna']}", "--modality", f"atac={atlas['atac']}",
            "--batch-key", "batch", "--config", str(cfg), "--max-steps", "4", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    emb = ad.read_zarr(out / "embeddings" / "atac.zarr")
    assert emb.obsm["X_cellweave"].shape == (N_CELLS, 16) and emb.obsm["cvqvae_code"].max() < 64
    assert (out / "config.toml").exists() and (out / "checkpoint.pt").exists()
    capsys.readouterr()
    assert main([*args[:-2], "--genes-bed", str(atlas["genes_bed"]), "--out", str(tmp_path / "other")]) == 2
    assert "genes_bed" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_cite_seq_rna_and_protein_beat_the_unintegrated_baseline(tmp_path):
    """Real paired CITE-seq (RNA + 14 proteins; the shared file holds 200 cells): PCA of each, CVQVAE trained and
    scored on the same cells (as the paper does), FOSCTTM against per-modality PCA."""
    from cellweave.data.readers.h5 import H5adSource

    path = require_shared(CITE_SEQ)
    rna = write_zarr(H5adSource(path, modality="rna"), tmp_path / "rna.zarr")
    adt = write_zarr(H5adSource(path, modality="adt", obsm_key="protein_expression", names_key="protein_names"),
                     tmp_path / "adt.zarr")
    model = CVQVAE({"rna": rna, "adt": adt}, config=SMALL, seed=0)
    assert model.reductions["adt"].n_components == 14 and model.reductions["rna"].n_components == 30
    model.fit(200, run_dir=tmp_path / "run", progress=False)
    paths = model.embed(progress=False)
    z = {m: read_embedding(paths[m]) for m in ("rna", "adt")}
    n = len(z["rna"])
    integrated = foscttm(z["rna"], z["adt"])
    # unintegrated baseline: PCA per modality (the model's own input reductions), the same width
    raw = {m: open_modality(p).read_X([(0, n)]) for m, p in (("rna", rna), ("adt", adt))}
    base = {m: model.reductions[m].transform(raw[m])[:, :14] for m in ("rna", "adt")}
    baseline = unintegrated_foscttm(base["rna"], base["adt"])
    print(f"CITE-seq FOSCTTM CVQVAE {integrated:.4f}, per-modality PCA {baseline:.4f}")
    assert integrated < 0.5 * baseline
