"""scMRDR end to end on a simulated RNA + ATAC + protein atlas: the union feature space (vs dense numpy layouts),
integration against an unintegrated PCA, the paper's ablation pattern (Table 4), imputation, label transfer by kNN
and by minibatch optimal transport (vs an exact assignment), the CLI, and input errors."""

from __future__ import annotations

import tomllib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier

from cellweave.data import InMemorySource, open_modality, write_zarr
from cellweave.downstream.ot_transfer import minibatch_plans, ot_transfer, ot_vote
from cellweave.errors import InputError
from cellweave.evaluate import mixing_metric
from cellweave.links import gene_activity, read_links
from cellweave.models import SCMRDR, SCMRDRConfig
from cellweave.models.scmrdr import validation_split
from cellweave.simulate import simulate_atlas

MODALITIES = ("rna", "adt", "atac")
SMALL = {"n_top_features": 300}
STEPS = 600  # the fast tests; the ablation sweep trains the full length
SWEEP_STEPS = 1500
ABLATIONS = {"beta=1": {"beta": 1.0}, "lambda=0": {"lam": 0.0}, "gamma=0": {"gamma": 0.0}, "no mask": {"use_mask": False}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "atlas"
    return simulate_atlas(root, 1500, n_genes=600, n_proteins=40, n_peaks=1200, seed=1, progress=False)


def _model(atlas, seed: int = 0, **config) -> SCMRDR:
    return SCMRDR({m: atlas[m] for m in MODALITIES}, genes_bed=atlas["genes_bed"], batch_key="batch",
                  config=SMALL | config, seed=seed)


def _fit(atlas, out, steps: int = STEPS, seed: int = 0, run_dir: bool = False, **config) -> tuple[SCMRDR, dict]:
    """Train (no early stopping: every variant gets the same steps) and embed into ``out``; ``run_dir``: keep the run
    files in ``out`` (the trainer's loss plots cost seconds)."""
    model = _model(atlas, seed, **config)
    model.fit(steps, run_dir=out if run_dir else None, progress=False, early_stopping_patience=None, convergence=None)
    return model, model.embed(out / "embeddings", progress=False)


def _scores(paths: dict) -> dict[str, float]:
    """Label transfer from RNA (kNN, sklearn), cell-type silhouette (sklearn) and Seurat's mixing metric of z_u."""
    emb = {m: ad.read_zarr(p) for m, p in paths.items()}
    z = {m: a.obsm["X_cellweave"] for m, a in emb.items()}
    y = {m: a.obs["cell_type"].astype(str).to_numpy() for m, a in emb.items()}
    return _transfer(z, y) | {
        "label_asw": float(silhouette_score(np.vstack(list(z.values())), np.concatenate(list(y.values())))),
        "mixing": mixing_metric(np.vstack(list(z.values())), np.repeat(list(z), [len(v) for v in z.values()])),
    }


def _transfer(z: dict, y: dict) -> dict[str, float]:
    knn = KNeighborsClassifier(15).fit(z["rna"], y["rna"])
    acc = {f"transfer_{m}": float((knn.predict(z[m]) == y[m]).mean()) for m in ("adt", "atac")}
    return acc | {"transfer": float(np.mean(list(acc.values())))}


@pytest.fixture(scope="module")
def full(atlas, tmp_path_factory):
    model, paths = _fit(atlas, tmp_path_factory.mktemp("full") / "run", run_dir=True)
    return model, paths, _scores(paths)


# ----------------------------------------------------------------------------- the union feature space

def test_union_space_lays_out_genes_proteins_and_gene_activity(atlas):
    model = _model(atlas)
    rna, adt, atac = (open_modality(atlas[m]) for m in MODALITIES)
    space = model.space
    genes = pd.Index(space.features)
    # RNA: every union column by name (the union is its 300 HVGs plus the panel's coding genes)
    assert set(space.features) <= set(rna.var_names) and space.masks["rna"].all()
    protein_links = read_links(atlas["links"])[0].table
    assert set(protein_links["target_feature"]) <= set(space.features)
    assert space.masks["adt"].sum() == protein_links["target_feature"].nunique()

    def union_rows(m: str, n: int = 64) -> np.ndarray:
        return next(model.iter_batches(m, batch_size=n)).dense().numpy()

    def raw(store, n: int = 64) -> np.ndarray:
        X = store.read_X([(0, n)])
        return X.toarray() if hasattr(X, "toarray") else np.asarray(X)

    # ATAC: gene activity = the sum of each union gene's peaks (body + 2 kb promoter), by a dense reference
    table = gene_activity(list(atac.var_names), atlas["genes_bed"], list(rna.var_names)).table
    expected = np.zeros((64, len(genes)), dtype=np.float32)
    peaks = raw(atac)
    for gene, peak in zip(table["source_feature"], table["target_feature"]):
        if gene in genes:
            expected[:, genes.get_loc(gene)] += peaks[:, atac.var_names.get_loc(peak)]
    np.testing.assert_allclose(union_rows("atac"), expected, rtol=1e-6)
    assert np.array_equal(space.masks["atac"], np.isin(space.features, table["source_feature"]))

    # proteins: each protein's counts shared equally among its coding genes
    expected = np.zeros((64, len(genes)), dtype=np.float32)
    proteins = raw(adt)
    for protein, group in protein_links.groupby("source_feature"):
        for gene in group["target_feature"]:
            expected[:, genes.get_loc(gene)] += proteins[:, adt.var_names.get_loc(protein)] / len(group)
    np.testing.assert_allclose(union_rows("adt"), expected, rtol=1e-6)
    np.testing.assert_allclose(union_rows("rna"), raw(rna)[:, rna.var_names.get_indexer(genes)])


def test_validation_split_is_seeded_disjoint_and_a_tenth():
    train, val = validation_split(1500, 0.1, 0, "adt")
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1500
    assert abs(len(val) - 150) <= 16
    again, other = validation_split(1500, 0.1, 0, "adt")[1], validation_split(1500, 0.1, 1, "adt")[1]
    assert np.array_equal(val, again) and not np.array_equal(val, other)
    assert len(validation_split(1500, 0.0, 0, "adt")[1]) == 0


# ----------------------------------------------------------------------------- integration

def test_full_model_beats_unintegrated_pca_and_writes_both_latents(atlas, full):
    model, paths, scores = full
    emb = ad.read_zarr(paths["atac"])
    assert emb.obsm["X_cellweave"].shape == (1500, 20) and emb.obsm["X_cellweave_specific"].shape == (1500, 20)
    assert emb.obs_names[0] == "atac_0" and "cell_type" in emb.obs
    val = [r["val_loss"] for r in model.result.history if "val_loss" in r]
    assert len(val) > 10 and np.isfinite(val).all() and model.result.best_val_loss == min(val)
    config = tomllib.loads((model.run_dir / "config.toml").read_text())
    assert config["method"] == "scmrdr" and config["batches"] == ["batch0", "batch1"]
    assert config["validation_cells"]["adt"] == 144 and config["features"]["adt"]["measured"] == 41

    # unintegrated baseline: joint PCA of the log-normalised union matrices
    x = {m: torch.cat([b.dense() for b in model.iter_batches(m)]).numpy() for m in MODALITIES}
    logn = [np.log1p(v / v.sum(1, keepdims=True) * 1e4) for v in x.values()]
    pcs = np.split(PCA(20, random_state=0).fit_transform(np.vstack(logn)), [1500, 3000])
    y = {m: ad.read_zarr(paths[m]).obs["cell_type"].astype(str).to_numpy() for m in MODALITIES}
    baseline = _transfer(dict(zip(MODALITIES, pcs)), y)
    print("scMRDR", scores, "\nunintegrated PCA", baseline)
    assert scores["transfer"] > baseline["transfer"] + 0.2, (scores, baseline)
    assert scores["transfer_adt"] > baseline["transfer_adt"] + 0.3 and scores["transfer_atac"] > baseline["transfer_atac"]


def test_without_the_mask_a_small_protein_panel_integrates_worse(atlas, full, tmp_path):
    """At the fast tests' training length (seed 0); the slow sweep shows the spread over seeds."""
    _, _, scores = full
    _, paths = _fit(atlas, tmp_path / "run", use_mask=False)
    ablated = _scores(paths)
    print("full", scores, "\nno mask", ablated)
    assert scores["transfer_adt"] > ablated["transfer_adt"] + 0.1 and scores["label_asw"] > ablated["label_asw"]
    assert scores["mixing"] < ablated["mixing"]


SEED_1_MISALIGNS = pytest.mark.xfail(strict=True, reason=(
    "measured: at seed 1 the full model maps several protein-panel cell types onto the wrong RNA types (RNA -> ADT "
    "transfer 0.68 vs 0.97 at seeds 0 and 2); beta=1 (0.79) and the unmasked loss (0.87) do better there"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=SEED_1_MISALIGNS), 2])
def test_ablation_pattern_of_table_4(atlas, tmp_path, seed):
    """Each ablation loses on what the paper's Table 4 says it should: beta=1 and gamma=0 on label preservation,
    lambda=0 on modality mixing, the unmasked loss on both (label transfer and mixing)."""
    scores = {"full": _scores(_fit(atlas, tmp_path / "full", SWEEP_STEPS, seed)[1])}
    for name, change in ABLATIONS.items():
        scores[name] = _scores(_fit(atlas, tmp_path / name, SWEEP_STEPS, seed, **change)[1])
    print(pd.DataFrame(scores).T.round(3).to_string())
    full_ = scores["full"]
    for name in ("beta=1", "gamma=0", "no mask"):
        assert full_["transfer"] > scores[name]["transfer"], name
    for name in ("lambda=0", "no mask"):
        assert full_["mixing"] < scores[name]["mixing"], name


# ----------------------------------------------------------------------------- outputs

def test_imputed_proteins_follow_the_cell_type(atlas, full, tmp_path):
    model, paths, _ = full
    out = model.impute("rna", "adt", target_batch="batch0")
    imp = ad.read_zarr(out)
    assert imp.shape == (1500, 41) and list(imp.var_names) == model.space.measured("adt")
    assert np.allclose(imp.X.sum(1), 1e4, rtol=1e-4)  # expected counts over the panel at library size 1e4
    measured = torch.cat([b.dense() for b in model.iter_batches("adt")]).numpy()[:, model.space.masks["adt"]]
    measured = np.log1p(measured / measured.sum(1, keepdims=True) * 1e4)
    obs = {m: ad.read_zarr(paths[m]).obs for m in ("rna", "adt")}
    y = {m: o["cell_type"].astype(str).to_numpy() for m, o in obs.items()}
    types = sorted(set(y["rna"]))
    lineage = obs["rna"].groupby("cell_type", observed=True)["lineage"].first().astype(str)[types].to_numpy()
    corr = np.array([[np.corrcoef(np.log1p(imp.X[y["rna"] == a]).mean(0), measured[y["adt"] == b].mean(0))[0, 1]
                      for b in types] for a in types])
    # subtypes of a lineage share most of their panel: the best-matching measured profile is of the same lineage,
    # and a type's own profile matches clearly better than the others on average. Two types of 14 may miss their
    # lineage: which depends on the seed and the float summation order of training (measured, 1 thread: 13 with
    # Adam's multi-tensor kernel, 12 / 14 / 14 with the fused kernel for seeds 0 / 1 / 2; rare types matched to a
    # neighbouring lineage); an imputation that ignored the cell type would match about a quarter of them (4 lineages
    # of 2-5 types).
    matched = lineage[corr.argmax(1)] == lineage
    assert matched.sum() >= len(types) - 2, pd.DataFrame(corr, types, types).round(2)
    assert np.diag(corr).mean() > corr[~np.eye(len(types), dtype=bool)].mean() + 0.3, corr
    with pytest.raises(InputError, match="measures"):
        model.impute("rna", "adt", features=[model.space.features[-1], "NOTAGENE"], out=tmp_path / "x.zarr")
    with pytest.raises(InputError, match="unknown batch"):
        model.impute("rna", "adt", target_batch="batch9", out=tmp_path / "y.zarr")


def test_label_transfer_by_knn_and_by_minibatch_optimal_transport(full):
    model, _, scores = full
    knn = model.transfer_labels("rna", "atac", "cell_type", k=15)
    ot = model.transfer_labels("rna", "atac", "cell_type", method="ot", batch_size=256, n_rounds=5)
    acc = {name: float((t["predicted"] == t["true"]).mean()) for name, t in (("knn", knn), ("ot", ot))}
    print("label transfer rna -> atac", acc)
    assert abs(acc["knn"] - scores["transfer_atac"]) < 0.03 and acc["ot"] > 0.8
    assert ot.index[0] == "atac_0" and ot["confidence"].between(0, 1).all()


def test_minibatch_ot_matches_an_exact_assignment_and_never_exceeds_the_minibatch():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(60, 4))
    query = reference[rng.permutation(60)] + rng.normal(scale=0.3, size=(60, 4))
    labels = rng.integers(0, 5, 60)
    # one minibatch holding every cell: exact OT with uniform weights is the optimal assignment
    rows, cols = linear_sum_assignment(((query[:, None] - reference[None]) ** 2).sum(-1))
    pred, conf = ot_vote(reference, labels, query, batch_size=60, n_rounds=1)
    assert np.array_equal(pred[rows], labels[cols]) and np.allclose(conf, 1)
    coords = rng.normal(size=(60, 2))
    np.testing.assert_allclose(ot_transfer(reference, coords, query, batch_size=60, n_rounds=1)[rows], coords[cols])
    # minibatches: plans of at most 16 x 16, every query cell met once per round, total mass 1 per round
    plans = list(minibatch_plans(reference, query, batch_size=16, n_rounds=3, reg=0.05))
    assert max(p.shape[0] for _, _, p in plans) <= 16 and max(p.shape[1] for _, _, p in plans) <= 16
    met = np.concatenate([q for q, _, _ in plans])
    assert np.array_equal(np.bincount(met), np.full(60, 3))
    assert np.isclose(sum(p.sum() for _, _, p in plans), 3 * 60 / 16, rtol=0.2)


# ----------------------------------------------------------------------------- CLI, config, determinism

def test_cli_fit_with_ablation_config_writes_both_latents(atlas, tmp_path):
    from cellweave.cli import main

    config = tmp_path / "run.toml"
    config.write_text("[model]\nn_top_features = 300\nuse_mask = false\nbeta = 1.0\nbatch_size = 64\n")
    out = tmp_path / "run"
    args = ["fit", "--method", "scmrdr", *(x for m in MODALITIES for x in ("--modality", f"{m}={atlas[m]}")),
            "--genes-bed", str(atlas["genes_bed"]), "--batch-key", "batch", "--config", str(config),
            "--max-steps", "3", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    for m in MODALITIES:
        emb = ad.read_zarr(out / "embeddings" / f"{m}.zarr")
        assert emb.obsm["X_cellweave"].shape == (1500, 20) and emb.obsm["X_cellweave_specific"].shape == (1500, 20)
    written = tomllib.loads((out / "config.toml").read_text())
    assert written["method"] == "scmrdr" and written["model"]["use_mask"] is False and written["model"]["beta"] == 1.0
    assert written["batch_key"] == "batch" and written["train"]["max_steps"] == 3


def test_config_refuses_unknown_keys_and_bad_values():
    with pytest.raises(InputError, match="lamda"):
        SCMRDRConfig.from_dict({"lamda": 0.0})
    with pytest.raises(InputError, match="likelihood"):
        SCMRDRConfig.from_dict({"count_likelihood": "poisson"})
    with pytest.raises(InputError, match="val_fraction"):
        SCMRDRConfig.from_dict({"val_fraction": 1.0})
    assert SCMRDRConfig.from_dict({"hidden": [64, 32], "use_mask": False}).hidden == (64, 32)


def test_resume_and_seed_give_the_same_embedding(atlas, tmp_path):
    def embedding(model: SCMRDR, out) -> np.ndarray:
        return ad.read_zarr(model.embed(out, modalities=["adt"], progress=False)["adt"]).obsm["X_cellweave"]

    full = _model(atlas, seed=3)
    full.fit(16, progress=False)
    part = _model(atlas, seed=3)
    part.fit(8, run_dir=tmp_path / "part", progress=False)
    part.fit(16, run_dir=tmp_path / "part", progress=False, resume=True)
    other = _model(atlas, seed=4)
    other.fit(16, progress=False)
    a = embedding(full, tmp_path / "full")
    np.testing.assert_array_equal(a, embedding(part, tmp_path / "part_emb"))
    assert not np.allclose(a, embedding(other, tmp_path / "other"))


# ----------------------------------------------------------------------------- input errors

def _store(tmp_path, name: str, var_names, obs: pd.DataFrame | None = None, n: int = 40):
    X = np.random.default_rng(0).poisson(3, (n, len(var_names))).astype(np.float32)
    obs = pd.DataFrame(index=[f"{name}_{i}" for i in range(n)]) if obs is None else obs
    return write_zarr(InMemorySource(name, name, obs, pd.DataFrame(index=list(var_names)), X, kind="counts"),
                      tmp_path / f"{name}.zarr")


def test_a_modality_overlapping_nothing_is_refused(atlas, tmp_path):
    adt = _store(tmp_path, "adt", [f"NOTAPROTEIN{i}" for i in range(5)])
    with pytest.raises(InputError, match=r"adt\.zarr.*none of modality 'adt'.*union feature space"):
        SCMRDR({"rna": atlas["rna"], "adt": adt}, config=SMALL)
    gex = _store(tmp_path, "gex", [f"OTHERGENE{i}" for i in range(5)])
    with pytest.raises(InputError, match=r"gex\.zarr: var_names: modalities \[.rna., .gex.\].*none that another"):
        SCMRDR({"rna": atlas["rna"], "gex": gex}, kinds={"gex": "rna"}, config=SMALL)


def test_a_batch_key_missing_from_one_modality_is_refused(atlas, tmp_path):
    adt = _store(tmp_path, "adt", ["CD3", "CD4", "CD19"], obs=pd.DataFrame({"sample": "s1"}, index=[f"a{i}" for i in range(40)]))
    with pytest.raises(InputError, match=r"adt\.zarr: obs\['batch'\]: modality 'adt' has no batch column 'batch'"):
        SCMRDR({"rna": atlas["rna"], "adt": adt}, batch_key="batch", config=SMALL)


def test_normalised_values_with_a_count_likelihood_are_refused(atlas, tmp_path):
    X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    src = InMemorySource("adt", "adt", pd.DataFrame(index=[f"a{i}" for i in range(40)]),
                         pd.DataFrame(index=["CD3", "CD4", "CD19"]), X, kind="normalized")
    adt = write_zarr(src, tmp_path / "adt.zarr")
    with pytest.raises(InputError, match="needs counts"):
        SCMRDR({"rna": atlas["rna"], "adt": adt}, config=SMALL | {"likelihoods": {"adt": "zinb"}})
    model = SCMRDR({"rna": atlas["rna"], "adt": adt}, config=SMALL)
    assert model.likelihoods == {"rna": "zinb", "adt": "gaussian"}
