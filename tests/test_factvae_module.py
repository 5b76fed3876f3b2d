"""FactVAE: losses against dense references, training through the Trainer on simulated paired counts,
gene-peak link recovery, denoised ATAC, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import kstest, nbinom
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import cosine_similarity

from cellweave import InputError
from cellweave.data import CellBatch, InMemorySource, PairedStream, open_modality, write_zarr
from cellweave.losses import regulatory_prior_loss, similarity_structure_loss
from cellweave.models.factvae_links import LatentMoments, latent_map, link_scores
from cellweave.models.factvae_module import FactVAEModule
from cellweave.train import StepContext, Trainer

N_CELLS, N_GENES, N_PEAKS, N_PROGRAMS = 800, 120, 240, 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks: one intra-op thread is faster, and avoids oversubscribing a loaded CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- losses against dense numpy


def test_similarity_structure_loss_matches_numpy_and_teaches_only_the_student():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(7, 4, generator=gen, requires_grad=True)
    teacher = torch.randn(7, 6, generator=gen, requires_grad=True)
    loss = similarity_structure_loss(student, teacher)
    s, t = cosine_similarity(student.detach().numpy()), cosine_similarity(teacher.detach().numpy())
    expected = np.mean(1 - np.diag(cosine_similarity(s, t)))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None
    assert float(similarity_structure_loss(teacher.detach() @ torch.linalg.qr(torch.randn(6, 6, generator=gen)).Q,
                                           teacher.detach())) == pytest.approx(0.0, abs=1e-5)  # rotations are free


def test_regulatory_prior_loss_matches_numpy():
    gen = torch.Generator().manual_seed(1)
    genes, peaks = torch.randn(5, 3, generator=gen), torch.randn(8, 3, generator=gen)
    pairs = torch.tensor([[0, 1], [0, 7], [4, 2], [3, 3]])
    cos = cosine_similarity(genes.numpy(), peaks.numpy())[pairs[:, 0], pairs[:, 1]]
    assert float(regulatory_prior_loss(genes, peaks, pairs)) == pytest.approx(np.mean((1 - cos) ** 2), rel=1e-5)
    assert float(regulatory_prior_loss(genes, peaks, torch.zeros(0, 2, dtype=torch.long))) == 0.0


def counts_batch(modality: str, X: np.ndarray) -> CellBatch:
    n = X.shape[0]
    csr = sp.csr_matrix(X)
    return CellBatch(modality=modality, obs_names=np.array([f"c{i}" for i in range(n)]), rows=torch.arange(n),
                     values=torch.from_numpy(csr.data.astype(np.float32)),
                     crow_indices=torch.from_numpy(csr.indptr.astype(np.int64)),
                     col_indices=torch.from_numpy(csr.indices.astype(np.int64)), n_vars=X.shape[1],
                     library_size=torch.from_numpy(X.sum(1).astype(np.float32)))


def cpu_ctx(module) -> StepContext:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return StepContext(torch.device("cpu"), "32", module.configure_optimizers(), scaler, None)


def test_zinb_reconstruction_matches_scipy():
    rng = np.random.default_rng(0)
    Xr, Xa = rng.poisson(2.0, (6, 9)).astype(np.float32), rng.poisson(0.3, (6, 11)).astype(np.float32)
    torch.manual_seed(0)
    module = FactVAEModule(9, 11, np.array([[0, 0], [3, 5]]), n_latent=4, rna_hidden=(8,), atac_hidden=(8,)).eval()
    batch = {"rna": counts_batch("rna", Xr), "atac": counts_batch("atac", Xa)}
    with torch.no_grad():
        terms = module.vae_losses(batch, cpu_ctx(module))
        for m, X in (("rna", Xr), ("atac", Xa)):
            z = module.embed(m, batch)["X_cellweave"]
            dec = module.decoders[m]
            logits = (z @ dec.feature.T).numpy().astype(np.float64)
            mu = X.sum(1, keepdims=True) * np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            theta = np.exp((z @ dec.dispersion.T).numpy().astype(np.float64))
            pi = 1 / (1 + np.exp(-(z @ dec.dropout.T).numpy().astype(np.float64)))
            p_nb = nbinom.pmf(X, theta, theta / (theta + mu))
            ll = np.log(np.where(X == 0, pi + (1 - pi) * p_nb, (1 - pi) * p_nb))
            assert float(terms[f"nll_{m}"]) == pytest.approx(-ll.sum(1).mean(), rel=1e-4)
            mu_log_var = module.encoders[m](module._encoder_input(m, batch, torch.device("cpu")))
            mean, log_var = (t.numpy().astype(np.float64) for t in mu_log_var)
            kl = 0.5 * (np.exp(log_var) + mean**2 - log_var - 1).sum(1).mean()
            assert float(terms[f"kl_{m}"]) == pytest.approx(kl, rel=1e-4)


# ---------------------------------------------------------------- simulated multiome


def simulate_multiome(seed: int = 0) -> dict:
    """Cells mix 6 gene-regulatory programs; a program raises the expression of its genes and the accessibility
    of its peaks. True links: gene-peak pairs of the same program. Prior: 3 of them per program gene.
    Sparse counts (about 65% non-zero RNA, 8% non-zero ATAC)."""
    rng = np.random.default_rng(seed)
    types = rng.integers(6, size=N_CELLS)
    activity = rng.gamma(0.6, 1.0, size=(6, N_PROGRAMS))[types] * rng.lognormal(0, 0.3, size=(N_CELLS, N_PROGRAMS))

    def program_rates(n_features: int) -> tuple[np.ndarray, np.ndarray]:
        program = np.where(rng.random(n_features) < 0.7, rng.integers(N_PROGRAMS, size=n_features), -1)
        member = np.zeros((n_features, N_PROGRAMS))
        member[program >= 0, program[program >= 0]] = 1.0
        r = rng.lognormal(0, 0.5, n_features) * (0.3 + (activity @ member.T) * rng.lognormal(1.0, 0.3, n_features))
        return program, r / r.sum(1, keepdims=True)

    gene_program, rna_rate = program_rates(N_GENES)
    peak_program, atac_rate = program_rates(N_PEAKS)
    rna_mean = rng.lognormal(np.log(400), 0.3, (N_CELLS, 1)) * rna_rate
    atac_lib = rng.lognormal(np.log(25), 0.4, (N_CELLS, 1))
    rna = rng.poisson(rng.gamma(5.0, rna_mean / 5.0)).astype(np.float32)
    atac = rng.poisson(atac_lib * atac_rate).astype(np.float32)
    truth = (gene_program[:, None] == peak_program[None, :]) & (gene_program[:, None] >= 0)
    prior = np.array([(g, p) for g in np.flatnonzero(gene_program >= 0)
                      for p in rng.choice(np.flatnonzero(peak_program == gene_program[g]), 3, replace=False)])
    return {"rna": rna, "atac": atac, "atac_rate": atac_rate, "truth": truth, "prior": prior}


@pytest.fixture(scope="module")
def sim():
    return simulate_multiome()


@pytest.fixture(scope="module")
def stores(sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("factvae")
    obs = pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)])
    out = []
    for m in ("rna", "atac"):
        var = pd.DataFrame(index=[f"{m}{j}" for j in range(sim[m].shape[1])])
        out.append(open_modality(write_zarr(InMemorySource(f"<{m}>", m, obs, var, sp.csr_matrix(sim[m]), kind="counts"),
                                            root / f"{m}.zarr")))
    return out


def stream(stores, seed: int = 0) -> PairedStream:
    return PairedStream(stores, batch_size=128, seed=seed, chunk_size=64, block_size=512)


def make_module(sim, seed: int = 0, **kw) -> FactVAEModule:
    torch.manual_seed(seed)
    return FactVAEModule(N_GENES, N_PEAKS, sim["prior"], n_latent=16, rna_hidden=(128,), atac_hidden=(64,), **kw)


def full_batch(sim) -> dict[str, CellBatch]:
    return {m: counts_batch(m, sim[m]) for m in ("rna", "atac")}


def held_out_candidates(sim) -> tuple[np.ndarray, np.ndarray]:
    """Every gene-peak pair except the prior ones, and whether it is a true link."""
    g, p = np.meshgrid(np.arange(N_GENES), np.arange(N_PEAKS), indexing="ij")
    cand = np.stack([g.ravel(), p.ravel()], 1)
    in_prior = np.zeros((N_GENES, N_PEAKS), dtype=bool)
    in_prior[sim["prior"][:, 0], sim["prior"][:, 1]] = True
    cand = cand[~in_prior[cand[:, 0], cand[:, 1]]]
    return cand, sim["truth"][cand[:, 0], cand[:, 1]]


@pytest.fixture(scope="module")
def trained(sim, stores):
    module = make_module(sim)
    untrained = module.feature_embeddings()
    trainer = Trainer(max_steps=300, device="cpu", precision="32", seed=0, log_every=50, progress=False)
    res = trainer.fit(module, stream(stores))
    return module, res, untrained


def test_links_recover_held_out_true_pairs(sim, trained):
    module, _, untrained = trained
    cand, truth = held_out_candidates(sim)
    links = link_scores(*module.feature_embeddings(), cand, n_background=20_000, seed=0)
    auroc = roc_auc_score(truth, links["score"])
    assert auroc > 0.7, auroc
    assert abs(roc_auc_score(truth, link_scores(*untrained, cand, n_background=1000)["score"]) - 0.5) < 0.1
    # small p-values are enriched in true links
    p = links["pvalue"].to_numpy()
    assert (p[truth] < 0.05).mean() > 4 * (p[~truth] < 0.05).mean()


def test_prior_loss_decreases_and_prior_pairs_align(sim, trained):
    module, res, _ = trained
    prior = [r["prior"] for r in res.history]
    assert prior[-1] < 0.3 * prior[0]
    assert link_scores(*module.feature_embeddings(), sim["prior"], n_background=1000)["score"].mean() > 0.6
    for key in ("nll_rna", "nll_atac"):
        assert res.history[-1][key] < res.history[0][key]


def test_embeddings_and_denoised_atac(sim, trained):
    module, _, _ = trained
    batch = full_batch(sim)
    z = module.embed_paired(batch)["X_cellweave"]
    assert z.shape == (N_CELLS, 32)
    torch.testing.assert_close(z[:, 16:], module.embed("atac", batch["atac"])["X_cellweave"])
    denoised = module.denoise_atac(batch).numpy()
    np.testing.assert_allclose(denoised.sum(1), sim["atac"].sum(1), rtol=1e-4)
    # the augmented profiles are closer to the true accessibility than the sparse counts are
    def mean_corr(a: np.ndarray) -> float:
        return float(np.mean([np.corrcoef(a[i], sim["atac_rate"][i])[0, 1] for i in range(N_CELLS)]))
    assert mean_corr(denoised) > mean_corr(sim["atac"]) + 0.15
    scaled = module.denoise_atac(batch, library_size=1e4).numpy()
    np.testing.assert_allclose(scaled.sum(1), 1e4, rtol=1e-4)


def test_factvae_is_deterministic_on_cpu(sim, stores):
    def run():
        module = make_module(sim, seed=4)
        val = PairedStream(stores, batch_size=300, shuffle=False)
        res = Trainer(max_steps=10, device="cpu", precision="32", seed=9, val_every=5, progress=False).fit(
            module, stream(stores, seed=2), val)
        return module.embed_paired(full_batch(sim))["X_cellweave"], module.feature_embeddings(), res.best_val_loss

    (z1, (g1, p1), v1), (z2, (g2, p2), v2) = run(), run()
    assert torch.equal(z1, z2) and np.array_equal(g1, g2) and np.array_equal(p1, p2)
    assert v1 == v2 and np.isfinite(v1)


def test_encoder_inputs_read_another_entry(sim):
    module = make_module(sim, encoder_inputs={"rna": ("rna_pca", 10)})
    rng = np.random.default_rng(0)
    pca = rng.normal(size=(64, 10)).astype(np.float32)
    batch = {"rna": counts_batch("rna", sim["rna"][:64]), "atac": counts_batch("atac", sim["atac"][:64]),
             "rna_pca": CellBatch("rna_pca", np.arange(64).astype(str), torch.arange(64), torch.from_numpy(pca), None, None,
                                  10, torch.zeros(64))}
    terms = module.training_step(batch, cpu_ctx(module))
    assert all(torch.isfinite(v) for v in terms.values())
    assert module.embed("rna", batch["rna_pca"])["X_cellweave"].shape == (64, 16)
    with pytest.raises(InputError, match="rna_pca"):
        module.embed("rna", {"rna": batch["rna"]})


def test_link_scores_reference_and_null():
    rng = np.random.default_rng(3)
    genes, peaks = rng.normal(size=(30, 5)), rng.normal(size=(50, 5))
    pairs = np.stack([rng.integers(30, size=2000), rng.integers(50, size=2000)], 1)
    df = link_scores(genes, peaks, pairs, n_background=5000, seed=1, gene_names=[f"g{i}" for i in range(30)])
    np.testing.assert_allclose(df["score"], cosine_similarity(genes, peaks)[pairs[:, 0], pairs[:, 1]], atol=1e-12)
    assert df["gene"].iloc[0] == f"g{pairs[0, 0]}" and df["peak"].iloc[0] == pairs[0, 1]
    # p-values fall with the score, lie in [1 / (n + 1), 1], and are uniform when nothing is linked
    order = np.argsort(df["score"].to_numpy())
    assert np.all(np.diff(df["pvalue"].to_numpy()[order]) <= 0)
    assert df["pvalue"].min() >= 1 / 5001 and df["pvalue"].max() <= 1
    assert kstest(df["pvalue"], "uniform").pvalue > 0.01
    assert np.all(df["qvalue"] >= df["pvalue"])
    with pytest.raises(InputError, match="out of range"):
        link_scores(genes, peaks, np.array([[30, 0]]))
    with pytest.raises(InputError, match="differ in width"):
        link_scores(genes, peaks[:, :4], pairs)


def test_bad_inputs_raise(sim):
    with pytest.raises(InputError, match="out of range"):
        FactVAEModule(N_GENES, N_PEAKS, np.array([[0, N_PEAKS]]))
    with pytest.raises(InputError, match="shape"):
        FactVAEModule(N_GENES, N_PEAKS, np.zeros((3, 3), dtype=int))
    module = make_module(sim)
    bad = {"rna": counts_batch("rna", sim["rna"][:5, :10]), "atac": counts_batch("atac", sim["atac"][:5])}
    with pytest.raises(InputError, match="columns"):
        module.training_step(bad, cpu_ctx(module))


def test_latent_map_equals_least_squares_and_aligns_decoders():
    """The streamed RNA -> ATAC latent map is sklearn's least-squares fit; with it, a peak whose logit follows a
    gene's has the gene's direction even when the ATAC latent space is a rotated, rescaled copy of the RNA one."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    z_rna = rng.normal(size=(3000, 6)) * np.linspace(0.5, 2.0, 6) + 1.0
    mix = np.linalg.qr(rng.normal(size=(6, 6)))[0] * rng.uniform(0.5, 2.0, 6)
    z_atac = z_rna @ mix + 0.05 * rng.normal(size=(3000, 6)) - 2.0
    moments = LatentMoments(6)
    for start in range(0, 3000, 700):  # streamed in minibatches
        moments.add(z_rna[start:start + 700], z_atac[start:start + 700])
    reference = LinearRegression().fit(z_rna, z_atac).coef_.T
    np.testing.assert_allclose(latent_map(moments, ridge=0.0), reference, atol=1e-9)
    S = latent_map(moments)  # the default ridge barely moves a well-posed fit
    np.testing.assert_allclose(S, reference, atol=1e-4)
    gene = rng.normal(size=6)
    peak = np.linalg.solve(mix, gene)  # z_atac . peak = z_rna . gene (up to noise): a true link
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    assert cos(gene, S @ peak) > 0.999 and cos(gene, peak) < 0.95
    with pytest.raises(InputError, match="paired cells"):
        latent_map(LatentMoments(6))
