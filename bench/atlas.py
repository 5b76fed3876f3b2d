"""Benchmark: one atlas-scale run end to end, stage by stage.

    python bench/atlas.py --cells 100000 --json out.json [--steps 500] [--data DIR] [--device cpu]
    python bench/atlas.py --plot a.json b.json ... --out atlas.png

Stages, each in its own subprocess while the parent samples the RSS and PSS of its process tree every 50 ms
(``bench/measure.py``):

1. ``simulate``: ``cellweave simulate`` of ``--cells`` cells per modality over RNA (2,000 genes), ADT
   (150 proteins) and ATAC (``--peaks`` peaks), unpaired twins, written to Zarr;
2. ``convert``: the three Zarr stores into one TileDB-SOMA experiment (one measurement each), chunk by chunk;
3. ``fit_scmodal`` / ``fit_scmrdr``: model set-up (the streamed statistics pass, links), ``--steps`` training
   steps streamed from Zarr, then every cell embedded into ``RUN/embeddings``;
4. ``evaluate_scmodal`` / ``evaluate_scmrdr``: ``cellweave evaluate --run RUN`` (cell type, batch, modality,
   twin pairs; no UMAP plots) on the run's embeddings.

Printed: a table of wall seconds, peak RSS and peak PSS per stage, and steps/s of each fit. ``--plot`` draws
time and memory against the cell count from several result files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

from measure import measure as run_measured, write_json

MODALITIES = ("rna", "adt", "atac")
METHODS = ("scmodal", "scmrdr")
STAGES = ("simulate", "convert", *(f"{s}_{m}" for m in METHODS for s in ("fit", "evaluate")))


def _settings(method: str, sim: Path) -> dict:
    """The fit settings of each method on the simulated atlas."""
    if method == "scmodal":
        return {"links": str(sim / "links.tsv"), "genes_bed": str(sim / "genes.bed"), "seed": 0}
    return {"genes_bed": str(sim / "genes.bed"), "batch_key": "batch", "seed": 0}


def _cli(argv: list[str]) -> None:
    """``cellweave`` with ``argv``; its printout goes to stderr (stdout carries the stage's JSON)."""
    from cellweave.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = main(argv)
    sys.stderr.write(printed.getvalue())
    if code:
        raise SystemExit(f"cellweave {' '.join(argv)} exited with {code}")


def stage(name: str, args: argparse.Namespace) -> dict:
    """Run one stage in this process; returns its figures (wall time is measured by the caller too)."""
    data = Path(args.data)
    sim = data / "sim"
    out: dict = {}
    if name == "simulate":
        _cli(["simulate", "--cells", str(args.cells), "--modalities", ",".join(MODALITIES), "--out", str(sim),
              "--format", "zarr", "--seed", "0", "--peaks", str(args.peaks), "--overwrite"])
    elif name == "convert":
        from cellweave.data import open_modality
        from cellweave.data.soma_store import write_soma
        from cellweave.data.store import StoreSource

        write_soma([StoreSource(open_modality(sim / f"{m}.zarr")) for m in MODALITIES], data / "atlas.soma",
                   overwrite=True)
    elif name.startswith("fit_"):
        import torch

        from cellweave.models import METHODS as MODELS

        method = name.removeprefix("fit_")
        torch.set_num_threads(args.threads)
        t = time.perf_counter()
        model = MODELS[method].from_settings({m: sim / f"{m}.zarr" for m in MODALITIES}, _settings(method, sim))
        out["setup_s"] = time.perf_counter() - t
        t = time.perf_counter()
        result = model.fit(args.steps, run_dir=data / "runs" / method, device=args.device, progress=False,
                           overwrite=True)  # a rerun replaces its own runs (the data is kept)
        out["train_s"] = time.perf_counter() - t
        out["steps"] = int(result.step)
        out["steps_per_s"] = result.step / out["train_s"]
        t = time.perf_counter()
        model.embed(progress=False)
        out["embed_s"] = time.perf_counter() - t
        out["embed_cells_per_s"] = args.cells * len(MODALITIES) / out["embed_s"]
    elif name.startswith("evaluate_"):
        method = name.removeprefix("evaluate_")
        report = data / "reports" / method
        _cli(["evaluate", "--run", str(data / "runs" / method), "--label-key", "cell_type", "--batch-key", "batch",
              "--pair-key", "pair_id", "--out", str(report), "--no-plots", "--overwrite"])
        doc = json.loads((report / "metrics.json").read_text())
        first = next(iter(doc["embeddings"].values()))
        out["overall"] = first["aggregate"].get("overall")
        out["foscttm"] = first["metrics"].get("matching", {}).get("foscttm")
        out["label_transfer_knn"] = first["metrics"].get("matching", {}).get("label_transfer_knn")
    else:
        raise ValueError(name)
    return out


def run(args: argparse.Namespace) -> dict:
    """Every stage in order, each measured in its own subprocess; stops at the first failing stage.

    With ``--only``, the stages of an existing ``--json`` file of the same cell count are kept and the stages run
    now replace theirs (e.g. to rerun the fits with other threads after simulate and convert).
    """
    data = Path(args.data)
    results = {"cells_per_modality": args.cells, "modalities": list(MODALITIES), "peaks": args.peaks,
               "steps": args.steps, "device": args.device, "threads": args.threads, "machine": platform.platform(),
               "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "stages": {}}
    if args.json is not None and args.json.exists() and set(args.stages) != set(STAGES):
        earlier = json.loads(args.json.read_text())
        if earlier.get("cells_per_modality") != args.cells:
            raise SystemExit(f"{args.json} holds a run of {earlier.get('cells_per_modality')} cells, not {args.cells}: "
                             "pass another --json")
        results["stages"] = {k: v for k, v in earlier["stages"].items() if k not in args.stages}
        results["threads_by_stage"] = earlier.get("threads_by_stage", {k: earlier.get("threads") for k in results["stages"]})
    results.setdefault("threads_by_stage", {})
    for name in args.stages:
        results["threads_by_stage"][name] = args.threads
        cmd = [__file__, "--stage", name, "--cells", str(args.cells), "--data", str(data), "--steps", str(args.steps),
               "--peaks", str(args.peaks), "--device", args.device, "--threads", str(args.threads)]
        t = time.perf_counter()
        res = run_measured(cmd)
        res["wall_s"] = time.perf_counter() - t
        results["stages"][name] = res
        write_json(args.json, results)  # after every stage: a run cut short keeps what it measured
        print(f"{name:18s} " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
              flush=True)
        if "error" in res:
            break
    print(table(results))
    return results


def table(results: dict) -> str:
    """Markdown table of one result file."""
    rows = ["| stage | wall s | peak RSS (MB) | peak PSS (MB) | notes |", "|---|---:|---:|---:|---|"]
    for name, r in results["stages"].items():
        if "error" in r:
            rows.append(f"| {name} | | | | error: {r['error']} |")
            continue
        notes = []
        if "steps_per_s" in r:
            setup = f"setup {r['setup_s']:.0f} s, " if "setup_s" in r else ""
            notes.append(f"{setup}{r['steps']} steps at {r['steps_per_s']:.2f} steps/s, "
                         f"embed {r['embed_s']:.0f} s ({r['embed_cells_per_s']:,.0f} cells/s)")
        if "overall" in r:
            notes.append("overall {}, FOSCTTM {}, label transfer {}".format(
                *(f"{r[k]:.3f}" if r.get(k) is not None else "n/a" for k in ("overall", "foscttm", "label_transfer_knn"))))
        rows.append(f"| {name} | {r['wall_s']:,.0f} | {r['peak_rss_mb']:,.0f} | {r.get('peak_pss_mb', 0):,.0f} | "
                    f"{'; '.join(notes)} |")
    return "\n".join(rows)


def plot(paths: list[Path], out: Path) -> None:
    """Wall time and peak PSS of each stage against cells per modality, from several result files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = sorted((json.loads(p.read_text()) for p in paths), key=lambda d: d["cells_per_modality"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in STAGES:
        pts = [(d["cells_per_modality"], d["stages"][name]) for d in docs
               if name in d["stages"] and "error" not in d["stages"][name]]
        if not pts:
            continue
        n = [p[0] for p in pts]
        axes[0].plot(n, [p[1]["wall_s"] for p in pts], marker="o", label=name)
        axes[1].plot(n, [p[1].get("peak_pss_mb", p[1]["peak_rss_mb"]) / 1024 for p in pts], marker="o", label=name)
    for ax, what in zip(axes, ("wall time (s)", "peak PSS (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells per modality")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"bench/atlas.py on {docs[0]['cpus']} CPUs ({docs[0]['device']})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000, help="cells per modality")
    p.add_argument("--steps", type=int, default=500, help="training steps of each fit")
    p.add_argument("--peaks", type=int, default=20_000, help="ATAC peaks")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the fits")
    p.add_argument("--data", type=Path, help="working directory (default .bench/atlas-N)")
    p.add_argument("--only", dest="stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help="run only these stages (their inputs must exist)")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", nargs="+", type=Path, help="result files to plot (no run)")
    p.add_argument("--out", type=Path, default=Path("bench/atlas.png"), help="the plot, with --plot")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plot:
        plot(args.plot, args.out)
        print(f"wrote {args.out}")
        return
    args.data = args.data or Path(".bench") / f"atlas-{args.cells}"
    if args.stage:
        print(json.dumps(stage(args.stage, args)))
        return
    run(args)


if __name__ == "__main__":
    main()
