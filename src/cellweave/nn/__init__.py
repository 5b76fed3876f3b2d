"""Shared neural building blocks."""

from .codebook import EMACodebook, Quantized
from .likelihoods import log_bernoulli, log_gaussian, log_nb, log_zinb
from .mlp import MLP, Discriminator

__all__ = ["EMACodebook", "MLP", "Discriminator", "Quantized", "log_bernoulli", "log_gaussian", "log_nb", "log_zinb"]
