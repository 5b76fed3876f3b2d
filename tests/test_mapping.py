"""Features aligned by name on every re-read, query mapping (`cellweave map`, `model.map_query`) and the per-run SOMA
obsm key: permuted genes give the same embedding bit for bit for all four models, missing genes are filled with a
warning (and beat a raw-zero fill), too few are refused, and scMRDR maps an unseen batch the scArches way without
touching the reference."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import KNeighborsClassifier

from cellweave.cli import main
from cellweave.data import InMemorySource, compute_stats, open_modality, write_zarr
from cellweave.data.align import FeatureRecord, align_store
from cellweave.errors import InputError
from cellweave.models import CVQVAE, SCMRDR, FactVAE, read_embedding
from cellweave.models.mapping import read_labels
from cellweave.simulate import simulate_atlas

from .conftest import load_script

pytestmark = pytest.mark.usefixtures("one_thread")

SCMODAL_TOML = "[model]\nn_top_features = 200\nhidden = 128\nbatch_size = 256\n"


def _rewrite(path, out, columns=None, rows=None, zero=None):
    """A copy of the store at ``path`` with its features reordered/subset (``columns``: names), cells subset
    (``rows``: a boolean function of obs) or the named features set to zero (``zero``)."""
    s = open_modality(path)
    X = s.read_X([(0, s.n_obs)])
    obs = pd.DataFrame({k: s.obs_column(k).to_numpy() for k in s.obs_keys}, index=s.all_obs_names())
    names = pd.Index(s.var_names)
    if zero is not None:
        X = X.tolil()
        X[:, names.get_indexer(zero)] = 0
        X = X.tocsr()
        X.eliminate_zeros()
    X = X.tocsr() if sp.issparse(X) else np.asarray(X)
    keep = np.flatnonzero(rows(obs)) if rows is not None else np.arange(s.n_obs)
    cols = names.get_indexer(columns) if columns is not None else np.arange(len(names))
    src = InMemorySource(out.stem, s.modality, obs.iloc[keep], pd.DataFrame(index=names[cols]), X[keep][:, cols],
                         kind=s.kind)
    return write_zarr(src, out)


def _foscttm(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of cells closer to a cell's ``a`` row than its own ``b`` row (0: every cell found its twin)."""
    d = pairwise_distances(a, b)
    own = np.diag(d)
    return float(((d < own[:, None]).mean() + (d < own[None, :]).mean()) / 2)


# ----------------------------------------------------------------------------- scMODAL through the CLI
@pytest.fixture(scope="module")
def scmodal_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("map")
    atlas = simulate_atlas(root / "atlas", 600, modalities=("rna", "adt"), n_genes=400, n_proteins=30, seed=1,
                           progress=False)
    (root / "run.toml").write_text(SCMODAL_TOML)
    args = ["fit", "--method", "scmodal", "--modality", f"rna={atlas['rna']}", "--modality", f"adt={atlas['adt']}",
            "--links", str(atlas["links"]), "--config", str(root / "run.toml"), "--max-steps", "12", "--device", "cpu",
            "--out", str(root / "run")]
    assert main(args) == 0
    return root, atlas


def test_the_run_records_features_and_statistics(scmodal_run):
    root, atlas = scmodal_run
    record = FeatureRecord.load(root / "run" / "features" / "rna.npz")
    store = open_modality(atlas["rna"])
    assert record.var_names == list(store.var_names) and record.kind == "counts"
    assert len(record.used) == 200 and set(record.used) <= set(record.var_names)
    assert record.stats is not None and record.stats.hvg_rank is not None
    fresh = compute_stats(store)  # the statistics the model scaled with, recomputed independently
    np.testing.assert_array_equal(record.stats.log_mean, fresh.log_mean)
    np.testing.assert_array_equal(record.stats.log_var, fresh.log_var)


def test_map_of_the_training_cells_lands_where_fit_put_them_even_with_permuted_genes(scmodal_run, capsys):
    root, atlas = scmodal_run
    fitted = read_embedding(root / "run" / "embeddings" / "rna.zarr")
    genes = open_modality(atlas["rna"]).var_names
    permuted = _rewrite(atlas["rna"], root / "permuted.zarr", columns=genes[np.random.default_rng(0).permutation(len(genes))])
    for name, path in (("same", atlas["rna"]), ("permuted", permuted)):
        assert main(["map", "--run", str(root / "run"), "--modality", f"rna={path}", "--out", str(root / name),
                     "--label-key", "cell_type"]) == 0
        np.testing.assert_array_equal(read_embedding(root / name / "embeddings" / "rna.zarr"), fitted)
        labels = read_labels(root / name / "labels" / "rna.tsv")
        assert len(labels) == len(fitted) and labels["confidence"].between(0, 1).all()
    out = capsys.readouterr().out
    assert "cell_type transferred to 600 cells" in out
    assert main(["map", "--run", str(root / "run"), "--modality", f"rna={permuted}", "--out", str(root / "same")]) == 2


def test_resume_reads_permuted_genes_aligned_and_the_api_refuses_unaligned_ones(scmodal_run):
    import shutil

    from cellweave.models import SCMODAL

    root, atlas = scmodal_run
    genes = open_modality(atlas["rna"]).var_names
    permuted = _rewrite(atlas["rna"], root / "permuted_resume.zarr",
                        columns=genes[np.random.default_rng(5).permutation(len(genes))])
    out = {}
    for name, rna in (("same", atlas["rna"]), ("permuted", permuted)):
        run = root / f"resume_{name}"
        shutil.copytree(root / "run", run)
        assert main(["fit", "--resume", "--out", str(run), "--modality", f"rna={rna}", "--modality", f"adt={atlas['adt']}",
                     "--links", str(atlas["links"]), "--config", str(root / "run.toml"), "--max-steps", "14"]) == 0
        out[name] = read_embedding(run / "embeddings" / "adt.zarr")
    np.testing.assert_array_equal(out["same"], out["permuted"])
    model = SCMODAL({"rna": permuted, "adt": atlas["adt"]}, links=atlas["links"],
                    config={"n_top_features": 200, "hidden": 128, "batch_size": 256})
    with pytest.raises(InputError, match="differ from those the run recorded"):
        model.fit(16, run_dir=root / "resume_same", resume=True, progress=False)


def test_imputation_reads_a_permuted_store_aligned(scmodal_run):
    from cellweave.models import SCMODAL

    root, atlas = scmodal_run
    genes = open_modality(atlas["rna"]).var_names
    permuted = _rewrite(atlas["rna"], root / "permuted_impute.zarr",
                        columns=genes[np.random.default_rng(6).permutation(len(genes))])
    same = SCMODAL.from_run(root / "run").impute("rna", "adt", out=root / "impute_same.zarr")
    moved = SCMODAL.from_run(root / "run", modalities={"rna": permuted}).impute("rna", "adt", out=root / "impute_perm.zarr")
    a, b = ad.read_zarr(same), ad.read_zarr(moved)
    assert a.shape == (600, 30) and list(a.var_names) == list(b.var_names)
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))


def test_missing_genes_warn_and_are_filled_better_than_raw_zeros(scmodal_run):
    root, atlas = scmodal_run
    from cellweave.models import SCMODAL

    model = SCMODAL.from_run(root / "run")
    used = FeatureRecord.load(root / "run" / "features" / "rna.npz").used
    gone = list(np.random.default_rng(1).choice(used, int(0.3 * len(used)), replace=False))
    genes = open_modality(atlas["rna"]).var_names
    dropped = _rewrite(atlas["rna"], root / "dropped.zarr", columns=[g for g in genes if g not in set(gone)])
    zeroed = _rewrite(atlas["rna"], root / "zeroed.zarr", zero=gone)
    with pytest.warns(UserWarning, match=r"30\.0% of the 200 features .* are missing"):
        filled = read_embedding(model.map_query({"rna": dropped}, root / "dropped_out", progress=False)["rna"])
    naive = read_embedding(model.map_query({"rna": zeroed}, root / "zeroed_out", progress=False)["rna"])
    full = read_embedding(root / "run" / "embeddings" / "rna.zarr")
    assert np.isfinite(filled).all()
    # every cell's embedding stays near its full-gene embedding, nearer than when the genes are read as zeros
    assert _foscttm(filled, full) < 0.05
    assert _foscttm(filled, full) < _foscttm(naive, full)


def test_too_few_features_are_refused_in_one_line(scmodal_run, capsys):
    root, atlas = scmodal_run
    used = FeatureRecord.load(root / "run" / "features" / "rna.npz").used
    gone = set(np.random.default_rng(2).choice(used, int(0.6 * len(used)), replace=False))
    genes = open_modality(atlas["rna"]).var_names
    few = _rewrite(atlas["rna"], root / "few.zarr", columns=[g for g in genes if g not in gone])
    assert main(["map", "--run", str(root / "run"), "--modality", f"rna={few}", "--out", str(root / "few_out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("cellweave: error")]) == 1
    assert "has 80 of the 200 features" in err[0] and "40%" in err[0] and "at least 50%" in err[0]
    assert not (root / "few_out" / "embeddings").exists()


def test_a_store_of_another_kind_or_modality_is_refused(scmodal_run):
    root, atlas = scmodal_run
    from cellweave.models import SCMODAL

    model = SCMODAL.from_run(root / "run")
    with pytest.raises(InputError, match="not a modality of the model"):
        model.map_query({"atac": atlas["rna"]}, root / "bad", progress=False)
    record = FeatureRecord.load(root / "run" / "features" / "adt.npz")
    record.kind = "normalized"
    with pytest.raises(InputError, match="trained on normalized"):
        align_store(open_modality(atlas["adt"]), record)


# ----------------------------------------------------------------------------- every model: permutations are exact
@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    return root, simulate_atlas(root / "atlas", 400, modalities=("rna", "atac", "adt"), paired=True, n_genes=300,
                                n_proteins=20, n_peaks=600, seed=3, progress=False)


MODELS = {
    "scmrdr": lambda a: SCMRDR({"rna": a["rna"], "adt": a["adt"]}, batch_key="batch",
                               config={"n_top_features": 150, "hidden": [64], "batch_size": 128}),
    "cvqvae": lambda a: CVQVAE({"rna": a["rna"], "atac": a["atac"]}, batch_key="batch",
                               config={"hidden": [64], "batch_size": 128, "n_components": 12, "n_top_genes": 150,
                                       "n_codes": 64}),
    "factvae": lambda a: FactVAE({"rna": a["rna"], "atac": a["atac"]}, links=a["gene_peak_links"],
                                 config={"n_top_genes": 150, "rna_hidden": [64], "atac_hidden": [32], "n_latent": 8,
                                         "batch_size": 128}),
}


@pytest.mark.parametrize("method", list(MODELS))
def test_every_model_embeds_permuted_features_bit_for_bit(paired, method):
    root, atlas = paired
    model = MODELS[method](atlas)
    run = root / f"run_{method}"
    model.fit(3, run_dir=run, progress=False)
    again = type(model).from_run(run)
    assert again.input_features("rna") == model.input_features("rna")
    genes = open_modality(atlas["rna"]).var_names
    permuted = _rewrite(atlas["rna"], root / f"perm_{method}.zarr",
                        columns=genes[np.random.default_rng(4).permutation(len(genes))])
    a = read_embedding(again.map_query({"rna": atlas["rna"]}, root / f"{method}_same", progress=False)["rna"])
    b = read_embedding(again.map_query({"rna": permuted}, root / f"{method}_perm", progress=False)["rna"])
    np.testing.assert_array_equal(a, b)
    rebuilt = type(model).from_run(run, modalities={"rna": permuted})  # a run rebuilt on the permuted store
    c = read_embedding(rebuilt.embed(root / f"{method}_rebuilt", modalities=["rna"], progress=False)["rna"])
    np.testing.assert_array_equal(a, c)


# ----------------------------------------------------------------------------- scMRDR: an unseen batch
def _scmrdr_atlas(root, n_cells, n_genes=500):
    atlas = simulate_atlas(root / "atlas", n_cells, modalities=("rna", "adt"), n_genes=n_genes, n_proteins=30, n_batches=3,
                           seed=2, progress=False)
    seen = lambda obs: obs["batch"].astype(str) != "batch2"  # noqa: E731
    ref = {m: _rewrite(atlas[m], root / f"ref_{m}.zarr", rows=seen) for m in ("rna", "adt")}
    query = _rewrite(atlas["rna"], root / "query_rna.zarr", rows=lambda obs: ~seen(obs))
    return atlas, ref, query


def _batch2_accuracy_when_trained_on_it(atlas, root, steps, config):
    model = SCMRDR({m: atlas[m] for m in ("rna", "adt")}, batch_key="batch", config=config)
    model.fit(steps, progress=False)
    a = ad.read_zarr(model.embed(root / "all", progress=False)["rna"])
    z, y, b = a.obsm["X_cellweave"], a.obs["cell_type"].astype(str).to_numpy(), a.obs["batch"].astype(str).to_numpy()
    knn = KNeighborsClassifier(30).fit(z[b != "batch2"], y[b != "batch2"])
    return float((knn.predict(z[b == "batch2"]) == y[b == "batch2"]).mean())


def _map_unseen_batch(root, ref, query, steps, query_steps, config):
    model = SCMRDR(ref, batch_key="batch", config=config)
    model.fit(steps, run_dir=root / "ref", progress=False)
    before = read_embedding(model.embed(progress=False)["rna"])
    weights = {k: v.clone() for k, v in model.module.state_dict().items()}
    paths = model.map_query({"rna": query}, root / "query", batch_key="batch", label_key="cell_type",
                            max_steps=query_steps, progress=False)
    assert model.query_summary["new_batches"] == ["batch2"] and model.query_summary["steps"] == query_steps
    assert all(torch.equal(weights[k], v) for k, v in model.module.state_dict().items())
    assert float(model.query_batches.shared.detach().abs().sum()) > 0  # the new batch's parameters were fitted
    after = read_embedding(model.embed(root / "ref_again", progress=False)["rna"])
    np.testing.assert_array_equal(before, after)  # the reference cells are where they were
    mapped = ad.read_zarr(paths["rna"])
    assert (mapped.obs["batch"].astype(str) == "batch2").all()
    labels = model.query_labels["rna"]
    recorded = json.loads((root / "query" / "mapping.json").read_text())
    assert recorded["adaptation"]["new_batches"] == ["batch2"] and recorded["modalities"]["rna"]["features_present"] == 1.0
    again = SCMRDR.from_run(root / "ref")  # the saved parameters embed the batch's cells again, identically
    again.load_query_state(root / "query")
    mapped_again = again.map_query({"rna": query}, root / "query_again", batch_key="batch", max_steps=0, progress=False)
    np.testing.assert_array_equal(read_embedding(mapped_again["rna"]), read_embedding(paths["rna"]))
    return float((labels["predicted"] == labels["true"]).mean())


def test_scmrdr_maps_an_unseen_batch_leaving_the_reference_unchanged(tmp_path):
    config = {"n_top_features": 150, "hidden": [64], "batch_size": 128, "val_fraction": 0.0}
    atlas, ref, query = _scmrdr_atlas(tmp_path, 450, n_genes=250)
    accuracy = _map_unseen_batch(tmp_path, ref, query, 60, 20, config)
    n_types = open_modality(atlas["rna"]).obs_column("cell_type").nunique()
    print(f"label transfer to the unseen batch: {accuracy:.3f} ({n_types} cell types)")
    assert accuracy > 2.0 / n_types  # well above chance


@pytest.mark.slow
def test_scmrdr_label_transfer_to_an_unseen_batch_nearly_matches_training_on_it(tmp_path):
    config = {"n_top_features": 300, "val_fraction": 0.0}
    atlas, ref, query = _scmrdr_atlas(tmp_path, 1500)
    mapped = _map_unseen_batch(tmp_path, ref, query, 400, 200, config)
    trained = _batch2_accuracy_when_trained_on_it(atlas, tmp_path, 400, config)
    print(f"label transfer to batch 2: mapped {mapped:.3f}, trained on it {trained:.3f}")
    assert mapped >= 0.9 * trained


# ----------------------------------------------------------------------------- SOMA: a key per run
def test_soma_embeddings_go_under_a_key_per_run(tmp_path, capsys):
    import tiledbsoma as soma

    atlas = simulate_atlas(tmp_path / "atlas", 300, modalities=("rna", "adt"), n_genes=200, n_proteins=20, fmt="soma",
                           seed=5, progress=False)
    (tmp_path / "run.toml").write_text(SCMODAL_TOML)
    for name in ("first", "second"):
        assert main(["fit", "--method", "scmodal", "--modality", f"rna={atlas['rna']}", "--modality", f"adt={atlas['adt']}",
                     "--links", str(atlas["links"]), "--config", str(tmp_path / "run.toml"), "--max-steps", "2",
                     "--seed", str(len(name)), "--device", "cpu", "--out", str(tmp_path / name)]) == 0
        assert f"rna: embedding written into SOMA obsm['X_cellweave_{name}']" in capsys.readouterr().out
        assert f'soma_obsm_key = "X_cellweave_{name}"' in (tmp_path / name / "config.toml").read_text()
    experiment, measurement = str(atlas["rna"]).split("::")
    with soma.Experiment.open(experiment) as exp:
        obsm = exp.ms[measurement]["obsm"]
        for name in ("first", "second"):
            table = obsm[f"X_cellweave_{name}"].read().tables().concat().to_pandas()
            values = table.pivot(index="soma_dim_0", columns="soma_dim_1", values="soma_data").sort_index().to_numpy()
            np.testing.assert_array_equal(values, read_embedding(tmp_path / name / "embeddings" / "rna.zarr"))


# ----------------------------------------------------------------------------- SOMA: aligned by feature id
def test_a_census_query_is_aligned_by_feature_id_with_missing_genes_empty(tmp_path):
    from pathlib import Path

    tool = load_script(Path(__file__).resolve().parents[1] / "tools" / "census_fixture.py")
    exp = tool.write_census_fixture(tmp_path / "census.soma", 300, n_genes=40, n_datasets=2, n_donors=2, chunk_rows=128)
    reference = open_modality(f"{exp}::RNA", layer="raw")  # names: feature_name, ids: feature_id
    record = FeatureRecord.of(reference)
    assert record.var_ids == list(reference.feature_ids)
    kept = list(reference.var_names[::-1][:30])  # 30 of the 40 genes, read by id (names are the ids here)
    query = open_modality(f"{exp}::RNA", layer="raw", feature_key="feature_id", var_filter=f"feature_name in {kept}")
    assert not set(query.var_names) & set(record.var_names)  # nothing to match by name
    with pytest.warns(UserWarning, match=r"25\.0% of the 40 features"):
        aligned = align_store(query, record)
    assert aligned.matched_by == "feature ids" and list(aligned.var_names) == record.var_names
    full = reference.read_X([(0, reference.n_obs)]).toarray()
    got = aligned.read_X([(0, aligned.n_obs)]).toarray()
    expected = np.where(np.isin(record.var_names, kept)[None, :], full, 0)
    np.testing.assert_array_equal(got, expected)
