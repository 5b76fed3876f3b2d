"""``knn_graph``: the self-kNN graph of a large embedding held in numpy, Zarr or Dask."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .knn import knn

# Rows read from a chunked on-disk array at a time when its own chunking is unknown.
_READ_ELEMENTS = 1 << 22


def load_matrix(X: Any) -> np.ndarray | torch.Tensor:
    """``X`` as an in-memory matrix (float64 kept, anything else float32), read chunk by chunk.

    numpy arrays and torch tensors pass through; Dask arrays are stored into one preallocated array (no
    concatenation copy); Zarr arrays (and other sliceable arrays with ``shape`` and ``dtype``, e.g. h5py
    datasets) are read in row blocks of their chunk size.
    """
    if isinstance(X, (np.ndarray, torch.Tensor)):
        return X
    shape, dtype = getattr(X, "shape", None), getattr(X, "dtype", None)
    if shape is None or dtype is None or not hasattr(X, "__getitem__") or hasattr(X, "tocsr"):
        raise InputError("knn_graph", "X", f"cannot read a {type(X).__name__} as a dense matrix",
                         "pass a numpy array, torch tensor, zarr array or dask array of shape (cells, dims)")
    if len(shape) != 2:
        raise InputError("knn_graph", "X", f"expected a 2-D (cells x dims) matrix, got shape {tuple(shape)}",
                         "reshape to (n_cells, n_dims)")
    out = np.empty(shape, dtype=np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    if type(X).__module__.startswith("dask"):
        import dask.array as da

        da.store(X.astype(out.dtype), out, lock=False)
        return out
    chunks = getattr(X, "chunks", None)
    rows = chunks[0] if chunks and isinstance(chunks[0], int) else max(1, _READ_ELEMENTS // max(1, shape[1]))
    for start in range(0, shape[0], rows):
        out[start:start + rows] = X[start:start + rows]
    return out


def knn_graph(X: Any, k: int, *, metric: str = "euclidean", backend: str = "auto", block_size: int | None = None,
              progress: bool = False) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Self-kNN graph (each cell excluded from its own neighbours) of an embedding, for evaluation.

    Parameters
    ----------
    X
        ``(N, D)`` embedding: numpy array, torch tensor, zarr array or dask array. It is loaded into memory once
        (it is the index); queries then run in blocks.
    k
        Neighbours per cell (< N).
    metric
        ``"euclidean"`` or ``"cosine"`` (``1 - cos``).
    backend
        As for :func:`cellweave.neighbors.knn`.
    block_size
        Query rows per block; exact backends then hold O(block_size x N) scores at a time, plus the index.
    progress
        Show a progress bar over the cells.

    Returns
    -------
    distances, indices
        ``(N, k)`` each, nearest first; numpy arrays (torch tensors for torch input).
    """
    return knn(load_matrix(X), k, metric=metric, backend=backend, block_size=block_size, progress=progress)
