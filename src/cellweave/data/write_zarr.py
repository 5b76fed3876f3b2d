"""Write a :class:`~cellweave.data.source.ChunkSource` to a Zarr store, checked and atomic."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .atomic import atomic_output
from .source import ChunkSource
from .validate import ValueChecker, check_tables, obs_for_storage
from .zarr_store import ZarrWriter

DEFAULT_CHUNK_ROWS = 4096


def write_zarr(
    source: ChunkSource, out: str | os.PathLike, overwrite: bool = False, chunk_rows: int = DEFAULT_CHUNK_ROWS, progress=None
) -> Path:
    """Write one modality to ``out`` (a ``.zarr`` directory) chunk by chunk.

    Values are checked as they stream (NaN/Inf, negative or fractional counts); ids before anything is
    written. On any error nothing is left under ``out``.

    Parameters
    ----------
    source
        The modality to write.
    out
        Target directory.
    overwrite
        Replace an existing ``out``.
    chunk_rows
        Rows read from the source at a time (memory is bounded by this, not by the number of cells).
    progress
        Optional callable ``progress(n_rows)`` called after each chunk.

    Returns
    -------
    Path
        ``out``.
    """
    check_tables(source)
    checker = ValueChecker(source.name, source.kind)
    with atomic_output(out, overwrite) as tmp:
        writer = ZarrWriter(tmp, n_vars=source.var.shape[0], sparse=source.sparse)
        for start, X in source.iter_chunks(chunk_rows):
            checker.check(start, X)
            writer.append(X)
            if progress is not None:
                progress(X.shape[0])
        var = source.var.copy()
        var.index = var.index.astype(str)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            writer.close(obs_for_storage(source.obs), var, source.modality, checker.kind or "counts")
    return Path(out)
