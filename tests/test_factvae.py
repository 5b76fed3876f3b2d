"""FactVAE end to end on simulated paired RNA + ATAC: gene-peak pairs, link inference against the simulator's truth
and a Spearman baseline, embeddings, augmented ATAC, run reload, CLI, and input errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from cellweave.data import InMemorySource, open_modality, write_zarr
from cellweave.errors import InputError
from cellweave.models import METHODS, FactVAE, read_embedding
from cellweave.models.factvae_pairs import window_pairs
from cellweave.simulate import AtlasSimulator, SimulationConfig, simulate_atlas

N_CELLS, N_GENES, N_PEAKS = 800, 200, 600
FAST_STEPS, SLOW_STEPS = 300, 3000
SIM = {"n_genes": N_GENES, "n_peaks": N_PEAKS, "seed": 3, "atac_library": 300.0}  # ATAC sparser than the default
SMALL = {"n_top_genes": 0, "rna_hidden": [128], "atac_hidden": [64], "n_latent": 16, "batch_size": 200,
         "n_background": 5000}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("factvae") / "atlas"
    return simulate_atlas(root, N_CELLS, modalities=("rna", "atac"), paired=True, progress=False, **SIM)


@pytest.fixture(scope="module")
def trained(atlas, tmp_path_factory):
    run = tmp_path_factory.mktemp("factvae_run") / "run"
    model = FactVAE({"rna": atlas["rna"], "atac": atlas["atac"]}, links=atlas["gene_peak_links"], config=SMALL, seed=0)
    result = model.fit(FAST_STEPS, run_dir=run, progress=False)
    return model, result, run


# ---------------------------------------------------------------- gene-peak pairs


def test_pairs_from_the_table_keep_its_prior_and_never_read_the_truth(trained, atlas):
    model, _, _ = trained
    table = pd.read_csv(atlas["gene_peak_links"], sep="\t")
    assert len(model.pairs) == len(table) and list(model.pairs.columns) == ["gene", "peak", "prior"]
    assert int(model.pairs["prior"].sum()) == int(table["prior"].sum()) == len(model.prior_index)
    genes, peaks = model.features["rna"], model.features["atac"]
    prior = table[table["prior"]]
    expected = np.stack([pd.Index(genes).get_indexer(prior["gene"]), pd.Index(peaks).get_indexer(prior["peak"])], 1)
    np.testing.assert_array_equal(np.sort(model.prior_index, 0), np.sort(expected, 0))
    assert model.module.pairs.shape == (len(prior), 2)


def test_window_pairs_agree_with_the_simulators_windows(atlas):
    rna, atac = open_modality(atlas["rna"]), open_modality(atlas["atac"])
    table = pd.read_csv(atlas["gene_peak_links"], sep="\t")
    pairs = window_pairs(list(rna.var_names), list(atac.var_names), atlas["genes_bed"], upstream=2000, distance=150_000)
    merged = table.merge(pairs, on=["gene", "peak"], how="left", suffixes=("_sim", ""))
    # every simulated peak lies within 100 kb of its gene's TSS: all are candidates, with the simulator's prior flag
    assert merged["prior"].notna().all()
    assert (merged["prior"].astype(bool) == merged["prior_sim"]).all()
    near = window_pairs(list(rna.var_names), list(atac.var_names), atlas["genes_bed"], upstream=2000, distance=5_000)
    assert len(near) < len(pairs) and near["prior"].sum() == pairs["prior"].sum()  # prior pairs are always candidates


# ---------------------------------------------------------------- link inference against the truth


def spearman_baseline(atlas: dict, table: pd.DataFrame) -> np.ndarray:
    """Spearman correlation across cells of each pair's gene (log-normalised) and peak (library-normalised)."""
    rna, atac = open_modality(atlas["rna"]), open_modality(atlas["atac"])
    R, A = (s.read_X([(0, s.n_obs)]).toarray().astype(np.float64) for s in (rna, atac))
    R = np.log1p(R / R.sum(1, keepdims=True) * 1e4)
    A = A / np.maximum(A.sum(1, keepdims=True), 1)

    def ranks(X: np.ndarray) -> np.ndarray:
        r = rankdata(X, axis=0)
        return (r - r.mean(0)) / np.maximum(r.std(0), 1e-12)

    g = pd.Index(rna.var_names).get_indexer(table["gene"])
    p = pd.Index(atac.var_names).get_indexer(table["peak"])
    return (ranks(R)[:, g] * ranks(A)[:, p]).mean(0)


def held_out_aurocs(model: FactVAE, atlas: dict) -> dict[str, float]:
    """AUROC of FactVAE's scores (shared and decoder coordinates) and of the Spearman baseline against the simulator's
    true links, over the candidate pairs that were not given as prior (the prior pairs are trained to cosine 1, so
    only held-out pairs test inference)."""
    truth = pd.read_csv(atlas["gene_peak_links"], sep="\t")[["gene", "peak", "true"]]
    out = {}
    for coordinates in ("shared", "decoder"):
        scores = model.link_scores(n_background=2000, coordinates=coordinates).merge(truth, on=["gene", "peak"])
        held = scores[~scores["prior"]]
        out[coordinates] = roc_auc_score(held["true"], held["score"])
    out["spearman"] = roc_auc_score(held["true"], spearman_baseline(atlas, held))
    return out


def test_links_start_to_recover_held_out_true_pairs(trained, atlas):
    """A short run already ranks held-out true links above chance (the slow test trains to AUROC > 0.7)."""
    model, _, _ = trained
    auroc = held_out_aurocs(model, atlas)
    print(f"held-out AUROC after {FAST_STEPS} steps: {auroc}")
    assert auroc["shared"] > 0.57


REGIMES = {"default": {}, "harder": {"chromatin_share": 0.5, "coaccess": 0.5}}


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory) -> dict[str, tuple[float, float]]:
    """Held-out AUROCs (FactVAE, Spearman) after a longer training, on the simulator's default links and on harder
    ones (expression only half regulatory, chromatin domains shared by a locus' linked and unlinked peaks)."""
    out = {}
    for name, settings in REGIMES.items():
        atlas = simulate_atlas(tmp_path_factory.mktemp(name) / "atlas", N_CELLS, modalities=("rna", "atac"), paired=True,
                               progress=False, **SIM, **settings)
        model = FactVAE({"rna": atlas["rna"], "atac": atlas["atac"]}, links=atlas["gene_peak_links"], config=SMALL, seed=0)
        model.fit(SLOW_STEPS, progress=False, convergence=None)
        out[name] = held_out_aurocs(model, atlas)
        print(f"{name}: held-out AUROC after {SLOW_STEPS} steps: {out[name]}")
    return out


@pytest.mark.slow
def test_links_recover_true_pairs_after_longer_training(long_runs):
    assert long_runs["default"]["shared"] > 0.7
    assert long_runs["harder"]["shared"] > 0.6


@pytest.mark.slow
@pytest.mark.parametrize("regime", list(REGIMES))
def test_links_beat_a_spearman_baseline(long_runs, regime):
    """In shared latent coordinates FactVAE beats Spearman; the paper's raw decoder cosines did not (measured 0.81 vs
    0.84 default, 0.67 vs 0.78 harder), so the mapping is what carries the result."""
    auroc = long_runs[regime]
    assert auroc["shared"] > auroc["spearman"]
    assert auroc["shared"] > auroc["decoder"]


# ---------------------------------------------------------------- the simulator's regulatory truth


def test_simulator_regulation_settings():
    cfg = {"n_cells": 10, "modalities": ("rna", "atac"), "n_genes": 300, "n_peaks": 900, "seed": 5}
    plain = AtlasSimulator(SimulationConfig(**cfg))
    same = AtlasSimulator(SimulationConfig(**cfg, chromatin_share=1.0, coaccess=0.0))
    np.testing.assert_array_equal(plain.gene_loadings, same.gene_loadings)  # the defaults leave the atlas as it was
    np.testing.assert_array_equal(plain.peak_loadings, same.peak_loadings)
    mixed = AtlasSimulator(SimulationConfig(**cfg, chromatin_share=0.25, coaccess=0.8))
    # expression = sqrt(share) * regulatory program + an expression-only program of the same norm
    np.testing.assert_array_equal(mixed.gene_regulation, plain.gene_loadings)
    reg, expr = mixed.gene_regulation, mixed.gene_loadings
    active = np.linalg.norm(reg, axis=0) > 0
    cos = (reg * expr).sum(0)[active] / (np.linalg.norm(reg, axis=0) * np.linalg.norm(expr, axis=0))[active]
    assert abs(np.median(cos) - 0.5) < 0.15
    # linked peaks follow the regulatory program, not the expression; a locus' peaks share a domain program
    gp = mixed.gene_peak
    g = mixed.gene_names.get_indexer(gp["gene"])
    linked = gp["true"].to_numpy()
    extra = mixed.peak_loadings - plain.peak_loadings
    assert np.abs(extra).sum() > 0
    for locus in np.unique(g)[:50]:  # the same domain program for every peak of a locus
        members = extra[:, g == locus]
        np.testing.assert_allclose(members, np.repeat(members[:, :1], members.shape[1], 1), atol=1e-6)
    follow = [np.corrcoef(plain.peak_loadings[:, p], reg[:, gi])[0, 1] for p, gi in zip(np.flatnonzero(linked), g[linked])
              if reg[:, gi].std() > 0]
    assert np.nanmedian(follow) > 0.9


# ---------------------------------------------------------------- outputs


def true_accessibility(cfg: dict) -> np.ndarray:
    """The simulator's expected share of each cell's ATAC counts per peak (before sampling)."""
    sim = AtlasSimulator(SimulationConfig(n_cells=N_CELLS, modalities=("rna", "atac"), paired=True, **cfg))
    batch = sim.obs_all["batch"].cat.codes.to_numpy()
    logits = sim.peak_base + sim.states(0) @ sim.peak_loadings + sim.batch_shift["atac"][batch]
    logits = sim.config.logit_cap * np.tanh(logits / sim.config.logit_cap)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_embeddings_joint_embedding_and_augmented_atac(trained, atlas):
    model, result, run = trained
    assert result.history[-1]["prior"] < result.history[0]["prior"]
    paths = model.embed(progress=False)
    z = {m: read_embedding(paths[m]) for m in ("rna", "atac")}
    joint = ad.read_zarr(run / "joint.zarr")
    assert joint.obsm["X_cellweave"].shape == (N_CELLS, 32)
    assert list(joint.obs_names) == list(ad.read_zarr(paths["rna"]).obs_names)
    np.testing.assert_allclose(joint.obsm["X_cellweave"], np.hstack([z["rna"], z["atac"]]), atol=1e-5)

    out = model.denoise_atac()
    store = open_modality(out)
    assert out == run / "denoised" / "atac.zarr" and store.shape == (N_CELLS, N_PEAKS) and store.kind == "normalized"
    denoised = store.read_X([(0, N_CELLS)])
    counts = open_modality(atlas["atac"]).read_X([(0, N_CELLS)]).toarray()
    np.testing.assert_allclose(denoised.sum(1), counts.sum(1), rtol=1e-4)  # each cell keeps its library size
    # the augmented profiles are closer to the true accessibility than the sparse counts are
    truth = true_accessibility(SIM)

    def mean_corr(a: np.ndarray) -> float:
        return float(np.mean([np.corrcoef(a[i], truth[i])[0, 1] for i in range(N_CELLS)]))

    print(f"augmented ATAC vs truth {mean_corr(denoised):.3f}, counts {mean_corr(counts):.3f}")
    assert mean_corr(denoised) > mean_corr(counts) + 0.05
    few = model.denoise_atac(run / "few.zarr", peaks=model.features["atac"][:5], library_size=1e4)
    assert open_modality(few).shape == (N_CELLS, 5)


def test_reloaded_run_and_cli_links(trained, tmp_path):
    from cellweave.cli import main

    model, _, run = trained
    expected = model.link_scores(seed=1)
    again = FactVAE.from_run(run)
    pd.testing.assert_frame_equal(again.link_scores(seed=1), expected)
    out = tmp_path / "links.tsv"
    assert main(["links", "--run", str(run), "--out", str(out), "--n-background", "5000"]) == 0
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == ["gene", "peak", "score", "pvalue", "qvalue", "prior"] and len(table) == len(model.pairs)
    assert (np.diff(table["score"]) <= 0).all() and table["pvalue"].between(1 / 5001 - 1e-12, 1).all()
    assert (table["qvalue"] >= table["pvalue"] - 1e-12).all()
    assert main(["links", "--run", str(run), "--out", str(out)]) == 2  # exists: refused without --overwrite


def test_cli_fit_with_genome_windows_and_refused_settings(atlas, tmp_path, capsys):
    from cellweave.cli import main

    assert METHODS["factvae"] is FactVAE
    cfg = tmp_path / "run.toml"
    cfg.write_text("[model]\nn_top_genes = 0\nrna_hidden = [32]\natac_hidden = [32]\nn_latent = 8\nbatch_size = 100\n")
    out = tmp_path / "run"
    args = ["fit", "--method", "factvae", "--modality", f"rna={atlas['rna']}", "--modality", f"atac={atlas['atac']}",
            "--genes-bed", str(atlas["genes_bed"]), "--config", str(cfg), "--max-steps", "3", "--device", "cpu",
            "--out", str(out)]
    assert main(args) == 0
    assert (out / "embeddings" / "rna.zarr").is_dir() and (out / "joint.zarr").is_dir()
    pairs = pd.read_csv(out / "gene_peak_pairs.tsv", sep="\t")
    assert pairs["prior"].sum() == pd.read_csv(atlas["gene_peak_links"], sep="\t")["prior"].sum()
    assert len(pairs) > pairs["prior"].sum()  # distal candidates within 150 kb too
    capsys.readouterr()
    assert main([*args[:-2], "--batch-key", "batch", "--out", str(tmp_path / "other")]) == 2
    assert "batch_key" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_encoders_can_read_pca_and_lsi_applied_in_the_stream(atlas, tmp_path):
    model = FactVAE({"rna": atlas["rna"], "atac": atlas["atac"]}, links=atlas["gene_peak_links"],
                    config=SMALL | {"encoder_input": "reduced", "n_components": 12}, seed=0)
    assert {m: (r.method, r.n_components) for m, r in model.reductions.items()} == {"rna": ("pca", 12), "atac": ("lsi", 12)}
    assert model.reductions["atac"].features == model.features["atac"]
    step = next(iter(model.train_stream()))
    assert set(step) == {"rna", "atac", "rna_pca", "atac_lsi"} and step["atac"].n_vars == N_PEAKS  # counts stay raw
    model.fit(3, run_dir=tmp_path / "run", progress=False)
    assert model.module.encoders["atac"].net[0].in_features == 12
    z = read_embedding(model.embed(progress=False)["atac"])
    assert z.shape == (N_CELLS, 16) and np.isfinite(z).all()
    again = FactVAE.from_run(tmp_path / "run")
    np.testing.assert_array_equal(again.reductions["rna"].components, model.reductions["rna"].components)


# ---------------------------------------------------------------- input errors


def _store(path, X, ids, var):
    src = InMemorySource(str(path), path.stem, pd.DataFrame(index=ids), pd.DataFrame(index=var), sp.csr_matrix(X), kind="counts")
    return write_zarr(src, path)


def test_bad_inputs_are_refused(atlas, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.poisson(1, (50, 10)).astype(np.float32)
    peaks = [f"chr1:{1000 * j}-{1000 * j + 500}" for j in range(1, 11)]
    rna = _store(tmp_path / "rna.zarr", X, [f"c{i}" for i in range(50)], [f"g{j}" for j in range(10)])
    other = _store(tmp_path / "atac.zarr", X, [f"d{i}" for i in range(50)], peaks)
    with pytest.raises(InputError, match="not the same cells"):
        FactVAE({"rna": rna, "atac": other}, links=atlas["gene_peak_links"])
    inputs = {"rna": atlas["rna"], "atac": atlas["atac"]}
    with pytest.raises(InputError, match="neither a table nor a genes BED"):
        FactVAE(inputs, links="auto", config=SMALL)
    with pytest.raises(InputError, match="one RNA and one ATAC"):
        FactVAE({"rna": atlas["rna"], "gex": atlas["rna"]}, links=atlas["gene_peak_links"])
    bad = tmp_path / "bad.tsv"
    bad.write_text("gene\tpeak\tprior\nA\tchr1:1-2\tmaybe\n")
    with pytest.raises(InputError, match="not true or false"):
        FactVAE(inputs, links=bad, config=SMALL)
    none = tmp_path / "none.tsv"
    none.write_text("gene\tpeak\nNOTAGENE\tchr1:1-2\n")
    with pytest.raises(InputError, match="no prior gene-peak pair"):
        FactVAE(inputs, links=none, config=SMALL)
