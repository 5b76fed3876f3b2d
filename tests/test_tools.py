"""The maintainer scripts in tools/: re-chunking / pre-shuffling a store, and the benchmark tables."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellweave.data import InMemorySource, open_modality, write_zarr
from cellweave.errors import InputError

from .conftest import counts_source, load_script

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    return load_script(TOOLS / f"{name}.py")


@pytest.fixture(scope="module")
def rechunk():
    return _tool("rechunk")


def _read(path) -> ad.AnnData:
    return ad.read_zarr(path)


def test_shuffled_order_is_a_permutation_and_uniform(rechunk):
    n = 1000
    bucket, order = rechunk.shuffled_order(n, 100, seed=3)
    assert sorted(order.tolist()) == list(range(n))
    assert bucket.max() == 9 and np.bincount(bucket).min() > 50  # ~10 buckets of ~100 cells
    # each bucket is contiguous in the output
    assert (np.diff(bucket[order]) >= 0).all()
    # uniform: over many seeds, where input row 0 lands is spread over the whole output (chi-square on 10 bins)
    where = np.array([np.flatnonzero(rechunk.shuffled_order(200, 40, seed=s)[1] == 0)[0] for s in range(2000)])
    counts = np.bincount(where // 20, minlength=10)
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001
    assert np.array_equal(rechunk.shuffled_order(n, 100, 3)[1], order)  # the seed decides the order


def test_rechunk_copy_keeps_cells_features_and_values(rechunk, tmp_path):
    src = counts_source(900, 40, seed=1)
    src.var["gene_ids"] = [f"ENSG{i:05d}" for i in range(40)]
    store = write_zarr(src, tmp_path / "in.zarr", chunk_rows=128)
    out = rechunk.rechunk(str(store), tmp_path / "out.zarr", chunk_rows=100, progress=False)
    a = _read(out)
    assert list(a.obs_names) == list(src.obs.index)
    assert list(a.var["gene_ids"]) == list(src.var["gene_ids"])  # var columns survive, not only the names
    assert (a.X != src.X).nnz == 0
    assert list(a.obs["cell_type"]) == list(src.obs["cell_type"])


@pytest.mark.parametrize("dense", [False, True])
def test_rechunk_shuffle_is_the_same_cells_in_the_planned_order(rechunk, tmp_path, dense):
    src = counts_source(1500, 30, seed=2)
    if dense:
        src = InMemorySource(src.name, "adt", src.obs, src.var, src.X.toarray(), kind="counts")
    store = write_zarr(src, tmp_path / "in.zarr")
    out = rechunk.rechunk(str(store), tmp_path / "out.zarr", shuffle=True, seed=7, chunk_rows=128, bucket_cells=400,
                          progress=False)
    a = _read(out)
    _, order = rechunk.shuffled_order(1500, 400, 7)
    assert list(a.obs_names) == list(src.obs.index[order])  # cell ids follow their rows
    X = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    expected = src.X[order]
    np.testing.assert_array_equal(X, expected.toarray() if sp.issparse(expected) else expected)
    assert list(a.obs["batch"]) == list(src.obs["batch"].to_numpy()[order])
    assert not np.array_equal(order, np.arange(1500))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("in.zarr", "out.zarr")]
    assert leftovers == []  # the bucket part files are gone
    assert open_modality(out).n_obs == 1500  # the output streams


def test_rechunk_soma_output_and_refusals(rechunk, tmp_path):
    src = counts_source(300, 20, seed=4)
    store = write_zarr(src, tmp_path / "in.zarr")
    out = rechunk.rechunk(str(store), tmp_path / "out.soma", fmt="soma", shuffle=True, seed=1, bucket_cells=100,
                          progress=False)
    soma = open_modality(f"{out}::rna")
    _, order = rechunk.shuffled_order(300, 100, 1)
    assert list(soma.all_obs_names()) == list(src.obs.index[order])
    got = soma.read_X([(0, 300)])
    np.testing.assert_array_equal(got.toarray(), src.X[order].toarray())
    with pytest.raises(InputError, match="exists"):
        rechunk.rechunk(str(store), out, fmt="soma", progress=False)
    with pytest.raises(InputError):
        rechunk.rechunk(str(tmp_path / "missing.zarr"), tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_rechunk_failure_leaves_no_output(rechunk, tmp_path, monkeypatch):
    store = write_zarr(counts_source(500, 20, seed=5), tmp_path / "in.zarr")

    def broken(self, folder):
        raise OSError("disk full")

    monkeypatch.setattr(rechunk.RechunkSource, "_load_bucket", broken)
    with pytest.raises(OSError, match="disk full"):
        rechunk.rechunk(str(store), tmp_path / "out.zarr", shuffle=True, bucket_cells=100, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


# ---- tools/bench_tables.py -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_tables():
    return _tool("bench_tables")


def _results(folder: Path) -> Path:
    folder.mkdir()
    stage = {"peak_rss_mb": 1000.4, "peak_pss_mb": 900.0, "wall_s": 12.0}
    fit = stage | {"setup_s": 3.0, "steps": 100, "steps_per_s": 2.5, "embed_s": 4.0, "embed_cells_per_s": 5000.0}
    for n, scale in ((10_000, 1), (100_000, 10)):
        doc = {"cells_per_modality": n, "cpus": 2, "device": "cpu", "threads": 2,
               "stages": {"simulate": {k: v * scale for k, v in stage.items()}, "fit_scmodal": fit,
                          "evaluate_scmodal": stage | {"overall": 0.5, "foscttm": 0.25, "label_transfer_knn": 0.75}}}
        (folder / f"atlas-{n // 1000}k.json").write_text(json.dumps(doc))
    train = {"method": "cvqvae", "cells_per_modality": 100_000, "ratio_steps_per_s": 0.5, "ratio_peak_rss": 2.0,
             "cases": {"stream": {"steps_per_s": 2.0, "peak_rss_mb": 2000.0, "peak_pss_mb": 1800.0, "setup_s": 10.0,
                                  "embed_cells_per_s": 1234.0},
                       "inmemory": {"steps_per_s": 4.0, "peak_rss_mb": 1000.0, "peak_pss_mb": 900.0, "setup_s": 1.0}}}
    (folder / "train-cvqvae-100k.json").write_text(json.dumps(train))
    (folder / "other.json").write_text(json.dumps({"unrelated": True}))
    return folder


def test_bench_tables_from_result_files(bench_tables, tmp_path):
    results = bench_tables.load_results(_results(tmp_path / "results"))
    assert [d["cells_per_modality"] for d in results["atlas"]] == [10_000, 100_000]  # sorted by cells, not name
    generated = bench_tables.tables(results)
    assert sorted(generated) == ["atlas", "atlas-100k", "atlas-10k", "train"]
    assert "| 100,000 | simulate | 120 | 10,004 | 9,000 | 2 |  |  |" in generated["atlas"]
    assert "| 10,000 | evaluate_scmodal | 12 | 1,000 | 900 | 2 |  | overall 0.500, FOSCTTM 0.250 |" in generated["atlas"]
    assert "| cvqvae | 100,000 | stream | 2 | 2,000 | 1,800 | 10 | 1,234 | steps/s x0.50, peak RSS x2.00 |" in generated["train"]
    assert "| fit_scmodal | 12 | 1,000 | 900 | setup 3 s, 100 steps at 2.50 steps/s, embed 4 s (5,000 cells/s) |" \
        in generated["atlas-10k"]


def test_bench_tables_update_rewrites_only_marked_tables(bench_tables, tmp_path):
    folder = _results(tmp_path / "results")
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nhand-written text | kept\n\n<!-- bench_tables: train -->\n| stale |\n<!-- /bench_tables -->\n"
                  "\nmore text\n")
    assert bench_tables.main(["--results", str(folder), "--check", str(md)]) == 1
    assert bench_tables.main(["--results", str(folder), "--update", str(md), "--plots", str(tmp_path / "plots")]) == 0
    text = md.read_text()
    assert "| stale |" not in text and "hand-written text | kept" in text and text.endswith("\nmore text\n")
    assert "| cvqvae | 100,000 | inmemory | 4 |" in text
    assert bench_tables.main(["--results", str(folder), "--check", str(md)]) == 0
    for name in ("atlas.png", "train.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md.write_text("<!-- bench_tables: atlas-3m -->\n<!-- /bench_tables -->\n")
    with pytest.raises(SystemExit, match="atlas-3m"):
        bench_tables.main(["--results", str(folder), "--update", str(md)])


def test_bench_tables_reproduce_the_recorded_atlas_tables(bench_tables):
    """The tables regenerated from the repository's result files are the ones recorded by hand in RESULTS.md."""
    results = bench_tables.load_results(TOOLS.parent / "bench" / "results")
    recorded = (TOOLS.parent / "bench" / "RESULTS.md").read_text()
    generated = bench_tables.tables(results)
    lines = recorded.splitlines()
    for name in ("atlas-10k", "atlas-30k", "atlas-100k", "atlas-1m"):
        rows = generated[name].splitlines()[2:]
        assert len(rows) == 6, name
        for row in rows:
            cells = row.split(" | ")
            stage, figures = cells[0].lstrip("| "), " | ".join(cells[1:4])  # wall s, peak RSS, peak PSS
            assert any(line.startswith(f"| {stage}") and f" | {figures} | " in line for line in lines), (name, row)
