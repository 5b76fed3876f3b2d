"""One gene-level feature space for every modality (scMRDR), and the streams that lay cells out in it.

Gene-level modalities (kinds ``rna``, ``gene_activity``, ``spatial``) place their features by name. Any other
modality is mapped through its feature links to a gene-level modality: an antibody panel onto the genes coding
its antigens (a protein coded by several genes shares its counts among them, ``reduce="mean"``), ATAC peaks
summed into gene activity (``reduce="sum"``). The columns are the selected features of the gene-level modalities
plus every gene linked from the selected features of the other modalities (a protein panel: all its genes, as
in the paper's tri-modal setting); a modality whose features join nothing (ATAC) is laid onto those columns.

Each modality's layout is a sparse ``(n_vars, G)`` matrix ``P``: a cell's row in the union space is ``x @ P``, and
the columns where ``P`` has an entry are the ones the modality measures (its mask for the masked loss).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import IterableDataset

from ..data import CellBatch, CellStream, ModalityReader, ModalityStore, Preprocess
from ..errors import InputError
from ..links import FeatureLinks, auto_links, read_links

#: Kinds whose feature names are genes (placed in the union space by name).
GENE_LEVEL_KINDS = ("rna", "gene_activity", "spatial")
_LINKS_FIX = ("pass links= (a TSV: source_modality, source_feature, target_modality, target_feature[, weight]), "
              "or genes_bed= for ATAC peaks")


@dataclass
class UnionSpace:
    """The union feature space and each modality's layout in it.

    Attributes
    ----------
    features
        Names of the ``G`` columns (genes).
    maps
        Per modality, a CSR ``(n_vars, G)`` float32 matrix: the modality's row in the union space is ``x @ map``.
    mapped_by
        Per modality, how its features were laid out (``"names"`` or the links used), for messages and configs.
    masks
        Per modality, a boolean ``(G,)`` array of the columns it measures (derived from ``maps``).
    """

    features: list[str]
    maps: dict[str, sp.csr_matrix]
    mapped_by: dict[str, str]
    masks: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.masks = {m: np.diff(P.tocsc().indptr) > 0 for m, P in self.maps.items()}

    @property
    def n_features(self) -> int:
        return len(self.features)

    def measured(self, modality: str) -> list[str]:
        """Names of the union columns ``modality`` measures."""
        return [f for f, on in zip(self.features, self.masks[modality]) if on]

    def summary(self) -> dict[str, dict[str, int | str]]:
        """Per modality: columns measured, columns shared with another modality, and how it was laid out."""
        out = {}
        for m, mask in self.masks.items():
            others = np.zeros_like(mask)
            for o, other in self.masks.items():
                if o != m:
                    others |= other
            out[m] = {"measured": int(mask.sum()), "shared": int((mask & others).sum()), "mapped_by": self.mapped_by[m]}
        return out


def resolve_union_links(stores: Mapping[str, ModalityStore], links: str | os.PathLike | Sequence[FeatureLinks] | None,
                        kinds: Mapping[str, str],
                        genes_bed: str | os.PathLike | None = None) -> dict[tuple[str, str], FeatureLinks]:
    """The feature links between the given modalities: ``"auto"`` (rules by kind), a links TSV, or given links.

    Unlike scMODAL, a modality needs no links when its features are genes; coverage is checked on the union space.
    """
    if links is None or (isinstance(links, str) and links == "auto"):
        found = auto_links({m: (kinds[m], list(s.var_names)) for m, s in stores.items()}, genes_bed=genes_bed)
    elif isinstance(links, str | os.PathLike):
        found = {lk.pair: lk for lk in read_links(links, modalities=list(stores))}
    else:
        found = {lk.pair: lk for lk in links}
    return {p: lk for p, lk in found.items() if p[0] in stores and p[1] in stores}


def build_union_space(stores: Mapping[str, ModalityStore], kinds: Mapping[str, str],
                      links: Mapping[tuple[str, str], FeatureLinks],
                      selected: Mapping[str, Sequence[str]]) -> UnionSpace:
    """Lay every modality out over one set of gene columns.

    Parameters
    ----------
    stores
        The modalities.
    kinds
        Kind of each modality (``rna``, ``adt``, ``atac`` ...).
    links
        Feature links by ``(source, target)`` modality pair; a non-gene modality is mapped through its first link
        with a gene-level modality.
    selected
        Per modality, the features whose columns join the union (for a non-gene modality: the genes they link to).

    Raises
    ------
    InputError
        With no gene-level modality, a non-gene modality without links to one, a modality that measures no union
        column, or one whose columns no other modality measures.
    """
    gene_level = [m for m in stores if kinds[m] in GENE_LEVEL_KINDS]
    if not gene_level:
        raise InputError("modalities", "kinds", f"scMRDR lays every modality out over genes, but no modality has gene "
                         f"features (kinds: {dict(kinds)})",
                         f"add a modality of kind {', '.join(GENE_LEVEL_KINDS)} (e.g. RNA), or pass kinds= naming it")
    via = {m: _gene_link(m, kinds[m], stores[m], gene_level, links) for m in stores if m not in gene_level}
    columns: list[str] = []
    for m in gene_level:
        columns.extend(map(str, selected[m]))
    for m, (lk, g) in via.items():
        layout = _link_layout(lk, m, stores[m].var_names, stores[g].var_names)
        keep = np.isin(layout["feature"].to_numpy(), np.asarray(selected[m], dtype=str))
        columns.extend(layout["gene"].to_numpy()[keep])
    index = pd.Index(list(dict.fromkeys(columns)))
    maps, mapped_by = {}, {}
    for m, store in stores.items():
        if m in via:
            lk, g = via[m]
            layout = _link_layout(lk, m, store.var_names, stores[g].var_names)
            maps[m] = _layout_matrix(layout["row"].to_numpy(), index.get_indexer(layout["gene"]),
                                     layout["weight"].to_numpy(), store.n_vars, len(index))
            mapped_by[m] = f"links {lk.source_modality} -> {lk.target_modality} ({lk.kind})"
        else:
            dst = index.get_indexer(store.var_names)
            maps[m] = _layout_matrix(np.arange(store.n_vars), dst, np.ones(store.n_vars), store.n_vars, len(index))
            mapped_by[m] = "names"
    space = UnionSpace(index.tolist(), maps, mapped_by)
    _check_overlap(stores, space)
    return space


def _gene_link(m: str, kind: str, store: ModalityStore, gene_level: list[str],
               links: Mapping[tuple[str, str], FeatureLinks]) -> tuple[FeatureLinks, str]:
    for (s, t), lk in links.items():
        if (s == m and t in gene_level) or (t == m and s in gene_level):
            return lk, t if s == m else s
    raise InputError(store.path, "links", f"modality {m!r} (kind {kind!r}) has no feature links to a gene-level modality "
                     f"({', '.join(gene_level)}); scMRDR lays every modality out over genes", _LINKS_FIX)


def _link_layout(lk: FeatureLinks, m: str, names: pd.Index, genes: pd.Index) -> pd.DataFrame:
    """Entries of ``m``'s layout through ``lk``: store row of the feature, its name, the gene and the weight."""
    if lk.source_modality == m:  # features -> genes (protein panel): x[:, cols] @ W
        cols, W = lk.to_matrix(names, genes, sparse=True)
        W = W.tocoo()
        rows, gene = cols[W.row], genes[W.col]
    else:  # genes -> features (gene activity of peaks): gene cols[i] = x @ W[i]
        cols, W = lk.to_matrix(genes, names, sparse=True)
        W = W.tocoo()
        rows, gene = W.col.astype(np.int64), genes[cols[W.row]]
    return pd.DataFrame({"row": rows, "feature": np.asarray(names)[rows].astype(str), "gene": np.asarray(gene, dtype=str),
                         "weight": W.data.astype(np.float64)})


def _layout_matrix(rows: np.ndarray, dst: np.ndarray, weight: np.ndarray, n_vars: int, n_features: int) -> sp.csr_matrix:
    keep = (dst >= 0) & (weight != 0)
    P = sp.coo_matrix((weight[keep], (rows[keep], dst[keep])), shape=(n_vars, n_features)).tocsr()
    P.sum_duplicates()
    return P.astype(np.float32)


def _check_overlap(stores: Mapping[str, ModalityStore], space: UnionSpace) -> None:
    summary = space.summary()
    for m, row in summary.items():
        store = stores[m]
        if row["measured"] == 0:
            raise InputError(store.path, "var_names", f"none of modality {m!r}'s {store.n_vars} features maps into the "
                             f"union feature space ({row['mapped_by']}), e.g. {list(store.var_names[:3])}",
                             f"check the feature names, or {_LINKS_FIX}")
    isolated = [m for m, row in summary.items() if len(stores) > 1 and row["shared"] == 0]
    if isolated:
        raise InputError(", ".join(str(stores[m].path) for m in isolated), "var_names",
                         f"modalities {isolated} measure {[summary[m]['measured'] for m in isolated]} union features but "
                         "none that another modality measures, so nothing ties them to the others",
                         f"check the feature names, or {_LINKS_FIX}")


class UnionReader(ModalityReader):
    """Reads rows of one store laid out in the union space (``x @ map``), with global batch codes.

    Parameters
    ----------
    store
        The modality (named as in ``space``).
    space
        The union feature space.
    batch_codes, batch_categories
        Per-cell codes into categories shared by all modalities (``None``, ``[]``: no batch covariate).
    """

    def __init__(self, store: ModalityStore, space: UnionSpace, batch_codes: np.ndarray | None = None,
                 batch_categories: Sequence[str] = ()) -> None:
        super().__init__(store, Preprocess(normalize=False, max_value=None))
        self.layout = space.maps[store.modality]
        self.union_features = space.features
        self.n_out = space.n_features
        mask = space.masks[store.modality]
        present = getattr(store, "present", None)  # aligned to a run's features: union columns it cannot fill
        if present is not None and not present.all():
            mask = mask & (np.asarray(abs(self.layout[present]).sum(0)).ravel() > 0)
        self.mask = torch.from_numpy(mask)
        self.identity_columns = False
        self.batch_codes, self.batch_categories = batch_codes, list(batch_categories)

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns: the union features this modality measures, ``""`` for the others."""
        return [f if on else "" for f, on in zip(self.union_features, self.mask.tolist())]

    def _columns(self, X):
        out = X @ self.layout
        if sp.issparse(out):
            out = sp.csr_matrix(out)
            out.sort_indices()
            return out
        return np.asarray(out)


class UnionStream(CellStream):
    """A :class:`~cellweave.data.CellStream` whose batches come from a :class:`UnionReader`.

    Parameters
    ----------
    reader
        The modality's union-space reader (its store is the one streamed).
    batch_size, **options
        As for :class:`~cellweave.data.CellStream` (``shuffle``, ``seed``, ``rows``, ``drop_last`` ...).
    """

    def __init__(self, reader: UnionReader, batch_size: int, **options) -> None:
        super().__init__(reader.store, batch_size, **options)
        self.reader = reader


class ModalitiesInTurn(IterableDataset):
    """One pass over several streams, one modality after another: ``{modality: CellBatch}`` per item.

    Every cell of every stream is met exactly once per pass (a validation split scored whole), whatever the
    modalities' sizes; DataLoader workers and DDP ranks each take their share of every stream.
    """

    def __init__(self, streams: Mapping[str, CellStream]) -> None:
        super().__init__()
        self.streams = dict(streams)

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams.values())

    def set_epoch(self, epoch: int) -> None:
        for s in self.streams.values():
            s.set_epoch(epoch)

    def set_skip(self, n: int) -> None:
        if n:
            raise ValueError("ModalitiesInTurn always starts a pass at its beginning (it serves validation)")

    def __iter__(self) -> Iterator[dict[str, CellBatch]]:
        for m, stream in self.streams.items():
            for batch in stream:
                yield {m: batch}
