"""Vector-quantisation codebook with exponential-moving-average updates (VQ-VAE, van den Oord et al. 2017, app. A.1).

Each vector takes its nearest code (squared Euclidean distance); the decoder sees the code through the
straight-through estimator ``z + sg[e_z - z]``, and the encoder is pulled to its code by the commitment loss.
The codes themselves get no gradient: in training mode every call updates

    N_i <- decay * N_i + (1 - decay) * n_i              (EMA of the number of vectors taking code i)
    M_i <- decay * M_i + (1 - decay) * sum_{z -> i} z   (EMA of their sum)
    e_i <- M_i / N~_i,  N~_i = (N_i + eps) / (sum_j N_j + K eps) * sum_j N_j   (Laplace smoothing, as in Sonnet)

starting from ``N = 0, M = 0``. A code whose ``N_i`` falls below ``dead_code_threshold`` is *dead*: left alone it
would shrink to the origin (``M_i / N~_i -> 0``), which is what the reference code's codebook does. With
``restart=True`` each dead code is instead moved onto a random encoder output of the current call (drawn
with torch's global generator, so a seed fixes it) and its statistics restart from zero; a restarted code
that takes no vector in the next call is dead again and restarts again, so no code ever sits at zero.

Under ``torch.distributed`` the counts and sums are summed over ranks and rank 0's restart vectors are
broadcast, so every rank keeps the same codebook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ..losses.vq import commitment_loss, perplexity
from ..train.distributed import is_distributed


class Quantized(NamedTuple):
    """What :class:`EMACodebook` returns.

    Attributes
    ----------
    quantized
        Straight-through codes ``z + sg[e_z - z]`` (values of ``e_z``, gradients of ``z``), shape of ``z``.
    codes
        Index of the nearest code of each vector ``(n,)``, int64.
    commitment
        ``commitment * mean((z - sg[e_z])^2)``.
    perplexity
        ``exp(entropy)`` of the code usage in this call.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    commitment: torch.Tensor
    perplexity: torch.Tensor


class EMACodebook(nn.Module):
    """A codebook of ``n_codes`` vectors of width ``dim``, learned by EMA instead of by gradient.

    Parameters
    ----------
    n_codes
        Number of codes ``K``.
    dim
        Width of the codes (the encoder's output width).
    decay
        EMA decay ``gamma`` in (0, 1).
    eps
        Laplace smoothing of the cluster sizes.
    commitment
        Weight ``beta`` of the commitment loss.
    dead_code_threshold
        A code whose EMA count ``N_i`` is below this is dead (``N_i`` is an average number of vectors per call:
        with the default decay a code taken once falls below 1e-3 after about 230 calls without a vector).
    restart
        Move dead codes onto random encoder outputs of the current call.
    """

    def __init__(self, n_codes: int = 2048, dim: int = 16, decay: float = 0.99, eps: float = 1e-5,
                 commitment: float = 0.25, dead_code_threshold: float = 1e-3, restart: bool = True) -> None:
        super().__init__()
        if n_codes < 1 or dim < 1:
            raise ValueError(f"n_codes and dim must be >= 1, got {n_codes} and {dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if eps <= 0 or dead_code_threshold < 0 or commitment < 0:
            raise ValueError("eps must be > 0; dead_code_threshold and commitment must be >= 0")
        self.n_codes, self.dim = n_codes, dim
        self.decay, self.eps, self.commitment = decay, eps, commitment
        self.dead_code_threshold, self.restart = dead_code_threshold, restart
        self.register_buffer("embedding", torch.randn(n_codes, dim))
        self.register_buffer("cluster_size", torch.zeros(n_codes))
        self.register_buffer("embed_sum", torch.zeros(n_codes, dim))

    def extra_repr(self) -> str:
        return (f"n_codes={self.n_codes}, dim={self.dim}, decay={self.decay}, commitment={self.commitment}, "
                f"dead_code_threshold={self.dead_code_threshold}, restart={self.restart}")

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance; ties go to the lowest index) of each row of ``z``."""
        e = self.embedding
        d = z.pow(2).sum(1, keepdim=True) - 2.0 * z @ e.T + e.pow(2).sum(1)
        return d.argmin(1)

    def forward(self, z: torch.Tensor) -> Quantized:
        """Quantise ``z`` ``(n, dim)``; in training mode, then update the codebook from ``z`` (after the lookup).

        Returns
        -------
        Quantized
        """
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected encoder outputs of shape (n, {self.dim}), got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z.float()
            with torch.no_grad():
                codes = self.nearest(zf)
            e_z = self.embedding[codes]
            loss = commitment_loss(zf, e_z, self.commitment)
            quantized = zf + (e_z - zf).detach()
            usage = perplexity(codes, self.n_codes)
            if self.training and zf.shape[0] > 0:
                self.update(zf.detach(), codes)
        return Quantized(quantized, codes, loss, usage)

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step from vectors ``z`` assigned to ``codes``, then the dead-code restart."""
        counts = torch.bincount(codes, minlength=self.n_codes).to(z.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z)
        if is_distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.n_codes * self.eps) * total
        self.embedding.copy_(self.embed_sum / smoothed.clamp_min(torch.finfo(z.dtype).tiny).unsqueeze(1))
        if self.restart:
            self.restart_dead(z)

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor) -> torch.Tensor:
        """Move every dead code onto a random row of ``z`` and zero its statistics; returns the dead indices."""
        dead = self.dead_codes()
        n_dead = dead.numel()
        if n_dead == 0:
            return dead
        n = z.shape[0]
        pick = torch.randperm(n, device=z.device)[:n_dead] if n_dead <= n else torch.randint(n, (n_dead,), device=z.device)
        fresh = z[pick].contiguous()
        if is_distributed():
            dist.broadcast(fresh, src=0)
        self.embedding[dead] = fresh
        self.cluster_size[dead] = 0.0
        self.embed_sum[dead] = 0.0
        return dead

    def dead_codes(self) -> torch.Tensor:
        """Indices of the codes whose EMA count is below ``dead_code_threshold``."""
        return torch.nonzero(self.cluster_size < self.dead_code_threshold).squeeze(1)
