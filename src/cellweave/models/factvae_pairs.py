"""FactVAE's gene-peak pairs: the candidates to score and the prior (known) pairs among them.

From a table (TSV or DataFrame with columns ``gene``, ``peak`` and optionally ``prior``, e.g. the simulator's
``gene_peak_links.tsv``; other columns are ignored) or from genomic windows over a genes BED: candidates are the
peaks within ``distance`` bp of a gene's TSS (scGLUE's 150 kb), and the prior pairs are those whose peak overlaps
the gene body or ``upstream`` bp before the TSS (the gene-activity rule of the FactVAE paper).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..links.gene_activity import gene_windows, overlaps, parse_peaks, read_genes_bed
from ..links.match import NameMatcher

COLUMNS = ("gene", "peak", "prior")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def read_pair_table(source: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """``gene, peak[, prior]`` rows from a TSV (header line, tab-separated) or a DataFrame.

    Raises
    ------
    InputError
        Naming the file and column when ``gene`` / ``peak`` are missing or a ``prior`` value is not a boolean.
    """
    where = "gene-peak table (DataFrame)" if isinstance(source, pd.DataFrame) else str(source)
    if isinstance(source, pd.DataFrame):
        table = source.copy()
    else:
        try:
            table = pd.read_csv(source, sep="\t", comment="#", dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise InputError(source, "path", "does not exist", "pass an existing gene-peak TSV") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(source, "contents", f"not a readable TSV ({exc})",
                             "write a tab-separated file with a header: gene, peak[, prior]") from None
    for col in ("gene", "peak"):
        if col not in table.columns:
            raise InputError(where, f"column {col!r}", f"missing (columns: {', '.join(map(str, table.columns))})",
                             "give a header with the columns gene and peak (and optionally prior: true/false)")
    out = pd.DataFrame({"gene": table["gene"].astype(str).str.strip(), "peak": table["peak"].astype(str).str.strip()})
    if "prior" in table.columns:
        out["prior"] = _booleans(table["prior"], where)
    return out


def _booleans(values: pd.Series, where: str) -> np.ndarray:
    if values.dtype == bool:
        return values.to_numpy()
    text = values.astype(str).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(where, f"column 'prior', row {i + 1}", f"{values.iloc[i]!r} is not true or false",
                         "write true/false (or 1/0) in the prior column")
    return text.isin(_TRUE).to_numpy()


def window_pairs(gene_names: Sequence[str], peak_names: Sequence[str], genes_bed: str | os.PathLike | pd.DataFrame,
                 upstream: int = 2000, distance: int = 150_000) -> pd.DataFrame:
    """Candidate pairs (peak within ``distance`` of the TSS) with ``prior`` = overlap of the body or promoter window.

    Parameters
    ----------
    gene_names, peak_names
        The RNA and ATAC features (peaks named ``chr:start-end``).
    genes_bed
        Gene coordinates (BED6 or a DataFrame, see :func:`~cellweave.links.read_genes_bed`).
    upstream
        Promoter length before the TSS in the prior window.
    distance
        Largest TSS-peak distance of a candidate.

    Returns
    -------
    pandas.DataFrame
        ``gene, peak, prior``.
    """
    if upstream < 0 or distance < 0:
        raise InputError("gene-peak windows", "upstream/distance", f"negative ({upstream}, {distance})", "give lengths >= 0 bp")
    p_chrom, p_start, p_end = parse_peaks(peak_names, "atac")
    genes = read_genes_bed(genes_bed)
    matcher = NameMatcher(gene_names)
    genes["feature"] = [matcher.find(n) for n in genes["name"]]
    genes = genes[genes["feature"].notna()].reset_index(drop=True)
    if genes.empty:
        raise InputError(str(genes_bed) if not isinstance(genes_bed, pd.DataFrame) else "genes_bed", "name",
                         "no gene of the BED is among the RNA features", "pass the BED of the genome the RNA was measured on")
    tss = np.where((genes["strand"] == "-").to_numpy(), genes["end"].to_numpy(), genes["start"].to_numpy())
    chrom = genes["chrom"].to_numpy()
    g, p = overlaps(chrom, np.maximum(tss - distance, 0), tss + distance + 1, p_chrom, p_start, p_end)
    w_start, w_end = gene_windows(genes, upstream)
    pg, pp = overlaps(chrom, w_start, w_end, p_chrom, p_start, p_end)
    prior = set(zip(pg.tolist(), pp.tolist()))
    g, p = np.concatenate([g, pg]), np.concatenate([p, pp])  # prior pairs are candidates even past `distance`
    peaks = np.asarray(peak_names, dtype=object).astype(str)
    table = pd.DataFrame({"gene": genes["feature"].to_numpy()[g], "peak": peaks[p],
                          "prior": [(a, b) in prior for a, b in zip(g.tolist(), p.tolist())]})
    return table.drop_duplicates(["gene", "peak"], ignore_index=True)


def index_pairs(table: pd.DataFrame, gene_names: Sequence[str], peak_names: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows whose gene and peak are model features (duplicates dropped) and their ``(gene, peak)`` indices."""
    g = pd.Index(gene_names).get_indexer(table["gene"])
    p = pd.Index(peak_names).get_indexer(table["peak"])
    keep = (g >= 0) & (p >= 0)
    kept = table.loc[keep].assign(_g=g[keep], _p=p[keep]).drop_duplicates(["_g", "_p"])
    idx = kept[["_g", "_p"]].to_numpy(dtype=np.int64).reshape(-1, 2)
    return kept.drop(columns=["_g", "_p"]).reset_index(drop=True), idx
