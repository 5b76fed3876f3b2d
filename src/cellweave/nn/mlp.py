"""Multilayer perceptrons: encoders, decoders and discriminators are all this one block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """``Linear -> [norm] -> activation -> [dropout]`` per hidden layer, then a final ``Linear``.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    hidden
        Widths of the hidden layers (empty: one linear map).
    activation
        Activation class for hidden layers.
    norm
        ``"batch"``, ``"layer"`` or ``None``.
    dropout
        Dropout rate after each hidden activation.
    """

    def __init__(self, n_in: int, n_out: int, hidden: Sequence[int] = (512,), activation: type[nn.Module] = nn.ReLU,
                 norm: str | None = None, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            elif norm == "layer":
                layers.append(nn.LayerNorm(h))
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_out))
        super().__init__(*layers)

    def normal_init_(self, std: float) -> MLP:
        """Redraw every weight and bias from ``N(0, std^2)`` (scMODAL/Portal's initialisation; returns ``self``).

        With ``std = 0.1`` the latent codes start on the scale of the scaled inputs, which sets the balance
        between the distance-based terms (MNN anchors, cross-consistency) and the bounded ones (GAN, geometry).
        """
        with torch.no_grad():
            for layer in self:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, std)
                    layer.bias.normal_(0.0, std)
        return self


class Discriminator(MLP):
    """Latent-space classifier returning logits: one logit for two domains, ``m`` logits for ``m`` classes.

    Parameters
    ----------
    n_latent
        Latent width.
    n_classes
        2 gives a single logit (binary), more gives one logit per class.
    hidden
        Hidden widths (scMODAL's code: 512, 512).
    """

    def __init__(self, n_latent: int, n_classes: int = 2, hidden: Sequence[int] = (512, 512),
                 activation: type[nn.Module] = nn.LeakyReLU) -> None:
        super().__init__(n_latent, 1 if n_classes == 2 else n_classes, hidden, activation)
        self.n_classes = n_classes

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = super().forward(z)
        return out.squeeze(-1) if self.n_classes == 2 else out
