"""Run one published no-correspondence integration method on two feature matrices (for ``bench/links.py --peers``).

This script runs under the *peers'* Python (a separate environment holding the published packages), not
cellweave's: it imports numpy and the peer only. It reads ``rna.npy`` and ``adt.npy`` (the inputs cellweave uses:
selected, normalised, standardised features; cells unpaired, in store order) and, for uniPort, ``rna_log.npy`` and
``adt_log.npy`` (the same features before scaling, since its decoders model values in [0, 1]), from ``--dir``; it
writes ``<method>_rna.npy``, ``<method>_adt.npy`` (the two embeddings, rows in input order) and
``<method>.json`` (seconds, versions, notes), or a ``<method>.json`` holding ``error`` when the method failed.

Each method is called as its authors publish it, at its default hyperparameters:

- ``scot``: SCOT v1 (Demetci et al. 2022), ``SCOT(rna, adt).align()``: entropic Gromov-Wasserstein on k-NN graph
  distances (k = min(20% of cells, 50), epsilon 1e-3), RNA projected onto the ADT cells (barycentric). Not on PyPI:
  ``scotv1.py`` is imported from ``--scot-src`` (the ``src`` folder of the authors' repository).
- ``pamona``: ``Pamona().run_Pamona([rna, adt])`` (partial GW, epsilon 1e-3, 10 neighbours, 30 output dims).
- ``uniport``: ``Run(adatas=[rna, adt], mode="d")`` (diagonal integration: no common features; unbalanced OT in a
  VAE's latent space), inputs MaxAbs-scaled per dataset with its ``batch_scale`` as in the authors' tutorials;
  ``--uniport-iterations`` caps its 30,000 training iterations (the only non-default, for CPU time).
- ``unioncom``: ``UnionCom().fit_transform([rna, adt])`` (geodesic distances, prime-dual matching, t-SNE-like
  projection). Two environment shims, printed when used: ``np.int`` (removed in numpy 1.24; the package calls it
  as the builtin ``int`` it aliased) and, when ``torchvision`` cannot be imported, an empty ``torchvision.models``
  (imported by ``unioncom/Model.py`` but not used).

    python bench/peers.py --method pamona --dir DIR --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from importlib import metadata
from pathlib import Path

import numpy as np


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run_scot(rna: np.ndarray, adt: np.ndarray, seed: int, args: argparse.Namespace, notes: list[str]) -> tuple:
    if args.scot_src is None or not (Path(args.scot_src) / "scotv1.py").exists():
        raise RuntimeError(f"scotv1.py not found in --scot-src {args.scot_src} (SCOT v1 is not on PyPI: point "
                           "--scot-src at the src folder of the authors' repository)")
    sys.path.insert(0, str(args.scot_src))
    from scotv1 import SCOT

    # align()'s own k=None default, min((0.2 n1, 0.2 n2), 50), raises TypeError (a tuple compared with an int) in
    # the published code; its documented intent, k = min(20% of either dataset's cells, 50), is passed instead
    k = min(int(len(rna) * 0.2), int(len(adt) * 0.2), 50)
    notes.append(f"k={k} passed explicitly (align()'s k=None default raises TypeError)")
    out = SCOT(rna, adt).align(k=k, e=1e-3, verbose=False)
    if out is None:
        raise RuntimeError("SCOT v1 reported a convergence error at its default epsilon 1e-3")
    return out


def run_pamona(rna: np.ndarray, adt: np.ndarray, seed: int, args: argparse.Namespace, notes: list[str]) -> tuple:
    from pamona import Pamona

    integrated, _ = Pamona.Pamona(manual_seed=seed).run_Pamona([rna, adt])
    return integrated[0], integrated[1]


def run_uniport(rna: np.ndarray, adt: np.ndarray, seed: int, args: argparse.Namespace, notes: list[str]) -> tuple:
    import anndata as ad
    import pandas as pd
    import uniport as up

    adatas = []
    for i, (name, x) in enumerate((("rna", rna), ("adt", adt))):
        a = ad.AnnData(np.asarray(x, dtype=np.float32))
        a.obs_names = [f"{name}{j}" for j in range(len(x))]
        a.obs["source"] = pd.Categorical([name] * len(x))
        a.obs["domain_id"] = pd.Categorical([i] * len(x))
        up.batch_scale(a)
        adatas.append(a)
    extra = {} if args.uniport_iterations is None else {"iteration": args.uniport_iterations}
    if extra:
        notes.append(f"iteration={args.uniport_iterations} (default 30000)")
    out = up.Run(adatas=adatas, mode="d", use_rep=["X", "X"], outdir=str(args.dir / "uniport"), seed=seed, **extra)
    z = out.obsm["latent"]
    return z[: len(rna)], z[len(rna):]


def run_unioncom(rna: np.ndarray, adt: np.ndarray, seed: int, args: argparse.Namespace, notes: list[str]) -> tuple:
    if not hasattr(np, "int"):
        np.int = int  # removed in numpy 1.24; unioncom calls np.int(...) as the builtin it aliased
        notes.append("np.int restored as the builtin int (numpy >= 1.24)")
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # the PyPI build of torchvision needs CUDA torch's libraries
        shim = types.ModuleType("torchvision")
        shim.models = types.ModuleType("torchvision.models")
        sys.modules["torchvision"], sys.modules["torchvision.models"] = shim, shim.models
        notes.append(f"torchvision unusable ({type(e).__name__}: {str(e)[:80]}); unioncom's unused "
                     "'from torchvision import models' given an empty module")
    from unioncom import UnionCom

    integrated = UnionCom.UnionCom(manual_seed=seed).fit_transform([rna.copy(), adt.copy()])
    return integrated[0], integrated[1]


METHODS = {"scot": (run_scot, None), "pamona": (run_pamona, "pamona"), "uniport": (run_uniport, "uniport"),
           "unioncom": (run_unioncom, "unioncom")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=sorted(METHODS), required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scot-src", type=Path)
    p.add_argument("--uniport-iterations", type=int, help="uniPort's training iterations (default: its own 30,000)")
    args = p.parse_args()
    fn, dist = METHODS[args.method]
    suffix = "_log" if args.method == "uniport" else ""
    rna, adt = (np.load(args.dir / f"{m}{suffix}.npy").astype(np.float64) for m in ("rna", "adt"))
    info: dict = {"method": args.method, "version": _version(dist) if dist else "git (scotv1.py)",
                  "numpy": np.__version__, "notes": []}
    t0 = time.perf_counter()
    try:
        z_rna, z_adt = fn(rna, adt, args.seed, args, info["notes"])
    except Exception as e:  # reported, not raised: the benchmark goes on with the other methods
        info["error"] = f"{type(e).__name__}: {e}"
    else:
        np.save(args.dir / f"{args.method}_rna.npy", np.asarray(z_rna, dtype=np.float64))
        np.save(args.dir / f"{args.method}_adt.npy", np.asarray(z_adt, dtype=np.float64))
    info["seconds"] = time.perf_counter() - t0
    (args.dir / f"{args.method}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
