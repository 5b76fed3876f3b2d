"""Benchmark: quality against training steps, to choose the step budget and the convergence stop.

Each (dataset, method, seed) is one run with the model's default settings, scored at every step count of
``--steps``: the run is trained to the first count, embedded and scored, then resumed (exactly: same batches,
same random numbers) to the next count, so the curve is that of one uninterrupted run. Up to the automatic budget
the run trains with the default stop rules on; where they stop it, that model is scored as the run's ``auto``
point (what ``fit()`` with every default returns), and the run continues past the stop. Each run keeps its
``curve.json`` (rows already there are not redone, so a run can be extended with more ``--steps`` later) and its
``losses.csv`` (every 10 steps), so other stop rules can be replayed on the logged losses (``--replay`` with
``--window/--rel-tol/--patience/--min-steps``) without training again; ``--table`` prints mean (sd) over seeds.

Datasets (RNA + protein, fed as two unpaired stores; the pairing is used only to score):

- ``cite-seq``: the real PBMC CITE-seq file (200 truly paired cells, RNA in ``X``, proteins in
  ``obsm['protein_expression']``); no cell-type annotation, so no label transfer.
- ``simulated``: ``simulate_atlas`` RNA + ADT twins (``pair_id``, ``cell_type``) at ``--cells`` per modality.

Scores: FOSCTTM (lower is better, 0.5 = chance) and ADT <- RNA label transfer (k = 15 vote).

    python bench/budget.py --methods scmodal scmrdr --datasets cite-seq simulated --cells 2000 \\
        --steps 250 500 1000 2000 --seeds 0 1 2 --out .bench/budget
    python bench/budget.py --replay .bench/budget --min-steps 1000   # where another rule would end each run
    python bench/budget.py --table .bench/budget
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
from links import CITE_SEQ, cite_seq, score
from measure import write_json

from cellweave.models import METHODS
from cellweave.models.run import read_config
from cellweave.simulate import simulate_atlas
from cellweave.train.budget import resolve_budget
from cellweave.train.convergence import Convergence, replay_stop
from cellweave.train.trainer import CHECKPOINT


def simulated(root: Path, cells: int) -> dict:
    """Simulated RNA + ADT twins with the simulator's protein -> gene table (reused when already written)."""
    out = root / f"sim-{cells}"
    if (out / "simulation.json").exists():
        paths = {"rna": out / "rna.zarr", "adt": out / "adt.zarr", "links": out / "links.tsv"}
    else:
        paths = simulate_atlas(out, cells, modalities=("rna", "adt"), seed=1, progress=False)
    return {"stores": {"rna": paths["rna"], "adt": paths["adt"]}, "table": str(paths["links"]), "pair_key": "pair_id",
            "label_key": "cell_type"}


def real(root: Path) -> dict:
    """The CITE-seq file as two stores (reused when already written)."""
    if (root / "cite_adt.zarr").exists():
        return {"stores": {"rna": root / "cite_rna.zarr", "adt": root / "cite_adt.zarr"}, "table": "auto",
                "pair_key": None, "label_key": None}
    return cite_seq(root, CITE_SEQ)


def run_curve(data: dict, method: str, steps: list[int], seed: int, run_dir: Path) -> list[dict]:
    """One run scored at every step count, and where its default stop rules end it.

    The run trains with the default stop rules (the convergence stop, and the model's own validation early stopping
    where it has one) up to the automatic budget; where they stop it, the model they leave (for early stopping: the
    restored best weights) is scored as the ``auto`` point, and the same run then continues with the stops off
    (resumed exactly) through the remaining step counts. The automatic budget is scored too when no rule stops
    the run before it. Rows already in ``curve.json`` are kept, so an interrupted or extended run picks up where it
    stopped.
    """
    path = run_dir / "curve.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["steps"], r.get("point")) for r in rows}
    t0 = time.perf_counter() - (rows[-1]["seconds"] if rows else 0.0)
    probe = METHODS[method].from_settings(data["stores"], {"links": data["table"], "seed": seed})
    per_epoch = len(probe.train_stream())
    least = {"least_epochs": probe.least_epochs, "least_steps": probe.least_steps}
    auto = resolve_budget("auto", None, per_epoch, probe.authors_budget, **least).max_steps
    patience = probe.config.patience if getattr(probe.config, "val_fraction", 0) > 0 else None
    stopped = any(r.get("point") == "auto" for r in rows)
    for n in sorted(set(steps) | {auto}):
        if (n, "curve") in done or (n, "auto") in done or (n == auto and n not in steps and stopped):
            continue
        model = METHODS[method].from_settings(data["stores"], {"links": data["table"], "seed": seed})
        rules = {} if stopped else {"convergence": Convergence.for_data(per_epoch, **least), "early_stopping_patience": patience}
        stops_off = {"convergence": None, "early_stopping_patience": None}
        result = model.fit(min(n, auto) if not stopped else n, run_dir=run_dir, progress=False,
                           resume=(run_dir / CHECKPOINT).exists(), **(stops_off | rules))
        point = "curve"
        if not stopped and (result.stop_reason != "max_steps" or result.step == auto):
            point, stopped = "auto", True
        row = {"steps": result.step, "point": point, "stop_reason": result.stop_reason,
               **score(model.embed(progress=False), data["pair_key"], data["label_key"]),
               "seconds": time.perf_counter() - t0}
        if point == "auto" and result.stop_reason == "early_stopping":
            row["restored_step"] = model.result.summary().get("best_step")
        print(f"  {method} seed {seed} step {row['steps']:>5} {point:<5}: FOSCTTM {row['foscttm']:.3f}"
              + (f", label transfer {row['label_transfer']:.3f}" if row["label_transfer"] is not None else "")
              + f" ({result.stop_reason}, {row['seconds']:.0f}s)", flush=True)
        rows.append(row)
        write_json(path, rows)
        if point == "auto" and n in steps:  # the curve point n comes from the same run, its stops off
            if result.stop_reason == "max_steps" and result.step == n:
                rows.append(row | {"point": "curve"})
            else:  # resumed with the stops off, the run trains on past them
                model = METHODS[method].from_settings(data["stores"], {"links": data["table"], "seed": seed})
                result = model.fit(n, run_dir=run_dir, progress=False, resume=True, **stops_off)
                rows.append({"steps": result.step, "point": "curve", "stop_reason": result.stop_reason,
                             **score(model.embed(progress=False), data["pair_key"], data["label_key"]),
                             "seconds": time.perf_counter() - t0})
                print(f"  {method} seed {seed} step {result.step:>5} curve: FOSCTTM {rows[-1]['foscttm']:.3f}", flush=True)
            write_json(path, rows)
    return rows


def read_losses(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]


def runs(out: Path) -> dict[str, dict[str, dict[str, list[dict]]]]:
    """dataset -> method -> seed -> scored rows, from every ``<dataset>-<method>-<seed>/curve.json`` under ``out``."""
    found: dict = {}
    for path in sorted(out.glob("*/curve.json")):
        name, method, seed = path.parent.name.rsplit("-", 2)
        found.setdefault(name, {}).setdefault(method, {})[seed] = json.loads(path.read_text())
    return found


def replay(out: Path, rule: Convergence | None = None) -> None:
    """Where a convergence stop (default: the method's default rule; the monitored terms and epoch length from the
    run's ``config.toml`` ``[budget]``) ends each logged run, and the quality at the last scored step before it."""
    for name, methods in runs(out).items():
        for method, seeds in methods.items():
            for seed, curve in seeds.items():
                run = out / f"{name}-{method}-{seed}"
                budget = read_config(run)["budget"]
                rows = read_losses(run / "losses.csv")
                per_epoch = int(budget["steps_per_epoch"])
                this = (Convergence(**(asdict(rule) | {"window": max(rule.window, per_epoch)})) if rule
                        else Convergence.for_data(per_epoch, METHODS[method].least_epochs, METHODS[method].least_steps))
                stop = replay_stop(rows, budget["monitor"], this)
                at = [r for r in curve if r["steps"] <= (stop or 10**9) and r.get("point", "curve") == "curve"]
                print(f"{name:<12} {method:<8} seed {seed}: "
                      + (f"stops at {stop}" if stop else f"no stop within the {int(rows[-1]['step'])} logged steps")
                      + (f"; last scored step {at[-1]['steps']}: FOSCTTM {at[-1]['foscttm']:.3f}" if at else ""))


def table(out: Path) -> None:
    """Mean (sd) over seeds at each step count, and the auto point of each run (markdown)."""
    import numpy as np

    for name, methods in runs(out).items():
        for method, seeds in methods.items():
            counts = sorted({r["steps"] for c in seeds.values() for r in c if r.get("point", "curve") == "curve"})
            cells = []
            for n in counts:
                vals = [[r["foscttm"], r["label_transfer"]] for c in seeds.values() for r in c
                        if r["steps"] == n and r.get("point", "curve") == "curve"]
                fos = np.array([v[0] for v in vals])
                acc = [v[1] for v in vals if v[1] is not None]
                cells.append(f"{n}: {fos.mean():.3f} ({fos.std():.3f}" + f", n={len(fos)})"
                             + (f" / {np.mean(acc):.2f}" if acc else ""))
            print(f"| {name} | {method} | " + " | ".join(cells) + " |")
            for seed, c in seeds.items():
                a = [r for r in c if r.get("point") == "auto"]
                if a:
                    r = a[0]
                    print(f"|   auto, seed {seed} | stops at {r['steps']} ({r['stop_reason']}"
                          + (f", restored step {r['restored_step']}" if r.get("restored_step") else "")
                          + f") | FOSCTTM {r['foscttm']:.3f}"
                          + (f" / {r['label_transfer']:.2f}" if r["label_transfer"] is not None else "") + " |")


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
    p.add_argument("--window", type=int, help="with --replay: least window (steps) of the rule replayed")
    p.add_argument("--rel-tol", type=float, help="with --replay: rel_tol of the rule replayed")
    p.add_argument("--patience", type=int, help="with --replay: patience of the rule replayed")
    p.add_argument("--min-steps", type=int, help="with --replay: min_steps of the rule replayed")
    p.add_argument("--table", type=Path, help="print the markdown table of a finished --out and exit")
    args = p.parse_args()
    if args.replay:
        given = {k: getattr(args, k) for k in ("window", "rel_tol", "patience", "min_steps") if getattr(args, k) is not None}
        replay(args.replay, Convergence(**given) if given else None)
        return
    if args.table:
        table(args.table)
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "machine.json", {"machine": f"{platform.node()} {os.cpu_count()} cpu, torch {torch.__version__}",
                                           "date": time.strftime("%Y-%m-%d"), "threads": args.threads})
    for name in args.datasets:
        if name == "cite-seq" and not CITE_SEQ.exists():
            print(f"{CITE_SEQ} is absent: CITE-seq skipped")
            continue
        data = real(args.out) if name == "cite-seq" else simulated(args.out, args.cells)
        label = name if name == "cite-seq" else f"sim{args.cells}"
        for method in args.methods:
            for seed in args.seeds:
                print(f"{label} {method} seed {seed}", flush=True)
                run_curve(data, method, sorted(args.steps), seed, args.out / f"{label}-{method}-{seed}")
    table(args.out)


if __name__ == "__main__":
    main()
