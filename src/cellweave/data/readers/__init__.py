"""Input readers: every supported file format as :class:`~cellweave.data.source.ChunkSource` objects.

Each reader keeps ``obs``/``var`` in memory and reads the matrix chunk by chunk; none densifies a sparse matrix
or loads a whole matrix.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import InputError
from ..source import ChunkSource, Kind
from .fcs import FcsSource, parse_text
from .h5 import H5adSource, H5adStore, h5mu_sources
from .tenx import FEATURE_TYPE_MODALITY, TenxSource, modality_for_feature_type, tenx_sources

SUPPORTED_FORMATS = (
    ".h5ad (AnnData), .h5mu (MuData), .h5 (10x feature-barcode matrix), a 10x folder with matrix.mtx(.gz), .fcs (flow/mass cytometry)"
)

__all__ = [
    "FEATURE_TYPE_MODALITY",
    "SUPPORTED_FORMATS",
    "FcsSource",
    "H5adSource",
    "H5adStore",
    "TenxSource",
    "h5mu_sources",
    "modality_for_feature_type",
    "open_source",
    "parse_text",
    "tenx_sources",
]


def _select(sources: list[ChunkSource], modality: str | None, path: Path) -> list[ChunkSource]:
    if modality is None:
        return sources
    chosen = [s for s in sources if s.modality == modality]
    if not chosen:
        have = ", ".join(s.modality for s in sources)
        raise InputError(path, "modality", f"no modality {modality!r} in the file (it has: {have})", "pass one of the modalities it has, or none to read all")
    return chosen


def open_source(path: str | os.PathLike, modality: str | None = None, kind: Kind | None = None) -> list[ChunkSource]:
    """Open any supported input as one source per modality.

    Parameters
    ----------
    path
        An ``.h5ad``, ``.h5mu``, 10x ``.h5``, 10x ``matrix.mtx`` folder or ``.fcs`` file.
    modality
        For single-modality formats (``.h5ad``, ``.fcs``), the name to give it; for multi-modality formats
        (``.h5mu``, 10x), the one modality to keep.
    kind
        ``"counts"`` or ``"normalized"`` for every source, or ``None`` for the format's default (10x: counts,
        FCS: normalized, AnnData/MuData: recorded at conversion, else inferred from the values).

    Returns
    -------
    list[ChunkSource]
        The sources, in the file's order.

    Raises
    ------
    InputError
        For a missing path, an empty file, an unsupported format or unreadable content.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "path", "no such file or directory", "check the path")
    if p.is_dir():
        if (p / "matrix.mtx.gz").is_file() or (p / "matrix.mtx").is_file():
            return _select(tenx_sources(p, kind or "counts"), modality, p)
        raise InputError(p, "path", f"a folder without matrix.mtx(.gz): not a supported input (supported: {SUPPORTED_FORMATS})", "pass one of the supported formats")
    if p.stat().st_size == 0:
        raise InputError(p, "file", "empty file (0 bytes)", "check that the file was copied or downloaded completely")
    suffix = p.suffix.lower()
    if suffix == ".h5ad":
        return [H5adSource(p, modality, kind)]
    if suffix == ".h5mu":
        return _select(h5mu_sources(p, kind), modality, p)
    if suffix == ".h5":
        return _select(tenx_sources(p, kind or "counts"), modality, p)
    if suffix == ".fcs":
        source = FcsSource(p, modality=modality or "cytometry")
        source.kind = kind or source.kind
        return [source]
    raise InputError(p, "format", f"unsupported file type {p.suffix or '(no suffix)'!r}; supported: {SUPPORTED_FORMATS}", "convert the data to one of the supported formats")
