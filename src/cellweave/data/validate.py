"""Checks applied to every modality before and while it is written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .kind import infer_kind
from .source import ChunkSource, Kind, Matrix


def check_tables(source: ChunkSource) -> None:
    """Check the obs/var tables of a source: non-empty, unique ids."""
    if source.obs.shape[0] == 0:
        raise InputError(source.name, "obs", "the input has no cells", "check that the file is the right one and not empty")
    if source.var.shape[0] == 0:
        raise InputError(source.name, "var", "the input has no features", "check that the file is the right one and not empty")
    for axis, index in (("obs_names (cell ids)", source.obs.index), ("var_names (feature names)", source.var.index)):
        problem = duplicate_ids(source.name, axis, index)
        if problem is not None:
            raise problem


def duplicate_ids(name: str, axis: str, index: pd.Index) -> InputError | None:
    """The error for repeated ids in ``index`` (``axis``: which ids, for the message), or ``None``."""
    if index.is_unique:
        return None
    dup = index[index.duplicated()].unique()[:5].tolist()
    return InputError(
        name,
        axis,
        f"{int(index.duplicated().sum())} duplicated ids, e.g. {dup}",
        "make them unique (AnnData.obs_names_make_unique() / var_names_make_unique()) and convert again",
    )


def _values(X: Matrix) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def _first_bad_row(X: Matrix, bad: np.ndarray) -> int:
    """Row (within the chunk) of the first flagged value."""
    pos = int(np.flatnonzero(bad)[0])
    if sp.issparse(X):
        return int(np.searchsorted(X.indptr, pos, side="right") - 1)
    return pos // X.shape[1]


class ValueChecker:
    """Checks matrix chunks in order and settles the matrix kind (counts or normalized).

    With ``kind=None`` the first chunk decides (:func:`~cellweave.data.kind.infer_kind`). A counts matrix must
    be non-negative and integer-valued in every chunk, the first included.
    """

    def __init__(self, name: str, kind: Kind | None) -> None:
        self.name = name
        self.kind: Kind | None = kind

    def check(self, start: int, X: Matrix) -> None:
        v = _values(X)
        finite = np.isfinite(v)
        if not finite.all():
            row = start + _first_bad_row(X, ~finite)
            raise InputError(self.name, "X", f"NaN or Inf value in cell row {row}", "remove or impute non-finite values before converting")
        if self.kind is None:
            self.kind = infer_kind(v)
        if self.kind == "counts":
            negative = v < 0
            if negative.any():
                row = start + _first_bad_row(X, negative)
                raise InputError(self.name, "X", f"negative value in a counts matrix at cell row {row} (counts are never "
                                 "negative)", "fix the matrix, or pass --kind normalized if it is not counts")
            frac = v != np.round(v)
            if frac.any():
                row = start + _first_bad_row(X, frac)
                raise InputError(self.name, "X", f"non-integer value in a counts matrix at cell row {row} "
                                 f"({int(frac.sum())} in this chunk)", "fix the matrix, or pass --kind normalized if it "
                                 "is not raw counts")


def obs_for_storage(obs: pd.DataFrame) -> pd.DataFrame:
    """Obs table with string columns as categoricals where that is compact, and a string index."""
    out = obs.copy()
    out.index = out.index.astype(str)
    out.index.name = None
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].astype(str)
            if out[col].nunique() <= max(1000, len(out) // 10):
                out[col] = out[col].astype("category")
    return out
