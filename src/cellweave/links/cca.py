"""Regularised canonical correlation analysis of matched cell pairs, by whitening and one SVD.

With centred ``X`` (n x p) and ``Y`` (n x q), ``Cxx = X'X / (n - 1) + ridge * mean(diag) * I`` (likewise ``Cyy``)
and ``Cxy = X'Y / (n - 1)``, the canonical pairs are the singular vectors of the whitened cross-covariance
``T = Cxx^{-1/2} Cxy Cyy^{-1/2} = U S V'``: weights ``A = Cxx^{-1/2} U``, ``B = Cyy^{-1/2} V``, canonical
correlations ``S`` (exact for ``ridge = 0``). The scores ``(X - mean) A`` have unit variance on the fitted rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# An eigenvalue of a covariance below this share of the largest makes the covariance singular.
SINGULAR_TOL = 1e-10


@dataclass(frozen=True)
class CCAFit:
    """A fitted CCA: means, weights and canonical correlations (strongest first).

    Attributes
    ----------
    x_mean, y_mean
        Column means of the fitted ``X`` (p,) and ``Y`` (q,).
    x_weights, y_weights
        ``(p, K)`` and ``(q, K)``: canonical scores are ``(X - x_mean) @ x_weights``.
    correlations
        ``(K,)`` canonical correlations, descending.
    """

    x_mean: np.ndarray
    y_mean: np.ndarray
    x_weights: np.ndarray
    y_weights: np.ndarray
    correlations: np.ndarray

    def transform_x(self, x: np.ndarray) -> np.ndarray:
        """Canonical scores of rows of the first set."""
        return (np.asarray(x, dtype=np.float64) - self.x_mean) @ self.x_weights

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        """Canonical scores of rows of the second set."""
        return (np.asarray(y, dtype=np.float64) - self.y_mean) @ self.y_weights


def _inverse_sqrt(cov: np.ndarray, ridge: float, name: str) -> np.ndarray:
    """``(cov + ridge * mean(diag) * I)^{-1/2}``; a singular result is an :class:`InputError`."""
    scale = float(np.mean(np.diag(cov))) if cov.size else 0.0
    cov = cov + ridge * scale * np.eye(len(cov))
    values, vectors = np.linalg.eigh(cov)
    top = float(values[-1]) if len(values) else 0.0
    if top <= 0 or values[0] <= SINGULAR_TOL * top:
        rank = int((values > SINGULAR_TOL * max(top, 0.0)).sum()) if top > 0 else 0
        raise InputError("cca", name, f"the covariance of the {len(cov)} {name} features over the pivots is singular "
                         f"(rank {rank})", "pass a ridge > 0 (e.g. ridge=0.1), use fewer reduced components, or "
                         "find more pivots (more shared markers, more sampled cells)")
    return (vectors / np.sqrt(values)) @ vectors.T


def fit_cca(x: np.ndarray, y: np.ndarray, n_components: int | None = None, ridge: float = 0.0) -> CCAFit:
    """Canonical correlation analysis of paired rows ``x[i] <-> y[i]``.

    Parameters
    ----------
    x, y
        ``(n, p)`` and ``(n, q)`` matrices whose row ``i`` is one matched pair (a pivot).
    n_components
        Canonical pairs kept (default and most: ``min(p, q)``).
    ridge
        Added to each covariance's diagonal as a share of its mean variance (0: classical CCA).

    Returns
    -------
    CCAFit

    Raises
    ------
    InputError
        With fewer than 3 pairs, mismatched rows, a negative ridge, or a singular covariance (with the fix: a
        ridge, fewer components, more pivots).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise InputError("cca", "x, y", f"need two 2-D matrices with one row per pivot, got shapes {x.shape} and {y.shape}",
                         "pass the two modalities' features of the same matched pairs")
    if len(x) < 3:
        raise InputError("cca", "pivots", f"{len(x)} matched pairs are too few for CCA",
                         "find more pivots: give more shared markers or sample more cells")
    if ridge < 0:
        raise InputError("cca", "ridge", f"ridge={ridge} is negative", "pass ridge >= 0")
    k = min(x.shape[1], y.shape[1])
    if n_components is not None:
        if n_components < 1:
            raise InputError("cca", "n_components", f"n_components={n_components} is not positive", "pass 1 or more")
        k = min(k, n_components)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    n = len(x) - 1
    wx = _inverse_sqrt(xc.T @ xc / n, ridge, "source")
    wy = _inverse_sqrt(yc.T @ yc / n, ridge, "target")
    u, s, vt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy, full_matrices=False)
    return CCAFit(x_mean, y_mean, wx @ u[:, :k], wy @ vt[:k].T, np.clip(s[:k], 0.0, 1.0))
