"""Objects a notebook already holds, read through the same :class:`~cellweave.data.ModalityStore` interface.

An in-memory ``AnnData`` is read row range by row range straight from its ``X`` (or a layer): no copy of the
matrix is made (a CSC matrix is the exception: it is turned into CSR once, since rows cannot be sliced from it
cheaply). The trade-off against a store on disk: the matrix already sits in RAM, so memory is bounded by the
object, not by the stream's read-ahead; what the stream buys is the same code path (preprocessing, minibatches,
multi-modal joins) for a 10k-cell object as for a 10M-cell store. For data larger than memory, convert it once
(``cellweave convert``) or open it backed (``anndata.read_h5ad(path, backed="r")``, read like a ``.h5ad`` path).

Preprocessing statistics and check reports of an in-memory object are kept in a temporary directory that lives
as long as the store object (nothing beside the data: there is no data file).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .kind import check_kind, infer_kind
from .source import Kind, Matrix
from .store import ModalityStore, Ranges, coalesce_ranges

log = logging.getLogger(__name__)

#: Values looked at to tell counts from normalized values (see :mod:`cellweave.data.kind`).
KIND_VALUES = 1 << 18


def _sample(X: Matrix) -> np.ndarray:
    """The first values of ``X`` (stored values of a sparse matrix)."""
    if sp.issparse(X):
        return np.asarray(X.data[:KIND_VALUES])
    return np.asarray(X[: max(1, KIND_VALUES // max(1, X.shape[1]))])


class AnnDataStore(ModalityStore):
    """A :class:`~cellweave.data.ModalityStore` over an ``anndata.AnnData`` held in memory.

    Parameters
    ----------
    adata
        The object. Its ``X`` (or ``layers[layer]``) is read by row ranges without a copy: CSR, dense numpy, or
        CSC (turned into CSR once, a copy, with a warning).
    modality
        Modality name.
    layer
        Read ``adata.layers[layer]`` instead of ``X`` (e.g. ``"counts"``, as scvi-tools users keep raw counts).
    kind
        ``"counts"`` or ``"normalized"``; default: inferred from the values (:mod:`cellweave.data.kind`).

    Raises
    ------
    InputError
        For a missing layer, a matrix type that cannot be read by rows, or an AnnData opened backed (pass its
        file path, or use :func:`as_store`, which reads it from the file).
    """

    fork_safe = True

    def __init__(self, adata: Any, modality: str, layer: str | None = None, kind: Kind | None = None) -> None:
        where = f"AnnData[{modality!r}] (in memory)"
        if getattr(adata, "isbacked", False):
            raise InputError(where, "X", "the AnnData is backed by a file", f"pass its path {adata.filename!s} instead")
        if layer is not None and layer not in adata.layers:
            raise InputError(where, f"layers['{layer}']", f"no such layer (it has: {', '.join(adata.layers) or 'none'})",
                             "pass an existing layer, or layer=None for X")
        X = adata.X if layer is None else adata.layers[layer]
        field = "X" if layer is None else f"layers['{layer}']"
        if X is None:
            raise InputError(where, field, "the AnnData has no matrix", "set adata.X (or pass layer=...)")
        if sp.issparse(X) and X.format == "csc":
            log.warning("%s: %s is CSC; a CSR copy is made to read rows (adata.X = adata.X.tocsr() avoids it)", where, field)
            X = X.tocsr()
        elif sp.issparse(X) and X.format != "csr":
            raise InputError(where, field, f"a {X.format.upper()} matrix cannot be read by rows", "convert it: adata.X = adata.X.tocsr()")
        elif not sp.issparse(X) and not isinstance(X, np.ndarray):
            raise InputError(where, field, f"a {type(X).__name__} cannot be read by rows here",
                             "load it: adata.X = adata.X.compute() (dask) or np.asarray(...)")
        self.adata = adata
        self.X: Matrix = X
        self.layer = layer
        self.path = where
        self.modality = modality
        self.n_obs = int(X.shape[0])
        self.var_names = pd.Index(adata.var_names.astype(str))
        self.sparse = sp.issparse(X)
        self.kind = check_kind(kind, f"{where}: kind") or infer_kind(_sample(X))
        self.kind_given = kind is not None
        self._obs_names = np.asarray(adata.obs_names.astype(str), dtype=object)
        self._stats_dir = Path(tempfile.mkdtemp(prefix=f"cellweave-{modality}-"))
        weakref.finalize(self, shutil.rmtree, str(self._stats_dir), True)

    @property
    def obs_keys(self) -> list[str]:
        return [str(c) for c in self.adata.obs.columns]

    def obs_column(self, key: str) -> pd.Series:
        if key not in self.obs_keys:
            return self.require_obs_key(key)
        return self.adata.obs[key].reset_index(drop=True).rename(key)

    def obs_names(self, ranges: Ranges) -> np.ndarray:
        parts = [self._obs_names[a:b] for a, b in coalesce_ranges(ranges)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object)

    def read_X(self, ranges: Ranges) -> Matrix:
        parts = [self.X[a:b] for a, b in coalesce_ranges(ranges)]
        if not parts:
            return sp.csr_matrix((0, self.n_vars), dtype=np.float32) if self.sparse else np.zeros((0, self.n_vars), np.float32)
        X = sp.vstack(parts, format="csr") if self.sparse else np.concatenate(parts)
        return X.astype(np.float32, copy=False)

    @property
    def stats_dir(self) -> Path:
        return self._stats_dir

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("adata")  # a worker needs the matrix and the obs table, not the whole object
        state["_obs"] = self.adata.obs
        return state

    def __setstate__(self, state: dict) -> None:
        obs = state.pop("_obs")
        self.__dict__.update(state)
        self.adata = _ObsOnly(obs)


class _ObsOnly:
    """What a DataLoader worker keeps of an AnnData: its obs table."""

    def __init__(self, obs: pd.DataFrame) -> None:
        self.obs = obs


def as_store(obj: Any, modality: str | None = None) -> ModalityStore:
    """A :class:`~cellweave.data.ModalityStore` from whatever a notebook holds.

    Parameters
    ----------
    obj
        A store; a path (``.zarr``, ``.h5ad``, ``FILE.h5mu::MODALITY``, ``SOMA_DIR::MEASUREMENT``) or a
        :class:`~cellweave.data.StoreSpec` (or its config table); an
        ``AnnData`` (in memory: read without a copy; backed: read from its file); a ``tiledbsoma.Measurement``;
        a ``tiledbsoma.Experiment`` (the measurement named ``modality``, or its only one); or a
        ``tiledbsoma.ExperimentAxisQuery`` (its experiment and measurement, with its ``value_filter`` s).
    modality
        The modality's name.

    Raises
    ------
    InputError
        For an object of another type, or a SOMA object whose measurement cannot be told.
    """
    if isinstance(obj, ModalityStore):
        if modality:
            obj.modality = modality
        return obj
    from .spec import StoreSpec

    kind = type(obj).__module__.split(".")[0] + "." + type(obj).__name__
    if kind == "anndata.AnnData" or _is_anndata(obj):
        return _anndata_store(obj, modality or "X")
    if kind.startswith("tiledbsoma.") or kind.startswith("somacore."):  # before Mapping: an Experiment is one
        return _soma_store(obj, modality)
    if kind == "mudata.MuData":
        raise InputError(f"modality {modality!r}", "MuData", "a MuData holds several modalities",
                         "pass the MuData itself as the model's input (each modality by its name), or mdata.mod['rna']")
    if isinstance(obj, str | os.PathLike | StoreSpec | Mapping):  # a path, a spec or its config table
        from .check import open_store

        return open_store(obj, modality)
    raise InputError(f"modality {modality!r}", type(obj).__name__, "not a store, path, AnnData or tiledbsoma object",
                     "pass a .zarr/.h5ad path, an AnnData, a MuData or a tiledbsoma Experiment/Measurement/query")


def _is_anndata(obj: Any) -> bool:
    try:
        import anndata
    except ImportError:  # pragma: no cover - anndata is a dependency
        return False
    return isinstance(obj, anndata.AnnData)


def _anndata_store(adata: Any, modality: str) -> ModalityStore:
    if getattr(adata, "isbacked", False):
        if adata.is_view:
            raise InputError(f"AnnData[{modality!r}] (backed)", "view", "a subset of a backed AnnData cannot be streamed "
                             "from its file", "write the subset (adata[mask].write_h5ad(...)) or load it into memory (.to_memory())")
        from .readers import H5adStore

        return H5adStore(adata.filename, modality)
    return AnnDataStore(adata, modality)


def _soma_store(obj: Any, modality: str | None) -> ModalityStore:
    import inspect

    from .soma_store import SomaStore

    options: dict[str, str] = {}
    name = type(obj).__name__
    if name == "ExperimentAxisQuery":
        axis = obj._matrix_axis_query
        for which, query in (("obs", axis.obs), ("var", axis.var)):
            if any(not (isinstance(c, slice) and c == slice(None)) for c in query.coords):
                raise InputError(f"ExperimentAxisQuery[{obj.measurement_name!r}]", f"{which}_query.coords",
                                 "coordinates cannot be streamed", f"select cells and features with {which}_query=AxisQuery(value_filter=...)")
            if query.value_filter:
                options[f"{which}_filter"] = query.value_filter
        experiment, measurement = obj.experiment.uri, obj.measurement_name
    elif name == "Measurement":
        uri = obj.uri.rstrip("/")
        experiment, measurement = uri.rsplit("/ms/", 1)[0], uri.rsplit("/", 1)[1]
    elif name == "Experiment":
        present = sorted(obj.ms.keys())
        if modality in present:
            measurement = modality
        elif len(present) == 1:
            measurement = present[0]
        else:
            raise InputError(obj.uri, "ms", f"which measurement is modality {modality!r}? (this experiment has: "
                             f"{', '.join(present)})", "pass experiment.ms['<name>'] or name the modality after it")
        experiment = obj.uri
    else:
        raise InputError(getattr(obj, "uri", name), name, "not a tiledbsoma Experiment, Measurement or ExperimentAxisQuery",
                         "pass one of those")
    if experiment.startswith("file://"):
        experiment = experiment[len("file://"):]
    accepted = set(inspect.signature(SomaStore.__init__).parameters)
    if not set(options) <= accepted:
        raise InputError(f"ExperimentAxisQuery[{measurement!r}]", "value_filter", "value filters are not supported by this "
                         "version's SOMA store", "write the selected cells to a new experiment first")
    store = SomaStore(experiment, measurement, **options)
    if modality:
        store.modality = modality
    return store
