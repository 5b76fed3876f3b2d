"""``cellweave demo``: simulate a small three-modality atlas, prepare it and stream it, with no network and no
data beyond what it makes itself."""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table


def run_demo(cells: int = 5_000, out: str | None = None, seed: int = 0, steps: int = 200) -> dict[str, float]:
    """Simulate ``cells`` cells per modality (RNA, ADT, ATAC; unpaired twins), compute the preprocessing
    statistics in one chunked pass, stream one epoch through a 2-worker DataLoader, then fit scMODAL for
    ``steps`` steps, embed every cell, score the integration on the simulated truth (FOSCTTM on the
    twins, kNN label transfer from RNA), and end with the evaluation report (``cellweave evaluate``: the
    chunked metric suite, ``report.md``, ``metrics.json`` and UMAP plots) in ``out/report``.

    Everything is written under ``out`` (default: a new temporary directory, kept and printed at the end).

    Returns
    -------
    dict
        Stream cells/s, training steps/s, FOSCTTM per modality pair and label transfer accuracy.
    """
    import numpy as np
    import torch

    from .data import CellStream, Preprocess, UnpairedStream, load_or_compute_stats, make_loader, open_modality
    from .downstream import transfer_labels
    from .evaluate.matching import foscttm
    from .links import gene_activity, read_links
    from .models import SCMODAL, read_embedding
    from .simulate import simulate_atlas

    from .evaluate import evaluate_to_dir, load_inputs

    console = Console()
    out = out or tempfile.mkdtemp(prefix="cellweave-demo-")
    root = Path(out) / "atlas"
    figures: dict[str, float] = {}
    t0 = time.perf_counter()
    paths = simulate_atlas(root, cells, modalities=("rna", "adt", "atac"), paired=False, seed=seed,
                           n_genes=1000, n_proteins=100, n_peaks=2000, overwrite=True, progress=False)
    console.print(f"simulated {cells:,} cells x 3 modalities in {time.perf_counter() - t0:.1f}s -> {root}")
    stores = {m: open_modality(paths[m]) for m in ("rna", "adt", "atac")}
    table = Table(title="modalities")
    for col in ("modality", "cells", "features", "kind", "median library", "top variable features"):
        table.add_column(col)
    for m, store in stores.items():
        stats = load_or_compute_stats(store, hvg=store.kind == "counts")
        top = ", ".join(stats.hvg(5)) if stats.hvg_rank is not None else "-"
        table.add_row(m, f"{store.n_obs:,}", f"{store.n_vars:,}", store.kind, f"{float(np.median(stats.library_size)):.0f}", top)
    console.print(table)

    pp = {"rna": Preprocess(n_top_genes=500, scale=True), "adt": Preprocess(scale=True), "atac": Preprocess(n_top_genes=1000)}
    streams = {m: CellStream(s, 512, seed=seed, preprocess=pp[m], batch_key="batch", label_key="cell_type") for m, s in stores.items()}
    unpaired = UnpairedStream(streams)
    t0 = time.perf_counter()
    n = sum(b.dense().shape[0] for step in make_loader(unpaired, num_workers=2) for b in step.values())
    dt = time.perf_counter() - t0
    figures["stream_cells_per_s"] = n / dt
    console.print(f"streamed one epoch ({n:,} cells over 3 modalities) in {dt:.1f}s with 2 DataLoader workers: "
                  f"{n / dt:,.0f} cells/s")

    links = read_links(paths["links"]) + [gene_activity(list(stores["atac"].var_names), paths["genes_bed"],
                                                        list(stores["rna"].var_names))]
    model = SCMODAL(stores, links=links, seed=seed, config={"n_top_features": 500, "hidden": 256, "batch_size": 256})
    for (s, t), (cols, _) in model.link_matrices.items():
        console.print(f"links {s} -> {t}: {len(cols)} linked features")
    run = Path(out) / "run"
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    model.fit(steps, run_dir=run, device="cpu", progress=True, overwrite=True)  # the demo replaces its own run
    dt = time.perf_counter() - t0
    figures["steps_per_s"] = steps / dt
    emb = model.embed(progress=False)
    X = np.concatenate([read_embedding(emb[m]) for m in stores])
    modality = np.concatenate([[m] * stores[m].n_obs for m in stores])
    pair = np.concatenate([stores[m].obs_column("pair_id").to_numpy() for m in stores])
    scores = foscttm(X, modality, pair)
    summary = Table(title=f"scMODAL: {steps} steps in {dt:.0f}s ({steps / dt:.1f} steps/s, {threads} torch threads)")
    for col in ("modalities", "FOSCTTM (0 best, 0.5 random)", "label transfer from rna"):
        summary.add_column(col)
    for key, value in scores.items():
        a, b = key.split("|") if "|" in key else (key, "")
        acc = ""
        if a == "rna" or b == "rna":
            q = b if a == "rna" else a
            pred = transfer_labels(emb["rna"], emb[q], "cell_type", k=15)
            acc = float((pred["predicted"] == pred["true"]).mean())
            figures[f"label_transfer_{q}"] = acc
            acc = f"{acc:.2f}"
        figures[f"foscttm_{key}"] = value["foscttm"]
        summary.add_row(key, f"{value['foscttm']:.3f}", acc)
    console.print(summary)
    console.print(f"run written to {run} (config.toml, checkpoint.pt, losses.csv, loss_curves.png, embeddings/)")

    t0 = time.perf_counter()
    report = Path(out) / "report"
    with warnings.catch_warnings():  # metrics undefined here (no unintegrated input) are listed in the report
        warnings.simplefilter("ignore", UserWarning)
        doc = evaluate_to_dir(load_inputs(runs=[run]), report, label_key="cell_type", batch_key="batch",
                              pair_key="pair_id", overwrite=True, progress=False)
    (name, result), = doc["embeddings"].items()
    scores = Table(title=f"evaluation of {name} ({time.perf_counter() - t0:.0f}s): {report}/report.md")
    scores.add_column("group")
    scores.add_column("metric")
    scores.add_column("value")
    for group, metrics in result["metrics"].items():
        for metric, value in metrics.items():
            scores.add_row(group, metric, "NaN" if value is None else f"{value:.3f}")
    for group, value in result["aggregate"].items():
        scores.add_row("aggregate", group, "NaN" if value is None else f"{value:.3f}")
        figures[f"aggregate_{group}"] = float("nan") if value is None else value
    console.print(scores)
    console.print(f"demo output kept in {out}")
    return figures
