"""One kNN/MNN interface: exact torch, FAISS CPU (exact, HNSW), FAISS GPU and pynndescent backends.

- :func:`knn`: k nearest neighbours of numpy or torch data, exact or approximate, in query blocks.
- :func:`knn_graph`: the self-kNN graph of a big embedding held in numpy, Zarr or Dask (for evaluation).
- :func:`mnn_pairs`: mutual nearest neighbours between two minibatches (inside a training step).
"""

from .graph import knn_graph, load_matrix
from .inputs import METRICS
from .knn import BACKENDS, choose_backend, knn
from .mnn import mnn_pairs

__all__ = ["BACKENDS", "METRICS", "choose_backend", "knn", "knn_graph", "load_matrix", "mnn_pairs"]
