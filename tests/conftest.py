"""Shared fixtures: small stores written to tmp dirs, and the path of the real data in ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellweave.data import InMemorySource, write_zarr

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CITE_SEQ = SHARED_DATA / "pbmc_10k_protein_v3.h5ad"


def load_script(path: Path, name: str | None = None):
    """Import a script of the repository (bench/, tools/) that is not part of the package, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_shared(path: Path) -> Path:
    """Skip the calling test with a reason when a file of ../shared/data is absent (users do not have it)."""
    if not path.exists():
        pytest.skip(f"{path} is absent: the real-data test needs the project's ../shared/data checkout")
    return path


def counts_source(n_cells: int, n_genes: int, seed: int = 0, prefix: str = "c", modality: str = "rna",
                  density: float = 0.1) -> InMemorySource:
    """Random sparse counts with batch and label columns."""
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_genes, density=density, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.integers(1, 20, k)).astype(np.float32)
    obs = pd.DataFrame(
        {"batch": rng.choice(["b0", "b1"], n_cells), "cell_type": rng.choice(["T", "B", "NK"], n_cells)},
        index=[f"{prefix}{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return InMemorySource(f"<{modality} in memory>", modality, obs, var, X, kind="counts")


def tiny_pair(root: Path, n_rna: int = 120, n_adt: int = 80) -> dict[str, Path]:
    """A small RNA (30 genes) + ADT (8 proteins) pair of Zarr counts stores under ``root``, an identity links
    table (protein ``g<j>`` -> gene ``g<j>``) and a small scMODAL config: inputs for fast end-to-end commands."""
    links = root / "links.tsv"
    links.write_text("source_modality\tsource_feature\ttarget_modality\ttarget_feature\n"
                     + "".join(f"adt\tg{j}\trna\tg{j}\n" for j in range(8)))
    config = root / "run.toml"
    config.write_text("[model]\nhidden = 16\nn_latent = 4\nbatch_size = 32\nd_steps = 1\nk = 5\n")
    return {"rna": write_zarr(counts_source(n_rna, 30, seed=0, density=0.3), root / "rna.zarr"),
            "adt": write_zarr(counts_source(n_adt, 8, seed=1, prefix="p", modality="adt", density=0.9), root / "adt.zarr"),
            "links": links, "config": config}


@pytest.fixture
def small_zarr(tmp_path):
    """A 10,000 x 120 counts store and its source."""
    src = counts_source(10_000, 120)
    return write_zarr(src, tmp_path / "rna.zarr"), src


@pytest.fixture
def one_thread():
    """One torch thread for the test (modules opt in with ``pytestmark``): two threads on a loaded 2-core
    machine are many times slower than one."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
