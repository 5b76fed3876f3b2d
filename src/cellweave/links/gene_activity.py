"""Gene activity links: a gene is linked to the ATAC peaks over its body or its promoter window.

A peak named ``chr:start-end`` (or ``chr-start-end``, ``chr_start_end``; 0-based half-open like BED) links to a
gene when it overlaps ``[start - upstream, end)`` of a ``+`` strand gene or ``[start, end + upstream)`` of a ``-``
strand gene (the gene body plus ``upstream`` bp before the TSS); a gene of unknown strand (``.``) uses its body.
Chromosome names are compared without a ``chr`` prefix and with ``M`` = ``MT``. Overlaps are found per window by
binary search over peaks sorted by start (peaks are short, so the search is bounded by the longest peak), in time
proportional to the number of overlaps, never peaks x genes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .feature_links import FeatureLinks
from .match import NameMatcher

BED_COLUMNS = ("chrom", "start", "end", "name", "score", "strand")
#: ``chrom SEP start SEP end``; digits hold no separator, so the lazy chromosome still ends at the last two numbers.
_PEAK = re.compile(r"(.+?)[:_-](\d+)[_-](\d+)")
_BED_FIX = "give a BED6 file (tab-separated chrom, start, end, name, score, strand; 0-based half-open) of genes"


def chrom_key(chrom: str) -> str:
    """Chromosome name for comparison: no ``chr`` prefix, lower case, ``m`` spelled ``mt``."""
    key = chrom.strip().lower()
    key = key[3:] if key.startswith("chr") else key
    return "mt" if key == "m" else key


def parse_peaks(peak_names: Sequence[str], source: str = "peaks") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chromosome (as :func:`chrom_key`), start and end of peaks named ``chr:start-end`` (or with ``-``, ``_``).

    Parameters
    ----------
    peak_names
        The ATAC feature names.
    source
        Name of the modality (for error messages).

    Returns
    -------
    chrom, start, end : numpy.ndarray
        object, int64, int64 arrays.

    Raises
    ------
    InputError
        When a name does not parse or has end < start.
    """
    names = np.asarray(peak_names, dtype=object).astype(str)
    matches = [_PEAK.fullmatch(name) for name in names]
    bad = np.array([m is None for m in matches], dtype=bool)
    if bad.any():
        examples = ", ".join(repr(n) for n in names[bad][:5])
        raise InputError(source, "feature names",
                         f"{int(bad.sum())} features are not peaks named chr:start-end, e.g. {examples}",
                         "keep only peak features (chr1:10109-10357, chr1-10109-10357 or chr1_10109_10357)")
    parts = np.array([m.groups() for m in matches], dtype=object).reshape(-1, 3)
    start, end = parts[:, 1].astype(np.int64), parts[:, 2].astype(np.int64)
    if (end < start).any():
        i = int(np.flatnonzero(end < start)[0])
        raise InputError(source, "feature names", f"peak {names[i]!r} ends before it starts", "fix the peak coordinates")
    codes, chroms = pd.factorize(parts[:, 0])
    return np.array([chrom_key(c) for c in chroms], dtype=object)[codes], start, end


def read_genes_bed(genes_bed: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """Genes as a frame with ``chrom`` (as :func:`chrom_key`), ``start``, ``end``, ``name``, ``strand``.

    Parameters
    ----------
    genes_bed
        A BED6 file (``track``, ``browser`` and ``#`` lines are skipped) or a DataFrame with columns ``chrom, start,
        end, name, strand`` (``score`` optional).

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    InputError
        Naming the file (or frame), the line (or row) and column of a malformed entry.
    """
    if isinstance(genes_bed, pd.DataFrame):
        source, frame = "genes_bed (DataFrame)", genes_bed
        missing = [c for c in ("chrom", "start", "end", "name", "strand") if c not in frame.columns]
        if missing:
            raise InputError(source, f"column {missing[0]!r}", "the column is missing", _BED_FIX)
        lines = [f"row {i}" for i in range(len(frame))]
        cells = frame[["chrom", "start", "end", "name", "strand"]].astype(str).to_numpy()
    else:
        source, lines, rows = str(genes_bed), [], []
        with open(genes_bed, encoding="utf-8") as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip() or raw.startswith(("#", "track", "browser")):
                    continue
                fields = raw.rstrip("\r\n").split("\t")
                if len(fields) < 6:
                    raise InputError(source, f"line {line_no}", f"{len(fields)} tab-separated columns, BED6 needs 6",
                                     _BED_FIX)
                rows.append([fields[0], fields[1], fields[2], fields[3], fields[5]])
                lines.append(f"line {line_no}")
        cells = np.array(rows, dtype=object).reshape(-1, 5)
    start = pd.to_numeric(pd.Series(cells[:, 1]), errors="coerce").to_numpy()
    end = pd.to_numeric(pd.Series(cells[:, 2]), errors="coerce").to_numpy()
    for col, name, values in ((2, "start", start), (3, "end", end)):
        bad = np.isnan(values) | (values < 0) | (values != np.floor(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(source, f"{lines[i]}, column {col} ({name})", f"{cells[i, col - 1]!r} is not a coordinate",
                             _BED_FIX)
    strand = cells[:, 4].astype(str)
    bad = (end < start) | ~np.isin(strand, ["+", "-", "."])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        problem = "end is before start" if end[i] < start[i] else f"column 6 (strand): {strand[i]!r} is not +, - or ."
        raise InputError(source, lines[i], problem, _BED_FIX)
    return pd.DataFrame({"chrom": [chrom_key(str(c)) for c in cells[:, 0]], "start": start.astype(np.int64),
                         "end": end.astype(np.int64), "name": cells[:, 3].astype(str), "strand": strand})


def overlaps(win_chrom: np.ndarray, win_start: np.ndarray, win_end: np.ndarray,
             peak_chrom: np.ndarray, peak_start: np.ndarray, peak_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (window, peak) pairs whose half-open intervals overlap on the same chromosome.

    Parameters
    ----------
    win_chrom, win_start, win_end
        Windows (chromosome keys, starts, ends).
    peak_chrom, peak_start, peak_end
        Peaks (chromosome keys, starts, ends).

    Returns
    -------
    window, peak : numpy.ndarray
        int64 indices of overlapping pairs (``peak_start < win_end`` and ``win_start < peak_end``).
    """
    if len(win_start) == 0 or len(peak_start) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes, _ = pd.factorize(np.concatenate([np.asarray(win_chrom, dtype=object), np.asarray(peak_chrom, dtype=object)]))
    w_code, p_code = codes[: len(win_start)].astype(np.int64), codes[len(win_start):].astype(np.int64)
    span = np.int64(max(int(win_end.max()), int(peak_end.max())) + 2)
    order = np.lexsort((peak_start, p_code))
    p_key = p_code[order] * span + peak_start[order]
    longest = int((peak_end - peak_start).max())
    # a peak overlapping [ws, we) starts in (ws - longest, we): binary search both ends on (chromosome, start)
    lo = np.searchsorted(p_key, w_code * span + np.maximum(win_start - longest, -1), side="right")
    hi = np.searchsorted(p_key, w_code * span + win_end, side="left")
    counts = np.maximum(hi - lo, 0)
    window = np.repeat(np.arange(len(win_start), dtype=np.int64), counts)
    offset = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    peak = order[np.repeat(lo, counts) + offset]
    keep = peak_end[peak] > win_start[window]
    return window[keep], peak[keep].astype(np.int64)


def gene_windows(genes: pd.DataFrame, upstream: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each gene's body plus ``upstream`` bp before its TSS (strand-aware, clipped at 0)."""
    start, end = genes["start"].to_numpy(), genes["end"].to_numpy()
    plus, minus = (genes["strand"] == "+").to_numpy(), (genes["strand"] == "-").to_numpy()
    return np.where(plus, np.maximum(start - upstream, 0), start), np.where(minus, end + upstream, end)


def gene_activity(peak_names: Sequence[str], genes_bed: str | os.PathLike | pd.DataFrame, gene_names: Sequence[str],
                  upstream: int = 2000, source_modality: str = "rna", target_modality: str = "atac") -> FeatureLinks:
    """Link each gene to the peaks over its body or its ``upstream`` bp promoter window (gene activity).

    Parameters
    ----------
    peak_names
        ATAC feature names ``chr:start-end`` (or ``chr-start-end``, ``chr_start_end``).
    genes_bed
        Gene coordinates: a BED6 file or a DataFrame (see :func:`read_genes_bed`); gene names are matched to
        ``gene_names`` exactly, else case-insensitively.
    gene_names
        Feature names of the RNA modality (the link sources).
    upstream
        Promoter length before the TSS, in bp.
    source_modality, target_modality
        Modality names recorded in the links (genes are the source, peaks the target).

    Returns
    -------
    FeatureLinks
        ``kind="gene_activity"``, ``reduce="sum"``: the linked view of a cell in the target is the sum of a
        gene's peaks.
    """
    if upstream < 0:
        raise InputError("gene_activity", "upstream", f"{upstream} is negative", "give a promoter length >= 0 bp")
    p_chrom, p_start, p_end = parse_peaks(peak_names, target_modality)
    genes = read_genes_bed(genes_bed)
    matcher = NameMatcher(gene_names)
    genes["feature"] = [matcher.find(n) for n in genes["name"]]
    genes = genes[genes["feature"].notna()].reset_index(drop=True)
    w_start, w_end = gene_windows(genes, upstream)
    window, peak = overlaps(genes["chrom"].to_numpy(), w_start, w_end, p_chrom, p_start, p_end)
    peaks = np.asarray(peak_names, dtype=object).astype(str)
    table = pd.DataFrame({"source_feature": genes["feature"].to_numpy()[window], "target_feature": peaks[peak],
                          "weight": 1.0}).drop_duplicates(["source_feature", "target_feature"], ignore_index=True)
    in_bed, linked = set(genes["feature"]), set(table["source_feature"])
    dropped = {}
    for name in map(str, gene_names):
        if name not in in_bed:
            dropped[name] = "not in the genes BED"
        elif name not in linked:
            dropped[name] = f"no peak over the gene body or {upstream} bp upstream"
    return FeatureLinks(source_modality, target_modality, table, "gene_activity", "sum", dropped)
