"""Benchmark: scMODAL with a fixed link table, the table plus learned links, learned links only, and a random table.

Two datasets, RNA + protein fed to scMODAL as unpaired stores (the pairing is used only to score):

- ``simulated``: ``simulate_atlas`` RNA + ADT twins (``pair_id`` in obs, ``cell_type`` labels). The "fixed
  table" is *weak*: the true protein -> gene rows of ``--weak-proteins`` proteins drawn at random.
- ``cite-seq``: the real PBMC CITE-seq file (10x pbmc_10k_protein_v3 subset; truly paired cells, no cell-type
  annotation, so no label transfer). The fixed table is the shipped antibody -> gene table (``links="auto"``).

Cases: (a) ``table``; (b) ``table+learned`` (``links_augment="learn"``); (c) ``learned`` (``links="learn"``, no
table); (d) ``random``: every protein of the fixed table paired with a gene drawn uniformly from the RNA input
features the model uses (its highly variable genes), as many rows as the fixed table. Each case is trained for
``--steps`` steps with every seed of ``--seeds``; FOSCTTM (lower is better, 0.5 = chance) and ADT <- RNA
label-transfer accuracy (k = 15 vote) are averaged over seeds.

    python bench/links.py --cells 3000 --steps 600 --seeds 0 1 2 --json .bench/links.json

``--transport``: the learned links alone, without training a model (feature names play no part in them). For
simulated atlases at several difficulties (``rho``: how much of a protein comes from its gene) and the CITE-seq
file, every transport candidate (k-NN size x entropic regularisation) is learned on its own and scored in the
learned canonical space against the truth (FOSCTTM of twins, ADT <- RNA label transfer, k = 15) beside its
unsupervised signals (two-sample agreement, geometry quality), with the Spearman correlation of each signal with
FOSCTTM over all candidates, and the candidate ``learn`` picks. On CITE-seq the learned space is compared with the
real antibody table's and a random table's linked features (column-standardised).

    python bench/links.py --transport --cells 1500 --seeds 0 --json .bench/links-transport.json
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from measure import write_json

from cellweave.data import write_zarr
from cellweave.data.readers.h5 import H5adSource
from cellweave.downstream import transfer_labels
from cellweave.evaluate.matching import foscttm
from cellweave.links import FeatureLinks, read_links
from cellweave.models import SCMODAL, read_embedding
from cellweave.simulate import simulate_atlas

CASES = ("table", "table+learned", "learned", "random")
CONFIG = {"n_top_features": 300, "hidden": 128, "batch_size": 256}
CITE_SEQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc_10k_protein_v3.h5ad"


def simulated(root: Path, cells: int, weak_proteins: int, seed: int) -> dict:
    """Simulated RNA + ADT twins and a weak table (all true rows of a few random proteins)."""
    paths = simulate_atlas(root / "sim", cells, modalities=("rna", "adt"), seed=seed, progress=False)
    table = read_links(paths["links"])[0].table
    proteins = np.random.default_rng(seed).choice(table["source_feature"].unique(), weak_proteins, replace=False)
    weak = FeatureLinks("adt", "rna", table[table["source_feature"].isin(proteins)], kind="user")
    return {"stores": {"rna": paths["rna"], "adt": paths["adt"]}, "table": [weak], "pair_key": "pair_id",
            "label_key": "cell_type"}


def cite_seq(root: Path, path: Path) -> dict:
    """The CITE-seq file as two stores; its fixed table is the shipped antibody table (``links="auto"``)."""
    rna = write_zarr(H5adSource(path, modality="rna"), root / "cite_rna.zarr")
    adt = write_zarr(H5adSource(path, modality="adt", obsm_key="protein_expression", names_key="protein_names"),
                     root / "cite_adt.zarr")
    return {"stores": {"rna": rna, "adt": adt}, "table": "auto", "pair_key": None, "label_key": None}


def random_table(model: SCMODAL, seed: int) -> list[FeatureLinks]:
    """Each linked protein of the fixed table with a random RNA input feature, as many rows as the table."""
    rng = np.random.default_rng(seed)
    rows = []
    for (s, t), lk in model.links.items():
        genes = rng.choice(model.features[t], len(lk.table))
        rows.append(FeatureLinks(s, t, pd.DataFrame({"source_feature": lk.table["source_feature"].to_numpy(),
                                                     "target_feature": genes}), kind="user"))
    return rows


def score(paths: dict[str, Path], pair_key: str | None, label_key: str | None) -> dict[str, float | None]:
    """FOSCTTM of the two embeddings (pairs by ``pair_key``, or by cell id) and ADT <- RNA label transfer."""
    import anndata as ad

    emb = {m: ad.read_zarr(p) for m, p in paths.items()}
    pair = {m: (a.obs[pair_key] if pair_key else a.obs_names).astype(str).to_numpy() for m, a in emb.items()}
    X = np.vstack([read_embedding(paths["rna"]), read_embedding(paths["adt"])])
    modality = np.r_[["rna"] * emb["rna"].n_obs, ["adt"] * emb["adt"].n_obs]
    fos = foscttm(X, modality, np.r_[pair["rna"], pair["adt"]])["adt|rna"]["foscttm"]
    acc = None
    if label_key:
        pred = transfer_labels(paths["rna"], paths["adt"], label_key, k=15)
        acc = float((pred["predicted"] == pred["true"]).mean())
    return {"foscttm": fos, "label_transfer": acc}


def run_case(data: dict, case: str, steps: int, seed: int, run_dir: Path) -> dict:
    """Train one case with one seed and score it."""
    t0 = time.perf_counter()
    if case == "random":
        base = SCMODAL(data["stores"], links=data["table"], config=CONFIG, seed=seed)
        model = SCMODAL(data["stores"], links=random_table(base, seed), config=CONFIG, seed=seed)
    else:
        links = "learn" if case == "learned" else data["table"]
        model = SCMODAL(data["stores"], links=links, config=CONFIG, seed=seed,
                        links_augment="learn" if case == "table+learned" else None)
    model.fit(steps, run_dir=run_dir, progress=False)
    row = score(model.embed(progress=False), data["pair_key"], data["label_key"])
    row["seconds"] = time.perf_counter() - t0
    row["learned_components"] = sum(len(lk.components) for lk in model.learned.values()) if model.learned else None
    return row


def fmt(mean: float | None, sd: float | None) -> str:
    """``mean +- sd`` over seeds, or n/a."""
    return "n/a" if mean is None else f"{mean:.3f} +- {sd:.3f}"


def _twins_foscttm(za: np.ndarray, zb: np.ndarray) -> float:
    """FOSCTTM when row i of ``za`` and row i of ``zb`` are the same cell."""
    n = len(za)
    return foscttm(np.vstack([za, zb]), np.r_[["a"] * n, ["b"] * n], np.r_[np.arange(n), np.arange(n)])["a|b"]["foscttm"]


def _standardized(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1)


def transport_rows(rna_path: Path, adt_path: Path, settings: dict, seed: int, truth: dict) -> list[dict]:
    """Each transport candidate learned alone (rna -> adt) and the default grid, scored against ``truth``.

    ``truth``: ``order`` (adt row of each rna row's twin) and optional ``labels`` (rna labels, adt labels)."""
    from sklearn.neighbors import KNeighborsClassifier

    from cellweave.data import CellStream, Preprocess, open_modality
    from cellweave.links import LearnSettings, learn

    rna = CellStream(open_modality(rna_path), 512, shuffle=False, preprocess=Preprocess(n_top_genes=300, scale=True),
                     rank=0, world_size=1)
    adt = CellStream(open_modality(adt_path), 512, shuffle=False, preprocess=Preprocess(scale=True), rank=0,
                     world_size=1)
    x_rna = torch.cat([b.dense() for b in rna]).numpy()
    x_adt = torch.cat([b.dense() for b in adt]).numpy()[truth["order"]]
    base = LearnSettings.from_dict(settings)
    grid = [{"ot_neighbors": [k], "ot_epsilon": [e]} for k in base.ot_neighbors for e in base.ot_epsilon]
    rows = []
    for one in [*grid, {}]:
        t0 = time.perf_counter()
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = learn(rna, adt, None, settings=settings | one, seed=seed)
        p = res.projection
        zr, za = x_rna @ p.source + p.source_offset, x_adt @ p.target + p.target_offset
        row = {"candidate": f"k={one['ot_neighbors'][0]} eps={one['ot_epsilon'][0]:g}" if one else "auto (learn)",
               "foscttm": _twins_foscttm(zr, za), "agreement": res.agreement, "quality": res.quality,
               "warned": any("unreliable" in str(w.message) for w in caught), "seconds": time.perf_counter() - t0}
        if truth.get("labels") is not None:
            lr, la = truth["labels"]
            row["label_transfer"] = float((KNeighborsClassifier(15).fit(zr, lr).predict(za) == la).mean())
        rows.append(row)
    return rows


def transport_bench(args: argparse.Namespace) -> dict:
    """The ``--transport`` benchmark (see the module notes)."""
    import anndata as ad
    from scipy.stats import spearmanr

    from cellweave.links import protein_to_gene

    out: dict = {}
    settings = {"ot_cells": args.ot_cells, "ot_starts": 2}
    print(f"{'dataset':<22} {'candidate':<16} {'FOSCTTM':>8} {'transfer':>8} {'agreement':>9} {'quality':>8} warn  s/run")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rho in args.rho:
            for seed in args.seeds:
                name = f"sim rho={rho} seed={seed}"
                paths = simulate_atlas(root / name.replace(" ", "_"), args.cells, modalities=("rna", "adt"), n_genes=600,
                                       n_proteins=40, seed=seed, rho=rho, progress=False)
                obs = {m: ad.read_zarr(paths[m]).obs for m in ("rna", "adt")}
                where = {p: i for i, p in enumerate(obs["adt"]["pair_id"].astype(str))}
                order = np.array([where[p] for p in obs["rna"]["pair_id"].astype(str)])
                labels = (obs["rna"]["cell_type"].astype(str).to_numpy(),
                          obs["adt"]["cell_type"].astype(str).to_numpy()[order])
                out[name] = transport_rows(paths["rna"], paths["adt"], settings, seed, {"order": order, "labels": labels})
                _print_rows(name, out[name])
        if args.cite_seq.exists():
            data = cite_seq(root, args.cite_seq)
            small = settings | {"n_cells": 200, "ot_cells": 75, "quality_cells": 50}
            rows = transport_rows(data["stores"]["rna"], data["stores"]["adt"], small, 0,
                                  {"order": np.arange(200)})
            # the real antibody table and a random one, in their own (standardised) linked-feature space
            from cellweave.data import CellStream, Preprocess, open_modality
            rna = CellStream(open_modality(data["stores"]["rna"]), 512, shuffle=False,
                             preprocess=Preprocess(n_top_genes=2000, scale=True), rank=0, world_size=1)
            adt = CellStream(open_modality(data["stores"]["adt"]), 512, shuffle=False,
                             preprocess=Preprocess(scale=True), rank=0, world_size=1)
            x_rna = torch.cat([b.dense() for b in rna]).numpy()
            x_adt = torch.cat([b.dense() for b in adt]).numpy()
            table = protein_to_gene(adt.reader.feature_names, rna.reader.feature_names, None, "adt", "rna")
            cols, W = table.to_matrix(adt.reader.feature_names, rna.reader.feature_names, sparse=False)
            real = _twins_foscttm(_standardized(x_adt[:, cols]), _standardized(x_rna @ np.asarray(W).T))
            rng = np.random.default_rng(0)
            randoms = [_twins_foscttm(_standardized(x_adt[:, cols]),
                                      _standardized(x_rna[:, rng.choice(x_rna.shape[1], len(cols))]))
                       for _ in range(5)]
            rows.append({"candidate": f"real table ({len(cols)})", "foscttm": real})
            rows.append({"candidate": "random table", "foscttm": float(np.mean(randoms))})
            out["cite-seq"] = rows
            _print_rows("cite-seq (names hidden)", rows)
    sims = [r for name, rows in out.items() if name.startswith("sim") for r in rows if r["candidate"] != "auto (learn)"]
    if len(sims) > 2:
        for signal in ("agreement", "quality"):
            rho_s = spearmanr([r[signal] for r in sims], [r["foscttm"] for r in sims]).statistic
            print(f"Spearman({signal}, FOSCTTM) over {len(sims)} simulated candidates: {rho_s:.3f} (negative = tracks)")
            out[f"spearman_{signal}"] = float(rho_s)
    return out


def _print_rows(name: str, rows: list[dict]) -> None:
    for r in rows:
        def f(key):
            v = r.get(key)
            return "-" if v is None else f"{v:.3f}"
        print(f"{name:<22} {r['candidate']:<16} {f('foscttm'):>8} {f('label_transfer'):>8} {f('agreement'):>9} "
              f"{f('quality'):>8} {'yes' if r.get('warned') else 'no ' if 'warned' in r else '-  '}  "
              f"{r.get('seconds', 0):5.0f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=3000, help="simulated cells per modality")
    p.add_argument("--weak-proteins", type=int, default=5, help="proteins kept in the simulated weak table")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-seed", type=int, default=1, help="seed of the simulated atlas and its weak table")
    p.add_argument("--cite-seq", type=Path, default=CITE_SEQ)
    p.add_argument("--json", type=Path)
    p.add_argument("--transport", action="store_true", help="learned links alone: transport candidates vs truth")
    p.add_argument("--rho", type=float, nargs="+", default=[0.5, 0.2], help="simulated difficulties (--transport)")
    p.add_argument("--ot-cells", type=int, default=400, help="transport sample per modality (--transport)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.transport:
        write_json(args.json, {"machine": f"{platform.node()} {os.cpu_count()} cpu", "transport": transport_bench(args)})
        return

    results = {"machine": f"{platform.node()} {os.cpu_count()} cpu, torch {torch.__version__}", "steps": args.steps,
               "seeds": args.seeds, "config": CONFIG, "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        datasets = {"simulated": simulated(root, args.cells, args.weak_proteins, args.data_seed)}
        if args.cite_seq.exists():
            datasets["cite-seq"] = cite_seq(root, args.cite_seq)
        else:
            print(f"{args.cite_seq} is absent: CITE-seq skipped")
        print(f"{'dataset':<10} {'case':<14} {'FOSCTTM':>16} {'label transfer':>16} {'components':>10} {'s/run':>6}")
        for name, data in datasets.items():
            results["datasets"][name] = {}
            for case in CASES:
                runs = [run_case(data, case, args.steps, seed, root / f"{name}-{case}-{seed}") for seed in args.seeds]
                fos = [r["foscttm"] for r in runs]
                acc = [r["label_transfer"] for r in runs if r["label_transfer"] is not None]
                summary = {"foscttm_mean": float(np.mean(fos)), "foscttm_sd": float(np.std(fos)),
                           "label_transfer_mean": float(np.mean(acc)) if acc else None,
                           "label_transfer_sd": float(np.std(acc)) if acc else None, "runs": runs}
                results["datasets"][name][case] = summary
                comps = [r["learned_components"] for r in runs if r["learned_components"] is not None]
                print(f"{name:<10} {case:<14} {fmt(summary['foscttm_mean'], summary['foscttm_sd']):>16} "
                      f"{fmt(summary['label_transfer_mean'], summary['label_transfer_sd']):>16} "
                      f"{'/'.join(map(str, comps)) or '-':>10} {np.mean([r['seconds'] for r in runs]):6.0f}", flush=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
