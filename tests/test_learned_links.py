"""Learned feature links: CCA against sklearn, block matching against dense assignment, recovery of the simulated
protein -> gene truth, scMODAL with learned links vs a random table, the run files, and input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from cellweave.data import (
    CellStream,
    InMemorySource,
    Preprocess,
    open_modality,
    write_zarr,
)
from cellweave.errors import InputError
from cellweave.evaluate.matching import foscttm
from cellweave.links import (
    FeatureLinks,
    LearnedLinks,
    LinkProjection,
    fit_cca,
    learn,
    read_links,
)
from cellweave.links.pivots import drop_worst, match_blocks
from cellweave.models import SCMODAL, read_embedding
from cellweave.models.scmodal import LEARNED_DIR
from cellweave.models.scmodal_module import SCMODALModule
from cellweave.simulate import simulate_atlas

SMALL = {"n_top_features": 300, "hidden": 128, "batch_size": 256}
WEAK = 5  # proteins kept in the weak table


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "atlas"
    return simulate_atlas(root, 1500, modalities=("rna", "adt"), n_genes=600, n_proteins=40, seed=1, progress=False)


@pytest.fixture(scope="module")
def truth(atlas) -> FeatureLinks:
    return read_links(atlas["links"])[0]


@pytest.fixture(scope="module")
def weak(truth) -> FeatureLinks:
    proteins = np.random.default_rng(0).choice(truth.table["source_feature"].unique(), WEAK, replace=False)
    return FeatureLinks("adt", "rna", truth.table[truth.table["source_feature"].isin(proteins)])


def _streams(atlas):
    """Input rows as scMODAL sees them: scaled log-normalised protein counts, top-300 variable genes."""
    adt = CellStream(open_modality(atlas["adt"]), 512, shuffle=False, preprocess=Preprocess(scale=True), rank=0, world_size=1)
    rna = CellStream(open_modality(atlas["rna"]), 512, shuffle=False, preprocess=Preprocess(n_top_genes=300, scale=True),
                     rank=0, world_size=1)
    return adt, rna


def _all_rows(stream: CellStream) -> np.ndarray:
    return torch.cat([b.dense() for b in stream]).numpy()


# ---------------------------------------------------------------- CCA, matching, reduction

def test_cca_equals_sklearn_up_to_sign():
    from sklearn.cross_decomposition import CCA

    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 3))
    x = z @ rng.normal(size=(3, 7)) + rng.normal(size=(400, 7))
    y = z @ rng.normal(size=(3, 5)) + 1.5 * rng.normal(size=(400, 5))
    ours = fit_cca(x, y, n_components=3)
    ref = CCA(n_components=3, max_iter=10_000, tol=1e-12).fit(x, y)
    xs, ys = ref.transform(x, y)
    ref_corr = [np.corrcoef(xs[:, k], ys[:, k])[0, 1] for k in range(3)]
    np.testing.assert_allclose(ours.correlations, ref_corr, atol=1e-6)
    for k in range(3):  # the same canonical variates, up to sign and scale
        assert abs(np.corrcoef(ours.transform_x(x)[:, k], xs[:, k])[0, 1]) > 1 - 1e-6
        assert abs(np.corrcoef(ours.transform_y(y)[:, k], ys[:, k])[0, 1]) > 1 - 1e-6
    np.testing.assert_allclose(ours.transform_x(x).std(0, ddof=1), 1.0, atol=1e-9)  # whitened: unit variance
    np.testing.assert_allclose(np.corrcoef(ours.transform_x(x).T), np.eye(3), atol=1e-9)


def test_cca_singular_covariance_names_the_fix():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3))
    x = np.column_stack([x, x[:, 0] + x[:, 1]])  # rank 3 of 4
    y = rng.normal(size=(50, 2))
    with pytest.raises(InputError, match="singular.*ridge"):
        fit_cca(x, y)
    fit = fit_cca(x, y, ridge=0.1)
    assert np.all((fit.correlations >= 0) & (fit.correlations <= 1))
    with pytest.raises(InputError, match="too few"):
        fit_cca(x[:2], y[:2])


def test_block_matching_is_the_dense_assignment_in_one_block_and_keeps_clusters_in_many():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 4))
    perm = rng.permutation(300)
    b = a[perm] + 0.01 * rng.normal(size=(300, 4))
    one = match_blocks(a, b, block_size=300, rng=np.random.default_rng(0))
    r, c = linear_sum_assignment(cdist(a, b, "sqeuclidean"))
    assert dict(zip(one.source, one.target)) == dict(zip(r, c))
    assert np.all(perm[one.target] == one.source)

    # ten far-apart clusters, 5 random blocks: block compositions differ a little, so some pairs cross clusters;
    # those are the costliest and dropping the worst 30% removes them
    centres = 20 * rng.normal(size=(10, 4))
    ca, cb = rng.integers(0, 10, 600), rng.integers(0, 10, 600)
    many = match_blocks(centres[ca] + rng.normal(size=(600, 4)), centres[cb] + rng.normal(size=(600, 4)),
                        block_size=120, rng=np.random.default_rng(0))
    assert len(many) == 600 and len(set(many.source)) == 600 and len(set(many.target)) == 600
    same = ca[many.source] == cb[many.target]
    kept = drop_worst(many, 0.3)
    assert len(kept) == 420 and kept.cost.max() <= np.sort(many.cost)[419]
    print(f"\nsame-cluster pivots: {same.mean():.3f} of all, {(ca[kept.source] == cb[kept.target]).mean():.3f} kept")
    assert same.mean() < 1 and (ca[kept.source] == cb[kept.target]).mean() > 0.99


def test_reduced_features_are_the_pca_of_the_model_inputs(atlas):
    """learn() reduces with cellweave.reduce over the stream's own transform: sklearn's PCA of the streamed rows."""
    from sklearn.decomposition import PCA

    from cellweave.links.learn import _sample

    _, rna = _streams(atlas)
    sample = _sample(rna, 10_000, 10, np.random.default_rng(0), False)
    x = _all_rows(rna)
    np.testing.assert_allclose(sample.x, x, atol=1e-6)  # all 1500 cells drawn, in store order
    ref = PCA(10, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(sample.reduction.mean, ref.mean_, atol=1e-5)
    np.testing.assert_allclose(sample.reduction.explained_variance, ref.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(np.abs(sample.reduction.components @ ref.components_.T), np.eye(10), atol=1e-3)
    z = ref.transform(x.astype(np.float64))
    np.testing.assert_allclose(np.abs(sample.reduced), np.abs(z), atol=1e-3 * np.abs(z).max())


# ---------------------------------------------------------------- learning links on simulated truth

def _partner_auroc(res: LearnedLinks, truth: FeatureLinks, skip: set[str] = frozenset()) -> float:
    """Mean over proteins of the AUROC of their true genes among all genes, by the learned association."""
    pairs = set(zip(truth.table["source_feature"], truth.table["target_feature"]))
    score = res.source_loadings @ (res.target_loadings * np.clip(res.heldout_correlations, 0, None)).T
    aurocs = []
    for i, p in enumerate(res.source_features):
        pos = np.array([(p, g) in pairs for g in res.target_features])
        if p in skip or not pos.any():
            continue
        s = score[i]
        aurocs.append(np.mean([(s[j] > s[~pos]).mean() + 0.5 * (s[j] == s[~pos]).mean() for j in np.flatnonzero(pos)]))
    assert len(aurocs) >= 15
    return float(np.mean(aurocs))


def _cca_foscttm(res: LearnedLinks, adt: np.ndarray, rna: np.ndarray) -> float:
    """FOSCTTM of all twins in the learned canonical space (adt_i and rna_i are twins)."""
    p = res.projection
    z = np.vstack([adt @ p.source + p.source_offset, rna @ p.target + p.target_offset])
    modality = np.r_[["adt"] * len(adt), ["rna"] * len(rna)]
    return foscttm(z, modality, np.r_[np.arange(len(adt)), np.arange(len(rna))])["adt|rna"]["foscttm"]


def test_learned_links_recover_the_true_partners(atlas, truth, weak):
    adt, rna = _streams(atlas)
    x_adt, x_rna = _all_rows(adt), _all_rows(rna)
    from_weak = learn(adt, rna, weak, seed=0)
    print("\n" + from_weak.summary())
    assert from_weak.initial == "links" and len(from_weak.history) == 4
    assert [r.matched_on for r in from_weak.history] == ["links", "cca", "cca", "cca"]
    assert all(r.n_pivots == r.n_matched - int(0.3 * r.n_matched) for r in from_weak.history)
    held_out_proteins = set(weak.table["source_feature"])
    auroc = _partner_auroc(from_weak, truth, skip=held_out_proteins)  # truth beyond the 5 given markers
    fos = _cca_foscttm(from_weak, x_adt, x_rna)
    print(f"weak table: partner AUROC {auroc:.3f} (chance 0.5), canonical-space FOSCTTM {fos:.3f} (chance 0.5)")
    assert auroc > 0.7 and fos < 0.2

    blind = learn(rna, adt, None, seed=0)  # no link at all: cluster geometry gives the first pivots
    print(blind.summary())
    assert blind.initial == "geometry" and blind.history[0].matched_on == "geometry"
    swapped = LearnedLinks("adt", "rna", blind.target_features, blind.source_features,
                           LinkProjection(blind.projection.target, blind.projection.source,
                                          blind.projection.target_offset, blind.projection.source_offset),
                           blind.components, blind.correlations, blind.heldout_correlations, blind.target_loadings,
                           blind.source_loadings, blind.history, blind.initial, blind.settings)
    auroc_blind = _partner_auroc(swapped, truth)
    fos_blind = _cca_foscttm(swapped, x_adt, x_rna)
    print(f"no table: partner AUROC {auroc_blind:.3f}, canonical-space FOSCTTM {fos_blind:.3f}")
    assert auroc_blind > 0.6 and fos_blind < 0.4

    # the learned table: each protein's best gene is the argmax of the dense association
    table = from_weak.feature_links(top=1).table
    score = from_weak.source_loadings @ (from_weak.target_loadings * np.clip(from_weak.heldout_correlations, 0, None)).T
    best = dict(zip(from_weak.source_features, np.asarray(from_weak.target_features)[score.argmax(1)]))
    assert len(table) > 0 and all(best[s] == t for s, t in zip(table["source_feature"], table["target_feature"]))


def test_learned_links_round_trip_and_are_reproducible(atlas, weak, tmp_path):
    adt, rna = _streams(atlas)
    settings = {"n_cells": 600, "n_iter": 1}
    a = learn(adt, rna, weak, settings=settings, seed=4)
    b = learn(adt, rna, weak, settings=settings, seed=4)
    np.testing.assert_array_equal(a.projection.source, b.projection.source)
    path = a.save(tmp_path / "learned")
    assert path.name == "adt__rna.npz" and path.with_suffix(".json").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["adt__rna.json", "adt__rna.npz"]  # no temporary left
    back = LearnedLinks.load(path)
    for field in ("components", "correlations", "heldout_correlations", "source_loadings", "target_loadings"):
        np.testing.assert_array_equal(getattr(back, field), getattr(a, field))
    np.testing.assert_array_equal(back.projection.target_offset, a.projection.target_offset)
    assert back.history == a.history and back.settings == a.settings and back.source_features == a.source_features
    with pytest.raises(InputError, match="no such file"):
        LearnedLinks.load(tmp_path / "absent.npz")


def _store(tmp_path, name: str, X: np.ndarray, var_names: list[str]) -> CellStream:
    src = InMemorySource(name, name, pd.DataFrame(index=[f"{name}{i}" for i in range(len(X))]),
                         pd.DataFrame(index=var_names), X.astype(np.float32), kind="counts")
    store = open_modality(write_zarr(src, tmp_path / f"{name}.zarr"))
    return CellStream(store, 64, shuffle=False, preprocess=Preprocess(scale=True), rank=0, world_size=1)


def test_no_pivots_and_bad_inputs_are_refused(atlas, weak, tmp_path):
    # the only shared marker's gene is never detected: nothing to match cells on
    rng = np.random.default_rng(6)
    rna_counts = rng.poisson(5, (100, 8))
    rna_counts[:, 0] = 0
    silent_rna = _store(tmp_path, "rna", rna_counts, ["CD3E"] + [f"G{i}" for i in range(7)])
    some_adt = _store(tmp_path, "adt", rng.poisson(20, (100, 4)), ["CD3", "CD4", "CD8", "CD19"])
    marker = FeatureLinks("adt", "rna", pd.DataFrame({"source_feature": ["CD3"], "target_feature": ["CD3E"]}))
    with pytest.raises(InputError, match="no pivots can be found: none of the 1 linked features varies.*shared markers"):
        learn(some_adt, silent_rna, marker)

    adt, rna = _streams(atlas)
    with pytest.raises(InputError, match="the links go rna -> adt"):
        learn(adt, rna, FeatureLinks("rna", "adt", weak.table.rename(columns={"source_feature": "target_feature",
                                                                              "target_feature": "source_feature"})))
    with pytest.raises(InputError, match="unknown learned-links setting"):
        learn(adt, rna, weak, settings={"n_cell": 10})
    with pytest.raises(InputError, match="drop"):
        learn(adt, rna, weak, settings={"drop": 1.0})


# ---------------------------------------------------------------- scMODAL with learned links

def test_module_concatenates_table_and_learned_views():
    rng = np.random.default_rng(5)
    cols, W = np.array([0, 2]), rng.random((2, 6)).astype(np.float32)
    proj = LinkProjection(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32),
                          rng.normal(size=3).astype(np.float32), rng.normal(size=3).astype(np.float32))
    both = SCMODALModule({"a": 4, "b": 6}, {("a", "b"): (cols, W)}, hidden=8, projections={("a", "b"): proj})
    learned_only = SCMODALModule({"a": 4, "b": 6}, {}, hidden=8, projections={("a", "b"): proj})
    xa, xb = torch.randn(5, 4), torch.randn(7, 6)
    ls, lt = learned_only.linked("a", "b", xa, xb)
    np.testing.assert_allclose(ls.numpy(), xa.numpy() @ proj.source + proj.source_offset, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lt.numpy(), xb.numpy() @ proj.target + proj.target_offset, rtol=1e-5, atol=1e-5)
    cs, ct = both.linked("a", "b", xa, xb)
    assert cs.shape == (5, 5) and ct.shape == (7, 5)

    def cos(u, v):
        u, v = u / np.linalg.norm(u, axis=1, keepdims=True), v / np.linalg.norm(v, axis=1, keepdims=True)
        return u @ v.T

    table = cos(xa.numpy()[:, cols], xb.numpy() @ W.T)
    learned = cos(ls.numpy(), lt.numpy())
    np.testing.assert_allclose(cos(cs.numpy(), ct.numpy()), (table + learned) / 2, atol=1e-5)  # mean of the views
    assert "link_ps__a__b" in both.state_dict()


def test_table_plus_learned_run_saves_reloads_and_resumes(atlas, weak, tmp_path):
    inputs = {"rna": atlas["rna"], "adt": atlas["adt"]}
    config = SMALL | {"learn": {"n_cells": 600, "n_iter": 1}}
    model = SCMODAL(inputs, links=[weak], links_augment="learn", config=config, seed=2)
    assert model.learn_pairs == [("adt", "rna")]
    model.fit(6, run_dir=tmp_path / "run", progress=False)
    saved = tmp_path / "run" / LEARNED_DIR / "adt__rna.npz"
    assert saved.exists() and (tmp_path / "run" / LEARNED_DIR / "adt__rna.json").exists()
    K = len(model.learned[("adt", "rna")].components)
    assert model.module.link_ps__adt__rna.shape == (len(model.features["adt"]), K)
    assert "learned_links" in (tmp_path / "run" / "config.toml").read_text()
    z = read_embedding(model.embed(progress=False)["adt"])

    again = SCMODAL(inputs, links=[weak], links_augment="learn", config=config, seed=2)
    again.load_weights(tmp_path / "run")
    np.testing.assert_array_equal(read_embedding(again.embed(tmp_path / "again", progress=False)["adt"]), z)

    part = SCMODAL(inputs, links=[weak], links_augment="learn", config=config, seed=2)
    part.fit(3, run_dir=tmp_path / "part", progress=False)
    part.fit(6, run_dir=tmp_path / "part", progress=False, resume=True)
    np.testing.assert_array_equal(read_embedding(part.embed(progress=False)["adt"]), z)


def test_scmodal_refuses_bad_learn_settings(atlas, weak):
    inputs = {"rna": atlas["rna"], "adt": atlas["adt"]}
    with pytest.raises(InputError, match="links_augment"):
        SCMODAL(inputs, links="learn", links_augment="learn", config=SMALL)
    with pytest.raises(InputError, match="links_augment"):
        SCMODAL(inputs, links=[weak], links_augment="cca", config=SMALL)
    with pytest.raises(InputError, match=r"\[model.learn\].*n_pcs"):
        SCMODAL(inputs, links="learn", config=SMALL | {"learn": {"n_pcs": 3}})


def test_cli_fit_learns_links(atlas, tmp_path, capsys):
    from cellweave.cli import main

    config = tmp_path / "run.toml"
    config.write_text("[model]\nn_top_features = 300\nhidden = 32\nbatch_size = 128\n[model.learn]\nn_cells = 500\nn_iter = 1\n")
    base = ["fit", "--modality", f"rna={atlas['rna']}", "--modality", f"adt={atlas['adt']}", "--config", str(config),
            "--max-steps", "2", "--device", "cpu"]
    assert main([*base, "--links", "learn", "--out", str(tmp_path / "blind")]) == 0
    out = capsys.readouterr().out
    assert "learned links rna -> adt" in out and "first pivots from geometry" in out
    assert (tmp_path / "blind" / LEARNED_DIR / "rna__adt.npz").exists()
    assert main([*base, "--links", str(atlas["links"]), "--links-augment", "learn", "--out", str(tmp_path / "aug")]) == 0
    out = capsys.readouterr().out
    assert "links adt -> rna: 40 linked features" in out and "first pivots from links" in out
    assert (tmp_path / "aug" / LEARNED_DIR / "adt__rna.npz").exists()


def _fit_foscttm(inputs, links, tmp_path, name, steps) -> float:
    model = SCMODAL(inputs, links=links, config=SMALL, seed=0)
    model.fit(steps, run_dir=tmp_path / name, progress=False)
    paths = model.embed(progress=False)
    z = np.vstack([read_embedding(paths["adt"]), read_embedding(paths["rna"])])
    n = len(z) // 2
    return foscttm(z, np.r_[["adt"] * n, ["rna"] * n], np.r_[np.arange(n), np.arange(n)])["adt|rna"]["foscttm"]


def test_scmodal_with_learned_links_only_beats_a_random_table(atlas, weak, tmp_path):
    """No table at all vs a table of the same size as the weak one whose genes are random input genes."""
    inputs = {"rna": atlas["rna"], "adt": atlas["adt"]}
    rna_inputs = SCMODAL(inputs, links=[weak], config=SMALL).features["rna"]
    genes = np.random.default_rng(0).choice(rna_inputs, len(weak))
    random = FeatureLinks("adt", "rna", pd.DataFrame({"source_feature": weak.table["source_feature"].to_numpy(),
                                                      "target_feature": genes}))
    learned = _fit_foscttm(inputs, "learn", tmp_path, "learned", 200)
    control = _fit_foscttm(inputs, [random], tmp_path, "random", 200)
    print(f"\nFOSCTTM: learned links only {learned:.3f}, random table {control:.3f}")
    assert learned < control - 0.05
