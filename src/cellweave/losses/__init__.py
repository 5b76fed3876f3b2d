"""Per-minibatch losses shared by the models (no term couples more than the cells of one step)."""

from .adversarial import discriminator_loss, generator_loss
from .anchor import anchor_loss
from .geometry import gaussian_kernel, geometry_loss

__all__ = ["anchor_loss", "discriminator_loss", "gaussian_kernel", "generator_loss", "geometry_loss"]
