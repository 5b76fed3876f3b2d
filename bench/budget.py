"""Benchmark: quality against training steps, to choose the step budget and the convergence stop.

Each (dataset, method, seed) is one run with the model's default settings, scored at every step count of
``--steps``: the run is trained to the first count, embedded and scored, then resumed (exactly: same batches,
same random numbers) to the next count, so the curve is that of one uninterrupted run. Its ``losses.csv``
(every 10 steps) is kept, so stop rules can be replayed on the logged losses (``--replay``) without training
again.

Datasets (RNA + protein, fed as two unpaired stores; the pairing is used only to score):

- ``cite-seq``: the real PBMC CITE-seq file (200 truly paired cells, RNA in ``X``, proteins in
  ``obsm['protein_expression']``); no cell-type annotation, so no label transfer.
- ``simulated``: ``simulate_atlas`` RNA + ADT twins (``pair_id``, ``cell_type``) at ``--cells`` per modality.

Scores: FOSCTTM (lower is better, 0.5 = chance) and ADT <- RNA label transfer (k = 15 vote).

    python bench/budget.py --methods scmodal scmrdr --datasets cite-seq simulated --cells 2000 \\
        --steps 250 500 1000 2000 --seeds 0 --out .bench/budget
    python bench/budget.py --replay .bench/budget      # where the convergence stop ends each logged run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import torch
from links import CITE_SEQ, cite_seq, score
from measure import write_json

from cellweave.models import METHODS
from cellweave.simulate import simulate_atlas


def simulated(root: Path, cells: int) -> dict:
    """Simulated RNA + ADT twins with the simulator's protein -> gene table."""
    paths = simulate_atlas(root / f"sim-{cells}", cells, modalities=("rna", "adt"), seed=1, progress=False)
    return {"stores": {"rna": paths["rna"], "adt": paths["adt"]}, "table": str(paths["links"]), "pair_key": "pair_id",
            "label_key": "cell_type"}


def run_curve(data: dict, method: str, steps: list[int], seed: int, run_dir: Path) -> list[dict]:
    """One run scored at every step count (resumed between counts); the model's own early stop disabled."""
    rows = []
    t0 = time.perf_counter()
    for i, n in enumerate(steps):
        model = METHODS[method].from_settings(data["stores"], {"links": data["table"], "seed": seed})
        result = model.fit(n, run_dir=run_dir, progress=False, resume=i > 0, convergence=None,
                           early_stopping_patience=None)
        row = {"steps": result.step, **score(model.embed(progress=False), data["pair_key"], data["label_key"]),
               "seconds": time.perf_counter() - t0}
        print(f"  {method} seed {seed} step {row['steps']:>5}: FOSCTTM {row['foscttm']:.3f}"
              + (f", label transfer {row['label_transfer']:.3f}" if row["label_transfer"] is not None else "")
              + f" ({row['seconds']:.0f}s)", flush=True)
        rows.append(row)
    return rows


def read_losses(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]


def replay(out: Path) -> None:
    """Where the default convergence stop ends each logged run (its monitored terms and epoch length are in the
    run's ``config.toml`` ``[budget]``), and the quality at the last scored step before it."""
    from cellweave.models.run import read_config
    from cellweave.train.convergence import Convergence, replay_stop

    doc = json.loads((out / "budget.json").read_text())
    for name, methods in doc["datasets"].items():
        for method, runs in methods.items():
            for seed, curve in runs.items():
                run = out / f"{name}-{method}-{seed}"
                budget = read_config(run)["budget"]
                rows = read_losses(run / "losses.csv")
                stop = replay_stop(rows, budget["monitor"], Convergence.for_data(int(budget["steps_per_epoch"])))
                at = [r for r in curve if r["steps"] <= (stop or 10**9)]
                print(f"{name:<10} {method:<8} seed {seed}: "
                      + (f"stops at {stop}" if stop else f"no stop within the {int(rows[-1]['step'])} logged steps")
                      + (f"; last scored step {at[-1]['steps']}: FOSCTTM {at[-1]['foscttm']:.3f}" if at else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["scmodal", "scmrdr"])
    p.add_argument("--datasets", nargs="+", default=["cite-seq", "simulated"])
    p.add_argument("--cells", type=int, default=2000, help="simulated cells per modality")
    p.add_argument("--steps", type=int, nargs="+", default=[250, 500, 1000, 2000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(".bench/budget"))
    p.add_argument("--replay", type=Path, help="replay the convergence stop on a finished --out and exit")
    args = p.parse_args()
    if args.replay:
        replay(args.replay)
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "budget.json"
    results = json.loads(path.read_text()) if path.exists() else {"datasets": {}}
    results |= {"machine": f"{platform.node()} {os.cpu_count()} cpu, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
                "threads": args.threads, "cells": args.cells}
    for name in args.datasets:
        if name == "cite-seq" and not CITE_SEQ.exists():
            print(f"{CITE_SEQ} is absent: CITE-seq skipped")
            continue
        data = cite_seq(args.out, CITE_SEQ) if name == "cite-seq" else simulated(args.out, args.cells)
        for method in args.methods:
            for seed in args.seeds:
                print(f"{name} {method} seed {seed}", flush=True)
                curve = run_curve(data, method, sorted(args.steps), seed, args.out / f"{name}-{method}-{seed}")
                results["datasets"].setdefault(name, {}).setdefault(method, {})[str(seed)] = curve
                write_json(path, results)
    for name, methods in results["datasets"].items():
        for method, runs in methods.items():
            for seed, curve in runs.items():
                print(f"{name:<10} {method:<8} seed {seed}: " + ", ".join(
                    f"{r['steps']}: {r['foscttm']:.3f}" + (f"/{r['label_transfer']:.2f}" if r["label_transfer"] is not None else "")
                    for r in curve))


if __name__ == "__main__":
    main()
