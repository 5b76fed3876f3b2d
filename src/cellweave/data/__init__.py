"""Stores, conversion, preprocessing and the sharded cell stream."""

from .batch import CellBatch
from .open import open_modality
from .preprocess import FeatureStats, Preprocess, compute_stats, highly_variable_features, load_or_compute_stats
from .source import ChunkSource, InMemorySource
from .store import CellChunk, ModalityStore
from .stream import CellStream, ModalityReader, PairedStream, UnpairedStream, make_loader, read_rows
from .write_zarr import write_zarr
from .zarr_store import ZarrStore

__all__ = [
    "CellBatch", "CellChunk", "CellStream", "ChunkSource", "FeatureStats", "InMemorySource", "ModalityReader",
    "ModalityStore", "PairedStream", "Preprocess", "UnpairedStream", "ZarrStore", "compute_stats",
    "highly_variable_features", "load_or_compute_stats", "make_loader", "open_modality", "read_rows", "write_zarr",
]
