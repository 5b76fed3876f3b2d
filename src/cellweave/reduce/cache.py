"""Reduced cells kept beside the data: a store's cells passed once through a fitted :class:`Reduction` and written
as a dense Zarr modality store (``n_cells x n_components``, float32, the store's obs), so that a model that reads
only reduced inputs (CVQVAE) streams a few dozen values per cell instead of every raw feature.

The cache lives in ``store.stats_dir/reduced/<method>-<digest>.zarr``; the digest covers the reduction's
loadings and input transform, so another reduction never reads it. It is written under a temporary name and
renamed when complete, so a killed write is never opened as a cache; the fingerprint of the data it was made from
is recorded beside it, and a cache of data that changed since is written again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data.atomic import atomic_output
from ..data.fingerprint import record_source, still_current
from ..data.store import ModalityStore
from ..data.zarr_store import ZarrStore, ZarrWriter
from .reduction import Reduction

CHUNK = 8192
CACHE_DIR = "reduced"


def reduction_digest(reduction: Reduction) -> str:
    """A short hash of everything that decides a reduction's output: features, transform and loadings."""
    h = hashlib.sha256()
    h.update(reduction.method.encode())
    h.update("\x00".join(reduction.features).encode())
    h.update(repr((reduction.input.normalize, reduction.input.target_sum, reduction.input.max_value)).encode())
    for arr in (reduction.components, reduction.mean, reduction.input.idf, reduction.input.center, reduction.input.sd):
        if arr is not None:
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def component_names(reduction: Reduction) -> list[str]:
    """``PC1 ...`` (PCA) or ``LSI2 ...`` (LSI, counting the dropped leading components)."""
    prefix = "PC" if reduction.method == "pca" else reduction.method.upper()
    return [f"{prefix}{i + 1 + reduction.skipped}" for i in range(reduction.n_components)]


def cached_reduced_store(store: ModalityStore, reduction: Reduction) -> ZarrStore | None:
    """The cache of ``store`` reduced by ``reduction`` when one is complete and was made from the data as they are
    now, else None (nothing is written)."""
    path = _cache_path(store, reduction)
    if not path.exists() or not still_current(store, path):
        return None
    cached = ZarrStore(path, modality=store.modality)
    if cached.n_obs != store.n_obs or cached.n_vars != reduction.n_components:
        return None
    return cached


def reduced_store(store: ModalityStore, reduction: Reduction, progress: bool = False,
                  batch_size: int = CHUNK) -> ZarrStore:
    """The cells of ``store`` reduced by ``reduction``, from the cache beside the data (written on first use, and
    again when the data changed).

    Parameters
    ----------
    store
        The raw modality the reduction reads (its ``var_names`` hold the reduction's features).
    reduction
        A fitted reduction of that modality.
    progress
        Show a progress bar while writing the cache.
    batch_size
        Cells read and reduced at a time while writing.

    Returns
    -------
    ZarrStore
        A dense store of the same cells in the same order (same ids and obs columns) with the components as
        features, named as the modality of ``store``.
    """
    cached = cached_reduced_store(store, reduction)
    if cached is not None:
        return cached
    path = _cache_path(store, reduction)
    obs = pd.DataFrame({key: store.obs_column(key).values for key in store.obs_keys},
                       index=pd.Index(store.all_obs_names().astype(str), name="obs_names"))
    with atomic_output(path, overwrite=True) as tmp:
        writer = ZarrWriter(tmp, reduction.n_components, sparse=False)
        with tqdm(total=store.n_obs, desc=f"reduce {store.modality}", unit="cells", disable=not progress) as bar:
            for start in range(0, store.n_obs, batch_size):
                X = store.read_X([(start, min(start + batch_size, store.n_obs))])
                writer.append(reduction.transform(X))  # X holds every feature: its row sums are the library sizes
                bar.update(X.shape[0])
        writer.close(obs, pd.DataFrame(index=pd.Index(component_names(reduction))), store.modality, "normalized")
    record_source(store, path)
    return ZarrStore(path, modality=store.modality)


def _cache_path(store: ModalityStore, reduction: Reduction) -> Path:
    return store.stats_dir / CACHE_DIR / f"{reduction.method}-{reduction_digest(reduction)}.zarr"
