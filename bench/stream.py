"""Benchmark: one epoch of the cellweave stream from Zarr and from SOMA, side by side with tiledbsoma-ml's
ExperimentDataset on the same SOMA data, annbatch's Loader on the same cells, and an in-memory AnnData loader.

Every loader yields dense float32 torch batches of the same size; where a loader supports DataLoader
workers it uses 2. Each loader runs in its own subprocess; the parent samples the RSS of that process tree
(main + workers) every 50 ms and reports the peak.

    python bench/stream.py --cells 100000 --json out.json [--genes 2000] [--batch-size 512] [--data DIR]

The data (RNA counts from ``cellweave simulate``) is kept under ``--data`` (default ``.bench/stream-N-G``) and
reused when present; the SOMA copy is written only when a SOMA loader runs.

annbatch needs Python >= 3.12 and reads only its own format, a pre-shuffled sharded Zarr collection. It runs in its
own environment: ``--annbatch-python PATH`` names that environment's interpreter (``python3.12 -m venv VENV &&
VENV/bin/pip install annbatch``; torch is optional for annbatch and not needed here). Each run first converts the
same cells with annbatch's ``DatasetCollection(DIR).add_adatas([rna.zarr], shuffle=True)`` (timed and measured
apart: ``annbatch_convert``), then runs one epoch of its ``Loader`` (in-process: annbatch has no worker split of its
own, its reads are concurrent) in that interpreter, densifying each batch to float32 numpy as the others densify
to torch (same work, ``torch.from_numpy`` is free). Without ``--annbatch-python`` (unless this interpreter has
annbatch) it is skipped with the reason printed.

``--census``: a CELLxGENE Census-shaped experiment (``tools/census_fixture.py``: layers ``raw`` and
``normalized``, several datasets and donors) queried as atlases are, ``tissue_general == 'lung' and
is_primary_data == True`` (~12% of the cells), one epoch of the ``raw`` layer of the selected cells through
cellweave (``open_modality(..., layer=, obs_filter=)``) and through tiledbsoma-ml's ``ExperimentDataset`` on the
same ``ExperimentAxisQuery``. Data under ``.bench/census-N-G``. Run it at two sizes to see that memory follows
neither the experiment nor the query.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from measure import measure as run_measured, write_json

BASELINES = ("cellweave_zarr", "cellweave_soma", "tiledbsoma_ml", "annbatch", "anndata_inmemory")
SOMA_LOADERS = ("cellweave_soma", "tiledbsoma_ml")
ANNBATCH_CHUNK, ANNBATCH_PRELOAD = 256, 64  # 16,384 cells preloaded and shuffled: cellweave's read-ahead block
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


def prepare(data: Path, cells: int, genes: int, soma: bool = True) -> None:
    """Simulate RNA counts into Zarr and (``soma``) copy them into a SOMA experiment (once)."""
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
    if soma and not soma_path.exists():
        t = time.perf_counter()
        write_soma([StoreSource(open_modality(zarr_path))], soma_path, overwrite=True, chunk_rows=16384)
        print(f"wrote SOMA in {time.perf_counter() - t:.0f}s", file=sys.stderr)


def _epoch(batches, n_expected: int) -> dict:
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
    after = (n - first[1]) / max(dt - first[0], 1e-9) if first else float("nan")
    return {"cells": n, "seconds": dt, "cells_per_s": n / dt, "checksum": checksum,
            "first_batch_s": first[0] if first else float("nan"), "cells_per_s_after_first_batch": after}


def run_one(name: str, data: Path, batch_size: int, workers: int, query: str | None = None) -> dict:
    """One epoch of one loader, in this process (and its workers)."""
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
        import torch
        from tiledbsoma_ml import ExperimentDataset, experiment_dataloader

        exp = soma.Experiment.open(str(soma_path))
        with exp.axis_query(measurement_name="rna") as query:
            ds = ExperimentDataset(query, layer_name="data", batch_size=batch_size, shuffle=True, seed=0)
            n = query.n_obs
            loader = experiment_dataloader(ds, num_workers=workers)
            return _epoch((torch.from_numpy(X) for X, _ in loader), n)
    if name in ("annbatch", "annbatch_convert"):
        try:
            import annbatch  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(f"annbatch is not installed in {sys.executable} (Python {platform.python_version()}): "
                               f"{exc}") from exc
        return _convert_annbatch(data) if name == "annbatch_convert" else _run_annbatch(data, batch_size)
    if name == "anndata_inmemory":
        import anndata as ad
        import numpy as np
        import torch

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


def _convert_annbatch(data: Path) -> dict:
    """annbatch's own format: the same cells rewritten as a pre-shuffled sharded collection, with annbatch's
    published API and its defaults (a fresh collection each run, so the conversion is measured in the run)."""
    import numpy as np
    from annbatch import DatasetCollection

    coll_path = data / "annbatch.zarr"
    shutil.rmtree(coll_path, ignore_errors=True)
    t = time.perf_counter()
    DatasetCollection(coll_path).add_adatas([str(data / "sim" / "rna.zarr")], shuffle=True, rng=np.random.default_rng(0))
    dt = time.perf_counter() - t
    disk = sum(f.stat().st_size for f in coll_path.rglob("*") if f.is_file())
    return {"seconds": dt, "disk_mb": disk / 2**20, "datasets": len(list(coll_path.glob("dataset_*"))), **_annbatch_env()}


def _annbatch_env() -> dict:
    import annbatch

    return {"python": platform.python_version(), "annbatch": annbatch.__version__}


def _run_annbatch(data: Path, batch_size: int) -> dict:
    """One epoch of annbatch's Loader over its collection (written by ``annbatch_convert``), shuffled."""
    import numpy as np
    from annbatch import DatasetCollection, Loader

    coll_path = data / "annbatch.zarr"
    if not coll_path.exists():
        raise RuntimeError(f"no annbatch collection at {coll_path}: run the annbatch_convert case first")
    loader = Loader(batch_size=batch_size, chunk_size=ANNBATCH_CHUNK, preload_nchunks=ANNBATCH_PRELOAD, shuffle=True,
                    preload_to_gpu=False, rng=np.random.default_rng(0))
    loader.use_collection(DatasetCollection(coll_path, mode="r"))
    return _epoch((b["X"].toarray() for b in loader), loader.n_obs) | _annbatch_env()


def measure(name: str, data: Path, batch_size: int, workers: int, query: str | None = None,
            python: str | None = None) -> dict:
    """Run one loader in a subprocess (of ``python``: default this interpreter) and sample its process tree's RSS."""
    return run_measured([__file__, "--run-one", name, "--data", str(data), "--batch-size", str(batch_size),
                         "--workers", str(workers)] + (["--query", query] if query else []), python=python)


def annbatch_python(given: str | None) -> tuple[str | None, str]:
    """The interpreter that runs annbatch, or ``None`` and the reason it is skipped."""
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            return None, f"--annbatch-python {given} is not an executable file"
        return given, ""
    if importlib.util.find_spec("annbatch"):
        return sys.executable, ""
    return None, (f"annbatch is not installed in this Python ({platform.python_version()}) and needs Python >= 3.12; "
                  "pass --annbatch-python PATH, the python of an environment with annbatch installed")


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
    p.add_argument("--annbatch-python", metavar="PATH",
                   help="python of an environment with annbatch installed (Python >= 3.12; see above)")
    p.add_argument("--run-one", choices=BASELINES + CENSUS_LOADERS + ("annbatch_convert",), help=argparse.SUPPRESS)
    args = p.parse_args()
    data = args.data or Path(".bench") / f"{'census' if args.census else 'stream'}-{args.cells}-{args.genes}"
    if args.run_one:
        print(json.dumps(run_one(args.run_one, data, args.batch_size, args.workers, args.query)))
        return
    loaders = args.only or (CENSUS_LOADERS if args.census else BASELINES)
    if args.census:
        prepare_census(data, args.cells, args.genes)
    else:
        prepare(data, args.cells, args.genes, soma=any(name in SOMA_LOADERS for name in loaders))
    results = {"cells": args.cells, "genes": args.genes, "query": args.query, "batch_size": args.batch_size,
               "workers": args.workers,
               "machine": f"{platform.node()} {os.cpu_count()} cpu, Python {platform.python_version()}"}
    for name in loaders:
        python = None
        if name == "annbatch":
            python, why = annbatch_python(args.annbatch_python)
            if python is None:
                results[name] = {"skipped": why}
                print(f"{name:>18}: skipped: {why}", flush=True)
                continue
            c = results["annbatch_convert"] = measure("annbatch_convert", data, args.batch_size, args.workers, python=python)
            print(f"{'annbatch_convert':>18}: " + (c.get("error") or (
                f"{c['seconds']:.1f}s ({args.cells / c['seconds']:,.0f} cells/s) into {c['datasets']} dataset(s), "
                f"{c['disk_mb']:,.0f} MB on disk   peak RSS {c['peak_rss_mb']:>8,.0f} MB   "
                f"(annbatch {c['annbatch']}, Python {c['python']})")), flush=True)
            if "error" in c:
                results[name] = {"skipped": f"the conversion failed: {c['error']}"}
                continue
        results[name] = measure(name, data, args.batch_size, args.workers, args.query, python=python)
        r = results[name]
        line = r.get("error") or (f"{r['cells_per_s']:>10,.0f} cells/s ({r['cells_per_s_after_first_batch']:,.0f} after "
                                  f"the first batch at {r['first_batch_s']:.1f}s)   peak RSS {r['peak_rss_mb']:>8,.0f} MB   "
                                  f"peak PSS {r.get('peak_pss_mb', float('nan')):>8,.0f} MB")
        print(f"{name:>18}: {line}", flush=True)
    cz = results.get("cellweave_zarr", {})
    for base_name in ("tiledbsoma_ml", "annbatch"):
        base = results.get(base_name, {})
        if "cells_per_s" in base and "cells_per_s" in cz:
            ratio = results[f"ratio_zarr_vs_{base_name}"] = cz["cells_per_s"] / base["cells_per_s"]
            mem = cz["peak_rss_mb"] / base["peak_rss_mb"]
            print(f"cellweave_zarr / {base_name} = {ratio:.2f}x cells/s, {mem:.2f}x peak RSS; checksums of the first 8 "
                  f"genes over the epoch: {cz['checksum']:,.1f} vs {base['checksum']:,.1f}")
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
