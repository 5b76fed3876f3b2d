"""KL divergence between diagonal Gaussians (the VAE prior terms)."""

from __future__ import annotations

import torch


def kl_normal(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor | None = None,
              logvar_p: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` per row, summed over the last dimension.

    Parameters
    ----------
    mu_q, logvar_q
        Posterior means and log-variances, ``(cells, d)``.
    mu_p, logvar_p
        Prior means and log-variances, broadcastable to ``(cells, d)`` (``None``: 0, i.e. a standard normal).

    Returns
    -------
    torch.Tensor
        ``(cells,)``.
    """
    mu_p = torch.zeros_like(mu_q) if mu_p is None else mu_p
    logvar_p = torch.zeros_like(logvar_q) if logvar_p is None else logvar_p
    ratio = torch.exp(logvar_q - logvar_p) + (mu_q - mu_p) ** 2 * torch.exp(-logvar_p)
    return 0.5 * (ratio - 1.0 + logvar_p - logvar_q).sum(-1)
