"""``knn``: one exact-or-approximate k-nearest-neighbour search over numpy arrays or torch tensors."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from .base import NeighborIndex, check_complete
from .faiss_index import FAISS_EXACT_MAX_CELLS, FaissCpuIndex, FaissGpuIndex, faiss_gpu_available, faiss_installed
from .inputs import as_matrix, check_finite, check_k, check_metric, normalize_rows, to_output
from .nndescent_index import NNDescentIndex
from .torch_index import TorchIndex, exact_distances

BACKENDS = ("auto", "torch", "faiss", "faiss-hnsw", "faiss-gpu", "pynndescent")
# ``auto`` searches numpy data of up to this many cells exactly with faiss, larger data with HNSW.
AUTO_EXACT_MAX_CELLS = 50_000
# Default query block: the score block (queries x N) or the gathered neighbours (queries x k x dim) hold at most
# this many elements.
BLOCK_ELEMENTS = 1 << 25
MAX_BLOCK_ROWS = 1 << 16

Array = np.ndarray | torch.Tensor


def choose_backend(backend: str, data: torch.Tensor, data_is_numpy: bool) -> str:
    """The concrete backend for ``backend`` (resolving ``auto``) on this data.

    ``auto``: CUDA tensor with a faiss GPU build -> ``faiss-gpu``; any other torch tensor -> ``torch``; numpy
    with at most 50,000 rows -> ``faiss`` (exact); larger numpy -> ``faiss-hnsw`` (``pynndescent`` when faiss is
    not installed, ``torch`` for small data without faiss). ``faiss`` itself turns to HNSW above 200,000 rows.
    """
    if backend not in BACKENDS:
        raise InputError("knn", "backend", f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
    n = data.shape[0]
    if backend == "auto":
        if not data_is_numpy:
            return "faiss-gpu" if data.is_cuda and faiss_gpu_available() else "torch"
        if not faiss_installed():
            return "torch" if n <= AUTO_EXACT_MAX_CELLS else "pynndescent"
        return "faiss" if n <= AUTO_EXACT_MAX_CELLS else "faiss-hnsw"
    if backend == "faiss" and n > FAISS_EXACT_MAX_CELLS:
        return "faiss-hnsw"
    return backend


def _build(backend: str, data: torch.Tensor, metric: str, k: int, self_graph: bool) -> NeighborIndex:
    if backend == "torch":
        return TorchIndex(data, metric)
    if backend in ("faiss", "faiss-hnsw"):
        return FaissCpuIndex(data.cpu(), metric, hnsw=backend == "faiss-hnsw")
    if backend == "faiss-gpu":
        return FaissGpuIndex(data, metric)
    return NNDescentIndex(data.cpu(), metric, k, self_graph)


def default_block_rows(n_data: int, k: int, dim: int, scores: bool = True) -> int:
    """Query rows per block so that one block's neighbours (rows x k x dim) and, where the backend holds them
    (``scores``: the torch backend), its scores (rows x N) stay small. FAISS tiles its own scores: small query
    blocks only slow it down (4x at 50,000 x 50,000).
    """
    width = max(n_data if scores else 1, k * dim, 1)
    return max(1, min(MAX_BLOCK_ROWS, BLOCK_ELEMENTS // width))


def _checked_inputs(data: Array, query: Array | None, k: int, exclude_self: bool,
                    block_size: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``data`` and ``query`` as 2-D float tensors, after every check of :func:`knn`; and the checked ``k``."""
    x = as_matrix(data, "knn", "data")
    q = x if query is None else as_matrix(query, "knn", "query")
    if x.shape[0] == 0:
        raise InputError("knn", "data", "data has no rows", "pass at least k + 1 points")
    if q.shape[1] != x.shape[1]:
        raise InputError("knn", "query", f"query has {q.shape[1]} columns but data has {x.shape[1]}",
                         "give query and data the same features")
    if exclude_self and q.shape[0] != x.shape[0]:
        raise InputError("knn", "exclude_self", f"exclude_self needs query row i to be data row i, but query has "
                         f"{q.shape[0]} rows and data {x.shape[0]}", "pass exclude_self=False")
    available = x.shape[0] - int(exclude_self)
    k = check_k(k, available, "knn", f"{x.shape[0]} points{', self excluded' if exclude_self else ''}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise InputError("knn", "block_size", f"block_size={block_size!r} is not a positive integer",
                         "pass a positive integer or None")
    check_finite(x, "knn", "data")
    if query is not None:
        check_finite(q, "knn", "query")
    return x, q, k


def knn(data: Array, k: int, query: Array | None = None, *, metric: str = "euclidean", backend: str = "auto",
        exclude_self: bool | None = None, block_size: int | None = None,
        progress: bool = False) -> tuple[Array, Array]:
    """k nearest neighbours in ``data`` of every row of ``query`` (of ``data`` itself when ``query`` is None).

    Parameters
    ----------
    data
        ``(N, D)`` points to search, numpy array or torch tensor (CPU or CUDA). float64 is kept; other dtypes
        are searched as float32.
    k
        Neighbours per query row; at most ``N`` (``N - 1`` when excluding self).
    query
        ``(M, D)`` query points; None for the self-kNN of ``data``.
    metric
        ``"euclidean"`` (distance, not squared) or ``"cosine"`` (``1 - cos``; an all-zero row has cosine 0 to
        everything, so distance 1).
    backend
        ``"torch"`` (exact, matrix product + top-k on the data's device), ``"faiss"`` (exact on CPU; HNSW above
        200,000 points), ``"faiss-hnsw"`` (approximate, CPU), ``"faiss-gpu"`` (exact, CUDA tensors, GPU build of
        faiss), ``"pynndescent"`` (approximate) or ``"auto"`` (see :func:`choose_backend`). CPU backends copy CUDA
        tensors to the host.
    exclude_self
        Do not return a point as its own neighbour: query row ``i`` is data row ``i``. Defaults to True when
        ``query`` is None, False otherwise.
    block_size
        Query rows searched at a time; peak memory is O(block_size x N) for exact search. Default: as many rows
        as keep a block below 2^25 elements.
    progress
        Show a progress bar over the query rows.

    Returns
    -------
    distances, indices
        ``(M, k)`` each, nearest first: distances in the data's float precision (recomputed directly from the
        vectors for every backend), indices int64. The same kind as ``query`` (as ``data`` when ``query`` is
        None): numpy arrays, or torch tensors on its device.

    Raises
    ------
    InputError
        Bad metric/backend, non-2-D input, mismatched widths, NaN/inf values, k out of range, an unavailable
        backend.
    """
    metric = check_metric(metric, "knn")
    if exclude_self is None:
        exclude_self = query is None
    x, q, k = _checked_inputs(data, query, k, exclude_self, block_size)
    name = choose_backend(backend, x, data_is_numpy=not isinstance(data, torch.Tensor))
    dtype = torch.promote_types(x.dtype, q.dtype)
    device = x.device if name in ("torch", "faiss-gpu") else torch.device("cpu")
    x = x.to(device, dtype)
    prepared = normalize_rows(x) if metric == "cosine" else x
    n_query = q.shape[0]
    distances = torch.empty(n_query, k, dtype=dtype, device=device)
    indices = torch.empty(n_query, k, dtype=torch.int64, device=device)
    if n_query:
        index = _build(name, prepared, metric, k, self_graph=query is None)
        rows = block_size or default_block_rows(x.shape[0], k, x.shape[1], scores=name == "torch")
        with (tqdm(total=n_query, unit="cells", desc=f"kNN ({name})", disable=not progress) as bar,
              torch.autocast(device.type, enabled=False)):
            for start in range(0, n_query, rows):
                stop = min(start + rows, n_query)
                if query is None:
                    qb = prepared[start:stop]
                else:
                    qb = q[start:stop].to(device, dtype)
                    qb = normalize_rows(qb) if metric == "cosine" else qb
                found = index.search(qb, k, start if exclude_self else None).to(device)
                if not index.exact:
                    check_complete(found, name)
                distances[start:stop], indices[start:stop] = exact_distances(qb, prepared, found, metric)
                bar.update(stop - start)
    like = data if query is None else query
    return to_output(distances, like), to_output(indices, like)
