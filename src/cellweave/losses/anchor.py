"""MNN anchor loss: keep the embeddings of mutual-nearest-neighbour pairs close."""

from __future__ import annotations

import torch


def anchor_loss(z_a: torch.Tensor, z_b: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean over anchor pairs of the squared distance divided by the latent width (scMODAL eq. 3).

    ``pairs`` is ``(n_pairs, 2)``: rows of ``z_a`` and ``z_b``. With no pair the loss is an exact zero that still
    belongs to the graph (no NaN, no missing gradient path).
    """
    if pairs.shape[0] == 0:
        return (z_a.sum() + z_b.sum()) * 0.0
    d = z_a[pairs[:, 0]] - z_b[pairs[:, 1]]
    return (d * d).sum(1).mean() / z_a.shape[1]
