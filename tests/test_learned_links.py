"""Learned feature links: CCA against sklearn, block matching against dense assignment, recovery of the simulated
protein -> gene truth, scMODAL with learned links vs a random table, the run files, and input errors."""

from __future__ import annotations

import warnings

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
from cellweave.links.learn import UnreliableAlignmentWarning
from cellweave.links.pivots import drop_worst, match_blocks
from cellweave.links.transport import (
    alignment_quality,
    cell_distances,
    geodesic_distances,
    gromov_wasserstein,
    stratified_sample,
)
from cellweave.models import SCMODAL, read_embedding
from cellweave.models.scmodal import LEARNED_DIR
from cellweave.models.scmodal_module import SCMODALModule
from cellweave.simulate import simulate_atlas

SMALL = {"n_top_features": 300, "hidden": 128, "batch_size": 256}
BLIND = {"ot_cells": 300, "ot_starts": 10, "ot_samples": 1}  # one small transport sample, both metrics
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


# ---------------------------------------------------------------- transport between geometries

def test_gromov_wasserstein_recovers_an_isometry():
    """Two copies of six clusters (one rotated and shuffled): the lowest-loss start is the true pairing (distortion
    0, POT's loss of it agrees); the entropic step keeps it; fused with a cost that points at the truth, too."""
    import ot

    rng = np.random.default_rng(0)
    centres = 6 * rng.normal(size=(6, 4))
    lab = rng.integers(0, 6, 90)
    a = centres[lab] + 0.3 * rng.normal(size=(90, 4))
    rot = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    perm = rng.permutation(90)
    b = a[perm] @ rot  # b[i] is a[perm[i]]
    ca, cb = cell_distances(a), cell_distances(b)
    np.testing.assert_allclose(cb, ca[np.ix_(perm, perm)], atol=1e-9)
    one = gromov_wasserstein(ca, cb, 0.0, 1, np.random.default_rng(1))
    many = gromov_wasserstein(ca, cb, 0.0, 20, np.random.default_rng(1))
    truth = np.zeros((90, 90))
    truth[perm, np.arange(90)] = 1 / 90
    print(f"\ndistortion: one start {one.distortion:.4f}, 20 starts {many.distortion:.2e} (start {many.start})")
    assert many.loss <= one.loss + 1e-15 and abs(many.distortion) < 1e-9
    np.testing.assert_allclose(many.coupling, truth, atol=1e-9)
    np.testing.assert_allclose(many.loss, ot.gromov.gwloss(*ot.gromov.init_matrix(ca, cb, ot.unif(90), ot.unif(90)),
                                                           many.coupling), atol=1e-12)
    # the entropic step keeps the marginals and spreads mass only within the true partner's cluster
    soft = gromov_wasserstein(ca, cb, 5e-3, 20, np.random.default_rng(1))
    np.testing.assert_allclose(soft.coupling.sum(1), 1 / 90, atol=1e-7)
    assert soft.coupling[lab[:, None] == lab[perm][None, :]].sum() > 0.99
    # fused: a feature cost that is 0 on the true pairs
    cost = cell_distances(np.vstack([a, a[perm]]))[:90, 90:]
    fused = gromov_wasserstein(ca, cb, 0.0, 1, np.random.default_rng(1), feature_cost=cost, alpha=0.5)
    assert (fused.coupling.argmax(0) == perm).all()
    with pytest.raises(InputError, match="epsilon"):
        gromov_wasserstein(ca, cb, -1.0, 1, rng)
    with pytest.raises(InputError, match="metric"):
        cell_distances(a, "manhattan")


def test_cosine_distances_ignore_magnitude():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6))
    scaled = x * rng.uniform(0.5, 3, size=(30, 1))
    np.testing.assert_allclose(cell_distances(scaled, "cosine"), cell_distances(x, "cosine"), atol=1e-12)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = cdist(u, u)
    np.testing.assert_allclose(cell_distances(x, "cosine"), d / d.max(), atol=1e-12)


def test_geodesic_distances_follow_the_graph_and_stay_finite_across_clusters():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + [30, 0], rng.normal(size=(40, 2)) + [90, 0]])
    g = geodesic_distances(x, 5)
    assert np.isfinite(g).all() and g.max() == 1.0 and np.allclose(g, g.T) and np.all(np.diag(g) == 0)
    # clusters keep their order: the far cluster is further from the first than the middle one
    assert g[:40, 80:].min() > g[:40, 40:80].max()
    # a nearest-neighbour edge is its own shortest path, and no path is shorter than the straight line
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(1)
    np.fill_diagonal(d, 0)
    scale = d[np.arange(120), nn] / g[np.arange(120), nn]
    np.testing.assert_allclose(scale, scale[0], rtol=1e-9)
    assert np.all(d <= g * scale[0] + 1e-9)


def test_stratified_sample_keeps_a_rare_population():
    rng = np.random.default_rng(2)
    x = np.vstack([rng.normal(size=(5000, 3)), rng.normal(size=(25, 3)) + 50])  # 0.5% rare cells
    rare = np.zeros(len(x), bool)
    rare[5000:] = True
    idx = stratified_sample(x, 200, np.random.default_rng(0), n_strata=10)
    assert len(idx) == 200 and len(np.unique(idx)) == 200 and np.all(np.diff(idx) > 0)
    assert rare[idx].sum() >= 5  # uniform draws would give 1 on average
    other = stratified_sample(x, 200, np.random.default_rng(1), exclude=idx)
    assert not set(other) & set(idx)


def test_alignment_quality_is_high_for_the_truth_and_near_zero_for_a_random_alignment():
    rng = np.random.default_rng(3)
    centres = 8 * rng.normal(size=(6, 5))
    lab = rng.integers(0, 6, 300)
    z = centres[lab] + rng.normal(size=(300, 5))
    a, b = z @ rng.normal(size=(5, 12)), z @ rng.normal(size=(5, 7))  # one latent, two feature spaces
    ga, gb = geodesic_distances(a, 15), geodesic_distances(b, 15)
    truth = alignment_quality(z, z, ga, gb)
    shuffled = alignment_quality(z, z[rng.permutation(300)], ga, gb)
    swapped = alignment_quality(z, centres[(lab + 1) % 6] + rng.normal(size=(300, 5)), ga, gb)
    print(f"\nquality: truth {truth:.3f}, shuffled {shuffled:.3f}, clusters swapped {swapped:.3f}")
    assert truth > 0.6 and abs(shuffled) < 0.1 and swapped < truth - 0.3  # noisy geodesics: truth is not 1


def test_transport_memory_is_bounded_by_the_transport_sample_not_by_n():
    """tracemalloc peak of the transport step: x10 cells in, same transport sample -> same peak; x2 sample -> ~x4."""
    import tracemalloc

    def peak(n_cells: int, n_ot: int) -> int:
        rng = np.random.default_rng(4)
        a, b = rng.normal(size=(n_cells, 10)), rng.normal(size=(n_cells, 8))
        tracemalloc.start()
        ia, ib = stratified_sample(a, n_ot, rng), stratified_sample(b, n_ot, rng)
        gromov_wasserstein(cell_distances(a[ia]), cell_distances(b[ib]), 0.0, 1, rng)
        out = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out

    base, more_cells, bigger = peak(3_000, 150), peak(30_000, 150), peak(3_000, 300)
    print(f"\npeak MiB: N=3000 n=150 {base / 2**20:.2f}, N=30000 n=150 {more_cells / 2**20:.2f}, "
          f"N=3000 n=300 {bigger / 2**20:.2f}")
    assert more_cells < 1.25 * base
    assert 2.5 * base < bigger < 5 * base


def test_unreliable_alignment_warns(tmp_path):
    """Two modalities of pure noise: nothing to align; the quality says so and learn() warns."""
    rng = np.random.default_rng(7)
    a = _store(tmp_path, "a", rng.poisson(5, (400, 20)), [f"A{i}" for i in range(20)])
    b = _store(tmp_path, "b", rng.poisson(5, (400, 15)), [f"B{i}" for i in range(15)])
    settings = BLIND | {"n_iter": 1, "min_correlation": -1.0, "quality_cells": 80, "ot_samples": 2}
    with pytest.warns(UnreliableAlignmentWarning, match="unreliable"):
        res = learn(a, b, None, settings=settings)
    assert not res.reliable and "UNRELIABLE" in res.summary()


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

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blind = learn(rna, adt, None, settings=BLIND, seed=0)  # no link at all: transport between the geometries
    print(blind.summary())
    assert blind.initial == "transport" and blind.history[0].matched_on == "transport"
    assert len(blind.candidates) == 2  # one sample x (euclidean, cosine): the least distorted geometry is kept
    assert blind.distortion == pytest.approx(min(c.distortion for c in blind.candidates), abs=1e-4)
    assert blind.quality == pytest.approx(min(blind.candidates, key=lambda c: c.distortion).quality, abs=1e-4)
    swapped = LearnedLinks("adt", "rna", blind.target_features, blind.source_features,
                           LinkProjection(blind.projection.target, blind.projection.source,
                                          blind.projection.target_offset, blind.projection.source_offset),
                           blind.components, blind.correlations, blind.heldout_correlations, blind.target_loadings,
                           blind.source_loadings, blind.history, blind.initial, blind.settings)
    auroc_blind = _partner_auroc(swapped, truth)
    fos_blind = _cca_foscttm(swapped, x_adt, x_rna)
    print(f"no table: partner AUROC {auroc_blind:.3f}, canonical-space FOSCTTM {fos_blind:.3f}, "
          f"agreement {blind.agreement:.3f}")
    # never silently wrong: a result no better than chance must come with the unreliable-alignment warning
    warned = any(issubclass(w.category, UnreliableAlignmentWarning) for w in caught)
    assert warned == (not blind.reliable)
    assert (auroc_blind > 0.6 and fos_blind < 0.4) or warned

    # the learned table: each protein's best gene is the argmax of the dense association
    table = from_weak.feature_links(top=1).table
    score = from_weak.source_loadings @ (from_weak.target_loadings * np.clip(from_weak.heldout_correlations, 0, None)).T
    best = dict(zip(from_weak.source_features, np.asarray(from_weak.target_features)[score.argmax(1)]))
    assert len(table) > 0 and all(best[s] == t for s, t in zip(table["source_feature"], table["target_feature"]))


def test_weak_links_fuse_into_the_transport(atlas, truth, weak):
    """first_pivots="transport" with a weak table: fused GW (geometry + the 5 markers' distances) gives the pivots."""
    adt, rna = _streams(atlas)
    fused = learn(adt, rna, weak, settings=BLIND | {"first_pivots": "transport", "n_iter": 1}, seed=0)
    print("\n" + fused.summary())
    assert fused.initial == "fused transport" and fused.history[0].matched_on == "fused transport"
    fos = _cca_foscttm(fused, _all_rows(adt), _all_rows(rna))
    print(f"fused transport: canonical-space FOSCTTM {fos:.3f}")
    assert fos < 0.3 or not fused.reliable


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
    with pytest.raises(InputError, match="ot_epsilon.*one value"):
        learn(adt, rna, weak, settings={"ot_epsilon": [1e-3, 1e-2]})


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
    config.write_text("[model]\nn_top_features = 300\nhidden = 32\nbatch_size = 128\n[model.learn]\nn_cells = 500\nn_iter = 1\n"
                      "ot_cells = 200\not_neighbors = 15\not_epsilon = 0.01\not_starts = 1\n")
    base = ["fit", "--modality", f"rna={atlas['rna']}", "--modality", f"adt={atlas['adt']}", "--config", str(config),
            "--max-steps", "2", "--device", "cpu"]
    assert main([*base, "--links", "learn", "--out", str(tmp_path / "blind")]) == 0
    out = capsys.readouterr().out
    assert "learned links rna -> adt" in out and "first pivots from transport" in out
    assert (tmp_path / "blind" / LEARNED_DIR / "rna__adt.npz").exists()
    assert main([*base, "--links", str(atlas["links"]), "--links-augment", "learn", "--out", str(tmp_path / "aug")]) == 0
    out = capsys.readouterr().out
    assert "links adt -> rna: 40 linked features" in out and "first pivots from links" in out
    assert (tmp_path / "aug" / LEARNED_DIR / "adt__rna.npz").exists()


def _fit_foscttm(inputs, links, tmp_path, name, steps) -> float:
    model = SCMODAL(inputs, links=links, config=SMALL | {"learn": BLIND | {"n_iter": 1}}, seed=0)
    model.fit(steps, run_dir=tmp_path / name, progress=False)
    paths = model.embed(progress=False)
    z = np.vstack([read_embedding(paths["adt"]), read_embedding(paths["rna"])])
    n = len(z) // 2
    return foscttm(z, np.r_[["adt"] * n, ["rna"] * n], np.r_[np.arange(n), np.arange(n)])["adt|rna"]["foscttm"]


@pytest.mark.slow  # two scMODAL fits plus the transport: ~80 s on one core
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


def test_cite_seq_with_names_hidden_meets_the_target(tmp_path):
    """Real CITE-seq, learned links only (names play no part): the learned canonical space beats a random table by
    0.1 FOSCTTM and comes within 0.1 of the real antibody table."""
    from cellweave.data import write_zarr
    from cellweave.data.readers.h5 import H5adSource
    from cellweave.links import protein_to_gene

    from .conftest import CITE_SEQ, require_shared

    path = require_shared(CITE_SEQ)
    rna_store = write_zarr(H5adSource(path, modality="rna"), tmp_path / "rna.zarr")
    adt_store = write_zarr(H5adSource(path, modality="adt", obsm_key="protein_expression", names_key="protein_names"),
                           tmp_path / "adt.zarr")
    rna = CellStream(open_modality(rna_store), 512, shuffle=False, preprocess=Preprocess(n_top_genes=2000, scale=True),
                     rank=0, world_size=1)
    adt = CellStream(open_modality(adt_store), 512, shuffle=False, preprocess=Preprocess(scale=True), rank=0,
                     world_size=1)
    x_rna, x_adt = _all_rows(rna), _all_rows(adt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = learn(rna, adt, None, settings={"n_cells": 200, "quality_cells": 50})
    warned = any(issubclass(w.category, UnreliableAlignmentWarning) for w in caught)
    p = res.projection

    def fos(a, b):
        n = len(a)
        return foscttm(np.vstack([a, b]), np.r_[["a"] * n, ["b"] * n], np.r_[np.arange(n), np.arange(n)])["a|b"]["foscttm"]

    def z(x):
        sd = x.std(0)
        return (x - x.mean(0)) / np.where(sd > 0, sd, 1)

    learned = fos(x_rna @ p.source + p.source_offset, x_adt @ p.target + p.target_offset)
    cols, W = protein_to_gene(adt.reader.feature_names, rna.reader.feature_names, None, "adt", "rna").to_matrix(
        adt.reader.feature_names, rna.reader.feature_names, sparse=False)
    real = fos(z(x_adt[:, cols]), z(x_rna @ np.asarray(W).T))
    rng = np.random.default_rng(0)
    random = np.mean([fos(z(x_adt[:, cols]), z(x_rna[:, rng.choice(x_rna.shape[1], len(cols))])) for _ in range(5)])
    print(f"\nCITE-seq FOSCTTM: learned only {learned:.3f} (quality {res.quality:.3f}, agreement {res.agreement:.3f}, "
          f"warned {warned}), real table {real:.3f}, random table {random:.3f}")
    assert real < random - 0.2  # the references themselves are sound
    assert warned == (not res.reliable)
    assert learned < random - 0.1 and learned < real + 0.1


def _names_hidden(root, n_cells: int, n_genes: int, n_proteins: int, settings: dict, seed: int):
    """learn(rna -> adt, no links) on a simulated atlas of twins; FOSCTTM and ADT <- RNA label transfer (kNN 15) in
    the learned space, the result and whether it warned."""
    import anndata as ad
    from sklearn.neighbors import KNeighborsClassifier

    paths = simulate_atlas(root, n_cells, modalities=("rna", "adt"), n_genes=n_genes, n_proteins=n_proteins, seed=seed,
                           progress=False)
    adt, rna = _streams(paths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = learn(rna, adt, None, settings=settings, seed=seed)
    warned = any(issubclass(w.category, UnreliableAlignmentWarning) for w in caught)
    obs = {m: ad.read_zarr(paths[m]).obs for m in ("rna", "adt")}
    assert (obs["rna"]["pair_id"].to_numpy() == obs["adt"]["pair_id"].to_numpy()).all()  # twins in the same rows
    p = res.projection
    zr, za = _all_rows(rna) @ p.source + p.source_offset, _all_rows(adt) @ p.target + p.target_offset
    n = len(zr)
    fos = foscttm(np.vstack([za, zr]), np.r_[["adt"] * n, ["rna"] * n], np.r_[np.arange(n), np.arange(n)])["adt|rna"]["foscttm"]
    acc = float((KNeighborsClassifier(15).fit(zr, obs["rna"]["cell_type"].astype(str))
                 .predict(za) == obs["adt"]["cell_type"].astype(str).to_numpy()).mean())
    print(f"\nseed {seed}: FOSCTTM {fos:.3f}, label transfer {acc:.3f}, quality {res.quality:.3f}, "
          f"agreement {res.agreement:.3f}, distortion {res.distortion:.3f}, warned {warned}")
    return fos, acc, res, warned


def test_simulated_rna_adt_names_hidden_meets_the_target_fast(tmp_path):
    """One small atlas (800 twins, 300 genes, 30 proteins), 200 transport cells, 2 samples: the issue's target."""
    settings = {"ot_cells": 200, "ot_starts": 10, "ot_samples": 2, "quality_cells": 150, "n_iter": 2}
    fos, acc, res, warned = _names_hidden(tmp_path / "atlas", 800, 300, 30, settings, seed=0)
    assert fos < 0.25 and acc > 0.8 and not warned and res.reliable


@pytest.mark.slow  # three 1,500-cell atlases, 3 transport samples x 2 metrics of 400 cells: ~2 min each on one core
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_simulated_rna_adt_names_hidden_meets_the_target(tmp_path, seed):
    """Learned links only (default settings), RNA vs ADT twins: FOSCTTM < 0.25 and label transfer > 0.8 in the
    learned space, without the unreliable-alignment warning."""
    fos, acc, _, warned = _names_hidden(tmp_path / "atlas", 1500, 600, 40, {}, seed)
    assert fos < 0.25 and acc > 0.8 and not warned
