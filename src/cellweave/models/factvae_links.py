"""Gene-peak link scores from feature embeddings, with significance against shuffled pairs (FactVAE, after scGLUE).

The score of a candidate pair is the cosine of the gene's and the peak's embeddings. The two decoders read
different cell embeddings (the RNA and the ATAC encoder's), so a gene's and a peak's embedding are only
comparable once expressed in one coordinate system: :func:`latent_map` fits, by least squares over paired
cells, the linear map from RNA latent coordinates to ATAC ones, ``z_atac ~ z_rna S``; the peak's logit
``z_atac . w_p`` is then ``z_rna . (S w_p)``, so ``S w_p`` is the peak's embedding in RNA coordinates (the paper
compares the raw embeddings, which agree only as far as the prior pairs tie the two spaces together). Its p-value is
empirical: the fraction of a background of cosines of *shuffled* pairs (the candidates' genes matched with
randomly drawn candidates' peaks, so the background has the same genes and peaks as the candidates, in
random combinations) at least as large, ``(1 + #{background >= score}) / (1 + n_background)``. Q-values are
Benjamini-Hochberg adjusted p-values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

#: pairs scored per block (bounds the temporary (block, d) arrays)
BLOCK = 1 << 16


def _unit_rows(emb: np.ndarray, name: str) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise InputError("link_scores", name, f"expected a (features, dims) matrix, got shape {emb.shape}",
                         "pass the model's feature_embeddings()")
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norm > 0, norm, 1.0)


def pair_cosines(gene_unit: np.ndarray, peak_unit: np.ndarray, genes: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Cosines of unit-row embeddings for index arrays ``genes`` and ``peaks`` (computed in blocks)."""
    out = np.empty(len(genes), dtype=np.float64)
    for start in range(0, len(genes), BLOCK):
        sl = slice(start, start + BLOCK)
        out[sl] = np.einsum("ij,ij->i", gene_unit[genes[sl]], peak_unit[peaks[sl]])
    return out


class LatentMoments:
    """Streamed sums over paired cells of ``z_rna`` and ``z_atac`` posterior means, for :func:`latent_map`."""

    def __init__(self, n_latent: int) -> None:
        self.n = 0
        self.sum_rna = np.zeros(n_latent)
        self.sum_atac = np.zeros(n_latent)
        self.rna_rna = np.zeros((n_latent, n_latent))
        self.rna_atac = np.zeros((n_latent, n_latent))

    def add(self, z_rna: np.ndarray, z_atac: np.ndarray) -> None:
        """Add the cells of one paired minibatch (rows of both arrays are the same cells)."""
        z_rna, z_atac = np.asarray(z_rna, dtype=np.float64), np.asarray(z_atac, dtype=np.float64)
        self.n += len(z_rna)
        self.sum_rna += z_rna.sum(0)
        self.sum_atac += z_atac.sum(0)
        self.rna_rna += z_rna.T @ z_rna
        self.rna_atac += z_rna.T @ z_atac


def latent_map(moments: LatentMoments, ridge: float = 1e-6) -> np.ndarray:
    """The least-squares map ``S`` ``(d, d)`` with ``z_atac - mean ~ (z_rna - mean) S`` over the cells seen.

    A small ridge (relative to the mean variance) keeps the solve defined when a latent dimension is unused.

    Raises
    ------
    InputError
        With fewer cells than latent dimensions.
    """
    d = len(moments.sum_rna)
    if moments.n <= d:
        raise InputError("link_scores", "cells", f"{moments.n} paired cells for a {d}-dim latent map",
                         f"score links of a model with more than {d} paired cells")
    mean_r, mean_a = moments.sum_rna / moments.n, moments.sum_atac / moments.n
    cov_rr = moments.rna_rna / moments.n - np.outer(mean_r, mean_r)
    cov_ra = moments.rna_atac / moments.n - np.outer(mean_r, mean_a)
    cov_rr += np.eye(d) * ridge * max(np.trace(cov_rr) / d, 1e-12)
    return np.linalg.solve(cov_rr, cov_ra)


def link_scores(gene_emb: np.ndarray, peak_emb: np.ndarray, pairs: np.ndarray, n_background: int = 100_000,
                seed: int = 0, gene_names: Sequence[str] | None = None,
                peak_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Score candidate gene-peak pairs by the cosine of their feature embeddings.

    Parameters
    ----------
    gene_emb, peak_emb
        Feature embeddings ``(n_genes, d)`` and ``(n_peaks, d)`` (e.g. ``FactVAEModule.feature_embeddings()``).
    pairs
        Candidate pairs ``(n_pairs, 2)``: (gene row, peak row).
    n_background
        Number of shuffled pairs in the background.
    seed
        Seed of the shuffling.
    gene_names, peak_names
        Names for the ``gene`` and ``peak`` columns (default: the row indices).

    Returns
    -------
    pandas.DataFrame
        One row per candidate pair, in the order given: ``gene``, ``peak``, ``score`` (cosine), ``pvalue``
        (one-sided, large cosines significant) and ``qvalue`` (Benjamini-Hochberg).

    Raises
    ------
    InputError
        On embeddings of different widths, a malformed pair array or out-of-range indices.
    """
    g_unit, p_unit = _unit_rows(gene_emb, "gene_emb"), _unit_rows(peak_emb, "peak_emb")
    if g_unit.shape[1] != p_unit.shape[1]:
        raise InputError("link_scores", "peak_emb", f"gene and peak embeddings differ in width ({g_unit.shape[1]} vs "
                         f"{p_unit.shape[1]})", "pass embeddings from the same model")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise InputError("link_scores", "pairs", f"expected an integer array of shape (n_pairs, 2), got {pairs.shape} "
                         f"{pairs.dtype}", "pass rows (gene index, peak index)")
    if len(pairs) == 0:
        raise InputError("link_scores", "pairs", "no candidate pair to score", "pass at least one (gene, peak) pair")
    genes, peaks = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    if genes.min() < 0 or peaks.min() < 0 or genes.max() >= len(g_unit) or peaks.max() >= len(p_unit):
        raise InputError("link_scores", "pairs", f"indices out of range for {len(g_unit)} genes and {len(p_unit)} peaks",
                         "index the rows of gene_emb and peak_emb")
    if n_background < 1:
        raise InputError("link_scores", "n_background", f"must be >= 1, got {n_background}", "use e.g. 100000")
    for names, n, field in ((gene_names, len(g_unit), "gene_names"), (peak_names, len(p_unit), "peak_names")):
        if names is not None and len(names) != n:
            raise InputError("link_scores", field, f"{len(names)} names for {n} embedding rows", "pass one name per row")

    from scipy.stats import false_discovery_control  # imported where used: keeps `import cellweave` light

    score = pair_cosines(g_unit, p_unit, genes, peaks)
    rng = np.random.default_rng(seed)
    bg_genes = genes[rng.integers(len(genes), size=n_background)]
    bg_peaks = peaks[rng.integers(len(peaks), size=n_background)]
    background = np.sort(pair_cosines(g_unit, p_unit, bg_genes, bg_peaks))
    n_ge = n_background - np.searchsorted(background, score, side="left")
    pvalue = (1.0 + n_ge) / (1.0 + n_background)
    return pd.DataFrame({
        "gene": genes if gene_names is None else np.asarray(gene_names)[genes],
        "peak": peaks if peak_names is None else np.asarray(peak_names)[peaks],
        "score": score, "pvalue": pvalue, "qvalue": false_discovery_control(pvalue),
    })
