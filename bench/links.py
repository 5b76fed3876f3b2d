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
file, every transport geometry (metric x k-NN size) is learned on its own and scored in the
learned canonical space against the truth (FOSCTTM of twins, ADT <- RNA label transfer, k = 15) beside its
unsupervised signals (two-sample agreement, geometry quality), with the Spearman correlation of each signal with
FOSCTTM over all candidates, and the candidate ``learn`` picks. On CITE-seq the learned space is compared with the
real antibody table's and a random table's linked features (column-standardised).

    python bench/links.py --transport --cells 1500 --seeds 0 --json .bench/links-transport.json

``--peers``: cellweave's learned links (``learn`` with no table, its default settings, scored in the learned
canonical space as in ``--transport``) beside published no-correspondence methods at their authors' defaults:
SCOT v1 (Gromov-Wasserstein), Pamona (partial GW), uniPort (unbalanced OT in a VAE; ``--uniport-iterations``
caps its 30,000 default iterations) and UnionCom. Every method gets the same inputs: the stream's selected,
normalised, standardised features (RNA: 300 highly variable genes; ADT: every protein), cells unpaired in store
order (uniPort: the same features before scaling, MaxAbs-scaled by its own ``batch_scale``). The peers run in
their own Python environment (``--peer-python``, or ``$CELLWEAVE_PEER_PYTHON``) through ``bench/peers.py``, arrays
passed as ``.npy`` files; SCOT v1 is not on PyPI, so ``--scot-src`` (or ``$CELLWEAVE_SCOT_SRC``) points at the
``src`` folder of its authors' repository. A method whose environment is missing is skipped with the reason
printed. Scored: FOSCTTM of the true twins, ADT <- RNA label transfer (k = 15 vote, simulated data only), seconds.

    python bench/links.py --peers --cells 300 --rho 0.5 0.2 --seeds 0 1 2 --peer-python PEERS_VENV/bin/python \
        --scot-src SCOT/src --uniport-iterations 1000 --json .bench/links-peers.json

The peers' environment: ``bench/peers-requirements.txt``. ``--merge A.json B.json`` prints the summary of two runs'
rows together (e.g. cellweave re-run alone with ``--methods cellweave`` after a change, the peers kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
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


def transport_rows(rna_path: Path, adt_path: Path, settings: dict, seed: int, truth: dict,
                   n_top_genes: int = 300) -> list[dict]:
    """Each transport candidate learned alone (rna -> adt) and the default grid, scored against ``truth``.

    ``truth``: ``order`` (adt row of each rna row's twin) and optional ``labels`` (rna labels, adt labels)."""
    from sklearn.neighbors import KNeighborsClassifier

    from cellweave.data import CellStream, Preprocess, open_modality
    from cellweave.links import LearnSettings, learn

    rna = CellStream(open_modality(rna_path), 512, shuffle=False,
                     preprocess=Preprocess(n_top_genes=n_top_genes, scale=True), rank=0, world_size=1)
    adt = CellStream(open_modality(adt_path), 512, shuffle=False, preprocess=Preprocess(scale=True), rank=0,
                     world_size=1)
    x_rna = torch.cat([b.dense() for b in rna]).numpy()
    x_adt = torch.cat([b.dense() for b in adt]).numpy()[truth["order"]]
    base = LearnSettings.from_dict(settings)
    grid = [{"ot_metric": [m], "ot_neighbors": [k]} for m in base.ot_metric for k in base.ot_neighbors]
    rows = []
    for one in [*grid, {}]:
        t0 = time.perf_counter()
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = learn(rna, adt, None, settings=settings | one, seed=seed)
        p = res.projection
        zr, za = x_rna @ p.source + p.source_offset, x_adt @ p.target + p.target_offset
        row = {"candidate": f"{one['ot_metric'][0]} k={one['ot_neighbors'][0]}" if one else "auto (learn)",
               "foscttm": _twins_foscttm(zr, za), "agreement": res.agreement, "quality": res.quality,
               "distortion": res.distortion,
               "warned": any("unreliable" in str(w.message) for w in caught), "seconds": time.perf_counter() - t0}
        if truth.get("labels") is not None:
            lr, la = truth["labels"]
            row["label_transfer"] = float((KNeighborsClassifier(15).fit(zr, lr).predict(za) == la).mean())
        rows.append(row)
    return rows


def simulated_twins(folder: Path, cells: int, seed: int, rho: float) -> tuple[dict[str, Path], dict]:
    """An RNA + ADT atlas of twin cells (600 genes, 40 proteins), and its truth: each RNA cell's ADT twin and labels."""
    import anndata as ad

    paths = simulate_atlas(folder, cells, modalities=("rna", "adt"), n_genes=600, n_proteins=40, seed=seed, rho=rho,
                           progress=False)
    obs = {m: ad.read_zarr(paths[m]).obs for m in ("rna", "adt")}
    where = {p: i for i, p in enumerate(obs["adt"]["pair_id"].astype(str))}
    order = np.array([where[p] for p in obs["rna"]["pair_id"].astype(str)])
    labels = (obs["rna"]["cell_type"].astype(str).to_numpy(), obs["adt"]["cell_type"].astype(str).to_numpy()[order])
    return paths, {"order": order, "labels": labels}


def transport_bench(args: argparse.Namespace) -> dict:
    """The ``--transport`` benchmark (see the module notes)."""
    from scipy.stats import spearmanr

    from cellweave.links import protein_to_gene

    out: dict = {}
    settings = {"ot_cells": args.ot_cells}
    print(f"{'dataset':<22} {'candidate':<16} {'FOSCTTM':>8} {'transfer':>8} {'agreement':>9} {'quality':>8} warn  s/run")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rho in args.rho:
            for seed in args.seeds:
                name = f"sim rho={rho} seed={seed}"
                paths, truth = simulated_twins(root / name.replace(" ", "_"), args.cells, seed, rho)
                out[name] = transport_rows(paths["rna"], paths["adt"], settings, seed, truth)
                _print_rows(name, out[name])
        if args.cite_seq.exists():
            data = cite_seq(root, args.cite_seq)
            small = settings | {"n_cells": 200, "quality_cells": 50}
            rows = transport_rows(data["stores"]["rna"], data["stores"]["adt"], small, 0,
                                  {"order": np.arange(200)}, n_top_genes=2000)  # as the references below
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
        for signal in ("agreement", "quality", "distortion"):
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


PEERS = ("scot", "pamona", "uniport", "unioncom")
PEERS_SCRIPT = Path(__file__).resolve().with_name("peers.py")


def peer_unavailable(method: str, python: Path | None, scot_src: Path | None) -> str | None:
    """Why ``method`` cannot run (no peer Python, or no SCOT source), or None when it can."""
    if python is None:
        return "no peer Python given (--peer-python or $CELLWEAVE_PEER_PYTHON)"
    if not Path(python).is_file():
        return f"peer Python {python} is absent"
    if method == "scot" and (scot_src is None or not (Path(scot_src) / "scotv1.py").is_file()):
        return f"scotv1.py not found in --scot-src {scot_src} (SCOT v1 is not on PyPI)"
    return None


def run_peer(method: str, folder: Path, seed: int, args: argparse.Namespace) -> dict:
    """Run one peer on ``folder``'s ``.npy`` inputs in the peer environment; its embeddings or an error."""
    cmd = [str(args.peer_python), str(PEERS_SCRIPT), "--method", method, "--dir", str(folder), "--seed", str(seed)]
    if args.scot_src:
        cmd += ["--scot-src", str(args.scot_src)]
    if args.uniport_iterations:
        cmd += ["--uniport-iterations", str(args.uniport_iterations)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    info_path = folder / f"{method}.json"
    if not info_path.exists():
        if done.returncode < 0:
            why = f"killed by signal {-done.returncode}"
        else:
            why = f"exit {done.returncode}: " + ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1][:200]
        return {"error": why, "seconds": time.perf_counter() - t0}
    info = json.loads(info_path.read_text())
    if "error" not in info:
        info["z"] = (np.load(folder / f"{method}_rna.npy"), np.load(folder / f"{method}_adt.npy"))
    return info


def peer_inputs(rna_path: Path, adt_path: Path) -> dict:
    """The inputs every method gets: streams (for cellweave) and the same rows as dense arrays, store order."""
    from cellweave.data import CellStream, Preprocess, open_modality

    def dense(path: Path, **kw) -> tuple:
        stream = CellStream(open_modality(path), 512, shuffle=False, preprocess=Preprocess(**kw), rank=0,
                            world_size=1)
        return stream, torch.cat([b.dense() for b in stream]).numpy()

    rna, x_rna = dense(rna_path, n_top_genes=300, scale=True)
    adt, x_adt = dense(adt_path, scale=True)
    _, log_rna = dense(rna_path, n_top_genes=300)
    _, log_adt = dense(adt_path)
    return {"streams": (rna, adt), "x": (x_rna, x_adt), "log": (log_rna, log_adt)}


def peer_rows(inputs: dict, truth: dict, seed: int, args: argparse.Namespace, folder: Path,
              methods: list[str] | None = None) -> dict[str, dict]:
    """Each method (default ``args.methods``) on one data set; FOSCTTM against ``truth['order']``, label transfer."""
    import warnings

    from sklearn.neighbors import KNeighborsClassifier

    from cellweave.links import learn

    folder.mkdir(parents=True, exist_ok=True)
    for name, pair in (("", inputs["x"]), ("_log", inputs["log"])):
        np.save(folder / f"rna{name}.npy", pair[0])
        np.save(folder / f"adt{name}.npy", pair[1])
    rows: dict[str, dict] = {}
    for method in methods or args.methods:
        if method == "cellweave":
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = learn(*inputs["streams"], None, seed=seed)  # its defaults cap the samples to small data
            p = res.projection
            row = {"z": (inputs["x"][0] @ p.source + p.source_offset, inputs["x"][1] @ p.target + p.target_offset),
                   "seconds": time.perf_counter() - t0,
                   "notes": ["warned: unreliable"] if any("unreliable" in str(w.message) for w in caught) else []}
        else:
            reason = peer_unavailable(method, args.peer_python, args.scot_src)
            if reason:
                print(f"{method} skipped: {reason}", flush=True)
                rows[method] = {"skipped": reason}
                continue
            row = run_peer(method, folder, seed, args)
        if "z" in row:
            zr, za = row.pop("z")
            za = za[truth["order"]]
            row["foscttm"] = _twins_foscttm(zr, za)
            if truth.get("labels") is not None:
                lr, la = truth["labels"]
                row["label_transfer"] = float((KNeighborsClassifier(15).fit(zr, lr).predict(za) == la).mean())
        rows[method] = row
    return rows


def peers_bench(args: argparse.Namespace) -> dict:
    """The ``--peers`` benchmark (see the module notes)."""
    out: dict = {}
    print(f"{'dataset':<24} {'method':<10} {'FOSCTTM':>8} {'transfer':>8} {'s/run':>7}  notes")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rho in args.rho:
            for seed in args.seeds:
                name = f"sim rho={rho} seed={seed}"
                paths, truth = simulated_twins(root / name.replace(" ", "_"), args.cells, seed, rho)
                rows = peer_rows(peer_inputs(paths["rna"], paths["adt"]), truth, seed, args, root / f"peers-{len(out)}")
                out[name] = rows
                _print_peer_rows(name, rows)
        if args.cite_seq.exists():
            data = cite_seq(root, args.cite_seq)
            inputs = peer_inputs(data["stores"]["rna"], data["stores"]["adt"])
            n = len(inputs["x"][0])
            for seed in args.seeds:  # the data do not change with the seed: the peers run at the first one only
                name = f"cite-seq seed={seed}"
                methods = args.methods if seed == args.seeds[0] else [m for m in args.methods if m == "cellweave"]
                out[name] = peer_rows(inputs, {"order": np.arange(n)}, seed, args, root / f"peers-{len(out)}",
                                      methods)
                _print_peer_rows(name, out[name])
        else:
            print(f"{args.cite_seq} is absent: CITE-seq skipped")
    out["summary"] = peer_summary(out)
    return out


def peer_summary(out: dict[str, dict]) -> dict[str, dict]:
    """Mean and sd over seeds of each method's FOSCTTM, label transfer and seconds per data set; printed."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for name, rows in out.items():
        for method, r in rows.items():
            if "foscttm" in r:
                groups.setdefault(name.split(" seed=")[0], {}).setdefault(method, []).append(r)
    summary: dict[str, dict] = {}
    print(f"\n{'dataset':<24} {'method':<10} {'runs':>4} {'FOSCTTM':>16} {'label transfer':>16} {'s/run':>6}")
    for group, methods in groups.items():
        for method, rows in methods.items():
            stats = {"runs": len(rows)}
            for key in ("foscttm", "label_transfer", "seconds"):
                v = [r[key] for r in rows if r.get(key) is not None]
                stats[key] = (float(np.mean(v)), float(np.std(v))) if v else None
            summary[f"{group} | {method}"] = stats
            print(f"{group:<24} {method:<10} {len(rows):>4} {fmt(*(stats['foscttm'] or (None, None))):>16} "
                  f"{fmt(*(stats['label_transfer'] or (None, None))):>16} {stats['seconds'][0]:6.0f}")
    return summary


def _print_peer_rows(name: str, rows: dict[str, dict]) -> None:
    for method, r in rows.items():
        def f(key):
            v = r.get(key)
            return "-" if v is None else f"{v:.3f}"
        notes = r.get("skipped") or r.get("error") or "; ".join(r.get("notes", []))
        print(f"{name:<24} {method:<10} {f('foscttm'):>8} {f('label_transfer'):>8} {r.get('seconds', 0):7.1f}  "
              f"{notes}", flush=True)


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
    p.add_argument("--rho", type=float, nargs="*", default=[0.5, 0.2],
                   help="simulated difficulties (--transport, --peers; none: CITE-seq only)")
    p.add_argument("--ot-cells", type=int, default=400, help="transport sample per modality (--transport)")
    p.add_argument("--peers", action="store_true", help="learned links vs published peers (SCOT, Pamona, ...)")
    p.add_argument("--methods", nargs="+", default=["cellweave", *PEERS], choices=["cellweave", *PEERS],
                   help="methods of --peers")
    p.add_argument("--peer-python", type=Path, default=os.environ.get("CELLWEAVE_PEER_PYTHON"),
                   help="Python of the environment holding the peers (--peers)")
    p.add_argument("--scot-src", type=Path, default=os.environ.get("CELLWEAVE_SCOT_SRC"),
                   help="src folder of the SCOT repository, holding scotv1.py (--peers)")
    p.add_argument("--uniport-iterations", type=int, help="uniPort's training iterations (its default: 30,000)")
    p.add_argument("--merge", type=Path, nargs="+", help="print the --peers summary of these --json files' rows "
                   "together (a method in a later file replaces it in an earlier one), e.g. after re-running one")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.merge:
        rows: dict[str, dict] = {}
        for path in args.merge:
            for name, methods in json.loads(path.read_text())["peers"].items():
                if name != "summary":
                    rows.setdefault(name, {}).update(methods)
        write_json(args.json, {"merged": [str(p) for p in args.merge], "peers": rows | {"summary": peer_summary(rows)}})
        return
    if args.peers:
        write_json(args.json, {"machine": f"{platform.node()} {os.cpu_count()} cpu", "peers": peers_bench(args)})
        return
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
