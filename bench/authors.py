"""The authors' published scMODAL and scMRDR beside cellweave's, on the same stores and the same links.

The authors' code is not part of cellweave and is never copied into it: ``--authors-path DIR`` points at a folder
holding their package (``DIR/scmodal`` from github.com/gefeiwang/scMODAL, ``DIR/src/scMRDR`` from
github.com/sjl-sjtu/scMRDR, or ``DIR`` being such a checkout), and ``--authors-python`` at a Python that can import
it (scMODAL needs ``annoy``, ``scanpy``, ``umap-learn``, ``torch``; scMRDR ``scanpy``, ``POT``, ``tensorboard``,
``torch``). When either is missing the comparison is skipped with the reason printed.

Inputs are built the way the authors' CITE-seq tutorial builds them (:func:`tutorial_inputs`), from the same raw
counts cellweave streams: one column per link-table row for each modality (the "shared" block; a protein linked
to two genes appears twice), normalised to one common total (the median linked-gene count of the RNA, at least
20) and log1p; beside it the unlinked features, each modality normalised to its median total and log1p (RNA: at
most 3,000 highly variable genes, Seurat v3 on counts); both matrices scaled (max 10). Their loop finds its MNN
pairs on the shared block.

scMRDR's inputs are built the way the authors' tri-modal experiment (BMMC: RNA + ATAC gene activity + protein)
builds them (:func:`scmrdr_inputs`), from the same raw counts and the same links cellweave resolves (proteins ->
coding genes by the antibody table, peaks -> genes via ``genes.bed``): ATAC summed into gene activity counts,
each protein renamed to its (first) coding gene; the union of the RNA's highly variable genes (normalised, log1p,
scanpy's ``seurat`` flavour by batch, min_mean 0.02, max_mean 4, min_disp 0.5), the gene activity's (TF-IDF as
muon's ``tfidf(scale_factor=1e4)``, then scanpy's defaults) and every protein; the three modalities stacked as
observations over those columns (outer join, zeros), each masked to its own highly variable genes (proteins: all),
counts for the ZINB likelihood, the batch as covariate.

Scores (the same function for both): FOSCTTM over twins (``pair_id``) and ADT <- RNA label transfer (k = 15 vote).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RUNNER = Path(__file__).with_name("authors_run.py")


def find_package(path: str | os.PathLike | None, name: str = "scmodal") -> tuple[Path | None, str]:
    """The folder to put on ``sys.path`` for the authors' ``name`` package, or None and why not."""
    if path is None:
        return None, "no --authors-path given"
    p = Path(path)
    for root in (p, p / "src"):
        if (root / name / "__init__.py").exists():
            return root, ""
    for sub in sorted(p.glob("*")) if p.is_dir() else []:
        if (sub / name / "__init__.py").exists():
            return sub, ""
    return None, f"no {name}/__init__.py under {p}"


def usable_python(python: str, code: Path, name: str = "scmodal") -> str:
    """An empty string when ``python`` imports the authors' package, else the error's last line."""
    r = subprocess.run([python, "-c", f"import sys; sys.path.insert(0, {str(code)!r}); import {name}"],
                       capture_output=True, text=True)
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["failed"])[-1]


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def _norm_log(x: np.ndarray, target: float | None = None) -> np.ndarray:
    """scanpy's normalize_total (median of non-zero totals when no target) then log1p."""
    tot = x.sum(1, keepdims=True)
    if target is None:
        target = float(np.median(tot[tot > 0]))
    return np.log1p(np.where(tot > 0, x / np.where(tot > 0, tot, 1) * target, 0.0))


def _scale(x: np.ndarray, max_value: float = 10.0) -> np.ndarray:
    """scanpy's scale: zero mean, unit variance (ddof 1), clipped at ``max_value``; constant columns stay 0."""
    sd = x.std(0, ddof=1)
    sd[sd == 0] = 1.0
    return np.clip((x - x.mean(0)) / sd, None, max_value).astype(np.float32)


def tutorial_inputs(rna, adt, table: pd.DataFrame, n_hvg: int = 3000) -> tuple[np.ndarray, np.ndarray, int]:
    """The authors' tutorial inputs from raw counts: (RNA matrix, ADT matrix, width of the shared block).

    ``rna`` and ``adt`` are AnnData with counts in ``X``; ``table`` the protein -> gene rows (``source_feature``
    a protein, ``target_feature`` a gene).
    """
    rows = table[table["source_feature"].isin(adt.var_names) & table["target_feature"].isin(rna.var_names)]
    genes, proteins = rows["target_feature"].to_numpy(), rows["source_feature"].to_numpy()
    R, A = _dense(rna.X), _dense(adt.X)
    gi = pd.Index(rna.var_names).get_indexer(genes)
    pi = pd.Index(adt.var_names).get_indexer(proteins)
    r_shared, a_shared = R[:, gi], A[:, pi]
    target = max(float(np.median(r_shared.sum(1))), 20.0)
    r_un = np.setdiff1d(np.arange(R.shape[1]), gi)
    if len(r_un) > n_hvg:
        import anndata as ad
        import scanpy as sc

        un = ad.AnnData(R[:, r_un].astype(np.float32))
        sc.pp.highly_variable_genes(un, flavor="seurat_v3", n_top_genes=n_hvg)
        r_un = r_un[un.var["highly_variable"].to_numpy()]
    a_un = np.setdiff1d(np.arange(A.shape[1]), pi)
    a = np.hstack([_norm_log(r_shared, target), _norm_log(R[:, r_un])])
    b = np.hstack([_norm_log(a_shared, target)] + ([_norm_log(A[:, a_un])] if len(a_un) else []))
    return _scale(a), _scale(b), len(rows)


def _tfidf(x: np.ndarray, scale_factor: float = 1e4) -> np.ndarray:
    """muon's ``atac.pp.tfidf`` defaults: ``log1p(x / cell total x scale_factor) x log1p(cells / feature total)``."""
    tot = x.sum(1, keepdims=True)
    tf = np.log1p(x / np.where(tot > 0, tot, 1) * scale_factor)
    col = x.sum(0)
    return tf * np.log1p(len(x) / np.where(col > 0, col, np.inf))


def _hvg(values: np.ndarray, batch=None, **options) -> np.ndarray:
    """scanpy's default (``seurat``) highly variable genes of already transformed values, as a boolean mask."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(values.astype(np.float32))
    if batch is not None:
        a.obs["batch"] = pd.Categorical(np.asarray(batch, str))
    sc.pp.highly_variable_genes(a, batch_key=None if batch is None else "batch", **options)
    return a.var["highly_variable"].to_numpy()


def scmrdr_inputs(rna, adt, atac, links: dict, all_rna_genes: bool = False) -> dict[str, np.ndarray]:
    """The authors' tri-modal experiment inputs from raw counts: one matrix of counts over the union genes.

    ``rna``, ``adt``, ``atac``: AnnData with counts in ``X`` and ``obs["batch"]``; ``links``: cellweave's resolved
    :class:`~cellweave.links.FeatureLinks` by modality pair (``("adt", "rna")``: protein -> genes, ``("rna",
    "atac")``: gene -> peaks). Returns ``x`` (cells x genes, float32 counts; RNA cells, then ATAC, then ADT),
    ``modality`` and ``batch`` per cell, ``features`` (gene names) and ``mask_<modality>`` (the column indices each
    modality is reconstructed on). ``all_rna_genes``: every RNA gene instead of its HVGs (a control: cellweave's
    union on a panel no wider than its ``n_top_features``).
    """
    R = _dense(rna.X)
    genes = np.asarray(rna.var_names, str)
    cols, W = links[("rna", "atac")].to_matrix(list(rna.var_names), list(atac.var_names), sparse=True)
    X_atac = atac.X if hasattr(atac.X, "tocsr") else np.asarray(atac.X)
    G = _dense(X_atac @ W.T)  # gene activity: counts of a gene's peaks summed (weights as linked)
    gas_genes = genes[cols]
    table = links[("adt", "rna")].table
    first = table.drop_duplicates("source_feature").set_index("source_feature")["target_feature"]
    names, taken = [], set()
    for protein in map(str, adt.var_names):  # renamed to its coding gene (the first one), else kept
        gene = str(first.get(protein, protein))
        names.append(gene if gene not in taken else protein)
        taken.add(names[-1])
    P = _dense(adt.X)
    rna_hvg = genes if all_rna_genes else genes[_hvg(_norm_log(R), rna.obs["batch"], min_mean=0.02, max_mean=4, min_disp=0.5)]
    gas_hvg = gas_genes[_hvg(_tfidf(G))]
    union = pd.Index(sorted(set(rna_hvg) | set(gas_hvg) | set(names)))
    x = np.zeros((len(R) + len(G) + len(P), len(union)), np.float32)
    blocks = (("rna", R, genes), ("atac", G, gas_genes), ("adt", P, np.asarray(names)))
    out: dict[str, np.ndarray] = {}
    start = 0
    for m, values, var in blocks:
        where = union.get_indexer(var)
        keep = where >= 0
        x[start:start + len(values), where[keep]] = values[:, keep]
        start += len(values)
    out["mask_rna"] = union.get_indexer(rna_hvg)
    out["mask_atac"] = union.get_indexer(gas_hvg)
    out["mask_adt"] = union.get_indexer(names)
    out["x"] = x
    out["modality"] = np.repeat([m for m, _, _ in blocks], [len(v) for _, v, _ in blocks])
    out["batch"] = np.concatenate([np.asarray(a.obs["batch"], str) for a in (rna, atac, adt)])
    out["features"] = np.asarray(union, str)
    return out


def scmrdr_links(data: dict, genes_bed: str | os.PathLike) -> dict:
    """The links cellweave's scMRDR resolves for ``data`` (modality -> AnnData; ``links="auto"``, ``genes_bed``)."""
    from cellweave.links import auto_links

    return auto_links({m: (m, list(a.var_names)) for m, a in data.items()}, genes_bed=genes_bed)


def read_scmrdr_inputs(root: Path) -> tuple[dict[str, np.ndarray], dict]:
    """:func:`scmrdr_inputs` of the stores in ``root`` (rna.zarr, adt.zarr, atac.zarr, genes.bed), and their obs."""
    import anndata as ad

    data = {m: ad.read_zarr(root / f"{m}.zarr") for m in ("rna", "adt", "atac")}
    inputs = scmrdr_inputs(data["rna"], data["adt"], data["atac"], scmrdr_links(data, root / "genes.bed"))
    return inputs, {m: a.obs for m, a in data.items()}


def score(z_rna: np.ndarray, z_adt: np.ndarray, pair_rna, pair_adt, labels_rna, labels_adt) -> dict[str, float]:
    """FOSCTTM over twins and ADT <- RNA label transfer (k = 15 vote), as in bench/links.py."""
    from cellweave.downstream.label_transfer import knn_vote
    from cellweave.evaluate import foscttm

    X = np.vstack([z_rna, z_adt])
    mod = np.r_[["rna"] * len(z_rna), ["adt"] * len(z_adt)]
    fos = foscttm(X, mod, np.r_[np.asarray(pair_rna, str), np.asarray(pair_adt, str)])["adt|rna"]["foscttm"]
    cats = pd.Categorical(np.asarray(labels_rna, str))
    pred, _ = knn_vote(z_rna, cats.codes, z_adt, k=15)
    acc = float((np.asarray(cats.categories)[pred] == np.asarray(labels_adt, str)).mean())
    return {"foscttm": float(fos), "label_transfer": acc}


def run_authors_scmodal(root: Path, python: str, code: Path, steps: list[int], seed: int, threads: int = 1,
                        work: Path | None = None) -> dict:
    """Build the tutorial inputs from ``root`` (rna.zarr, adt.zarr, links.tsv), run the authors' loop in a
    subprocess of ``python`` and score its latents at every count of ``steps``."""
    import anndata as ad

    rna, adt = ad.read_zarr(root / "rna.zarr"), ad.read_zarr(root / "adt.zarr")
    table = pd.read_csv(root / "links.tsv", sep="\t")
    t = time.perf_counter()
    a, b, n_shared = tutorial_inputs(rna, adt, table)
    out: dict = {"inputs_s": time.perf_counter() - t, "n_shared": n_shared, "width": [a.shape[1], b.shape[1]]}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        np.savez(Path(tmp) / "inputs.npz", a=a, b=b, n_shared=n_shared)
        res = _run(python, code, "scmodal", Path(tmp), steps, seed, threads)
    if "error" in res:
        return out | res
    out |= _speed(res) | {"curve": []}
    for n in sorted(set(steps)):
        row = {"steps": n, **score(res[f"latent_{n}_a"], res[f"latent_{n}_b"], rna.obs["pair_id"], adt.obs["pair_id"],
                                  rna.obs["cell_type"], adt.obs["cell_type"])}
        out["curve"].append(row)
    return out


def run_cellweave_scmodal(root: Path, steps: list[int], seed: int, run_dir: Path, config: dict | None = None) -> dict:
    """cellweave's scMODAL (defaults, or ``config`` over them) on the same stores and table, scored at every
    count of ``steps`` (resumed exactly between counts: one uninterrupted run)."""
    import anndata as ad

    from cellweave.models import SCMODAL

    stores = {"rna": root / "rna.zarr", "adt": root / "adt.zarr"}
    obs = {m: ad.read_zarr(p).obs for m, p in stores.items()}
    out: dict = {"curve": []}
    t0 = time.perf_counter()
    for i, n in enumerate(sorted(set(steps))):
        model = SCMODAL(stores, links=str(root / "links.tsv"), config=config, seed=seed)
        result = model.fit(n, run_dir=run_dir, progress=False, resume=i > 0, convergence=None)
        z = {m: model.get_latent_representation(modality=m) for m in stores}
        out["curve"].append({"steps": result.step, **score(z["rna"], z["adt"], obs["rna"]["pair_id"], obs["adt"]["pair_id"],
                                                           obs["rna"]["cell_type"], obs["adt"]["cell_type"])})
    out["train_s"] = time.perf_counter() - t0
    return out


def run_authors_scmrdr(root: Path, python: str, code: Path, steps: list[int], seed: int, threads: int = 1,
                       work: Path | None = None) -> dict:
    """Build the tri-modal experiment's inputs from ``root`` (rna/adt/atac.zarr, genes.bed), run the authors' scMRDR
    loop in a subprocess of ``python`` and score its shared latents (RNA vs ADT) at every count of ``steps``."""
    t = time.perf_counter()
    inputs, obs = read_scmrdr_inputs(root)
    out: dict = {"inputs_s": time.perf_counter() - t, "width": int(inputs["x"].shape[1]),
                 "masked": {m: len(inputs[f"mask_{m}"]) for m in ("rna", "atac", "adt")}}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        np.savez(Path(tmp) / "inputs.npz", **inputs)
        res = _run(python, code, "scmrdr", Path(tmp), steps, seed, threads)
    if "error" in res:
        return out | res
    out |= _speed(res) | {"steps_per_epoch": int(res["steps_per_epoch"]), "curve": []}
    for n in sorted(set(steps)):
        out["curve"].append({"steps": n, **score(res[f"latent_{n}_rna"], res[f"latent_{n}_adt"], obs["rna"]["pair_id"],
                                                 obs["adt"]["pair_id"], obs["rna"]["cell_type"], obs["adt"]["cell_type"])})
    return out


def _run(python: str, code: Path, method: str, tmp: Path, steps: list[int], seed: int, threads: int) -> dict:
    """bench/authors_run.py on ``tmp/inputs.npz`` under ``python``: its npz as a dict, or ``{"error": ...}``."""
    cmd = [python, str(RUNNER), "--method", method, "--code", str(code), "--inputs", str(tmp / "inputs.npz"), "--steps",
           *map(str, steps), "--seed", str(seed), "--threads", str(threads), "--model-path", str(tmp / "model"),
           "--out", str(tmp / "out.npz")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return dict(np.load(tmp / "out.npz"))


def _speed(res: dict) -> dict:
    times = res["step_times"]
    return {"train_s": float(res["train_s"]), "peak_rss_mb": float(res["peak_rss_mb"]),
            "steps_per_s": float(1 / np.median(times[min(10, len(times) - 1):]))}


def run_cellweave_scmrdr(root: Path, steps: list[int], seed: int, run_dir: Path, config: dict | None = None) -> dict:
    """cellweave's scMRDR (defaults, or ``config`` over them) on the same stores (``links="auto"``, genes.bed,
    batch covariate), no early stop, scored at every count of ``steps`` (resumed exactly between counts)."""
    import anndata as ad

    from cellweave.models import SCMRDR

    stores = {m: root / f"{m}.zarr" for m in ("rna", "adt", "atac")}
    obs = {m: ad.read_zarr(stores[m]).obs for m in ("rna", "adt")}
    out: dict = {"curve": []}
    t0 = time.perf_counter()
    for i, n in enumerate(sorted(set(steps))):
        model = SCMRDR(stores, genes_bed=root / "genes.bed", batch_key="batch", config=config, seed=seed)
        result = model.fit(n, run_dir=run_dir, progress=False, resume=i > 0, convergence=None,
                           early_stopping_patience=None)
        z = {m: model.get_latent_representation(modality=m) for m in ("rna", "adt")}
        out["curve"].append({"steps": result.step, **score(z["rna"], z["adt"], obs["rna"]["pair_id"], obs["adt"]["pair_id"],
                                                           obs["rna"]["cell_type"], obs["adt"]["cell_type"])})
    out["train_s"] = time.perf_counter() - t0
    out["width"] = model.space.n_features
    return out


#: method -> (the authors' package name, their loop, cellweave's)
RUNS = {"scmodal": ("scmodal", run_authors_scmodal, run_cellweave_scmodal),
        "scmrdr": ("scMRDR", run_authors_scmrdr, run_cellweave_scmrdr)}


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=sorted(RUNS), default="scmodal")
    p.add_argument("--root", type=Path, required=True,
                   help="folder with rna.zarr, adt.zarr and links.tsv (scmodal) or atac.zarr and genes.bed (scmrdr)")
    p.add_argument("--steps", type=int, nargs="+", default=[150])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--which", nargs="+", default=["authors", "cellweave"], choices=["authors", "cellweave"])
    p.add_argument("--authors-path")
    p.add_argument("--authors-python", default=sys.executable)
    p.add_argument("--config", default="{}", help="JSON of cellweave config fields (experiments)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    package, run_authors, run_cellweave = RUNS[args.method]
    results = []
    for seed in args.seeds:
        if "authors" in args.which:
            code, why = find_package(args.authors_path, package)
            why = why or usable_python(args.authors_python, code, package)
            if why:
                print(f"authors' {package} skipped: {why}", flush=True)
            else:
                res = run_authors(args.root, args.authors_python, code, args.steps, seed, args.threads)
                results.append({"impl": "authors", "seed": seed, **res})
                print(json.dumps(results[-1]), flush=True)
        if "cellweave" in args.which:
            with tempfile.TemporaryDirectory() as tmp:
                res = run_cellweave(args.root, args.steps, seed, Path(tmp) / "run", json.loads(args.config))
            results.append({"impl": "cellweave", "seed": seed, "config": json.loads(args.config), **res})
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
