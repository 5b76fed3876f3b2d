"""Isometric structure-preservation loss of scMRDR (paper eq. 11, in the authors' normalisation).

The full latent code ``z = (z_u, z_s)`` of a VAE keeps the structure of a modality; the loss asks the shared
part ``z_u`` alone to keep it, by matching Euclidean distance matrices of posterior means within each
modality (pairs of cells from different modalities are left out: across modalities only the adversary acts):

.. math::

    L = \\frac{1}{N} \\sum_m \\sum_{i, j \\in m} \\big(\\lVert \\mu_u(x_i) - \\mu_u(x_j) \\rVert_2
        - \\lVert \\mu_z(x_i) - \\mu_z(x_j) \\rVert_2\\big)^2

over ordered pairs ``(i, j)`` of the minibatch (both orders, the zero diagonal included), divided by the
number ``N`` of cells in the minibatch, as the authors' code does (``mse_loss(D_u * M, D_z * M,
reduction='sum') / N`` with ``M`` the same-modality mask). Gradients flow into both distance matrices (the
authors do not detach the full code).
"""

from __future__ import annotations

import torch


def pairwise_distances(z: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance matrix ``(n, n)`` of the rows of ``z`` (zero distances get zero gradient)."""
    return torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")


def isometric_loss(z_shared: torch.Tensor, z_full: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Squared differences of within-group distance matrices of ``z_shared`` and ``z_full``, summed, over ``N``.

    Parameters
    ----------
    z_shared
        Posterior means of the shared code, ``(N, d_u)``.
    z_full
        Posterior means of the full code ``(z_u, z_s)``, ``(N, d_u + d_s)``.
    groups
        ``(N,)`` integer codes (the modality of each cell); only pairs within a group count. ``None``: one group.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    if z_shared.shape[0] != z_full.shape[0]:
        raise ValueError(f"z_shared has {z_shared.shape[0]} rows but z_full has {z_full.shape[0]}")
    n = z_shared.shape[0]
    if groups is None:
        total = ((pairwise_distances(z_shared) - pairwise_distances(z_full)) ** 2).sum()
    else:
        total = z_shared.new_zeros(())
        for g in torch.unique(groups):
            rows = groups == g
            total = total + ((pairwise_distances(z_shared[rows]) - pairwise_distances(z_full[rows])) ** 2).sum()
    return total / n
