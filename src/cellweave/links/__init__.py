"""Feature links: which features of one modality correspond to which features of another.

Models consume a modality pair's links as ``(cols, W)`` (see :meth:`FeatureLinks.to_matrix`): the linked features
of a cell are ``x_s[:, cols]`` in the source and ``x_t @ W.T`` in the target. Learned links (:func:`learn`) are a
:class:`LinkProjection` instead: ``x_s @ P_s + b_s`` and ``x_t @ P_t + b_t``.
"""

from .auto import KINDS, auto_links
from .builders import protein_to_gene, shared_names
from .cca import CCAFit, fit_cca
from .feature_links import FeatureLinks, LinkSummary, read_links, write_links
from .gene_activity import gene_activity, parse_peaks, read_genes_bed
from .learn import LearnedLinks, LearnRound, LearnSettings, UnreliableAlignmentWarning, learn
from .names import is_isotype_control, name_key, normalize_protein_name
from .projection import LinkProjection
from .require import require_links
from .table import AntibodyEntry, AntibodyTable, load_table, shipped_table_path

__all__ = [
    "KINDS", "AntibodyEntry", "AntibodyTable", "CCAFit", "FeatureLinks", "LearnRound", "LearnSettings", "LearnedLinks",
    "LinkProjection", "LinkSummary", "auto_links", "fit_cca", "gene_activity", "is_isotype_control", "learn",
    "load_table", "name_key", "normalize_protein_name", "parse_peaks", "protein_to_gene", "read_genes_bed",
    "read_links", "require_links", "shared_names", "shipped_table_path", "UnreliableAlignmentWarning", "write_links",
]
