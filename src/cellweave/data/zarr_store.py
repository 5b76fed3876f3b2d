"""Zarr v3 modality stores in the AnnData on-disk layout.

Written chunk by chunk: CSR ``data``/``indices`` arrays (or a dense 2-D ``X``) are sharded zarr v3 arrays,
appended in whole shards so that no shard is rewritten. ``anndata.read_zarr`` opens the result as it is.
Reading fetches the byte ranges of many row ranges concurrently through zarr's async API.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
import zarr.api.asynchronous as zasync
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.core.sync import sync

from ..errors import InputError
from .kind import KIND_SAMPLE, infer_kind
from .source import Kind, Matrix
from .store import ModalityStore, Ranges, coalesce_ranges

INNER_CHUNK_ELEMS = 1 << 16
SHARD_ELEMS = 1 << 22
_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)


OBS_CHUNK_ROWS = 4096


def write_anndata_elem(group: zarr.Group, key: str, value, chunk_rows: int | None = None) -> None:
    """Write one AnnData element (obs, var, a dict ...) unsharded.

    ``chunk_rows`` chunks every column (obs: :data:`OBS_CHUNK_ROWS`): the stream reads the cell ids of a few
    hundred scattered rows at a time, and each read decodes whole chunks (with anndata's default of 250,000
    strings per chunk, reading the ids cost more than reading the counts).
    """
    kwargs = {"shards": None} | ({"chunks": (int(chunk_rows),)} if chunk_rows else {})
    ad.io.write_elem(group, key, value, dataset_kwargs=kwargs)


def _checked_indptr(path: str, indptr: np.ndarray, n_obs: int, nnz: int) -> np.ndarray:
    """CSR row offsets that can be trusted to slice ``data`` (a missing chunk reads as zeros, which would make
    scipy index out of bounds); the full per-chunk check is :func:`cellweave.data.check.scan_store`."""
    ptr = np.asarray(indptr, dtype=np.int64)
    if len(ptr) != n_obs + 1 or (ptr.size and (ptr[0] != 0 or ptr[-1] != nnz or (np.diff(ptr) < 0).any())):
        from .check import REWRITE_FIX

        raise InputError(f"{path}/X/indptr", "X/indptr", f"row offsets are damaged (they must rise from 0 to {nnz} over "
                         f"{n_obs + 1} entries)", REWRITE_FIX)
    return ptr


class ZarrWriter:
    """Append matrix rows to a new AnnData-layout Zarr v3 store.

    Parameters
    ----------
    path
        Directory to create (normally a temporary name; see :func:`~cellweave.data.atomic.atomic_output`).
    n_vars
        Number of features.
    sparse
        CSR (``True``) or dense rows.
    dtype
        Value dtype on disk.
    """

    def __init__(self, path: str | os.PathLike, n_vars: int, sparse: bool, dtype: np.dtype = np.float32) -> None:
        self.path = Path(path)
        self.n_vars = n_vars
        self.sparse = sparse
        self.dtype = np.dtype(dtype)
        self.root = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        self.root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        self.n_obs = 0
        self._pending: list[Matrix] = []
        self._pending_size = 0
        if sparse:
            self.X = self.root.create_group("X")
            self._data = self._create_1d("data", self.dtype)
            self._indices = self._create_1d("indices", np.int32)
            self._indptr = [np.zeros(1, dtype=np.int64)]
            self._nnz_written = 0
        else:
            rows_chunk = max(1, INNER_CHUNK_ELEMS // max(n_vars, 1))
            rows_shard = rows_chunk * max(1, SHARD_ELEMS // (rows_chunk * max(n_vars, 1)))
            self._dense = self.root.create_array(
                "X", shape=(0, n_vars), dtype=self.dtype, chunks=(rows_chunk, n_vars), shards=(rows_shard, n_vars),
                compressors=_COMPRESSOR, fill_value=0,
            )
            self._dense.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})

    def _create_1d(self, name: str, dtype) -> zarr.Array:
        return self.X.create_array(
            name, shape=(0,), dtype=dtype, chunks=(INNER_CHUNK_ELEMS,), shards=(SHARD_ELEMS,), compressors=_COMPRESSOR, fill_value=0
        )

    @property
    def _unit(self) -> int:
        """Elements (nnz, or rows for dense) in one shard: writes go in whole shards."""
        return SHARD_ELEMS if self.sparse else self._dense.shards[0]

    def append(self, X: Matrix) -> None:
        """Append rows (CSR or dense, with ``n_vars`` columns)."""
        if X.shape[1] != self.n_vars:
            raise ValueError(f"chunk has {X.shape[1]} columns, store has {self.n_vars}")
        if self.sparse:
            X = sp.csr_matrix(X)
            X.sort_indices()
            self._indptr.append(X.indptr[1:].astype(np.int64) + self._indptr_total())
            self._pending.append(X)
            self._pending_size += X.nnz
        else:
            X = np.asarray(X, dtype=self.dtype)
            self._pending.append(X)
            self._pending_size += X.shape[0]
        self.n_obs += X.shape[0]
        if self._pending_size >= self._unit:
            self._flush(final=False)

    def _indptr_total(self) -> int:
        return int(self._indptr[-1][-1])

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        if self.sparse:
            data = np.concatenate([m.data.astype(self.dtype, copy=False) for m in self._pending])
            indices = np.concatenate([m.indices.astype(np.int32, copy=False) for m in self._pending])
            n = len(data) if final else (len(data) // SHARD_ELEMS) * SHARD_ELEMS
            start = self._nnz_written
            for arr, values in ((self._data, data), (self._indices, indices)):
                arr.resize((start + n,))
                if n:
                    arr[start : start + n] = values[:n]
            self._nnz_written += n
            rest = sp.csr_matrix((data[n:], indices[n:], np.array([0, len(data) - n])), shape=(1, self.n_vars))
            self._pending = [rest] if rest.nnz else []
            self._pending_size = rest.nnz
        else:
            block = np.concatenate(self._pending)
            unit = self._unit
            n = len(block) if final else (len(block) // unit) * unit
            start = self._dense.shape[0]
            self._dense.resize((start + n, self.n_vars))
            if n:
                self._dense[start : start + n] = block[:n]
            self._pending = [block[n:]] if len(block) > n else []
            self._pending_size = len(block) - n

    def close(self, obs: pd.DataFrame, var: pd.DataFrame, modality: str, kind: Kind) -> None:
        """Flush what is buffered and write ``obs``, ``var`` and the cellweave metadata."""
        self._flush(final=True)
        if len(obs) != self.n_obs:
            raise ValueError(f"obs has {len(obs)} rows but {self.n_obs} matrix rows were written")
        if self.sparse:
            indptr = np.concatenate(self._indptr)
            self.X.create_array("indptr", data=indptr, chunks=(min(len(indptr), 1 << 20),), compressors=_COMPRESSOR)
            self.X.attrs.update(
                {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [self.n_obs, self.n_vars]}
            )
        write_anndata_elem(self.root, "obs", obs, chunk_rows=OBS_CHUNK_ROWS)
        write_anndata_elem(self.root, "var", var)
        write_anndata_elem(self.root, "uns", {"cellweave": {"modality": modality, "kind": kind}})
        for key in ("obsm", "varm", "obsp", "varp", "layers"):
            write_anndata_elem(self.root, key, {})


class ZarrStore(ModalityStore):
    """A modality in an AnnData-layout Zarr store (zarr v2 or v3; CSR or dense ``X``).

    Parameters
    ----------
    path
        The ``.zarr`` directory.
    modality
        Name to use; defaults to the one recorded at conversion, else the directory stem.
    """

    def __init__(self, path: str | os.PathLike, modality: str | None = None) -> None:
        self.path = str(path)
        try:
            root = zarr.open_group(self.path, mode="r")
        except Exception as exc:  # zarr raises several types for a missing/invalid store
            raise InputError(self.path, "store", f"not a readable Zarr store ({exc.__class__.__name__}: {exc})", "pass a .zarr directory written by `cellweave convert` or anndata.write_zarr") from exc
        if "X" not in root:
            raise InputError(self.path, "X", "the store has no X", "write the matrix as X (AnnData layout)")
        meta = ad.io.read_elem(root["uns"]).get("cellweave", {}) if "uns" in root else {}
        self.modality = modality or meta.get("modality") or Path(self.path).stem
        self.var_names = pd.Index(ad.io.read_elem(root["var"]).index.astype(str))
        x = root["X"]
        enc = x.attrs.get("encoding-type", "array")
        if enc == "csr_matrix":
            self.sparse = True
            self.n_obs = int(x.attrs["shape"][0])
        elif enc == "array" and isinstance(x, zarr.Array):
            self.sparse = False
            self.n_obs = int(x.shape[0])
        else:
            raise InputError(self.path, "X", f"unsupported encoding {enc!r}", "store X as CSR or dense rows: re-run `cellweave convert`")
        self._obs_group = root["obs"]
        self._index_key = self._obs_group.attrs["_index"]
        self._obs_order = list(self._obs_group.attrs.get("column-order", []))
        self.kind = meta.get("kind") or self._infer_kind(x)
        self._pid: int | None = None

    # arrays are opened lazily, once per process: DataLoader workers must not share zarr's event loop
    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        path = self.path
        if self.sparse:
            self._data = sync(zasync.open_array(store=path, path="X/data", mode="r"))
            self._indices = sync(zasync.open_array(store=path, path="X/indices", mode="r"))
            self._indptr = _checked_indptr(path, zarr.open_array(path, path="X/indptr", mode="r")[:], self.n_obs,
                                           self._data.shape[0])
        else:
            self._dense = sync(zasync.open_array(store=path, path="X", mode="r"))
        self._names = sync(zasync.open_array(store=path, path=f"obs/{self._index_key}", mode="r"))
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        """Picklable for spawn/forkserver DataLoader workers: open handles are not sent, each process reopens."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_data", "_indices", "_indptr", "_dense", "_names", "_obs_group")}
        state["_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._obs_group = zarr.open_group(self.path, mode="r")["obs"]

    def _infer_kind(self, x) -> Kind:
        sample = x["data"][:KIND_SAMPLE] if self.sparse else np.asarray(x[: max(1, KIND_SAMPLE // max(1, self.n_vars))])
        return infer_kind(np.asarray(sample))

    @property
    def obs_keys(self) -> list[str]:
        return list(self._obs_order)

    def obs_column(self, key: str) -> pd.Series:
        if key not in self.obs_keys:
            return self.require_obs_key(key)
        values = ad.io.read_elem(self._obs_group[key])
        return pd.Series(values, name=key)

    @property
    def stats_dir(self) -> Path:
        return Path(self.path) / ".cellweave"

    @staticmethod
    async def _gather(arr, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
        return await asyncio.gather(*[arr.getitem(slice(a, b)) for a, b in ranges])

    def obs_names(self, ranges: Ranges) -> np.ndarray:
        self._open()
        ranges = coalesce_ranges(ranges)
        if not ranges:
            return np.zeros(0, dtype=object)
        parts = sync(self._gather(self._names, ranges))
        return np.concatenate([np.asarray(p, dtype=object) for p in parts])

    def read_X(self, ranges: Ranges) -> Matrix:
        self._open()
        ranges = coalesce_ranges(ranges)
        if not self.sparse:
            if not ranges:
                return np.zeros((0, self.n_vars), dtype=np.float32)
            return np.concatenate(sync(self._gather(self._dense, ranges)))
        ip = self._indptr
        spans = [(int(ip[a]), int(ip[b])) for a, b in ranges]
        nz = [(s, e) for s, e in spans if e > s]
        data_parts = sync(self._gather(self._data, nz)) if nz else []
        index_parts = sync(self._gather(self._indices, nz)) if nz else []
        data = np.concatenate(data_parts) if data_parts else np.zeros(0, np.float32)
        indices = np.concatenate(index_parts) if index_parts else np.zeros(0, np.int32)
        counts = np.concatenate([np.diff(ip[a : b + 1]) for a, b in ranges]) if ranges else np.zeros(0, np.int64)
        indptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return sp.csr_matrix((data, indices, indptr), shape=(len(counts), self.n_vars))
