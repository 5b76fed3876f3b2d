"""What every model is given: named modality stores, checked before any training starts.

Inputs are whatever a notebook or a pipeline holds (see :func:`~cellweave.data.memory.as_store`): paths, stores,
in-memory or backed ``AnnData``, tiledbsoma objects, or one ``MuData`` (or ``tiledbsoma.Experiment``) whose
modalities (measurements) are taken by name.

Modality kinds
--------------
Models that treat modalities differently by kind (links between them, PCA vs LSI, which is RNA and which is
ATAC) take ``kinds={name: kind}``. Without it a modality named after its kind gets that kind, by this table
(case-insensitive; nothing else is guessed, so ``"gex_lib1"`` needs ``kinds={"gex_lib1": "rna"}``):

=====================================  ================
modality name                          kind
=====================================  ================
``rna``, ``gex``, ``gene``             ``rna``
``adt``, ``cite``                      ``adt``
``protein``                            ``protein``
``atac``, ``peaks``                    ``atac``
``cytometry``, ``cytof``, ``flow``     ``cytometry``
``gene_activity``                      ``gene_activity``
``spatial``                            ``spatial``
=====================================  ================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..data import ModalityStore, StoreSpec
from ..data.preprocess import FeatureStats, load_or_compute_stats
from ..data.names import check_modality_name
from ..errors import InputError

KIND_BY_NAME = {"rna": "rna", "gex": "rna", "gene": "rna", "adt": "adt", "protein": "protein", "cite": "adt",
                "cytometry": "cytometry", "cytof": "cytometry", "flow": "cytometry", "atac": "atac", "peaks": "atac",
                "gene_activity": "gene_activity", "spatial": "spatial"}

StoreLike = ModalityStore | StoreSpec | str | os.PathLike | Any  # a spec table; AnnData, tiledbsoma objects (see as_store)
#: The kinds a modality may have.
KINDS = frozenset(KIND_BY_NAME.values())


def expand_inputs(modalities: Mapping[str, StoreLike] | Any) -> dict[str, StoreLike]:
    """Modality name -> input: a mapping as it is, a ``MuData`` as its modalities by name, or a
    ``tiledbsoma.Experiment`` as its measurements by name.

    Raises
    ------
    InputError
        For anything else (a single AnnData or path: the model needs the modalities named).
    """
    if type(modalities).__module__.startswith("tiledbsoma") and type(modalities).__name__ == "Experiment":
        return {str(m): modalities.ms[m] for m in modalities.ms}
    if isinstance(modalities, Mapping):
        return dict(modalities)
    if type(modalities).__name__ == "MuData" and hasattr(modalities, "mod"):
        return {str(m): a for m, a in modalities.mod.items()}
    raise InputError("modalities", type(modalities).__name__, "not a mapping of modality name -> data, nor a MuData",
                     'pass {"rna": adata_rna, "adt": adata_adt} (AnnData, paths, stores) or a MuData')


def open_inputs(modalities: Mapping[str, StoreLike]) -> dict[str, ModalityStore]:
    """Open each modality (a store, a :class:`~cellweave.data.StoreSpec` or ``.zarr`` / ``.h5ad`` /
    ``SOMA_DIR::MEASUREMENT``) under its given name.

    Raises
    ------
    InputError
        With no modality, or a modality with zero cells or zero features.
    """
    if not modalities:
        raise InputError("modalities", "modalities", "no modality given", "pass at least one NAME=PATH")
    from ..data.memory import as_store

    out: dict[str, ModalityStore] = {}
    for name, spec in expand_inputs(modalities).items():
        check_modality_name(name, "modalities")
        store = as_store(spec, name)
        store.modality = name
        if store.n_obs == 0:
            raise InputError(store.path, "obs", f"modality {name!r} has zero cells", "pass a store that holds cells")
        if store.n_vars == 0:
            raise InputError(store.path, "var", f"modality {name!r} has zero features", "pass a store that holds features")
        out[name] = store
    return out


def modality_kind(name: str, kinds: Mapping[str, str] | None = None) -> str:
    """The kind of a modality (``rna``, ``adt``, ``atac`` ...): ``kinds[name]``, else the documented default of its
    name (the module's table), else an error asking for ``kinds``.

    Raises
    ------
    InputError
        For a name without a default and no ``kinds`` entry, or a kind that is not one of :data:`KINDS`.
    """
    if kinds and name in kinds:
        kind = str(kinds[name]).lower()
        if kind not in KINDS:
            raise InputError("kinds", name, f"unknown kind {kinds[name]!r}", f"use one of {', '.join(sorted(KINDS))}")
        return kind
    kind = KIND_BY_NAME.get(name.lower())
    if kind is None:
        raise InputError("modalities", name, f"no default kind for a modality named {name!r} (defaults exist for: "
                         f"{', '.join(sorted(KIND_BY_NAME))})",
                         f"pass kinds={{{name!r}: KIND}} with KIND one of {', '.join(sorted(KINDS))}")
    return kind


def checked_stats(store: ModalityStore, n_top: int | None = None, progress: bool = False) -> FeatureStats:
    """Preprocessing statistics (one chunked pass, cached beside the data); the pass also rejects NaN/Inf.

    Highly variable features are ranked only for count modalities wider than ``n_top`` (narrower ones keep
    every feature).
    """
    hvg = store.kind == "counts" and (n_top is None or store.n_vars > n_top)
    return load_or_compute_stats(store, hvg=hvg, progress=progress)

