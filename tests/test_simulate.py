"""The simulator: determinism, layout, and that its truth is visible in the data it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import nbinom, spearmanr
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from cellweave.data import open_modality, read_rows
from cellweave.errors import InputError
from cellweave.simulate import BLOCK_CELLS, AtlasSimulator, SimulationConfig, simulate_atlas, sparse_negative_binomial


def _matrix(source, chunk_rows):
    parts = [X for _, X in source.iter_chunks(chunk_rows)]
    return sp.vstack(parts).toarray() if source.sparse else np.vstack(parts)


def _lognorm(X):
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


@pytest.fixture(scope="module")
def sim():
    return AtlasSimulator(SimulationConfig(n_cells=3000, seed=3, n_genes=600, n_proteins=40, n_peaks=1500))


@pytest.fixture(scope="module")
def data(sim):
    return {m: _matrix(sim.source(m), 4096) for m in ("rna", "adt", "atac")}


def test_values_do_not_depend_on_chunk_size():
    sim = AtlasSimulator(SimulationConfig(n_cells=BLOCK_CELLS + 700, n_genes=300, n_proteins=20, n_peaks=400, seed=1))
    for m in ("rna", "adt"):
        a, b = _matrix(sim.source(m), 1000), _matrix(sim.source(m), 4096)
        assert a.shape == (BLOCK_CELLS + 700, sim.source(m).var.shape[0])
        np.testing.assert_array_equal(a, b)


def test_values_do_not_depend_on_workers(tmp_path):
    cfg = dict(n_genes=300, n_proteins=20, n_peaks=400, seed=2)
    sim = AtlasSimulator(SimulationConfig(n_cells=2 * BLOCK_CELLS + 300, **cfg))
    for m in ("rna", "adt", "atac"):
        np.testing.assert_array_equal(_matrix(sim.source(m, workers=3), 5000), _matrix(sim.source(m), 5000))
    with pytest.raises(InputError, match="workers must be >= 1"):
        simulate_atlas(tmp_path / "x", 10, workers=0, progress=False, **cfg)
    assert not (tmp_path / "x").exists()


def test_same_seed_same_atlas_and_other_seed_differs():
    cfg = dict(n_cells=500, n_genes=300, n_proteins=20, n_peaks=400)
    a = _matrix(AtlasSimulator(SimulationConfig(seed=5, **cfg)).source("rna"), 256)
    b = _matrix(AtlasSimulator(SimulationConfig(seed=5, **cfg)).source("rna"), 500)
    c = _matrix(AtlasSimulator(SimulationConfig(seed=6, **cfg)).source("rna"), 500)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("theta", [0.5, 5.0])
def test_sparse_negative_binomial_matches_scipy(theta):
    """The cluster (Poisson x logarithmic) sampler draws the negative binomial: mean, variance and pmf of scipy's."""
    mu = np.array([0.01, 0.1, 0.5, 2.0, 8.0], dtype=np.float32)
    counts = sparse_negative_binomial(np.random.default_rng(0), np.tile(mu, (200_000, 1)), theta).toarray()
    for j, m in enumerate(mu):
        ref = nbinom(theta, theta / (theta + m))
        x = counts[:, j]
        assert abs(x.mean() - ref.mean()) < 4 * np.sqrt(ref.var() / len(x)), (m, x.mean())
        assert x.var() == pytest.approx(ref.var(), rel=0.08), (m, x.var())
        for k in (0, 1, 2):
            assert abs((x == k).mean() - ref.pmf(k)) < 0.005, (m, k)


def test_obs_and_ids(sim):
    rna, adt = sim.source("rna").obs, sim.source("adt").obs
    assert list(rna.columns) == ["cell_type", "lineage", "batch", "pair_id"]
    assert rna.index[0] == "rna_0" and adt.index[0] == "adt_0"  # unpaired twins have their own ids
    assert (rna["pair_id"].to_numpy() == adt["pair_id"].to_numpy()).all()
    assert rna["cell_type"].nunique() == len(sim.types) and rna["batch"].nunique() == 2
    paired = AtlasSimulator(SimulationConfig(n_cells=100, paired=True, n_genes=300, n_proteins=20, n_peaks=300))
    assert (paired.obs("rna").index == paired.obs("atac").index).all()


def test_rna_looks_like_counts(data):
    X = data["rna"]
    assert np.array_equal(X, np.round(X)) and X.min() >= 0
    lib = X.sum(1)
    assert 1000 < np.median(lib) < 8000
    assert (X == 0).mean() > 0.4
    # overdispersion: variance well above the mean for expressed genes
    m, v = X.mean(0), X.var(0)
    expressed = m > 1
    assert np.median(v[expressed] / m[expressed]) > 1.5


def test_cell_types_and_batches_are_recoverable(sim, data):
    pcs = PCA(20, random_state=0).fit_transform(_lognorm(data["rna"]))
    obs = sim.source("rna").obs
    types = obs["cell_type"].cat.codes.to_numpy()
    acc = cross_val_score(KNeighborsClassifier(15), pcs, types, cv=3).mean()
    assert acc > 0.8, acc
    # batch effect present: batch is predictable far above chance (0.5)
    batch_acc = cross_val_score(LogisticRegression(max_iter=2000), pcs, obs["batch"].cat.codes.to_numpy(), cv=3).mean()
    assert batch_acc > 0.7, batch_acc


def test_protein_weakly_follows_its_coding_gene(sim, data):
    rna, adt = _lognorm(data["rna"]), np.log1p(data["adt"])
    rhos = []
    for p, genes in enumerate(sim.protein_genes):
        g = rna[:, genes].mean(1)
        if g.std() > 0:
            rhos.append(spearmanr(adt[:, p], g).statistic)
    med = float(np.median(rhos))
    assert 0.1 < med < 0.8, med
    links = sim.links_table()
    assert set(links["source_feature"]) == set(sim.proteins)
    assert set(links["target_feature"]) <= set(sim.gene_names)


def test_true_peaks_follow_their_gene(sim, data):
    rna, atac = _lognorm(data["rna"]), np.log1p(data["atac"])
    gp = sim.gene_peak
    gi = sim.gene_names.get_indexer(gp["gene"])
    pi = sim.peaks.get_indexer(gp["peak"])
    corr = np.array([np.corrcoef(rna[:, g], atac[:, p])[0, 1] if atac[:, p].std() > 0 and rna[:, g].std() > 0 else 0.0
                     for g, p in zip(gi, pi)])
    assert np.nanmean(corr[gp["true"].to_numpy()]) > np.nanmean(corr[~gp["true"].to_numpy()]) + 0.05


def test_prior_flag_matches_genomic_windows(sim):
    bed = sim.genes_bed.set_index("name")
    for _, row in sim.gene_peak.sample(300, random_state=0).iterrows():
        chrom, span = row["peak"].split(":")
        a, b = map(int, span.split("-"))
        g = bed.loc[row["gene"]]
        lo, hi = (g["start"] - 2000, g["end"]) if g["strand"] == "+" else (g["start"], g["end"] + 2000)
        assert (chrom == g["chrom"] and a < hi and b > lo) == bool(row["prior"])
    assert sim.gene_peak["prior"].mean() > 0.4 and (~sim.gene_peak["prior"]).sum() > 0


@pytest.mark.parametrize("fmt", ["zarr", "soma"])
def test_simulate_atlas_writes_stores_and_tables(tmp_path, fmt):
    paths = simulate_atlas(tmp_path / "atlas", 700, n_genes=300, n_proteins=20, n_peaks=400, fmt=fmt, chunk_rows=256,
                           progress=False, seed=2)
    sim = AtlasSimulator(SimulationConfig(n_cells=700, n_genes=300, n_proteins=20, n_peaks=400, seed=2))
    for m in ("rna", "adt", "atac"):
        store = open_modality(paths[m])
        assert store.n_obs == 700 and list(store.var_names) == list(sim.source(m).var.index)
        chunk = read_rows(store, np.arange(50, 120))
        X = chunk.X.toarray() if sp.issparse(chunk.X) else chunk.X
        np.testing.assert_array_equal(X, _matrix(sim.source(m), 700)[50:120])
    root = tmp_path / "atlas"
    meta = json.loads((root / "simulation.json").read_text())
    assert meta["n_cells"] == 700 and len(meta["cell_types"]) == len(sim.types)
    assert pd.read_csv(paths["links"], sep="\t").shape[0] >= 20
    assert pd.read_csv(paths["gene_peak_links"], sep="\t").columns.tolist() == ["gene", "peak", "kind", "prior", "true"]
    assert pd.read_csv(paths["genes_bed"], sep="\t", header=None).shape == (300, 6)
    with pytest.raises(InputError, match="already exists"):
        simulate_atlas(root, 10, n_genes=300, n_proteins=20, n_peaks=400, fmt=fmt, progress=False)


def test_bad_settings_leave_nothing(tmp_path):
    with pytest.raises(InputError, match="unknown modalities"):
        simulate_atlas(tmp_path / "x", 10, modalities=("rna", "protein"), progress=False)
    with pytest.raises(InputError, match="fewer proteins"):
        simulate_atlas(tmp_path / "x", 10, n_genes=100, n_proteins=5000, progress=False)
    with pytest.raises(InputError, match="format"):
        simulate_atlas(tmp_path / "x", 10, fmt="h5ad", progress=False)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_cli_simulate(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "cellweave", "simulate", "--cells", "300", "--modalities", "rna,adt", "--out",
                        str(out), "--paired", "--genes", "300", "--proteins", "20", "--seed", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "rna.zarr").is_dir() and (out / "adt.zarr").is_dir() and not (out / "atac.zarr").exists()
    assert list(open_modality(out / "rna.zarr").all_obs_names()) == list(open_modality(out / "adt.zarr").all_obs_names())


@pytest.mark.slow
def test_million_cells_peak_rss_under_2gib(tmp_path):
    code = (
        "import resource, sys; from cellweave.simulate import simulate_atlas; "
        f"simulate_atlas({str(tmp_path / 'big')!r}, 1_000_000, modalities=('rna',), n_genes=2000, progress=False, workers=2); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    peak_mib = int(r.stdout.split()[-1]) / 1024
    assert peak_mib < 2048, peak_mib
