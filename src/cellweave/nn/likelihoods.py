"""Observation log-likelihoods in scVI's parameterisation, one value per entry (cells x features).

Per-entry values let a caller mask features a modality does not measure before reducing
(:func:`cellweave.losses.masked_reconstruction_loss`). Every function is written in a numerically stable form
(``logaddexp`` / ``softplus`` instead of logs of sums, ``lgamma`` for the binomial coefficients) and works
for non-integer ``x`` too (the continuous extension of the count densities).

Parameterisation
----------------
* NB(mu, theta): mean ``mu``, inverse dispersion ``theta`` (variance ``mu + mu^2 / theta``); scipy's
  ``nbinom(n=theta, p=theta / (theta + mu))``.
* ZINB(mu, theta, zi_logits): with probability ``sigmoid(zi_logits)`` a structural zero, else NB(mu, theta).
* Gaussian(mean, var | log_var).
* Bernoulli(logits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_2PI = math.log(2.0 * math.pi)


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative binomial log-probability of ``x``.

    Parameters
    ----------
    x
        Observed counts (non-negative).
    mu
        Means (non-negative), broadcastable to ``x``.
    theta
        Inverse dispersions (positive), broadcastable to ``x``.
    eps
        Added inside the logarithms so that ``mu = 0`` stays finite.

    Returns
    -------
    torch.Tensor
        ``log NB(x; mu, theta)`` with the broadcast shape of the inputs.
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (theta * (torch.log(theta + eps) - log_theta_mu) + x * (torch.log(mu + eps) - log_theta_mu)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0))


def log_zinb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor,
             eps: float = 1e-8) -> torch.Tensor:
    """Zero-inflated negative binomial log-probability of ``x``.

    ``P(x) = pi * [x = 0] + (1 - pi) * NB(x; mu, theta)`` with ``pi = sigmoid(zi_logits)``; in log space
    ``log P(0) = logaddexp(zi_logits, log NB(0)) - softplus(zi_logits)`` and
    ``log P(x > 0) = log NB(x) - softplus(zi_logits)``.

    Parameters
    ----------
    x, mu, theta, eps
        As for :func:`log_nb`.
    zi_logits
        Logits of the zero-inflation probability, broadcastable to ``x``.

    Returns
    -------
    torch.Tensor
        ``log ZINB(x; mu, theta, pi)``.
    """
    log_norm = F.softplus(zi_logits)  # -log(1 - pi)
    log_nb0 = theta * (torch.log(theta + eps) - torch.log(theta + mu + eps))
    zero = torch.logaddexp(zi_logits, log_nb0) - log_norm
    nonzero = log_nb(x, mu, theta, eps) - log_norm
    return torch.where(x > 0, nonzero, zero)


def log_gaussian(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor | None = None, *,
                 log_var: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian log-density of ``x``; give the variance either as ``var`` or as ``log_var`` (not both).

    Parameters
    ----------
    x
        Observations.
    mean
        Means, broadcastable to ``x``.
    var
        Variances (positive), broadcastable to ``x``.
    log_var
        Log-variances, broadcastable to ``x`` (the stable choice for learned variances).

    Returns
    -------
    torch.Tensor
        ``log N(x; mean, var)``.
    """
    if (var is None) == (log_var is None):
        raise ValueError("log_gaussian needs exactly one of var and log_var")
    if log_var is None:
        log_var = torch.log(var)
    return -0.5 * (_LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli log-probability of ``x`` in {0, 1} (or a probability in [0, 1]) given ``logits``.

    Returns
    -------
    torch.Tensor
        ``x * log sigmoid(logits) + (1 - x) * log sigmoid(-logits)``.
    """
    return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
