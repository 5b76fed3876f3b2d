"""Geometry preservation: a cell's Gaussian-kernel similarities to the other cells of its minibatch should
look alike in the input space and in the latent space (scMODAL eqs. 4-6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(x: torch.Tensor) -> torch.Tensor:
    """``exp(-||x_i - x_j||^2 / (2 p))`` for all pairs of rows of ``x`` (``p`` = number of columns): B x B."""
    sq = torch.cdist(x, x).pow(2)
    return torch.exp(-sq / (2 * x.shape[1]))


def geometry_loss(x: torch.Tensor, z: torch.Tensor, threshold: float = 0.975) -> torch.Tensor:
    """``-mean_b min(cos(k_b(x), k_b(z)), threshold)``: reward kernel rows that agree, up to ``threshold``."""
    with torch.no_grad():
        kx = gaussian_kernel(x.float())
    kz = gaussian_kernel(z.float())
    cos = F.cosine_similarity(kx, kz, dim=1)
    return -torch.clamp(cos, max=threshold).mean()
