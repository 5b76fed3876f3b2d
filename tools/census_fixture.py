"""Write a local TileDB-SOMA experiment in the CELLxGENE Census schema, from cellweave's simulator.

The layout is that of one Census organism experiment (``census_data["homo_sapiens"]``), at a size of your choice:

* ``obs``: ``soma_joinid``, ``dataset_id``, ``assay``, ``cell_type``, ``donor_id``, ``is_primary_data``, ``sex``,
  ``suspension_type``, ``tissue``, ``tissue_general``, ``raw_sum``, ``nnz``, ``n_measured_vars`` (no ``obs_id``:
  Census cells are known by their joinid). Text columns are dictionary-encoded, as in Census.
* ``ms["RNA"].var``: ``soma_joinid``, ``feature_id`` (Ensembl-like ids), ``feature_name`` (the simulator's gene
  names), ``feature_length``, ``nnz``, ``n_measured_obs``.
* ``ms["RNA"].X["raw"]`` (float32 counts) and ``ms["RNA"].X["normalized"]`` (each cell's counts over its total,
  Census' library-size normalisation), default tiledbsoma tiling.

Cells come dataset by dataset and, within a dataset, donor by donor (as Census appends whole datasets). Each
dataset is one simulated batch (its own batch effect); each donor has one tissue; every other dataset is a
re-submission of cells published elsewhere (``is_primary_data == False``), as Census has. The query
``tissue_general == 'lung' and is_primary_data == True`` selects about 10% of the cells with the defaults.

    python tools/census_fixture.py OUT.soma --cells 200000 [--genes 2000] [--datasets 8] [--donors 4] [--seed 0]

Values are generated and written chunk by chunk: memory does not grow with the number of cells.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
import tiledbsoma as soma

from cellweave.data.atomic import atomic_output
from cellweave.data.soma_store import SparseWriter
from cellweave.simulate import AtlasSimulator, SimulationConfig

MEASUREMENT = "RNA"
LAYERS = ("raw", "normalized")
#: (tissue_general, tissue) of the donors, in turn.
TISSUES = [("blood", "blood"), ("lung", "lower lobe of left lung"), ("brain", "cerebral cortex"),
           ("kidney", "kidney"), ("liver", "liver")]
ASSAYS = ["10x 3' v3", "10x 3' v2", "10x 5' v1", "Smart-seq2"]
LUNG_QUERY = "tissue_general == 'lung' and is_primary_data == True"


def _layout(n_cells: int, n_datasets: int, n_donors: int) -> pd.DataFrame:
    """Dataset, donor and tissue of every cell (contiguous datasets, contiguous donors within each)."""
    dataset = np.arange(n_cells) * n_datasets // n_cells
    start = np.searchsorted(dataset, np.arange(n_datasets))
    size = np.diff(np.append(start, n_cells))
    within = np.arange(n_cells) - start[dataset]
    donor = dataset * n_donors + within * n_donors // size[dataset]
    tissue = donor % len(TISSUES)
    ids = [f"{(d * 2654435761) % 16**8:08x}-census-{d:04d}" for d in range(n_datasets)]
    return pd.DataFrame({
        "dataset_id": pd.Categorical.from_codes(dataset, ids),
        "assay": pd.Categorical.from_codes(dataset % len(ASSAYS), ASSAYS),
        "donor_id": pd.Categorical.from_codes(donor, [f"donor_{k}" for k in range(n_datasets * n_donors)]),
        "is_primary_data": dataset % 2 == 0,
        "sex": pd.Categorical.from_codes(donor % 2, ["female", "male"]),
        "suspension_type": pd.Categorical.from_codes((dataset % len(ASSAYS) == 3).astype(int), ["cell", "nucleus"]),
        "tissue": pd.Categorical.from_codes(tissue, [t for _, t in TISSUES]),
        "tissue_general": pd.Categorical.from_codes(tissue, [g for g, _ in TISSUES]),
    })


def _create_dataframe(uri: str, table: pa.Table, context: soma.SOMATileDBContext) -> soma.DataFrame:
    return soma.DataFrame.create(uri, schema=table.schema, domain=[(0, table.num_rows - 1)], context=context)


def _table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)


def write_census_fixture(out: str | Path, n_cells: int, n_genes: int = 2000, n_datasets: int = 8, n_donors: int = 4,
                         seed: int = 0, chunk_rows: int = 8192, overwrite: bool = False, progress: bool = False) -> Path:
    """Write a Census-schema experiment of ``n_cells`` simulated cells to ``out`` (nothing left there on failure).

    Parameters
    ----------
    out
        Experiment directory to create.
    n_cells, n_genes
        Size of ``ms["RNA"].X``.
    n_datasets, n_donors
        Datasets (one simulated batch each) and donors per dataset.
    seed
        Seed of the simulation (same seed, same experiment).
    chunk_rows
        Cells generated and written at a time.
    overwrite
        Replace an existing ``out``.
    progress
        Print a line per million cells written.

    Returns
    -------
    Path
        ``out``; open ``f"{out}::RNA"`` with ``--layer raw``.
    """
    if n_datasets < 1 or n_donors < 1 or n_cells < n_datasets * n_donors:
        raise ValueError("need at least one dataset, one donor each, and a cell per donor")
    sim = AtlasSimulator(SimulationConfig(n_cells=n_cells, modalities=("rna",), n_batches=n_datasets, seed=seed,
                                          n_genes=n_genes))
    layout = _layout(n_cells, n_datasets, n_donors)
    # one batch effect per dataset: the simulator reads each cell's batch from obs_all when it draws counts
    sim.obs_all["batch"] = pd.Categorical.from_codes(layout["dataset_id"].cat.codes, [f"batch{i}" for i in range(n_datasets)])
    source = sim.source("rna")
    rng = np.random.default_rng([seed, 17])
    raw_sum = np.zeros(n_cells, dtype=np.float64)
    cell_nnz = np.zeros(n_cells, dtype=np.int64)
    gene_nnz = np.zeros(n_genes, dtype=np.int64)
    with atomic_output(out, overwrite) as tmp:
        uri = str(tmp)
        context = soma.SOMATileDBContext()
        with soma.Experiment.create(uri, context=context) as exp:
            ms = exp.add_new_collection("ms")
            meas = ms.add_new_collection(MEASUREMENT, soma.Measurement)
            X = meas.add_new_collection("X")
            arrays = {name: X.add_new_sparse_ndarray(name, type=pa.float32(), shape=(n_cells, n_genes)) for name in LAYERS}
            writers = {name: SparseWriter(a) for name, a in arrays.items()}
            t0 = time.perf_counter()
            for start, counts in source.iter_chunks(chunk_rows):
                counts = sp.csr_matrix(counts, dtype=np.float32)
                counts.sum_duplicates()
                stop = start + counts.shape[0]
                totals = np.asarray(counts.sum(1)).ravel()
                raw_sum[start:stop] = totals
                cell_nnz[start:stop] = np.diff(counts.indptr)
                gene_nnz += np.bincount(counts.indices, minlength=n_genes)
                rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(counts.indptr))
                cols = counts.indices.astype(np.int64)
                scale = np.repeat(1.0 / np.maximum(totals, 1.0), np.diff(counts.indptr)).astype(np.float32)
                writers["raw"].append(rows, cols, counts.data)
                writers["normalized"].append(rows, cols, counts.data * scale)
                if progress and stop // 1_000_000 > start // 1_000_000:
                    print(f"{stop:,} cells in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            for w in writers.values():
                w.flush()
            obs = layout.assign(cell_type=source.obs["cell_type"].to_numpy(), raw_sum=raw_sum, nnz=cell_nnz,
                                n_measured_vars=np.full(n_cells, n_genes, dtype=np.int64))
            obs.insert(0, "soma_joinid", np.arange(n_cells, dtype=np.int64))
            table = _table(obs)
            with _create_dataframe(f"{uri}/obs", table, context) as obs_df:
                for a in range(0, n_cells, 1 << 18):
                    obs_df.write(table.slice(a, 1 << 18))
                exp.set("obs", obs_df, use_relative_uri=True)
            var = pd.DataFrame({
                "soma_joinid": np.arange(n_genes, dtype=np.int64),
                "feature_id": [f"ENSG{100000 + 7 * i:011d}" for i in range(n_genes)],
                "feature_name": sim.gene_names.to_numpy(dtype=object),
                "feature_length": rng.integers(300, 12000, n_genes),
                "nnz": gene_nnz,
                "n_measured_obs": np.full(n_genes, n_cells, dtype=np.int64),
            })
            vtable = _table(var)
            with _create_dataframe(f"{uri}/ms/{MEASUREMENT}/var", vtable, context) as var_df:
                var_df.write(vtable)
                meas.set("var", var_df, use_relative_uri=True)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--cells", type=int, required=True)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--datasets", type=int, default=8)
    p.add_argument("--donors", type=int, default=4, help="donors per dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    t = time.perf_counter()
    out = write_census_fixture(args.out, args.cells, args.genes, args.datasets, args.donors, args.seed,
                               overwrite=args.overwrite, progress=True)
    with soma.Experiment.open(str(out)) as exp:
        n = exp.obs.read(column_names=["soma_joinid"], value_filter=LUNG_QUERY).concat().num_rows
    print(f"wrote {out} ({args.cells:,} cells x {args.genes:,} genes, layers {', '.join(LAYERS)}) in "
          f"{time.perf_counter() - t:.0f}s; {LUNG_QUERY!r} selects {n:,} cells ({n / args.cells:.1%})")


if __name__ == "__main__":
    main()
