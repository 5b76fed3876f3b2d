"""Feature links between two modalities and their matrix form ``(cols, W)``."""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .tsv import REDUCE_MODES, LinkBlock, parse_links_tsv, write_links_tsv

#: ``to_matrix`` returns a sparse W when the dense one would hold more entries than this.
DENSE_LIMIT = 1 << 24


@dataclass(frozen=True)
class LinkSummary:
    """What a set of links covers: counts of linked features and the features dropped, with the reason."""

    source_modality: str
    target_modality: str
    kind: str
    n_links: int
    n_source_linked: int
    n_target_used: int
    dropped: dict[str, str]

    def __str__(self) -> str:
        lines = [f"{self.source_modality} -> {self.target_modality} ({self.kind}): {self.n_links} links, "
                 f"{self.n_source_linked} {self.source_modality} features linked to "
                 f"{self.n_target_used} {self.target_modality} features"]
        by_reason: dict[str, list[str]] = {}
        for feature, reason in self.dropped.items():
            by_reason.setdefault(reason, []).append(feature)
        for reason, features in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            more = f" (+{len(features) - 5} more)" if len(features) > 5 else ""
            lines.append(f"  dropped {len(features)}: {reason}: {', '.join(features[:5])}{more}")
        return "\n".join(lines)


@dataclass(eq=False)
class FeatureLinks:
    """Which features of a source modality correspond to which features of a target modality.

    Parameters
    ----------
    source_modality, target_modality
        Modality names.
    table
        One row per link: ``source_feature``, ``target_feature``, ``weight``.
    kind
        How the links were made (``protein_to_gene``, ``shared_names``, ``gene_activity``, ``user``).
    reduce
        How the targets of one source feature combine in :meth:`to_matrix`: ``"mean"`` (weights scaled to sum to 1
        over the targets present, e.g. a protein coded by several genes) or ``"sum"`` (weights as given, e.g. a
        gene's activity summed over its peaks).
    dropped
        Source features a builder could not link, with the reason.
    """

    source_modality: str
    target_modality: str
    table: pd.DataFrame
    kind: str = "user"
    reduce: str = "sum"
    dropped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in ("source_feature", "target_feature") if c not in self.table.columns]
        if missing:
            raise InputError(f"links {self.source_modality} -> {self.target_modality}", f"table column {missing[0]!r}",
                             "the column is missing", "give a table with source_feature, target_feature and weight")
        if self.reduce not in REDUCE_MODES:
            raise InputError(f"links {self.source_modality} -> {self.target_modality}", "reduce",
                             f"unknown reduce {self.reduce!r}", f"use one of {REDUCE_MODES}")
        weight = self.table["weight"] if "weight" in self.table.columns else np.ones(len(self.table))
        self.table = pd.DataFrame({
            "source_feature": self.table["source_feature"].astype(str).to_numpy(),
            "target_feature": self.table["target_feature"].astype(str).to_numpy(),
            "weight": np.asarray(weight, dtype=np.float64),
        })

    @property
    def pair(self) -> tuple[str, str]:
        """``(source_modality, target_modality)``."""
        return self.source_modality, self.target_modality

    def __len__(self) -> int:
        return len(self.table)

    def _positions(self, source_features: Sequence[str], target_features: Sequence[str]) -> tuple[np.ndarray, ...]:
        """Source column, target column and weight of every link whose two features are present."""
        s_index = _first_positions(source_features)
        t_index = _first_positions(target_features)
        s = s_index.reindex(self.table["source_feature"]).to_numpy()
        t = t_index.reindex(self.table["target_feature"]).to_numpy()
        keep = ~(np.isnan(s) | np.isnan(t))
        return s[keep].astype(np.int64), t[keep].astype(np.int64), self.table["weight"].to_numpy()[keep]

    def to_matrix(self, source_features: Sequence[str], target_features: Sequence[str],
                  sparse: bool | None = None) -> tuple[np.ndarray, np.ndarray | sp.csr_matrix]:
        """The links as ``(cols, W)``: linked features are ``x_s[:, cols]`` in the source, ``x_t @ W.T`` in the target.

        Parameters
        ----------
        source_features, target_features
            Feature names of the two modalities, in column order (a repeated name counts at its first column).
        sparse
            Return W as a ``scipy.sparse.csr_matrix``; None does so only when the dense W would exceed
            :data:`DENSE_LIMIT` entries.

        Returns
        -------
        cols : numpy.ndarray
            int64 source columns with at least one present target, ascending.
        W : numpy.ndarray or scipy.sparse.csr_matrix
            float32, ``len(cols) x len(target_features)``; row ``i`` belongs to ``cols[i]``. With ``reduce="mean"``
            each row's weights are scaled to sum to 1 over the targets present.
        """
        s, t, w = self._positions(source_features, target_features)
        cols = np.unique(s)
        rows = np.searchsorted(cols, s)
        W = sp.coo_matrix((w, (rows, t)), shape=(len(cols), len(target_features))).tocsr()
        W.sum_duplicates()
        if self.reduce == "mean":
            totals = np.asarray(W.sum(axis=1)).ravel()
            scale = np.divide(1.0, totals, out=np.ones_like(totals), where=totals != 0)
            W = sp.diags(scale) @ W
        W = sp.csr_matrix(W, dtype=np.float32)
        if sparse is None:
            sparse = len(cols) * len(target_features) > DENSE_LIMIT
        return cols, (W if sparse else W.toarray())

    def summary(self, source_features: Sequence[str] | None = None,
                target_features: Sequence[str] | None = None) -> LinkSummary:
        """How many features are linked and which were dropped, and why.

        Parameters
        ----------
        source_features, target_features
            The modalities' feature names; when given, only links between present features count and every
            present source feature left unlinked is listed in ``dropped``.

        Returns
        -------
        LinkSummary
            Printable (``print(links.summary())``).
        """
        if source_features is None or target_features is None:
            s, t = self.table["source_feature"], self.table["target_feature"]
            dropped = dict(self.dropped)
        else:
            si, ti, _ = self._positions(source_features, target_features)
            s, t = pd.Index(source_features)[si], pd.Index(target_features)[ti]
            dropped = dict(self.dropped)
            in_table = set(self.table["source_feature"])
            linked = set(s)
            for feature in source_features:
                if feature not in linked and feature not in dropped:
                    dropped[feature] = (f"none of its linked {self.target_modality} features is present"
                                        if feature in in_table else "no link given")
        return LinkSummary(self.source_modality, self.target_modality, self.kind, int(len(s)),
                           int(pd.Index(s).nunique()), int(pd.Index(t).nunique()), dropped)

    def block(self) -> LinkBlock:
        """The links as a TSV block."""
        rows = list(zip(self.table["source_feature"], self.table["target_feature"], self.table["weight"].astype(float)))
        return LinkBlock(self.source_modality, self.target_modality, rows, self.kind, self.reduce, dict(self.dropped))

    @classmethod
    def from_block(cls, block: LinkBlock) -> FeatureLinks:
        """Links from a TSV block."""
        return cls(block.source_modality, block.target_modality, block.frame(), block.kind, block.reduce,
                   dict(block.dropped))

    def to_tsv(self, path: str | os.PathLike) -> None:
        """Write the links (with kind, reduce and dropped features) as a links TSV; :meth:`from_tsv` reads it back.

        Parameters
        ----------
        path
            The file (replaced atomically).
        """
        write_links_tsv(path, [self.block()])

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> FeatureLinks:
        """Read links of one modality pair from a links TSV (see :func:`read_links` for files with several pairs).

        Parameters
        ----------
        path
            The file.

        Returns
        -------
        FeatureLinks

        Raises
        ------
        InputError
            When the file is malformed, or holds no links or several modality pairs.
        """
        links = read_links(path)
        if len(links) != 1:
            pairs = ", ".join(f"{x.source_modality} -> {x.target_modality}" for x in links) or "none"
            raise InputError(path, "source_modality, target_modality",
                             f"expected the links of one modality pair, found {len(links)} ({pairs})",
                             "read the file with cellweave.links.read_links, which returns one FeatureLinks per pair")
        return links[0]


def _first_positions(names: Sequence[str]) -> pd.Series:
    """Column of each name (its first occurrence), indexed by name."""
    index = pd.Index(np.asarray(names, dtype=object).astype(str))
    first = ~index.duplicated()
    return pd.Series(np.flatnonzero(first).astype(np.float64), index=index[first])


def read_links(path: str | os.PathLike, modalities: Collection[str] | None = None) -> list[FeatureLinks]:
    """Read a user's links TSV: one :class:`FeatureLinks` per (source, target) modality pair in the file.

    Parameters
    ----------
    path
        Tab-separated file with columns ``source_modality, source_feature, target_modality, target_feature`` and an
        optional ``weight``; ``#`` lines are comments. Without weights a source feature linked to several targets
        averages them (``reduce="mean"``); with weights the targets are summed with those weights.
    modalities
        The modality names being integrated; rows naming another modality are an error. None accepts any.

    Returns
    -------
    list of FeatureLinks
        In order of each pair's first line.

    Raises
    ------
    InputError
        Naming the file, line and column of a missing column, empty cell, bad weight or unknown modality.
    """
    return [FeatureLinks.from_block(block) for block in parse_links_tsv(path, modalities)]


def write_links(path: str | os.PathLike, links: Sequence[FeatureLinks]) -> None:
    """Write the links of several modality pairs to one TSV that :func:`read_links` reads back.

    Parameters
    ----------
    path
        The file (replaced atomically).
    links
        The links, one per modality pair.
    """
    write_links_tsv(path, [x.block() for x in links])
