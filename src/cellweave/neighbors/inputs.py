"""Validation and conversion of kNN inputs: numpy arrays or torch tensors in, torch tensors out.

Everything inside :mod:`cellweave.neighbors` works on 2-D floating torch tensors (float32, or float64 when the
input is float64); numpy arrays are wrapped without a copy where their layout allows it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

METRICS = ("euclidean", "cosine")

# Rows checked for NaN/inf at a time: bounds the temporary boolean mask of the check.
_FINITE_CHECK_ELEMENTS = 1 << 24


def check_metric(metric: str, source: str) -> str:
    """Return ``metric`` when it is one of :data:`METRICS`, else raise :class:`InputError`."""
    if metric not in METRICS:
        raise InputError(source, "metric", f"unknown metric {metric!r}", f"use one of {', '.join(METRICS)}")
    return metric


def check_k(k: int, available: int, source: str, what: str) -> int:
    """``k`` must be an integer with ``1 <= k <= available`` (the number of candidate neighbours)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(source, "k", f"k must be an integer, got {type(k).__name__}", "pass a positive integer")
    if k < 1:
        raise InputError(source, "k", f"k={k} is not positive", "pass k >= 1")
    if k > available:
        raise InputError(source, "k", f"k={k} but only {available} candidate neighbours exist ({what})",
                         f"pass k <= {available}, or give more points")
    return int(k)


def as_matrix(x: np.ndarray | torch.Tensor, source: str, field: str) -> torch.Tensor:
    """A 2-D floating tensor viewing ``x`` (numpy arrays are wrapped without a copy when possible).

    float64 stays float64; every other dtype (float16, bfloat16, integers, bool) becomes float32.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise InputError(source, field, f"cannot read {type(x).__name__} as a matrix ({err})",
                             "pass a numpy array or a torch tensor") from err
        if arr.dtype.kind not in "biuf":
            raise InputError(source, field, f"dtype {arr.dtype} is not numeric", "pass a float32/float64 matrix")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim != 2:
        raise InputError(source, field, f"expected a 2-D (cells x features) matrix, got shape {tuple(t.shape)}",
                         "reshape to (n_cells, n_features)")
    if t.dtype != torch.float64 and t.dtype != torch.float32:
        t = t.float()
    return t


def check_finite(t: torch.Tensor, source: str, field: str) -> None:
    """Raise :class:`InputError` when ``t`` holds NaN or infinite values (checked in row blocks)."""
    rows = max(1, _FINITE_CHECK_ELEMENTS // max(1, t.shape[1]))
    for start in range(0, t.shape[0], rows):
        block = t[start:start + rows]
        if not bool(torch.isfinite(block).all()):
            bad = start + int((~torch.isfinite(block)).any(dim=1).nonzero()[0, 0])
            raise InputError(source, field, f"row {bad} holds NaN or infinite values",
                             "remove or impute those rows before the neighbour search")


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine similarity to anything is 0)."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / norms.clamp_min(torch.finfo(x.dtype).tiny)


def to_output(t: torch.Tensor, like: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``t`` as the same kind as ``like``: a numpy array, or a torch tensor on ``like``'s device."""
    if isinstance(like, torch.Tensor):
        return t.to(like.device)
    return t.cpu().numpy()
