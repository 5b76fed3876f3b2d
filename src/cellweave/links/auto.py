"""Links between every pair of modalities that has a rule, chosen from the modalities' kinds."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from itertools import permutations

import pandas as pd

from ..errors import InputError
from .builders import protein_to_gene, shared_names
from .feature_links import FeatureLinks
from .gene_activity import gene_activity
from .table import AntibodyTable

#: Modality kinds :func:`auto_links` knows.
KINDS = ("rna", "adt", "protein", "cytometry", "atac", "gene_activity", "spatial")
_ANTIBODY = {"adt", "protein", "cytometry"}
_GENE_NAMED = {"gene_activity", "spatial"}


def auto_links(modalities: Mapping[str, tuple[str, Sequence[str]]],
               genes_bed: str | os.PathLike | pd.DataFrame | None = None,
               table: AntibodyTable | pd.DataFrame | str | os.PathLike | None = None,
               upstream: int = 2000) -> dict[tuple[str, str], FeatureLinks]:
    """Build the links of every modality pair that has a rule.

    Rules: ``adt``/``protein``/``cytometry`` -> ``rna`` by the antibody table (:func:`protein_to_gene`);
    ``rna`` -> ``atac`` by gene activity (:func:`gene_activity`, needs ``genes_bed``); ``gene_activity``/``spatial``
    -> ``rna`` by shared names (:func:`shared_names`). Other pairs get no links. Check each result with
    :func:`require_links`.

    Parameters
    ----------
    modalities
        Modality name -> ``(kind, feature names)``, kind one of :data:`KINDS`.
    genes_bed
        Gene coordinates (BED6 file or DataFrame), needed when an ``atac`` and an ``rna`` modality meet.
    table
        Antibody table for protein links (None: the shipped one).
    upstream
        Promoter length for gene activity, in bp.

    Returns
    -------
    dict
        ``(source, target)`` -> :class:`FeatureLinks`.

    Raises
    ------
    InputError
        For an unknown kind, or ATAC and RNA without ``genes_bed``.
    """
    for name, (kind, _) in modalities.items():
        if kind not in KINDS:
            raise InputError("modalities", name, f"unknown modality kind {kind!r}", f"use one of {', '.join(KINDS)}")
    links: dict[tuple[str, str], FeatureLinks] = {}
    for s, t in permutations(modalities, 2):
        (s_kind, s_names), (t_kind, t_names) = modalities[s], modalities[t]
        if s_kind in _ANTIBODY and t_kind == "rna":
            links[(s, t)] = protein_to_gene(s_names, t_names, table, s, t)
        elif s_kind in _GENE_NAMED and t_kind == "rna":
            links[(s, t)] = shared_names(s_names, t_names, s, t)
        elif s_kind == "rna" and t_kind == "atac":
            if genes_bed is None:
                raise InputError("genes_bed", "argument", f"ATAC modality {t!r} and RNA modality {s!r} need gene "
                                 "coordinates to link peaks to genes",
                                 "pass genes_bed= (a BED6 file of genes: chrom, start, end, name, score, strand), "
                                 "or pass --links FILE")
            links[(s, t)] = gene_activity(t_names, genes_bed, s_names, upstream, s, t)
    return links
