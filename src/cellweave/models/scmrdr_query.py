"""New batches of a trained scMRDR model, added the scArches way (architecture surgery, Lotfollahi et al. 2022).

Each new batch gets new input weights of the first layer of the shared encoder, the specific encoder and the
decoder (the columns a one-hot batch covariate would feed), i.e. a learned shift of that layer's pre-activation
for the batch's cells. They start at zero in the encoders (a new batch starts as the reference sees it) and at the
mean of the reference batches' columns in the decoder, and are fitted on the query cells alone with the model's
loss (masked reconstruction + beta KL) while every trained weight stays frozen, batch norms and dropout in eval
mode. Reference cells never meet the new parameters, so their embedding is unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import CellBatch, CellStream
from ..losses import kl_normal, masked_reconstruction_loss
from ..train import adam
from .scmrdr_module import SCMRDRModule


def _shifted(mlp: nn.Sequential, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` with ``shift`` added to the first layer's output."""
    h = mlp[0](x) + shift
    for layer in list(mlp)[1:]:
        h = layer(h)
    return h


class QueryBatches(nn.Module):
    """First-layer parameters of new batches beside a frozen :class:`~cellweave.models.scmrdr_module.SCMRDRModule`.

    Parameters
    ----------
    module
        The trained module (not modified).
    categories
        Names of the new batches; batch codes ``n_reference + i`` denote ``categories[i]``.
    """

    def __init__(self, module: SCMRDRModule, categories: Sequence[str]) -> None:
        super().__init__()
        self.categories = [str(c) for c in categories]
        self.n_reference = module.n_batches
        n = len(self.categories)
        self.shared = nn.Parameter(torch.zeros(n, module.encoder_shared[0].out_features))
        self.specific = nn.Parameter(torch.zeros(n, module.encoder_specific[0].out_features))
        first = module.decoder[0]
        start = first.in_features - module.n_batches
        reference = first.weight[:, start:].detach().T  # (n_batches, hidden): a one-hot column per batch
        init = reference.mean(0) if module.n_batches else torch.zeros(first.out_features)
        self.decoder = nn.Parameter(init.repeat(n, 1).clone())

    def _shift(self, table: torch.Tensor, codes: torch.Tensor | None, n: int) -> torch.Tensor:
        if codes is None:
            return torch.zeros(n, table.shape[1], dtype=table.dtype, device=table.device)
        new = codes - self.n_reference
        out = table[new.clamp(min=0)]
        return torch.where((new >= 0).unsqueeze(1), out, torch.zeros_like(out))

    def encode(self, module: SCMRDRModule, x: torch.Tensor, modality: torch.Tensor,
               codes: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Posterior parameters ``(mu_u, logvar_u, mu_s, logvar_s)``; cells of new batches get their shifts."""
        onehot = F.one_hot(modality, len(module.modalities)).to(x.dtype)
        mu_u, logvar_u = _shifted(module.encoder_shared, x, self._shift(self.shared, codes, len(x))).chunk(2, dim=-1)
        mu_s, logvar_s = _shifted(module.encoder_specific, torch.cat([x, onehot], dim=-1),
                                  self._shift(self.specific, codes, len(x))).chunk(2, dim=-1)
        return mu_u, logvar_u, mu_s, logvar_s

    def decode(self, module: SCMRDRModule, z_u: torch.Tensor, z_s: torch.Tensor,
               codes: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Decoder heads; a reference batch feeds its one-hot column, a new batch its new parameters."""
        parts = [z_u, z_s]
        if module.n_batches:
            cov = torch.zeros(len(z_u), module.n_batches, dtype=z_u.dtype, device=z_u.device)
            if codes is not None:
                known = codes < self.n_reference
                cov[known] = F.one_hot(codes[known], module.n_batches).to(z_u.dtype)
            parts.append(cov)
        out = _shifted(module.decoder, torch.cat(parts, dim=-1), self._shift(self.decoder, codes, len(z_u)))
        return dict(zip(module.heads, out.chunk(len(module.heads), dim=-1)))

    def _inputs(self, module: SCMRDRModule, modality: str, batch: CellBatch, device: torch.device):
        x = batch.dense(device).float()
        enc = x if module.likelihoods[modality] == "gaussian" else torch.log1p(x)
        mods = torch.full((len(x),), module.modalities.index(modality), dtype=torch.long, device=device)
        codes = None if batch.batch is None else batch.batch.to(device=device, dtype=torch.long)
        mask = module.measured[module.modalities.index(modality)]
        if batch.mask is not None:
            mask = mask & batch.mask.to(device=device, dtype=torch.bool)
        return x, enc, mods, codes, mask

    def loss(self, module: SCMRDRModule, modality: str, batch: CellBatch) -> torch.Tensor:
        """Mean masked reconstruction + ``beta`` KL of one query minibatch (posterior samples)."""
        device = self.shared.device
        x, enc, mods, codes, mask = self._inputs(module, modality, batch, device)
        mu_u, logvar_u, mu_s, logvar_s = self.encode(module, enc, mods, codes)
        z_u = mu_u + torch.randn_like(mu_u) * torch.exp(0.5 * logvar_u)
        z_s = mu_s + torch.randn_like(mu_s) * torch.exp(0.5 * logvar_s)
        heads = self.decode(module, z_u, z_s, codes)
        nll = module.reconstruction_nll(modality, heads, x, mask)
        recon = masked_reconstruction_loss(nll, mask if module.masked else None, reduction="none")
        prior_mean, prior_logvar = module.prior(mods)
        kl = kl_normal(mu_u, logvar_u) + kl_normal(mu_s, logvar_s, prior_mean, prior_logvar)
        return (recon + module.beta * kl).mean()

    @torch.no_grad()
    def embed(self, module: SCMRDRModule, modality: str, batch: CellBatch) -> dict[str, torch.Tensor]:
        """Posterior means (``X_cellweave``: ``z_u``, ``X_cellweave_specific``: ``z_s``) of one minibatch."""
        _, enc, mods, codes, _ = self._inputs(module, modality, batch, self.shared.device)
        mu_u, _, mu_s, _ = self.encode(module, enc, mods, codes)
        return {"X_cellweave": mu_u.float(), "X_cellweave_specific": mu_s.float()}


def fit_query_batches(module: SCMRDRModule, query: QueryBatches, streams: Mapping[str, CellStream], max_steps: int,
                      device: torch.device, lr: float | None = None, progress: bool = True) -> list[float]:
    """Fit ``query``'s parameters on the query cells for ``max_steps`` steps (one minibatch of every query modality
    each), the trained module frozen and in eval mode; returns the loss of every step.

    The module's weights, buffers and training mode are restored as they were (its values never change: no
    gradient reaches them and eval mode leaves batch-norm statistics alone).
    """
    was_training = module.training
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    module.to(device).eval().requires_grad_(False)
    query.to(device).train()
    opt = adam(query.parameters(), lr=lr or module.lr)
    its = {m: itertools.chain.from_iterable(_epochs(s)) for m, s in streams.items()}
    losses = []
    try:
        for _ in tqdm(range(max_steps), desc="fit new batches", unit="step", disable=not progress):
            loss = sum(query.loss(module, m, next(it).to(device)) for m, it in its.items())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for name, p in module.named_parameters():
            p.requires_grad_(flags[name])
        module.train(was_training)
        query.eval()
    return losses


def _epochs(stream: CellStream):
    for epoch in itertools.count():
        stream.set_epoch(epoch)
        yield iter(stream)
