"""Refuse to integrate on too few feature links, with a message that says how to give them."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from .feature_links import FeatureLinks
from .tsv import REQUIRED_COLUMNS, WEIGHT_COLUMN


def require_links(links: FeatureLinks, min_links: int = 1, source_features: Sequence[str] | None = None,
                  target_features: Sequence[str] | None = None) -> FeatureLinks:
    """Return ``links`` when at least ``min_links`` source features are linked, else raise :class:`InputError`.

    Parameters
    ----------
    links
        The links of one modality pair.
    min_links
        Fewest linked source features accepted.
    source_features, target_features
        The modalities' feature names; when given, only links between present features count.

    Returns
    -------
    FeatureLinks
        ``links`` itself.

    Raises
    ------
    InputError
        Naming both modalities, the number of linked features, example unmatched names with the reason, and the
        fix (a links TSV passed with ``--links FILE``).
    """
    summary = links.summary(source_features, target_features)
    if summary.n_source_linked >= min_links:
        return links
    s, t = links.source_modality, links.target_modality
    examples = "; ".join(f"{name!r} ({reason})" for name, reason in list(summary.dropped.items())[:5]) or "none"
    columns = ", ".join(REQUIRED_COLUMNS) + f"[, {WEIGHT_COLUMN}]"
    raise InputError(
        f"links {s} -> {t}", "feature names",
        f"{summary.n_source_linked} {s} features are linked to {t} features, at least {min_links} needed; "
        f"unmatched examples: {examples}",
        f"pass --links FILE, a tab-separated file with columns {columns}, one line per link "
        f"(e.g. '{s}<TAB>a {s} feature<TAB>{t}<TAB>a {t} feature<TAB>1')",
    )
