"""The read side of a modality: one interface over Zarr, TileDB-SOMA and backed h5ad.

A store never loads its matrix whole. The stream asks it for lists of contiguous row ranges; each backend
reads them as it does best (Zarr: concurrent async reads of the needed byte ranges; SOMA: one coordinate read).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .source import Kind, Matrix

Ranges = Sequence[tuple[int, int]]


@dataclass
class CellChunk:
    """Rows read from a store: their global row numbers, cell ids and matrix (CSR or dense)."""

    rows: np.ndarray
    obs_names: np.ndarray
    X: Matrix

    def take(self, order: np.ndarray) -> CellChunk:
        """Rows reordered (or subset) by ``order``."""
        return CellChunk(self.rows[order], self.obs_names[order], self.X[order])

    @staticmethod
    def concat(chunks: Sequence[CellChunk]) -> CellChunk:
        """Concatenate chunks row-wise (CSR stays CSR)."""
        if len(chunks) == 1:
            return chunks[0]
        mats = [c.X for c in chunks]
        X = sp.vstack(mats, format="csr") if sp.issparse(mats[0]) else np.concatenate(mats)
        return CellChunk(
            np.concatenate([c.rows for c in chunks]), np.concatenate([c.obs_names for c in chunks]), X
        )


class ModalityStore(ABC):
    """A modality on disk, read by row ranges.

    Attributes
    ----------
    path
        Location of the store (for messages and the stats sidecar).
    modality
        Modality name.
    n_obs, n_vars
        Shape of the matrix.
    var_names
        Feature names.
    kind
        ``"counts"`` or ``"normalized"``: a hint for the likelihood (:mod:`cellweave.data.kind`).
    kind_given
        Whether ``kind`` was given by the user rather than recorded or inferred.
    sparse
        Whether rows come back as CSR.
    feature_ids
        Stable feature ids kept beside the names (e.g. Ensembl ids of a Census ``var['feature_id']``), or ``None``.
    """

    path: str
    modality: str
    n_obs: int
    var_names: pd.Index
    kind: Kind
    kind_given: bool = False
    sparse: bool
    feature_ids: pd.Index | None = None  # stable feature ids beside the names (SOMA var['feature_id']), if any

    @property
    def n_vars(self) -> int:
        return len(self.var_names)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_obs, self.n_vars)

    @property
    @abstractmethod
    def obs_keys(self) -> list[str]:
        """Names of the obs columns."""

    @abstractmethod
    def obs_column(self, key: str) -> pd.Series:
        """One obs column for every cell (metadata: small, read whole)."""

    @abstractmethod
    def obs_names(self, ranges: Ranges) -> np.ndarray:
        """Cell ids of the given row ranges, concatenated."""

    @abstractmethod
    def read_X(self, ranges: Ranges) -> Matrix:
        """Matrix rows of the given ``[start, stop)`` ranges, concatenated in order."""

    @property
    @abstractmethod
    def stats_dir(self) -> Path:
        """Directory beside the data where preprocessing statistics are kept."""

    def read(self, ranges: Ranges) -> CellChunk:
        """Rows, cell ids and matrix of the given ranges."""
        rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges]) if ranges else np.zeros(0, np.int64)
        return CellChunk(rows, self.obs_names(ranges), self.read_X(ranges))

    def all_obs_names(self) -> pd.Index:
        """Every cell id (used to join paired modalities)."""
        return pd.Index(self.obs_names([(0, self.n_obs)]))

    def require_obs_key(self, key: str) -> pd.Series:
        """An obs column, or a clear error naming the store and the keys it has."""
        if key not in self.obs_keys:
            raise InputError(
                self.path,
                f"obs['{key}']",
                f"no such column (this store has: {', '.join(self.obs_keys) or 'none'})",
                "pass an existing key, or add the column to the input and convert again",
            )
        return self.obs_column(key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, modality={self.modality!r}, shape={self.shape}, kind={self.kind!r})"


def coalesce_ranges(ranges: Ranges) -> list[tuple[int, int]]:
    """Drop empty ranges and merge ranges that touch (``[a,b)`` followed by ``[b,c)``)."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if b <= a:
            continue
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


class StoreSource:
    """A store read back as a :class:`~cellweave.data.source.ChunkSource` (e.g. Zarr -> SOMA conversion)."""

    def __init__(self, store: ModalityStore) -> None:
        self.store = store
        self.name = store.path
        self.modality = store.modality
        self.sparse = store.sparse
        self.kind: Kind | None = store.kind
        self.obs = pd.DataFrame({k: store.obs_column(k).array for k in store.obs_keys}, index=store.all_obs_names())
        ids = getattr(store, "feature_ids", None)
        self.var = pd.DataFrame({} if ids is None else {"feature_id": ids.to_numpy()}, index=store.var_names)

    def iter_chunks(self, chunk_rows: int):
        for start in range(0, self.store.n_obs, chunk_rows):
            yield start, self.store.read_X([(start, min(start + chunk_rows, self.store.n_obs))])
