"""Per-minibatch losses shared by the models (no term couples more than the cells of one step)."""

from .adversarial import discriminator_loss, generator_loss
from .anchor import anchor_loss
from .geometry import gaussian_kernel, geometry_loss
from .isometric import isometric_loss, pairwise_distances
from .kl import kl_normal
from .masked import masked_reconstruction_loss
from .regulatory import pair_cosine, regulatory_prior_loss
from .similarity import cosine_similarity_matrix, similarity_structure_loss
from .vq import commitment_loss, perplexity

__all__ = ["anchor_loss", "discriminator_loss", "gaussian_kernel", "generator_loss", "geometry_loss",
           "commitment_loss", "cosine_similarity_matrix", "pair_cosine", "perplexity", "regulatory_prior_loss",
           "similarity_structure_loss", "isometric_loss", "kl_normal", "masked_reconstruction_loss",
           "pairwise_distances"]
