"""Run the authors' published scMODAL or scMRDR training loop on prepared inputs (executed by bench/authors.py,
possibly with another Python that has the authors' dependencies). Their code is imported unchanged from
``--code``; this script only feeds it and observes it.

scMODAL: ``scmodal.model.Model(batch_size=500, training_steps=max(--steps), seed=--seed)``, ``preprocess(adata1,
adata2, shared_gene_num)``, ``train()``. Its loop has no callback, so the latents at each of ``--steps`` are read
by wrapping the generator's Adam ``step``: after the optimizer step that ends training step n, both encoders embed
every cell (no gradient; the networks have no dropout or normalisation, so this equals the authors' ``eval()``).
The wall time of every training step is recorded the same way (seconds from the end of one generator step to
the end of the next, read-outs excluded).

Writes ``--out`` (npz): ``latent_<n>_a``, ``latent_<n>_b`` per checkpoint, ``step_times``, ``peak_rss_mb``; prints
one JSON line (steps/s after ``--warmup`` steps) for bench/train.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def run_scmodal(args: argparse.Namespace) -> dict[str, np.ndarray]:
    import anndata as ad
    import torch

    sys.path.insert(0, args.code)
    import scmodal  # the authors' package

    inputs = np.load(args.inputs)
    a, b, n_shared = inputs["a"], inputs["b"], int(inputs["n_shared"])
    checkpoints = sorted(set(args.steps))
    out: dict[str, np.ndarray] = {}
    times: list[float] = []
    model = scmodal.model.Model(batch_size=args.batch_size, training_steps=max(checkpoints), seed=args.seed,
                                model_path=args.model_path)
    model.preprocess(ad.AnnData(a), ad.AnnData(b), shared_gene_num=n_shared)
    Adam = scmodal.model.optim.Adam

    class ObservedAdam(Adam):  # the first Adam the loop builds is the generator's (encoders + decoders)
        made = 0

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.generator = ObservedAdam.made == 0
            ObservedAdam.made += 1
            self.count = 0
            self.last = time.perf_counter()

        def step(self, *a, **k):
            loss = super().step(*a, **k)
            if self.generator:
                self.count += 1
                times.append(time.perf_counter() - self.last)
                if args.out and self.count in checkpoints:
                    with torch.no_grad():
                        xa = torch.from_numpy(model.emb_A).float().to(model.device)
                        xb = torch.from_numpy(model.emb_B).float().to(model.device)
                        out[f"latent_{self.count}_a"] = model.E_A(xa).cpu().numpy()
                        out[f"latent_{self.count}_b"] = model.E_B(xb).cpu().numpy()
                self.last = time.perf_counter()  # a step's time excludes the read-out before it
            return loss

    scmodal.model.optim.Adam = ObservedAdam
    t0 = time.perf_counter()
    model.train()
    out["train_s"] = np.array(time.perf_counter() - t0)
    out["step_times"] = np.array(times)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--method", choices=["scmodal"], default="scmodal")
    p.add_argument("--code", required=True, help="folder holding the authors' package")
    p.add_argument("--inputs", required=True)
    p.add_argument("--steps", type=int, nargs="+", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-path", required=True, help="where their loop saves its checkpoint")
    p.add_argument("--warmup", type=int, default=0, help="first steps left out of steps_per_s")
    p.add_argument("--out", help="npz of the latents at --steps and the step times")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = run_scmodal(args)
    out["peak_rss_mb"] = np.array(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.out:
        np.savez(args.out, **out)
    timed = out["step_times"][args.warmup:]
    print(json.dumps({"case": "authors", "steps": int(len(timed)), "steps_per_s": float(len(timed) / timed.sum()),
                      "train_s": float(out["train_s"])}))


if __name__ == "__main__":
    main()
