"""Label and value transfer by minibatch optimal transport in a shared latent space (never an N x M coupling).

Each round splits the query cells into minibatches in a fresh random order, and pairs each with a reference
minibatch of the same size taken in turn from a fresh permutation of the reference (wrapping around when the
query is larger). The optimal transport plan between the two minibatches (uniform weights, squared Euclidean
cost; exact by EMD, or entropic by Sinkhorn) moves reference mass to the query cells; summed over the rounds and
normalised per query cell, that mass weighs the reference values: a label distribution, or a location (scMRDR's
location transfer). Memory: one ``batch x batch`` plan plus the query's accumulators.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from ..errors import InputError
from .label_transfer import vote_between_stores

SOURCE = "optimal transport transfer"


def minibatch_plans(reference: np.ndarray, query: np.ndarray, batch_size: int = 256, n_rounds: int = 10,
                    reg: float | None = None, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Minibatch optimal transport plans between query and reference cells.

    Parameters
    ----------
    reference, query
        Embeddings ``(N, d)`` and ``(M, d)`` in the same space.
    batch_size
        Cells per minibatch (each plan is at most ``batch_size x batch_size``).
    n_rounds
        Passes over the query; every query cell meets ``n_rounds`` reference minibatches.
    reg
        ``None``: exact optimal transport (EMD); a positive value: entropic OT (Sinkhorn) with this regularisation,
        relative to the minibatch's largest cost.
    seed
        Seed of the minibatch draws.

    Yields
    ------
    query_rows, reference_rows, plan
        Rows of the two minibatches and the ``(len(query_rows), len(reference_rows))`` plan (total mass 1).
    """
    import ot

    reference, query = _check(reference, "reference"), _check(query, "query")
    if reference.shape[1] != query.shape[1]:
        raise InputError(SOURCE, "embeddings", f"reference has {reference.shape[1]} dimensions, query {query.shape[1]}",
                         "embed both modalities with the same model")
    if batch_size < 1 or n_rounds < 1:
        raise InputError(SOURCE, "batch_size/n_rounds", f"need positive values, got {batch_size} and {n_rounds}",
                         "e.g. batch_size=256, n_rounds=10")
    if reg is not None and not reg > 0:
        raise InputError(SOURCE, "reg", f"must be positive, got {reg!r}", "pass reg > 0 (entropic OT), or None (exact)")
    rng = np.random.default_rng(seed)
    n, m = len(reference), len(query)
    bs = min(batch_size, n, m)
    for _ in range(n_rounds):
        q_order, r_order = rng.permutation(m), rng.permutation(n)
        for j, a in enumerate(range(0, m, bs)):
            q = q_order[a : a + bs]
            r = np.take(r_order, np.arange(j * bs, j * bs + bs), mode="wrap")
            cost = ot.dist(query[q], reference[r])
            cost /= max(float(cost.max()), 1e-12)
            wq, wr = np.full(len(q), 1.0 / len(q)), np.full(len(r), 1.0 / len(r))
            plan = ot.emd(wq, wr, cost) if reg is None else ot.sinkhorn(wq, wr, cost, reg)
            yield q, r, plan


def ot_transfer(reference: np.ndarray, values: np.ndarray, query: np.ndarray, **options) -> np.ndarray:
    """Transport-weighted mean of reference ``values`` (e.g. spatial coordinates) for every query cell.

    Parameters
    ----------
    reference, query
        Embeddings ``(N, d)`` and ``(M, d)``.
    values
        ``(N, k)`` values of the reference cells.
    **options
        ``batch_size``, ``n_rounds``, ``reg``, ``seed`` of :func:`minibatch_plans`.

    Returns
    -------
    numpy.ndarray
        ``(M, k)``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) != len(reference):
        raise InputError(SOURCE, "values", f"expected ({len(reference)}, k) values, got shape {values.shape}",
                         "give one row of values per reference cell")
    return _accumulate(reference, query, values.shape[1], lambda r: values[r], options)


def ot_vote(reference: np.ndarray, labels: np.ndarray, query: np.ndarray,
            **options) -> tuple[np.ndarray, np.ndarray]:
    """Label of each query cell by the reference label mass optimal transport sends it.

    Parameters
    ----------
    reference, labels
        Reference embedding ``(N, d)`` and its integer label codes ``(N,)``.
    query
        Query embedding ``(M, d)``.
    **options
        ``batch_size``, ``n_rounds``, ``reg``, ``seed`` of :func:`minibatch_plans`.

    Returns
    -------
    predicted, confidence
        Label code per query cell and the share of its transported mass that label got.
    """
    labels = np.asarray(labels)
    if len(labels) != len(reference):
        raise InputError(SOURCE, "labels", f"{len(labels)} labels for {len(reference)} reference cells",
                         "give one label per reference cell")
    n_labels = int(labels.max()) + 1
    eye = np.eye(n_labels)
    share = _accumulate(reference, query, n_labels, lambda r: eye[labels[r]], options)
    return share.argmax(1), share.max(1).astype(np.float32)


def _accumulate(reference: np.ndarray, query: np.ndarray, width: int, rows: Callable[[np.ndarray], np.ndarray],
                options: dict) -> np.ndarray:
    total = np.zeros((len(query), width))
    mass = np.zeros(len(query))
    for q, r, plan in minibatch_plans(reference, query, **options):
        total[q] += plan @ rows(r)
        mass[q] += plan.sum(1)
    return total / np.maximum(mass, 1e-300)[:, None]


def ot_transfer_labels(reference: str | os.PathLike, query: str | os.PathLike, label_key: str,
                       obsm_key: str = "X_cellweave", **options) -> pd.DataFrame:
    """Transfer ``obs[label_key]`` between embedding stores (``RUN/embeddings/<m>.zarr``) by minibatch OT.

    Parameters
    ----------
    reference, query
        Embedding stores; the reference holds the labels.
    label_key
        Obs column of the reference's labels.
    obsm_key
        The embedding.
    **options
        ``batch_size``, ``n_rounds``, ``reg``, ``seed`` of :func:`minibatch_plans`.

    Returns
    -------
    DataFrame
        Indexed by the query cell ids: ``predicted``, ``confidence``, and ``true`` when the query has the key.
    """
    return vote_between_stores(reference, query, label_key, obsm_key, lambda r, lab, q: ot_vote(r, lab, q, **options))


def _check(X: np.ndarray, name: str) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise InputError(SOURCE, name, f"expected a non-empty (cells, dims) embedding, got shape {X.shape}",
                         "pass the embedding of the modality's cells")
    return X
