"""Preprocessing statistics from one chunked pass, and the on-the-fly transform applied in the stream.

:func:`compute_stats` reads a store once, chunk by chunk, and accumulates per-cell library sizes and
per-feature moments of the raw values and of ``log1p(normalize_total(x))``. Seurat-v3 highly variable
features (:func:`highly_variable_features`) need one more pass by definition: the clipping bound of each
feature depends on a LOESS trend fitted to all features' means and variances from the first pass (scanpy
does the same two steps in memory). Everything is written beside the data (``store.stats_dir``).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .atomic import atomic_write_bytes
from .fingerprint import record_source, still_current
from .source import Matrix
from .store import ModalityStore

STATS_CHUNK = 8192
DEFAULT_TARGET_SUM = 1e4


def _row_chunks(store: ModalityStore, chunk: int):
    for start in range(0, store.n_obs, chunk):
        yield start, store.read_X([(start, min(start + chunk, store.n_obs))])


def _sums(X: Matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature sum, sum of squares and count of nonzeros (float64)."""
    if sp.issparse(X):
        data = X.data.astype(np.float64)
        n = X.shape[1]
        return (np.bincount(X.indices, data, n), np.bincount(X.indices, data * data, n),
                np.bincount(X.indices, (data != 0).astype(np.float64), n))
    X = np.asarray(X, dtype=np.float64)
    return X.sum(0), (X * X).sum(0), (X != 0).sum(0).astype(np.float64)


def lognormalize(X: Matrix, library: np.ndarray, target_sum: float | None, log1p: bool) -> Matrix:
    """``log1p(x / library * target_sum)`` row-wise; CSR stays CSR (zeros stay zero)."""
    scale = None
    if target_sum is not None:
        scale = (target_sum / np.where(library > 0, library, 1.0)).astype(np.float32)
    if sp.issparse(X):
        X = X.astype(np.float32, copy=True)
        if scale is not None:
            X.data *= np.repeat(scale, np.diff(X.indptr))
        if log1p:
            np.log1p(X.data, out=X.data)
        return X
    X = np.array(X, dtype=np.float32, copy=True)
    if scale is not None:
        X *= scale[:, None]
    if log1p:
        np.log1p(X, out=X)
    return X


@dataclass
class FeatureStats:
    """Statistics of one store, from one chunked pass.

    Attributes
    ----------
    n_cells
        Cells seen.
    library_size
        Per-cell sum of raw values (memory: 4 bytes a cell; kept beside the data, not in the stream).
    mean, var
        Per-feature mean and variance (ddof=1) of the raw values.
    n_expressed
        Per-feature number of cells with a nonzero value.
    target_sum
        ``normalize_total`` target used for the log-normalized moments (``None``: no normalization).
    log_mean, log_var
        Per-feature mean and variance (ddof=1) of ``log1p(normalize_total(x))``: used by ``scale``.
    var_names
        Feature names.
    hvg_rank
        Seurat-v3 rank of each feature (0 = most variable), when computed.
    """

    n_cells: int
    library_size: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    n_expressed: np.ndarray
    target_sum: float | None
    log_mean: np.ndarray
    log_var: np.ndarray
    var_names: pd.Index
    hvg_rank: np.ndarray | None = None
    hvg_variance: np.ndarray | None = field(default=None, repr=False)

    def save(self, directory: str | Path) -> Path:
        """Write to ``directory/stats.npz`` (atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in ("library_size", "mean", "var", "n_expressed", "log_mean", "log_var")}
        arrays["var_names"] = np.asarray(self.var_names, dtype=str)
        if self.hvg_rank is not None:
            arrays["hvg_rank"] = self.hvg_rank
            arrays["hvg_variance"] = self.hvg_variance
        meta = {"n_cells": self.n_cells, "target_sum": self.target_sum}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        path = directory / "stats.npz"
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FeatureStats:
        """Read ``directory/stats.npz``."""
        with np.load(Path(directory) / "stats.npz", allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            opt = {k: z[k] for k in ("hvg_rank", "hvg_variance") if k in z}
            return cls(
                n_cells=meta["n_cells"], target_sum=meta["target_sum"], library_size=z["library_size"], mean=z["mean"],
                var=z["var"], n_expressed=z["n_expressed"], log_mean=z["log_mean"], log_var=z["log_var"],
                var_names=pd.Index(z["var_names"]), **opt,
            )

    def hvg(self, n_top: int) -> list[str]:
        """Names of the ``n_top`` most variable features (Seurat v3), in store order."""
        if self.hvg_rank is None:
            raise ValueError("highly variable features were not computed: call highly_variable_features first")
        keep = np.sort(np.flatnonzero(self.hvg_rank < n_top))
        return self.var_names[keep].tolist()


def _finish_moments(s: np.ndarray, ss: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    mean = s / n
    var = (ss - n * mean * mean) / max(n - 1, 1)
    return mean, np.maximum(var, 0.0)


def compute_stats(store: ModalityStore, target_sum: float | None = DEFAULT_TARGET_SUM, chunk: int = STATS_CHUNK,
                  progress: bool = False) -> FeatureStats:
    """One chunked pass over ``store``: library sizes, raw and log-normalized per-feature moments.

    Parameters
    ----------
    store
        The modality to summarise.
    target_sum
        ``normalize_total`` target for the log-normalized moments; ``None`` skips normalization (for
        already-normalized modalities only ``log1p`` is skipped too when the store kind is ``normalized``).
    chunk
        Rows per read.
    progress
        Show a progress bar.
    """
    from tqdm.auto import tqdm

    log1p = store.kind == "counts"
    if store.kind != "counts":
        target_sum = None
    n_vars = store.n_vars
    acc = np.zeros((3, n_vars))
    log_acc = np.zeros((2, n_vars))
    library = np.zeros(store.n_obs, dtype=np.float32)
    bar = tqdm(total=store.n_obs, desc=f"stats {store.modality}", unit="cells", disable=not progress)
    for start, X in _row_chunks(store, chunk):
        lib = np.asarray(X.sum(1)).ravel()
        if not np.isfinite(lib).all():
            bad = start + int(np.flatnonzero(~np.isfinite(lib))[0])
            raise InputError(store.path, "X", f"non-finite values (NaN or Inf), first in row {bad} "
                             f"(cell {store.obs_names([(bad, bad + 1)])[0]!r})",
                             "remove or repair those cells (e.g. replace NaN by 0 where it means 'not measured') and retry")
        library[start : start + X.shape[0]] = lib
        acc += np.stack(_sums(X))
        L = lognormalize(X, lib, target_sum, log1p)
        s, ss, _ = _sums(L)
        log_acc += np.stack([s, ss])
        bar.update(X.shape[0])
    bar.close()
    n = store.n_obs
    mean, var = _finish_moments(acc[0], acc[1], n)
    log_mean, log_var = _finish_moments(log_acc[0], log_acc[1], n)
    return FeatureStats(n, library, mean, var, acc[2], target_sum, log_mean, log_var, store.var_names)


def highly_variable_features(store: ModalityStore, stats: FeatureStats, chunk: int = STATS_CHUNK, span: float = 0.3,
                             progress: bool = False) -> FeatureStats:
    """Seurat-v3 highly variable features on raw counts (the ``flavor='seurat_v3'`` of scanpy, one batch).

    A LOESS trend of log10 variance on log10 mean gives each feature a regularized standard deviation;
    values are clipped at ``mean + sd * sqrt(n_cells)`` and the variance of the standardized, clipped values
    ranks the features. The clipped sums need a second chunked pass.

    Returns
    -------
    FeatureStats
        ``stats`` with ``hvg_rank`` and ``hvg_variance`` filled in.
    """
    from tqdm.auto import tqdm

    if store.kind != "counts":
        raise InputError(store.path, "X", "seurat_v3 highly variable features need raw counts, this modality is normalized",
                         "pass explicit features, or use a counts modality")
    mean, var = stats.mean, stats.var
    n = stats.n_cells
    not_const = var > 0
    est = np.zeros(len(mean))
    est[not_const] = _variance_trend(np.log10(mean[not_const]), np.log10(var[not_const]), span, store.path)
    reg_std = np.sqrt(10**est)
    clip = reg_std * np.sqrt(n) + mean
    s = np.zeros(len(mean))
    ss = np.zeros(len(mean))
    bar = tqdm(total=n, desc=f"hvg {store.modality}", unit="cells", disable=not progress)
    for _, X in _row_chunks(store, chunk):
        if sp.issparse(X):
            v = np.minimum(X.data.astype(np.float64), clip[X.indices])
            s += np.bincount(X.indices, v, len(mean))
            ss += np.bincount(X.indices, v * v, len(mean))
        else:
            v = np.minimum(np.asarray(X, dtype=np.float64), clip[None, :])
            s += v.sum(0)
            ss += (v * v).sum(0)
        bar.update(X.shape[0])
    bar.close()
    norm_var = (n * mean**2 + ss - 2 * s * mean) / ((n - 1) * reg_std**2)
    norm_var[~not_const] = 0.0
    order = np.argsort(-norm_var, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    stats.hvg_rank = rank
    stats.hvg_variance = norm_var
    return stats


def _variance_trend(x: np.ndarray, y: np.ndarray, span: float, where: str) -> np.ndarray:
    """Seurat v3's mean-variance trend: LOESS of log10 variance on log10 mean (degree 2, ``span``).

    On few or degenerate points (a handful of cells gives many features with the same mean and variance) the
    LOESS fit is singular; the trend is then a least-squares quadratic in log10 mean (a straight line with
    fewer than 4 distinct means; the mean of ``y`` with one), with a warning. The ranking keeps its form:
    clipped values standardized by the trend's variance.
    """
    from skmisc.loess import loess

    try:
        model = loess(x, y, span=span, degree=2)
        model.fit()
        fitted = np.asarray(model.outputs.fitted_values, dtype=np.float64)
        if np.all(np.isfinite(fitted)):
            return fitted
        reason = "non-finite fitted values"
    except (ValueError, RuntimeError, ArithmeticError) as exc:
        reason = str(exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc)
    distinct = len(np.unique(x))
    degree = 2 if distinct >= 4 else (1 if distinct >= 2 else 0)
    fitted = np.polyval(np.polyfit(x, y, degree), x) if degree else np.full(len(y), float(np.mean(y)) if len(y) else 0.0)
    warnings.warn(f"{where}: the LOESS mean-variance trend of the Seurat-v3 highly variable features failed on "
                  f"{len(x)} features ({reason}); ranked with a degree-{degree} polynomial trend instead "
                  "(expected with few cells)", UserWarning, stacklevel=3)
    return fitted


def load_or_compute_stats(store: ModalityStore, target_sum: float | None = DEFAULT_TARGET_SUM, hvg: bool = True,
                          progress: bool = False) -> FeatureStats:
    """Statistics kept beside the store, computed (and saved) on first use or when ``target_sum`` or the data
    changed. A store aligned to a run's features (:class:`~cellweave.data.align.AlignedStore`) gives the run's
    recorded statistics instead: new cells are transformed as the training cells were."""
    reference = getattr(store, "reference_stats", None)
    if reference is not None:
        if hvg and store.kind == "counts" and reference.hvg_rank is None:
            raise InputError(store.path, "statistics", "the run recorded no highly variable feature ranks for this modality",
                             "use the settings the run was fitted with")
        return reference
    directory = store.stats_dir
    if (directory / "stats.npz").exists() and still_current(store, directory / "stats.npz"):
        stats = FeatureStats.load(directory)
        wanted = target_sum if store.kind == "counts" else None
        if stats.target_sum == wanted and stats.n_cells == store.n_obs and (stats.hvg_rank is not None or not hvg):
            return stats
    stats = compute_stats(store, target_sum, progress=progress)
    if hvg and store.kind == "counts":
        stats = highly_variable_features(store, stats, progress=progress)
    stats.save(directory)
    record_source(store, directory / "stats.npz")
    return stats


@dataclass
class Preprocess:
    """The transform applied to every batch in the stream.

    Parameters
    ----------
    normalize
        ``normalize_total`` + ``log1p`` for counts (ignored for normalized modalities).
    target_sum
        ``normalize_total`` target.
    features
        Feature names to keep (in this order); ``None`` keeps all.
    n_top_genes
        Keep the Seurat-v3 top features instead of ``features`` (needs statistics).
    scale
        Center each feature and divide by its standard deviation (``sc.pp.scale``); applied on the device.
    max_value
        Clip scaled values to ``[-max_value, max_value]``.
    """

    normalize: bool = True
    target_sum: float = DEFAULT_TARGET_SUM
    features: Sequence[str] | None = None
    n_top_genes: int | None = None
    scale: bool = False
    max_value: float | None = 10.0

    @property
    def needs_stats(self) -> bool:
        return self.scale or self.n_top_genes is not None
