"""scMRDR's math: likelihoods (vs scipy), masked / isometric / KL losses (vs hand and numpy computations), and
the module trained by the shared Trainer on a simulated three-modality atlas (vs an unintegrated PCA)."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy import stats
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

from cellweave import InputError
from cellweave.data import CellBatch, CellStream, InMemorySource, UnpairedStream, open_modality, write_zarr
from cellweave.losses import isometric_loss, kl_normal, masked_reconstruction_loss
from cellweave.models.scmrdr_module import SCMRDRModule
from cellweave.nn import log_bernoulli, log_gaussian, log_nb, log_zinb
from cellweave.train import StepContext, Trainer

# ----------------------------------------------------------------------------- likelihoods

RNG = np.random.default_rng(0)
X_COUNTS = np.concatenate([np.zeros(20), RNG.integers(1, 50, 40), [1000.0, 5000.0]])
MU = np.concatenate([RNG.uniform(0.01, 30, 60), [900.0, 0.5]])
THETA = np.concatenate([RNG.uniform(0.05, 20, 60), [3.0, 0.2]])
ZI = RNG.normal(0, 2, len(X_COUNTS))


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def test_log_nb_matches_scipy():
    expected = stats.nbinom.logpmf(X_COUNTS, n=THETA, p=THETA / (THETA + MU))
    got = log_nb(t64(X_COUNTS), t64(MU), t64(THETA), eps=0.0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-7)


def test_log_zinb_matches_the_mixture_by_hand():
    pi = 1.0 / (1.0 + np.exp(-ZI))
    nb = stats.nbinom(n=THETA, p=THETA / (THETA + MU))
    # P(0) = pi + (1 - pi) NB(0); P(x > 0) = (1 - pi) NB(x), the latter in log space (NB(5000) underflows)
    expected = np.where(X_COUNTS == 0, np.log(pi + (1 - pi) * nb.pmf(0)), np.log1p(-pi) + nb.logpmf(X_COUNTS))
    got = log_zinb(t64(X_COUNTS), t64(MU), t64(THETA), t64(ZI), eps=0.0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-7)


def test_log_gaussian_matches_scipy_with_var_or_log_var():
    x, mean, var = RNG.normal(0, 3, 50), RNG.normal(0, 1, 50), RNG.uniform(0.01, 5, 50)
    expected = stats.norm.logpdf(x, loc=mean, scale=np.sqrt(var))
    np.testing.assert_allclose(log_gaussian(t64(x), t64(mean), t64(var)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(log_gaussian(t64(x), t64(mean), log_var=t64(np.log(var))).numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        log_gaussian(t64(x), t64(mean))


def test_log_bernoulli_matches_scipy():
    logits = RNG.normal(0, 3, 40)
    x = (RNG.random(40) < 0.5).astype(float)
    expected = stats.bernoulli.logpmf(x, 1.0 / (1.0 + np.exp(-logits)))
    np.testing.assert_allclose(log_bernoulli(t64(x), t64(logits)).numpy(), expected, atol=1e-5)


def test_count_likelihoods_stay_finite_at_extremes():
    x = torch.tensor([0.0, 0.0, 1e5, 3.0, 0.0])
    mu = torch.tensor([0.0, 1e6, 1e-9, 0.0, 1e-12], requires_grad=True)
    theta = torch.tensor([1e-4, 1e4, 1e-3, 50.0, 1e6], requires_grad=True)
    zi = torch.tensor([80.0, -80.0, 40.0, -40.0, 0.0], requires_grad=True)
    total = log_zinb(x, mu, theta, zi).sum() + log_nb(x, mu, theta).sum()
    total.backward()
    for t in (total, mu.grad, theta.grad, zi.grad):
        assert torch.isfinite(t).all()


# ----------------------------------------------------------------------------- losses

def test_masked_loss_equals_a_hand_computation():
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 8.0, 1.0], [2.0, 0.0, 1.0, 7.0]])
    mask = torch.tensor([True, False, True, False])
    # per cell: (1 + 3) * 4 / 2 = 8, (0.5 + 8) * 4 / 2 = 17, (2 + 1) * 4 / 2 = 6
    assert masked_reconstruction_loss(nll, mask, reduction="none").tolist() == [8.0, 17.0, 6.0]
    assert masked_reconstruction_loss(nll, mask).item() == pytest.approx(31.0 / 3)
    assert masked_reconstruction_loss(nll, mask, reduction="sum").item() == pytest.approx(31.0)
    per_cell = torch.tensor([[True, True, True, True], [False, False, True, False], [True, False, True, False]])
    # (1 + 2 + 3 + 4) * 4 / 4 = 10, 8 * 4 / 1 = 32, (2 + 1) * 4 / 2 = 6
    assert masked_reconstruction_loss(nll, per_cell, reduction="none").tolist() == [10.0, 32.0, 6.0]
    assert masked_reconstruction_loss(nll, None, reduction="none").tolist() == [10.0, 10.0, 10.0]


def test_masked_loss_gives_unmeasured_outputs_exactly_zero_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((6, 10), 3.0), generator=g)
    mu = torch.rand(6, 10, generator=g).mul(5).add(0.1).requires_grad_(True)
    logits = torch.randn(6, 10, generator=g, requires_grad=True)
    mask = torch.tensor([True, True, False, True, False, False, True, True, False, True])
    nll = -log_zinb(x, mu, torch.full((10,), 2.0), logits)
    nll = torch.where(mask, nll, torch.full_like(nll, float("inf")))  # even inf outside the mask must not leak
    loss = masked_reconstruction_loss(nll, mask)
    loss.backward()
    assert torch.isfinite(loss)
    for grad in (mu.grad, logits.grad):
        assert torch.equal(grad[:, ~mask], torch.zeros_like(grad[:, ~mask]))
        assert (grad[:, mask] != 0).all()


def test_masked_loss_rejects_cells_without_measured_features():
    with pytest.raises(ValueError, match="no measured feature"):
        masked_reconstruction_loss(torch.ones(2, 3), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="bool"):
        masked_reconstruction_loss(torch.ones(2, 3), torch.ones(3))


def test_kl_normal_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(4))
    q = torch.distributions.Normal(mu_q, torch.exp(0.5 * lv_q))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(mu_p, torch.exp(0.5 * lv_p))).sum(-1)
    torch.testing.assert_close(kl_normal(mu_q, lv_q, mu_p, lv_p), expected)
    standard = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_normal(mu_q, lv_q), standard)


def test_isometric_loss_matches_dense_numpy():
    rng = np.random.default_rng(2)
    zu = rng.normal(size=(30, 4))
    z = np.hstack([zu, rng.normal(size=(30, 3))])
    groups = rng.integers(0, 3, 30)
    same = groups[:, None] == groups[None, :]
    expected = (((cdist(zu, zu) - cdist(z, z)) ** 2) * same).sum() / 30
    got = isometric_loss(t64(zu), t64(z), torch.as_tensor(groups))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    ungrouped = ((cdist(zu, zu) - cdist(z, z)) ** 2).sum() / 30
    assert isometric_loss(t64(zu), t64(z)).item() == pytest.approx(ungrouped, rel=1e-10)


def test_isometric_loss_gradient_is_finite_for_identical_cells():
    zu = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    zs = torch.tensor([[0.5], [0.5], [2.0]], requires_grad=True)
    isometric_loss(zu, torch.cat([zu, zs], 1)).backward()
    assert torch.isfinite(zu.grad).all() and torch.isfinite(zs.grad).all()


# ----------------------------------------------------------------------------- the module on hand-built batches

@contextlib.contextmanager
def one_thread():
    """Tiny matrices: one intra-op thread is faster than several, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cell_batch(modality: str, X, mask=None, batch=None) -> CellBatch:
    X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    return CellBatch(modality=modality, obs_names=np.array([f"{modality}{i}" for i in range(len(X))]),
                     rows=torch.arange(len(X)), values=X, crow_indices=None, col_indices=None, n_vars=X.shape[1],
                     library_size=X.sum(1), batch=None if batch is None else torch.as_tensor(batch), mask=mask)


def context(module: SCMRDRModule, precision: str = "32") -> StepContext:
    ctx = StepContext(torch.device("cpu"), precision, {}, torch.amp.GradScaler("cpu", enabled=False), None)
    ctx.optimizers = module.configure_optimizers()
    return ctx


N_SMALL = 12
MASK_SMALL = {"rna": np.arange(12) < 10, "adt": np.isin(np.arange(12), [0, 3, 10, 11])}


def small_batches(seed: int = 0) -> dict[str, CellBatch]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (m, mask) in enumerate(MASK_SMALL.items()):
        X = rng.poisson(5.0, (16, N_SMALL)) * mask
        out[m] = cell_batch(m, X, torch.from_numpy(mask), batch=rng.integers(0, 2, 16))
    return out


def small_module(**kwargs) -> SCMRDRModule:
    torch.manual_seed(0)
    settings = {"n_batches": 2, "masks": MASK_SMALL, "hidden": (16,), "n_latent_shared": 3, "n_latent_specific": 2} | kwargs
    return SCMRDRModule(N_SMALL, ["rna", "adt"], **settings)


@pytest.mark.parametrize("masked", [True, False])
def test_module_gives_unmeasured_columns_no_gradient_only_when_masked(masked):
    module = small_module(masked=masked)
    b = small_batches()["adt"]
    x = b.dense()
    heads = module.decode(torch.randn(16, 3), torch.randn(16, 2), b.batch)
    for h in heads.values():
        h.retain_grad()
    nll = module.reconstruction_nll("adt", heads, x)
    masked_reconstruction_loss(nll, module.loss_mask("adt")).backward()
    unmeasured = ~torch.from_numpy(MASK_SMALL["adt"])
    for name, h in heads.items():
        assert torch.equal(h.grad[:, unmeasured] == 0, torch.full_like(h.grad[:, unmeasured], masked, dtype=torch.bool)), name
        assert (h.grad[:, ~unmeasured] != 0).all()


def test_training_step_updates_both_optimizers_and_validation_sums_add_up():
    module = small_module()
    ctx = context(module)
    disc0 = [p.detach().clone() for p in module.discriminator.parameters()]
    enc0 = [p.detach().clone() for p in module.encoder_shared.parameters()]
    terms = module.training_step(small_batches(), ctx)
    assert set(terms) == {"disc", "loss", "recon", "kl", "iso", "adv"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["loss"].item() == pytest.approx(
        (terms["recon"] + 2.0 * terms["kl"] + 5.0 * terms["iso"] + 5.0 * terms["adv"]).item(), rel=1e-5)
    assert all(not torch.equal(a, b) for a, b in zip(disc0, module.discriminator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(enc0, module.encoder_shared.parameters()))
    assert all(p.requires_grad for p in module.discriminator.parameters())

    module.eval()
    whole = small_batches(1)
    halves = [{m: cell_batch(m, b.values[sl], b.mask, b.batch[sl]) for m, b in whole.items()} for sl in (slice(0, 8), slice(8, 16))]
    full = module.validation_step(whole, ctx)
    parts = [module.validation_step(h, ctx) for h in halves]
    assert full["n"].item() == 32 and sum(p["n"].item() for p in parts) == 32
    for key in ("recon", "kl", "adv"):  # cell-level terms: sums over halves add up to the sum over the whole
        assert full[key].item() == pytest.approx(sum(p[key].item() for p in parts), rel=1e-5)
    assert full["loss"].item() == pytest.approx(
        (full["recon"] + 2.0 * full["kl"] + 5.0 * full["iso"] + 5.0 * full["adv"]).item(), rel=1e-5)


def test_gaussian_and_nb_modalities_train_under_bf16_autocast():
    module = small_module(likelihoods={"rna": "nb", "adt": "gaussian"})
    assert module.heads == ("logits", "mean")
    ctx = context(module, "bf16-mixed")
    batches = small_batches()
    adt = batches["adt"]
    scores = torch.randn(16, N_SMALL) * adt.mask
    batches["adt"] = cell_batch("adt", scores, adt.mask, adt.batch)
    with one_thread():
        first = module.training_step(batches, ctx)["recon"]
        for _ in range(20):
            last = module.training_step(batches, ctx)["recon"]
    assert torch.isfinite(last) and last < first
    imputed = module.impute("rna", "adt", batches["rna"], target_batch=1)
    assert imputed.shape == (16, N_SMALL) and (imputed[:, ~adt.mask] == 0).all()


def test_ablations_and_single_modality_drop_the_discriminator():
    assert set(small_module().configure_optimizers()) == {"vae", "discriminator"}
    no_adv = small_module(lam=0.0)
    assert set(no_adv.configure_optimizers()) == {"vae"}
    assert "disc" not in no_adv.training_step(small_batches(), context(no_adv))
    torch.manual_seed(0)
    single = SCMRDRModule(N_SMALL, ["rna"], hidden=(8,))
    assert single.discriminator is None and set(single.configure_optimizers()) == {"vae"}
    terms = single.training_step({"rna": cell_batch("rna", np.random.default_rng(0).poisson(3.0, (8, N_SMALL)))}, context(single))
    assert terms["adv"].item() == 0.0


def test_cosine_schedule_anneals_the_learning_rate():
    module = small_module(cosine_steps=10, lr=1e-2)
    ctx = context(module)
    ctx.step = 5
    module.training_step(small_batches(), ctx)
    assert all(g["lr"] == pytest.approx(5e-3) for o in ctx.optimizers.values() for g in o.param_groups)


def test_bad_settings_and_batches_raise_clear_errors():
    with pytest.raises(InputError, match="unknown likelihood"):
        small_module(likelihoods={"rna": "poisson"})
    with pytest.raises(InputError, match="not among"):
        small_module(likelihoods={"atac": "zinb"})
    with pytest.raises(InputError, match="measures no column"):
        small_module(masks={"adt": np.zeros(N_SMALL, dtype=bool)})
    with pytest.raises(InputError, match="expected"):
        small_module(masks={"adt": np.ones(5, dtype=bool)})
    with pytest.raises(InputError, match="distinct"):
        SCMRDRModule(N_SMALL, ["rna", "rna"])
    module = small_module()
    ctx = context(module)
    batches = small_batches()
    with pytest.raises(InputError, match="no batch codes"):
        module.training_step({**batches, "adt": cell_batch("adt", batches["adt"].values, batches["adt"].mask)}, ctx)
    with pytest.raises(InputError, match="batch codes outside"):
        module.training_step({**batches, "adt": cell_batch("adt", batches["adt"].values, batches["adt"].mask, [5] * 16)}, ctx)
    with pytest.raises(InputError, match="differ from the module's masks"):
        module.training_step({**batches, "adt": cell_batch("adt", batches["adt"].values, batches["rna"].mask, batches["adt"].batch)}, ctx)
    with pytest.raises(InputError, match="columns"):
        module.training_step({"rna": cell_batch("rna", np.ones((4, 5)))}, ctx)
    with pytest.raises(InputError, match="not one of the model's"):
        module.training_step({"atac": batches["rna"]}, ctx)
    with pytest.raises(InputError, match="target_batch"):
        module.impute("rna", "adt", batches["rna"], target_batch=7)


# ----------------------------------------------------------------------------- trained on a simulated atlas

G = 240
MEASURED = {"rna": np.arange(0, 160), "atac": np.arange(60, 220), "adt": np.r_[np.arange(0, 40, 2), np.arange(220, 230)]}
LIBRARY = {"rna": (8.0, 0.3), "atac": (7.0, 0.4), "adt": (8.5, 0.3)}
DISPERSION = {"rna": 5.0, "atac": 2.0, "adt": 10.0}
PROPORTIONS = [0.5, 0.3, 0.2]
FEATURES = [f"f{j}" for j in range(G)]


def simulate(n: int, seed: int) -> dict[str, tuple[InMemorySource, np.ndarray]]:
    """Three unpaired count modalities over a 240-feature union with three cell types.

    RNA measures features 0-159, ATAC gene activity 60-219 (100 shared with RNA), a 30-protein panel ten
    RNA features and ten features of its own: each modality measures its own subset, laid out in the union.
    Cell types differ by +1.5 log-fold markers (every third feature, 60% of them); every modality has its
    own per-feature offset (log-normal, sd 1), library-size range and dispersion, and two batches with
    per-feature offsets (sd 0.4) and a library shift. Without integration a joint PCA transfers labels
    across modalities poorly (checked below).
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, G)
    cols = np.arange(G)
    effects = np.stack([1.5 * ((cols % 3 == k) & (rng.random(G) < 0.6)) for k in range(len(PROPORTIONS))])
    out = {}
    for m, feats in MEASURED.items():
        offset = rng.normal(0, 1.0, G)
        batch_offset = rng.normal(0, 0.4, (2, G))
        labels = rng.choice(len(PROPORTIONS), n, p=PROPORTIONS)
        batches = rng.integers(0, 2, n)
        logits = (base + offset + effects[labels] + batch_offset[batches] + rng.normal(0, 0.2, (n, G)))[:, feats]
        rho = np.exp(logits - logits.max(1, keepdims=True))
        rho /= rho.sum(1, keepdims=True)
        mu = np.exp(rng.normal(LIBRARY[m][0] + 0.3 * batches, LIBRARY[m][1]))[:, None] * rho
        theta = DISPERSION[m]
        X = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
        obs = pd.DataFrame({"batch": np.array(["b0", "b1"])[batches], "cell_type": np.array(["A", "B", "C"])[labels]},
                           index=[f"{m}_{i}" for i in range(n)])
        out[m] = (InMemorySource(f"<{m}>", m, obs, pd.DataFrame(index=[FEATURES[j] for j in feats]), sp.csr_matrix(X),
                                 kind="counts"), labels)
    return out


def make_streams(stores, rows, batch_size: int, shuffle: bool = True) -> dict[str, CellStream]:
    return {m: CellStream(s, batch_size, shuffle=shuffle, seed=1, chunk_size=32, block_size=1024, rows=rows,
                          batch_key="batch", feature_space=FEATURES) for m, s in stores.items()}


def build_module(streams, seed: int = 0, **kwargs) -> SCMRDRModule:
    torch.manual_seed(seed)
    masks = {m: s.reader.mask.numpy() for m, s in streams.items()}
    return SCMRDRModule(G, list(streams), n_batches=2, masks=masks, **kwargs)


def embed_all(module: SCMRDRModule, stores, key: str = "X_cellweave") -> dict[str, np.ndarray]:
    out = {}
    for m, s in stores.items():
        stream = CellStream(s, 1000, shuffle=False, feature_space=FEATURES)
        out[m] = torch.cat([module.embed(m, b)[key] for b in stream]).numpy()
    return out


def transfer_accuracy(Z: dict[str, np.ndarray], labels: dict[str, np.ndarray], reference: str = "rna") -> dict[str, float]:
    knn = KNeighborsClassifier(15).fit(Z[reference], labels[reference])
    return {m: float((knn.predict(Z[m]) == labels[m]).mean()) for m in Z if m != reference}


N_CELLS = 600
TRAIN_ROWS, VAL_ROWS = np.arange(540), np.arange(540, 600)  # a 10% validation split


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    data = simulate(N_CELLS, seed=2)
    root = tmp_path_factory.mktemp("scmrdr")
    stores = {m: open_modality(write_zarr(src, root / f"{m}.zarr")) for m, (src, _) in data.items()}
    return stores, {m: lab for m, (_, lab) in data.items()}, data


@pytest.fixture(scope="module")
def trained(atlas):
    stores, labels, _ = atlas
    train = make_streams(stores, TRAIN_ROWS, 64)
    val = UnpairedStream(make_streams(stores, VAL_ROWS, 30, shuffle=False))
    module = build_module(train)
    with one_thread():
        result = Trainer(max_steps=200, log_every=25, val_every=100, seed=0, progress=False).fit(module, UnpairedStream(train), val)
    return module, result


def test_training_decreases_the_loss_and_validates_on_the_whole_split(trained):
    module, result = trained
    rows = result.history
    assert rows[-1]["recon"] < 0.85 * rows[0]["recon"] and rows[-1]["loss"] < rows[0]["loss"]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 2 and all(np.isfinite(val)) and result.best_val_loss == min(val)
    assert {"disc", "adv", "iso", "kl"} <= set(rows[-1])


def test_shared_code_transfers_labels_across_modalities_where_pca_fails(atlas, trained):
    stores, labels, data = atlas
    module, _ = trained
    union = []
    for m, (src, _) in data.items():  # unintegrated baseline: joint PCA of the log-normalised union matrix
        X = np.zeros((src.X.shape[0], G), dtype=np.float32)
        X[:, MEASURED[m]] = src.X.toarray()
        union.append(np.log1p(X / X.sum(1, keepdims=True) * 1e4))
    pcs = np.split(PCA(20, random_state=0).fit_transform(np.vstack(union)), np.cumsum([len(u) for u in union])[:-1])
    baseline = transfer_accuracy(dict(zip(data, pcs)), labels)
    integrated = transfer_accuracy(embed_all(module, stores), labels)
    assert max(baseline.values()) < 0.6, baseline
    assert min(integrated.values()) > 0.8, integrated
    specific = embed_all(module, stores, "X_cellweave_specific")
    assert all(z.shape == (N_CELLS, module.n_latent_specific) for z in specific.values())


def test_imputed_protein_profiles_follow_the_cell_type(atlas, trained):
    stores, labels, data = atlas
    module, _ = trained
    rna = CellStream(stores["rna"], 1000, shuffle=False, feature_space=FEATURES)
    imputed = torch.cat([module.impute("rna", "adt", b, target_batch=0) for b in rna]).numpy()
    panel = MEASURED["adt"]
    assert np.allclose(imputed.sum(1), 1e4, rtol=1e-4) and np.all(np.delete(imputed, panel, axis=1) == 0)
    observed = data["adt"][0].X.toarray()
    observed = np.log1p(observed / observed.sum(1, keepdims=True) * 1e4)
    imputed = np.log1p(imputed[:, panel])
    types = range(len(PROPORTIONS))
    corr = np.array([[np.corrcoef(imputed[labels["rna"] == a].mean(0), observed[labels["adt"] == b].mean(0))[0, 1]
                      for b in types] for a in types])
    assert (corr.argmax(1) == np.arange(len(PROPORTIONS))).all(), corr


def test_same_seed_gives_the_same_embedding(atlas):
    stores, _, _ = atlas

    def run(seed: int) -> np.ndarray:
        streams = make_streams(stores, TRAIN_ROWS, 64)
        module = build_module(streams, seed=seed)
        with one_thread():
            Trainer(max_steps=15, seed=seed, progress=False).fit(module, UnpairedStream(streams))
        return embed_all(module, {"adt": stores["adt"]})["adt"]

    first, again, other = run(3), run(3), run(4)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)
