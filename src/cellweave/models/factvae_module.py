"""FactVAE's networks and its two-phase training step (the math; the user API wraps it).

Paired RNA and ATAC counts of the same cells. Per modality a VAE encoder (MLP with ELU and dropout 0.2:
RNA d -> 512 -> 256 -> (mu, log var), ATAC d -> 256 -> (mu, log var), latent width 50) and a *factorisation*
decoder without hidden layers (:class:`FactorDecoder`): feature embedding matrices ``W_mu, W_theta, W_pi``
``(n_features, n_latent)`` turn a cell embedding ``z`` into the ZINB parameters

    mu = library * softmax(z W_mu^T),   theta = exp(z W_theta^T),   zero-inflation logits = z W_pi^T

(``library * softmax`` is the paper's ``exp(size factor) * softmax`` with the size factor the log library size,
scVI's parameterisation; the library is the cell's total over the modelled count columns, so that the means
add up to the counts modelled even when the stream selects features, e.g. highly variable genes).
A training step on one paired minibatch (the paper's two phases, as in the authors' code):

1. VAE phase (all parameters): ``w_rna * NLL_rna + w_kl * KL_rna + w_atac * NLL_atac + w_kl * KL_atac
   + w_prior * exp(L_reg)``, where NLL is the ZINB negative log-likelihood summed over features (mean over
   cells), KL the Gaussian KL to N(0, I), and ``L_reg = mean_(g, p) (1 - cos(W_mu^rna[g], W_mu^atac[p]))^2``
   over the known gene-peak pairs (:func:`~cellweave.losses.regulatory_prior_loss`);
2. similarity-structure (teacher-student) phase (ATAC encoder only): the in-batch cosine-similarity matrix of
   the ATAC posterior means learns that of the RNA posterior means (the teacher, no gradient):
   ``w_ssa * mean_i 1 - cos(S^atac_i, S^rna_i)`` (:func:`~cellweave.losses.similarity_structure_loss`).

Defaults follow the authors' code: weights NLL_rna 0.1, NLL_atac 0.002, KL 0.001, prior 1; Adam lr 1e-3 for the
VAE phase and 5e-4 for the ATAC encoder phase. Departures: the dispersion is ``exp(z W_theta^T)`` (the authors'
``exp(softmax(z W_theta^T))`` pins every theta inside (1, e], and near 1 when there are thousands of features);
the similarity phase compares posterior means (the embeddings that are used) rather than samples; their
per-epoch exponential learning-rate decay is left to the trainer. Encoders read ``log1p(target_sum * x /
library)`` of the counts unless ``encoder_inputs`` names another entry of the minibatch (e.g. a streamed
PCA or LSI, as the authors feed).

The cell embedding is the posterior mean; :meth:`FactVAEModule.embed_paired` concatenates RNA and ATAC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..data.batch import CellBatch
from ..errors import InputError
from ..losses import kl_normal, regulatory_prior_loss, similarity_structure_loss
from ..nn import MLP
from ..nn.likelihoods import log_zinb
from ..train import StepContext, TrainingModule, adam
from ..train.module import evaluating

#: bound of ``log theta`` (keeps ``exp`` finite; far outside any fitted dispersion)
LOG_THETA_MAX = 15.0


@dataclass
class FactVAEWeights:
    """Loss weights (ablations set a weight to 0)."""

    rna_recon: float = 0.1
    atac_recon: float = 0.002
    kl: float = 0.001
    prior: float = 1.0
    ssa: float = 1.0


class FactorDecoder(nn.Module):
    """ZINB parameters as products of cell embeddings and feature embeddings (no hidden layer).

    Parameters
    ----------
    n_latent
        Width of the cell embedding.
    n_features
        Number of features (genes or peaks).

    Attributes
    ----------
    feature, dispersion, dropout
        Feature embedding matrices ``(n_features, n_latent)`` of the mean, the dispersion and the
        zero-inflation (Xavier-normal initialised, as in the authors' code).
    """

    def __init__(self, n_latent: int, n_features: int) -> None:
        super().__init__()
        self.feature = nn.Parameter(torch.empty(n_features, n_latent))
        self.dispersion = nn.Parameter(torch.empty(n_features, n_latent))
        self.dropout = nn.Parameter(torch.empty(n_features, n_latent))
        for p in (self.feature, self.dispersion, self.dropout):
            nn.init.xavier_normal_(p)

    def rho(self, z: torch.Tensor) -> torch.Tensor:
        """Expected fraction of a cell's counts in each feature: ``softmax(z W_mu^T)`` ``(n, n_features)``."""
        return torch.softmax((z @ self.feature.T).float(), dim=1)

    def forward(self, z: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu, theta, zi_logits)`` for cells ``z`` ``(n, n_latent)`` with library sizes ``library`` ``(n,)``."""
        mu = library.float().unsqueeze(1) * self.rho(z)
        theta = torch.exp((z @ self.dispersion.T).float().clamp(-LOG_THETA_MAX, LOG_THETA_MAX))
        return mu, theta, (z @ self.dropout.T).float()


class GaussianEncoder(nn.Module):
    """MLP (ELU, dropout) to the mean and log-variance of a diagonal Gaussian posterior."""

    def __init__(self, n_in: int, n_latent: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.net = MLP(n_in, 2 * n_latent, hidden, nn.ELU, dropout=dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.net(x).float().chunk(2, dim=1)
        return mu, log_var


def _check_pairs(pairs: np.ndarray | torch.Tensor, n_genes: int, n_peaks: int) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(pairs))
    if p.ndim != 2 or p.shape[1] != 2 or (p.numel() and p.is_floating_point()):
        raise InputError("FactVAE", "pairs",
                         f"expected an integer array of shape (n_pairs, 2), got {tuple(p.shape)} {p.dtype}",
                         "pass rows (gene index, peak index)")
    p = p.long()
    if p.numel() and (int(p.min()) < 0 or int(p[:, 0].max()) >= n_genes or int(p[:, 1].max()) >= n_peaks):
        raise InputError("FactVAE", "pairs", f"indices out of range for {n_genes} genes and {n_peaks} peaks",
                         "index the gene and peak columns the model is trained on")
    return p


class FactVAEModule(TrainingModule):
    """RNA and ATAC VAEs with factorisation decoders, a regulatory prior and teacher-student alignment.

    Parameters
    ----------
    n_genes, n_peaks
        Number of RNA and ATAC features (the count columns streamed).
    pairs
        Known gene-peak pairs ``(n_pairs, 2)``: (gene column, peak column), e.g. peaks in the gene body or 2 kb
        upstream of its TSS.
    rna, atac
        Modality names (keys of the paired minibatch).
    n_latent
        Width of each cell embedding (the concatenated embedding is twice as wide).
    rna_hidden, atac_hidden
        Hidden widths of the encoders.
    dropout
        Dropout rate of the encoders.
    encoder_inputs
        ``{modality: (batch key, width)}``: feed that encoder the dense values of another minibatch entry
        (a PCA or LSI) instead of the log-normalised counts.
    target_sum
        Counts per cell after normalisation, for the encoders' default input.
    weights
        Loss weights.
    lr, ssa_lr
        Adam learning rates of the VAE phase and of the ATAC encoder's similarity phase.
    """

    def __init__(self, n_genes: int, n_peaks: int, pairs: np.ndarray | torch.Tensor, rna: str = "rna", atac: str = "atac",
                 n_latent: int = 50, rna_hidden: Sequence[int] = (512, 256), atac_hidden: Sequence[int] = (256,),
                 dropout: float = 0.2, encoder_inputs: Mapping[str, tuple[str, int]] | None = None,
                 target_sum: float = 1e4, weights: FactVAEWeights | None = None, lr: float = 1e-3,
                 ssa_lr: float = 5e-4) -> None:
        super().__init__()
        if rna == atac:
            raise InputError("FactVAE", "modality", f"rna and atac must be different modalities, both are {rna!r}",
                             "name the RNA and the ATAC modality")
        self.rna, self.atac = rna, atac
        self.n_features = {rna: n_genes, atac: n_peaks}
        self.encoder_inputs = dict(encoder_inputs or {})
        unknown = set(self.encoder_inputs) - {rna, atac}
        if unknown:
            raise InputError("FactVAE", "encoder_inputs", f"unknown modalities {sorted(unknown)}",
                             f"use {rna!r} and/or {atac!r}")
        self.n_latent, self.dropout = n_latent, dropout
        self.hidden = {rna: tuple(rna_hidden), atac: tuple(atac_hidden)}
        self.target_sum = target_sum
        self.weights = weights or FactVAEWeights()
        self.lr, self.ssa_lr = lr, ssa_lr
        self.register_buffer("pairs", _check_pairs(pairs, n_genes, n_peaks))
        width = {m: self.encoder_inputs[m][1] if m in self.encoder_inputs else d for m, d in self.n_features.items()}
        self.encoders = nn.ModuleDict({m: GaussianEncoder(width[m], n_latent, self.hidden[m], dropout) for m in (rna, atac)})
        self.decoders = nn.ModuleDict({m: FactorDecoder(n_latent, self.n_features[m]) for m in (rna, atac)})

    def hparams(self) -> dict:
        """Constructor settings (for the run's resolved config; the pairs are a buffer of the state dict)."""
        return {"n_genes": self.n_features[self.rna], "n_peaks": self.n_features[self.atac], "rna": self.rna,
                "atac": self.atac, "n_latent": self.n_latent, "rna_hidden": list(self.hidden[self.rna]),
                "atac_hidden": list(self.hidden[self.atac]), "dropout": self.dropout,
                "encoder_inputs": {m: list(v) for m, v in self.encoder_inputs.items()}, "target_sum": self.target_sum,
                "weights": asdict(self.weights), "lr": self.lr, "ssa_lr": self.ssa_lr, "n_pairs": int(self.pairs.shape[0])}

    def convergence_terms(self) -> dict[str, float]:
        """The VAE loss and the teacher-student term, each as minimised by its optimizer."""
        return {"vae": 1.0, "ssa": self.weights.ssa}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": adam(self.parameters(), lr=self.lr),
                "atac_encoder": adam(self.encoders[self.atac].parameters(), lr=self.ssa_lr)}

    # ------------------------------------------------------------ inputs
    def _counts(self, m: str, batch: Mapping[str, CellBatch], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if m not in batch:
            raise InputError("batch", "modality", f"the paired minibatch lacks {m!r}",
                             f"stream {self.rna!r} and {self.atac!r} paired")
        b = batch[m]
        x = b.dense(device).float()
        if x.shape[1] != self.n_features[m]:
            raise InputError(m, "X", f"expected {self.n_features[m]} count columns, got {x.shape[1]}",
                             "stream the features the model was built with")
        return x, x.sum(1)

    def _encoder_input(self, m: str, batch: Mapping[str, CellBatch] | CellBatch, device: torch.device) -> torch.Tensor:
        """What encoder ``m`` reads: the named entry's dense values, or ``log1p(target_sum * x / library)``.

        ``batch`` may be the minibatch dict or, for one modality, the :class:`CellBatch` the encoder reads.
        """
        key, width = self.encoder_inputs.get(m, (m, self.n_features[m]))
        b = batch if isinstance(batch, CellBatch) else batch.get(key)
        if b is None:
            raise InputError("batch", key, f"the minibatch lacks {key!r}, the input of the {m} encoder",
                             f"stream {key!r} with the paired modalities")
        x = b.dense(device).float()
        if x.shape[1] != width:
            raise InputError(key, "X", f"expected {width} columns for the {m} encoder, got {x.shape[1]}",
                             "feed the same features (or PCA/LSI) the model was built with")
        if m in self.encoder_inputs:
            return x
        return torch.log1p(x * (self.target_sum / x.sum(1, keepdim=True).clamp_min(1.0)))

    # ------------------------------------------------------------ losses
    def vae_losses(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        """Terms of the VAE phase (means over cells); ``vae`` is the weighted total."""
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        for m in (self.rna, self.atac):
            x, library = self._counts(m, batch, ctx.device)
            with ctx.autocast():
                mu, log_var = self.encoders[m](self._encoder_input(m, batch, ctx.device))
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
                params = self.decoders[m](z, library)
            terms[f"nll_{m}"] = -log_zinb(x, *params).sum(1).mean()
            terms[f"kl_{m}"] = kl_normal(mu, log_var).mean()
        terms["prior"] = regulatory_prior_loss(self.decoders[self.rna].feature, self.decoders[self.atac].feature, self.pairs)
        terms["vae"] = (w.rna_recon * terms[f"nll_{self.rna}"] + w.atac_recon * terms[f"nll_{self.atac}"]
                        + w.kl * (terms[f"kl_{self.rna}"] + terms[f"kl_{self.atac}"]) + w.prior * torch.exp(terms["prior"]))
        return terms

    def ssa_loss(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> torch.Tensor:
        """Similarity-structure loss of the ATAC posterior means against the RNA ones (the teacher)."""
        with ctx.autocast():
            with torch.no_grad():
                teacher, _ = self.encoders[self.rna](self._encoder_input(self.rna, batch, ctx.device))
            student, _ = self.encoders[self.atac](self._encoder_input(self.atac, batch, ctx.device))
        return similarity_structure_loss(student, teacher)

    # ------------------------------------------------------------ trainer hooks
    def training_step(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        terms = self.vae_losses(batch, ctx)
        ctx.optimize(terms["vae"], "vae")
        ssa = self.ssa_loss(batch, ctx)
        if self.weights.ssa > 0:
            ctx.optimize(self.weights.ssa * ssa, "atac_encoder")
        terms["ssa"] = ssa
        return {k: v.detach() for k, v in terms.items()}

    def validation_step(self, batch: Mapping[str, CellBatch], ctx: StepContext) -> dict[str, torch.Tensor]:
        n = len(batch[self.rna])
        terms = self.vae_losses(batch, ctx)
        terms["ssa"] = self.ssa_loss(batch, ctx)
        out = {k: v.detach() * n for k, v in terms.items()}
        out["loss"] = out["vae"] + self.weights.ssa * out["ssa"]
        out["n"] = torch.tensor(n)
        return out

    # ------------------------------------------------------------ inference
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, modality: str, batch: Mapping[str, CellBatch] | CellBatch) -> dict[str, torch.Tensor]:
        """Posterior means of one modality's encoder: ``{"X_cellweave": (n, n_latent)}``.

        ``batch`` is the paired minibatch dict, or the :class:`CellBatch` this encoder reads (the modality's
        counts, or its ``encoder_inputs`` entry).
        """
        if modality not in self.n_features:
            raise InputError("FactVAE", "modality", f"unknown modality {modality!r}", f"use {self.rna!r} or {self.atac!r}")
        with evaluating(self):
            mu, _ = self.encoders[modality](self._encoder_input(modality, batch, self._device()))
        return {"X_cellweave": mu}

    def embed_paired(self, batch: Mapping[str, CellBatch]) -> dict[str, torch.Tensor]:
        """``{"X_cellweave": concat(z_rna, z_atac)}`` ``(n, 2 n_latent)`` for a paired minibatch."""
        z = [self.embed(m, batch)["X_cellweave"] for m in (self.rna, self.atac)]
        return {"X_cellweave": torch.cat(z, dim=1)}

    def denoise_atac(self, batch: Mapping[str, CellBatch] | CellBatch, library_size: float | None = None) -> torch.Tensor:
        """Augmented (denoised) accessibility ``library * softmax(z_atac W_mu^T)`` ``(n, n_peaks)`` (paper eq. 12).

        Parameters
        ----------
        batch
            The paired minibatch dict (it needs the ATAC counts, for the library sizes, and the ATAC encoder's input),
            or the ATAC counts :class:`CellBatch` when the ATAC encoder reads the counts.
        library_size
            Scale every cell to this library size instead of its own (comparable profiles across cells).
        """
        counts = batch if isinstance(batch, CellBatch) else batch.get(self.atac)
        if counts is None:
            raise InputError("batch", "modality", f"the minibatch lacks {self.atac!r}", "pass the ATAC counts")
        z = self.embed(self.atac, batch)["X_cellweave"]
        device = self._device()
        if library_size is None:
            library = counts.dense(device).float().sum(1)
        else:
            library = torch.full((len(z),), float(library_size), device=device)
        with torch.no_grad():
            return library.unsqueeze(1) * self.decoders[self.atac].rho(z)

    def feature_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """``(gene_emb (n_genes, n_latent), peak_emb (n_peaks, n_latent))``: the mean factor matrices."""
        return tuple(self.decoders[m].feature.detach().cpu().float().numpy().copy() for m in (self.rna, self.atac))
