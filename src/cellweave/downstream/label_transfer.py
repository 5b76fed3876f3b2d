"""Label transfer by k-nearest-neighbour vote in the shared latent space."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from ..errors import InputError
from ..neighbors import knn


def knn_vote(reference: np.ndarray, labels: np.ndarray, query: np.ndarray, k: int = 30,
             backend: str = "auto", block_size: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Majority label among each query cell's ``k`` nearest reference cells (ties: the nearer label wins).

    Parameters
    ----------
    reference, labels
        Reference embedding ``(N, d)`` and its integer label codes ``(N,)``.
    query
        Query embedding ``(M, d)``.
    k
        Neighbours voting.
    backend
        kNN backend (:func:`cellweave.neighbors.knn`).
    block_size
        Query cells per search (memory bound).

    Returns
    -------
    predicted, confidence
        Label code per query cell and the share of the ``k`` votes it got.
    """
    labels = np.asarray(labels)
    if len(labels) != len(reference):
        raise InputError("label transfer", "labels", f"{len(labels)} labels for {len(reference)} reference cells",
                         "give one label per reference cell")
    k = min(k, len(reference))
    n_labels = int(labels.max()) + 1
    pred = np.empty(len(query), dtype=np.int64)
    conf = np.empty(len(query), dtype=np.float32)
    for a in range(0, len(query), block_size):
        _, idx = knn(reference, k, query[a : a + block_size], backend=backend)
        votes = labels[np.asarray(idx)]
        counts = np.zeros((len(votes), n_labels), dtype=np.float64)
        rank_weight = 1.0 - np.arange(k) / (k * 1e3)  # breaks ties in favour of nearer neighbours
        np.add.at(counts, (np.repeat(np.arange(len(votes)), k), votes.ravel()), np.tile(rank_weight, len(votes)))
        pred[a : a + block_size] = counts.argmax(1)
        conf[a : a + block_size] = np.floor(counts.max(1) + 1e-9) / k
    return pred, conf


def transfer_labels(reference: str | os.PathLike, query: str | os.PathLike, label_key: str, k: int = 30,
                    obsm_key: str = "X_cellweave") -> pd.DataFrame:
    """Transfer ``obs[label_key]`` from one embedding store to another (``RUN/embeddings/<m>.zarr``).

    Returns
    -------
    DataFrame
        Indexed by the query cell ids: ``predicted``, ``confidence``, and ``true`` when the query has the key.
    """
    return vote_between_stores(reference, query, label_key, obsm_key, lambda r, lab, q: knn_vote(r, lab, q, k=k))


def vote_between_stores(reference: str | os.PathLike, query: str | os.PathLike, label_key: str, obsm_key: str,
                        vote: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Read two embedding stores, check the label and embedding keys, and tabulate ``vote(reference, codes, query)``
    (a ``(predicted codes, confidence)`` pair) as labels; shared by the kNN and optimal-transport transfers."""
    import anndata as ad

    ref, qry = ad.read_zarr(reference), ad.read_zarr(query)
    if label_key not in ref.obs:
        raise InputError(reference, f"obs['{label_key}']", f"no such column (has: {', '.join(ref.obs.columns)})",
                         "pass a label key of the reference modality")
    for path, a in ((reference, ref), (query, qry)):
        if obsm_key not in a.obsm:
            raise InputError(path, f"obsm['{obsm_key}']", "no such embedding", "run model.embed() first")
    cats = pd.Categorical(ref.obs[label_key].astype(str))
    pred, conf = vote(np.asarray(ref.obsm[obsm_key]), cats.codes, np.asarray(qry.obsm[obsm_key]))
    out = pd.DataFrame({"predicted": np.asarray(cats.categories)[pred], "confidence": conf}, index=qry.obs_names)
    if label_key in qry.obs:
        out["true"] = qry.obs[label_key].astype(str).to_numpy()
    return out
