"""One rank of the DDP tests (run by ``torchrun`` from tests/test_ddp.py; not collected by pytest).

Usage: ``torchrun --nproc-per-node 2 tests/ddp_worker.py OUT CASES_JSON [FIT_ARGS_JSON]``. The process group is
joined as ``cellweave fit`` joins it (:func:`~cellweave.train.distributed.distributed_session`, from torchrun's
environment). Every case trains :class:`TinyVQ` through the Trainer on the rank's shard of a store and writes,
per rank, the cell rows of every step and the final parameters and buffers to ``OUT/<case>/rank<r>.pt``. Then,
in the same process group, the ``cellweave`` command runs with FIT_ARGS (one start-up for both: imports are slow).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from cellweave.cli import main as cellweave_main
from cellweave.data import CellStream, open_modality
from cellweave.nn import EMACodebook
from cellweave.train import Trainer, TrainingModule
from cellweave.train.distributed import distributed_session, rank


class TinyVQ(TrainingModule):
    """A linear VQ autoencoder: two optimizers, an EMA codebook, and a buffer updated from each rank's own batches.

    The losses are means over the step's cells, so averaging the ranks' gradients (equal batch sizes) gives the
    gradient of the mean over the union of their batches, and the codebook sums its counts and sums over ranks:
    a single process fed that union trains the same. A step's batch is one :class:`~cellweave.data.CellBatch`,
    or a dict of them (the union, for the reference).
    """

    def __init__(self, n_vars: int, n_latent: int = 3) -> None:
        super().__init__()
        self.enc = nn.Linear(n_vars, n_latent)
        self.codebook = EMACodebook(8, n_latent, decay=0.8, restart=False)
        self.dec = nn.Linear(n_latent, n_vars)
        self.register_buffer("seen_mean", torch.zeros(n_vars))
        self.steps: list[list[int]] = []

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"encoder": torch.optim.Adam(self.enc.parameters(), lr=1e-2),
                "decoder": torch.optim.SGD(self.dec.parameters(), lr=0.05, momentum=0.9)}

    def training_step(self, batch, ctx) -> dict[str, torch.Tensor]:
        parts = list(batch.values()) if isinstance(batch, dict) else [batch]
        self.steps.append([int(r) for b in parts for r in b.rows])
        x = torch.log1p(torch.cat([b.dense(ctx.device) for b in parts]))
        q = self.codebook(self.enc(x))
        loss = (self.dec(q.quantized) - x).pow(2).mean() + q.commitment
        ctx.optimize(loss, "encoder")
        recon = (self.dec(q.quantized.detach()) - x).pow(2).mean()
        ctx.optimize(recon, "decoder")
        with torch.no_grad():
            self.seen_mean.mul_(0.5).add_(0.5 * x.mean(0))
        return {"loss": loss.detach(), "recon": recon.detach()}


def make_module(n_vars: int) -> TinyVQ:
    torch.manual_seed(1)
    return TinyVQ(n_vars)


def make_stream(store, case: dict, rank: int | None = None, world_size: int | None = None) -> CellStream:
    return CellStream(store, case["batch_size"], seed=5, chunk_size=8, block_size=48, drop_last=case["drop_last"],
                      rank=rank, world_size=world_size)


def make_trainer(case: dict, run_dir: Path | None) -> Trainer:
    return Trainer(case["steps"], device="cpu", seed=0, log_every=3, checkpoint_every=5, num_workers=case["num_workers"],
                   run_dir=run_dir, progress=False)


def main(out: str, cases_json: str, fit_args_json: str = "[]") -> int:
    torch.set_num_threads(1)
    with distributed_session("cpu") as joined:
        assert joined
        for case in json.loads(cases_json):
            store = open_modality(case["store"])
            module = make_module(store.n_vars)
            target = Path(out) / case["name"]
            result = make_trainer(case, target / "run").fit(module, make_stream(store, case))
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            torch.save({"steps": module.steps, "state": state, "history": result.history}, target / f"rank{rank()}.pt")
        for fit_args in json.loads(fit_args_json):  # `cellweave fit` commands, one after another
            code = cellweave_main(fit_args)
            if code:
                return code
        return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
