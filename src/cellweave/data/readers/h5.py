"""AnnData groups inside HDF5: ``.h5ad`` files and the modalities of ``.h5mu`` files.

Metadata (``obs``, ``var``, ``uns`` entries) is read whole with :func:`anndata.io.read_elem`; the matrix is read
through h5py by row ranges. A CSR or dense matrix is sliced directly; a CSC matrix is turned into CSR rows by an
external counting sort (two passes over column blocks into a temporary on-disk CSR), so memory stays bounded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...errors import InputError
from ..kind import KIND_SAMPLE, infer_kind
from ..source import Kind, Matrix
from ..store import ModalityStore, Ranges, coalesce_ranges

#: Non-zeros read per column block when a CSC matrix is converted to CSR rows.
CSC_BLOCK_NNZ = 1 << 24

_CONVERT_FIX = "rewrite the matrix as CSR (adata.X = adata.X.tocsr(); adata.write_h5ad(...)) or as a dense array"


def open_h5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file read-only, or raise :class:`InputError` naming the file.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    h5py.File
        The open file (the caller closes it).
    """
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(
            path, "file", f"not a readable HDF5 file ({exc})", "check the path, and that the file was written completely"
        ) from exc


def _attr(node: h5py.HLObject, key: str) -> str | None:
    value = node.attrs.get(key)
    return value.decode() if isinstance(value, bytes) else (None if value is None else str(value))


def read_elem(source: str, field: str, node: h5py.HLObject):
    """Read one small AnnData element (obs, var, an uns entry), turning reader failures into :class:`InputError`."""
    try:
        return ad.io.read_elem(node)
    except Exception as exc:  # anndata raises several types (IORegistryError, KeyError ...) for unreadable elements
        raise InputError(
            source, field, f"anndata cannot read this element ({exc.__class__.__name__}: {exc})",
            "open and re-save the file with a current anndata (anndata.read_h5ad(...).write_h5ad(...))",
        ) from exc


def strings(ds: h5py.Dataset, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``[start, stop)`` of a string dataset (fixed or variable length) as a ``str`` object array."""
    stop = ds.shape[0] if stop is None else stop
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[start:stop], dtype=object)
    return np.asarray(ds[start:stop]).astype(str).astype(object)


def csr_rows(data: h5py.Dataset, indices: h5py.Dataset, indptr: np.ndarray, ranges: Ranges, n_cols: int) -> sp.csr_matrix:
    """CSR rows of the ``[start, stop)`` ranges of an on-disk CSR matrix, concatenated in order.

    Parameters
    ----------
    data, indices
        The non-zero values and their column indices.
    indptr
        Row pointer, already in memory.
    ranges
        Row ranges to read.
    n_cols
        Number of columns.
    """
    spans = [(int(indptr[a]), int(indptr[b])) for a, b in ranges]
    vals = [data[s:e] for s, e in spans if e > s]
    cols = [indices[s:e] for s, e in spans if e > s]
    counts = [np.diff(indptr[a : b + 1]) for a, b in ranges]
    ip = np.zeros(sum(len(c) for c in counts) + 1, dtype=np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=ip[1:])
    return sp.csr_matrix(
        (np.concatenate(vals) if vals else np.zeros(0, data.dtype), np.concatenate(cols) if cols else np.zeros(0, np.int32), ip),
        shape=(len(ip) - 1, n_cols),
    )


class H5Matrix:
    """Row access to one matrix element of an AnnData group: a dense dataset, a CSR/CSC group or a numeric dataframe.

    Parameters
    ----------
    source
        File name for messages.
    field
        Element name for messages (``X``, ``layers['counts']``, ``obsm['protein_expression']``).
    node
        The h5py dataset or group (its file must stay open while this object is used).
    """

    def __init__(self, source: str, field: str, node: h5py.HLObject) -> None:
        self.source, self.field, self.node = source, field, node
        self.columns: list[str] | None = None
        self._indptr: np.ndarray | None = None
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2 or node.dtype.kind not in "biuf":
                raise InputError(source, field, f"expected a 2-D numeric array, found shape {node.shape} dtype {node.dtype}", "store a numeric cells x features matrix")
            self.format = "dense"
            self.shape = (int(node.shape[0]), int(node.shape[1]))
            return
        enc = _attr(node, "encoding-type") or _attr(node, "h5sparse_format")
        if enc in ("csr_matrix", "csr", "csc_matrix", "csc"):
            self.format = enc[:3]
            shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
            self.shape = (int(shape[0]), int(shape[1]))
        elif enc == "dataframe":
            self.format = "dataframe"
            self.columns = [str(c) for c in node.attrs.get("column-order", [])]
            for col in self.columns:
                if not isinstance(node[col], h5py.Dataset) or node[col].dtype.kind not in "biuf":
                    raise InputError(source, f"{field}['{col}']", "a non-numeric column in a matrix-like dataframe", "keep only numeric columns in this element")
            self.shape = (int(node[_attr(node, "_index")].shape[0]), len(self.columns))
        else:
            raise InputError(source, field, f"unsupported encoding {enc!r}", "store the matrix as a dense array, CSR or CSC (anndata's own encodings)")

    @property
    def sparse(self) -> bool:
        """Whether rows come back as CSR."""
        return self.format in ("csr", "csc")

    def indptr(self) -> np.ndarray:
        """The sparse pointer array (read once)."""
        if self._indptr is None:
            self._indptr = self.node["indptr"][:].astype(np.int64)
        return self._indptr

    def read_ranges(self, ranges: Ranges) -> Matrix:
        """Rows of the given ``[start, stop)`` ranges, concatenated (CSR, dense or numeric dataframe only)."""
        ranges = coalesce_ranges(ranges)
        if self.format == "csr":
            return csr_rows(self.node["data"], self.node["indices"], self.indptr(), ranges, self.shape[1])
        if self.format == "csc":
            raise InputError(self.source, self.field, "a CSC matrix cannot be read by row ranges without a full pass", _CONVERT_FIX)
        if self.format == "dense":
            parts = [self.node[a:b] for a, b in ranges]
            return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), self.node.dtype)
        cols = [self.node[c] for c in self.columns]
        parts = [np.column_stack([c[a:b] for c in cols]) if cols else np.zeros((b - a, 0)) for a, b in ranges]
        return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]))

    def iter_rows(self, chunk_rows: int) -> Iterator[tuple[int, Matrix]]:
        """Yield ``(start, rows)`` in row order, ``chunk_rows`` at a time (CSC comes out as CSR)."""
        if self.format == "csc":
            yield from self._csc_rows(chunk_rows)
            return
        for start in range(0, self.shape[0], chunk_rows):
            yield start, self.read_ranges([(start, min(start + chunk_rows, self.shape[0]))])

    def _column_blocks(self) -> list[tuple[int, int]]:
        """Column ranges holding about :data:`CSC_BLOCK_NNZ` non-zeros each (at least one column each)."""
        ip = self.indptr()
        n, out, a = len(ip) - 1, [], 0
        while a < n:
            b = int(np.searchsorted(ip, ip[a] + CSC_BLOCK_NNZ, side="right")) - 1
            b = min(max(b, a + 1), n)
            out.append((a, b))
            a = b
        return out

    def _csc_rows(self, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        n_obs, n_vars = self.shape
        ip = self.indptr()
        data_ds, idx_ds = self.node["data"], self.node["indices"]
        blocks = self._column_blocks()
        counts = np.zeros(n_obs, dtype=np.int64)
        for c0, c1 in blocks:
            counts += np.bincount(idx_ds[ip[c0] : ip[c1]], minlength=n_obs)
        row_ptr = np.zeros(n_obs + 1, dtype=np.int64)
        np.cumsum(counts, out=row_ptr[1:])
        fill = row_ptr[:-1].copy()
        nnz = int(row_ptr[-1])
        with tempfile.TemporaryDirectory(prefix="cellweave-csc-") as tmp:
            data = np.lib.format.open_memmap(Path(tmp) / "data.npy", mode="w+", dtype=data_ds.dtype, shape=(max(nnz, 1),))
            cols = np.lib.format.open_memmap(Path(tmp) / "indices.npy", mode="w+", dtype=np.int32, shape=(max(nnz, 1),))
            for c0, c1 in blocks:
                s, e = int(ip[c0]), int(ip[c1])
                rows = idx_ds[s:e].astype(np.int64)
                col = np.repeat(np.arange(c0, c1, dtype=np.int32), np.diff(ip[c0 : c1 + 1]))
                order = np.argsort(rows, kind="stable")  # stable: columns stay ascending within each row
                r = rows[order]
                rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
                pos = fill[r] + rank
                data[pos] = data_ds[s:e][order]
                cols[pos] = col[order]
                uniq, cnt = np.unique(r, return_counts=True)
                fill[uniq] += cnt
            for start in range(0, n_obs, chunk_rows):
                stop = min(start + chunk_rows, n_obs)
                s, e = int(row_ptr[start]), int(row_ptr[stop])
                yield start, sp.csr_matrix(
                    (np.array(data[s:e]), np.array(cols[s:e]), row_ptr[start : stop + 1] - s), shape=(stop - start, n_vars)
                )
            del data, cols


def cellweave_meta(group: h5py.Group) -> dict:
    """``uns['cellweave']`` of an AnnData group (modality and kind recorded at conversion), or ``{}``."""
    node = group.get("uns/cellweave")
    return dict(ad.io.read_elem(node)) if isinstance(node, h5py.Group) else {}


def _obs_table(source: str, group: h5py.Group) -> pd.DataFrame:
    if "obs" not in group:
        raise InputError(source, "obs", "the AnnData group has no obs", "write the file with anndata (it always stores obs)")
    obs = read_elem(source, "obs", group["obs"])
    obs.index = obs.index.astype(str)
    return obs


class H5adSource:
    """A modality stored as an AnnData group in HDF5 (``.h5ad``, or ``/mod/<name>`` of an ``.h5mu``), read in row chunks.

    Parameters
    ----------
    path
        The ``.h5ad`` (or ``.h5mu``) file.
    modality
        Modality name; defaults to the one recorded at conversion, else ``obsm_key``, else the file stem.
    kind
        ``"counts"``, ``"normalized"`` or ``None`` (recorded kind, else inferred by the writer).
    layer
        Take the matrix from ``layers[layer]`` instead of ``X``.
    obsm_key
        Take the matrix from ``obsm[obsm_key]`` (e.g. CITE-seq proteins). Features are named by ``names_key``,
        else by the columns of a dataframe, else ``<obsm_key>_<i>``.
    names_key
        ``uns`` entry holding the feature names of an ``obsm`` matrix (e.g. ``"protein_names"``).
    group
        HDF5 path of the AnnData group (``"/"`` for ``.h5ad``; ``"/mod/rna"`` for a MuData modality).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        modality: str | None = None,
        kind: Kind | None = None,
        *,
        layer: str | None = None,
        obsm_key: str | None = None,
        names_key: str | None = None,
        group: str = "/",
    ) -> None:
        self.path = Path(path)
        self.name = str(path) if group == "/" else f"{path}:{group}"
        if layer is not None and obsm_key is not None:
            raise InputError(self.name, "layer/obsm_key", "both a layer and an obsm key were given", "pass only one of them")
        if names_key is not None and obsm_key is None:
            raise InputError(self.name, "names_key", "feature names from uns only apply to an obsm matrix", "pass obsm_key as well, or drop names_key")
        if layer is not None:
            self._key, self._field, container = f"layers/{layer}", f"layers['{layer}']", "layers"
        elif obsm_key is not None:
            self._key, self._field, container = f"obsm/{obsm_key}", f"obsm['{obsm_key}']", "obsm"
        else:
            self._key, self._field, container = "X", "X", None
        self._group = group
        with open_h5(self.path) as f:
            if group not in f:
                raise InputError(self.path, group, "no such group in the file", "check the modality name")
            g = f[group]
            if self._key not in g:
                have = sorted(g[container].keys()) if container and container in g else []
                listing = f" (the file has: {', '.join(have) or 'none'})" if container else ""
                raise InputError(self.name, self._field, f"no such matrix{listing}", "pass an existing key, or store the matrix there")
            m = H5Matrix(self.name, self._field, g[self._key])
            self.obs = _obs_table(self.name, g)
            if obsm_key is None:
                var = read_elem(self.name, "var", g["var"]) if "var" in g else pd.DataFrame(index=[str(i) for i in range(m.shape[1])])
                var.index = var.index.astype(str)
            else:
                var = pd.DataFrame(index=pd.Index(self._obsm_names(g, m, obsm_key, names_key), dtype=str))
            meta = cellweave_meta(g)
        if m.shape != (len(self.obs), len(var)):
            raise InputError(
                self.name, self._field, f"matrix shape {m.shape} does not match {len(self.obs)} obs x {len(var)} features",
                "check the file: the matrix, obs and feature names must agree",
            )
        self.var = var
        self.sparse = m.sparse
        self.modality = modality or meta.get("modality") or obsm_key or self.path.stem
        self.kind: Kind | None = kind or meta.get("kind")

    def _obsm_names(self, g: h5py.Group, m: H5Matrix, obsm_key: str, names_key: str | None) -> list[str]:
        if names_key is None:
            return m.columns if m.columns is not None else [f"{obsm_key}_{i}" for i in range(m.shape[1])]
        node = g.get(f"uns/{names_key}")
        if node is None:
            raise InputError(self.name, f"uns['{names_key}']", "no such entry for the feature names", "pass the uns key that holds the names, or none to generate them")
        names = np.asarray(read_elem(self.name, f"uns['{names_key}']", node)).astype(str).ravel().tolist()
        if len(names) != m.shape[1]:
            raise InputError(
                self.name, f"uns['{names_key}']", f"{len(names)} names for {m.shape[1]} columns of {self._field}",
                "pass the uns key whose names match the obsm matrix",
            )
        return names

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, Matrix]]:
        """Yield ``(start_row, matrix)`` in row order, at most ``chunk_rows`` rows each (CSR or dense)."""
        with open_h5(self.path) as f:
            yield from H5Matrix(self.name, self._field, f[self._group][self._key]).iter_rows(chunk_rows)


def h5mu_sources(path: str | os.PathLike, kind: Kind | None = None) -> list[H5adSource]:
    """One source per modality (``/mod/<name>``) of a MuData ``.h5mu`` file, in the file's modality order.

    Parameters
    ----------
    path
        The ``.h5mu`` file.
    kind
        Kind for every modality, or ``None`` (recorded, else inferred).

    Returns
    -------
    list[H5adSource]
        The modalities, each named by its MuData key.
    """
    with open_h5(path) as f:
        if "mod" not in f or not len(f["mod"]):
            raise InputError(path, "mod", "no modalities in the file", "write the file with mudata (MuData.write_h5mu)")
        order = [str(m.decode() if isinstance(m, bytes) else m) for m in f["mod"].attrs.get("mod-order", [])]
        names = [m for m in order if m in f["mod"]] or sorted(f["mod"].keys())
    return [H5adSource(path, modality=name, kind=kind, group=f"/mod/{name}") for name in names]


class H5adStore(ModalityStore):
    """Read-only :class:`ModalityStore` over a backed ``.h5ad`` (or one modality of a ``.h5mu``) with a CSR or
    dense ``X``.

    The HDF5 file is opened lazily once per process, so the store can be used in DataLoader workers.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    modality
        Modality name; defaults to the one recorded at conversion, else the file stem.
    kind
        ``"counts"`` or ``"normalized"``; defaults to the recorded kind, else inferred from the first values.
    group
        The MuData modality of a ``.h5mu`` file (its ``/mod/<group>``); ``None`` for a ``.h5ad``. The store's
        ``path`` is then ``FILE.h5mu::<group>``.
    """

    def __init__(self, path: str | os.PathLike, modality: str | None = None, kind: Kind | None = None,
                 group: str | None = None) -> None:
        self.file = str(path)
        self.path = self.file if group is None else f"{self.file}::{group}"
        self._group = "/" if group is None else f"/mod/{group}"
        with open_h5(self.file) as root:
            if group is not None and self._group not in root:
                have = sorted(root["mod"].keys()) if "mod" in root else []
                raise InputError(self.file, f"mod/{group}", f"no such modality (the file has: {', '.join(have) or 'none'})",
                                 "pass FILE.h5mu::<one of those>")
            f = root[self._group]
            if "X" not in f:
                raise InputError(self.path, "X", "the file has no X", "store the matrix as X")
            m = H5Matrix(self.path, "X", f["X"])
            if m.format not in ("csr", "dense"):
                raise InputError(self.path, "X", f"a {m.format} X cannot be read by row ranges", _CONVERT_FIX + ", or convert it with `cellweave convert`")
            if "obs" not in f or "var" not in f:
                raise InputError(self.path, "obs/var", "the file has no obs or var", "write the file with anndata")
            self.var_names = pd.Index(read_elem(self.path, "var", f["var"]).index.astype(str))
            self._index_key = _attr(f["obs"], "_index") or "_index"
            self._obs_order = [str(c) for c in f["obs"].attrs.get("column-order", [])]
            meta = cellweave_meta(f)
            self.sparse = m.sparse
            self.n_obs = m.shape[0]
            self.modality = modality or group or meta.get("modality") or Path(self.file).stem
            self.kind = kind or meta.get("kind") or self._infer_kind(m)
        self._pid: int | None = None

    @staticmethod
    def _infer_kind(m: H5Matrix) -> Kind:
        if m.sparse:
            v = m.node["data"][:KIND_SAMPLE]
        else:
            v = m.node[: max(1, KIND_SAMPLE // max(1, m.shape[1]))]
        return infer_kind(np.asarray(v))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_file", "_X"):
            state.pop(key, None)
        state["_pid"] = None
        return state

    def _matrix(self) -> H5Matrix:
        if self._pid != os.getpid():
            self._file = open_h5(self.file)[self._group]
            self._X = H5Matrix(self.path, "X", self._file["X"])
            self._pid = os.getpid()
        return self._X

    @property
    def obs_keys(self) -> list[str]:
        return list(self._obs_order)

    def obs_column(self, key: str) -> pd.Series:
        if key not in self.obs_keys:
            return self.require_obs_key(key)
        self._matrix()
        return pd.Series(read_elem(self.path, f"obs['{key}']", self._file["obs"][key]), name=key)

    def obs_names(self, ranges: Ranges) -> np.ndarray:
        self._matrix()
        ds = self._file["obs"][self._index_key]
        parts = [strings(ds, a, b) for a, b in coalesce_ranges(ranges)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object)

    def read_X(self, ranges: Ranges) -> Matrix:
        return self._matrix().read_ranges(ranges)

    @property
    def stats_dir(self) -> Path:
        p = Path(self.file)
        side = p.parent / (p.name + ".cellweave")
        return side if self._group == "/" else side / self._group.rsplit("/", 1)[1]
