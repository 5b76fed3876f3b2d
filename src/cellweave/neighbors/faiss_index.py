"""FAISS backends: exact brute force and HNSW on the CPU, brute force on GPUs with torch tensors in place.

- ``faiss`` (exact): ``faiss.knn`` over the data (the same kernel as ``IndexFlatL2`` / ``IndexFlatIP``, with no
  copy of the data into an index). Cosine uses inner products on unit rows.
- ``faiss-hnsw``: ``IndexHNSWFlat`` with ``M = 24`` links per node, ``efConstruction = 100`` and
  ``efSearch = max(128, 1.5 k)``. On a 100,000 x 30 Gaussian-mixture embedding (the metric benchmark's), 90
  neighbours, 2 threads: recall 0.992 in 6 s to build and 11 s to search; ``M = 32, efConstruction = 200``
  reach 0.997 in 12 s + 14 s; ``M = 16`` (0.982 in 5 s + 8 s) misses a cell's own point on the 50-dim
  pbmc68k PCA. ``faiss`` switches to it above :data:`FAISS_EXACT_MAX_CELLS` cells, where brute force is O(N^2).
- ``faiss-gpu``: ``faiss.knn_gpu`` on CUDA tensors through ``faiss.contrib.torch_utils`` (no host copies, on
  torch's current stream). Needs a GPU build of faiss (``faiss-gpu-cu12``) and CUDA data.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import numpy as np
import torch

from ..errors import InputError
from .base import drop_self

FAISS_EXACT_MAX_CELLS = 200_000
HNSW_M = 24
HNSW_EF_CONSTRUCTION = 100
HNSW_EF_SEARCH = 128
# faiss's GPU brute-force kernel selects at most this many neighbours.
GPU_MAX_K = 2048


def faiss_installed() -> bool:
    """Whether the ``faiss`` module can be imported."""
    return importlib.util.find_spec("faiss") is not None


def faiss_gpu_available() -> bool:
    """Whether faiss is a GPU build that sees at least one GPU."""
    if not faiss_installed():
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _faiss(backend: str):
    if not faiss_installed():
        raise InputError("knn", "backend", f"backend {backend!r} needs faiss, which is not installed",
                         "pip install faiss-cpu (or faiss-gpu-cu12), or use backend='torch'")
    import faiss

    return faiss


def _float32_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 host array (a view when ``x`` already is one)."""
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


class FaissCpuIndex:
    """Exact (``hnsw=False``) or HNSW search on the CPU over prepared vectors."""

    def __init__(self, data: torch.Tensor, metric: str, hnsw: bool) -> None:
        faiss = _faiss("faiss-hnsw" if hnsw else "faiss")
        self._faiss = faiss
        self.exact = not hnsw
        self.metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        self.data = _float32_numpy(data)
        self.index = None
        if hnsw:
            self.index = faiss.IndexHNSWFlat(self.data.shape[1], HNSW_M, self.metric)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self.index.add(self.data)

    def search(self, query: torch.Tensor, k: int, self_offset: int | None) -> torch.Tensor:
        kk = k if self_offset is None else k + 1
        q = _float32_numpy(query)
        if self.index is None:
            _, found = self._faiss.knn(q, self.data, kk, metric=self.metric)
        else:
            params = self._faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, kk + kk // 2))
            _, found = self.index.search(q, kk, params=params)
        found = torch.from_numpy(found)
        return found if self_offset is None else drop_self(found, self_offset, k)


@cache
def _gpu_resources(device: int):
    """One set of faiss GPU resources (scratch memory, handles) per device, kept for the process."""
    import faiss

    return faiss.StandardGpuResources()


class FaissGpuIndex:
    """Exact brute-force search on a GPU; data and queries stay CUDA tensors (float32, row-major)."""

    exact = True

    def __init__(self, data: torch.Tensor, metric: str) -> None:
        faiss = _faiss("faiss-gpu")
        if not faiss_gpu_available():
            raise InputError("knn", "backend", "backend 'faiss-gpu' needs a GPU build of faiss and a visible GPU; "
                             "this faiss has no GPU support or sees no GPU",
                             "install faiss-gpu-cu12 on a CUDA machine, or use backend='torch' (exact, also on CUDA)")
        if not data.is_cuda:
            raise InputError("knn", "data", "backend 'faiss-gpu' needs CUDA tensors, got data on "
                             f"{data.device}", "move the data to the GPU (.cuda()) or use backend='faiss'")
        from faiss.contrib import torch_utils  # noqa: F401  (patches faiss.knn_gpu to take torch tensors)

        self._faiss = faiss
        self.metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        self.data = data.float().contiguous()
        self.device = data.device.index if data.device.index is not None else torch.cuda.current_device()
        self.res = _gpu_resources(self.device)

    def search(self, query: torch.Tensor, k: int, self_offset: int | None) -> torch.Tensor:
        kk = k if self_offset is None else k + 1
        if kk > GPU_MAX_K:
            raise InputError("knn", "k", f"faiss GPU search returns at most {GPU_MAX_K} neighbours, asked for {kk}",
                             "use backend='torch' for larger k")
        q = query.to(self.data.device, torch.float32).contiguous()
        with torch.cuda.device(self.device):
            _, found = self._faiss.knn_gpu(self.res, q, self.data, kk, metric=self.metric, device=self.device)
        return found if self_offset is None else drop_self(found, self_offset, k)
