"""GAN losses on latent codes: a discriminator tells domains apart, encoders try to fool it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of a discriminator that labels domain ``a`` as 1 and ``b`` as 0.

    Minimising it maximises :math:`\\mathbb{E}[\\log D(z_a)] + \\mathbb{E}[\\log(1 - D(z_b))]` (scMODAL eq. 1).
    """
    return F.binary_cross_entropy_with_logits(logits_a, torch.ones_like(logits_a)) + F.binary_cross_entropy_with_logits(
        logits_b, torch.zeros_like(logits_b)
    )


def generator_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """The encoders' side of the game: the discriminator's loss with the labels swapped (non-saturating form)."""
    return discriminator_loss(logits_b, logits_a)
