"""Stores, conversion, preprocessing and the sharded cell stream."""

from .malloc import limit_malloc_arenas

limit_malloc_arenas()  # before any reader thread exists (TileDB, zarr's event loop): see cellweave.data.malloc

from .batch import CellBatch  # noqa: E402
from .open import open_modality  # noqa: E402
from .preprocess import FeatureStats, Preprocess, compute_stats, highly_variable_features, load_or_compute_stats  # noqa: E402
from .source import ChunkSource, InMemorySource  # noqa: E402
from .store import CellChunk, ModalityStore  # noqa: E402
from .stream import CellStream, ModalityReader, PairedStream, UnpairedStream, make_loader, read_rows  # noqa: E402
from .write_zarr import write_zarr  # noqa: E402
from .zarr_store import ZarrStore  # noqa: E402

__all__ = [
    "CellBatch", "CellChunk", "CellStream", "ChunkSource", "FeatureStats", "InMemorySource", "ModalityReader",
    "ModalityStore", "PairedStream", "Preprocess", "UnpairedStream", "ZarrStore", "compute_stats",
    "highly_variable_features", "load_or_compute_stats", "make_loader", "open_modality", "read_rows", "write_zarr",
]
