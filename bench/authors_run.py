"""Run the authors' published scMODAL or scMRDR training loop on prepared inputs (executed by bench/authors.py,
possibly with another Python that has the authors' dependencies). Their code is imported unchanged from
``--code``; this script only feeds it and observes it.

scMODAL: ``scmodal.model.Model(batch_size=500, training_steps=max(--steps), seed=--seed)``, ``preprocess(adata1,
adata2, shared_gene_num)``, ``train()``. Its loop has no callback, so the latents at each of ``--steps`` are read
by wrapping the generator's Adam ``step``: after the optimizer step that ends training step n, both encoders embed
every cell (no gradient; the networks have no dropout or normalisation, so this equals the authors' ``eval()``).
The wall time of every training step is recorded the same way (seconds from the end of one generator step to
the end of the next, read-outs excluded).

scMRDR: ``scMRDR.module.Integration(adata, layer="counts", modality_key="modality", batch_key="batch",
feature_list=..., distribution="ZINB")``, ``setup(hidden_layers=[128, 128], latent_dim_shared=20,
latent_dim_specific=20, beta=2, gamma=5, lambda_adv=5, dropout_rate=0.2)`` (their README's and tri-/bi-modal
experiments' settings, the ones cellweave's defaults follow), ``train(epoch_num, batch_size=--batch-size, lr=1e-3,
early_stopping=False, valid_prop=0.1, random_state=--seed)``: enough epochs for ``max(--steps)`` minibatches, and the
run is stopped by an exception from the observer once the last count is read out. One step is one minibatch: their
loop's discriminator update then VAE update. The VAE's Adam ``step`` (the first Adam their loop builds) is wrapped:
after step n of ``--steps`` their own ``Integration.inference(update=False, returns=True)`` embeds every cell (eval
mode, ``mu`` of the shared encoder; the RNG state is saved and restored around it, so the read-outs do not change
the training that follows); step times are recorded as for scMODAL.

Writes ``--out`` (npz): ``latent_<n>_a``, ``latent_<n>_b`` per checkpoint, ``step_times``, ``peak_rss_mb``; prints
one JSON line (steps/s after ``--warmup`` steps) for bench/train.py.
"""

from __future__ import annotations

import argparse
import contextlib
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


class _Done(Exception):
    """Raised by the observer after the last read-out: ends the authors' loop at the chosen step."""


def run_scmrdr(args: argparse.Namespace) -> dict[str, np.ndarray]:
    import random

    import anndata as ad
    import pandas as pd
    import torch

    sys.path.insert(0, args.code)
    from scMRDR import module as scmrdr  # the authors' package

    inputs = np.load(args.inputs)
    x, modality, batch, features = inputs["x"], inputs["modality"].astype(str), inputs["batch"].astype(str), inputs["features"].astype(str)
    labels = sorted(set(modality))
    feature_list = {m: inputs[f"mask_{m}"].tolist() for m in labels}
    adata = ad.AnnData(X=x, obs=pd.DataFrame({"modality": modality, "batch": batch}, index=[f"c{i}" for i in range(len(x))]),
                       var=pd.DataFrame(index=features))
    adata.layers["counts"] = x
    checkpoints = sorted(set(args.steps))
    out: dict[str, np.ndarray] = {}
    times: list[float] = []
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = scmrdr.Integration(data=adata, layer="counts", modality_key="modality", batch_key="batch",
                               feature_list=feature_list, distribution="ZINB")
    model.setup(hidden_layers=[128, 128], latent_dim_shared=20, latent_dim_specific=20, beta=2, gamma=5, lambda_adv=5,
                dropout_rate=0.2, device=torch.device("cpu"))
    valid_prop = 0.1
    per_epoch = (len(x) - int(np.ceil(valid_prop * len(x)))) // args.batch_size  # their drop_last loader
    Adam = torch.optim.Adam

    class ObservedAdam(Adam):  # the first Adam their loop builds is the VAE's (encoders, decoder, prior)
        made = 0

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.vae = ObservedAdam.made == 0
            ObservedAdam.made += 1
            self.count = 0
            self.last = time.perf_counter()

        def step(self, *a, **k):
            loss = super().step(*a, **k)
            if self.vae:
                self.count += 1
                times.append(time.perf_counter() - self.last)
                if args.out and self.count in checkpoints:
                    rng = torch.get_rng_state()
                    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
                        z, _ = model.inference(n_samples=1, update=False, returns=True)
                    torch.set_rng_state(rng)
                    for m in labels:
                        out[f"latent_{self.count}_{m}"] = z[modality == m]
                if self.count >= checkpoints[-1]:
                    raise _Done
                self.last = time.perf_counter()  # a step's time excludes the read-out before it
            return loss

    torch.optim.Adam = ObservedAdam
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # their per-epoch prints; stdout keeps the one JSON line
            model.train(epoch_num=-(-checkpoints[-1] // per_epoch), batch_size=args.batch_size, lr=1e-3, adaptlr=False,
                        num_warmup=0, early_stopping=False, valid_prop=valid_prop, random_state=args.seed)
    except _Done:
        pass
    finally:
        torch.optim.Adam = Adam
    out["train_s"] = np.array(time.perf_counter() - t0)
    out["step_times"] = np.array(times)
    out["steps_per_epoch"] = np.array(per_epoch)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--method", choices=["scmodal", "scmrdr"], default="scmodal")
    p.add_argument("--code", required=True, help="folder holding the authors' package")
    p.add_argument("--inputs", required=True)
    p.add_argument("--steps", type=int, nargs="+", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, help="cells per minibatch (scMODAL: 500 per modality, their default; "
                   "scMRDR: 128 x the number of modalities, so a step sees as many cells as cellweave's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-path", required=True, help="where their loop saves its checkpoint")
    p.add_argument("--warmup", type=int, default=0, help="first steps left out of steps_per_s")
    p.add_argument("--out", help="npz of the latents at --steps and the step times")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.method == "scmodal":
        args.batch_size = args.batch_size or 500
        out = run_scmodal(args)
    else:
        args.batch_size = args.batch_size or 128 * len(set(np.load(args.inputs)["modality"].astype(str)))
        out = run_scmrdr(args)
    out["peak_rss_mb"] = np.array(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.out:
        np.savez(args.out, **out)
    timed = out["step_times"][args.warmup:]
    print(json.dumps({"case": "authors", "steps": int(len(timed)), "steps_per_s": float(len(timed) / timed.sum()),
                      "train_s": float(out["train_s"])}))


if __name__ == "__main__":
    main()
