"""CVQVAE's networks and its training step (the math; the user API wraps it).

Paired cells, two or more named modalities with their own input widths (PCA of RNA, LSI of ATAC, scaled
protein ...). Per modality an encoder ``E_m`` ([x, batch one-hot] -> 1024 -> 512 -> 256 -> q, BatchNorm + Mish
as in the authors' code) and a decoder ``D_m`` ([code, batch one-hot] -> 256 -> 512 -> 1024 -> d_m). One EMA
codebook (:class:`~cellweave.nn.EMACodebook`) is shared by all modalities, so a code index means the same
thing whatever modality a cell was encoded from. A training step on one paired minibatch:

1. ``z_m = E_m(x_m)`` for every modality; all ``z_m`` are quantised together (one EMA update of the codebook
   per step, with every modality's vectors): ``q_m = z_m + sg[e_{z_m} - z_m]``;
2. ``loss = w_self * sum_m R(D_m(q_m), x_m) + w_cross * sum_{s != t} R(D_t(q_s), x_t)
   + w_latent * mean_{a < b} MSE(z_a, z_b) + commitment``, where ``R(x_hat, x) = MSE(x_hat, x) / Var(x)``
   and ``commitment = beta * MSE(z, sg[e_z])`` over all modalities' vectors. The authors divide by the
   variance of the whole training matrix; streamed, ``Var(x)`` is a running cell-weighted mean of the
   minibatches' variances (over about the last ``VAR_WINDOW`` cells), kept in a buffer.

Defaults follow the paper and the authors' code (docs/methods/cvqvae.md): 2048 codes, decay 0.99, commitment
0.25, latent MSE weight 10, latent width 16, Adam. Departures: the paper's eq. 2 trains cross reconstruction
only; self reconstruction is added (weight 1, 0 gives the paper's loss); the decoders also see the batch
one-hot (the authors append it to the input and reconstruct it); LayerNorm replaces the authors' BatchNorm by
default (per cell: no dependence on the minibatch's make-up, no running statistics to keep in step across
DDP ranks, and a one-cell last minibatch trains); the learning rate is 1e-3 (theirs 1e-4, for 200 epochs).

The cell embedding (:meth:`CVQVAEModule.embed`) is the *continuous* encoder output ``z`` before quantisation,
as in the authors' code (which saves the encoder outputs); the code index of each cell comes with it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import CellBatch
from ..errors import InputError
from ..nn import MLP, EMACodebook
from ..train import StepContext, TrainingModule, adam
from ..train.module import evaluating

#: ``Var(x)`` in the reconstruction terms averages the minibatch variances of about this many recent cells
VAR_WINDOW = 10_000


@dataclass
class CVQVAEWeights:
    """Loss weights (ablations set a weight to 0)."""

    self_recon: float = 1.0
    cross: float = 1.0
    latent: float = 10.0


class CVQVAEModule(TrainingModule):
    """Cross-trained encoders and decoders with a shared EMA vector-quantisation codebook.

    Parameters
    ----------
    n_features
        Input width per modality (e.g. ``{"rna": 50, "atac": 50}``); at least two modalities.
    n_batches
        Number of batch categories fed as a one-hot to every encoder and decoder (0: no batch input).
    n_latent
        Width of the latent space and of the codes.
    hidden
        Hidden widths of the encoders (the decoders use them reversed).
    norm
        Normalisation of the hidden layers: ``"layer"`` or ``"batch"`` (the authors').
    n_codes, decay, commitment, dead_code_threshold
        Codebook settings (see :class:`~cellweave.nn.EMACodebook`).
    weights
        Loss weights.
    lr, weight_decay
        Adam settings.
    """

    def __init__(self, n_features: Mapping[str, int], n_batches: int = 0, n_latent: int = 16,
                 hidden: Sequence[int] = (1024, 512, 256), norm: str = "layer", n_codes: int = 2048, decay: float = 0.99,
                 commitment: float = 0.25, dead_code_threshold: float = 1e-3, weights: CVQVAEWeights | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        if len(n_features) < 2:
            raise InputError("CVQVAE", "n_features", f"needs two or more modalities, got {list(n_features)}",
                             "pass the input width of every paired modality, e.g. {'rna': 50, 'atac': 50}")
        if n_batches < 0:
            raise InputError("CVQVAE", "n_batches", f"must be >= 0, got {n_batches}", "pass the number of batch categories")
        if norm not in ("layer", "batch"):
            raise InputError("CVQVAE", "norm", f"unknown normalisation {norm!r}", "use 'layer' or 'batch'")
        self.order: list[str] = list(n_features)
        self.n_features = dict(n_features)
        self.n_batches, self.n_latent, self.hidden, self.norm = n_batches, n_latent, tuple(hidden), norm
        self.weights = weights or CVQVAEWeights()
        self.lr, self.weight_decay = lr, weight_decay
        self.encoders = nn.ModuleDict({m: MLP(d + n_batches, n_latent, self.hidden, nn.Mish, norm=norm)
                                       for m, d in n_features.items()})
        self.decoders = nn.ModuleDict({m: MLP(n_latent + n_batches, d, self.hidden[::-1], nn.Mish, norm=norm)
                                       for m, d in n_features.items()})
        self.codebook = EMACodebook(n_codes, n_latent, decay=decay, commitment=commitment,
                                    dead_code_threshold=dead_code_threshold)
        self.register_buffer("input_var", torch.zeros(len(self.order)))
        self.register_buffer("cells_seen", torch.zeros((), dtype=torch.float64))

    def hparams(self) -> dict:
        """Constructor settings (for the run's resolved config)."""
        cb = self.codebook
        return {"n_features": self.n_features, "n_batches": self.n_batches, "n_latent": self.n_latent,
                "hidden": list(self.hidden), "norm": self.norm, "n_codes": cb.n_codes, "decay": cb.decay,
                "commitment": cb.commitment,
                "dead_code_threshold": cb.dead_code_threshold, "weights": asdict(self.weights), "lr": self.lr,
                "weight_decay": self.weight_decay}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)}

    # ------------------------------------------------------------ pieces
    def batch_onehot(self, batch_codes: torch.Tensor | None, n: int, device: torch.device,
                     source: str) -> torch.Tensor | None:
        """One-hot ``(n, n_batches)`` of the batch codes of ``n`` cells (``None`` without batch input)."""
        if self.n_batches == 0:
            return None
        if batch_codes is None:
            raise InputError(source, "batch", f"the model was built with n_batches={self.n_batches} but the cells carry "
                             "no batch codes", "stream with the same batch_key as in training")
        codes = batch_codes.to(device).long()
        if codes.shape != (n,):
            raise InputError(source, "batch", f"expected {n} batch codes, got shape {tuple(codes.shape)}",
                             "pass one code per cell")
        if n and (int(codes.min()) < 0 or int(codes.max()) >= self.n_batches):
            raise InputError(source, "batch", f"batch codes must lie in [0, {self.n_batches}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]",
                             "use the batch categories the model was built with")
        return F.one_hot(codes, self.n_batches).float()

    @staticmethod
    def _run(net: nn.Module, h: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        return net(h if onehot is None else torch.cat([h, onehot.to(h.dtype)], dim=1))

    def _check_input(self, m: str, x: torch.Tensor) -> None:
        if m not in self.n_features:
            raise InputError("CVQVAE", "modality", f"unknown modality {m!r}", f"use one of {self.order}")
        if x.ndim != 2 or x.shape[1] != self.n_features[m]:
            raise InputError(m, "X", f"expected {self.n_features[m]} columns, got shape {tuple(x.shape)}",
                             "feed the same features (e.g. the same PCA/LSI) the model was built with")

    def encode(self, m: str, x: torch.Tensor, batch_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Continuous latent ``z = E_m([x, batch one-hot])`` ``(n, n_latent)``."""
        self._check_input(m, x)
        return self._run(self.encoders[m], x, self.batch_onehot(batch_codes, x.shape[0], x.device, m))

    def decode(self, m: str, q: torch.Tensor, batch_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction ``D_m([q, batch one-hot])`` in modality ``m``'s input space."""
        return self._run(self.decoders[m], q, self.batch_onehot(batch_codes, q.shape[0], q.device, m))

    def _dense(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        missing = [m for m in self.order if m not in batch]
        if missing:
            raise InputError("batch", "modality", f"the paired minibatch lacks {missing}",
                             f"stream all of {self.order} paired")
        n = {len(batch[m]) for m in self.order}
        if len(n) != 1:
            raise InputError("batch", "cells", f"paired minibatches must hold the same cells; got sizes {sorted(n)}",
                             "stream the modalities with a PairedStream")
        return {m: batch[m].dense(ctx.device).float() for m in self.order}

    @torch.no_grad()
    def _input_var(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-modality ``Var(x)`` for the reconstruction terms; training minibatches update the running value."""
        batch_var = torch.stack([x[m].var(0, unbiased=False).mean() for m in self.order])
        if self.training:
            n = x[self.order[0]].shape[0]
            self.cells_seen.add_(n)
            rate = (n / self.cells_seen.clamp(max=VAR_WINDOW)).to(batch_var.dtype)
            self.input_var.add_((batch_var - self.input_var) * rate)
        elif float(self.cells_seen) == 0:
            return batch_var.clamp_min(1e-8)  # not trained yet: this minibatch's variance
        return self.input_var.clamp_min(1e-8)

    def losses(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Every loss term of one paired minibatch (means over its cells); ``loss`` is the weighted total.

        In training mode this also updates the codebook (one EMA step).
        """
        x = self._dense(batch, ctx)
        for m in self.order:
            self._check_input(m, x[m])
        oh = {m: self.batch_onehot(batch[m].batch, x[m].shape[0], ctx.device, m) for m in self.order}
        w = self.weights
        with ctx.autocast():
            z = {m: self._run(self.encoders[m], x[m], oh[m]).float() for m in self.order}
        sizes = [z[m].shape[0] for m in self.order]
        vq = self.codebook(torch.cat([z[m] for m in self.order]))
        q = dict(zip(self.order, vq.quantized.split(sizes), strict=True))
        var = dict(zip(self.order, self._input_var(x), strict=True))
        zero = vq.commitment * 0.0
        self_recon, cross = zero, zero
        with ctx.autocast():
            for s, t in itertools.product(self.order, self.order):
                err = F.mse_loss(self._run(self.decoders[t], q[s], oh[t]).float(), x[t]) / var[t]
                if s == t:
                    self_recon = self_recon + err
                else:
                    cross = cross + err
        pairs = list(itertools.combinations(self.order, 2))
        latent = sum((F.mse_loss(z[a], z[c]) for a, c in pairs), zero) / len(pairs)
        total = w.self_recon * self_recon + w.cross * cross + w.latent * latent + vq.commitment
        return {"loss": total, "self_recon": self_recon, "cross": cross, "latent": latent, "commitment": vq.commitment,
                "perplexity": vq.perplexity}

    # ------------------------------------------------------------ trainer hooks
    def training_step(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        terms = self.losses(batch, ctx)
        ctx.optimize(terms["loss"], "model")
        return {k: v.detach() for k, v in terms.items()}

    def validation_step(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        n = len(batch[self.order[0]])
        terms = self.losses(batch, ctx)
        out = {k: v.detach() * n for k, v in terms.items() if k != "perplexity"}
        out["n"] = torch.tensor(n)
        return out

    # ------------------------------------------------------------ inference
    def embed(self, modality: str, batch: CellBatch) -> dict[str, torch.Tensor]:
        """Embedding of the cells of one modality.

        Returns
        -------
        dict
            ``"X_cellweave"``: the continuous encoder output ``z`` before quantisation ``(n, n_latent)``;
            ``"codes"``: the index of each cell's nearest code ``(n,)``.
        """
        device = next(self.parameters()).device
        with evaluating(self):
            z = self.encode(modality, batch.dense(device).float(), batch.batch).float()
            return {"X_cellweave": z, "codes": self.codebook.nearest(z)}

    def translate(self, source: str, target: str, x: torch.Tensor, batch_codes: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-modal prediction ``D_target(e_z)`` with ``z = E_source(x)`` (through the codebook, as in training)."""
        if target not in self.n_features:
            raise InputError("CVQVAE", "target", f"unknown modality {target!r}", f"use one of {self.order}")
        device = next(self.parameters()).device
        with evaluating(self):
            z = self.encode(source, x.to(device).float(), batch_codes).float()
            return self.decode(target, self.codebook(z).quantized, batch_codes)
