"""Benchmark: training throughput and peak memory of a cellweave model streamed from Zarr, against the same
model trained the way the authors' code does it (every cell preprocessed into one dense in-memory matrix,
minibatches drawn by random indices).

    python bench/train.py --method scmodal --cells 100000 --json out.json [--steps 200] [--device cpu]

Data: ``--cells`` simulated cells per modality (RNA 2,000 genes + ADT 150 proteins, unpaired twins) kept under
``--data`` (default ``.bench/train-N``) and reused when present. Each case runs in its own subprocess; the
parent samples the RSS of that process tree every 50 ms. Reported per case: seconds of the preprocessing
statistics pass, of model set-up, of ``--steps`` training steps (after ``--warmup`` steps) and of embedding
every cell; steps/s and peak RSS (with ``--repeat R``, cases alternate R times and the fastest run of
each is compared). The in-memory baseline is skipped with ``--no-baseline`` (at 1M cells it
needs ~9 GB for the dense RNA matrix alone).
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
from torch.utils.data import IterableDataset

SMALL_STEPS = 200
DATA_FOR = {"scmodal": ("rna", "adt")}


def prepare(data: Path, cells: int, modalities: tuple[str, ...], genes: int, proteins: int) -> Path:
    """Simulate the atlas once (unpaired twins: every modality has its own cells)."""
    from cellweave.simulate import simulate_atlas

    root = data / "sim"
    if not all((root / f"{m}.zarr").exists() for m in modalities):
        t = time.perf_counter()
        simulate_atlas(root, cells, modalities=modalities, n_genes=genes, n_proteins=proteins, seed=0, overwrite=True)
        print(f"simulated {len(modalities)} x {cells} cells in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    return root


def _model(method: str, root: Path, modalities: tuple[str, ...]):
    from cellweave.models import METHODS

    if method not in METHODS:
        raise SystemExit(f"unknown method {method!r}: choose from {sorted(METHODS)}")
    settings = {"links": str(root / "links.tsv"), "seed": 0}
    return METHODS[method].from_settings({m: root / f"{m}.zarr" for m in modalities}, settings)


class _InMemoryUnpaired(IterableDataset):
    """The authors' loop: dense preprocessed matrices in RAM, one random minibatch per modality per step."""

    def __init__(self, matrices: dict, batch_size: int, steps: int, seed: int = 0) -> None:
        import numpy as np

        super().__init__()
        self.matrices, self.batch_size, self.steps = matrices, batch_size, steps
        self.rng = np.random.default_rng(seed)

    def set_epoch(self, epoch: int) -> None:  # random draws with replacement: no epochs
        pass

    def set_skip(self, n: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        import torch

        from cellweave.data import CellBatch

        for _ in range(self.steps):
            out = {}
            for m, X in self.matrices.items():
                idx = self.rng.integers(0, X.shape[0], self.batch_size)
                rows = torch.as_tensor(idx)
                x = torch.from_numpy(X[idx])
                out[m] = CellBatch(m, idx.astype(str), rows, x, None, None, X.shape[1], x.sum(1))
            yield out


def case(args: argparse.Namespace) -> dict:
    """One case in this process: ``stream`` (cellweave) or ``inmemory`` (authors' loop)."""
    import numpy as np
    import torch

    from cellweave.train import Trainer

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    modalities = DATA_FOR[args.method]
    out: dict = {"case": args.case}
    t = time.perf_counter()
    model = _model(args.method, root, modalities)
    out["setup_s"] = time.perf_counter() - t  # includes the one streamed statistics pass per modality
    model.device = torch.device(args.device)
    if args.case == "stream":
        data = model.train_stream()
    else:
        t = time.perf_counter()
        mats = {m: torch.cat([b.dense().cpu() for b in model.iter_batches(m)]).numpy() for m in modalities}
        out["load_s"] = time.perf_counter() - t
        out["dense_gb"] = sum(x.nbytes for x in mats.values()) / 2**30
        data = _InMemoryUnpaired(mats, model.config.batch_size, args.warmup + args.steps)
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
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the stream (0: read in the training process)")
    p.add_argument("--repeat", type=int, default=1, help="runs per case, alternating; the fastest is kept")
    p.add_argument("--no-baseline", action="store_true", help="skip the in-memory baseline")
    p.add_argument("--no-embed", dest="embed", action="store_false", help="skip embedding every cell")
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
    root = prepare(data, args.cells, DATA_FOR[args.method], args.genes, args.proteins)
    results = {"method": args.method, "cells_per_modality": args.cells, "genes": args.genes, "proteins": args.proteins,
               "steps": args.steps, "device": args.device, "threads": args.threads, "machine": platform.platform(),
               "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "cases": {}}
    names = ("stream",) + (() if args.no_baseline else ("inmemory",))
    for rep, name in [(r, n) for r in range(args.repeat) for n in names]:  # alternate: load drifts hit both alike
        cmd = [__file__, "--case", name, "--root", str(root), "--scratch", str(data / "scratch"), "--method", args.method,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
               "--threads", str(args.threads), "--workers", str(args.workers)] + ([] if args.embed else ["--no-embed"])
        res = run_measured(cmd)
        results.setdefault("runs", []).append(res)
        best = results["cases"].get(name)
        if best is None or "error" in best or res.get("steps_per_s", 0) > best.get("steps_per_s", 0):
            results["cases"][name] = res
        print(f"{name:9s} #{rep + 1} " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
              flush=True)
    cases = results["cases"]
    if "inmemory" in cases and "error" not in cases["inmemory"] and "error" not in cases["stream"]:
        results["ratio_steps_per_s"] = cases["stream"]["steps_per_s"] / cases["inmemory"]["steps_per_s"]
        results["ratio_peak_rss"] = cases["stream"]["peak_rss_mb"] / cases["inmemory"]["peak_rss_mb"]
        print(f"stream / in-memory: steps/s x{results['ratio_steps_per_s']:.2f}, peak RSS x{results['ratio_peak_rss']:.2f}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
