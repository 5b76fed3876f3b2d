"""What every model is given: named modality stores, checked before any training starts."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..data import ModalityStore, StoreSpec, open_modality
from ..data.preprocess import FeatureStats, load_or_compute_stats
from ..data.names import check_modality_name
from ..errors import InputError

KIND_BY_NAME = {"rna": "rna", "gex": "rna", "gene": "rna", "adt": "adt", "protein": "protein", "cite": "adt",
                "cytometry": "cytometry", "cytof": "cytometry", "flow": "cytometry", "atac": "atac", "peaks": "atac",
                "gene_activity": "gene_activity", "spatial": "spatial"}

StoreLike = ModalityStore | StoreSpec | str | os.PathLike  # or a config table {path, layer, obs_filter, ...}


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
    out: dict[str, ModalityStore] = {}
    for name, spec in modalities.items():
        check_modality_name(name, "modalities")
        store = spec if isinstance(spec, ModalityStore) else open_modality(spec)
        store.modality = name
        if store.n_obs == 0:
            raise InputError(store.path, "obs", f"modality {name!r} has zero cells", "pass a store that holds cells")
        if store.n_vars == 0:
            raise InputError(store.path, "var", f"modality {name!r} has zero features", "pass a store that holds features")
        out[name] = store
    return out


def modality_kind(name: str, kinds: Mapping[str, str] | None = None) -> str:
    """The kind of a modality (``rna``, ``adt``, ``atac`` ...): given, or guessed from its name."""
    if kinds and name in kinds:
        return kinds[name]
    kind = KIND_BY_NAME.get(name.lower())
    if kind is None:
        raise InputError("modalities", name, f"cannot tell the kind of modality {name!r} from its name",
                         f"name it after its kind ({', '.join(sorted(set(KIND_BY_NAME.values())))}) or pass kinds={{{name!r}: KIND}}")
    return kind


def checked_stats(store: ModalityStore, n_top: int | None = None, progress: bool = False) -> FeatureStats:
    """Preprocessing statistics (one chunked pass, cached beside the data); the pass also rejects NaN/Inf.

    Highly variable features are ranked only for count modalities wider than ``n_top`` (narrower ones keep
    every feature).
    """
    hvg = store.kind == "counts" and (n_top is None or store.n_vars > n_top)
    return load_or_compute_stats(store, hvg=hvg, progress=progress)

