"""10x Genomics matrices: a ``filtered_feature_bc_matrix`` folder (Matrix Market) or a feature-barcode ``.h5``.

Both hold features x barcodes with the non-zeros grouped by barcode, so cells can be read in row chunks: the
``.h5`` through its column pointer, the ``.mtx`` by parsing the coordinate list in blocks as it advances. One
source is made per feature type (``Gene Expression`` -> ``rna``, ``Antibody Capture`` -> ``adt``, ``Peaks`` ->
``atac``).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...errors import InputError
from ..source import Kind
from .h5 import csr_rows, open_h5, strings

FEATURE_TYPE_MODALITY = {"Gene Expression": "rna", "Antibody Capture": "adt", "Peaks": "atac"}
#: Matrix Market entries parsed per block.
MTX_PARSE_ROWS = 1 << 20

ChunkReader = Callable[[int], Iterator[tuple[int, sp.csr_matrix]]]


def modality_for_feature_type(feature_type: str) -> str:
    """Modality name of a 10x feature type (``Gene Expression`` -> ``rna``; unknown types lower-cased, ``_`` for spaces)."""
    return FEATURE_TYPE_MODALITY.get(feature_type, feature_type.strip().lower().replace(" ", "_"))


class TenxSource:
    """One feature type of a 10x matrix, read in row (cell) chunks.

    Built by :func:`tenx_sources`; ``obs`` holds the barcodes, ``var`` the unique feature names with ``gene_ids``
    and ``feature_types`` columns.
    """

    sparse = True

    def __init__(self, name: str, modality: str, obs: pd.DataFrame, var: pd.DataFrame, columns: np.ndarray, n_features: int, reader: ChunkReader, kind: Kind | None) -> None:
        self.name, self.modality, self.obs, self.var, self.kind = name, modality, obs, var, kind
        self._columns = None if len(columns) == n_features else columns
        self._reader = reader

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start_row, csr)`` in row order, at most ``chunk_rows`` cells each, this feature type's columns only."""
        for start, X in self._reader(chunk_rows):
            yield start, X if self._columns is None else X[:, self._columns]


def _split(name: str, barcodes: np.ndarray, features: pd.DataFrame, reader: ChunkReader, kind: Kind | None) -> list[TenxSource]:
    """One source per feature type, in order of first appearance."""
    obs = pd.DataFrame(index=pd.Index(barcodes, dtype=str))
    out = []
    for ftype in pd.unique(features["feature_type"]):
        cols = np.flatnonzero(features["feature_type"].to_numpy() == ftype)
        sub = features.iloc[cols]
        var = pd.DataFrame(
            {"gene_ids": sub["id"].to_numpy(), "feature_types": sub["feature_type"].to_numpy()},
            index=ad.utils.make_index_unique(pd.Index(sub["name"].to_numpy(), dtype=str)),
        )
        out.append(TenxSource(name, modality_for_feature_type(ftype), obs, var, cols, len(features), reader, kind))
    return out


# --- 10x .h5 ---------------------------------------------------------------------------------------------------


def _h5_chunks(path: Path, group: str, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    with open_h5(path) as f:
        g = f[group]
        n_features = int(g["shape"][0])
        ip = g["indptr"][:].astype(np.int64)
        for start in range(0, len(ip) - 1, chunk_rows):
            yield start, csr_rows(g["data"], g["indices"], ip, [(start, min(start + chunk_rows, len(ip) - 1))], n_features)


def _tenx_h5(path: Path, kind: Kind | None) -> list[TenxSource]:
    with open_h5(path) as f:
        if "matrix" in f:  # Cell Ranger >= 3
            group = "matrix"
            g = f[group]
            if "features" not in g:
                raise InputError(path, "matrix/features", "missing", "pass an unmodified Cell Ranger feature-barcode .h5")
            fg = g["features"]
            ids, names = strings(fg["id"]), strings(fg["name"])
            types = strings(fg["feature_type"]) if "feature_type" in fg else np.full(len(ids), "Gene Expression", dtype=object)
        else:  # Cell Ranger 2: one group per genome with genes / gene_names
            genomes = [k for k in f if isinstance(f[k], h5py.Group) and "genes" in f[k]]
            if len(genomes) != 1:
                raise InputError(
                    path, "matrix", "not a 10x feature-barcode matrix (no 'matrix' group, and not exactly one Cell Ranger 2 genome group)",
                    "pass the filtered_feature_bc_matrix.h5 written by Cell Ranger",
                )
            group = genomes[0]
            g = f[group]
            ids, names = strings(g["genes"]), strings(g["gene_names"])
            types = np.full(len(ids), "Gene Expression", dtype=object)
        for key in ("data", "indices", "indptr", "shape", "barcodes"):
            if key not in g:
                raise InputError(path, f"{group}/{key}", "missing", "pass an unmodified Cell Ranger feature-barcode .h5")
        n_features, n_barcodes = (int(x) for x in g["shape"][:2])
        barcodes = strings(g["barcodes"])
        if len(ids) != n_features or len(barcodes) != n_barcodes or g["indptr"].shape[0] != n_barcodes + 1:
            raise InputError(
                path, f"{group}/shape", f"shape {n_features} x {n_barcodes} disagrees with {len(ids)} features, {len(barcodes)} barcodes, "
                f"{g['indptr'].shape[0]} pointers", "the file is inconsistent: export it again from Cell Ranger",
            )
    features = pd.DataFrame({"id": ids, "name": names, "feature_type": types})
    return _split(str(path), barcodes, features, lambda rows: _h5_chunks(path, group, rows), kind)


# --- Matrix Market folder --------------------------------------------------------------------------------------


def _find(folder: Path, *stems: str) -> Path:
    for stem in stems:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
    raise InputError(folder, stems[0], f"no {' or '.join(stems)} (optionally .gz) in the folder", "pass a 10x filtered_feature_bc_matrix folder")


def _open_text(path: Path) -> IO[str]:
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)  # noqa: SIM115 (closed by the caller)


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, compression="infer")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, "file", f"cannot be read as a tab-separated table ({exc})", "pass the 10x file as written by Cell Ranger") from exc


def _mtx_header(fh: IO[str], path: Path) -> tuple[int, int, int, str]:
    """Read the banner, comments and size line; return ``(n_rows, n_cols, nnz, field)``."""
    banner = fh.readline().lower().split()
    if len(banner) < 5 or banner[0] != "%%matrixmarket" or banner[1:3] != ["matrix", "coordinate"]:
        raise InputError(path, "header", "not a Matrix Market coordinate file", "pass the matrix.mtx(.gz) written by Cell Ranger")
    if banner[3] not in ("integer", "real", "pattern") or banner[4] != "general":
        raise InputError(path, "header", f"unsupported Matrix Market field/symmetry {banner[3]}/{banner[4]}", "write a general integer or real matrix")
    line = fh.readline()
    while line.startswith("%"):
        line = fh.readline()
    try:
        n_rows, n_cols, nnz = (int(x) for x in line.split())
    except ValueError as exc:
        raise InputError(path, "size line", f"expected 'rows cols entries', found {line.strip()!r}", "pass an unmodified matrix.mtx") from exc
    return n_rows, n_cols, nnz, banner[3]


def _mtx_entries(fh: IO[str], path: Path, field: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Blocks of 0-based ``(feature, barcode, value)`` entries, parsed :data:`MTX_PARSE_ROWS` lines at a time."""
    names = ["i", "j"] if field == "pattern" else ["i", "j", "v"]
    reader = pd.read_csv(fh, sep=r"\s+", header=None, names=names, usecols=range(len(names)), chunksize=MTX_PARSE_ROWS)
    while True:
        try:
            block = next(reader)
            i = block["i"].to_numpy(np.int64) - 1
            j = block["j"].to_numpy(np.int64) - 1
            v = block["v"].to_numpy(np.float32) if field != "pattern" else np.ones(len(i), np.float32)
        except StopIteration:
            return
        except (pd.errors.ParserError, ValueError) as exc:
            raise InputError(path, "entries", f"a malformed line ({exc})", "pass an unmodified matrix.mtx") from exc
        yield i, j, v


def _mtx_chunks(path: Path, n_features: int, n_barcodes: int, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Cells in row chunks from a features x barcodes coordinate list sorted by barcode."""

    def emit(stop: int) -> tuple[int, sp.csr_matrix]:
        """Entries buffered for cells [start, stop): how many, and the CSR rows."""
        k = int(np.searchsorted(buf_j, stop))
        return k, sp.csr_matrix((buf_v[:k], (buf_j[:k] - start, buf_i[:k])), shape=(stop - start, n_features))

    with _open_text(path) as fh:
        _, _, nnz, field = _mtx_header(fh, path)
        buf_j, buf_i, buf_v = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        start, seen, last = 0, 0, -1
        for i, j, v in _mtx_entries(fh, path, field):
            if len(i) and (i.min() < 0 or i.max() >= n_features or j.min() < 0 or j.max() >= n_barcodes):
                raise InputError(path, "entries", f"an index outside the {n_features} x {n_barcodes} matrix after entry {seen}", "pass an unmodified matrix.mtx")
            back = np.flatnonzero(np.diff(np.concatenate([[last], j])) < 0)
            if back.size:
                raise InputError(
                    path, "entries", f"entries are not sorted by barcode (column): entry {seen + int(back[0]) + 1} goes back to an earlier barcode",
                    "sort the coordinate list by its second column (Cell Ranger writes it that way), or convert via scanpy.read_10x_mtx and an .h5ad",
                )
            seen += len(i)
            last = int(j[-1]) if len(j) else last
            buf_j, buf_i, buf_v = np.concatenate([buf_j, j]), np.concatenate([buf_i, i]), np.concatenate([buf_v, v])
            while last >= start + chunk_rows:
                k, X = emit(start + chunk_rows)
                yield start, X
                buf_j, buf_i, buf_v = buf_j[k:], buf_i[k:], buf_v[k:]
                start += chunk_rows
        if seen != nnz:
            raise InputError(path, "entries", f"the header announces {nnz} entries but the file has {seen}", "the file is truncated or edited: export it again")
        while start < n_barcodes:
            k, X = emit(min(start + chunk_rows, n_barcodes))
            yield start, X
            buf_j, buf_i, buf_v = buf_j[k:], buf_i[k:], buf_v[k:]
            start += X.shape[0]


def _tenx_mtx(folder: Path, kind: Kind | None) -> list[TenxSource]:
    mtx = _find(folder, "matrix.mtx")
    feats = _read_tsv(_find(folder, "features.tsv", "genes.tsv"))
    barcodes = _read_tsv(_find(folder, "barcodes.tsv"))[0].to_numpy(dtype=object)
    features = pd.DataFrame({
        "id": feats[0].to_numpy(dtype=object),
        "name": feats[1 if feats.shape[1] > 1 else 0].to_numpy(dtype=object),
        "feature_type": feats[2].to_numpy(dtype=object) if feats.shape[1] > 2 else "Gene Expression",
    })
    with _open_text(mtx) as fh:
        try:
            n_rows, n_cols, _, _ = _mtx_header(fh, mtx)
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(mtx, "file", f"cannot be read ({exc})", "pass the matrix.mtx(.gz) written by Cell Ranger") from exc
    if (n_rows, n_cols) != (len(features), len(barcodes)):
        raise InputError(
            mtx, "size line", f"{n_rows} x {n_cols} matrix but {len(features)} features and {len(barcodes)} barcodes",
            "the matrix must be features x barcodes, with the features and barcodes files from the same run",
        )
    return _split(str(folder), barcodes, features, lambda rows: _mtx_chunks(mtx, n_rows, n_cols, rows), kind)


def tenx_sources(path: str | os.PathLike, kind: Kind | None = "counts") -> list[TenxSource]:
    """Sources for a 10x ``filtered_feature_bc_matrix`` folder or feature-barcode ``.h5``, one per feature type.

    Parameters
    ----------
    path
        The folder (``matrix.mtx``, ``features.tsv`` or ``genes.tsv``, ``barcodes.tsv``; each plain or ``.gz``)
        or the ``.h5`` file.
    kind
        Kind of every matrix (10x matrices hold UMI counts).

    Returns
    -------
    list[TenxSource]
        One source per feature type, in order of first appearance; cells keep the barcodes as ids.
    """
    path = Path(path)
    return _tenx_mtx(path, kind) if path.is_dir() else _tenx_h5(path, kind)
