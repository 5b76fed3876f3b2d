"""Regulatory prior (FactVAE eq. 9): known gene-peak pairs should have aligned feature embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_cosine(gene_emb: torch.Tensor, peak_emb: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Cosine of ``gene_emb[g]`` and ``peak_emb[p]`` for each row ``(g, p)`` of ``pairs`` ``(n_pairs, 2)``."""
    return F.cosine_similarity(gene_emb[pairs[:, 0]].float(), peak_emb[pairs[:, 1]].float(), dim=1)


def regulatory_prior_loss(gene_emb: torch.Tensor, peak_emb: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """``mean over known pairs (g, p) of (1 - cos(gene_emb[g], peak_emb[p]))^2``.

    Parameters
    ----------
    gene_emb, peak_emb
        Feature embeddings ``(n_genes, d)`` and ``(n_peaks, d)``.
    pairs
        Known pairs ``(n_pairs, 2)``: rows into ``gene_emb`` and ``peak_emb``. With no pair the loss is an exact
        zero that still belongs to the graph.
    """
    if pairs.shape[0] == 0:
        return (gene_emb.sum() + peak_emb.sum()) * 0.0
    return (1.0 - pair_cosine(gene_emb, peak_emb, pairs)).pow(2).mean()
