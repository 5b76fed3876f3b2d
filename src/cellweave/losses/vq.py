"""Vector-quantisation terms: the commitment loss of the encoder and the codebook's perplexity."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def commitment_loss(z: torch.Tensor, quantized: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """``beta * mean((z - sg[e_z])^2)``: pull encoder outputs towards their (fixed) codes (VQ-VAE eq. 3).

    Parameters
    ----------
    z
        Encoder outputs ``(n, d)``.
    quantized
        Their nearest codes ``e_z`` (no gradient flows into them).
    beta
        Commitment weight.
    """
    return beta * F.mse_loss(z.float(), quantized.detach().float())


def perplexity(codes: torch.Tensor, n_codes: int) -> torch.Tensor:
    """``exp(entropy)`` of the code usage in a minibatch: 1 when one code takes every vector, ``n_codes`` at most.

    Parameters
    ----------
    codes
        Code index of each vector ``(n,)``.
    n_codes
        Size of the codebook.
    """
    p = torch.bincount(codes, minlength=n_codes).double() / max(codes.numel(), 1)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return torch.exp(entropy).float()
