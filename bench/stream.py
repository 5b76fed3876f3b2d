"""Benchmark: one epoch of the cellweave stream from Zarr and from SOMA, side by side with tiledbsoma-ml's
ExperimentDataset on the same SOMA data, annbatch's Loader on the same cells, and an in-memory AnnData loader.

Every loader yields dense float32 torch batches of the same size; where a loader supports DataLoader
workers it uses 2. Each loader runs in its own subprocess; the parent samples the RSS of that process tree
(main + workers) every 50 ms and reports the peak.

    python bench/stream.py --cells 100000 --json out.json [--genes 2000] [--batch-size 512] [--data DIR]

The data (RNA counts from ``cellweave simulate``) is kept under ``--data`` (default ``.bench/stream-N-G``) and
reused when present.

``--census``: a CELLxGENE Census-shaped experiment (``tools/census_fixture.py``: layers ``raw`` and
``normalized``, several datasets and donors) queried as atlases are, ``tissue_general == 'lung' and
is_primary_data == True`` (~12% of the cells), one epoch of the ``raw`` layer of the selected cells through
cellweave (``open_modality(..., layer=, obs_filter=)``) and through tiledbsoma-ml's ``ExperimentDataset`` on the
same ``ExperimentAxisQuery``. Data under ``.bench/census-N-G``. Run it at two sizes to see that memory follows
neither the experiment nor the query.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from measure import measure as run_measured, write_json

BASELINES = ("cellweave_zarr", "cellweave_soma", "tiledbsoma_ml", "annbatch", "anndata_inmemory")
CENSUS_LOADERS = ("cellweave_census", "tiledbsoma_ml_census")
TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _census_tool():
    sys.path.insert(0, str(TOOLS))
    import census_fixture

    return census_fixture


def prepare_census(data: Path, cells: int, genes: int) -> None:
    """Write the Census-shaped experiment (once)."""
    if not (data / "census.soma").exists():
        t = time.perf_counter()
        _census_tool().write_census_fixture(data / "census.soma", cells, n_genes=genes, progress=True)
        print(f"wrote the Census-shaped experiment in {time.perf_counter() - t:.0f}s", file=sys.stderr)


def prepare(data: Path, cells: int, genes: int) -> None:
    """Simulate RNA counts into Zarr and copy them into a SOMA experiment (once)."""
    from cellweave.data import open_modality
    from cellweave.data.soma_store import write_soma
    from cellweave.data.store import StoreSource
    from cellweave.simulate import simulate_atlas

    zarr_path = data / "sim" / "rna.zarr"
    if not zarr_path.exists():
        t = time.perf_counter()
        simulate_atlas(data / "sim", cells, modalities=("rna",), n_genes=genes, seed=0, overwrite=True)
        print(f"simulated {cells} x {genes} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    soma_path = data / "rna.soma"
    if not soma_path.exists():
        t = time.perf_counter()
        write_soma([StoreSource(open_modality(zarr_path))], soma_path, overwrite=True, chunk_rows=16384)
        print(f"wrote SOMA in {time.perf_counter() - t:.0f}s", file=sys.stderr)


def _epoch(batches, n_expected: int) -> dict:
    import torch

    t = time.perf_counter()
    n = 0
    checksum = 0.0
    first = None  # (seconds, cells) at the first batch: worker start-up and the first read
    for x in batches:
        n += x.shape[0]
        checksum += float(x[:, :8].sum())
        if first is None:
            first = (time.perf_counter() - t, n)
    dt = time.perf_counter() - t
    if n < 0.99 * n_expected:
        raise RuntimeError(f"loader yielded {n} cells, expected {n_expected}")
    del torch
    after = (n - first[1]) / max(dt - first[0], 1e-9) if first else float("nan")
    return {"cells": n, "seconds": dt, "cells_per_s": n / dt, "checksum": checksum,
            "first_batch_s": first[0] if first else float("nan"), "cells_per_s_after_first_batch": after}


def run_one(name: str, data: Path, batch_size: int, workers: int, query: str | None = None) -> dict:
    """One epoch of one loader, in this process (and its workers)."""
    import torch

    zarr_path = data / "sim" / "rna.zarr"
    soma_path = data / "rna.soma"
    if name in CENSUS_LOADERS:
        return _run_census(name, data / "census.soma", batch_size, workers, query or _census_tool().LUNG_QUERY)
    if name in ("cellweave_zarr", "cellweave_soma"):
        from cellweave.data import CellStream, make_loader, open_modality

        store = open_modality(zarr_path if name == "cellweave_zarr" else f"{soma_path}::rna")
        loader = make_loader(CellStream(store, batch_size, seed=0), num_workers=workers)
        return _epoch((b.dense() for b in loader), store.n_obs)
    if name == "tiledbsoma_ml":
        import tiledbsoma as soma
        from tiledbsoma_ml import ExperimentDataset, experiment_dataloader

        exp = soma.Experiment.open(str(soma_path))
        with exp.axis_query(measurement_name="rna") as query:
            ds = ExperimentDataset(query, layer_name="data", batch_size=batch_size, shuffle=True, seed=0)
            n = query.n_obs
            loader = experiment_dataloader(ds, num_workers=workers)
            return _epoch((torch.from_numpy(X) for X, _ in loader), n)
    if name == "annbatch":
        try:
            import annbatch  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                f"annbatch is not installed here ({exc}); on PyPI it requires Python >= 3.12 and this machine has "
                f"Python {platform.python_version()}"
            ) from exc
        return _run_annbatch(data, batch_size)
    if name == "anndata_inmemory":
        import anndata as ad
        import numpy as np

        adata = ad.read_zarr(zarr_path)  # the whole matrix in RAM, as scvi-tools' default loader needs
        X = adata.X
        order = np.random.default_rng(0).permutation(X.shape[0])

        def batches():
            for i in range(0, len(order), batch_size):
                idx = np.sort(order[i : i + batch_size])
                yield torch.from_numpy(X[idx].toarray())

        return _epoch(batches(), X.shape[0])
    raise ValueError(name)


def _run_census(name: str, experiment: Path, batch_size: int, workers: int, query_text: str) -> dict:
    """One epoch over a query of the Census-shaped experiment (set-up, query included, timed apart)."""
    import tiledbsoma as soma
    import torch

    t = time.perf_counter()
    if name == "cellweave_census":
        from cellweave.data import CellStream, make_loader, open_modality

        store = open_modality(f"{experiment}::RNA", layer="raw", obs_filter=query_text)
        loader = make_loader(CellStream(store, batch_size, seed=0), num_workers=workers)
        setup = time.perf_counter() - t
        result = _epoch((b.dense() for b in loader), store.n_obs)
        with soma.Experiment.open(str(experiment)) as exp:
            result["experiment_cells"] = exp.obs.count
        return result | {"setup_s": setup, "query_cells": store.n_obs}
    from tiledbsoma_ml import ExperimentDataset, experiment_dataloader

    exp = soma.Experiment.open(str(experiment))
    with exp.axis_query(measurement_name="RNA", obs_query=soma.AxisQuery(value_filter=query_text)) as query:
        ds = ExperimentDataset(query, layer_name="raw", batch_size=batch_size, shuffle=True, seed=0)
        n = query.n_obs
        loader = experiment_dataloader(ds, num_workers=workers)
        setup = time.perf_counter() - t
        result = _epoch((torch.from_numpy(X) for X, _ in loader), n)
    return result | {"setup_s": setup, "query_cells": n, "experiment_cells": exp.obs.count}


def _run_annbatch(data: Path, batch_size: int) -> dict:
    """annbatch needs its own pre-shuffled sharded collection: built once (not timed), then one epoch."""
    import numpy as np
    import torch
    from annbatch import DatasetCollection, Loader

    coll_path = data / "annbatch.zarr"
    if not coll_path.exists():
        DatasetCollection(coll_path).add_adatas([str(data / "sim" / "rna.zarr")], shuffle=True, rng=np.random.default_rng(0))
    loader = Loader(batch_size=batch_size, chunk_size=256, preload_nchunks=64, shuffle=True, preload_to_gpu=False,
                    rng=np.random.default_rng(0))
    loader.use_collection(DatasetCollection(coll_path, mode="r"))
    return _epoch((torch.from_numpy(b["X"].toarray()) for b in loader), loader.n_obs)


def measure(name: str, data: Path, batch_size: int, workers: int, query: str | None = None) -> dict:
    """Run one loader in a subprocess and sample its process tree's RSS."""
    return run_measured([__file__, "--run-one", name, "--data", str(data), "--batch-size", str(batch_size),
                         "--workers", str(workers)] + (["--query", query] if query else []))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--only", nargs="*", choices=BASELINES + CENSUS_LOADERS)
    p.add_argument("--census", action="store_true", help="the Census-shaped query case (see above)")
    p.add_argument("--query", help="--census: the obs value filter (default: the lung query)")
    p.add_argument("--run-one", choices=BASELINES + CENSUS_LOADERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    data = args.data or Path(".bench") / f"{'census' if args.census else 'stream'}-{args.cells}-{args.genes}"
    if args.run_one:
        print(json.dumps(run_one(args.run_one, data, args.batch_size, args.workers, args.query)))
        return
    if args.census:
        prepare_census(data, args.cells, args.genes)
    else:
        prepare(data, args.cells, args.genes)
    results = {"cells": args.cells, "genes": args.genes, "query": args.query, "batch_size": args.batch_size,
               "workers": args.workers,
               "machine": f"{platform.node()} {os.cpu_count()} cpu, Python {platform.python_version()}"}
    for name in args.only or (CENSUS_LOADERS if args.census else BASELINES):
        results[name] = measure(name, data, args.batch_size, args.workers, args.query)
        r = results[name]
        line = r.get("error") or (f"{r['cells_per_s']:>10,.0f} cells/s ({r['cells_per_s_after_first_batch']:,.0f} after "
                                  f"the first batch at {r['first_batch_s']:.1f}s)   peak RSS {r['peak_rss_mb']:>8,.0f} MB   "
                                  f"peak PSS {r.get('peak_pss_mb', float('nan')):>8,.0f} MB")
        print(f"{name:>18}: {line}", flush=True)
    base = results.get("tiledbsoma_ml", {})
    cz = results.get("cellweave_zarr", {})
    if "cells_per_s" in base and "cells_per_s" in cz:
        results["ratio_zarr_vs_tiledbsoma_ml"] = cz["cells_per_s"] / base["cells_per_s"]
        print(f"cellweave_zarr / tiledbsoma_ml = {results['ratio_zarr_vs_tiledbsoma_ml']:.2f}x")
    cc, bc = results.get("cellweave_census", {}), results.get("tiledbsoma_ml_census", {})
    if "cells_per_s" in cc:
        print(f"query: {cc['query_cells']:,} of {cc['experiment_cells']:,} cells; set-up (query included): "
              f"cellweave {cc['setup_s']:.1f}s, tiledbsoma_ml {bc.get('setup_s', float('nan')):.1f}s")
    if "cells_per_s" in cc and "cells_per_s" in bc:
        results["ratio_census_vs_tiledbsoma_ml"] = cc["cells_per_s"] / bc["cells_per_s"]
        print(f"cellweave_census / tiledbsoma_ml_census = {results['ratio_census_vs_tiledbsoma_ml']:.2f}x")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
