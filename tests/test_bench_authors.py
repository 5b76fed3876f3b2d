"""bench/authors.py and bench/authors_run.py: the authors' own scMRDR beside cellweave's (issue 21 item 3).

The authors' code (github.com/sjl-sjtu/scMRDR) is not part of the repository. The test that runs it needs
``CELLWEAVE_AUTHORS_SCMRDR`` (a checkout of their repository, or the folder holding their ``scMRDR`` package) and
optionally ``CELLWEAVE_AUTHORS_PYTHON`` (a Python with their dependencies; default: this one), and is skipped with
the reason otherwise. The other tests check the wiring and the inputs without their code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from cellweave.simulate import simulate_atlas

from .conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    return load_script(BENCH / f"{name}.py")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # bench scripts import their siblings (`measure`, `authors`)
    try:
        yield argparse.Namespace(authors=_load("authors"), train=_load("train"))
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors") / "sim"
    simulate_atlas(root, 240, modalities=("rna", "adt", "atac"), n_genes=300, n_proteins=30, n_peaks=1200, seed=3,
                   progress=False)
    return root


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def test_scmrdr_inputs_lay_each_modality_on_the_union_genes(bench, atlas):
    """RNA counts by gene name, ATAC peaks summed per gene over the link table, each protein at its first coding
    gene; zeros elsewhere; every union column is reconstructed by some modality; masks name the right genes."""
    inputs, _ = bench.authors.read_scmrdr_inputs(atlas)
    data = {m: ad.read_zarr(atlas / f"{m}.zarr") for m in ("rna", "adt", "atac")}
    x, mod, union = inputs["x"].astype(np.float64), inputs["modality"], list(inputs["features"])
    n = {m: data[m].n_obs for m in data}
    assert list(mod) == ["rna"] * n["rna"] + ["atac"] * n["atac"] + ["adt"] * n["adt"]
    np.testing.assert_array_equal(inputs["batch"], np.concatenate([data[m].obs["batch"].astype(str) for m in ("rna", "atac", "adt")]))
    # RNA: its counts under the gene names, nothing where it has no gene
    R = _dense(data["rna"].X)
    genes = list(map(str, data["rna"].var_names))
    expected = np.zeros((n["rna"], len(union)))
    for j, g in enumerate(union):
        if g in genes:
            expected[:, j] = R[:, genes.index(g)]
    np.testing.assert_array_equal(x[mod == "rna"], expected)
    # ATAC: gene activity from the link table (gene -> peaks), summed here with pandas
    links = bench.authors.scmrdr_links(data, atlas / "genes.bed")[("rna", "atac")].table
    A = _dense(data["atac"].X)
    peaks = {p: i for i, p in enumerate(map(str, data["atac"].var_names))}
    gas = x[mod == "atac"]
    linked = set(links["source_feature"])
    checked = 0
    for j, g in enumerate(union):
        rows = links[links["source_feature"] == g]
        want = sum(A[:, peaks[p]] * w for p, w in zip(rows["target_feature"], rows.get("weight", np.ones(len(rows)))))
        if g in linked:
            np.testing.assert_allclose(gas[:, j], want, rtol=1e-5)
            checked += 1
        else:
            assert not gas[:, j].any()
    assert checked > 10
    # ADT: each protein's counts at its first coding gene, under its own name when an earlier protein took that gene
    P = _dense(data["adt"].X)
    table = bench.authors.scmrdr_links(data, atlas / "genes.bed")[("adt", "rna")].table
    names = []
    for p in map(str, data["adt"].var_names):
        gene = table.loc[table["source_feature"] == p, "target_feature"]
        names.append(str(gene.iloc[0]) if len(gene) and str(gene.iloc[0]) not in names else p)
    at = [union.index(name) for name in names]
    assert len(set(at)) == len(at) and sum(a != b for a, b in zip(names, data["adt"].var_names)) > 10
    np.testing.assert_array_equal(x[mod == "adt"][:, at], P)
    assert np.array_equal(np.sort(inputs["mask_adt"]), np.sort(at))
    assert not np.delete(x[mod == "adt"], at, axis=1).any()
    # masks: RNA and ATAC on genes they measure; together they cover every column
    for m in ("rna", "atac"):
        assert x[mod == m][:, inputs[f"mask_{m}"]].sum(0).min() > 0
    covered = np.concatenate([inputs[f"mask_{m}"] for m in ("rna", "atac", "adt")])
    assert set(covered) == set(range(len(union)))
    assert 0 < len(inputs["mask_rna"]) < len(genes)
    # the control with every RNA gene: the RNA masked on all its genes, the other modalities as before
    full = bench.authors.scmrdr_inputs(data["rna"], data["adt"], data["atac"],
                                       bench.authors.scmrdr_links(data, atlas / "genes.bed"), all_rna_genes=True)
    assert sorted(full["features"][full["mask_rna"]]) == sorted(genes)
    assert sorted(full["features"][full["mask_atac"]]) == sorted(inputs["features"][inputs["mask_atac"]])


def test_authors_baseline_is_skipped_with_its_reason(bench, tmp_path):
    args = argparse.Namespace(method="scmrdr", authors_path=str(tmp_path / "absent"), authors_python=sys.executable,
                              warmup=1, steps=2, threads=1)
    assert "no scMRDR/__init__.py under" in bench.train.authors_case(args, tmp_path, tmp_path)
    assert "wired for scmodal and scmrdr only" in bench.train.authors_case(
        argparse.Namespace(**vars(args) | {"method": "cvqvae"}), tmp_path, tmp_path)
    package = tmp_path / "checkout" / "src" / "scMRDR"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('their dependencies are missing')\n")
    assert bench.authors.find_package(tmp_path / "checkout", "scMRDR") == (package.parent, "")
    assert "their dependencies are missing" in bench.train.authors_case(
        argparse.Namespace(**vars(args) | {"authors_path": str(tmp_path / "checkout")}), tmp_path, tmp_path)


@pytest.mark.slow  # two runs of their loop (four DataLoader workers spawned per epoch): ~35 s on a loaded core
def test_authors_scmrdr_runs_unchanged_and_is_only_observed(bench, atlas, tmp_path):
    """Their loop runs on the inputs; reading the latents out at step 2 leaves step 4 exactly as without it."""
    where = os.environ.get("CELLWEAVE_AUTHORS_SCMRDR")
    if not where:
        pytest.skip("the authors' scMRDR is not here: set CELLWEAVE_AUTHORS_SCMRDR to a checkout of "
                    "github.com/sjl-sjtu/scMRDR (and CELLWEAVE_AUTHORS_PYTHON to a Python with its dependencies)")
    python = os.environ.get("CELLWEAVE_AUTHORS_PYTHON", sys.executable)
    code, why = bench.authors.find_package(where, "scMRDR")
    why = why or bench.authors.usable_python(python, code, "scMRDR")
    if why:
        pytest.skip(f"the authors' scMRDR cannot run: {why}")
    inputs, obs = bench.authors.read_scmrdr_inputs(atlas)
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for name, steps in (("observed", ["2", "4"]), ("plain", ["4"])):
        out = tmp_path / f"{name}.npz"
        subprocess.run([python, str(BENCH / "authors_run.py"), "--method", "scmrdr", "--code", str(code), "--inputs",
                        str(tmp_path / "inputs.npz"), "--steps", *steps, "--seed", "1", "--threads", "1",
                        "--model-path", str(tmp_path / "model"), "--out", str(out)], check=True, env=env,
                       capture_output=True)
        runs[name] = dict(np.load(out))
    observed, plain = runs["observed"], runs["plain"]
    assert len(observed["step_times"]) == 4 and int(observed["steps_per_epoch"]) == (3 * 240 - 72) // 384
    for m in ("rna", "atac", "adt"):
        assert observed[f"latent_4_{m}"].shape == (240, 20) and np.isfinite(observed[f"latent_4_{m}"]).all()
        np.testing.assert_array_equal(observed[f"latent_4_{m}"], plain[f"latent_4_{m}"])
        assert not np.allclose(observed[f"latent_2_{m}"], observed[f"latent_4_{m}"])
    row = bench.authors.score(observed["latent_4_rna"], observed["latent_4_adt"], obs["rna"]["pair_id"],
                              obs["adt"]["pair_id"], obs["rna"]["cell_type"], obs["adt"]["cell_type"])
    assert 0 <= row["foscttm"] <= 1 and 0 <= row["label_transfer"] <= 1
