"""The one rule that tells a counts matrix from a normalized one, used by every reader and writer.

A modality is ``counts`` (raw UMI or read counts: ``normalize_total`` + ``log1p`` and count likelihoods apply)
or ``normalized`` (anything already transformed: log-normalized, scaled, CLR, cytometry intensities). Unless
the kind is given (``--kind counts|normalized``, or recorded in the store at conversion), it is inferred from
a sample of the stored values (the first :data:`KIND_SAMPLE` non-zero values):

* ``normalized`` when at least :data:`NORMALIZED_SHARE` of the sampled non-zero values are not integers:
  log1p, CP10k, z-scores and CLR values are non-integer almost everywhere;
* ``counts`` otherwise, i.e. when the sample is (almost) all integers.

A counts matrix is then held to what counts are, in every chunk (:class:`~cellweave.data.validate.ValueChecker`):
a negative value is never a count and a non-integer value is not one either, so both are refused naming the
cell row, with ``--kind normalized`` as the way out when the matrix is not counts. One stray 0.5 or -1 in a
count matrix therefore stops the run (it is damage to find) instead of silently turning the modality into a
normalized one, which would change its preprocessing and likelihood.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .source import Kind

#: Non-zero values sampled to infer the kind.
KIND_SAMPLE = 1 << 16
#: Share of non-integer values (among the sampled non-zero ones) from which a matrix is ``normalized``.
NORMALIZED_SHARE = 0.01
KINDS: tuple[Kind, ...] = ("counts", "normalized")


def infer_kind(values: np.ndarray) -> Kind:
    """``counts`` or ``normalized`` from a sample of a matrix's values (see the module docstring).

    Parameters
    ----------
    values
        Stored values (CSR ``data`` or dense entries); zeros and non-finite values are ignored.

    Returns
    -------
    str
        ``"counts"`` or ``"normalized"``.
    """
    v = np.asarray(values).ravel()
    v = v[(v != 0) & np.isfinite(v)][:KIND_SAMPLE]
    if v.size == 0:
        return "counts"
    share = float(np.mean(v != np.round(v)))
    return "normalized" if share >= NORMALIZED_SHARE else "counts"


def check_kind(kind: str | None, source: str = "--kind") -> Kind | None:
    """``kind`` when it is ``counts``, ``normalized`` or ``None``; else a one-line error."""
    if kind is None or kind in KINDS:
        return kind  # type: ignore[return-value]
    raise InputError(source, "kind", f"unknown matrix kind {kind!r}", f"use one of {', '.join(KINDS)}")
