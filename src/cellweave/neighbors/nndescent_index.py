"""Approximate kNN with pynndescent (NN-descent graph, random-projection-tree initialisation).

Self-kNN reads the NN-descent graph itself (built with ``max(k + 1, 30)`` neighbours per point); other queries
go through pynndescent's search graph. The first call in a process spends ~20-30 s compiling numba kernels.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .base import drop_self

MIN_GRAPH_NEIGHBORS = 30
SEED = 0


class NNDescentIndex:
    """pynndescent index over prepared vectors; ``self_graph`` when the queries are the data themselves."""

    exact = False

    def __init__(self, data: torch.Tensor, metric: str, k: int, self_graph: bool) -> None:
        try:
            from pynndescent import NNDescent
        except ImportError as err:
            raise InputError("knn", "backend", "backend 'pynndescent' needs pynndescent, which is not installed",
                             "pip install pynndescent, or use backend='faiss'") from err
        values = data.detach().cpu().numpy()
        values = np.ascontiguousarray(values, dtype=np.float32)
        n_neighbors = min(max(k + int(self_graph), MIN_GRAPH_NEIGHBORS), values.shape[0])
        self.self_graph = self_graph
        self.index = NNDescent(values, metric=metric, n_neighbors=n_neighbors, random_state=SEED, compressed=False)
        if not self_graph:
            self.index.prepare()

    def search(self, query: torch.Tensor, k: int, self_offset: int | None) -> torch.Tensor:
        if self.self_graph:
            assert self_offset is not None, "a self-graph index answers only self queries"
            graph, _ = self.index.neighbor_graph
            found = torch.from_numpy(np.ascontiguousarray(graph[self_offset:self_offset + query.shape[0], :k + 1]))
            return drop_self(found.long(), self_offset, k)
        kk = k if self_offset is None else k + 1
        found, _ = self.index.query(np.ascontiguousarray(query.detach().cpu().numpy(), dtype=np.float32), k=kk)
        found = torch.from_numpy(found).long()
        return found if self_offset is None else drop_self(found, self_offset, k)
