"""EMA codebook (hand computation, restarts, no collapse) and CVQVAE on simulated paired data through the Trainer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA

from cellweave import InputError
from cellweave.data import CellBatch, InMemorySource, PairedStream, open_modality, write_zarr
from cellweave.models.cvqvae_module import CVQVAEModule
from cellweave.nn import EMACodebook
from cellweave.train import Trainer

# ---------------------------------------------------------------- codebook


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks: one intra-op thread is faster, and avoids oversubscribing a loaded CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def test_ema_update_matches_hand_computation():
    decay, eps = 0.9, 1e-5
    cb = EMACodebook(n_codes=3, dim=2, decay=decay, eps=eps, commitment=0.25, restart=False)
    E0 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    N0 = np.array([1.0, 0.5, 0.2])
    M0 = N0[:, None] * E0 + np.array([[0.1, -0.1], [0.0, 0.05], [0.02, 0.0]])
    cb.embedding.copy_(torch.tensor(E0, dtype=torch.float32))
    cb.cluster_size.copy_(torch.tensor(N0, dtype=torch.float32))
    cb.embed_sum.copy_(torch.tensor(M0, dtype=torch.float32))
    Z = np.array([[0.1, 0.1], [0.9, 0.2], [1.2, -0.1], [0.1, 0.8]])
    z = torch.tensor(Z, dtype=torch.float32, requires_grad=True)
    out = cb(z)

    # by hand: nearest codes, then N <- g N + (1-g) n, M <- g M + (1-g) sum, e = M / Laplace-smoothed N
    codes = np.array([0, 1, 1, 2])
    assert out.codes.tolist() == codes.tolist()
    n = np.array([1.0, 2.0, 1.0])
    s = np.array([Z[0], Z[1] + Z[2], Z[3]])
    N = decay * N0 + (1 - decay) * n
    M = decay * M0 + (1 - decay) * s
    smoothed = (N + eps) / (N.sum() + 3 * eps) * N.sum()
    np.testing.assert_allclose(cb.cluster_size.numpy(), N, rtol=1e-6)
    np.testing.assert_allclose(cb.embed_sum.numpy(), M, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cb.embedding.numpy(), M / smoothed[:, None], rtol=1e-5, atol=1e-7)
    # the lookup used the codes from before the update; the commitment and perplexity by hand too
    np.testing.assert_allclose(out.quantized.detach().numpy(), E0[codes], atol=1e-7)
    assert float(out.commitment.detach()) == pytest.approx(0.25 * np.mean((Z - E0[codes]) ** 2), rel=1e-5)
    p = np.array([0.25, 0.5, 0.25])
    assert float(out.perplexity) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    # straight-through: the gradient reaches z unchanged (plus the commitment term's own gradient)
    g = torch.randn(4, 2)
    (out.quantized * g).sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), g.numpy(), atol=1e-7)


def test_eval_mode_does_not_update():
    cb = EMACodebook(n_codes=4, dim=3).eval()
    before = {k: v.clone() for k, v in cb.state_dict().items()}
    cb(torch.randn(10, 3))
    assert all(torch.equal(before[k], v) for k, v in cb.state_dict().items())


def test_restart_moves_dead_codes_onto_batch_vectors():
    torch.manual_seed(0)
    z = torch.tensor([[5.0, 5.0], [5.1, 4.9], [-5.0, 5.0], [-4.9, 5.2], [0.0, -6.0], [0.2, -6.1]])
    start = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -6.0]] + [[100.0 + i, 100.0] for i in range(5)])
    cb = EMACodebook(n_codes=8, dim=2, decay=0.9, restart=True)
    cb.embedding.copy_(start)
    out = cb(z)
    assert sorted(set(out.codes.tolist())) == [0, 1, 2]
    dead = [3, 4, 5, 6, 7]
    # every unused code now sits on one of this batch's vectors (distinct ones: 5 dead codes, 6 vectors) ...
    for i in dead:
        assert torch.isclose(cb.embedding[i], z, atol=0).all(1).any()
    assert len({tuple(cb.embedding[i].tolist()) for i in dead}) == len(dead)
    # ... with fresh statistics, while the used codes follow the EMA
    assert torch.all(cb.cluster_size[dead] == 0) and torch.all(cb.embed_sum[dead] == 0)
    assert torch.allclose(cb.cluster_size[:3], torch.full((3,), 0.2))
    np.testing.assert_allclose(cb.embedding[0].numpy(), z[:2].mean(0).numpy(), rtol=1e-3)
    # without restarts the same codes collapse to the origin (the reference implementation's behaviour)
    ref = EMACodebook(n_codes=8, dim=2, decay=0.9, restart=False)
    ref.embedding.copy_(start)
    ref(z)
    assert torch.all(ref.embedding[dead].norm(dim=1) == 0)


def clustered(n: int, centers: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = torch.randint(len(centers), (n,), generator=gen)
    return centers[k] + 0.3 * torch.randn(n, centers.shape[1], generator=gen)


@pytest.mark.parametrize("restart", [True, False])
def test_no_code_collapses_to_zero_with_restarts(restart):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    centers = 4.0 * torch.randn(6, 4, generator=gen)
    cb = EMACodebook(n_codes=64, dim=4, decay=0.95, restart=restart)
    for _ in range(400):
        cb(clustered(128, centers, gen))
    norms = cb.embedding.norm(dim=1)
    if restart:
        assert float(norms.min()) > 0.5  # every code sits near the data, none at the origin
        cb.eval()
        usage = torch.bincount(cb(clustered(4096, centers, gen)).codes, minlength=64)
        assert int((usage > 0).sum()) > 32  # and the codes are in use, not just parked
    else:
        assert int((norms < 1e-3).sum()) > 32  # most codes shrink to zero without restarts


def test_codebook_is_deterministic_under_a_seed():
    def run() -> torch.Tensor:
        torch.manual_seed(7)
        cb = EMACodebook(n_codes=32, dim=3)
        gen = torch.Generator().manual_seed(3)
        for _ in range(20):
            cb(torch.randn(16, 3, generator=gen))
        return cb.embedding.clone()

    assert torch.equal(run(), run())


# ---------------------------------------------------------------- CVQVAE on simulated paired data

N_CELLS, D_A, D_B, N_STATES = 1201, 40, 24, 6  # 6 batches of 200 cells and one of 1 per pass


def simulate_paired(seed: int = 0) -> dict:
    """Cell states (6 clusters + a continuous trajectory) mapped into two modalities by different random
    linear maps, with noise and a batch shift in modality a."""
    rng = np.random.default_rng(seed)
    types = rng.integers(N_STATES, size=N_CELLS)
    centers = 3.0 * rng.normal(size=(N_STATES, 6))
    u = centers[types] + 0.6 * rng.normal(size=(N_CELLS, 6))
    batch = rng.integers(2, size=N_CELLS)
    a = u @ rng.normal(size=(6, D_A)) + 0.5 * rng.normal(size=(N_CELLS, D_A)) + 2.0 * batch[:, None] * rng.normal(size=D_A)
    b = np.tanh(u @ rng.normal(size=(6, D_B)) / 3.0) * 3.0 + 0.3 * rng.normal(size=(N_CELLS, D_B))
    return {"a": a.astype(np.float32), "b": b.astype(np.float32), "batch": batch, "types": types}


def dense_batch(modality: str, X: np.ndarray, batch_codes: np.ndarray | None = None) -> CellBatch:
    n = X.shape[0]
    return CellBatch(modality=modality, obs_names=np.array([f"c{i}" for i in range(n)]), rows=torch.arange(n),
                     values=torch.from_numpy(X), crow_indices=None, col_indices=None, n_vars=X.shape[1],
                     library_size=torch.from_numpy(X.sum(1)),
                     batch=None if batch_codes is None else torch.from_numpy(batch_codes.astype(np.int64)))


def foscttm(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of cells closer than the true match, both directions (dense)."""
    d = cdist(a, b)
    true = np.diag(d)
    return float(((d < true[:, None]).mean(1).mean() + (d < true[None, :]).mean(0).mean()) / 2)


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    sim = simulate_paired()
    root = tmp_path_factory.mktemp("cvqvae")
    obs = pd.DataFrame({"batch": np.where(sim["batch"] == 1, "b1", "b0")}, index=[f"c{i}" for i in range(N_CELLS)])
    stores = []
    for m in ("a", "b"):
        var = pd.DataFrame(index=[f"{m}{j}" for j in range(sim[m].shape[1])])
        src = InMemorySource(f"<{m}>", m, obs, var, sim[m], kind="normalized")
        stores.append(open_modality(write_zarr(src, root / f"{m}.zarr")))
    return sim, stores


def stream(stores, seed: int = 0) -> PairedStream:
    return PairedStream(stores, batch_size=200, batch_key="batch", seed=seed, chunk_size=50, block_size=400)


def make_module(seed: int = 0) -> CVQVAEModule:
    torch.manual_seed(seed)
    return CVQVAEModule({"a": D_A, "b": D_B}, n_batches=2, hidden=(256, 128), n_codes=2048)


def embeddings(module: CVQVAEModule, sim: dict) -> dict[str, dict[str, torch.Tensor]]:
    return {m: module.embed(m, dense_batch(m, sim[m], sim["batch"])) for m in ("a", "b")}


@pytest.fixture(scope="module")
def trained(paired):
    sim, stores = paired
    module = make_module()
    untrained = {m: e["X_cellweave"].numpy() for m, e in embeddings(module, sim).items()}
    trainer = Trainer(max_steps=300, device="cpu", precision="32", seed=0, log_every=50, progress=False)
    res = trainer.fit(module, stream(stores))
    return module, res, untrained


def test_cvqvae_aligns_paired_cells(paired, trained):
    sim, _ = paired
    module, res, untrained = trained
    emb = embeddings(module, sim)
    za, zb = emb["a"]["X_cellweave"].numpy(), emb["b"]["X_cellweave"].numpy()
    score = foscttm(za, zb)
    # unintegrated baselines: each modality's own PCA (same width), and the untrained networks
    pca = {m: PCA(16, random_state=0).fit_transform(sim[m]) for m in ("a", "b")}
    baseline = foscttm(pca["a"], pca["b"])
    assert score < 0.1, score
    assert score < 0.5 * baseline and score < 0.5 * foscttm(untrained["a"], untrained["b"])
    # the loss terms went down and the codebook is in use
    first, last = res.history[0], res.history[-1]
    assert last["cross"] < 0.5 * first["cross"] and last["latent"] < first["latent"]
    assert last["perplexity"] > 20
    # the running Var(x) of the reconstruction terms is the data's variance
    np.testing.assert_allclose(module.input_var.numpy(), [np.var(sim[m], axis=0).mean() for m in ("a", "b")], rtol=0.1)
    codes = torch.cat([emb["a"]["codes"], emb["b"]["codes"]])
    assert codes.unique().numel() > 20


def test_codes_are_shared_and_no_code_is_zero(paired, trained):
    sim, _ = paired
    module, _, _ = trained
    emb = embeddings(module, sim)
    # a cell's two modalities mostly pick codes of the same cell state
    agree = (emb["a"]["codes"] == emb["b"]["codes"]).float().mean()
    za = emb["a"]["X_cellweave"]
    e = module.codebook.embedding
    same_state = np.mean(sim["types"][torch.cdist(e[emb["a"]["codes"]], za).argmin(1).numpy()] == sim["types"])
    assert float(agree) > 0.2 and same_state > 0.9
    assert float(module.codebook.embedding.norm(dim=1).min()) > 1e-3


def test_translate_predicts_the_other_modality(paired, trained):
    sim, _ = paired
    module, _, _ = trained
    pred = module.translate("a", "b", torch.from_numpy(sim["a"]), torch.from_numpy(sim["batch"])).numpy()
    mse = np.mean((pred - sim["b"]) ** 2)
    assert mse < 0.5 * np.var(sim["b"], axis=0).mean()
    corr = np.mean([np.corrcoef(pred[:, j], sim["b"][:, j])[0, 1] for j in range(D_B)])
    assert corr > 0.7


def test_hparams_and_errors(trained):
    module, _, _ = trained
    hp = module.hparams()
    assert hp["n_codes"] == 2048 and hp["decay"] == 0.99 and hp["commitment"] == 0.25 and hp["weights"]["latent"] == 10.0
    x = np.zeros((3, D_A + 1), dtype=np.float32)
    with pytest.raises(InputError, match="40 columns"):
        module.embed("a", dense_batch("a", x, np.zeros(3, dtype=np.int64)))
    with pytest.raises(InputError, match="no batch codes"):
        module.embed("a", dense_batch("a", np.zeros((3, D_A), dtype=np.float32)))
    with pytest.raises(InputError, match="batch codes must lie"):
        module.embed("a", dense_batch("a", np.zeros((3, D_A), dtype=np.float32), np.array([0, 1, 2])))
    with pytest.raises(InputError, match="two or more"):
        CVQVAEModule({"a": 3})


def test_cvqvae_is_deterministic_on_cpu(paired):
    sim, stores = paired

    def run() -> tuple[torch.Tensor, float]:
        module = make_module(seed=3)
        val = PairedStream(stores, batch_size=500, batch_key="batch", shuffle=False)
        res = Trainer(max_steps=12, device="cpu", precision="32", seed=5, val_every=6, progress=False).fit(
            module, stream(stores, seed=1), val)
        return module.embed("b", dense_batch("b", sim["b"], sim["batch"]))["X_cellweave"], res.best_val_loss

    (z1, val1), (z2, val2) = run(), run()
    assert torch.equal(z1, z2) and val1 == val2 and np.isfinite(val1)
