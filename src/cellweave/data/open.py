"""Open a modality store from a path: ``.zarr``, ``SOMA_DIR::MEASUREMENT``, ``.h5ad`` or ``FILE.h5mu::MODALITY``
(both backed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from .kind import check_kind
from .spec import StoreSpec, as_spec
from .store import ModalityStore


def open_modality(path: str | os.PathLike | StoreSpec | Mapping[str, Any], modality: str | None = None, *,
                  layer: str | None = None, obs_filter: str | None = None, var_filter: str | None = None,
                  feature_key: str | None = None, kind: str | None = None) -> ModalityStore:
    """Open one modality for streaming.

    Parameters
    ----------
    path
        A Zarr store in the AnnData layout (a directory), ``SOMA_EXPERIMENT::MEASUREMENT``, a ``.h5ad`` file or
        one modality of a ``.h5mu`` file, ``FILE.h5mu::MODALITY`` (both read in backed mode, row ranges at a time);
        or a :class:`~cellweave.data.spec.StoreSpec` (or its config table) carrying the options below.
    modality
        Name to give the modality (default: the one recorded in the store, or the measurement / file name).
    layer, obs_filter, var_filter, feature_key
        For a SOMA measurement: the ``X`` layer, tiledbsoma value filters on ``obs`` and ``var`` (e.g.
        ``obs_filter="tissue_general == 'lung' and is_primary_data == True"``) and the ``var`` column of feature
        names (see :class:`~cellweave.data.soma_store.SomaStore`). Set here, they override the spec's.
    kind
        ``"counts"`` or ``"normalized"``: overrides the kind recorded in the store or inferred from its values
        (:mod:`cellweave.data.kind`); the store then records ``kind_given = True``.

    Raises
    ------
    InputError
        When the path does not exist or is not a supported store, or options are given for a store that is not
        a SOMA measurement.
    """
    check_kind(kind)
    store = _open(as_spec(path, layer=layer, obs_filter=obs_filter, var_filter=var_filter, feature_key=feature_key),
                  modality)
    if kind is not None:
        store.kind = kind  # type: ignore[assignment]
        store.kind_given = True
    return store


def _open(spec: StoreSpec, modality: str | None) -> ModalityStore:
    spec.check_applies()
    text = spec.path
    if text.split("::", 1)[0].endswith(".h5mu"):
        return _open_h5mu(text, modality)
    if spec.is_soma:
        from .soma_store import SomaStore

        experiment, measurement = text.rsplit("::", 1)
        store = SomaStore(experiment, measurement, **spec.options)
        if modality:
            store.modality = modality
        return store
    p = Path(text)
    if not p.exists():
        raise InputError(p, "path", "does not exist", "pass an existing .zarr directory, .h5ad file or SOMA_DIR::MEASUREMENT")
    if p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists()):
        from .zarr_store import ZarrStore

        return ZarrStore(p, modality)
    if p.suffix == ".h5ad":
        from .readers import H5adStore

        return H5adStore(p, modality)
    if p.is_dir() and (p / "__tiledb_group.tdb").exists() or (p / "__group").exists():
        raise InputError(p, "path", "is a SOMA experiment but no measurement was named", f"pass {p}::MEASUREMENT (e.g. {p}::rna)")
    raise InputError(p, "format", "not a Zarr store, SOMA measurement or .h5ad file",
                     "convert it first: `cellweave convert INPUT OUT --format zarr`")


def _open_h5mu(text: str, modality: str | None) -> ModalityStore:
    """One modality of a ``.h5mu`` file, read backed: ``FILE.h5mu::MODALITY``."""
    from .readers import H5adStore
    from .readers.h5 import h5mu_sources

    file, sep, name = text.partition("::")
    if not Path(file).exists():
        raise InputError(file, "path", "does not exist", "pass an existing .h5mu file")
    if not sep or not name:
        have = [s.modality for s in h5mu_sources(file)]
        raise InputError(file, "modality", f"a .h5mu file holds several modalities ({', '.join(have)})",
                         f"name one: {file}::{have[0]}")
    return H5adStore(file, modality or name, group=name)
