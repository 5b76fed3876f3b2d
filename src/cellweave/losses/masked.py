"""Masked reconstruction loss over a shared (union) feature space (scMRDR eq. 13).

A modality laid out in the union of all modalities' features measures only some columns. Its loss sums the
per-entry negative log-likelihood over the measured columns only, so unmeasured columns get exactly zero
gradient, and rescales by ``G / (number measured)`` so that a cell's loss is on the scale of the full space
whatever the share it measures (a 150-protein panel weighs as much as 4,000 genes).
"""

from __future__ import annotations

import torch

_REDUCTIONS = ("mean", "sum", "none")


def masked_reconstruction_loss(nll: torch.Tensor, mask: torch.Tensor | None = None,
                               reduction: str = "mean") -> torch.Tensor:
    """``sum_g(nll_g * mask_g) * G / sum_g(mask_g)`` per cell, reduced over cells.

    Parameters
    ----------
    nll
        Per-entry negative log-likelihood, ``(cells, G)``.
    mask
        Boolean ``(G,)`` or ``(cells, G)``: the measured columns (``None``: all; the loss is then the plain
        sum over features).
    reduction
        ``"mean"`` or ``"sum"`` over cells, or ``"none"`` for the per-cell values.

    Returns
    -------
    torch.Tensor
        A scalar, or ``(cells,)`` for ``reduction="none"``.

    Raises
    ------
    ValueError
        On an unknown reduction, a mask of the wrong shape or dtype, or a cell with no measured column.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if mask is None:
        per_cell = nll.sum(-1)
    else:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
        if mask.shape[-1] != nll.shape[-1] or mask.dim() > 2:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit nll of shape {tuple(nll.shape)}")
        n_measured = mask.sum(-1)
        if bool((n_measured == 0).any()):
            raise ValueError("a cell has no measured feature: its masked loss is undefined")
        # where() rather than a product: entries outside the mask (even inf or nan) neither leak nor get gradient
        kept = torch.where(mask, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
        per_cell = kept.sum(-1) * (nll.shape[-1] / n_measured.to(nll.dtype))
    if reduction == "mean":
        return per_cell.mean()
    if reduction == "sum":
        return per_cell.sum()
    return per_cell
