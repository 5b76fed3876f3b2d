"""Mutual nearest neighbours between two minibatches, exact, on the minibatches' device."""

from __future__ import annotations

import torch

from ..errors import InputError
from .inputs import check_metric, normalize_rows


@torch.no_grad()
def mnn_pairs(a: torch.Tensor, b: torch.Tensor, k: int = 30, metric: str = "cosine") -> torch.Tensor:
    """Pairs ``(i, j)`` where row ``j`` of ``b`` is among the k nearest of ``a[i]`` in ``b`` and vice versa.

    One ``len(a) x len(b)`` similarity matrix, a top-k along each axis and two boolean masks of that shape (one
    byte per pair): no Python loop, no host copy. Computed in float32 (or float64) with autocast off.

    Parameters
    ----------
    a, b
        ``(B_a, D)`` and ``(B_b, D)`` tensors on one device.
    k
        Neighbours on each side; clipped to the other batch's size.
    metric
        ``"cosine"`` or ``"euclidean"``. With cosine an all-zero row has no direction: it is ranked last by
        everyone and takes part in no pair.

    Returns
    -------
    torch.Tensor
        ``(n_pairs, 2)`` int64 on ``a``'s device, sorted by ``i`` then ``j``; ``(0, 2)`` when there is none.
    """
    metric = check_metric(metric, "mnn_pairs")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError("mnn_pairs", "a, b", f"need two 2-D batches of equal width, got shapes {tuple(a.shape)} "
                         f"and {tuple(b.shape)}", "pass (cells x features) tensors over the same features")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError("mnn_pairs", "k", f"k={k!r} is not a positive integer", "pass k >= 1")
    n_a, n_b = a.shape[0], b.shape[0]
    if n_a == 0 or n_b == 0:
        return torch.empty(0, 2, dtype=torch.long, device=a.device)
    with torch.autocast(a.device.type, enabled=False):
        dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
        a, b = a.to(dtype), b.to(a.device, dtype)
        if not bool(torch.isfinite(a.sum() + b.sum())):
            raise InputError("mnn_pairs", "a, b", "the batches hold NaN or infinite values",
                             "check the inputs (and the preprocessing) of this minibatch")
        if metric == "cosine":
            sim = normalize_rows(a) @ normalize_rows(b).T
            zero_a, zero_b = ~a.any(dim=1), ~b.any(dim=1)
            sim.masked_fill_(zero_a[:, None], float("-inf")).masked_fill_(zero_b[None, :], float("-inf"))
        else:  # negative squared distance
            sim = (a @ b.T).mul_(2).sub_((a * a).sum(1)[:, None]).sub_((b * b).sum(1)[None, :])
        near_b = sim.topk(min(k, n_b), dim=1, sorted=False).indices  # (B_a, k): a's neighbours in b
        near_a = sim.topk(min(k, n_a), dim=0, sorted=False).indices  # (k, B_b): b's neighbours in a
        mutual = torch.zeros(n_a, n_b, dtype=torch.bool, device=a.device).scatter_(1, near_b, True)
        mutual &= torch.zeros_like(mutual).scatter_(0, near_a, True)
        if metric == "cosine":
            mutual.masked_fill_(zero_a[:, None], False).masked_fill_(zero_b[None, :], False)
        return mutual.nonzero()
