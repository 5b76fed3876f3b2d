"""The GPU check: one run that measures what only a CUDA machine can tell, written as one JSON and a table.

Stages (each timed; a stage that fails is recorded with its error and the next one runs; once ``--budget-s``
is spent the remaining stages are recorded as skipped):

1. ``env``: torch, the device, whether FAISS sees a GPU (else the GPU kNN falls back to exact torch kNN).
2. ``tests``: the CUDA-only tests (``pytest -k "cuda or gpu"``; skipped on a machine without CUDA).
3. ``knn``: the self-kNN graph (k = 15) of ``--cells`` x ``--dims`` cells (a Gaussian mixture) on the GPU (FAISS
   GPU, else exact torch) and on the CPU (FAISS HNSW), with the HNSW recall against the exact GPU result.
4. ``train``: scMODAL and scMRDR steps/s at ``--train-cells`` simulated cells per modality (RNA 2,000 genes +
   ADT 150 proteins, unpaired twins), fp32 and bf16-mixed (bf16 only on a GPU that supports it).
5. ``evaluate``: the whole metric suite (:func:`cellweave.evaluate.evaluate_embedding`) on ``--cells`` cells
   of a paired two-modality embedding.

    python tools/gpu_check.py --out gpu-check                 # on a CUDA machine (tools/gpu_check.sh sets it up)
    python tools/gpu_check.py --out /tmp/x --cells 2000 --train-cells 600 --steps 5 --device cpu   # logic check

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (a table ready for bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "tests", "knn", "train", "evaluate")
K = 15
RECALL_QUERIES = 10_000


def mixture(cells: int, dims: int, seed: int = 0, n_types: int = 12) -> dict[str, np.ndarray]:
    """A paired two-modality Gaussian-mixture embedding (``cells`` rows, half per modality) with labels,
    batches and pair ids, and an "unintegrated" version (large batch and modality shifts) for PCR."""
    rng = np.random.default_rng(seed)
    n = cells // 2
    label = rng.integers(0, n_types, n)
    batch = rng.integers(0, 3, n)
    centers = rng.normal(scale=2.5, size=(n_types, dims))
    shifts = rng.normal(size=(3, dims))
    state = centers[label] + 0.6 * rng.normal(size=(n, dims))
    noise = [0.5 * rng.normal(size=(n, dims)) for _ in range(2)]
    X = np.concatenate([state + noise[m] + 0.3 * shifts[batch] + 0.2 * m for m in range(2)])
    X_pre = np.concatenate([state + noise[m] + 2.0 * shifts[batch] + 3.0 * m for m in range(2)])
    return {"X": X.astype(np.float32), "X_pre": X_pre.astype(np.float32), "label": np.tile(label.astype(str), 2), "batch": np.tile(batch.astype(str), 2),
            "modality": np.repeat(["rna", "adt"], n), "pair": np.tile(np.arange(n).astype(str), 2)}


def stage_env(args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch

    from cellweave.neighbors.faiss_index import faiss_gpu_available, faiss_installed

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                           "cuda": torch.version.cuda, "cpus": os.cpu_count(), "faiss_installed": faiss_installed(),
                           "faiss_gpu": faiss_gpu_available()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        out |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(), "capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    if faiss_installed():
        import faiss

        out["faiss_version"] = faiss.__version__
    return out


def stage_tests(args: argparse.Namespace, device: str) -> dict[str, Any]:
    if not device.startswith("cuda"):
        return {"skipped": "no CUDA device: the CUDA-only tests would all skip"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "not slow", "-k", "cuda or gpu", "tests"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.tests_timeout)
    tail = done.stdout.strip().splitlines()[-15:]
    return {"command": " ".join(cmd[2:]), "returncode": done.returncode, "summary": tail[-1] if tail else "", "tail": tail}


def stage_knn(args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch

    from cellweave.neighbors import knn_graph
    from cellweave.neighbors.faiss_index import faiss_gpu_available, faiss_installed

    X = mixture(args.cells, args.dims)["X"]
    out: dict[str, Any] = {"cells": len(X), "dims": args.dims, "k": K}
    gpu_backend = "faiss-gpu" if device.startswith("cuda") and faiss_gpu_available() else "torch"
    data = torch.from_numpy(X).to(device)
    t = time.perf_counter()
    _, exact = knn_graph(data, K, backend=gpu_backend)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out["exact"] = {"backend": f"{gpu_backend} on {device}", "seconds": time.perf_counter() - t}
    exact = np.asarray(exact.cpu() if isinstance(exact, torch.Tensor) else exact)
    if faiss_installed():
        t = time.perf_counter()
        _, hnsw = knn_graph(X, K, backend="faiss-hnsw")
        out["hnsw_cpu"] = {"backend": "faiss-hnsw on cpu", "seconds": time.perf_counter() - t}
        rows = np.random.default_rng(0).choice(len(X), min(RECALL_QUERIES, len(X)), replace=False)
        hits = [len(np.intersect1d(exact[r], np.asarray(hnsw)[r])) for r in rows]
        out["hnsw_recall_at_k"] = float(np.mean(hits) / K)
        out["speedup_exact_vs_hnsw"] = out["hnsw_cpu"]["seconds"] / out["exact"]["seconds"]
    else:
        out["hnsw_cpu"] = {"skipped": "faiss is not installed"}
    return out


def _atlas(args: argparse.Namespace) -> dict[str, Path]:
    from cellweave.simulate import simulate_atlas

    root = Path(args.data or Path(args.out) / "data") / f"atlas-{args.train_cells}"
    if all((root / f"{m}.zarr").exists() for m in ("rna", "adt")) and (root / "links.tsv").exists():
        return {"rna": root / "rna.zarr", "adt": root / "adt.zarr", "links": root / "links.tsv"}
    return simulate_atlas(root, args.train_cells, modalities=("rna", "adt"), seed=0, overwrite=True, progress=False)


def steps_per_s(model: Any, device: str, precision: str, warmup: int, steps: int, workers: int) -> dict[str, float]:
    """Time ``steps`` training steps after ``warmup`` (wall time between step ends; CUDA synchronised)."""
    import torch

    from cellweave.train import Trainer

    torch.manual_seed(0)
    module = model.build_module()
    ends: list[float] = []
    step = module.training_step

    def timed(batch: Any, ctx: Any) -> dict:
        terms = step(batch, ctx)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
        return terms

    module.training_step = timed
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(warmup + steps, device=device, precision=precision, grad_clip=model.grad_clip, seed=0,
                      progress=False, num_workers=workers, checkpoint_minutes=None)
    trainer.fit(module, model.train_stream())
    gaps = np.diff(ends[max(warmup - 1, 0):])
    out = {"steps": int(len(gaps)), "steps_per_s": float(len(gaps) / gaps.sum())}
    if device.startswith("cuda"):
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def stage_train(args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch

    from cellweave.models import METHODS

    t = time.perf_counter()
    paths = _atlas(args)
    out: dict[str, Any] = {"cells_per_modality": args.train_cells, "simulate_s": time.perf_counter() - t}
    precisions = ["32"] + (["bf16-mixed"] if device.startswith("cuda") and torch.cuda.is_bf16_supported() else [])
    settings = {"scmodal": {"links": str(paths["links"]), "seed": 0}, "scmrdr": {"links": str(paths["links"]), "seed": 0}}
    for method, extra in settings.items():
        t = time.perf_counter()
        model = METHODS[method].from_settings({"rna": paths["rna"], "adt": paths["adt"]}, extra)
        res: dict[str, Any] = {"setup_s": time.perf_counter() - t}
        for precision in precisions:
            res[precision] = steps_per_s(model, device, precision, args.warmup, args.steps, args.workers)
        if len(precisions) == 2:
            res["bf16_speedup"] = res["bf16-mixed"]["steps_per_s"] / res["32"]["steps_per_s"]
        out[method] = res
    return out


def stage_evaluate(args: argparse.Namespace, device: str) -> dict[str, Any]:
    import pandas as pd

    from cellweave.evaluate import evaluate_embedding

    data = mixture(args.cells, args.dims, seed=1)
    obs = pd.DataFrame({k: data[k] for k in ("label", "batch", "modality", "pair")})
    t = time.perf_counter()
    res = evaluate_embedding(data["X"], obs, label_key="label", batch_key="batch", modality_key="modality", pair_key="pair",
                              X_pre=data["X_pre"])
    doc = res.to_dict()
    return {"cells": args.cells, "seconds": time.perf_counter() - t, "step_seconds": res.seconds,
            "aggregate": doc["aggregate"]}


RUNNERS: dict[str, Callable[[argparse.Namespace, str], dict[str, Any]]] = {
    "env": stage_env, "tests": stage_tests, "knn": stage_knn, "train": stage_train, "evaluate": stage_evaluate}


def table(doc: dict[str, Any]) -> str:
    """The results as Markdown rows (stage, what, figure)."""
    rows = ["| stage | what | figure |", "|---|---|---|"]
    env = doc["stages"].get("env", {})
    rows.append(f"| env | device | {env.get('gpu', env.get('device', '?'))}, torch {env.get('torch', '?')}, "
                f"FAISS GPU {'yes' if env.get('faiss_gpu') else 'no (torch exact kNN instead)'} |")
    for name, res in doc["stages"].items():
        if "skipped" in res or "error" in res:
            rows.append(f"| {name} | {'skipped' if 'skipped' in res else 'failed'} | {res.get('skipped') or res.get('error')} |")
            continue
        if name == "tests":
            rows.append(f"| tests | `{res['command']}` | {res['summary']} |")
        elif name == "knn":
            rows.append(f"| knn | {res['cells']:,} x {res['dims']}, k={res['k']}: {res['exact']['backend']} | {res['exact']['seconds']:.1f} s |")
            if "seconds" in res["hnsw_cpu"]:
                rows.append(f"| knn | faiss-hnsw on cpu ({doc['stages']['env'].get('cpus')} cores) | "
                            f"{res['hnsw_cpu']['seconds']:.1f} s, recall@{res['k']} {res['hnsw_recall_at_k']:.4f}, "
                            f"GPU x{res['speedup_exact_vs_hnsw']:.1f} |")
        elif name == "train":
            for method in ("scmodal", "scmrdr"):
                if method in res:
                    for p in ("32", "bf16-mixed"):
                        if p in res[method]:
                            r = res[method][p]
                            mem = f", peak {r['peak_gpu_memory_gb']:.2f} GB" if "peak_gpu_memory_gb" in r else ""
                            rows.append(f"| train | {method} {p}, {res['cells_per_modality']:,} cells/modality | "
                                        f"{r['steps_per_s']:.2f} steps/s{mem} |")
        elif name == "evaluate":
            rows.append(f"| evaluate | metric suite, {res['cells']:,} cells | {res['seconds']:.0f} s |")
    rows.append(f"| total | wall time | {doc['seconds']:.0f} s |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cells", type=int, default=1_000_000, help="cells of the kNN graph and of the evaluation")
    p.add_argument("--train-cells", type=int, default=1_000_000, help="simulated cells per modality for the step rates")
    p.add_argument("--dims", type=int, default=30)
    p.add_argument("--steps", type=int, default=100, help="timed training steps per case")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the training stream")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cpu")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--budget-s", type=float, default=540.0, help="stages not started by then are skipped")
    p.add_argument("--tests-timeout", type=float, default=300.0)
    p.add_argument("--data", type=Path, help="reuse the simulated atlas here (default OUT/data)")
    args = p.parse_args(argv)
    import torch

    from cellweave.data.atomic import atomic_write_bytes

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    doc: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "stages": {}}
    for name in ["env", *[s for s in args.stages if s != "env"]]:
        spent = time.perf_counter() - start
        if spent > args.budget_s:
            doc["stages"][name] = {"skipped": f"time budget spent ({spent:.0f} s > {args.budget_s:.0f} s)"}
            continue
        t = time.perf_counter()
        try:
            doc["stages"][name] = RUNNERS[name](args, device)
        except Exception as exc:  # noqa: BLE001 - one failed stage must not cost the others
            doc["stages"][name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        doc["stages"][name]["stage_s"] = time.perf_counter() - t
        print(f"{name}: {time.perf_counter() - t:.1f}s", flush=True)
        doc["seconds"] = time.perf_counter() - start
        atomic_write_bytes(args.out / "gpu_check.json", json.dumps(doc, indent=2, default=str).encode())
    doc["seconds"] = time.perf_counter() - start
    atomic_write_bytes(args.out / "gpu_check.json", json.dumps(doc, indent=2, default=str).encode())
    atomic_write_bytes(args.out / "gpu_check.md", table(doc).encode())
    print(table(doc))
    return doc


if __name__ == "__main__":
    main()
