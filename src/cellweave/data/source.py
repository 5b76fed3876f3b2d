"""What a writer consumes: a modality as a sequence of row chunks.

Converters (h5ad, h5mu, 10x, FCS) and the simulator all produce a :class:`ChunkSource`; the Zarr and SOMA
writers consume it. A source holds its ``obs`` and ``var`` tables in memory (metadata, a few columns) but its
matrix only one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse as sp

Matrix = sp.csr_matrix | np.ndarray
Kind = Literal["counts", "normalized"]


@runtime_checkable
class ChunkSource(Protocol):
    """A modality that can be read chunk by chunk.

    Attributes
    ----------
    name
        Where the data comes from (a path), used in error messages.
    modality
        Modality name (``rna``, ``adt``, ``atac``, ``cytometry`` ...).
    obs
        Cell metadata; its index holds the cell ids.
    var
        Feature metadata; its index holds the feature names.
    sparse
        Whether chunks come as CSR (``True``) or dense arrays.
    kind
        ``"counts"`` for raw counts, ``"normalized"`` for anything else, or ``None`` to infer from the values.
    """

    name: str
    modality: str
    obs: pd.DataFrame
    var: pd.DataFrame
    sparse: bool
    kind: Kind | None

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, Matrix]]:
        """Yield ``(start_row, matrix)`` in row order, each with at most ``chunk_rows`` rows."""
        ...


@dataclass
class InMemorySource:
    """A :class:`ChunkSource` over matrices already in memory (tests, small inputs, AnnData objects)."""

    name: str
    modality: str
    obs: pd.DataFrame
    var: pd.DataFrame
    X: Matrix
    kind: Kind | None = None
    sparse: bool = field(init=False)

    def __post_init__(self) -> None:
        self.sparse = sp.issparse(self.X)
        if self.sparse:
            self.X = sp.csr_matrix(self.X)

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, Matrix]]:
        for start in range(0, self.X.shape[0], chunk_rows):
            yield start, self.X[start : start + chunk_rows]
