"""scMRDR's networks and its training step (the math; the user API builds the streams and calls the trainer).

One beta-VAE for every modality, over the union feature space ``G`` (paper section 3, authors' code):

* shared encoder ``q(z_u | x)`` on ``log1p(x)`` (on ``x`` itself for Gaussian modalities, whose values are
  already normalised scores); standard normal prior;
* specific encoder ``q(z_s | x, m)`` on ``[log1p(x), one-hot(m)]``; learnable prior per modality
  ``N(mu_m, sigma_m^2 I)`` (a mean vector and one log-variance per modality);
* one decoder on ``[z_u, z_s, one-hot(batch)]``; per modality a likelihood: ZINB (default) or NB with mean
  ``softmax(logits) x library size`` and a dispersion per (modality, feature), or a Gaussian with a mean head
  and a log-variance per (modality, feature);
* an ``m``-class modality discriminator on samples of ``z_u``.

A training step takes one minibatch per modality (unpaired), concatenates them, and runs

1. one discriminator update: cross-entropy of the modality given the (detached) ``z_u`` samples;
2. one VAE update on ``recon + beta * KL + gamma * isometric + lam * adversarial``, where ``recon`` is the
   masked reconstruction loss (:func:`~cellweave.losses.masked_reconstruction_loss`), ``KL`` the sum of both
   prior terms, ``isometric`` the within-modality distance-matrix loss on posterior means
   (:func:`~cellweave.losses.isometric_loss`) and ``adversarial = -CE`` of the updated discriminator
   (the encoders maximise the discriminator's loss, paper eq. 9-10 and the authors' code).

Where this departs from the authors' code, and why:

* With the mask on, the softmax of a count modality runs over the columns it measures only, so the means of
  its measured features add up to its library size and the logits of unmeasured columns get no gradient
  from it (the authors' softmax spans all ``G`` columns and loses mass to columns a modality never sees).
* The library size is the sum of the modelled columns of the cell (``x.sum(1)``), as in scVI and the
  authors' code, not the store-wide total: the softmax only covers modelled columns.
* The discriminator is trained on the ``z_u`` samples of the step's single forward pass (the authors make a
  second pass in eval mode); it then sees exactly the codes the adversarial term pushes.
* Validation decodes the posterior means (a deterministic criterion for early stopping) and sums over the
  whole validation stream (the authors keep only the last batch).

Defaults follow the paper and the authors' experiment scripts: ``d_u = d_s = 20``, hidden widths
(128, 128), dropout 0.2, ``beta = 2``, ``gamma = 5``, ``lam = 5`` (the paper's best setting, Table 1),
Adam with lr 1e-3, optionally cosine-annealed (``cosine_steps``). The authors clip gradients to norm 1
(``Trainer(grad_clip=1.0)``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import CellBatch
from ..errors import InputError
from ..losses import isometric_loss, kl_normal, masked_reconstruction_loss
from ..nn import MLP, Discriminator, log_gaussian, log_nb, log_zinb
from ..train import StepContext, TrainingModule, adam

LIKELIHOODS = ("zinb", "nb", "gaussian")
COUNT_LIKELIHOODS = ("zinb", "nb")
SOURCE = "SCMRDRModule"


@dataclass
class _Inputs:
    """A step's minibatches concatenated over modalities (rows of one modality are contiguous)."""

    x: torch.Tensor                       # (N, G) raw values: counts or normalised scores
    encoder_input: torch.Tensor           # (N, G) log1p(x) for count modalities, x for Gaussian ones
    modality: torch.Tensor                # (N,) index into SCMRDRModule.modalities
    spans: list[tuple[str, slice]]        # rows of each modality
    batch: torch.Tensor | None            # (N,) global batch codes (None without batch covariates)


class SCMRDRModule(TrainingModule):
    """Encoders, decoder, priors and modality discriminator of scMRDR.

    Parameters
    ----------
    n_features
        Width ``G`` of the union feature space every minibatch is laid out in.
    modalities
        Modality names, in a fixed order (the discriminator's classes and the one-hot codes).
    likelihoods
        Likelihood per modality: ``"zinb"`` (default), ``"nb"`` or ``"gaussian"`` (normalised values).
    n_batches
        Number of global batch categories given to the decoder as a one-hot covariate (0: none).
    masks
        Per modality, a boolean ``(G,)`` array of the union columns it measures (default: all). Minibatches
        must carry the same mask (``CellBatch.mask``); imputation into a modality uses it.
    n_latent_shared, n_latent_specific
        Widths of ``z_u`` and ``z_s``.
    hidden
        Hidden widths of the encoders and the discriminator (the decoder uses them reversed).
    dropout
        Dropout after each hidden layer of encoders and decoder.
    beta, lam, gamma
        Weights of the KL term, the adversarial term and the isometric term.
    masked
        Use the masked reconstruction loss; ``False`` is the paper's ablation (unmeasured columns count as
        observed zeros and the count softmax spans all ``G`` columns).
    lr, weight_decay
        Adam settings of the VAE and the discriminator.
    cosine_steps
        Anneal the learning rate from ``lr`` to 0 over this many steps (cosine); ``None``: constant.
    """

    def __init__(self, n_features: int, modalities: Sequence[str], likelihoods: Mapping[str, str] | None = None,
                 n_batches: int = 0, masks: Mapping[str, Any] | None = None, n_latent_shared: int = 20,
                 n_latent_specific: int = 20, hidden: Sequence[int] = (128, 128), dropout: float = 0.2,
                 beta: float = 2.0, lam: float = 5.0, gamma: float = 5.0, masked: bool = True, lr: float = 1e-3,
                 weight_decay: float = 0.0, cosine_steps: int | None = None) -> None:
        super().__init__()
        self.modalities: list[str] = [str(m) for m in modalities]
        _check_settings(n_features, self.modalities, n_batches, hidden, beta, lam, gamma, lr, cosine_steps)
        likelihoods = dict(likelihoods or {})
        unknown = sorted(set(likelihoods) - set(self.modalities))
        if unknown:
            raise InputError(SOURCE, "likelihoods", f"modalities {unknown} are not among {self.modalities}",
                             "give likelihoods only for the listed modalities")
        self.likelihoods = {m: likelihoods.get(m, "zinb") for m in self.modalities}
        bad = {m: lik for m, lik in self.likelihoods.items() if lik not in LIKELIHOODS}
        if bad:
            raise InputError(SOURCE, "likelihoods", f"unknown likelihood(s) {bad}", f"use one of {LIKELIHOODS}")
        self.n_features, self.n_batches = int(n_features), int(n_batches)
        self.n_latent_shared, self.n_latent_specific = int(n_latent_shared), int(n_latent_specific)
        self.hidden, self.dropout = tuple(int(h) for h in hidden), float(dropout)
        self.beta, self.lam, self.gamma, self.masked = float(beta), float(lam), float(gamma), bool(masked)
        self.lr, self.weight_decay, self.cosine_steps = float(lr), float(weight_decay), cosine_steps
        n_mod, G = len(self.modalities), self.n_features
        self.register_buffer("measured", _mask_table(masks, self.modalities, G))

        block = {"activation": nn.LeakyReLU, "norm": "batch", "dropout": self.dropout}
        self.encoder_shared = MLP(G, 2 * self.n_latent_shared, self.hidden, **block)
        self.encoder_specific = MLP(G + n_mod, 2 * self.n_latent_specific, self.hidden, **block)
        kinds = set(self.likelihoods.values())
        self.heads: tuple[str, ...] = tuple(h for h, used in (("logits", bool(kinds & set(COUNT_LIKELIHOODS))),
                                                               ("zi_logits", "zinb" in kinds),
                                                               ("mean", "gaussian" in kinds)) if used)
        self.decoder = MLP(self.n_latent_shared + self.n_latent_specific + self.n_batches, len(self.heads) * G,
                           tuple(reversed(self.hidden)), **block)
        self.log_theta = nn.Parameter(torch.zeros(n_mod, G)) if "logits" in self.heads else None
        self.log_var = nn.Parameter(torch.zeros(n_mod, G)) if "mean" in self.heads else None
        self.prior_mean = nn.Parameter(torch.zeros(n_mod, self.n_latent_specific))
        self.prior_logvar = nn.Parameter(torch.zeros(n_mod))
        self.discriminator = Discriminator(self.n_latent_shared, n_classes=n_mod, hidden=self.hidden) if n_mod > 1 else None

    # ------------------------------------------------------------------ settings
    @property
    def adversarial(self) -> bool:
        """Whether the discriminator is trained and the adversarial term used (``lam > 0`` and 2+ modalities)."""
        return self.discriminator is not None and self.lam > 0

    def hparams(self) -> dict:
        """Constructor settings (for the run's resolved config; the masks live in the state dict)."""
        return {"n_features": self.n_features, "modalities": list(self.modalities), "likelihoods": dict(self.likelihoods),
                "n_batches": self.n_batches, "n_latent_shared": self.n_latent_shared,
                "n_latent_specific": self.n_latent_specific, "hidden": list(self.hidden), "dropout": self.dropout,
                "beta": self.beta, "lam": self.lam, "gamma": self.gamma, "masked": self.masked, "lr": self.lr,
                "weight_decay": self.weight_decay, "cosine_steps": self.cosine_steps}

    def convergence_terms(self) -> dict[str, float]:
        """The VAE loss without its adversarial term (which oscillates by design), as weighted in training."""
        return {"recon": 1.0, "kl": self.beta, "iso": self.gamma}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        disc = set(self.discriminator.parameters()) if self.discriminator is not None else set()
        vae = [p for p in self.parameters() if p not in disc]
        opts = {"vae": adam(vae, lr=self.lr, weight_decay=self.weight_decay)}
        if self.adversarial:
            opts["discriminator"] = adam(self.discriminator.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return opts

    # ------------------------------------------------------------------ networks
    def encode(self, encoder_input: torch.Tensor, modality: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Posterior parameters ``(mu_u, logvar_u, mu_s, logvar_s)`` of cells with modality indices ``modality``."""
        onehot = F.one_hot(modality, len(self.modalities)).to(encoder_input.dtype)
        mu_u, logvar_u = self.encoder_shared(encoder_input).chunk(2, dim=-1)
        mu_s, logvar_s = self.encoder_specific(torch.cat([encoder_input, onehot], dim=-1)).chunk(2, dim=-1)
        return mu_u, logvar_u, mu_s, logvar_s

    def decode(self, z_u: torch.Tensor, z_s: torch.Tensor, batch: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Decoder heads ``{"logits", "zi_logits", "mean"}`` (those the likelihoods use), each ``(cells, G)``.

        ``batch`` holds the cells' global batch codes (``None``: an all-zero covariate).
        """
        parts = [z_u, z_s]
        if self.n_batches:
            cov = torch.zeros(z_u.shape[0], self.n_batches, dtype=z_u.dtype, device=z_u.device)
            if batch is not None:
                cov = F.one_hot(batch, self.n_batches).to(z_u.dtype)
            parts.append(cov)
        out = self.decoder(torch.cat(parts, dim=-1)).chunk(len(self.heads), dim=-1)
        return dict(zip(self.heads, out))

    def prior(self, modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(cells, d_s)`` of the specific prior of each cell's modality."""
        return self.prior_mean[modality], self.prior_logvar[modality].unsqueeze(-1).expand(-1, self.n_latent_specific)

    def discriminator_logits(self, z_u: torch.Tensor) -> torch.Tensor:
        """``(cells, m)`` modality logits (a binary discriminator's single logit becomes ``[0, logit]``)."""
        logits = self.discriminator(z_u)
        return torch.stack([torch.zeros_like(logits), logits], dim=-1) if logits.dim() == 1 else logits

    def loss_mask(self, modality: str) -> torch.Tensor | None:
        """Measured columns of ``modality`` as the loss uses them (``None``: every column counts, the ablation)."""
        return self.measured[self.modalities.index(modality)] if self.masked else None

    def reconstruction_nll(self, modality: str, heads: Mapping[str, torch.Tensor], x: torch.Tensor,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-entry negative log-likelihood ``(cells, G)`` of ``x`` under ``modality``'s likelihood (``mask``: the
        measured columns, default the modality's; with the mask off every column counts)."""
        i = self.modalities.index(modality)
        mask = self.loss_mask(modality) if mask is None or not self.masked else mask
        likelihood = self.likelihoods[modality]
        if likelihood == "gaussian":
            return -log_gaussian(x, heads["mean"].float(), log_var=self.log_var[i])
        mu = x.sum(-1, keepdim=True) * self._scale(heads["logits"], mask)
        theta = torch.exp(self.log_theta[i])
        if likelihood == "zinb":
            return -log_zinb(x, mu, theta, heads["zi_logits"].float())
        return -log_nb(x, mu, theta)

    @staticmethod
    def _scale(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        logits = logits.float()
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, dim=-1)

    # ------------------------------------------------------------------ inputs
    def _inputs(self, batch: Mapping[str, CellBatch], device: torch.device, need_batch: bool) -> _Inputs:
        if not isinstance(batch, Mapping) or not batch:
            raise InputError("batch", "modalities", "expected a non-empty {modality: CellBatch} dict",
                             "stream the modalities with an UnpairedStream")
        xs, encs, mods, codes, spans = [], [], [], [], []
        start = 0
        for name, b in batch.items():
            if name not in self.modalities:
                raise InputError("batch", "modality", f"modality {name!r} is not one of the model's {self.modalities}",
                                 "build the module with every modality it is trained on")
            if b.n_vars != self.n_features:
                raise InputError(f"modality {name!r}", "n_vars", f"the minibatch has {b.n_vars} columns, the model "
                                 f"{self.n_features}", "lay every modality out in the same union feature space")
            i = self.modalities.index(name)
            if b.mask is not None and bool((b.mask.to(device=device, dtype=torch.bool) & ~self.measured[i]).any()):
                raise InputError(f"modality {name!r}", "mask", "the minibatch's measured columns differ from the module's masks "
                                 "(it measures columns they leave out)",
                                 "build the module with masks= taken from the stream's feature space")
            x = b.dense(device).float()
            xs.append(x)
            encs.append(x if self.likelihoods[name] == "gaussian" else torch.log1p(x))
            mods.append(torch.full((len(x),), i, dtype=torch.long, device=device))
            if need_batch and self.n_batches:
                codes.append(self._batch_codes(name, b, device))
            spans.append((name, slice(start, start + len(x))))
            start += len(x)
        return _Inputs(torch.cat(xs), torch.cat(encs), torch.cat(mods), spans, torch.cat(codes) if codes else None)

    def _batch_codes(self, name: str, b: CellBatch, device: torch.device) -> torch.Tensor:
        if b.batch is None:
            raise InputError(f"modality {name!r}", "batch", f"the model has {self.n_batches} batch categories but the "
                             "minibatch carries no batch codes", "stream every modality with the same batch_key")
        codes = b.batch.to(device=device, dtype=torch.long)
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= self.n_batches):
            raise InputError(f"modality {name!r}", "batch", f"batch codes outside 0..{self.n_batches - 1}",
                             "code batches globally over all modalities and set n_batches to their number")
        return codes

    # ------------------------------------------------------------------ losses
    def _terms(self, inp: _Inputs, mu_u: torch.Tensor, logvar_u: torch.Tensor, mu_s: torch.Tensor, logvar_s: torch.Tensor,
               z_u: torch.Tensor, heads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-cell reconstruction, KL and adversarial terms, and the batch's isometric loss (a scalar)."""
        recon = torch.cat([masked_reconstruction_loss(
            self.reconstruction_nll(name, {k: v[rows] for k, v in heads.items()}, inp.x[rows]),
            self.loss_mask(name), reduction="none") for name, rows in inp.spans])
        mu_u, logvar_u, mu_s, logvar_s = (t.float() for t in (mu_u, logvar_u, mu_s, logvar_s))
        prior_mean, prior_logvar = self.prior(inp.modality)
        kl = kl_normal(mu_u, logvar_u) + kl_normal(mu_s, logvar_s, prior_mean, prior_logvar)
        iso = isometric_loss(mu_u, torch.cat([mu_u, mu_s], dim=-1), inp.modality)
        adv = torch.zeros_like(recon)
        if self.adversarial:
            adv = -F.cross_entropy(self.discriminator_logits(z_u).float(), inp.modality, reduction="none")
        return {"recon": recon, "kl": kl, "iso": iso, "adv": adv}

    def _total(self, recon: torch.Tensor, kl: torch.Tensor, iso: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        return recon + self.beta * kl + self.gamma * iso + self.lam * adv

    def _schedule(self, ctx: StepContext) -> None:
        if self.cosine_steps is None:
            return
        lr = 0.5 * self.lr * (1.0 + math.cos(math.pi * min(ctx.step, self.cosine_steps) / self.cosine_steps))
        for opt in ctx.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def training_step(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        self._schedule(ctx)
        inp = self._inputs(batch, ctx.device, need_batch=True)
        with ctx.autocast():
            mu_u, logvar_u, mu_s, logvar_s = self.encode(inp.encoder_input, inp.modality)
            z_u = mu_u + torch.randn_like(mu_u) * torch.exp(0.5 * logvar_u)
            z_s = mu_s + torch.randn_like(mu_s) * torch.exp(0.5 * logvar_s)
        out: dict[str, torch.Tensor] = {}
        if self.adversarial:
            with ctx.autocast():
                d_loss = F.cross_entropy(self.discriminator_logits(z_u.detach()).float(), inp.modality)
            ctx.optimize(d_loss, "discriminator")
            out["disc"] = d_loss.detach()
            self.discriminator.requires_grad_(False)
        try:
            with ctx.autocast():
                heads = self.decode(z_u, z_s, inp.batch)
                terms = self._terms(inp, mu_u, logvar_u, mu_s, logvar_s, z_u, heads)
            means = {k: v.mean() if v.dim() else v for k, v in terms.items()}
            total = self._total(**means)
            ctx.optimize(total, "vae")
        finally:
            if self.discriminator is not None:
                self.discriminator.requires_grad_(True)
        out.update({"loss": total.detach(), **{k: v.detach() for k, v in means.items()}})
        return out

    def validation_step(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Sums over the cells of the step (the isometric term as its batch value times the cells), decoding
        posterior means."""
        inp = self._inputs(batch, ctx.device, need_batch=True)
        with torch.no_grad(), ctx.autocast():
            mu_u, logvar_u, mu_s, logvar_s = self.encode(inp.encoder_input, inp.modality)
            heads = self.decode(mu_u, mu_s, inp.batch)
            terms = self._terms(inp, mu_u, logvar_u, mu_s, logvar_s, mu_u, heads)
        n = inp.x.shape[0]
        sums = {k: v.sum() if v.dim() else v * n for k, v in terms.items()}
        return {"loss": self._total(**sums), "n": torch.tensor(n, device=ctx.device), **sums}

    # ------------------------------------------------------------------ outputs
    @contextlib.contextmanager
    def _inference(self) -> Iterator[torch.device]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield self.prior_mean.device
        finally:
            self.train(was_training)

    def embed(self, modality: str, batch: CellBatch) -> dict[str, torch.Tensor]:
        """Posterior means of the cells of one minibatch of ``modality`` (eval mode, no gradient).

        Returns
        -------
        dict
            ``{"X_cellweave": mean of z_u (cells, d_u), "X_cellweave_specific": mean of z_s (cells, d_s)}``.
        """
        with self._inference() as device:
            inp = self._inputs({modality: batch}, device, need_batch=False)
            mu_u, _, mu_s, _ = self.encode(inp.encoder_input, inp.modality)
        return {"X_cellweave": mu_u.float(), "X_cellweave_specific": mu_s.float()}

    def impute(self, source: str, target: str, batch: CellBatch, target_batch: int | None = None,
               library_size: float = 1e4) -> torch.Tensor:
        """Expected values of ``target`` for cells of ``source``: decode their ``z_u`` posterior means with the
        prior mean of ``target``'s ``z_s``.

        Parameters
        ----------
        source, target
            Modality of the cells, and modality to impute.
        batch
            A minibatch of ``source`` cells.
        target_batch
            Global batch code to decode with (``None``: an all-zero batch covariate).
        library_size
            Library size of the imputed counts (count likelihoods).

        Returns
        -------
        torch.Tensor
            ``(cells, G)``: expected counts at ``library_size`` for a count target, Gaussian means otherwise;
            columns the target does not measure are 0 (with the mask on).
        """
        if target not in self.modalities:
            raise InputError(SOURCE, "target", f"modality {target!r} is not one of {self.modalities}",
                             "impute into a modality the model was trained on")
        if target_batch is not None and not 0 <= int(target_batch) < self.n_batches:
            raise InputError(SOURCE, "target_batch", f"{target_batch!r} is not a batch code in 0..{self.n_batches - 1}",
                             "pass a global batch code of the training data, or None")
        t = self.modalities.index(target)
        with self._inference() as device:
            inp = self._inputs({source: batch}, device, need_batch=False)
            mu_u = self.encode(inp.encoder_input, inp.modality)[0]
            z_s = self.prior_mean[t].expand(mu_u.shape[0], -1)
            codes = None if target_batch is None else torch.full((mu_u.shape[0],), int(target_batch), device=device)
            heads = self.decode(mu_u, z_s, codes)
            mask = self.loss_mask(target)
            if self.likelihoods[target] == "gaussian":
                out = heads["mean"].float()
                return out if mask is None else out * mask
            return library_size * self._scale(heads["logits"], mask)


def _check_settings(n_features: int, modalities: list[str], n_batches: int, hidden: Sequence[int], beta: float,
                    lam: float, gamma: float, lr: float, cosine_steps: int | None) -> None:
    if not modalities or len(set(modalities)) != len(modalities):
        raise InputError(SOURCE, "modalities", f"need distinct modality names, got {modalities}", "list each modality once")
    if int(n_features) < 1:
        raise InputError(SOURCE, "n_features", f"must be >= 1, got {n_features}", "pass the width of the union feature space")
    if int(n_batches) < 0:
        raise InputError(SOURCE, "n_batches", f"must be >= 0, got {n_batches}", "pass the number of batch categories, or 0")
    if not hidden or any(int(h) < 1 for h in hidden):
        raise InputError(SOURCE, "hidden", f"need one or more positive widths, got {list(hidden)}", "e.g. hidden=(128, 128)")
    for name, value in (("beta", beta), ("lam", lam), ("gamma", gamma)):
        if not value >= 0:
            raise InputError(SOURCE, name, f"must be >= 0, got {value!r}", f"set {name} to 0 (ablation) or more")
    if not lr > 0:
        raise InputError(SOURCE, "lr", f"must be positive, got {lr!r}", "e.g. lr=1e-3")
    if cosine_steps is not None and int(cosine_steps) < 1:
        raise InputError(SOURCE, "cosine_steps", f"must be >= 1, got {cosine_steps!r}", "pass the number of steps, or None")


def _mask_table(masks: Mapping[str, Any] | None, modalities: list[str], n_features: int) -> torch.Tensor:
    """``(m, G)`` bool table of measured columns (all True where no mask is given)."""
    table = torch.ones(len(modalities), n_features, dtype=torch.bool)
    for name, mask in (masks or {}).items():
        if name not in modalities:
            raise InputError(SOURCE, "masks", f"modality {name!r} is not one of {modalities}", "give masks only for listed modalities")
        row = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        if row.shape != (n_features,):
            raise InputError(SOURCE, f"masks[{name!r}]", f"shape {tuple(row.shape)}, expected ({n_features},)",
                             "give one boolean per column of the union feature space")
        if not bool(row.any()):
            raise InputError(SOURCE, f"masks[{name!r}]", "the modality measures no column of the union feature space",
                             "link the modality's features to the union space (a links table), or check feature names")
        table[modalities.index(name)] = row
    return table
