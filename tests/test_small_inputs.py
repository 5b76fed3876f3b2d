"""Small and degenerate inputs: the Seurat-v3 LOESS trend is singular on a few dozen real cells; the highly variable
features then come from a polynomial trend, with a warning, and `cellweave fit --method factvae` on 50 real cells
trains instead of dying with a LOESS traceback."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellweave.cli import main
from cellweave.data import InMemorySource, open_modality, write_zarr
from cellweave.data.preprocess import compute_stats, highly_variable_features
from cellweave.simulate import AtlasSimulator, SimulationConfig

from .conftest import CITE_SEQ, require_shared

pytestmark = pytest.mark.usefixtures("one_thread")
N_CELLS = 50


@pytest.fixture(scope="module")
def real_rna(tmp_path_factory) -> Path:
    """The first 50 real CITE-seq cells' RNA counts (genes seen in at least one of them)."""
    a = ad.read_h5ad(require_shared(CITE_SEQ))[:N_CELLS]
    X = sp.csr_matrix(a.X, dtype=np.float32)
    seen = np.asarray((X > 0).sum(0)).ravel() > 0
    src = InMemorySource("cite", "rna", pd.DataFrame(index=a.obs_names), pd.DataFrame(index=a.var_names[seen]),
                         X[:, seen], kind="counts")
    return write_zarr(src, tmp_path_factory.mktemp("small") / "rna.zarr")


def seurat_v3_dense(X: np.ndarray, degree: int = 2) -> np.ndarray:
    """Seurat v3's normalized variance on a dense matrix, with a least-squares polynomial trend (the reference)."""
    mean, var = X.mean(0), X.var(0, ddof=1)
    ok = var > 0
    trend = np.zeros(X.shape[1])
    x, y = np.log10(mean[ok]), np.log10(var[ok])
    trend[ok] = np.polyval(np.polyfit(x, y, degree), x)
    sd = np.sqrt(10**trend)
    clipped = np.minimum(X, mean + sd * np.sqrt(len(X)))
    out = ((clipped - mean) ** 2).sum(0) / ((len(X) - 1) * sd**2)
    out[~ok] = 0
    return out


def test_a_singular_loess_trend_falls_back_with_a_warning(real_rna):
    store = open_modality(real_rna)
    with pytest.warns(UserWarning, match=r"LOESS mean-variance trend .* failed .* degree-2 polynomial trend"):
        stats = highly_variable_features(store, compute_stats(store))
    X = store.read_X([(0, store.n_obs)]).toarray().astype(np.float64)
    np.testing.assert_allclose(stats.hvg_variance, seurat_v3_dense(X), rtol=1e-6, atol=1e-9)
    top = set(stats.hvg(50))
    assert {"S100A8", "S100A9", "LYZ"} <= top  # monocyte markers lead, as in any PBMC ranking


def test_factvae_fits_on_50_real_cells(real_rna, tmp_path, capsys):
    sim = AtlasSimulator(SimulationConfig(n_cells=N_CELLS, modalities=("rna", "atac"), paired=True, n_genes=300,
                                          n_peaks=600, seed=0))
    atac = sim.source("atac")
    cells = open_modality(real_rna).all_obs_names()
    atac = InMemorySource("sim atac", "atac", atac.obs.set_axis(cells), atac.var, sp.csr_matrix(next(atac.iter_chunks(N_CELLS))[1]),
                          kind="counts")
    atac_path = write_zarr(atac, tmp_path / "atac.zarr")
    genes = set(open_modality(real_rna).var_names)
    peaks = list(atac.var.index)
    links = tmp_path / "links.tsv"
    linked = [g for g in sorted(genes) if g.startswith(("S100", "LYZ", "CD", "HLA"))][:40]
    links.write_text("gene\tpeak\n" + "".join(f"{g}\t{peaks[i % len(peaks)]}\n" for i, g in enumerate(linked)))
    config = tmp_path / "run.toml"
    config.write_text("[model]\nrna_hidden = [16]\natac_hidden = [16]\nn_latent = 4\nbatch_size = 25\nn_components = 10\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fit", "--method", "factvae", "--modality", f"rna={real_rna}", "--modality", f"atac={atac_path}",
                     "--links", str(links), "--config", str(config), "--max-steps", "2", "--device", "cpu",
                     "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err[-3000:]
    assert (tmp_path / "run" / "embeddings" / "rna.zarr").is_dir()
