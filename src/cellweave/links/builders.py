"""Builders of feature links from names: protein -> coding genes by the antibody table, and shared names."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from .feature_links import FeatureLinks
from .match import NameMatcher
from .names import is_isotype_control
from .table import AntibodyTable, load_table

ISOTYPE = "isotype control"
NOT_IN_TABLE = "not in the antibody table (add it with table=..., or pass --links FILE)"


def protein_to_gene(protein_names: Sequence[str], gene_names: Sequence[str],
                    table: AntibodyTable | pd.DataFrame | str | os.PathLike | None = None,
                    source_modality: str = "protein", target_modality: str = "rna") -> FeatureLinks:
    """Link antibody (protein or cytometry) features to the genes coding their antigen.

    Panel decorations are ignored (``CD3_TotalSeqB``, ``ADT_CD3``, ``Hu.CD3``, ``CD3|UCHT1``, ``141Pr_CD3``); isotype
    controls are never linked. Genes are matched exactly, else case-insensitively (a human symbol finds a mouse
    gene). A protein coded by several genes averages those present (``reduce="mean"``).

    Parameters
    ----------
    protein_names
        Feature names of the protein modality.
    gene_names
        Feature names of the RNA modality.
    table
        Antibody -> gene table: None for the shipped one, a path or DataFrame with ``protein``, ``genes``
        (comma-separated) and optional ``aliases`` columns, or an :class:`AntibodyTable`.
    source_modality, target_modality
        Modality names recorded in the links.

    Returns
    -------
    FeatureLinks
        ``kind="protein_to_gene"``; unlinked proteins are in ``dropped`` with the reason.
    """
    antibodies = load_table(table)
    genes = NameMatcher(gene_names)
    rows: list[tuple[str, str, float]] = []
    dropped: dict[str, str] = {}
    for protein in map(str, protein_names):
        if is_isotype_control(protein):
            dropped[protein] = ISOTYPE
            continue
        entry = antibodies.lookup(protein)
        if entry is None:
            dropped[protein] = NOT_IN_TABLE
            continue
        found = list(dict.fromkeys(g for g in map(genes.find, entry.genes) if g is not None))
        if not found:
            dropped[protein] = f"its genes ({', '.join(entry.genes)}) are not among the {target_modality} features"
            continue
        rows.extend((protein, gene, 1.0) for gene in found)
    return FeatureLinks(source_modality, target_modality, _frame(rows), "protein_to_gene", "mean", dropped)


def shared_names(source_names: Sequence[str], target_names: Sequence[str], source_modality: str = "gene_activity",
                 target_modality: str = "rna", case_sensitive: bool = False) -> FeatureLinks:
    """Link features that carry the same name in two modalities (e.g. RNA genes and ATAC gene activities).

    Parameters
    ----------
    source_names, target_names
        Feature names of the two modalities.
    source_modality, target_modality
        Modality names recorded in the links.
    case_sensitive
        Match names exactly; by default an exact match is preferred, else a case-insensitive one is taken.

    Returns
    -------
    FeatureLinks
        ``kind="shared_names"``, one target per source feature.
    """
    targets = NameMatcher(target_names)
    rows: list[tuple[str, str, float]] = []
    dropped: dict[str, str] = {}
    for name in map(str, source_names):
        match = (name if name in targets.exact else None) if case_sensitive else targets.find(name)
        if match is None:
            dropped[name] = f"no {target_modality} feature of the same name"
        else:
            rows.append((name, match, 1.0))
    return FeatureLinks(source_modality, target_modality, _frame(rows), "shared_names", "mean", dropped)


def _frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["source_feature", "target_feature", "weight"])
