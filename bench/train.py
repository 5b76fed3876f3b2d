"""Benchmark: training throughput and peak memory of a cellweave model streamed from Zarr, against the same
model trained the way the authors' code does it (every cell preprocessed into one dense in-memory matrix,
minibatches drawn by random indices).

    python bench/train.py --method scmodal|scmrdr|cvqvae|factvae --cells 100000 --json out.json [--steps 200]

Data: ``--cells`` simulated cells per modality, kept under ``--data`` (default ``.bench/train-N``) and reused
when present: scMODAL RNA 2,000 genes + ADT 150 proteins and scMRDR RNA + ADT + ATAC (``--peaks``, as gene
activity), each modality its own cells (unpaired twins); CVQVAE and FactVAE paired RNA 2,000 genes + ATAC
50,000 peaks. Each case runs in its own subprocess; the
parent samples the RSS of that process tree every 50 ms. Reported per case: seconds of the preprocessing
statistics pass, of model set-up, of ``--steps`` training steps (after ``--warmup`` steps) and of embedding
every cell; steps/s and peak RSS (with ``--repeat R``, cases alternate R times and the fastest run of
each is compared). The in-memory baseline is skipped with ``--no-baseline`` (at 1M cells it
needs ~9 GB for the dense RNA matrix alone).

``--baseline authors --authors-path DIR [--authors-python PY]`` (scMODAL, scMRDR) compares with the authors' own
published loop instead (bench/authors.py: their package imported from DIR, run by PY with its own dependencies;
scMODAL: their CITE-seq tutorial's inputs built from the same stores and link table; scMRDR: their tri-modal
experiment's union-gene counts built from the same stores and links): speed as above (their step time and the
peak RSS of their process), and with ``--quality-steps N ...`` quality of both at those step counts for every
``--seeds`` (FOSCTTM over twins, ADT <- RNA label transfer). Skipped with the reason printed when DIR or PY
cannot run their code. ``--config JSON`` sets cellweave config fields over the defaults (experiments).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from dataclasses import replace

from measure import measure as run_measured, write_json
from torch.utils.data import IterableDataset

from cellweave.data import CellBatch

SMALL_STEPS = 200
# method -> (modalities, paired, settings beyond links and seed)
DATA_FOR = {
    "scmodal": (("rna", "adt"), False, {"links": "links.tsv"}),
    "scmrdr": (("rna", "adt", "atac"), False, {"genes_bed": "genes.bed", "batch_key": "batch"}),
    "cvqvae": (("rna", "atac"), True, {"batch_key": "batch"}),
    "factvae": (("rna", "atac"), True, {"genes_bed": "genes.bed"}),
}


def prepare(data: Path, method: str, cells: int, genes: int, proteins: int, peaks: int) -> Path:
    """Simulate the method's atlas once: unpaired twins (every modality its own cells) or paired cells."""
    from cellweave.simulate import simulate_atlas

    modalities, paired, _ = DATA_FOR[method]
    root = data / (("paired-" if paired else "sim-") + "-".join(modalities))
    if not all((root / f"{m}.zarr").exists() for m in modalities):
        t = time.perf_counter()
        simulate_atlas(root, cells, modalities=modalities, paired=paired, n_genes=genes, n_proteins=proteins,
                       n_peaks=peaks, seed=0, overwrite=True)
        print(f"simulated {len(modalities)} x {cells} cells in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    return root


def _model(method: str, root: Path, config: dict | None = None):
    from cellweave.models import METHODS

    modalities, _, extra = DATA_FOR[method]
    settings = {"seed": 0} | {k: str(root / v) if k in ("genes_bed", "links") else v for k, v in extra.items()}
    if config:
        settings["config"] = config
    return METHODS[method].from_settings({m: root / f"{m}.zarr" for m in modalities}, settings)


def _concat(batches: list) -> CellBatch:
    """One modality's cells as one in-memory batch: transformed dense values and every per-cell field."""
    import numpy as np
    import torch

    def cat(name: str):
        parts = [getattr(b, name) for b in batches]
        return None if parts[0] is None else torch.cat([p.cpu() for p in parts])

    first = batches[0]
    return replace(first, obs_names=np.concatenate([b.obs_names for b in batches]), rows=cat("rows"),
                   values=torch.cat([b.dense().cpu() for b in batches]), crow_indices=None, col_indices=None,
                   library_size=cat("library_size"), batch=cat("batch"), label=cat("label"), center=None, scale=None,
                   max_value=None)


def _take(batch: CellBatch, idx) -> CellBatch:
    import torch

    rows = torch.as_tensor(idx)
    pick = {f: getattr(batch, f)[rows] for f in ("rows", "values", "library_size", "batch", "label")
            if getattr(batch, f) is not None}
    return replace(batch, obs_names=batch.obs_names[idx], **pick)


class InMemory(IterableDataset):
    """The authors' loop: every cell's model input held in RAM, random minibatches drawn by index.

    Built from one epoch of the model's own training stream, so each key of a step (a modality, or a reduced
    view of it) holds exactly what the module trains on. Unpaired streams draw an index per modality,
    paired streams one index shared by every key.
    """

    def __init__(self, stream: IterableDataset, batch_size: int, steps: int, seed: int = 0) -> None:
        import numpy as np

        from cellweave.data import UnpairedStream

        super().__init__()
        self.paired = not isinstance(stream, UnpairedStream)
        parts: dict[str, list] = {}
        if self.paired:
            for step in stream:
                for key, b in step.items():
                    parts.setdefault(key, []).append(b)
        else:
            for key, sub in stream.streams.items():
                parts[key] = list(sub)
        self.data = {key: _concat(batches) for key, batches in parts.items()}
        self.batch_size, self.steps = batch_size, steps
        self.rng = np.random.default_rng(seed)

    @property
    def nbytes(self) -> int:
        return sum(b.values.numel() * b.values.element_size() for b in self.data.values())

    def set_epoch(self, epoch: int) -> None:  # random draws with replacement: no epochs
        pass

    def set_skip(self, n: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            if self.paired:
                idx = self.rng.integers(0, len(next(iter(self.data.values()))), self.batch_size)
                yield {key: _take(b, idx) for key, b in self.data.items()}
            else:
                yield {key: _take(b, self.rng.integers(0, len(b), self.batch_size)) for key, b in self.data.items()}


def case(args: argparse.Namespace) -> dict:
    """One case in this process: ``stream`` (cellweave) or ``inmemory`` (authors' loop)."""
    import numpy as np
    import torch

    from cellweave.train import Trainer

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    out: dict = {"case": args.case}
    t = time.perf_counter()
    model = _model(args.method, root, json.loads(args.config))
    out["setup_s"] = time.perf_counter() - t  # includes the one streamed statistics pass per modality
    model.device = torch.device(args.device)
    if args.case == "stream":
        t = time.perf_counter()
        data = model.train_stream()
        out["stream_setup_s"] = time.perf_counter() - t  # CVQVAE: its reduced cells cached on first use
    else:
        t = time.perf_counter()
        data = InMemory(model.train_stream(), model.config.batch_size, args.warmup + args.steps)
        out["load_s"] = time.perf_counter() - t
        out["dense_gb"] = data.nbytes / 2**30
    torch.manual_seed(0)
    module = model.build_module()
    times = []
    step = module.training_step

    def timed_step(batch, ctx):  # wall time at the end of each step (its loss terms are synced), to drop warm-up
        terms = step(batch, ctx)
        times.append(time.perf_counter())
        return terms

    module.training_step = timed_step
    trainer = Trainer(args.warmup + args.steps, device=args.device, grad_clip=model.grad_clip, seed=0, progress=False,
                      num_workers=args.workers if args.case == "stream" else 0)
    t = time.perf_counter()
    trainer.fit(module, data)
    out["train_s"] = time.perf_counter() - t
    timed = np.diff(times[args.warmup - 1:]) if args.warmup else np.diff([t, *times])
    out["steps"] = int(len(timed))
    out["steps_per_s"] = float(len(timed) / timed.sum())
    if args.case == "stream" and args.embed:
        model.module = module
        t = time.perf_counter()
        model.embed(out_dir=Path(args.scratch) / "embeddings", progress=False, write_soma=False)
        out["embed_s"] = time.perf_counter() - t
        out["embed_cells_per_s"] = sum(s.n_obs for s in model.stores.values()) / out["embed_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="scmodal", choices=sorted(DATA_FOR))
    p.add_argument("--cells", type=int, default=100_000, help="cells per modality")
    p.add_argument("--steps", type=int, default=SMALL_STEPS)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--proteins", type=int, default=150)
    p.add_argument("--peaks", type=int, default=50_000, help="ATAC peaks (scmrdr, cvqvae, factvae)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the stream (0: read in the training process)")
    p.add_argument("--repeat", type=int, default=1, help="runs per case, alternating; the fastest is kept")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline")
    p.add_argument("--baseline", choices=["inmemory", "authors"], default="inmemory",
                   help="inmemory: cellweave's module on random draws from RAM; authors: their published code")
    p.add_argument("--authors-path", help="folder holding the authors' package (scmodal/, or scMRDR/ or src/scMRDR/)")
    p.add_argument("--authors-python", default=sys.executable, help="Python that imports the authors' package")
    p.add_argument("--quality-steps", type=int, nargs="*", default=[], help="with --baseline authors: score both here")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the quality comparison")
    p.add_argument("--no-embed", dest="embed", action="store_false", help="skip embedding every cell")
    p.add_argument("--config", default="{}", help="JSON of cellweave config fields over the defaults (experiments)")
    p.add_argument("--data", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return
    data = args.data or Path(".bench") / f"train-{args.cells}"
    root = prepare(data, args.method, args.cells, args.genes, args.proteins, args.peaks)
    results = {"method": args.method, "cells_per_modality": args.cells, "modalities": list(DATA_FOR[args.method][0]),
               "paired": DATA_FOR[args.method][1], "genes": args.genes, "proteins": args.proteins, "peaks": args.peaks,
               "steps": args.steps, "config": json.loads(args.config), "device": args.device, "threads": args.threads, "machine": platform.platform(),
               "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "cases": {}}
    authors = None
    if args.baseline == "authors" and not args.no_baseline:
        authors = authors_case(args, root, data)
        if isinstance(authors, str):
            print(f"authors' baseline skipped: {authors}", flush=True)
            results["authors_skipped"] = authors
            authors = None
    names = ("stream",) + (() if args.no_baseline or args.baseline == "authors" and authors is None else (args.baseline,))
    for rep, name in [(r, n) for r in range(args.repeat) for n in names]:  # alternate: load drifts hit both alike
        if name == "authors":
            res = run_measured(authors, python=args.authors_python)
        else:
            res = run_measured([__file__, "--case", name, "--root", str(root), "--scratch", str(data / "scratch"),
                                "--method", args.method, "--steps", str(args.steps), "--warmup", str(args.warmup),
                                "--device", args.device, "--threads", str(args.threads), "--workers", str(args.workers),
                                "--config", args.config]
                               + ([] if args.embed else ["--no-embed"]))
        results.setdefault("runs", []).append(res)
        best = results["cases"].get(name)
        if best is None or "error" in best or res.get("steps_per_s", 0) > best.get("steps_per_s", 0):
            results["cases"][name] = res
        print(f"{name:9s} #{rep + 1} " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
              flush=True)
    cases = results["cases"]
    base = args.baseline
    if base in cases and "error" not in cases[base] and "error" not in cases["stream"]:
        results["ratio_steps_per_s"] = cases["stream"]["steps_per_s"] / cases[base]["steps_per_s"]
        results["ratio_peak_rss"] = cases["stream"]["peak_rss_mb"] / cases[base]["peak_rss_mb"]
        results["ratio_peak_pss"] = cases["stream"]["peak_pss_mb"] / cases[base]["peak_pss_mb"]
        print(f"stream / {base}: steps/s x{results['ratio_steps_per_s']:.2f}, peak RSS x{results['ratio_peak_rss']:.2f}, "
              f"peak PSS x{results['ratio_peak_pss']:.2f}")
    if authors is not None and args.quality_steps:
        results["quality"] = quality(args, root, data)
    write_json(args.json, results)


def authors_case(args: argparse.Namespace, root: Path, data: Path) -> list[str] | str:
    """The command line of the authors' loop on their inputs built from ``root``, or why it cannot run.

    scMODAL: their CITE-seq tutorial's inputs; scMRDR: their tri-modal experiment's (bench/authors.py)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from authors import RUNNER, RUNS, find_package, read_scmrdr_inputs, tutorial_inputs, usable_python

    if args.method not in RUNS:
        return f"the authors' loop is wired for {' and '.join(sorted(RUNS))} only, not {args.method}"
    package = RUNS[args.method][0]
    code, why = find_package(args.authors_path, package)
    why = why or usable_python(args.authors_python, code, package)
    if why:
        return why
    inputs = data / "scratch" / f"authors-inputs-{args.method}.npz"
    if not inputs.exists():
        inputs.parent.mkdir(parents=True, exist_ok=True)
        if args.method == "scmodal":
            a, b, n_shared = tutorial_inputs(ad.read_zarr(root / "rna.zarr"), ad.read_zarr(root / "adt.zarr"),
                                             pd.read_csv(root / "links.tsv", sep="\t"))
            np.savez(inputs, a=a, b=b, n_shared=n_shared)
        else:
            np.savez(inputs, **read_scmrdr_inputs(root)[0])
    return [str(RUNNER), "--method", args.method, "--code", str(code), "--inputs", str(inputs), "--steps",
            str(args.warmup + args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads), "--model-path",
            str(data / "scratch" / "authors-model")]


def quality(args: argparse.Namespace, root: Path, data: Path) -> list[dict]:
    """Both loops scored at ``--quality-steps`` for every ``--seeds`` (FOSCTTM, ADT <- RNA label transfer)."""
    import shutil

    from authors import RUNS, find_package

    package, run_authors, run_cellweave = RUNS[args.method]
    code, _ = find_package(args.authors_path, package)
    rows = []
    for seed in args.seeds:
        run_dir = data / "scratch" / f"quality-run-{args.method}-{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        for impl, res in (("cellweave", run_cellweave(root, args.quality_steps, seed, run_dir, json.loads(args.config))),
                          ("authors", run_authors(root, args.authors_python, code, args.quality_steps, seed,
                                                  args.threads, data / "scratch"))):
            for row in res.get("curve", []):
                rows.append({"impl": impl, "seed": seed, **row})
                print(f"quality {impl:9s} seed {seed} step {row['steps']:>5}: FOSCTTM {row['foscttm']:.3f}, "
                      f"label transfer {row['label_transfer']:.3f}", flush=True)
            if "error" in res:
                print(f"quality {impl} seed {seed}: {res['error']}", flush=True)
    return rows


if __name__ == "__main__":
    main()
