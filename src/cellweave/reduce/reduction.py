"""A fitted linear reduction (PCA or LSI): the per-cell input transform, the loadings, and their file format.

A :class:`Reduction` maps raw rows of a store to ``k`` components in two steps:

1. :class:`InputTransform` turns raw values into the matrix the reduction was fitted on, nonzeros only (zeros
   stay zeros, so sparse rows stay sparse): ``log1p(target_sum * x / library)`` (``"lognorm"``), the TF-IDF
   ``log1p(scale_factor * x / library * idf)`` (``"tfidf"``) or the values as they are (``"none"``), then,
   optionally, per-feature scaling ``clip((v - center) / sd, -max_value, max_value)`` (dense);
2. the projection ``(v - mean) @ components.T``.

``library`` is the cell's total over *all* the store's features (what the stream reports as
``CellBatch.library_size``), as ``normalize_total`` does before features are selected.

Saved as a directory written atomically (a temporary name, then a rename): ``arrays.npz`` (loadings, names,
statistics) and ``reduction.json`` (method, settings, sizes).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..data.atomic import atomic_output
from ..data.batch import CellBatch
from ..errors import InputError

ARRAYS = "arrays.npz"
META = "reduction.json"
FORMAT = 1
METHODS = ("pca", "lsi")
NORMALIZE = ("lognorm", "tfidf", "none")


@dataclass
class InputTransform:
    """What a reduction does to raw values before projecting them.

    Attributes
    ----------
    normalize
        ``"lognorm"``: ``log1p(target_sum * x / library)``; ``"tfidf"``: ``log1p(target_sum * x / library * idf)``;
        ``"none"``: raw values.
    target_sum
        ``normalize_total`` target (lognorm) or TF-IDF scale factor (tfidf).
    idf
        Inverse document frequency per feature, ``n_cells / n_cells_with_feature`` (tfidf only).
    center, sd, max_value
        Per-feature scaling after normalisation (``None``: no scaling).
    """

    normalize: str = "lognorm"
    target_sum: float | None = 1e4
    idf: np.ndarray | None = None
    center: np.ndarray | None = None
    sd: np.ndarray | None = None
    max_value: float | None = None

    @property
    def scaled(self) -> bool:
        return self.center is not None

    def apply(self, x: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Transform raw rows ``x`` (dense or sparse CSR, float) with per-cell totals ``library``.

        Returns a sparse CSR tensor when ``x`` is sparse and no scaling is done, else a dense tensor.
        """
        dtype, device = x.dtype, x.device
        lib = library.to(device=device, dtype=dtype)
        lib = torch.where(lib > 0, lib, torch.ones_like(lib))
        if x.layout == torch.sparse_csr:
            crow, col, values = x.crow_indices(), x.col_indices(), x.values()
            row = torch.repeat_interleave(torch.arange(x.shape[0], device=device), torch.diff(crow))
            values = self._values(values, lib[row], col)
            out = csr_tensor(crow, col, values, tuple(x.shape))
            if not self.scaled:
                return out
            x = out.to_dense()
        else:
            cols = torch.arange(x.shape[1], device=device).expand_as(x)
            x = self._values(x, lib.unsqueeze(1).expand_as(x), cols)
        if self.scaled:
            center = torch.as_tensor(self.center, dtype=dtype, device=device)
            sd = torch.as_tensor(self.sd, dtype=dtype, device=device)
            x = (x - center) / sd
            if self.max_value is not None:
                x = x.clamp(-self.max_value, self.max_value)
        return x

    def _values(self, v: torch.Tensor, lib: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        if self.normalize == "none":
            return v
        v = v / lib
        if self.normalize == "tfidf":
            v = v * torch.as_tensor(self.idf, dtype=v.dtype, device=v.device)[col]
        return torch.log1p(v * self.target_sum)


@dataclass
class Reduction:
    """A fitted PCA or LSI of one store (see the module docstring for the transform).

    Attributes
    ----------
    method
        ``"pca"`` or ``"lsi"``.
    var_names
        All features of the store the reduction was fitted on (raw rows may come with these columns).
    features
        The features reduced, in order (a subset of ``var_names``).
    input
        The transform of raw values.
    components
        Loadings ``(n_components, n_features)`` (rows: right singular vectors; the entry of largest magnitude
        of each row is positive).
    mean
        Per-feature centre of the transformed values (zeros for LSI, which is not centred).
    singular_values, explained_variance, explained_variance_ratio
        As in scikit-learn's ``PCA`` (variance with ddof=1) and ``TruncatedSVD`` (ddof=0).
    n_cells
        Cells the reduction was fitted on.
    skipped
        Leading components fitted and dropped (LSI's first component, which mostly follows sequencing depth).
    """

    method: str
    var_names: list[str]
    features: list[str]
    input: InputTransform
    components: np.ndarray
    mean: np.ndarray
    singular_values: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    n_cells: int
    skipped: int = 0

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.components.shape[1])

    def __repr__(self) -> str:
        return (f"Reduction({self.method}, {self.n_features} features -> {self.n_components} components, "
                f"{self.n_cells} cells)")

    # ---- transform ----------------------------------------------------------------------------------------
    def _columns(self, width: int) -> np.ndarray | None:
        """Positions of ``features`` among the given columns (``None``: the columns already are ``features``)."""
        if width == self.n_features:
            return None
        if width == len(self.var_names):
            index = {f: i for i, f in enumerate(self.var_names)}
            return np.array([index[f] for f in self.features], dtype=np.int64)
        raise InputError(f"{self.method} reduction", "X", f"{width} columns; expected the {self.n_features} reduced "
                         f"features or all {len(self.var_names)} features of the store it was fitted on",
                         "pass rows over reduction.features (or over the store's var_names)")

    def project(self, prepared: torch.Tensor) -> torch.Tensor:
        """``(v - mean) @ components.T`` for already transformed values ``v`` (dense or sparse CSR)."""
        dtype, device = prepared.dtype, prepared.device
        W = torch.as_tensor(self.components.T, dtype=dtype, device=device)
        offset = torch.as_tensor(self.mean @ self.components.T, dtype=dtype, device=device)
        return prepared @ W - offset

    def transform(self, x: torch.Tensor | np.ndarray | sp.spmatrix,
                  library_size: torch.Tensor | np.ndarray | None = None) -> torch.Tensor | np.ndarray:
        """Reduce raw rows to ``(n_cells, n_components)``.

        Parameters
        ----------
        x
            Raw values (counts for count stores), dense or sparse: columns are either ``features`` or all
            ``var_names`` of the store.
        library_size
            Per-cell total over all the store's features (default: the row sums of ``x``, which equal it
            when ``x`` holds all ``var_names``).

        Returns
        -------
        torch.Tensor or numpy.ndarray
            A float32 tensor on ``x``'s device for tensor input, else a float32 array.
        """
        as_numpy = not isinstance(x, torch.Tensor)
        t = _to_torch(x)
        if t.ndim != 2:
            raise InputError(f"{self.method} reduction", "X", f"expected a (cells, features) matrix, got shape {tuple(t.shape)}",
                             "pass a 2-D matrix")
        if library_size is None:
            library = _row_sums(t)
        else:
            library = torch.as_tensor(np.asarray(library_size) if not isinstance(library_size, torch.Tensor) else library_size)
            if library.shape != (t.shape[0],):
                raise InputError(f"{self.method} reduction", "library_size", f"{tuple(library.shape)} for {t.shape[0]} cells",
                                 "pass one total per cell")
        cols = self._columns(t.shape[1])
        if cols is not None:
            t = _select_columns(t, torch.as_tensor(cols, device=t.device))
        out = self.project(self.input.apply(t, library)).float()
        return out.cpu().numpy() if as_numpy else out

    def reduce_batch(self, batch: CellBatch, modality: str | None = None) -> CellBatch:
        """The reduced cells of a raw :class:`~cellweave.data.CellBatch` as a dense batch (same cells, same
        covariates, ``library_size`` kept); the batch must hold raw values of ``features``. Columns outside the
        batch's ``mask`` (features its store lacks) contribute nothing: their transformed value is the centre."""
        if batch.center is not None:
            raise InputError(f"{self.method} reduction", "batch", "the batch is scaled; reductions read raw values",
                             "stream the modality with Preprocess(normalize=False, features=reduction.features)")
        x = batch.sparse() if batch.is_sparse else batch.values
        if x.shape[1] != self.n_features:
            raise InputError(f"{self.method} reduction", "batch", f"{x.shape[1]} columns, the reduction reads {self.n_features}",
                             "stream the modality with features=reduction.features")
        v = self.input.apply(x.float(), batch.library_size)
        if batch.mask is not None:  # features the cells' store lacks (aligned to a run): centred to zero
            v = v.to_dense() if v.layout == torch.sparse_csr else v
            v = torch.where(batch.mask.to(v.device), v, torch.as_tensor(self.mean, dtype=v.dtype, device=v.device))
        z = self.project(v).float().contiguous()
        return replace(batch, modality=modality or batch.modality, values=z, crow_indices=None, col_indices=None,
                       n_vars=self.n_components, mask=None, center=None, scale=None, max_value=None)

    # ---- files --------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write to the directory ``path`` (``arrays.npz`` + ``reduction.json``), atomically."""
        arrays: dict[str, np.ndarray] = {
            "var_names": np.asarray(self.var_names, dtype=str), "features": np.asarray(self.features, dtype=str),
            "components": self.components, "mean": self.mean, "singular_values": self.singular_values,
            "explained_variance": self.explained_variance, "explained_variance_ratio": self.explained_variance_ratio}
        for key in ("idf", "center", "sd"):
            value = getattr(self.input, key)
            if value is not None:
                arrays[f"input_{key}"] = value
        meta: dict[str, Any] = {"format": FORMAT, "method": self.method, "n_cells": self.n_cells, "skipped": self.skipped,
                                "n_components": self.n_components, "n_features": self.n_features,
                                "input": {"normalize": self.input.normalize, "target_sum": self.input.target_sum,
                                          "max_value": self.input.max_value}}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with atomic_output(path, overwrite) as tmp:
            tmp.mkdir(parents=True)
            (tmp / ARRAYS).write_bytes(buf.getvalue())
            (tmp / META).write_text(json.dumps(meta, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reduction:
        """Read a reduction written by :meth:`save`."""
        path = Path(path)
        try:
            meta = json.loads((path / META).read_text())
            with np.load(path / ARRAYS, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise InputError(path, META, "no saved reduction here", "pass a directory written by Reduction.save") from None
        except (json.JSONDecodeError, ValueError, KeyError) as exc:
            raise InputError(path, META, f"unreadable reduction ({exc})", "fit and save the reduction again") from None
        if meta.get("format") != FORMAT or meta.get("method") not in METHODS:
            raise InputError(path, META, f"unknown reduction format {meta.get('format')!r} / method {meta.get('method')!r}",
                             "fit and save the reduction again with this version of cellweave")
        inp = meta["input"]
        transform = InputTransform(inp["normalize"], inp["target_sum"], arrays.get("input_idf"), arrays.get("input_center"),
                                   arrays.get("input_sd"), inp["max_value"])
        return cls(meta["method"], arrays["var_names"].tolist(), arrays["features"].tolist(), transform,
                   arrays["components"], arrays["mean"], arrays["singular_values"], arrays["explained_variance"],
                   arrays["explained_variance_ratio"], int(meta["n_cells"]), int(meta["skipped"]))


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A sparse CSR tensor from trusted parts (no invariant check; torch's "beta" notice silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _to_torch(x: torch.Tensor | np.ndarray | sp.spmatrix) -> torch.Tensor:
    """A float tensor (sparse inputs as CSR) without copying dense inputs."""
    if isinstance(x, torch.Tensor):
        if x.layout == torch.sparse_coo:
            x = x.to_sparse_csr()
        return x if x.is_floating_point() else x.float()
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        return csr_tensor(torch.from_numpy(x.indptr.astype(np.int64)), torch.from_numpy(x.indices.astype(np.int64)),
                          torch.from_numpy(x.data.astype(dtype, copy=False)), x.shape)
    arr = np.asarray(x)
    return torch.from_numpy(arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32))


def _row_sums(x: torch.Tensor) -> torch.Tensor:
    if x.layout == torch.sparse_csr:
        crow = x.crow_indices()
        row = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), torch.diff(crow))
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device).index_add_(0, row, x.values())
    return x.sum(1)


def _select_columns(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    if x.layout != torch.sparse_csr:
        return x[:, cols]
    m = sp.csr_matrix((x.values().cpu().numpy(), x.col_indices().cpu().numpy(), x.crow_indices().cpu().numpy()),
                      shape=tuple(x.shape))[:, cols.cpu().numpy()]
    return _to_torch(m).to(x.device)
