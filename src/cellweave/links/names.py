"""Normalisation of antibody (protein) feature names.

Panel names carry decorations around the antigen: panel suffixes (``CD3_TotalSeqB``, ``CD3-ADT``, ``ADT_CD3``),
species prefixes (``Hu.CD3``, ``anti-human_CD3``, ``Mouse_CD3``), barcode codes (``A0034``), mass tags of cytometry
channels (``141Pr_CD38``), clone names (``CD3_UCHT1``, ``CD3|UCHT1``) and parenthesised notes (``CD90 (Thy1)``).
:func:`protein_tokens` strips the decorations it can recognise on its own and :func:`name_key` folds case,
hyphens, spaces, dots and Greek letters, so that ``HLA-DR``, ``HLADR`` and ``hla_dr`` share one key. Clone names
are only recognised against a table of known antigens (see :class:`cellweave.links.table.AntibodyTable`).
"""

from __future__ import annotations

import re

_GREEK = str.maketrans({"α": "a", "β": "b", "γ": "g", "δ": "d", "ε": "e", "ζ": "z", "κ": "k", "λ": "l", "μ": "m"})

#: Species prefixes of a whole name (``Hu.CD3``, ``anti-human CD3``, ``Mouse_CD3``).
_SPECIES_PREFIX = re.compile(r"^(anti[-_. ]?(human|mouse|rat)|human|hu|mouse|ms|rat)[-_. ]+", re.IGNORECASE)
#: Panel decorations glued to a token (``CD3-ADT``, ``CD3.TotalSeqB``, ``ADT-CD3``).
_PANEL_SUFFIX = re.compile(r"([-. ]?(adt|totalseq[-. ]?[a-d]|total[a-d])|[-. ]di)$", re.IGNORECASE)
_PANEL_PREFIX = re.compile(r"^adt[-. ]", re.IGNORECASE)
#: Whole tokens that name a species (``A0034_anti-human_CD3``) or are panel decorations, never antigens.
_SPECIES = re.compile(r"^(anti[-. ]?(human|mouse|rat)|human|hu|mouse|ms|rat)$", re.IGNORECASE)
_DECORATION = re.compile(
    r"^(adt|totalseq[-. ]?[a-d]?|total[a-d]|di"  # panel words
    r"|[a-d]\d{4})$",  # BioLegend barcode codes (A0034, B0050, C0001)
    re.IGNORECASE,
)
#: Mass-cytometry channel tags (``141Pr``, ``Pr141Di``, ``Y89``); case-sensitive so that ``Cd111`` (cadmium) is a
#: tag while ``CD111`` is an antigen.
_ELEMENTS = "La|Pr|Nd|Sm|Eu|Gd|Tb|Dy|Ho|Er|Tm|Yb|Lu|Cd|In|Y|Pt|Ir|Rh|Bi|Ce|Ba|Cs|Pd|Sn|Hf|Ta|Au"
_MASS_TAG = re.compile(rf"^(\d{{2,3}}({_ELEMENTS})|({_ELEMENTS})\d{{2,3}})(Di)?$")
#: Isotype controls: explicit words, a species before an immunoglobulin class, a mouse/rat IgG subclass, or an
#: immunoglobulin class with a light chain (``IgG1``, ``Rat_IgG2b``, ``Mouse IgG2a, κ isotype Ctrl``). Anti-human
#: immunoglobulins (``IgD``, ``IgM``, ``IgG Fc``) are antigens, not controls.
_ISOTYPE_WORD = re.compile(r"isotype|control|ctrl", re.IGNORECASE)
_ISOTYPE_KEY = re.compile(
    r"(mouse|ms|rat|hamster|armenianhamster)ig[gmade]\w*"
    r"|igg\d[a-c]?(kappa|k|lambda|l)?(iso)?"
    r"|ig[gmade](kappa|k|lambda|l)(iso)?"
)
_PARENS = re.compile(r"\s*[(\[][^)\]]*[)\]]\s*")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def name_key(name: str) -> str:
    """The comparison key of a name: lower case, Greek letters spelled out, every non-alphanumeric removed.

    Parameters
    ----------
    name
        Any feature or antigen name.

    Returns
    -------
    str
        The key (``"HLA-DR"``, ``"HLA DR"``, ``"hla_dr"`` and ``"HLA.DR"`` all give ``"hladr"``).
    """
    return _NON_ALNUM.sub("", name.translate(_GREEK).lower())


def is_isotype_control(name: str) -> bool:
    """Whether a panel name is an isotype control (never linked to a gene).

    Parameters
    ----------
    name
        The panel name, with or without decorations (``IgG1_control_TotalSeqB``, ``Mouse IgG2a, κ isotype Ctrl``).

    Returns
    -------
    bool
        True for isotype controls; False for antigens, anti-human immunoglobulins (``IgD``, ``IgM``) included.
    """
    if _ISOTYPE_WORD.search(name):
        return True
    return bool(_ISOTYPE_KEY.fullmatch(name_key("".join(_tokens(name, keep_species=True)))))


def protein_tokens(name: str) -> list[str]:
    """The tokens of a panel name left after removing decorations, in order.

    Tokens are separated by ``_`` or ``|``; panel suffixes, species prefixes, barcode codes, mass tags and
    parenthesised notes are dropped. Clone names are kept (they are recognised only against a table).

    Parameters
    ----------
    name
        The panel name (``CD3_TotalSeqB``, ``ADT_CD4``, ``Hu.CD8a_RPA-T8``, ``141Pr_CD38``).

    Returns
    -------
    list of str
        The remaining tokens (``["CD3"]``, ``["CD4"]``, ``["CD8a", "RPA-T8"]``, ``["CD38"]``).
    """
    return _tokens(name, keep_species=False)


def _tokens(name: str, keep_species: bool) -> list[str]:
    text = _PARENS.sub(" ", name.translate(_GREEK)).strip()
    previous = None
    while not keep_species and previous != text:
        previous = text
        text = _SPECIES_PREFIX.sub("", text).strip()
    tokens = []
    for token in re.split(r"[_|]", text):
        token = _PANEL_PREFIX.sub("", _PANEL_SUFFIX.sub("", token.strip())).strip(" -.")
        if (token and not _DECORATION.fullmatch(token) and not _MASS_TAG.fullmatch(token)
                and (keep_species or not _SPECIES.fullmatch(token))):
            tokens.append(token)
    return tokens


def parenthesised(name: str) -> list[str]:
    """The parenthesised notes of a name (``CD90 (Thy1)`` gives ``["Thy1"]``), in order."""
    return [m.strip() for m in re.findall(r"[(\[]([^)\]]*)[)\]]", name.translate(_GREEK)) if m.strip()]


def normalize_protein_name(name: str) -> str:
    """The key of a panel name once its decorations are removed.

    Parameters
    ----------
    name
        The panel name (``CD3_TotalSeqB``, ``anti-human HLA-DR``, ``Hu.PD-1``).

    Returns
    -------
    str
        The key (``"cd3"``, ``"hladr"``, ``"pd1"``); clone names are kept, see :func:`protein_tokens`.
    """
    return name_key("".join(protein_tokens(name)))
