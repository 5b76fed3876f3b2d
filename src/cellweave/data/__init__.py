"""Stores, conversion, preprocessing and the sharded cell stream.

Importing it changes nothing in the process: the allocator setting of a streaming process
(:func:`limit_malloc_arenas`) is made by the stream when it starts reading, or by the caller who opts in.
"""

from .batch import CellBatch
from .malloc import limit_malloc_arenas
from .memory import AnnDataStore, as_store
from .open import open_modality
from .preprocess import FeatureStats, Preprocess, compute_stats, highly_variable_features, load_or_compute_stats
from .source import ChunkSource, InMemorySource
from .spec import StoreSpec
from .store import CellChunk, ModalityStore
from .stream import CellStream, ModalityReader, PairedStream, UnpairedStream, make_loader, read_rows
from .write_zarr import write_zarr
from .zarr_store import ZarrStore

__all__ = [
    "AnnDataStore", "CellBatch", "CellChunk", "CellStream", "ChunkSource", "FeatureStats", "InMemorySource", "ModalityReader",
    "ModalityStore", "PairedStream", "Preprocess", "StoreSpec", "UnpairedStream", "ZarrStore", "as_store", "compute_stats",
    "highly_variable_features", "limit_malloc_arenas", "load_or_compute_stats", "make_loader", "open_modality", "read_rows", "write_zarr",
]
