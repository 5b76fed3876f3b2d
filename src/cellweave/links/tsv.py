"""The links TSV: parse (with file/line/column errors) and write.

Layout: a header line with the columns ``source_modality, source_feature, target_modality, target_feature`` and an
optional ``weight``, then one link per line. Lines starting with ``#`` are comments; cellweave writes two kinds it
reads back: ``# cellweave links<TAB>SOURCE<TAB>TARGET<TAB>kind=K<TAB>reduce=R`` (how a pair's links were made and
combine) and ``# dropped<TAB>SOURCE<TAB>TARGET<TAB>FEATURE<TAB>REASON`` (features a builder could not link).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import pandas as pd

from ..data.atomic import atomic_output
from ..errors import InputError

#: Required columns of a links TSV, then the optional one.
REQUIRED_COLUMNS = ("source_modality", "source_feature", "target_modality", "target_feature")
WEIGHT_COLUMN = "weight"
#: How the links of one source feature combine: average of the targets, or (weighted) sum.
REDUCE_MODES = ("mean", "sum")

_META = "# cellweave links"
_DROPPED = "# dropped"
_FIX = ("write a tab-separated file with a header line source_modality, source_feature, target_modality, "
        "target_feature and an optional weight, one link per line")


@dataclass
class LinkBlock:
    """The links of one modality pair as read from a TSV."""

    source_modality: str
    target_modality: str
    rows: list[tuple[str, str, float]] = field(default_factory=list)
    kind: str = "user"
    reduce: str = "mean"
    dropped: dict[str, str] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        """The rows as a ``source_feature, target_feature, weight`` frame."""
        return pd.DataFrame(self.rows, columns=["source_feature", "target_feature", "weight"])


def parse_links_tsv(path: str | os.PathLike, modalities: Collection[str] | None = None) -> list[LinkBlock]:
    """Read a links TSV into one block per (source, target) modality pair, in order of first appearance.

    Parameters
    ----------
    path
        The file.
    modalities
        Known modality names; a row naming another one is an error. None accepts any name.

    Returns
    -------
    list of LinkBlock
        ``reduce`` is taken from a ``# cellweave links`` line when there is one, else ``"sum"`` when the file has a
        weight column (weights are used as given) and ``"mean"`` when it has none (a source feature linked to
        several targets averages them).

    Raises
    ------
    InputError
        Naming the file, the line and the column of a missing column, an empty cell, a bad weight or an unknown
        modality.
    """
    blocks: dict[tuple[str, str], LinkBlock] = {}
    meta: dict[tuple[str, str], tuple[str, str]] = {}
    dropped: dict[tuple[str, str], dict[str, str]] = {}
    header: list[str] | None = None
    with open(path, encoding="utf-8") as fh:
        for line_no, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            if line.startswith("#"):
                pair = _read_comment(path, line_no, line, meta, dropped)
                if pair is not None:  # a pair written by cellweave keeps its place even with no links
                    unknown = [m for m in pair if modalities is not None and m not in modalities]
                    if unknown:
                        raise InputError(path, f"line {line_no}", f"unknown modality {unknown[0]!r}",
                                         f"name one of the modalities being integrated: {', '.join(sorted(modalities))}")
                    blocks.setdefault(pair, LinkBlock(*pair))
                continue
            cells = [c.strip() for c in line.split("\t")]
            if header is None:
                header = cells
                for name in REQUIRED_COLUMNS:
                    if name not in header:
                        raise InputError(path, f"line {line_no}, column {name!r}",
                                         f"the header line lacks this column (it has {', '.join(header)})", _FIX)
                continue
            row = _read_row(path, line_no, header, cells, modalities)
            key = (row[0], row[2])
            blocks.setdefault(key, LinkBlock(*key)).rows.append((row[1], row[3], row[4]))
    if header is None:
        raise InputError(path, "line 1", "the file has no header line and no links", _FIX)
    has_weight = WEIGHT_COLUMN in header
    for key, block in blocks.items():
        block.kind, block.reduce = meta.get(key, ("user", "sum" if has_weight else "mean"))
        block.dropped = dropped.get(key, {})
    return list(blocks.values())


def _read_comment(path, line_no: int, line: str, meta: dict, dropped: dict) -> tuple[str, str] | None:
    """Record a ``# cellweave links`` or ``# dropped`` line; return the pair a ``# cellweave links`` line names."""
    parts = [p.strip() for p in line.split("\t")]
    if parts[0] == _META:
        if len(parts) < 5:
            raise InputError(path, f"line {line_no}", "a '# cellweave links' line needs SOURCE, TARGET, kind= and reduce=",
                             "rewrite the file with FeatureLinks.to_tsv, or delete the line")
        settings = dict(p.split("=", 1) for p in parts[3:] if "=" in p)
        reduce = settings.get("reduce", "")
        if reduce not in REDUCE_MODES:
            raise InputError(path, f"line {line_no}, reduce", f"unknown reduce {reduce!r}", f"use one of {REDUCE_MODES}")
        meta[(parts[1], parts[2])] = (settings.get("kind", "user"), reduce)
        return parts[1], parts[2]
    if parts[0] == _DROPPED and len(parts) >= 5:
        dropped.setdefault((parts[1], parts[2]), {})[parts[3]] = parts[4]
    return None


def _read_row(path, line_no: int, header: list[str], cells: list[str],
              modalities: Collection[str] | None) -> tuple[str, str, str, str, float]:
    values = {}
    for name in REQUIRED_COLUMNS:
        col = header.index(name)
        value = cells[col] if col < len(cells) else ""
        if not value:
            raise InputError(path, f"line {line_no}, column {col + 1} ({name})", "the value is empty", _FIX)
        if name.endswith("_modality") and modalities is not None and value not in modalities:
            raise InputError(path, f"line {line_no}, column {col + 1} ({name})", f"unknown modality {value!r}",
                             f"name one of the modalities being integrated: {', '.join(sorted(modalities))}")
        values[name] = value
    if values["source_modality"] == values["target_modality"]:
        col = header.index("target_modality")
        raise InputError(path, f"line {line_no}, column {col + 1} (target_modality)",
                         f"links a modality to itself ({values['source_modality']!r})", "link two different modalities")
    weight = 1.0
    if WEIGHT_COLUMN in header:
        col = header.index(WEIGHT_COLUMN)
        text = cells[col] if col < len(cells) else ""
        try:
            weight = float(text) if text else 1.0
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise InputError(path, f"line {line_no}, column {col + 1} ({WEIGHT_COLUMN})", f"{text!r} is not a finite number",
                             "write a number, or leave the cell empty for weight 1")
    return (values["source_modality"], values["source_feature"], values["target_modality"],
            values["target_feature"], weight)


def write_links_tsv(path: str | os.PathLike, blocks: Iterable[LinkBlock]) -> None:
    """Write blocks of links (with their kind, reduce and dropped features) as one TSV :func:`parse_links_tsv` reads.

    Parameters
    ----------
    path
        The file to write (replaced atomically).
    blocks
        One block per modality pair.
    """
    blocks = list(blocks)
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for b in blocks:
            fh.write(f"{_META}\t{b.source_modality}\t{b.target_modality}\tkind={b.kind}\treduce={b.reduce}\n")
            for feature, reason in b.dropped.items():
                fh.write(f"{_DROPPED}\t{b.source_modality}\t{b.target_modality}\t{feature}\t{reason}\n")
        fh.write("\t".join((*REQUIRED_COLUMNS, WEIGHT_COLUMN)) + "\n")
        for b in blocks:
            for source, target, weight in b.rows:
                fh.write(f"{b.source_modality}\t{source}\t{b.target_modality}\t{target}\t{weight!r}\n")
