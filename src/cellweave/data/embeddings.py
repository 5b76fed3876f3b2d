"""Per-cell outputs (latents, imputations) written chunk by chunk: an AnnData Zarr store, and SOMA ``obsm``.

The Zarr store is a regular AnnData layout (``anndata.read_zarr`` opens it): ``obs`` holds the input cell ids
and obs columns, ``var`` is empty unless a matrix ``X`` is written, and each output is an ``obsm`` array filled
row block by row block, so memory is bounded by one block whatever the number of cells.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import zarr

from ..train.distributed import any_rank, on_rank_zero, rank, world_size
from .atomic import atomic_output
from .store import ModalityStore
from .zarr_store import OBS_CHUNK_ROWS, write_anndata_elem

ARRAY_ATTRS = {"encoding-type": "array", "encoding-version": "0.2.0"}
ROW_CHUNK = 16_384


class EmbeddingWriter:
    """Write per-cell arrays of one modality into ``out`` (an AnnData Zarr store), rows in store order.

    Use as a context manager: on success the store appears under ``out`` complete; on an error nothing does.

    Under ``torch.distributed`` every rank writes its own rows, :attr:`row_range` (whole Zarr chunks, so no
    two ranks touch one chunk), of the one store: rank 0 creates it under a temporary name, every rank fills
    its rows, and rank 0 renames it to ``out`` once every rank has written all of its rows. When any rank
    fails, the temporary is removed and every rank raises.

    Parameters
    ----------
    out
        Target ``.zarr`` directory.
    store
        The modality the cells come from (cell ids and obs columns are copied).
    widths
        ``obsm`` key -> number of columns.
    var_names
        Write an ``X`` of these columns too (e.g. imputed features); ``None``: no ``X``.
    overwrite
        Replace an existing ``out``.

    Attributes
    ----------
    row_range
        ``(start, stop)``: the rows this process writes (all rows in a single process).
    """

    def __init__(self, out: str | os.PathLike, store: ModalityStore, widths: Mapping[str, int],
                 var_names: pd.Index | None = None, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.store = store
        self.widths = dict(widths)
        self.var_names = var_names
        self.overwrite = overwrite
        self.filled = 0
        n, ranks = store.n_obs, world_size()
        self.row_chunk = max(1, min(ROW_CHUNK, math.ceil(n / ranks)))
        n_chunks = math.ceil(n / self.row_chunk)
        first, last = rank() * n_chunks // ranks, (rank() + 1) * n_chunks // ranks
        self.row_range = (min(first * self.row_chunk, n), min(last * self.row_chunk, n))

    def _create(self, tmp: Path) -> None:
        """The store's skeleton: obs, var, empty ``obsm`` arrays (and ``X``)."""
        store = self.store
        n = store.n_obs
        obs = pd.DataFrame({k: store.obs_column(k).array for k in store.obs_keys},  # categoricals stay codes
                           index=store.all_obs_names().astype(str))
        var = pd.DataFrame(index=pd.Index([] if self.var_names is None else list(self.var_names), dtype=str))
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        write_anndata_elem(root, "obs", obs, chunk_rows=OBS_CHUNK_ROWS)
        write_anndata_elem(root, "var", var)
        for key in ("layers", "obsp", "varm", "varp", "uns"):
            write_anndata_elem(root, key, {})
        obsm = root.create_group("obsm")
        obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        for key, width in self.widths.items():
            arr = obsm.create_array(key, shape=(n, width), chunks=(self.row_chunk, width), dtype="float32")
            arr.attrs.update(ARRAY_ATTRS)
        if self.var_names is not None:
            arr = root.create_array("X", shape=(n, len(self.var_names)), dtype="float32",
                                    chunks=(self.row_chunk, max(len(self.var_names), 1)))
            arr.attrs.update(ARRAY_ATTRS)

    def __enter__(self) -> Self:
        def create() -> str:
            self._ctx = atomic_output(self.out, self.overwrite)
            tmp = self._ctx.__enter__()
            try:
                self._create(tmp)
            except BaseException as exc:
                self._ctx.__exit__(type(exc), exc, exc.__traceback__)
                raise
            return str(tmp)

        root = zarr.open_group(on_rank_zero(create), mode="r+")
        self.arrays = {key: root["obsm"][key] for key in self.widths}
        if self.var_names is not None:
            self.arrays["X"] = root["X"]
        return self

    def write(self, rows: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Store ``values[key][i]`` at row ``rows[i]`` (rows of one block, increasing and contiguous).

        Only the rows inside :attr:`row_range` are written; under ``torch.distributed`` the other ranks write
        the rest, so a caller may hand every rank every row (or, cheaper, each rank its own rows only).
        """
        rows = np.asarray(rows)
        if rows.size == 0:
            return
        a, b = int(rows[0]), int(rows[-1]) + 1
        if b - a != rows.size or not np.all(np.diff(rows) == 1):
            raise ValueError("EmbeddingWriter.write expects a contiguous block of rows in order")
        lo, hi = max(a, self.row_range[0]), min(b, self.row_range[1])
        if hi <= lo:
            return
        for key, arr in self.arrays.items():
            arr[lo:hi] = np.asarray(values[key], dtype=np.float32)[lo - a:hi - a]
        self.filled += hi - lo

    def __exit__(self, exc_type, exc, tb) -> None:
        lo, hi = self.row_range
        short = None
        if exc is None and self.filled != hi - lo:
            short = RuntimeError(f"{self.out}: {self.filled} of the {hi - lo} rows {lo}..{hi} written")
        failed = any_rank(exc is not None or short is not None)

        def finish() -> None:
            if failed:  # remove the temporary (the sentinel error is swallowed by atomic_output's exit)
                abort = RuntimeError("aborted")
                self._ctx.__exit__(RuntimeError, abort, None)
            else:
                self._ctx.__exit__(None, None, None)

        on_rank_zero(finish)
        if short is not None:
            raise short
        if failed and exc is None:
            raise RuntimeError(f"{self.out}: another rank failed while writing its rows; nothing was written")


def write_soma_obsm(store: ModalityStore, key: str, values: np.ndarray) -> None:
    """Write ``values`` (cells in store order x width) into the SOMA measurement's ``obsm[key]``.

    An existing ``obsm[key]`` (e.g. from an earlier embedding of the same run) is replaced: unlinked, written
    afresh under a new directory, and its old directory removed. Rows are indexed by the cells' ``soma_joinid``
    as SOMA requires; the array spans every obs row, whichever cells a query selected.
    """
    import secrets
    import shutil

    import pyarrow as pa
    import tiledbsoma as soma

    joinids = store._joinids  # SomaStore: joinids of its cells in row order
    width = values.shape[1]
    old, n_obs = _unlink_obsm(store, key)
    n_total = max(n_obs, int(joinids.max()) + 1 if joinids.size else 0)
    with soma.Experiment.open(store.experiment, "w") as exp:
        meas = exp.ms[store.measurement]
        if "obsm" not in meas:
            meas.add_new_collection("obsm")
        obsm = meas["obsm"]
        try:  # tiledbsoma cannot reuse the URI of a replaced member (or one left by an interrupted write)
            if old is not None:
                raise soma.AlreadyExistsError(old)
            arr = obsm.add_new_sparse_ndarray(key, type=pa.float32(), shape=(n_total, width))
        except soma.AlreadyExistsError:
            arr = obsm.add_new_sparse_ndarray(key, uri=f"{key}-{secrets.token_hex(4)}", type=pa.float32(),
                                              shape=(n_total, width))
        for a in range(0, len(joinids), ROW_CHUNK):
            block = np.asarray(values[a : a + ROW_CHUNK], dtype=np.float32)
            i = np.repeat(joinids[a : a + ROW_CHUNK], width)
            j = np.tile(np.arange(width, dtype=np.int64), block.shape[0])
            arr.write(pa.Table.from_pydict({"soma_dim_0": i, "soma_dim_1": j, "soma_data": block.ravel()}))
    if old is not None and old.startswith("file://"):
        shutil.rmtree(old.removeprefix("file://"), ignore_errors=True)


def _unlink_obsm(store: ModalityStore, key: str) -> tuple[str | None, int]:
    """Remove ``obsm[key]`` from the measurement's collection: the URI of its array (None when absent) and the
    number of obs rows of the experiment."""
    import tiledbsoma as soma

    with soma.Experiment.open(store.experiment) as exp:
        n_obs = int(exp.obs.count)
        meas = exp.ms[store.measurement]
        if "obsm" not in meas or key not in meas["obsm"]:
            return None, n_obs
        uri = meas["obsm"][key].uri
    with soma.Experiment.open(store.experiment, "d") as exp:
        del exp.ms[store.measurement]["obsm"][key]
    return uri, n_obs
