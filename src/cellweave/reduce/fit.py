"""PCA and LSI fitted out of core: every pass reads the store chunk by chunk; no cells x features matrix is held.

Two solvers of the same problem, the top eigenvectors of the (centred) Gram matrix ``A^T A`` of the
transformed cells ``A`` (``n_cells x d``):

* **exact** (``d <= exact_max_features``): one pass accumulates ``A^T A`` and the column sums in float64
  (``d x d``: 128 MiB at 4,096 features), then an eigendecomposition. Equal to a dense SVD up to rounding.
* **randomized** (wider inputs, e.g. peaks): randomized subspace iteration on ``A^T A`` (Halko, Martinsson &
  Tropp 2011, alg. 4.4, with the Gram applied chunk by chunk): one pass for the column moments, then
  ``n_iter + 1`` passes that each compute ``Z = A_c^T (A_c Q)`` and ``C = (A_c Q)^T (A_c Q)`` for the current
  orthonormal basis ``Q`` (``d x (k + oversamples)``); ``Q <- orth(Z)`` between passes, and a Rayleigh-Ritz step
  on the last ``C`` gives the components. Centring (PCA) is implicit: ``A_c Q = A Q - 1 (mean . Q)``, so sparse
  chunks stay sparse. Memory: a chunk plus a few ``d x (k + oversamples)`` matrices.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ..data.fingerprint import record_source, still_current
from ..data.preprocess import Preprocess, load_or_compute_stats
from ..data.store import ModalityStore
from ..errors import InputError
from .reduction import InputTransform, Reduction, _to_torch

CHUNK = 8192
EXACT_MAX_FEATURES = 4096
DENSE_GRAM_VALUES = 1 << 23  # chunk values densified at once by the exact Gram pass (64 MiB float64)
OVERSAMPLES = 10
N_ITER = 4

Prepared = sp.csr_matrix | np.ndarray


def _chunks(store: ModalityStore, cols: np.ndarray | None, transform: InputTransform, batch_size: int,
            bar) -> Iterator[Prepared]:
    """The store's transformed rows over ``cols``, chunk by chunk (CSR or dense float64)."""
    for start in range(0, store.n_obs, batch_size):
        X = store.read_X([(start, min(start + batch_size, store.n_obs))])
        library = np.asarray(X.sum(1), dtype=np.float64).ravel()
        if cols is not None:
            X = X[:, cols]
        X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
        out = transform.apply(_to_torch(X), torch.from_numpy(library))
        if out.layout == torch.sparse_csr:
            yield sp.csr_matrix((out.values().numpy(), out.col_indices().numpy(), out.crow_indices().numpy()), shape=X.shape)
        else:
            yield out.numpy()
        bar.update(X.shape[0])


def _moments(chunks: Iterator[Prepared], d: int) -> tuple[np.ndarray, np.ndarray]:
    """Column sums and sums of squares."""
    s, ss = np.zeros(d), np.zeros(d)
    for M in chunks:
        s += np.asarray(M.sum(0)).ravel()
        ss += np.asarray(M.multiply(M).sum(0)).ravel() if sp.issparse(M) else (M * M).sum(0)
    return s, ss


def _exact(chunks: Iterator[Prepared], d: int) -> tuple[np.ndarray, np.ndarray]:
    """Gram matrix ``A^T A`` and column sums in one pass.

    Sparse chunks are densified (float64) a few rows at a time: with at most a few thousand features the BLAS
    product is several times faster than scipy's sparse one and accumulates in float64.
    """
    G, s = np.zeros((d, d)), np.zeros(d)
    rows = max(1, DENSE_GRAM_VALUES // max(d, 1))
    for M in chunks:
        for start in range(0, M.shape[0], rows):
            B = M[start : start + rows]
            B = B.toarray() if sp.issparse(B) else B
            B = np.asarray(B, dtype=np.float64)
            G += B.T @ B
            s += B.sum(0)
    return G, s


def _gram_times(chunks: Iterator[Prepared], Q: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Z = A_c^T A_c Q`` and ``C = Q^T A_c^T A_c Q`` for the centred ``A_c = A - 1 mean^T``, in one pass."""
    Z, C = np.zeros_like(Q), np.zeros((Q.shape[1], Q.shape[1]))
    shift = mean @ Q
    for M in chunks:
        Y = np.asarray(M @ Q) - shift
        Z += np.asarray(M.T @ Y) - np.outer(mean, Y.sum(0))
        C += Y.T @ Y
    return Z, C


def _flip(V: np.ndarray) -> np.ndarray:
    """Signs such that the largest-magnitude loading of each row is positive (scikit-learn's convention)."""
    pick = np.abs(V).argmax(1)
    return V * np.sign(V[np.arange(len(V)), pick])[:, None]


def _solve(passes: Callable[[], Iterator[Prepared]], d: int, n: int, k: int, center: bool, seed: int, n_iter: int,
           exact_max_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of the (centred) Gram matrix: ``(components (k, d), eigenvalues, mean, column sumsq)``."""
    if d <= exact_max_features:
        G, s = _exact(passes(), d)
        mean = s / n
        if center:
            G = G - n * np.outer(mean, mean)
        w, V = np.linalg.eigh(G)
        order = np.argsort(w)[::-1][:k]
        return _flip(V[:, order].T), np.maximum(w[order], 0.0), mean, np.diag(G) + (n * mean**2 if center else 0.0)
    s, ss = _moments(passes(), d)
    mean = s / n
    shift = mean if center else np.zeros(d)
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, min(d, k + OVERSAMPLES))))
    for it in range(n_iter + 1):
        Z, C = _gram_times(passes(), Q, shift)
        if it < n_iter:
            Q, _ = np.linalg.qr(Z)
    w, W = np.linalg.eigh(C)
    order = np.argsort(w)[::-1][:k]
    return _flip((Q @ W[:, order]).T), np.maximum(w[order], 0.0), mean, ss


def _features(store: ModalityStore, features: Sequence[str] | None) -> tuple[list[str], np.ndarray | None]:
    names = list(map(str, store.var_names))
    if features is None:
        return names, None
    features = list(map(str, features))
    pos = store.var_names.get_indexer(features)
    if (pos < 0).any():
        missing = [f for f, p in zip(features, pos) if p < 0][:5]
        raise InputError(store.path, "var_names", f"{int((pos < 0).sum())} requested features are absent, e.g. {missing}",
                         "request features the store has (see store.var_names)")
    if len(set(features)) != len(features):
        raise InputError(store.path, "features", "a feature is requested twice", "list each feature once")
    return features, (None if features == names else pos)


def _check_k(store: ModalityStore, k: int, d: int, what: str) -> None:
    if not 1 <= k <= min(d, store.n_obs):
        raise InputError(store.path, "n_components", f"{what} of {k} components from {d} features and {store.n_obs} cells",
                         f"ask for 1 to {min(d, store.n_obs)} components")


def _bar(store: ModalityStore, total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{desc} {store.modality}", unit="cells", disable=not progress)


def fit_pca(store: ModalityStore, n_components: int = 50, features: Sequence[str] | None = None,
            preprocess: Preprocess | None = None, batch_size: int = CHUNK, seed: int = 0, n_iter: int = N_ITER,
            exact_max_features: int = EXACT_MAX_FEATURES, progress: bool = False) -> Reduction:
    """PCA of a store's cells, out of core.

    Parameters
    ----------
    store
        The modality.
    n_components
        Components kept.
    features
        Features to reduce, in this order (default: ``preprocess.features``, else the ``preprocess.n_top_genes``
        highly variable ones, else all).
    preprocess
        ``normalize`` (``log1p(target_sum * x / library)`` for count stores; normalized stores are used as they
        are), ``target_sum``, ``n_top_genes``, ``scale`` and ``max_value`` as in the stream. Default:
        log-normalised, not scaled.
    batch_size
        Cells read per chunk.
    seed
        Seed of the randomized solver's start.
    n_iter
        Power iterations of the randomized solver (each one pass over the store).
    exact_max_features
        Up to this many features the exact one-pass solver is used.
    progress
        Show a progress bar.

    Returns
    -------
    Reduction

    Raises
    ------
    InputError
        On absent features or more components than features or cells.
    """
    pp = preprocess or Preprocess(normalize=True, scale=False, max_value=None)
    counts = store.kind == "counts"
    if pp.scale and counts and not pp.normalize:
        raise InputError(store.path, "preprocess", "scaling raw counts is not supported",
                         "scale log-normalised values (normalize=True), or do not scale")
    top = features is None and pp.features is None and pp.n_top_genes is not None
    if top and not counts:
        raise InputError(store.path, "n_top_genes", "highly variable features need a counts store", "pass features=...")
    stats = load_or_compute_stats(store, pp.target_sum, hvg=top, progress=progress) if pp.scale or top else None
    names, cols = _features(store, stats.hvg(pp.n_top_genes) if top else features if features is not None else pp.features)
    lognorm = pp.normalize and counts
    transform = InputTransform("lognorm" if lognorm else "none", pp.target_sum if lognorm else None)
    if pp.scale:  # the stream's scaling: moments of log1p(normalize_total(x)) (of x for normalized stores)
        pos = store.var_names.get_indexer(names)
        sd = np.sqrt(stats.log_var[pos])
        transform = InputTransform(transform.normalize, transform.target_sum, center=stats.log_mean[pos].astype(np.float64),
                                   sd=np.where(sd > 0, sd, 1.0), max_value=pp.max_value)
    return _fit(store, "pca", names, cols, transform, n_components, 0, True, batch_size, seed, n_iter,
                exact_max_features, progress)


def fit_lsi(store: ModalityStore, n_components: int = 50, features: Sequence[str] | None = None,
            scale_factor: float = 1e4, skip_first: bool = True, batch_size: int = CHUNK, seed: int = 0,
            n_iter: int = N_ITER, exact_max_features: int = EXACT_MAX_FEATURES, progress: bool = False) -> Reduction:
    """Latent semantic indexing (TF-IDF, then a truncated SVD without centring) of a store's cells, out of core.

    TF-IDF as Signac's default: ``log1p(scale_factor * (x / library) * idf)`` with ``library`` the cell's total
    over all features and ``idf = n_cells / n_cells_with_feature`` (from the statistics kept beside the data).

    Parameters
    ----------
    store
        The modality (peak counts).
    n_components
        Components kept.
    features
        Features to reduce, in this order (default: all).
    scale_factor
        TF-IDF scale factor.
    skip_first
        Fit ``n_components + 1`` components and drop the first, which mostly follows sequencing depth.
    batch_size, seed, n_iter, exact_max_features, progress
        As for :func:`fit_pca`.

    Returns
    -------
    Reduction

    Raises
    ------
    InputError
        On absent features, a store that does not hold counts, or more components than features or cells.
    """
    if store.kind != "counts":
        raise InputError(store.path, "X", "LSI (TF-IDF) needs raw counts, this store is normalized",
                         "pass the peak counts store, or reduce it with fit_pca")
    names, cols = _features(store, features)
    stats = load_or_compute_stats(store, hvg=False, progress=progress)
    df = stats.n_expressed[store.var_names.get_indexer(names)]
    transform = InputTransform("tfidf", float(scale_factor), idf=store.n_obs / np.maximum(df, 1.0))
    return _fit(store, "lsi", names, cols, transform, n_components, int(skip_first), False, batch_size, seed, n_iter,
                exact_max_features, progress)


def _fit(store: ModalityStore, method: str, names: list[str], cols: np.ndarray | None, transform: InputTransform,
         n_components: int, skip: int, center: bool, batch_size: int, seed: int, n_iter: int, exact_max_features: int,
         progress: bool) -> Reduction:
    d, n = len(names), store.n_obs
    k = n_components + skip
    _check_k(store, k, d, method.upper())
    n_passes = 1 if d <= exact_max_features else n_iter + 2
    with _bar(store, n_passes * n, method, progress) as bar:
        V, w, mean, ss = _solve(lambda: _chunks(store, cols, transform, batch_size, bar), d, n, k, center, seed, n_iter,
                                exact_max_features)
    V, w = V[skip:], w[skip:]
    if center:  # PCA: variances with ddof=1, as scikit-learn's PCA
        variance = w / max(n - 1, 1)
        total = float((ss - n * mean**2).sum()) / max(n - 1, 1)
    else:  # LSI: variances of the projections with ddof=0, as scikit-learn's TruncatedSVD
        variance = w / n - (V @ mean) ** 2
        total = float((ss / n - mean**2).sum())
        mean = np.zeros(d)
    return Reduction(method, list(map(str, store.var_names)), names, transform, V, mean, np.sqrt(w), variance,
                     variance / total if total > 0 else np.zeros_like(variance), n, skip)


def load_or_fit(store: ModalityStore, method: str, progress: bool = False, **settings) -> Reduction:
    """A reduction kept beside the data (``store.stats_dir/reductions``), fitted and saved on first use.

    Parameters
    ----------
    store
        The modality.
    method
        ``"pca"`` (:func:`fit_pca`) or ``"lsi"`` (:func:`fit_lsi`).
    progress
        Show progress while fitting.
    **settings
        Arguments of the fitting function; a reduction fitted with other settings is kept apart.
    """
    fitters = {"pca": fit_pca, "lsi": fit_lsi}
    if method not in fitters:
        raise InputError(store.path, "method", f"unknown reduction {method!r}", "use 'pca' or 'lsi'")
    path = store.stats_dir / "reductions" / f"{method}-{_fingerprint(store, method, settings)}"
    if path.exists() and still_current(store, path):
        found = Reduction.load(path)
        if found.n_cells == store.n_obs and found.var_names == list(map(str, store.var_names)):
            return found
    reduction = fitters[method](store, progress=progress, **settings)
    reduction.save(path, overwrite=True)
    record_source(store, path)
    return reduction


def _fingerprint(store: ModalityStore, method: str, settings: dict) -> str:
    def plain(value):
        if isinstance(value, Preprocess):
            return {k: plain(v) for k, v in vars(value).items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    text = json.dumps({"method": method, "settings": {k: plain(v) for k, v in sorted(settings.items())},
                       "n_obs": store.n_obs, "var_names": list(map(str, store.var_names))}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
