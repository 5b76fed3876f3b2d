"""Features aligned by name: a store read again after training is laid out in the features the run recorded.

A run records, per modality, the training store's feature names (and ids when the store has them), the features
the model reads, and the preprocessing statistics it used (:class:`FeatureRecord`). Every later read (embed,
impute, resume, map) opens its store through :func:`align_store`, which returns an :class:`AlignedStore`: the
store's columns permuted by name into the recorded order, recorded features the store lacks left empty, and
features the run never saw dropped. Every model reads the aligned store exactly as it read its training store
(same column positions, the recorded statistics instead of statistics of the new cells), so a store whose
features are a permutation of the run's gives the same values bit for bit.

A recorded feature the store lacks is empty in the raw rows and flagged in :attr:`AlignedStore.present`; the
stream carries that as the batch's mask, and the preprocessing zeroes such columns after its transform (scaled
inputs, PCA inputs), while models over a union feature space treat them as unmeasured.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .atomic import atomic_write_bytes
from .preprocess import FeatureStats
from .source import Matrix
from .store import ModalityStore, Ranges

#: Share of the model's features a store must have (default of ``min_overlap``).
MIN_OVERLAP = 0.5
_STATS_ARRAYS = ("mean", "var", "n_expressed", "log_mean", "log_var", "hvg_rank", "hvg_variance")


@dataclass
class FeatureRecord:
    """What a run keeps about one modality's features.

    Attributes
    ----------
    modality
        Modality name.
    kind
        ``"counts"`` or ``"normalized"`` (a store of the other kind is refused).
    var_names
        Every feature of the training store, in its order.
    var_ids
        Stable feature ids (e.g. Ensembl ids), when the store had them.
    used
        The features the model reads (a subset of ``var_names``): the overlap is counted on these.
    stats
        The preprocessing statistics the model used (highly variable ranks, moments), without per-cell values.
    """

    modality: str
    kind: str
    var_names: list[str]
    var_ids: list[str] | None = None
    used: list[str] | None = None
    stats: FeatureStats | None = None

    @classmethod
    def of(cls, store: ModalityStore, used: list[str] | None = None) -> FeatureRecord:
        """The record of a training store: its features and the statistics kept beside it (or those it was
        aligned to)."""
        stats = getattr(store, "reference_stats", None)
        if stats is None and (Path(store.stats_dir) / "stats.npz").exists():
            from .fingerprint import still_current

            if still_current(store, Path(store.stats_dir) / "stats.npz"):
                stats = FeatureStats.load(store.stats_dir)
        ids = getattr(store, "feature_ids", None)
        return cls(store.modality, store.kind, [str(v) for v in store.var_names],
                   None if ids is None else [str(v) for v in ids], None if used is None else [str(v) for v in used], stats)

    @property
    def model_features(self) -> list[str]:
        """The features the overlap is counted on (``used``, else every feature)."""
        return self.var_names if self.used is None else self.used

    def save(self, path: str | Path) -> Path:
        """Write as one ``.npz`` (atomic; no pickle)."""
        arrays: dict[str, np.ndarray] = {"var_names": np.asarray(self.var_names, dtype=str)}
        if self.var_ids is not None:
            arrays["var_ids"] = np.asarray(self.var_ids, dtype=str)
        if self.used is not None:
            arrays["used"] = np.asarray(self.used, dtype=str)
        meta = {"modality": self.modality, "kind": self.kind, "stats": self.stats is not None}
        if self.stats is not None:
            s = self.stats
            meta |= {"n_cells": s.n_cells, "target_sum": s.target_sum}
            arrays |= {f"stats_{k}": getattr(s, k) for k in _STATS_ARRAYS if getattr(s, k) is not None}
            arrays["stats_var_names"] = np.asarray(s.var_names, dtype=str)
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(path), buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureRecord:
        """Read a record written by :meth:`save`."""
        try:
            z = np.load(Path(path), allow_pickle=False)
        except FileNotFoundError:
            raise InputError(path, "feature record", "no such file (a run written before runs recorded their features)",
                             "fit the run again with this version of cellweave") from None
        with z:
            meta = json.loads(z["meta"].tobytes().decode())
            stats = None
            if meta["stats"]:
                opt = {k: z[f"stats_{k}"] for k in ("hvg_rank", "hvg_variance") if f"stats_{k}" in z}
                stats = FeatureStats(n_cells=meta["n_cells"], library_size=np.zeros(0, np.float32),
                                     target_sum=meta["target_sum"], var_names=pd.Index(z["stats_var_names"]),
                                     **{k: z[f"stats_{k}"] for k in _STATS_ARRAYS[:5]}, **opt)
            return cls(meta["modality"], meta["kind"], z["var_names"].tolist(),
                       z["var_ids"].tolist() if "var_ids" in z else None, z["used"].tolist() if "used" in z else None, stats)


class AlignedStore(ModalityStore):
    """A store read in a run's recorded feature order (see the module docstring).

    Parameters
    ----------
    base
        The store as opened.
    record
        The run's record of the modality.
    """

    def __init__(self, base: ModalityStore, record: FeatureRecord) -> None:
        self.base = base
        self.record = record
        self.path = base.path
        self.modality = base.modality
        self.n_obs = base.n_obs
        self.kind = base.kind
        self.kind_given = base.kind_given
        self.sparse = base.sparse
        self.var_names = pd.Index(record.var_names)
        self.reference_stats = record.stats
        base_ids = getattr(base, "feature_ids", None)
        if record.var_ids is not None and base_ids is not None:  # stable ids on both sides: match those
            self.matched_by, have, wanted = "feature ids", pd.Index(base_ids), pd.Index(record.var_ids)
        else:
            self.matched_by, have, wanted = "feature names", pd.Index(base.var_names), self.var_names
        if have.has_duplicates:
            dup = have[have.duplicated()][:3].tolist()
            raise InputError(base.path, "var_names", f"{self.matched_by} repeat (e.g. {dup}), so they cannot be aligned",
                             "give every feature a unique name")
        self.src = have.get_indexer(wanted)  # base column of each recorded feature (-1: missing)
        self.present = self.src >= 0
        self.identity = base.n_vars == len(self.var_names) and np.array_equal(self.src, np.arange(len(self.src)))
        dst = np.full(base.n_vars, -1, dtype=np.int64)
        dst[self.src[self.present]] = np.flatnonzero(self.present)
        self._dst = dst  # recorded position of each base column (-1: a feature the run never saw)

    @property
    def fork_safe(self) -> bool:
        return getattr(self.base, "fork_safe", True)

    @property
    def spec(self):
        """The base store's :class:`~cellweave.data.spec.StoreSpec` (SOMA query), when it has one."""
        return getattr(self.base, "spec", None)

    @property
    def feature_ids(self) -> pd.Index | None:
        """The recorded feature ids (in the recorded order), when the training store had them."""
        return None if self.record.var_ids is None else pd.Index(self.record.var_ids)

    @property
    def obs_keys(self) -> list[str]:
        return self.base.obs_keys

    def obs_column(self, key: str) -> pd.Series:
        return self.base.obs_column(key)

    def obs_names(self, ranges: Ranges) -> np.ndarray:
        return self.base.obs_names(ranges)

    def all_obs_names(self) -> pd.Index:
        return self.base.all_obs_names()

    @property
    def stats_dir(self) -> Path:
        """The base store's directory when nothing moves, else a directory of its own per recorded feature list
        (what is cached there is computed from the aligned columns)."""
        if self.identity:
            return Path(self.base.stats_dir)
        digest = hashlib.sha256("\x00".join(self.record.var_names).encode()).hexdigest()[:16]
        return Path(self.base.stats_dir) / "aligned" / digest

    def read_X(self, ranges: Ranges) -> Matrix:
        X = self.base.read_X(ranges)
        if self.identity:
            return X
        n_out = len(self.var_names)
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            cols = self._dst[X.indices]
            keep = cols >= 0
            row = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
            indptr = np.concatenate([[0], np.cumsum(np.bincount(row[keep], minlength=X.shape[0]))])
            out = sp.csr_matrix((X.data[keep], cols[keep], indptr), shape=(X.shape[0], n_out))
            out.sort_indices()
            return out
        X = np.asarray(X)
        out = np.zeros((X.shape[0], n_out), dtype=X.dtype)
        out[:, self.present] = X[:, self.src[self.present]]
        return out

    def __repr__(self) -> str:
        return f"AlignedStore({self.base!r}, {int(self.present.sum())}/{len(self.present)} recorded features)"


def align_store(store: ModalityStore, record: FeatureRecord, min_overlap: float = MIN_OVERLAP) -> AlignedStore:
    """``store`` laid out in the recorded features of its modality, by name (by feature id when the run recorded
    ids and the store has them, e.g. Ensembl ids of a Census-shaped SOMA measurement).

    Parameters
    ----------
    store
        The store read again (the training store, a copy with its features in another order, or new cells).
    record
        The run's record of the modality.
    min_overlap
        Least share of the model's features (:attr:`FeatureRecord.model_features`) the store must have.

    Returns
    -------
    AlignedStore
        The aligned view. Missing features give a ``UserWarning`` stating the fraction missing.

    Raises
    ------
    InputError
        When the store has fewer than ``min_overlap`` of the model's features, or is of another kind.
    """
    if not 0.0 <= min_overlap <= 1.0:
        raise InputError("alignment", "min_overlap", f"must be a share in [0, 1], got {min_overlap!r}", "e.g. 0.5")
    if store.kind != record.kind:
        raise InputError(store.path, "X", f"holds {store.kind} values; the run's {record.modality!r} modality was "
                         f"trained on {record.kind}", f"pass the {record.kind} layer/store of the cells")
    aligned = AlignedStore(store, record)
    wanted = pd.Index(record.model_features)
    have = aligned.present[pd.Index(record.var_names).get_indexer(wanted)]
    share = float(have.mean()) if len(wanted) else 1.0
    if share < min_overlap:
        example = wanted[~have][:3].tolist()
        raise InputError(store.path, "var_names", f"has {have.sum()} of the {len(wanted)} features the model of "
                         f"modality {record.modality!r} reads ({share:.0%}; at least {min_overlap:.0%} needed; "
                         f"missing e.g. {example})",
                         f"pass a store measuring the run's features (matched by {aligned.matched_by})")
    if share < 1.0:
        warnings.warn(f"{store.path}: {1 - share:.1%} of the {len(wanted)} features the model of modality "
                      f"{record.modality!r} reads are missing ({int((~have).sum())}, e.g. {wanted[~have][:3].tolist()}); "
                      "they are filled as unmeasured", UserWarning, stacklevel=2)
    return aligned
