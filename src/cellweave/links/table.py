"""The antibody -> gene table: the shipped ``data/antibody_genes.tsv`` or a user's table of the same layout."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from ..errors import InputError
from .names import name_key, parenthesised, protein_tokens

#: Columns of an antibody table; ``genes`` and ``aliases`` are comma-separated.
TABLE_COLUMNS = ("protein", "genes", "aliases")


@dataclass(frozen=True)
class AntibodyEntry:
    """One antigen of the table: its display name, coding genes and aliases."""

    protein: str
    genes: tuple[str, ...]
    aliases: tuple[str, ...] = ()


class AntibodyTable:
    """Look panel names up in an antibody -> gene table.

    Every entry is found by the key (see :func:`cellweave.links.names.name_key`) of its name, of each alias and,
    for single-gene entries, of its gene symbol. A panel name is resolved by, in order: the key of its tokens
    once decorations are removed; the longest run of leading tokens that is a key (``CD8a_RPA-T8`` -> ``CD8a``);
    a parenthesised note (``SSEA-1 (CD15)``); the parts of a ``/`` name when they all agree (``CD307c/FcRL3``).

    Parameters
    ----------
    entries
        The table's entries.
    source
        Where the entries came from (for error messages).
    """

    def __init__(self, entries: list[AntibodyEntry], source: str = "<antibody table>") -> None:
        self.entries = entries
        self.source = source
        self._index: dict[str, AntibodyEntry] = {}
        for entry in entries:
            for label in (entry.protein, *entry.aliases):
                key = name_key(label)
                other = self._index.get(key)
                if other is not None and other.genes != entry.genes:
                    raise InputError(source, f"protein {entry.protein!r}",
                                     f"the name {label!r} also names {other.protein!r} with other genes",
                                     "give each name or alias to one entry only")
                self._index[key] = entry
        for entry in entries:
            if len(entry.genes) == 1:
                self._index.setdefault(name_key(entry.genes[0]), entry)

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> set[str]:
        """Every key an entry is found by."""
        return set(self._index)

    def lookup(self, name: str) -> AntibodyEntry | None:
        """The entry of a panel name, or None when the table has none (isotype controls are not checked here).

        Parameters
        ----------
        name
            A panel name (``CD3_TotalSeqB``, ``HLA_DR``, ``CD4|RPA-T4``, ``Hu.PD-1``).

        Returns
        -------
        AntibodyEntry or None
        """
        tokens = protein_tokens(name)
        for stop in range(len(tokens), 0, -1):
            entry = self._index.get(name_key("".join(tokens[:stop])))
            if entry is not None:
                return entry
        for note in parenthesised(name):
            entry = self.lookup(note)
            if entry is not None:
                return entry
        parts = [p for p in name.split("/") if p.strip()]
        if len(parts) > 1:
            found = [self._index.get(name_key("".join(protein_tokens(p)))) for p in parts]
            genes = {e.genes for e in found if e is not None}
            if len(genes) == 1 and all(e is not None for e in found):
                return found[0]
        return None

    @classmethod
    def read(cls, path: str | os.PathLike) -> AntibodyTable:
        """Read a table of ``protein``, ``genes`` (comma-separated) and optional ``aliases`` (comma-separated).

        Parameters
        ----------
        path
            Tab-separated file with a header line.

        Returns
        -------
        AntibodyTable

        Raises
        ------
        InputError
            When a column is missing, or a row lacks a protein or genes (naming the line).
        """
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise InputError(path, "line 1", "the file is empty", f"write a header line {', '.join(TABLE_COLUMNS)}")
            header = [h.strip() for h in header]
            for required in TABLE_COLUMNS[:2]:
                if required not in header:
                    raise InputError(path, f"line 1, column {required!r}", "the column is missing",
                                     f"tab-separated columns {', '.join(TABLE_COLUMNS)} (aliases optional)")
            pos = {c: header.index(c) for c in TABLE_COLUMNS if c in header}
            entries = []
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                cells = {c: (row[i].strip() if i < len(row) else "") for c, i in pos.items()}
                for required in TABLE_COLUMNS[:2]:
                    if not cells[required]:
                        raise InputError(path, f"line {line}, column {required!r}", "the value is empty",
                                         "fill in the protein name and its comma-separated genes")
                entries.append(AntibodyEntry(cells["protein"], _split(cells["genes"]), _split(cells.get("aliases", ""))))
        return cls(entries, str(path))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source: str = "<antibody table>") -> AntibodyTable:
        """A table from a DataFrame with columns ``protein``, ``genes`` and optional ``aliases``."""
        missing = [c for c in TABLE_COLUMNS[:2] if c not in frame.columns]
        if missing:
            raise InputError(source, f"column {missing[0]!r}", "the column is missing",
                             f"give columns {', '.join(TABLE_COLUMNS)} (aliases optional)")
        aliases = frame["aliases"] if "aliases" in frame.columns else pd.Series("", index=frame.index)
        return cls([AntibodyEntry(str(p).strip(), _split(str(g)), _split("" if pd.isna(a) else str(a)))
                    for p, g, a in zip(frame["protein"], frame["genes"], aliases)], source)


def _split(cell: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in cell.split(",") if part.strip())


def shipped_table_path() -> Path:
    """Path of the antibody table shipped with cellweave."""
    return Path(str(resources.files("cellweave.links") / "data" / "antibody_genes.tsv"))


@lru_cache(maxsize=1)
def shipped_table() -> AntibodyTable:
    """The antibody table shipped with cellweave (read once)."""
    return AntibodyTable.read(shipped_table_path())


def load_table(table: AntibodyTable | pd.DataFrame | str | os.PathLike | None = None) -> AntibodyTable:
    """The antibody table to use: the shipped one (read once) when ``table`` is None, else the given one.

    Parameters
    ----------
    table
        None, an :class:`AntibodyTable`, a DataFrame or the path of a TSV (see :meth:`AntibodyTable.read`).

    Returns
    -------
    AntibodyTable
    """
    if table is None:
        return shipped_table()
    if isinstance(table, AntibodyTable):
        return table
    if isinstance(table, pd.DataFrame):
        return AntibodyTable.from_frame(table)
    return AntibodyTable.read(table)
